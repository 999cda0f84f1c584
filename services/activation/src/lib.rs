//! The Activation service: node-locked activation, deactivation, validation and signed
//! certificates a product verifies offline.
//!
//! # Layout
//! - [`error`]: [`ActivationError`], the one error enum of this service.
//! - [`service`]: [`Activations`], the use cases (activate, deactivate, validate, refresh,
//!   offline activation, certificates); no gRPC. Validations read licenses, and the machines
//!   matched on them, from a [`ValidationCache`] kept exact by the store's change feed; the store
//!   matches a machine through the fingerprint components it shares with live activations.
//! - [`grpc`]: the tonic adapter `ActivationService`, including the `WatchLicense` stream.

pub mod error;
pub mod grpc;
pub mod service;

pub use error::ActivationError;
pub use service::{ActivationSettings, Activations, LicenseActivations, ValidationCache};
