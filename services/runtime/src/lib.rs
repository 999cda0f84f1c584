//! What every licensing server process shares.
//!
//! # Layout
//! - [`config`]: settings from environment variables, read through a [`config::Lookup`] so tests
//!   never touch the process environment.
//! - [`keys`]: the server's secret keys (keyed-hash key, Ed25519 signing key), from the
//!   environment or a key file in the data directory.
//! - [`telemetry`]: `tracing` logs (text or JSON), OpenTelemetry OTLP export, W3C trace context.
//! - [`metrics`]: OpenTelemetry metrics, scraped in the Prometheus format on `/metrics`.
//! - [`server`]: the gRPC server stack: health, reflection (v1 and v1alpha), request timeout and
//!   concurrency limit layers, and the shutdown sequence on SIGTERM/SIGINT (NOT_SERVING, a
//!   readiness delay, then a drain with a deadline that ends every long-lived stream).
//! - [`health`]: the gRPC health service, whose `Watch` streams end when the drain starts.
//! - [`status`]: the one place where any service error becomes a `tonic::Status`.
//! - [`auth`]: bearer tokens from `authorization` metadata; the admin token, portal sessions
//!   ([`auth::SessionAuth`]: where a session is checked), and callers that may be either.
//! - [`credentials`]: license key or License ID + password, resolved to a license.
//! - [`license_cache`]: per-license values kept exact by the store's change feed (seats, validation).
//! - [`hashing`]: argon2 work on threads of its own in the idle scheduling class.
//! - [`client_address`]: who a request comes from: the TCP peer, or behind a trusted proxy the
//!   client it forwarded (`LICENSING_TRUSTED_PROXIES`).
//! - [`limiter`]: abuse limits: request rates per key, and the throttle that slows password
//!   guessers without locking anyone out.
//! - [`tls`]: TLS and mutual TLS from PEM files, for servers and for our own clients.
//! - [`convert`]: timestamps and other small conversions shared by the gRPC adapters.

pub mod auth;
pub mod client_address;
pub mod config;
pub mod convert;
pub mod credentials;
pub mod hashing;
pub mod health;
pub mod keys;
pub mod license_cache;
pub mod limiter;
pub mod metrics;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod tls;
