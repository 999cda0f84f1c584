//! The Account service: the license catalog with the vendor's admin API, and the customer portal.
//!
//! # Layout
//! - [`error`]: [`AccountError`], the one error enum of this service, classified for gRPC.
//! - [`validate`]: field checks of admin and portal input (codes, emails, versions, names).
//! - [`catalog`]: [`Catalog`], the admin use cases (products, customers, licenses, audit); no gRPC.
//! - [`mail`]: the mail outbox (SMTP, or files in the data directory).
//! - [`portal`]: [`portal::Portal`], the customer portal's use cases; no gRPC.
//! - [`grpc`]: thin tonic adapters: [`grpc::AdminApi`] serves `AdminService` over [`Catalog`],
//!   [`grpc::AccountApi`] serves `AccountService` (the customer portal) over
//!   [`portal::Portal`]: authenticate, convert, delegate, convert back.
//!
//! Where a portal session is checked: `licensing_runtime::auth::SessionAuth` (see
//! ARCHITECTURE.md).
//! - [`web`]: the customer portal in a web browser (axum, askama), on the same [`portal::Portal`]
//!   use cases as `AccountService`.

pub mod catalog;
pub mod error;
pub mod grpc;
pub mod mail;
pub mod portal;
pub mod validate;
pub mod web;

pub use catalog::{Catalog, CatalogDeps};
pub use error::AccountError;
