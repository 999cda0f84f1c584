//! Traces across services, as the compose file's collector would see them: the separate
//! Account, Activation and Seat binaries (PostgreSQL and Redis) export OTLP to a collector this
//! test serves. A product's one trace (its `traceparent`) spans its calls to the Activation and
//! the Seat service, each with its store calls as child spans; the client library carries the
//! product's trace by itself; and the JSON logs carry the same trace ID and a request ID.

use crate::common::process::{separate_services_env, AdminOn, Process};
use crate::common::*;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Exported {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    async fn serve(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Exported> {
        self.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    /// Waits until `done` holds for the spans of `trace_id` (export is batched).
    async fn wait_for(&self, trace_id: &str, done: impl Fn(&[Exported]) -> bool) -> Vec<Exported> {
        for _ in 0..150 {
            let spans = self.of_trace(trace_id);
            if done(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("trace {trace_id} incomplete: {:#?}", self.of_trace(trace_id));
    }
}

/// A request carrying the caller's W3C trace context.
fn traced<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

/// The server span of `method` in `service` within a trace, whose parent is `parent`.
fn server_span<'a>(spans: &'a [Exported], service: &str, method: &str, parent: &str) -> Option<&'a Exported> {
    spans.iter().find(|s| s.service == service && s.name.ends_with(method) && s.parent_span_id == parent)
}

/// Whether `span` has a store call among its descendants.
fn has_store_child(spans: &[Exported], span: &Exported) -> bool {
    let mut frontier = vec![span.span_id.clone()];
    while let Some(id) = frontier.pop() {
        for child in spans.iter().filter(|s| s.parent_span_id == id) {
            if child.name.starts_with("store.") {
                return true;
            }
            frontier.push(child.span_id.clone());
        }
    }
    false
}

#[tokio::test(flavor = "current_thread")]
async fn one_trace_spans_a_products_calls_to_activation_and_seat_with_their_store_calls() {
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let collector = Collector::default();
    let collector_addr = collector.serve().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = separate_services_env(dir.path()).await;
    env.extend([
        ("LICENSING_LOG_FORMAT".to_owned(), "json".to_owned()),
        ("RUST_LOG".to_owned(), "info,licensing_runtime::server=debug".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("http://{collector_addr}")),
        // Export within 100 ms instead of the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ]);
    let mut account = Process::new(env!("CARGO_BIN_EXE_account"), &env);
    let mut activation = Process::new(env!("CARGO_BIN_EXE_activation"), &env);
    let mut seat = Process::new(env!("CARGO_BIN_EXE_seat"), &env);
    let seat_log = dir.path().join("seat.log");
    seat.logs = Some(seat_log.clone());
    // Account first: it applies the migrations.
    account.start().await;
    activation.start().await;
    seat.start().await;

    let admin = AdminOn(account.channel().await);
    let (node_key, floating_key) = admin.licenses().await;

    // The product's trace: its own span, sent as W3C traceparent.
    let trace_id = hex::encode(rand::random::<[u8; 16]>());
    let product_span = hex::encode(rand::random::<[u8; 8]>());
    let traceparent = format!("00-{trace_id}-{product_span}-01");
    let mut activations = ActivationServiceClient::new(activation.channel().await);
    activations.activate(traced(activate_by_key(&node_key, "traced-machine"), &traceparent)).await.unwrap();
    let mut seats = SeatServiceClient::new(seat.channel().await);
    let checkout = traced(checkout_by_key(&floating_key, "traced-client", 60), &traceparent);
    let grant = seats.checkout(checkout).await.unwrap();
    let request_id = grant.metadata().get("x-request-id").unwrap().to_str().unwrap().to_owned();

    let spans = collector
        .wait_for(&trace_id, |spans| {
            let activate = server_span(spans, "licensing-activation", "/Activate", &product_span);
            let checkout = server_span(spans, "licensing-seat", "/Checkout", &product_span);
            matches!((activate, checkout), (Some(a), Some(c)) if has_store_child(spans, a) && has_store_child(spans, c))
        })
        .await;
    let services: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services.into_iter().collect::<Vec<_>>(), ["licensing-activation", "licensing-seat"]);
    let checkout = server_span(&spans, "licensing-seat", "/Checkout", &product_span).unwrap();
    assert_eq!(checkout.name, "licensing.seat.v1.SeatService/Checkout");

    // The client library carries the product's trace context by itself.
    let (library_trace, library_span) = checkout_with_the_client_library(&seat, &activation, &floating_key).await;
    collector
        .wait_for(&library_trace, |spans| server_span(spans, "licensing-seat", "/Checkout", &library_span).is_some())
        .await;

    // The seat's JSON log line for the checkout names its request ID and the product's trace.
    seat.stop().await;
    let log = std::fs::read_to_string(&seat_log).unwrap();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l.to_string().contains(&request_id))
        .unwrap_or_else(|| panic!("no log line with request ID {request_id} in\n{log}"));
    let text = line.to_string();
    assert!(text.contains(&format!("\"trace_id\":\"{trace_id}\"")), "{text}");
    assert!(text.contains("\"request_id\""), "{text}");
    activation.stop().await;
    account.stop().await;
}

/// A checkout by the client library inside a product's traced span; returns that span's trace
/// and span ID.
async fn checkout_with_the_client_library(seat: &Process, activation: &Process, key: &str) -> (String, String) {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing::Instrument as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("product")));
    // This thread only (the test runs on one), so other tests' subscribers are not disturbed.
    let _default = tracing::subscriber::set_default(subscriber);
    let public_key = ActivationServiceClient::new(activation.channel().await)
        .get_verifying_key(licensing_proto::activation::v1::GetVerifyingKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .public_key;
    let client = licensing_client::Client::new(&seat.url(), &public_key).unwrap();
    let span = tracing::info_span!("product launch");
    let ids = {
        let context = span.context();
        let span_context = context.span().span_context().clone();
        (span_context.trace_id().to_string(), span_context.span_id().to_string())
    };
    let guard = client
        .checkout(licensing_client::Credentials::LicenseKey(key.to_owned()), Default::default())
        .instrument(span)
        .await
        .unwrap();
    assert!(guard.release().await);
    ids
}
