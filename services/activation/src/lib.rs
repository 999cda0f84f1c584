//! The Activation service: node-locked activation, deactivation, validation and signed
//! certificates a product verifies offline.
//!
//! # Layout
//! - [`error`]: [`ActivationError`], the one error enum of this service.
//! - [`service`]: [`Activations`], the use cases (activate, deactivate, validate, refresh,
//!   offline activation, certificates); no gRPC. Validations read licenses, and the machines
//!   matched on them, from a [`ValidationCache`] kept exact by the store's change feed; the store
//!   matches a machine through the fingerprint components it shares with live activations.
//! - [`metering`]: products recording use of a license's meters (decided atomically by the
//!   store, `services/store/src/sql/meters.rs`) and reading what is left.
//! - [`server_license`]: activating customers' on-premises license servers on server licenses
//!   (online, or through an air-gapped server's request files), their signed server license
//!   files, and returns that free a server's activation.
//! - [`grpc`]: the tonic adapter `ActivationService`; it decodes, calls a use case, encodes.
//!
//! Two limits, not to be confused: the *activation limit* (a license's seats, and its allowed
//! deactivations) is decided atomically by the store (`services/store/src/sql/activation.rs`,
//! `activate` and `deactivate_checked`); the *rate limit* of this service
//! ([`ActivationSettings::activations_per_license`]) only slows calls per license.

pub mod error;
pub mod grpc;
pub mod metering;
pub mod server_license;
pub mod service;

pub use error::ActivationError;
pub use server_license::{ServerActivation, ServerRequestOutcome, ServerReturn};
pub use service::{ActivationDeps, ActivationSettings, Activations, LicenseActivations, ValidationCache};
