//! The on-premises license server: a `licensing-server` started in on-premises mode serves a
//! vendor's signed server license file to the products on a customer's network, and nothing
//! more (see docs/on-premises.md).
//!
//! # Layout
//! - [`service`]: [`OnPremises`], the use cases: open, import, refresh, return, status, and
//!   [`OnPremises::may_grant`], the one rule for new seats and activations.
//! - [`state`]: the file in force and the state kept in the data directory.
//! - [`vendor`]: the vendor's licensing server as an online server reaches it.
//! - [`grpc`]: `OnPremisesService`, and [`grpc::Gated`], which serves only what an on-premises
//!   server may serve of the Seat and Activation services.
//! - [`error`]: [`OnPremError`], classified once.
//!
//! The served licenses are ordinary licenses of the local store, made from the file's grants
//! (`licensing_domain::onprem`): checkouts and activations go through the same Seat and
//! Activation use cases as on the vendor's server, so no rule is written twice.

pub mod error;
pub mod grpc;
pub mod service;
pub mod state;
pub mod vendor;

pub use error::OnPremError;
pub use service::{OnPremises, OnPremisesDeps, OnPremisesSettings};
