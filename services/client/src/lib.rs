//! The licensing client library for products.
//!
//! # Layout
//! - [`Client`]: connects lazily (a product starts even when the server is down).
//! - [`node_locked`]: activate, validate (online, else offline from the stored certificate),
//!   refresh and deactivate; the certificate lives in a [`storage::TrustedStorage`] file.
//! - [`floating`]: `checkout()` returns a [`floating::SeatGuard`] whose background task
//!   heartbeats, retries through network faults, re-checks out a lost lease, and reports the
//!   seat's state on a watch channel; dropping the guard checks the seat in.
//! - [`borrow`]: borrow a seat for offline use, prove it offline from its signed token, return it.
//! - [`fingerprint`]: the machine's fingerprint components on Linux, macOS and Windows.
//! - [`error`]: [`ClientError`], what a call can fail with.

pub mod borrow;
pub mod error;
pub mod fingerprint;
pub mod floating;
pub mod metering;
pub mod node_locked;
pub mod storage;

pub use error::ClientError;
pub use licensing_domain::clock::{Clock, ManualClock, SystemClock};

use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// TLS settings for [`Client::with_tls`]: `ClientTlsConfig::new().ca_certificate(..)` and, for
/// mutual TLS, `.identity(..)`.
pub mod tls {
    pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};
}

/// How a product proves it may use its license.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A license key, `XXXXX-XXXXX-XXXXX-XXXXX-XXXXX`.
    LicenseKey(String),
    /// A License ID and a password.
    IdAndPassword {
        /// License ID (`lic_…`).
        license_id: String,
        /// The license's activation password, or the customer's portal password.
        password: String,
    },
}

type Inject = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
/// A channel whose requests carry the caller's trace context.
pub(crate) type Traced = tonic::service::interceptor::InterceptedService<Channel, Inject>;

/// Adds the W3C trace context (`traceparent`) of the current `tracing` span to a request, so
/// the server's spans join the product's trace. A product that does not use
/// `tracing-opentelemetry` has no trace context, and nothing is added.
fn inject_trace_context(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        // https://www.w3.org/TR/trace-context/#traceparent-header: version-trace-parent-flags.
        let traceparent = format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        );
        if let Ok(value) = traceparent.parse() {
            request.metadata_mut().insert("traceparent", value);
        }
    }
    Ok(request)
}

/// A connection to the licensing server plus what the product embeds: the server's public key.
#[derive(Clone)]
pub struct Client {
    pub(crate) activation: ActivationServiceClient<Traced>,
    pub(crate) seat: SeatServiceClient<Traced>,
    pub(crate) public_key: ed25519_dalek::VerifyingKey,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Client {
    /// `endpoint`: e.g. `http://licensing.example:50051`. `public_key_b64`: the server's
    /// Ed25519 key (`GetVerifyingKey`), embedded in the product. Connects on first use.
    pub fn new(endpoint: &str, public_key_b64: &str) -> Result<Self, ClientError> {
        Self::with_clock(endpoint, public_key_b64, Arc::new(SystemClock))
    }

    /// As [`Client::new`], over TLS: `tls` names the CA that signed the server's certificate
    /// and, for mutual TLS, the product's own certificate (see [`tls`]). `endpoint` is https://.
    pub fn with_tls(endpoint: &str, public_key_b64: &str, tls: tls::ClientTlsConfig) -> Result<Self, ClientError> {
        Self::build(endpoint, public_key_b64, Arc::new(SystemClock), Some(tls))
    }

    /// As [`Client::new`], with the clock offline checks use (tests move it by hand).
    pub fn with_clock(endpoint: &str, public_key_b64: &str, clock: Arc<dyn Clock>) -> Result<Self, ClientError> {
        Self::build(endpoint, public_key_b64, clock, None)
    }

    fn build(
        endpoint: &str,
        public_key_b64: &str,
        clock: Arc<dyn Clock>,
        tls: Option<tls::ClientTlsConfig>,
    ) -> Result<Self, ClientError> {
        let public_key = licensing_domain::certificate::verifying_key_from_base64(public_key_b64)
            .map_err(|_| ClientError::Config("the public key must be base64 of a 32-byte Ed25519 key"))?;
        let mut endpoint = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|_| ClientError::Config("the endpoint must be a URL such as http://host:50051"))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|_| ClientError::Config("the TLS settings cannot be used with this endpoint"))?;
        }
        let channel = endpoint.connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(10)).connect_lazy();
        Ok(Self {
            activation: ActivationServiceClient::with_interceptor(channel.clone(), inject_trace_context as Inject),
            seat: SeatServiceClient::with_interceptor(channel, inject_trace_context as Inject),
            public_key,
            clock,
        })
    }
}
