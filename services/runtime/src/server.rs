//! The gRPC server stack every licensing process runs.
//!
//! [`GrpcServer::bind`] takes the service routes and binds the listener (port 0 works, for tests);
//! [`GrpcServer::run_until_stopped`] serves until the shutdown future completes (SIGTERM/SIGINT in
//! the binaries), then shuts down in this order:
//!
//! 1. **NOT_SERVING.** Every served name and "" turn NOT_SERVING in the health service, and every
//!    health `Watch` stream hears it, while the server still accepts and serves: load balancers
//!    and Kubernetes readiness probes learn first.
//! 2. **Readiness delay.** New connections and calls are still served for
//!    [`StackSettings::readiness_delay`] (`LICENSING_SHUTDOWN_READINESS_DELAY_MS`; 0 by default,
//!    a few seconds under Kubernetes), the time it takes callers to stop sending here.
//! 3. **Drain.** The listener closes (connections get GOAWAY) and [`StackSettings::drain`] is
//!    cancelled, which ends every long-lived stream: health `Watch` streams (NOT_SERVING, if not
//!    yet sent, then the end), `WaitForSeat` and `WatchLicense` (`UNAVAILABLE`, [`ShuttingDown`]:
//!    reconnect). In-flight unary calls finish, until [`StackSettings::shutdown_grace`]
//!    (`LICENSING_SHUTDOWN_GRACE_MS`) at most; the connections left then are closed.

use crate::client_address::{ClientAddressLayer, TrustedProxies};
use crate::config::{Config, RateLimits};
use crate::health::HealthStatuses;
use crate::limiter::RateLimiter;
use crate::metrics::Metrics;
use licensing_proto::FILE_DESCRIPTOR_SET;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::codegen::http;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceBuilder};

/// The drain signal: [`GrpcServer::run_until_stopped`] cancels [`StackSettings::drain`] when the
/// drain starts. Whatever serves a long-lived stream (or waits on behalf of a caller) takes a
/// clone and ends its work when it is cancelled, answering [`ShuttingDown`].
pub use tokio_util::sync::CancellationToken;

/// Why a long-lived stream ended at shutdown: the caller should reconnect (to a server that is up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server is shutting down and ended this stream; reconnect and call again")]
pub struct ShuttingDown;

impl licensing_domain::error::ClassifiedError for ShuttingDown {
    fn class(&self) -> licensing_domain::error::ErrorClass {
        licensing_domain::error::ErrorClass::Unavailable
    }
    fn reason(&self) -> &'static str {
        "SHUTTING_DOWN"
    }
}

/// Which process serves each licensing gRPC service: the gateway routes by these names, and a
/// process that is called for a service it does not serve says which one does.
pub const SERVICE_HOMES: [(&str, &str); 4] = [
    ("licensing.account.v1.AdminService", "account"),
    ("licensing.account.v1.AccountService", "account"),
    ("licensing.activation.v1.ActivationService", "activation"),
    ("licensing.seat.v1.SeatService", "seat"),
];

/// A call for a gRPC service this process does not serve (answered `UNIMPLEMENTED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotServedHere {
    /// Another licensing service serves it: the caller dialled a service's own address.
    #[error("{service} is served by the {home} service ({here}); use the gateway address, which routes every service, or the {home} service's own")]
    ServedElsewhere {
        /// The gRPC service called.
        service: &'static str,
        /// The process that serves it (`account`, `activation`, `seat`).
        home: &'static str,
        /// What this process is, e.g. "this is the account service".
        here: String,
    },
    /// No licensing process serves it.
    #[error("no gRPC service {service} here; this server serves {served}")]
    Unknown {
        /// The service called, quoted.
        service: String,
        /// The services this process serves.
        served: String,
    },
}

impl licensing_domain::error::ClassifiedError for NotServedHere {
    fn class(&self) -> licensing_domain::error::ErrorClass {
        licensing_domain::error::ErrorClass::Unimplemented
    }
    fn reason(&self) -> &'static str {
        match self {
            Self::ServedElsewhere { .. } => "SERVED_ELSEWHERE",
            Self::Unknown { .. } => "UNKNOWN_SERVICE",
        }
    }
}

impl NotServedHere {
    /// Why a call of `path` (`/package.Service/Method`) is not served by a process serving the
    /// licensing services `served`.
    pub fn of(path: &str, served: &[String]) -> Self {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        let is_served = |name: &str| served.iter().any(|s| s == name);
        let mut homes: Vec<&str> =
            SERVICE_HOMES.iter().filter(|(name, _)| is_served(name)).map(|(_, home)| *home).collect();
        homes.dedup();
        let here = match homes.as_slice() {
            [one] => format!("this is the {one} service"),
            _ => format!("this server serves {}", served.join(", ")),
        };
        match SERVICE_HOMES.iter().find(|(name, _)| *name == service && !is_served(name)) {
            Some((service, home)) => Self::ServedElsewhere { service, home, here },
            None => Self::Unknown { service: licensing_domain::text::quoted(service), served: served.join(", ") },
        }
    }
}

/// Limits and switches of the server stack.
#[derive(Debug, Clone)]
pub struct StackSettings {
    /// Deadline of one unary request (see [`DeadlineLayer`]).
    pub request_timeout: Duration,
    /// Requests served at once.
    pub concurrency_limit: usize,
    /// How long new calls are still served after health turns NOT_SERVING at shutdown.
    pub readiness_delay: Duration,
    /// How long in-flight calls may drain once the listener has closed.
    pub shutdown_grace: Duration,
    /// Cancelled when the drain starts: long-lived streams end on it (hand each service that
    /// streams a clone).
    pub drain: CancellationToken,
    /// Whether gRPC reflection is served.
    pub reflection: bool,
    /// Request rates allowed per client address, by group of methods.
    pub client_rates: Vec<ClientRate>,
    /// TLS of the listener; `None` serves plaintext.
    pub tls: Option<crate::tls::ServerTls>,
    /// Where request latency and status are recorded (and scraped from).
    pub metrics: Metrics,
    /// Browser origins allowed to call with gRPC-Web (CORS); empty: gRPC-Web is off.
    pub grpc_web_origins: Vec<String>,
    /// Proxies (the gateway) whose `X-Forwarded-For` names the client the limits count.
    pub trusted_proxies: TrustedProxies,
}

/// One rate shared by a group of methods (e.g. Login), counted per client address.
#[derive(Debug, Clone)]
pub struct ClientRate {
    /// What the methods do, as a refusal names it.
    pub what: &'static str,
    /// Full gRPC paths, `/package.Service/Method`.
    pub methods: &'static [&'static str],
    /// The buckets, one per client address: shared with anything else that serves the same
    /// action (the web portal's login and password reset), so a client has one budget however
    /// it comes in.
    pub limiter: RateLimiter,
}

impl ClientRate {
    /// The per-client limits of `limits`, on the methods they apply to.
    pub fn all(limits: &RateLimits) -> Vec<Self> {
        vec![
            Self {
                what: "login",
                methods: &["/licensing.account.v1.AccountService/Login"],
                limiter: RateLimiter::new("login", limits.login_per_client),
            },
            Self {
                what: "password reset",
                methods: &[
                    "/licensing.account.v1.AccountService/RequestPasswordReset",
                    "/licensing.account.v1.AccountService/ResetPassword",
                ],
                limiter: RateLimiter::new("password reset", limits.reset_per_client),
            },
            Self {
                what: "activation",
                methods: &[
                    "/licensing.activation.v1.ActivationService/Activate",
                    "/licensing.activation.v1.ActivationService/ActivateOffline",
                ],
                limiter: RateLimiter::new("activation", limits.activate_per_client),
            },
            Self {
                what: "trial",
                methods: &["/licensing.activation.v1.ActivationService/ActivateTrial"],
                limiter: RateLimiter::new("trial", limits.trial_per_client),
            },
            Self {
                what: "checkout",
                methods: &["/licensing.seat.v1.SeatService/Checkout", "/licensing.seat.v1.SeatService/WaitForSeat"],
                limiter: RateLimiter::new("checkout", limits.checkout_per_client),
            },
        ]
    }
}

impl StackSettings {
    /// The per-client limiter of the action `what` ("login", "password reset", ...), for what else
    /// serves it (the web portal), so it shares the gRPC port's buckets.
    pub fn client_limiter(&self, what: &str) -> Option<RateLimiter> {
        self.client_rates.iter().find(|r| r.what == what).map(|r| r.limiter.clone())
    }
}

impl From<&Config> for StackSettings {
    fn from(c: &Config) -> Self {
        Self {
            request_timeout: c.request_timeout,
            concurrency_limit: c.concurrency_limit,
            readiness_delay: c.shutdown_readiness_delay,
            shutdown_grace: c.shutdown_grace,
            drain: CancellationToken::new(),
            reflection: c.reflection,
            client_rates: ClientRate::all(&c.rate_limits),
            tls: c.tls.clone(),
            metrics: Metrics::new(&c.service_name),
            grpc_web_origins: c.grpc_web_origins.clone(),
            trusted_proxies: c.trusted_proxies.clone(),
        }
    }
}

/// A bound gRPC listener with its service stack (health, reflection, limits), ready to serve.
pub struct GrpcServer {
    listener: TcpListener,
    routes: Routes,
    /// Each licensing service's name, and "" for the whole server: SERVING while up.
    health: HealthStatuses,
    settings: StackSettings,
}

impl GrpcServer {
    /// Binds `addr` and assembles health, reflection and `routes`. `service_names` are the fully
    /// qualified names of the services in `routes`, reported in the health service.
    pub async fn bind(
        addr: SocketAddr,
        routes: Routes,
        service_names: &[&str],
        settings: StackSettings,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let health = HealthStatuses::new();
        let mut routes = routes.add_service(health.service(settings.drain.clone()));
        if settings.reflection {
            // Advertise exactly what is served: the descriptor set also holds services not served here.
            let advertised: Vec<String> = service_names
                .iter()
                .map(|s| s.to_string())
                .chain(
                    [
                        "grpc.health.v1.Health",
                        "grpc.reflection.v1.ServerReflection",
                        "grpc.reflection.v1alpha.ServerReflection",
                    ]
                    .map(String::from),
                )
                .collect();
            let builder = || {
                let mut b = tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
                    // google.rpc.ErrorInfo, RetryInfo, BadRequest, ...: the details every refusal
                    // carries, so grpcurl can resolve their Any type URLs and print them.
                    .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
                for name in &advertised {
                    b = b.with_service_name(name.clone());
                }
                b
            };
            let v1 = builder().build_v1().expect("descriptor sets compiled into the binary are valid");
            let v1alpha = builder().build_v1alpha().expect("descriptor sets compiled into the binary are valid");
            routes = routes.add_service(v1).add_service(v1alpha);
        }
        // A call for a service not served here says which process serves it (tonic's own
        // fallback answers UNIMPLEMENTED with no message).
        let served: std::sync::Arc<[String]> = service_names.iter().map(|s| s.to_string()).collect();
        let routes = Routes::from(routes.into_axum_router().fallback(move |req: axum::extract::Request| {
            let error = NotServedHere::of(req.uri().path(), &served);
            async move { crate::status::to_status(&error).into_http::<axum::body::Body>() }
        }));
        for name in service_names {
            health.set(name, ServingStatus::Serving);
        }
        Ok(Self { listener, routes, health, settings })
    }

    /// The address the listener is bound to (its port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// The health statuses, e.g. to report NOT_SERVING while a dependency is down.
    pub fn health(&self) -> HealthStatuses {
        self.health.clone()
    }

    /// Serves until `shutdown` completes, then shuts down in the order the module documents:
    /// NOT_SERVING, the readiness delay, the drain (streams ended, unary calls finished within
    /// the grace period).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let Self { listener, routes, health, settings } = self;
        // gRPC-Web (HTTP/1.1 from browsers) when origins are configured: CORS answers preflights
        // and marks the answers, and every gRPC answer below, refusals included, is translated.
        let grpc_web = !settings.grpc_web_origins.is_empty();
        let layers = ServiceBuilder::new()
            // Who the caller is (the peer, or the client a trusted gateway forwarded), decided
            // once for the rate limits and the services' guess throttling below.
            .layer(ClientAddressLayer::new(settings.trusted_proxies.clone()))
            // Outermost but for that, so refused and timed-out requests are traced and counted too.
            .layer(ObserveLayer { metrics: settings.metrics.clone() })
            .option_layer(grpc_web.then(|| grpc_web_cors(&settings.grpc_web_origins)))
            .option_layer(grpc_web.then(tonic_web::GrpcWebLayer::new))
            // Refused floods never take a concurrency slot.
            .layer(ClientRateLimitLayer::new(&settings.client_rates))
            .layer(GlobalConcurrencyLimitLayer::new(settings.concurrency_limit))
            .layer(DeadlineLayer { after: settings.request_timeout })
            .layer(MalformedRequestLayer)
            .into_inner();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut builder = Server::builder().accept_http1(grpc_web);
        if grpc_web {
            tracing::info!(origins = ?settings.grpc_web_origins, "serving gRPC-Web");
        }
        if let Some(tls) = &settings.tls {
            builder = builder.tls_config(tls.server_config())?;
            tracing::info!(mutual = tls.is_mutual(), "serving TLS");
        }
        let server = builder
            .layer(layers)
            .add_routes(routes)
            // TCP_NODELAY: an answer written in pieces must not wait for the client's delayed ACK.
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
                let _ = stop_rx.await;
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            () = shutdown => {}
        }
        // 1. NOT_SERVING, heard by every health watcher, while still accepting.
        let delay_ms = settings.readiness_delay.as_millis() as u64;
        tracing::info!(
            readiness_delay_ms = delay_ms,
            "shutting down: NOT_SERVING, still serving for the readiness delay"
        );
        health.set_all(ServingStatus::NotServing);
        // 2. Keep serving while callers learn to go elsewhere.
        tokio::select! {
            result = &mut server => return result,
            () = tokio::time::sleep(settings.readiness_delay) => {}
        }
        // 3. Stop accepting, end every long-lived stream, let unary calls finish.
        tracing::info!(grace_ms = settings.shutdown_grace.as_millis() as u64, "draining: no longer accepting");
        let _ = stop_tx.send(());
        settings.drain.cancel();
        match tokio::time::timeout(settings.shutdown_grace, server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("drain deadline passed; closing the remaining connections");
                Ok(())
            }
        }
    }
}

/// CORS for gRPC-Web callers from `origins`: the headers gRPC-Web sends and the ones its
/// clients read (status, message, details, retry-after, request ID). No cookies: callers send
/// their session token in `authorization`.
fn grpc_web_cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<http::HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    let header = |h: &'static str| http::HeaderName::from_static(h);
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([http::Method::POST])
        .allow_headers(
            [
                "content-type",
                "x-grpc-web",
                "x-user-agent",
                "authorization",
                "grpc-timeout",
                "traceparent",
                REQUEST_ID_HEADER,
            ]
            .map(header),
        )
        .expose_headers(
            ["grpc-status", "grpc-message", "grpc-status-details-bin", "retry-after", REQUEST_ID_HEADER].map(header),
        )
        .max_age(Duration::from_secs(600))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// The header that carries a request ID from the caller, and back in every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A tower layer that gives each request its span, joined to the caller's W3C trace context
/// (`traceparent`) when there is one, with a request ID (the caller's `x-request-id` if it is
/// sane, else a new one) that logs carry and the response echoes; and that records each
/// request's latency and gRPC status code in the metrics.
#[derive(Clone)]
pub struct ObserveLayer {
    /// Where latencies and status codes are recorded.
    pub metrics: Metrics,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, metrics: self.metrics.clone() }
    }
}

/// The service [`ObserveLayer`] wraps around `S`.
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Metrics,
}

/// The caller's request ID when it is short and plain, so it cannot forge log lines.
fn caller_request_id(headers: &http::HeaderMap) -> Option<String> {
    let id = headers.get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
    (!id.is_empty() && id.len() <= 128 && id.chars().all(plain)).then(|| id.to_owned())
}

fn new_request_id() -> String {
    hex::encode(rand::random::<[u8; 12]>())
}

/// The gRPC status code of a response: in the headers of an error answered at once
/// (trailers-only), otherwise OK until the trailers say more (a stream's end is not waited for).
fn response_code(headers: &http::HeaderMap) -> i32 {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        use tracing::Instrument as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let path = req.uri().path().to_owned();
        let request_id = caller_request_id(req.headers()).unwrap_or_else(new_request_id);
        let span = tracing::info_span!(
            "grpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            request_id = %request_id,
            trace_id = tracing::field::Empty,
            grpc.code = tracing::field::Empty,
        );
        let _ = span.set_parent(crate::telemetry::extract(req.headers()));
        if let Some(trace_id) = crate::telemetry::trace_id(&span) {
            span.record("trace_id", trace_id.as_str());
        }
        let started = std::time::Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let mut result = future.instrument(span.clone()).await;
            if let Ok(response) = &mut result {
                let code = response_code(response.headers());
                let elapsed = started.elapsed();
                metrics.record_rpc(&path, code, elapsed);
                span.record("grpc.code", code);
                if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
                // Faults of the server (or of what it depends on) are worth a line each; a
                // client's mistakes and refusals are counted in the metrics instead.
                if matches!(code, 2 | 4 | 13 | 14 | 15) {
                    span.in_scope(|| tracing::warn!(code, elapsed_ms, "request failed"));
                } else {
                    span.in_scope(|| tracing::debug!(code, elapsed_ms, "request served"));
                }
            }
            result
        })
    }
}

/// A tower layer that answers DEADLINE_EXCEEDED when a request's handler takes longer than
/// `after` to produce its response (a stream's body is not cut: only the time to first answer).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    /// The time to first answer a request may take.
    pub after: Duration,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, after: self.after }
    }
}

/// The service [`DeadlineLayer`] wraps around `S`.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    after: Duration,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let after = self.after;
        let future = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(after, future).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the request took longer than the server's deadline of {} ms; try again",
                    after.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

/// A tower layer that answers RESOURCE_EXHAUSTED (reason RATE_LIMITED, with a retry-after) when a
/// client address calls a rate-limited method faster than its [`ClientRate`] allows. It runs
/// before the request is decoded, so a flood costs a map lookup per call.
#[derive(Clone, Default)]
pub struct ClientRateLimitLayer {
    /// Path -> the limiter of its group (methods of one group share buckets).
    by_path: std::sync::Arc<std::collections::HashMap<&'static str, RateLimiter>>,
}

impl ClientRateLimitLayer {
    /// A layer limiting the methods of each group in `rates`; groups without a rate are not limited.
    pub fn new(rates: &[ClientRate]) -> Self {
        let mut by_path = std::collections::HashMap::new();
        for group in rates.iter().filter(|g| g.limiter.rate().is_some()) {
            for path in group.methods {
                by_path.insert(*path, group.limiter.clone());
            }
        }
        Self { by_path: std::sync::Arc::new(by_path) }
    }
}

impl<S> Layer<S> for ClientRateLimitLayer {
    type Service = ClientRateLimit<S>;
    fn layer(&self, inner: S) -> ClientRateLimit<S> {
        ClientRateLimit { inner, by_path: self.by_path.clone() }
    }
}

/// The service [`ClientRateLimitLayer`] wraps around `S`.
#[derive(Clone)]
pub struct ClientRateLimit<S> {
    inner: S,
    by_path: std::sync::Arc<std::collections::HashMap<&'static str, RateLimiter>>,
}

/// The address a request came from, as the rate limits count clients ([`ClientAddressLayer`]
/// decided it).
fn client_address<B>(req: &http::Request<B>) -> Option<std::net::IpAddr> {
    crate::client_address::client_address_of(req.extensions())
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ClientRateLimit<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        if let Some(limiter) = self.by_path.get(req.uri().path()) {
            let client = client_address(&req);
            let key = client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
            let scope = || match client {
                Some(ip) => format!("client address {ip}"),
                None => "this client".to_owned(),
            };
            if let Err(limited) = limiter.acquire(&key, scope) {
                tracing::info!(method = %req.uri().path(), client = %key, "rate limited");
                return Box::pin(std::future::ready(Ok(crate::status::to_status(&limited).into_http())));
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// A tower layer that answers INVALID_ARGUMENT where tonic answers INTERNAL for a request it
/// cannot decode (a bad frame header, a compressed flag without an encoding, a truncated body,
/// bytes that are not the message): those are the caller's fault, and INTERNAL is kept for our
/// bugs. Our own INTERNAL statuses always carry error details, tonic's decode errors never do.
#[derive(Debug, Clone, Copy)]
pub struct MalformedRequestLayer;

impl<S> Layer<S> for MalformedRequestLayer {
    type Service = MalformedRequest<S>;
    fn layer(&self, inner: S) -> MalformedRequest<S> {
        MalformedRequest { inner }
    }
}

/// The service [`MalformedRequestLayer`] wraps around `S`.
#[derive(Debug, Clone)]
pub struct MalformedRequest<S> {
    inner: S,
}

/// The status of a trailers-only response, rewritten if it is tonic's own decode failure.
fn blame_malformed_request(headers: &mut http::HeaderMap) {
    if headers.contains_key("grpc-status-details-bin") {
        return;
    }
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() != tonic::Code::Internal {
        return;
    }
    let blamed = tonic::Status::invalid_argument(format!(
        "malformed gRPC request: {}; send one protobuf message of the method's request type",
        licensing_domain::text::bounded_message(status.message(), 200)
    ));
    let _ = blamed.add_header(headers);
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MalformedRequest<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let future = self.inner.call(req);
        Box::pin(async move {
            let mut response = future.await?;
            blame_malformed_request(response.headers_mut());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[test]
    fn a_call_for_another_service_names_the_one_that_serves_it() {
        let account =
            ["licensing.account.v1.AdminService".to_owned(), "licensing.account.v1.AccountService".to_owned()];
        let error = NotServedHere::of("/licensing.seat.v1.SeatService/Checkout", &account);
        assert_eq!(
            error.to_string(),
            "licensing.seat.v1.SeatService is served by the seat service (this is the account service); use the gateway address, which routes every service, or the seat service's own"
        );
        let status = crate::status::to_status(&error);
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(crate::status::reason_of(&status).as_deref(), Some("SERVED_ELSEWHERE"));
        let unknown = NotServedHere::of("/nope.v1.Thing\n/Do", &account);
        assert_eq!(licensing_domain::error::ClassifiedError::reason(&unknown), "UNKNOWN_SERVICE");
        assert!(unknown.to_string().contains("licensing.account.v1.AccountService"), "{unknown}");
        assert!(!unknown.to_string().contains('\n'), "{unknown}");
    }

    #[test]
    fn decode_failures_blame_the_request_and_our_internal_errors_stay_internal() {
        let mut decode_failure = http::HeaderMap::new();
        tonic::Status::internal("Unexpected EOF decoding stream.").add_header(&mut decode_failure).unwrap();
        blame_malformed_request(&mut decode_failure);
        let status = tonic::Status::from_header_map(&decode_failure).unwrap();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("Unexpected EOF"), "{}", status.message());

        let mut ours = http::HeaderMap::new();
        let bug = licensing_domain::error::StoreError::Corrupt("a row that cannot be read".into());
        crate::status::to_status(&bug).add_header(&mut ours).unwrap();
        blame_malformed_request(&mut ours);
        assert_eq!(tonic::Status::from_header_map(&ours).unwrap().code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn a_client_over_its_rate_gets_resource_exhausted_with_a_retry_after() {
        let ok = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        });
        let rates = [ClientRate {
            what: "login",
            methods: &["/licensing.account.v1.AccountService/Login"],
            limiter: RateLimiter::new("login", Some(crate::limiter::Rate { count: 2, per: Duration::from_secs(60) })),
        }];
        let svc = ClientRateLimitLayer::new(&rates).layer(ok);
        let call = |path: &str| {
            let req = http::Request::builder().uri(path).body(()).unwrap();
            svc.clone().oneshot(req)
        };
        for _ in 0..2 {
            assert_eq!(call("/licensing.account.v1.AccountService/Login").await.unwrap().into_body(), "ok");
        }
        let refused = call("/licensing.account.v1.AccountService/Login").await.unwrap();
        let status = tonic::Status::from_header_map(refused.headers()).expect("a grpc-status header");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("login"), "{}", status.message());
        assert_eq!(refused.headers().get("retry-after").unwrap(), "30");
        // Methods outside the group are not counted.
        assert_eq!(call("/licensing.account.v1.AccountService/Logout").await.unwrap().into_body(), "ok");
    }

    #[test]
    fn every_rate_limited_method_exists() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let paths: std::collections::HashSet<String> = set
            .file
            .iter()
            .flat_map(|f| {
                f.service.iter().flat_map(move |s| {
                    s.method.iter().map(move |m| format!("/{}.{}/{}", f.package(), s.name(), m.name()))
                })
            })
            .collect();
        for group in ClientRate::all(&RateLimits::default()) {
            for path in group.methods {
                assert!(paths.contains(*path), "{path} is not a method of the API");
            }
        }
    }

    #[tokio::test]
    async fn slow_handlers_get_deadline_exceeded_and_fast_ones_pass() {
        let slow = tower::service_fn(|_req: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("late")))
        });
        let response = DeadlineLayer { after: Duration::from_millis(50) }
            .layer(slow)
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a grpc-status header");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);

        let fast = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        });
        let response = DeadlineLayer { after: Duration::from_millis(50) }
            .layer(fast)
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(response.into_body(), "ok");
    }
}
