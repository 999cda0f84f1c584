//! Metrics through OpenTelemetry, read out in the Prometheus text format on `GET /metrics` of a
//! small HTTP listener beside the gRPC port (`LICENSING_METRICS_ADDR`).
//!
//! Three kinds of series:
//! - recorded as things happen: RPC latency by method and status ([`Metrics::record_rpc`], from
//!   the server stack), seat denials and activations (through the domain's [`Observer`]);
//! - read when scraped, from the stores and queues that hold the truth ([`GaugeSource`]): seats in
//!   use and seats allowed per license and feature, WaitForSeat queue lengths, usage-log drops, and
//!   the health of the PostgreSQL pool and of Redis. Seat counts come from the lease store, not
//!   from a counter of this process, so every replica reports the same value (aggregate with
//!   `max`, not `sum`), and a restart does not lose them;
//! - `target_info` with the service name, `licensing_build_info` with the version, and the
//!   standard `process_*` series (CPU, memory, open files, threads, start time; Linux only).
//!
//! Each [`crate::server::GrpcServer`] owns one [`Metrics`] (no global state), so tests can run
//! several servers in one process and scrape each.

use async_trait::async_trait;
use licensing_domain::observe::Observer;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A value read when the metrics are scraped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gauge {
    /// Seats held on a license (and feature), lingering and borrowed seats included.
    SeatsInUse,
    /// Seats a license (or feature) allows.
    SeatsAllowed,
    /// Live leases of a license (processes; several may share one seat).
    LeasesLive,
    /// Clients waiting in WaitForSeat, per license, in this process.
    SeatWaiters,
    /// Usage-log events lost because the queue was full or the store failed (a counter).
    UsageLogDropped,
    /// 1 when the store answered a ping at scrape time, else 0.
    StoreUp,
    /// Connections of the SQL pool, by state (idle, in_use).
    DbPoolConnections,
    /// Seconds until new seats are handed out again after the lease store lost its leases; 0
    /// when it is not recovering.
    LeaseStoreRecovery,
}

impl Gauge {
    const ALL: [Gauge; 8] = [
        Gauge::SeatsInUse,
        Gauge::SeatsAllowed,
        Gauge::LeasesLive,
        Gauge::SeatWaiters,
        Gauge::UsageLogDropped,
        Gauge::StoreUp,
        Gauge::DbPoolConnections,
        Gauge::LeaseStoreRecovery,
    ];

    /// OpenTelemetry name; Prometheus sees dots as underscores.
    fn name(self) -> &'static str {
        match self {
            Gauge::SeatsInUse => "licensing.seats.in_use",
            Gauge::SeatsAllowed => "licensing.seats.allowed",
            Gauge::LeasesLive => "licensing.leases.live",
            Gauge::SeatWaiters => "licensing.seat.waiters",
            Gauge::UsageLogDropped => "licensing.usage_log.dropped",
            Gauge::StoreUp => "licensing.store.up",
            Gauge::DbPoolConnections => "licensing.db.pool.connections",
            Gauge::LeaseStoreRecovery => "licensing.lease_store.recovery_seconds",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Gauge::SeatsInUse => "Seats held per license and feature (from the lease store)",
            Gauge::SeatsAllowed => "Seats allowed per license and feature",
            Gauge::LeasesLive => "Live leases per license and feature (from the lease store)",
            Gauge::SeatWaiters => "Clients waiting in WaitForSeat per license, in this process",
            Gauge::UsageLogDropped => "Usage-log events lost (queue full or store failing)",
            Gauge::StoreUp => "1 when the store answered a ping at scrape time",
            Gauge::DbPoolConnections => "Connections of the SQL pool by state",
            Gauge::LeaseStoreRecovery => {
                "Seconds until new seats are handed out again after the lease store lost its leases (0: not recovering)"
            }
        }
    }
}

/// One reading of a [`Gauge`], with its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The gauge read.
    pub gauge: Gauge,
    /// Label names and values, e.g. `("license_id", "lic_…")`.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

impl Reading {
    /// A reading of `gauge` with `labels` (copied).
    pub fn new(gauge: Gauge, labels: &[(&'static str, &str)], value: f64) -> Self {
        Self { gauge, labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(), value }
    }
}

/// Something that knows current values (a store, a queue), read at each scrape.
#[async_trait]
pub trait GaugeSource: Send + Sync {
    /// Appends the source's current readings to `out`.
    async fn read(&self, out: &mut Vec<Reading>);
}

/// How long one source may take at a scrape before its readings are left out.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bounds of the RPC latency histogram, in seconds: sub-millisecond answers to the
/// 10 s default deadline.
const LATENCY_BOUNDS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// The process's metrics (OpenTelemetry instruments exported for Prometheus); cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    rpc_duration: Histogram<f64>,
    seat_denials: Counter<u64>,
    activations: Counter<u64>,
    /// The last scrape's readings, which the observable instruments report.
    readings: Arc<Mutex<HashMap<Gauge, Vec<Reading>>>>,
    sources: Mutex<Vec<Arc<dyn GaugeSource>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new("licensing")
    }
}

impl Metrics {
    /// Metrics of the service `service_name` (its OpenTelemetry resource name).
    pub fn new(service_name: &str) -> Self {
        let registry = prometheus::Registry::new();
        register_process_series(&registry);
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .expect("a fresh registry accepts the exporter");
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.to_owned()).build();
        let provider = SdkMeterProvider::builder().with_reader(exporter).with_resource(resource).build();
        let meter = provider.meter("licensing");
        let readings: Arc<Mutex<HashMap<Gauge, Vec<Reading>>>> = Arc::default();
        register_observables(&meter, &readings);
        let rpc_duration = meter
            .f64_histogram("licensing.rpc.duration")
            .with_unit("s")
            .with_description("gRPC requests served, by method and status code, until the response headers")
            .with_boundaries(LATENCY_BOUNDS.to_vec())
            .build();
        let seat_denials = meter
            .u64_counter("licensing.seat.denials")
            .with_description("Checkouts refused for want of a seat (or by a seat policy), per license and feature")
            .build();
        let activations = meter
            .u64_counter("licensing.activations")
            .with_description("New node-locked activations per product")
            .build();
        Self {
            inner: Arc::new(Inner {
                provider,
                registry,
                rpc_duration,
                seat_denials,
                activations,
                readings,
                sources: Mutex::default(),
            }),
        }
    }

    /// Adds a source read at every scrape.
    pub fn add_source(&self, source: Arc<dyn GaugeSource>) {
        self.inner.sources.lock().unwrap_or_else(|p| p.into_inner()).push(source);
    }

    /// Records one served request. `code` is the gRPC status code (0 is OK).
    pub fn record_rpc(&self, path: &str, code: i32, elapsed: Duration) {
        let (service, method) = split_path(path);
        self.inner.rpc_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("rpc_service", service.to_owned()),
                KeyValue::new("rpc_method", method.to_owned()),
                KeyValue::new("grpc_code", code_name(code)),
            ],
        );
    }

    /// Reads every source, then renders all series in the Prometheus text format.
    pub async fn render(&self) -> String {
        let sources = self.inner.sources.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut fresh: Vec<Reading> = vec![];
        for source in sources {
            let mut out = vec![];
            if tokio::time::timeout(SOURCE_TIMEOUT, source.read(&mut out)).await.is_ok() {
                fresh.extend(out);
            } else {
                tracing::warn!("a metrics source took longer than {SOURCE_TIMEOUT:?}; its readings are left out");
            }
        }
        let mut by_gauge: HashMap<Gauge, Vec<Reading>> = HashMap::new();
        for reading in fresh {
            by_gauge.entry(reading.gauge).or_default().push(reading);
        }
        *self.inner.readings.lock().unwrap_or_else(|p| p.into_inner()) = by_gauge;
        let families = self.inner.registry.gather();
        let mut text = String::new();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut text) {
            tracing::error!(error = %e, "encoding metrics");
        }
        text
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

impl Observer for Metrics {
    fn seat_denied(&self, license_id: &str, feature: &str, reason: &str) {
        self.inner.seat_denials.add(
            1,
            &[
                KeyValue::new("license_id", license_id.to_owned()),
                KeyValue::new("feature", feature.to_owned()),
                KeyValue::new("reason", reason.to_owned()),
            ],
        );
    }

    fn activated(&self, product_code: &str) {
        self.inner.activations.add(1, &[KeyValue::new("product", product_code.to_owned())]);
    }
}

/// `licensing_build_info{version}` (always 1) and, on Linux, the standard `process_*` series of
/// this process.
fn register_process_series(registry: &prometheus::Registry) {
    let build_info = prometheus::IntGauge::with_opts(
        prometheus::Opts::new("licensing_build_info", "The running build: always 1, its version as a label")
            .const_label("version", env!("CARGO_PKG_VERSION")),
    )
    .expect("a valid metric name and label");
    build_info.set(1);
    if let Err(e) = registry.register(Box::new(build_info)) {
        tracing::error!(error = %e, "registering licensing_build_info");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())) {
        tracing::error!(error = %e, "registering the process metrics");
    }
}

fn register_observables(meter: &Meter, readings: &Arc<Mutex<HashMap<Gauge, Vec<Reading>>>>) {
    fn attributes(reading: &Reading) -> Vec<KeyValue> {
        reading.labels.iter().map(|(k, v)| KeyValue::new(*k, v.clone())).collect()
    }
    for gauge in Gauge::ALL {
        let readings = readings.clone();
        let each = move |f: &mut dyn FnMut(&Reading)| {
            if let Some(list) = readings.lock().unwrap_or_else(|p| p.into_inner()).get(&gauge) {
                list.iter().for_each(f);
            }
        };
        if gauge == Gauge::UsageLogDropped {
            meter
                .u64_observable_counter(gauge.name())
                .with_description(gauge.description())
                .with_callback(move |o| each(&mut |r| o.observe(r.value as u64, &attributes(r))))
                .build();
        } else {
            meter
                .f64_observable_gauge(gauge.name())
                .with_description(gauge.description())
                .with_callback(move |o| each(&mut |r| o.observe(r.value, &attributes(r))))
                .build();
        }
    }
}

/// `/pkg.Service/Method` -> (`pkg.Service`, `Method`); anything else is kept whole as the service.
fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/').split_once('/').unwrap_or((path, ""))
}

/// The canonical name of a gRPC status code, as Prometheus labels usually carry it.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown` completes. Returns the bound address (port 0
/// picks one) and the serving task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Response, StatusCode};

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics listener accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let response = match (req.method(), req.uri().path()) {
                            (&Method::GET, "/metrics") => Response::builder()
                                .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                                .body(Full::new(Bytes::from(metrics.render().await))),
                            _ => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from_static(b"metrics are at GET /metrics\n"))),
                        };
                        Ok::<_, std::convert::Infallible>(response.expect("static response parts are valid"))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    #[async_trait]
    impl GaugeSource for Fixed {
        async fn read(&self, out: &mut Vec<Reading>) {
            out.push(Reading::new(Gauge::SeatsInUse, &[("license_id", "lic_1"), ("feature", "")], 3.0));
            out.push(Reading::new(Gauge::UsageLogDropped, &[], 7.0));
        }
    }

    #[tokio::test]
    async fn renders_recorded_and_read_series_in_prometheus_text() {
        let metrics = Metrics::new("unit-test");
        metrics.add_source(Arc::new(Fixed));
        metrics.record_rpc("/licensing.seat.v1.SeatService/Checkout", 0, Duration::from_millis(3));
        metrics.record_rpc("/licensing.seat.v1.SeatService/Checkout", 8, Duration::from_millis(1));
        metrics.seat_denied("lic_1", "cad", "NO_SEAT");
        metrics.activated("prod_1");
        let text = metrics.render().await;
        for expected in [
            r#"licensing_seats_in_use{feature="",license_id="lic_1"} 3"#,
            r#"licensing_usage_log_dropped_total 7"#,
            r#"licensing_seat_denials_total{feature="cad",license_id="lic_1",reason="NO_SEAT"} 1"#,
            r#"licensing_activations_total{product="prod_1"} 1"#,
            r#"licensing_rpc_duration_seconds_count{grpc_code="OK",rpc_method="Checkout",rpc_service="licensing.seat.v1.SeatService"} 1"#,
            r#"licensing_rpc_duration_seconds_count{grpc_code="RESOURCE_EXHAUSTED",rpc_method="Checkout",rpc_service="licensing.seat.v1.SeatService"} 1"#,
            r#"target_info{service_name="unit-test","#,
            concat!(r#"licensing_build_info{version=""#, env!("CARGO_PKG_VERSION"), r#""} 1"#),
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(split_path("/a.b.Svc/Do"), ("a.b.Svc", "Do"));
        assert_eq!(split_path("weird"), ("weird", ""));
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
