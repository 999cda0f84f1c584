//! Test harness: `spawn_app(backend)` starts a server on `127.0.0.1:0` with a fresh database
//! (a temporary SQLite file, or a new PostgreSQL database) and returns clients for it.
//!
//! PostgreSQL is found at `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! When it cannot be reached, PostgreSQL cases are skipped with a message, unless `CI` is set,
//! in which case they fail.

pub mod process;
pub mod proxy;

use licensing::{Application, Overrides, Role};
use licensing_domain::secrets::PasswordHasher;
use licensing_proto::account::v1::admin_service_client::AdminServiceClient;
use licensing_runtime::config::Config;
use sqlx::Connection;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

pub const ADMIN_TOKEN: &str = "adm_TESTTOKEN0123456789ABCDEFGHJK";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether PostgreSQL answers; with `CI` set, not answering fails the test.
pub async fn postgres_available() -> bool {
    let url = postgres_admin_url();
    match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            true
        }
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            if std::env::var_os("CI").is_some() {
                panic!("CI is set and PostgreSQL at {url} cannot be reached: {why}");
            }
            eprintln!(
                "SKIPPED PostgreSQL cases: {url} cannot be reached ({why}); start PostgreSQL or set TEST_DATABASE_URL"
            );
            false
        }
    }
}

/// The backends to run a test on: SQLite always, PostgreSQL when reachable.
pub async fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if postgres_available().await {
        v.push(Backend::Postgres);
    }
    v
}

/// Test databases are named `licensing_test_p<pid>_<random>`, so a run can tell its own from
/// those a finished run left behind.
const TEST_DATABASE_PREFIX: &str = "licensing_test_p";

/// Drops the test databases of runs whose process has ended (each test server's database stays
/// until then, for its restarts; left alone they filled gigabytes), once per process.
async fn drop_databases_of_finished_runs(conn: &mut sqlx::PgConnection) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    if !cfg!(target_os = "linux") {
        return; // whether a run's process lives is read from /proc
    }
    DONE.get_or_init(|| async {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'licensing_test_%'")
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_default();
        for name in names {
            let pid = name.strip_prefix(TEST_DATABASE_PREFIX).and_then(|rest| rest.split('_').next());
            let running = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !running {
                // Best effort: a database still in use by a straggler is left for the next run.
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&mut *conn).await;
            }
        }
    })
    .await;
}

/// Creates an empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let name =
        format!("{TEST_DATABASE_PREFIX}{}_{}", std::process::id(), licensing_domain::ids::new_id("db").to_lowercase());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to PostgreSQL");
    drop_databases_of_finished_runs(&mut conn).await;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    conn.close().await.ok();
    match admin.rfind('/') {
        Some(i) => format!("{}/{name}", &admin[..i]),
        None => panic!("TEST_DATABASE_URL must end with /<database>"),
    }
}

/// A channel to `target` from the loopback address `source` (`127.0.0.2`, ...), as from another
/// client machine.
pub async fn channel_from(source: std::net::IpAddr, target: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_static("http://127.0.0.1")
        .connect_with_connector(tower::service_fn(move |_| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(source, 0))?;
            let stream = socket.connect(target).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
        .await
        .expect("connect from another loopback address")
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The Prometheus scrape endpoint.
    pub metrics_addr: Option<SocketAddr>,
    /// The customer portal in a browser.
    pub portal_addr: Option<SocketAddr>,
    pub backend: Backend,
    pub data_dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
    /// How test clients reach a server that serves TLS (`crate::tls::tls_app` sets it): then
    /// [`TestApp::channel`], and so the admin helpers and `fixture`, connect to
    /// `https://localhost:<port>` with it. `None`: plaintext.
    pub client_tls: Option<tonic::transport::ClientTlsConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Test settings: loopback port 0, a temporary data directory, the test admin token.
pub async fn test_env(backend: Backend, data_dir: &std::path::Path) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("LICENSING_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("LICENSING_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("LICENSING_PORTAL_ADDR", "127.0.0.1:0".to_owned()),
        ("LICENSING_DATA_DIR", data_dir.display().to_string()),
        ("LICENSING_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("LICENSING_SHUTDOWN_GRACE_MS", "2000".to_owned()),
        ("LICENSING_WATCH_POLL_MS", "100".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if backend == Backend::Postgres {
        env.insert("LICENSING_DATABASE_URL".into(), fresh_postgres_database().await);
    }
    env
}

pub fn test_overrides() -> Overrides {
    // Cheap argon2 so tests stay fast; the production parameters are tested in the domain crate.
    Overrides { password_hasher: PasswordHasher::with_params(256, 1, 1), ..Overrides::default() }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let env = test_env(backend, data_dir.path()).await;
    spawn_with_env(backend, data_dir, env).await
}

pub async fn spawn_with_env(backend: Backend, data_dir: tempfile::TempDir, env: HashMap<String, String>) -> TestApp {
    spawn_with(backend, data_dir, env, test_overrides()).await
}

/// A server whose clock the test moves by hand.
pub async fn spawn_app_with_clock(backend: Backend, clock: licensing_domain::clock::ManualClock) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let env = test_env(backend, data_dir.path()).await;
    spawn_with(backend, data_dir, env, Overrides { clock: std::sync::Arc::new(clock), ..test_overrides() }).await
}

pub async fn spawn_with(
    backend: Backend,
    data_dir: tempfile::TempDir,
    env: HashMap<String, String>,
    overrides: Overrides,
) -> TestApp {
    let config = Config::from_lookup(&env, Role::AllInOne.default_addr(), "test").expect("test config");
    let app = Application::build_with(&config, Role::AllInOne, overrides).await.expect("build app");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let portal_addr = app.portal_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        metrics_addr,
        portal_addr,
        backend,
        data_dir,
        env,
        client_tls: None,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    pub async fn channel(&self) -> Channel {
        let endpoint = match &self.client_tls {
            Some(tls) => Channel::from_shared(format!("https://localhost:{}", self.addr.port()))
                .unwrap()
                .tls_config(tls.clone())
                .unwrap(),
            None => Channel::from_shared(format!("http://{}", self.addr)).unwrap(),
        };
        endpoint.connect().await.expect("connect to test server")
    }

    /// A channel to the server from another loopback address (`127.0.0.2`, ...), as from a
    /// second client machine: throttles and rate limits count clients by address.
    pub async fn channel_from(&self, source: std::net::IpAddr) -> Channel {
        channel_from(source, self.addr).await
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    /// Stops the server (graceful drain) and waits for it.
    pub async fn stop(mut self) -> (tempfile::TempDir, HashMap<String, String>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
        (self.data_dir, self.env)
    }

    /// The server's Ed25519 public key, base64, as a product embeds it.
    pub async fn public_key(&self) -> String {
        use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
        ActivationServiceClient::new(self.channel().await)
            .get_verifying_key(licensing_proto::activation::v1::GetVerifyingKeyRequest {})
            .await
            .unwrap()
            .into_inner()
            .public_key
    }

    /// Stops and starts the server again on the same data.
    pub async fn restart(self) -> TestApp {
        let backend = self.backend;
        let client_tls = self.client_tls.clone();
        let (dir, env) = self.stop().await;
        let mut app = spawn_with_env(backend, dir, env).await;
        app.client_tls = client_tls;
        app
    }
}

// Dropping a TestApp drops `stop`, which ends `stopped.await` and so shuts the server down.

/// A request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("authorization", MetadataValue::try_from(format!("Bearer {token}")).unwrap());
    r
}

pub fn admin_req<T>(message: T) -> Request<T> {
    with_token(ADMIN_TOKEN, message)
}

/// The ErrorInfo reason of a status.
pub fn reason(status: &tonic::Status) -> String {
    licensing_runtime::status::reason_of(status).unwrap_or_default()
}

/// A fixture: a product with modules and versions, a customer with a portal password.
pub struct Fixture {
    pub product: String,
    pub customer_id: String,
    pub customer_password: String,
}

pub const CUSTOMER_PASSWORD: &str = "company-wide secret";

pub fn now_s() -> i64 {
    now_ms() / 1000
}

/// The wall clock in Unix milliseconds, as the servers under test read it.
pub fn now_ms() -> i64 {
    use licensing_domain::clock::Clock;
    licensing_domain::clock::SystemClock.now()
}

pub fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

pub async fn fixture(app: &TestApp) -> Fixture {
    use licensing_proto::account::v1 as pb;
    use licensing_proto::common::v1::Module;
    let mut admin = app.admin().await;
    let product = format!("prod-{}", licensing_domain::ids::new_id("p")[2..10].to_lowercase());
    admin
        .create_product(admin_req(pb::CreateProductRequest {
            code: product.clone(),
            name: "CAD Pro".into(),
            modules: vec![
                Module { code: "render".into(), name: "Renderer".into() },
                Module { code: "export".into(), name: "Exporter".into() },
            ],
        }))
        .await
        .unwrap();
    for (version, released) in [("1.0", now_s() - 400 * 86_400), ("2.0", now_s() - 10 * 86_400)] {
        admin
            .add_product_version(admin_req(pb::AddProductVersionRequest {
                product_code: product.clone(),
                version: version.into(),
                released_at: ts(released),
            }))
            .await
            .unwrap();
    }
    let email = format!("{}@example.com", licensing_domain::ids::new_id("m").to_lowercase());
    let customer = admin
        .create_customer(admin_req(pb::CreateCustomerRequest {
            company_name: "Acme".into(),
            contact_email: email,
            password: CUSTOMER_PASSWORD.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    Fixture { product, customer_id: customer.customer_id, customer_password: CUSTOMER_PASSWORD.into() }
}

/// Issues a license of `kind` with `seats`; returns (License ID, license key, activation password).
pub async fn issue_license(
    app: &TestApp,
    f: &Fixture,
    kind: licensing_proto::common::v1::LicenseKind,
    seats: i32,
    tweak: impl FnOnce(&mut licensing_proto::account::v1::IssueLicenseRequest),
) -> (String, String, String) {
    use licensing_proto::account::v1 as pb;
    let mut request = pb::IssueLicenseRequest {
        product_code: f.product.clone(),
        customer_id: f.customer_id.clone(),
        kind: kind as i32,
        seats,
        allowed_deactivations: 3,
        modules: vec!["render".into()],
        expires_at: ts(now_s() + 365 * 86_400),
        ..Default::default()
    };
    tweak(&mut request);
    let issued = app.admin().await.issue_license(admin_req(request)).await.unwrap().into_inner();
    (issued.license.unwrap().license_id, issued.license_key, issued.activation_password)
}

pub async fn get_license(app: &TestApp, license_id: &str) -> licensing_proto::common::v1::License {
    use licensing_proto::account::v1 as pb;
    app.admin()
        .await
        .get_license(admin_req(pb::GetLicenseRequest { license_id: license_id.into() }))
        .await
        .unwrap()
        .into_inner()
        .license
        .unwrap()
}

/// Where floating-seat leases live in a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leases {
    /// The all-in-one server's embedded lease store (SQLite).
    Embedded,
    /// Redis at `TEST_REDIS_URL` (default redis://127.0.0.1:6379).
    Redis,
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// [`redis_url`] on logical database `db` (in place of any database the URL names).
pub fn redis_url_on_db(db: u8) -> String {
    let url = redis_url();
    let server = match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
        None => url,
    };
    format!("{server}/{db}")
}

/// Whether Redis answers; with `CI` set, not answering fails the test.
pub async fn redis_available() -> bool {
    let url = redis_url();
    let outcome = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(5), outcome).await {
        Ok(Ok(_)) => true,
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            if std::env::var_os("CI").is_some() {
                panic!("CI is set and Redis at {url} cannot be reached: {why}");
            }
            eprintln!("SKIPPED Redis cases: {url} cannot be reached ({why}); start Redis or set TEST_REDIS_URL");
            false
        }
    }
}

pub async fn lease_backends() -> Vec<Leases> {
    let mut v = vec![Leases::Embedded];
    if redis_available().await {
        v.push(Leases::Redis);
    }
    v
}

pub async fn spawn_seat_app(leases: Leases) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    env.insert("LICENSING_SWEEP_INTERVAL_MS".into(), "100".into());
    if leases == Leases::Redis {
        env.insert("LICENSING_REDIS_URL".into(), redis_url());
    }
    spawn_with_env(Backend::Sqlite, data_dir, env).await
}

/// The stores to run a test on: SQLite with the embedded lease store always; PostgreSQL with
/// Redis when both are reachable.
pub async fn store_backends() -> Vec<(Backend, Leases)> {
    let mut v = vec![(Backend::Sqlite, Leases::Embedded)];
    if postgres_available().await && redis_available().await {
        v.push((Backend::Postgres, Leases::Redis));
    }
    v
}

/// A server on `backend` with its leases in `leases`, with `extra` settings over the test ones.
pub async fn spawn_app_on(backend: Backend, leases: Leases, extra: &[(&str, &str)]) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut env = test_env(backend, data_dir.path()).await;
    if leases == Leases::Redis {
        env.insert("LICENSING_REDIS_URL".into(), redis_url());
    }
    for (var, value) in extra {
        env.insert((*var).to_owned(), (*value).to_owned());
    }
    spawn_with_env(backend, data_dir, env).await
}

/// The long-lived streams callers hold open on a server: a load balancer's health `Watch` of "",
/// a product's `WatchLicense`, and a `WaitForSeat` queued behind every seat.
pub struct OpenStreams {
    pub health: tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    pub license: tonic::Streaming<licensing_proto::activation::v1::WatchLicenseResponse>,
    pub seat: tonic::Streaming<licensing_proto::seat::v1::WaitForSeatResponse>,
}

/// How long a test waits for what should come at once, so a missing answer fails rather than
/// hangs (never a measure of speed).
pub const DOES_NOT_HANG: Duration = Duration::from_secs(10);

impl OpenStreams {
    /// Opens each on `channel` and reads its first message, with `node_locked_key` activated on
    /// a new machine and both seats of `floating_key` (two, as `process::AdminOn::licenses`
    /// issues) held.
    pub async fn open(channel: Channel, node_locked_key: &str, floating_key: &str) -> Self {
        use licensing_proto::activation::v1 as act;
        use licensing_proto::seat::v1 as seat;
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
            .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);

        let mut activations = act::activation_service_client::ActivationServiceClient::new(channel.clone());
        let activate = activate_by_key(node_locked_key, "watching-machine");
        let fingerprint = activate.machine.as_ref().unwrap().fingerprint.clone();
        activations.activate(activate).await.unwrap();
        let credentials = Some(act::LicenseCredentials {
            credential: Some(act::license_credentials::Credential::LicenseKey(node_locked_key.into())),
        });
        let mut license = activations
            .watch_license(act::WatchLicenseRequest { credentials, fingerprint })
            .await
            .unwrap()
            .into_inner();
        assert!(license.message().await.unwrap().unwrap().certificate.is_some(), "a certificate first");

        let mut seats = seat::seat_service_client::SeatServiceClient::new(channel);
        for holder in ["holder-1", "holder-2"] {
            seats.checkout(checkout_by_key(floating_key, holder, 60)).await.unwrap();
        }
        let wait = seat::WaitForSeatRequest {
            checkout: Some(checkout_by_key(floating_key, "waiter", 60)),
            max_wait: Some(prost_types::Duration { seconds: 120, nanos: 0 }),
        };
        let mut seat = seats.wait_for_seat(wait).await.unwrap().into_inner();
        let position = seat.message().await.unwrap().unwrap().event;
        assert_eq!(position, Some(seat::wait_for_seat_response::Event::QueuePosition(1)));
        Self { health, license, seat }
    }

    /// Once the drain starts: the health watch ends after NOT_SERVING (read now unless `health_heard`
    /// says it was read already), `WatchLicense` and `WaitForSeat` end with UNAVAILABLE and a
    /// message to reconnect.
    pub async fn assert_ended_by_the_drain(mut self, health_heard: bool, what: &str) {
        use tonic_health::pb::health_check_response::ServingStatus;
        fn next<T>(result: Result<T, tokio::time::error::Elapsed>, what: &str, stream: &str) -> T {
            result.unwrap_or_else(|_| panic!("{what}: the {stream} stream is still open after the drain started"))
        }
        if !health_heard {
            let update = next(tokio::time::timeout(DOES_NOT_HANG, self.health.message()).await, what, "health");
            let status = update.expect("NOT_SERVING, not an error").expect("NOT_SERVING before the end").status;
            assert_eq!(status, ServingStatus::NotServing as i32, "{what}");
        }
        let end = next(tokio::time::timeout(DOES_NOT_HANG, self.health.message()).await, what, "health");
        assert!(matches!(end, Ok(None)), "{what}: the health watch ends cleanly after NOT_SERVING: {end:?}");
        for (stream, ended) in [
            ("WatchLicense", tokio::time::timeout(DOES_NOT_HANG, self.license.message()).await.map(|m| m.map(|_| ()))),
            ("WaitForSeat", tokio::time::timeout(DOES_NOT_HANG, self.seat.message()).await.map(|m| m.map(|_| ()))),
        ] {
            let status = next(ended, what, stream).expect_err("ends with a status");
            assert_eq!(status.code(), tonic::Code::Unavailable, "{what} {stream}: {status:?}");
            assert_eq!(reason(&status), "SHUTTING_DOWN", "{what} {stream}");
            assert!(status.message().contains("reconnect"), "{what} {stream}: {}", status.message());
        }
    }
}

pub async fn portal(
    app: &TestApp,
) -> licensing_proto::account::v1::account_service_client::AccountServiceClient<Channel> {
    licensing_proto::account::v1::account_service_client::AccountServiceClient::new(app.channel().await)
}

/// Logs a customer in to the portal; returns the session token.
pub async fn login(app: &TestApp, login: &str, password: &str) -> Result<String, tonic::Status> {
    portal(app)
        .await
        .login(licensing_proto::account::v1::LoginRequest { login: login.into(), password: password.into() })
        .await
        .map(|r| r.into_inner().session_token)
}

pub async fn seat_client(app: &TestApp) -> licensing_proto::seat::v1::seat_service_client::SeatServiceClient<Channel> {
    licensing_proto::seat::v1::seat_service_client::SeatServiceClient::new(app.channel().await)
}

/// The live leases of a license, as the admin lists them.
pub async fn live_leases(app: &TestApp, license_id: &str) -> Vec<licensing_proto::common::v1::Lease> {
    seat_client(app)
        .await
        .list_leases(admin_req(licensing_proto::seat::v1::ListLeasesRequest { license_id: license_id.into() }))
        .await
        .unwrap()
        .into_inner()
        .leases
}

/// Another customer with the portal password [`CUSTOMER_PASSWORD`]; returns its ID.
pub async fn create_customer(app: &TestApp, company_name: &str, email: &str) -> String {
    app.admin()
        .await
        .create_customer(admin_req(licensing_proto::account::v1::CreateCustomerRequest {
            company_name: company_name.into(),
            contact_email: email.into(),
            password: CUSTOMER_PASSWORD.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap()
        .customer_id
}

/// An activation by license key of a machine whose fingerprint components all derive from `machine`.
pub fn activate_by_key(key: &str, machine: &str) -> licensing_proto::activation::v1::ActivateRequest {
    use licensing_proto::activation::v1 as act;
    act::ActivateRequest {
        credentials: Some(act::LicenseCredentials {
            credential: Some(act::license_credentials::Credential::LicenseKey(key.into())),
        }),
        machine: Some(act::MachineInfo {
            fingerprint: [("machine-id", machine), ("disk-serial", machine), ("mac", machine)]
                .iter()
                .map(|(n, v)| licensing_proto::common::v1::FingerprintComponent {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            machine_name: machine.into(),
            platform: "linux-x86_64".into(),
            product_version: "1.0".into(),
        }),
    }
}

/// A checkout by license key for `client`, with a lease TTL of `ttl_s` seconds.
pub fn checkout_by_key(key: &str, client: &str, ttl_s: i64) -> licensing_proto::seat::v1::CheckoutRequest {
    use licensing_proto::seat::v1 as seat;
    seat::CheckoutRequest {
        credentials: Some(seat::SeatCredentials {
            credential: Some(seat::seat_credentials::Credential::LicenseKey(key.into())),
        }),
        client_instance_id: client.into(),
        ttl: Some(prost_types::Duration { seconds: ttl_s, nanos: 0 }),
        ..Default::default()
    }
}

/// `GET /metrics` of a server's scrape endpoint: the Prometheus text.
pub async fn scrape(metrics_addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(metrics_addr).await.expect("connect to the metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "scrape answered {head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the series `name` whose labels include every one of `labels`; `None` when no
/// such series is in `text`. Panics when several match, so a test names a series exactly.
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let has = |(k, v): &(&str, &str)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\""));
            (series_name == name && labels.iter().all(has)).then(|| value.parse().expect("a number"))
        })
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?} names {} series", matching.len());
    matching.first().copied()
}

/// Every series the Grafana dashboard (deploy/grafana/dashboards/licensing.json) queries.
pub fn dashboard_series() -> Vec<String> {
    let path = format!("{}/deploy/grafana/dashboards/licensing.json", env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .flat_map(|target| licensing_series_in(target["expr"].as_str().unwrap()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The `licensing_*` series a PromQL expression names.
pub fn licensing_series_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("licensing_"))
        .map(str::to_owned)
        .collect()
}

/// A product for tests that drive the stores directly: code `suite`, modules `a` and `b`.
pub fn suite_product() -> licensing_domain::model::Product {
    use licensing_domain::model::{Module, Product};
    Product {
        code: "suite".into(),
        name: "Suite".into(),
        modules: vec![Module { code: "a".into(), name: "A".into() }, Module { code: "b".into(), name: "B".into() }],
        versions: vec![],
        created_at: 1,
    }
}

/// An active license of [`suite_product`] (module `a`, far-off expiry), to insert into a store.
pub fn new_license(
    customer_id: &str,
    kind: licensing_domain::model::LicenseKind,
    seats: i32,
) -> licensing_domain::model::License {
    use licensing_domain::model::{License, LicenseStatus};
    License {
        license_id: licensing_domain::ids::new_id(licensing_domain::ids::LICENSE),
        product_code: "suite".into(),
        customer_id: customer_id.into(),
        kind,
        status: LicenseStatus::Active,
        seats,
        allowed_deactivations: 1,
        activations_used: 0,
        deactivations_used: 0,
        modules: vec!["a".into()],
        module_entitlements: Default::default(),
        valid_from: 0,
        expires_at: Some(i64::MAX / 2),
        grace_period_ms: 0,
        upgrades_until: None,
        associated_customer_id: None,
        portal_deactivation_counts: true,
        replaces_license_id: None,
        notes: "first".into(),
        licensee_name: String::new(),
        seat_policy: Default::default(),
        meters: Vec::new(),
        heartbeat_timeout_ms: None,
        policy_id: None,
        policy_revision: 0,
        first_use: None,
        server_grants: Vec::new(),
        created_at: 1,
        updated_at: 1,
    }
}

/// A command-line tool a test runs (`grpcurl`, `buf`, ...): the path in `env_var` (scripts/test.sh
/// installs them under target/tools and exports it), else `name` on the PATH. `None`, with a
/// message, when it is not there; with `CI` set that fails the test instead.
pub fn tool(env_var: &str, name: &str, version_flag: &str) -> Option<String> {
    let program = std::env::var(env_var).unwrap_or_else(|_| name.to_owned());
    match std::process::Command::new(&program).arg(version_flag).output() {
        Ok(output) if output.status.success() => Some(program),
        outcome => {
            let why = match outcome {
                Ok(output) => format!("{program} {version_flag} failed: {}", String::from_utf8_lossy(&output.stderr)),
                Err(e) => format!("{program}: {e}"),
            };
            if std::env::var_os("CI").is_some() {
                panic!("{why} (CI is set: ./scripts/test.sh installs it and sets {env_var})");
            }
            eprintln!("SKIPPED: {why}; ./scripts/test.sh installs it and sets {env_var}");
            None
        }
    }
}
