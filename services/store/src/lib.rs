//! Storage for the licensing server.
//!
//! # Layout
//! - [`sql`]: [`SqlStore`], the one SQL implementation of the domain's store interfaces. It runs on
//!   PostgreSQL (production) and on a SQLite file (the embedded default) through `sqlx::Any`;
//!   `migrations/` is written in PostgreSQL's dialect; the SQLite schema is derived from it.
//! - `sql/catalog.rs`: products, customers, licenses, admin tokens and the audit log.
//! - [`sql::Dialect`]: the few places where the two databases differ.
//! - [`redis_leases`]: [`RedisLeaseStore`], the production lease store (Lua scripts on Redis, in
//!   `lua/`), which also keeps the license revisions that fence checkouts decided on cached
//!   licenses.
//!
//! The decisions that must be atomic are made here, in one step: a checkout's seat
//! (`lua/checkout.lua`, `sql/leases.rs`), an activation within the license's limit
//! (`sql/activation.rs`). ARCHITECTURE.md lists where each rule is decided.

pub mod redis_leases;
pub mod sql;

pub use redis_leases::RedisLeaseStore;
pub use sql::{Dialect, SqlLeaseStore, SqlStore};
