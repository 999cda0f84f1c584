//! The Seat service: concurrent (floating) seats as leases kept alive by heartbeats.
//!
//! # Layout
//! - [`error`]: [`SeatError`], the one error enum of this service.
//! - [`service`]: [`Seats`], checkout/heartbeat/checkin/revoke over a `LeaseStore` (Redis or
//!   the embedded store), signed lease tokens; no gRPC.
//! - [`waiting`]: the first-come-first-served queue behind `WaitForSeat`.
//! - [`usage`]: [`UsageLog`], the bounded queue and background writer of the usage log.
//! - [`grpc`]: [`grpc::SeatApi`], the tonic adapter serving `licensing.seat.v1.SeatService`:
//!   decode, call a [`Seats`] use case, encode.
//!
//! Where a checkout decides the seat count: in the lease store, in one step (see
//! ARCHITECTURE.md, "Where each rule is decided"); [`Seats::checkout`] prepares the command.

pub mod error;
pub mod grpc;
pub mod service;
pub mod usage;
pub mod waiting;

pub use error::SeatError;
pub use service::LicenseCache;
pub use service::{SeatSettings, Seats};
pub use usage::UsageLog;
