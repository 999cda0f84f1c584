//! Keeps docker-compose.yml honest without a Docker engine: reads it, starts the same three
//! binaries natively with the same environment variables (service hostnames mapped to
//! 127.0.0.1, `${VAR:-default}` resolved to its default, and the database name swapped for a
//! fresh one so runs do not share state; PostgreSQL and Redis are the test servers of
//! `TEST_DATABASE_URL` and `TEST_REDIS_URL`), then checks each is SERVING, both through the gRPC
//! health service and through the compose file's own healthcheck command. The TLS overlay
//! (`deploy/compose.tls.yml`) is run the same way, with certificates from its own script.

use crate::common::*;
use serde_yaml::Value;
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const SERVICES: [&str; 3] = ["account", "activation", "seat"];
const HOSTNAMES: [&str; 3] = ["postgres", "redis", "jaeger"];
/// The gateway's fixed address on the compose network, which the services trust.
const COMPOSE_GATEWAY_ADDRESS: &str = "172.28.0.250";
/// Where every service serves its metrics inside the compose network.
const METRICS_PORT: u16 = 9464;

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn yaml(file: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut value: Value = serde_yaml::from_str(&text).unwrap();
    value.apply_merge().unwrap();
    value
}

/// `${NAME:-default}` becomes `default` (compose's interpolation, with nothing set).
fn interpolate(value: &str) -> String {
    let mut out = value.to_owned();
    while let Some(start) = out.find("${") {
        let end = out[start..].find('}').map(|e| start + e).expect("closed ${");
        let inner = &out[start + 2..end];
        let default = inner.split_once(":-").map(|(_, d)| d).unwrap_or("");
        out = format!("{}{}{}", &out[..start], default, &out[end + 1..]);
    }
    out
}

fn native_env(service: &Value, database_url: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    for (k, v) in service["environment"].as_mapping().expect("environment as a mapping") {
        let key = k.as_str().unwrap().to_owned();
        let mut value = interpolate(v.as_str().unwrap_or_else(|| panic!("{key} is a string")));
        for host in HOSTNAMES {
            value = value.replace(&format!("@{host}:"), "@127.0.0.1:").replace(&format!("//{host}:"), "//127.0.0.1:");
        }
        value = value.replace("0.0.0.0:", "127.0.0.1:");
        // The gateway's fixed compose address is 127.0.0.1 here too (tests start nginx there).
        value = value.replace(COMPOSE_GATEWAY_ADDRESS, "127.0.0.1");
        env.insert(key, value);
    }
    let compose_url = env["LICENSING_DATABASE_URL"].clone();
    assert!(compose_url.starts_with("postgres://licensing:licensing@127.0.0.1:5432/"), "{compose_url}");
    assert_eq!(env["LICENSING_REDIS_URL"], "redis://127.0.0.1:6379");
    env.insert("LICENSING_DATABASE_URL".into(), database_url.to_owned());
    env.insert("LICENSING_REDIS_URL".into(), redis_url());
    env
}

/// The compose database URL, with the compose user, on a fresh database.
pub(crate) async fn compose_database() -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await.unwrap();
    let exists: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM pg_roles WHERE rolname = 'licensing'").fetch_optional(&mut conn).await.unwrap();
    if exists.is_none() {
        let _ = sqlx::query("CREATE ROLE licensing LOGIN PASSWORD 'licensing'").execute(&mut conn).await;
    }
    let name = format!("licensing_compose_{}", licensing_domain::ids::new_id("db").to_lowercase());
    sqlx::query(&format!("CREATE DATABASE {name} OWNER licensing")).execute(&mut conn).await.unwrap();
    let admin = postgres_admin_url();
    let host_port = admin.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap_or("127.0.0.1:5432");
    format!("postgres://licensing:licensing@{host_port}/{name}")
}

fn binary(command: &str) -> &'static str {
    match command {
        "account" => env!("CARGO_BIN_EXE_account"),
        "activation" => env!("CARGO_BIN_EXE_activation"),
        "seat" => env!("CARGO_BIN_EXE_seat"),
        "healthcheck" => env!("CARGO_BIN_EXE_healthcheck"),
        other => panic!("compose names an unknown binary {other}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
}

/// Runs the health check as the container would, with the service's environment, until it
/// passes (up to 30 s).
async fn wait_serving(healthcheck: &[String], env: &HashMap<String, String>) -> bool {
    for _ in 0..150 {
        if wait_once(healthcheck, env).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn wait_once(healthcheck: &[String], env: &HashMap<String, String>) -> bool {
    Command::new(binary(&healthcheck[0]))
        .args(&healthcheck[1..])
        .env_clear()
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap()
        .success()
}

struct Running(Vec<(String, Child)>);

impl Drop for Running {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

/// The compose file's Redis runs with every setting the lease store is sized for.
#[test]
fn compose_redis_has_the_lease_stores_recommended_settings() {
    let command = strings(&compose()["services"]["redis"]["command"]);
    for (name, value) in licensing_store::redis_leases::RECOMMENDED_CONFIG {
        let flag = command.iter().position(|a| a == &format!("--{name}"));
        let set = flag.and_then(|i| command.get(i + 1)).and_then(|v| v.parse::<i64>().ok());
        assert!(set.is_some_and(|v| v >= *value), "docker-compose's redis command sets --{name} {value}: {command:?}");
    }
}

/// Prometheus scrapes each service where it serves its metrics; Grafana is provisioned with
/// that Prometheus and the dashboard, whose queries name only series the services export.
#[test]
fn compose_monitoring_scrapes_every_service_and_provisions_the_dashboard() {
    let compose = compose();
    let services = &compose["services"];
    for name in SERVICES {
        let addr = services[name]["environment"]["LICENSING_METRICS_ADDR"].as_str().unwrap();
        assert_eq!(addr, format!("0.0.0.0:{METRICS_PORT}"), "{name} serves metrics to the compose network");
    }
    // Prometheus: one job per service, at the service's metrics port.
    let mounts = strings(&services["prometheus"]["volumes"]);
    assert_eq!(
        mounts,
        [
            "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
            // Beside the configuration, whose rule_files names it (tests/monitoring.rs).
            "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro",
            // The image's storage path: its history survives a restart.
            "prometheus-data:/prometheus",
        ]
    );
    assert!(compose["volumes"]["prometheus-data"].is_null() && compose["volumes"].get("prometheus-data").is_some());
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(strings(&prometheus["rule_files"]), ["alerts.yml"]);
    let mut targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| strings(&job["static_configs"][0]["targets"]))
        .collect();
    targets.sort();
    let expected: Vec<String> = SERVICES.iter().map(|s| format!("{s}:{METRICS_PORT}")).collect();
    assert_eq!(targets, expected);
    assert_eq!(strings(&services["prometheus"]["ports"]), ["9090:9090"]);

    // Grafana: the provisioning directory and the dashboards where the provider looks.
    let mounts = strings(&services["grafana"]["volumes"]);
    assert!(mounts.contains(&"./deploy/grafana/provisioning:/etc/grafana/provisioning:ro".to_owned()), "{mounts:?}");
    let dashboards_mount = mounts
        .iter()
        .find_map(|m| m.strip_prefix("./deploy/grafana/dashboards:"))
        .expect("the dashboards are mounted")
        .trim_end_matches(":ro");
    let provider = yaml("deploy/grafana/provisioning/dashboards/licensing.yml");
    assert_eq!(provider["providers"][0]["options"]["path"].as_str(), Some(dashboards_mount));
    // Grafana's admin password comes from the environment, with no default to leave open.
    let password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].as_str().unwrap();
    assert!(password.starts_with("${GRAFANA_ADMIN_PASSWORD:?"), "{password}");
    // The Account service waits for Redis too (its license changes raise revisions there).
    for dependency in ["postgres", "redis"] {
        assert_eq!(
            services["account"]["depends_on"][dependency]["condition"].as_str(),
            Some("service_healthy"),
            "account waits for {dependency}"
        );
    }
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let datasource = &datasource["datasources"][0];
    assert_eq!(datasource["url"].as_str(), Some("http://prometheus:9090"), "the compose Prometheus");
    let uid = datasource["uid"].as_str().unwrap();

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}/deploy/grafana/dashboards/licensing.json", env!("CARGO_MANIFEST_DIR")))
            .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "a panel for each kind of metric");
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"].as_str(), Some(uid), "{}", panel["title"]);
        }
    }
    // tests/operations.rs checks that each series named here is exported.
    assert!(!dashboard_series().is_empty());
}

#[tokio::test]
async fn compose_services_start_natively_and_serve() {
    if !postgres_available().await || !redis_available().await {
        return;
    }
    run_compose(None).await;
}

#[tokio::test]
async fn the_tls_overlay_serves_mutual_tls_with_the_scripts_certificates() {
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tls/make-dev-certs.sh");
    let made = Command::new("bash").arg(script).arg(certs.path()).stdout(Stdio::null()).status().await.unwrap();
    assert!(made.success(), "{script} made the certificates");
    run_compose(Some(certs.path())).await;
}

/// The overlay's environment of `name`, its /tls/ paths pointing into `certs`.
fn tls_overlay_env(name: &str, certs: &std::path::Path) -> HashMap<String, String> {
    let overlay = yaml("deploy/compose.tls.yml");
    let service = &overlay["services"][name];
    let mount = strings(&service["volumes"]);
    assert_eq!(mount, vec!["./deploy/tls/certs:/tls:ro".to_owned()], "{name} mounts the certificates");
    service["environment"]
        .as_mapping()
        .expect("environment as a mapping")
        .iter()
        .map(|(k, v)| {
            let value = v.as_str().unwrap().replace("/tls/", &format!("{}/", certs.display()));
            (k.as_str().unwrap().to_owned(), value)
        })
        .collect()
}

/// A service started: its name, the port it serves gRPC on here, its health check, its environment.
type Check = (&'static str, u16, Vec<String>, HashMap<String, String>);

/// The compose services running natively: each one's gRPC port here, its health check and
/// environment, and its metrics port.
struct Started {
    running: Running,
    checks: Vec<Check>,
    metrics_ports: Vec<(&'static str, u16)>,
    portals: Vec<u16>,
    _data: tempfile::TempDir,
}

impl Started {
    fn grpc_port(&self, name: &str) -> u16 {
        self.checks.iter().find(|(n, ..)| *n == name).map(|(_, port, ..)| *port).unwrap()
    }

    fn env(&self, name: &str) -> &HashMap<String, String> {
        self.checks.iter().find(|(n, ..)| *n == name).map(|(.., env)| env).unwrap()
    }

    /// SIGTERM: each drains and exits cleanly.
    async fn stop(mut self) {
        for (name, child) in &mut self.running.0 {
            let pid = child.id().unwrap().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
            let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .expect("exits after SIGTERM")
                .unwrap();
            assert!(status.success(), "{name} exited with {status}");
        }
    }
}

/// Starts the compose services natively (with the TLS overlay when `tls_certs` is set) and
/// waits until each is SERVING through its own health check.
async fn start_compose(tls_certs: Option<&std::path::Path>) -> Started {
    start_compose_with(tls_certs, &[]).await
}

/// [`start_compose`], with `overrides` set in every service's environment.
async fn start_compose_with(tls_certs: Option<&std::path::Path>, overrides: &[(&str, &str)]) -> Started {
    let compose = compose();
    let data = tempfile::tempdir().unwrap();
    let services = &compose["services"];
    for dependency in ["postgres", "redis"] {
        assert!(services[dependency]["healthcheck"].is_mapping(), "{dependency} has a health check");
    }
    let database_url = compose_database().await;
    let mut running = Running(vec![]);
    let mut metrics_ports = vec![];
    let mut portals = vec![];
    let mut checks = vec![];
    for name in SERVICES {
        let service = &services[name];
        assert_eq!(service["build"]["dockerfile"].as_str(), Some("deploy/Dockerfile"), "{name}");
        assert_eq!(service["restart"].as_str(), Some("unless-stopped"), "{name} comes back after a crash");
        let command = strings(&service["command"]);
        let mut env = native_env(service, &database_url);
        if let Some(certs) = tls_certs {
            env.extend(tls_overlay_env(name, certs));
        }
        env.extend(overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let port = env["LICENSING_LISTEN_ADDR"].rsplit(':').next().unwrap().to_owned();
        // gRPC to the compose network only (the gateway publishes the one address); the
        // Account service publishes its portal for browsers.
        assert_eq!(
            strings(&service["expose"]),
            std::slice::from_ref(&port),
            "{name} exposes its gRPC port to the network"
        );
        let published = if service["ports"].is_null() { vec![] } else { strings(&service["ports"]) };
        let mut expected = vec![];
        let portal = env.get("LICENSING_PORTAL_ADDR").map(|a| a.rsplit(':').next().unwrap().to_owned());
        if let Some(portal) = &portal {
            assert_eq!(name, "account", "only the Account service serves the portal");
            expected.push(format!("{portal}:{portal}"));
        }
        assert_eq!(published, expected, "{name} publishes only the portal, never its gRPC port");
        // Natively the compose ports (in the ephemeral range) may be taken by some connection:
        // serve on a free port instead, as a container's port mapping would.
        let free = crate::common::process::free_port();
        let listen = env["LICENSING_LISTEN_ADDR"].replace(&format!(":{port}"), &format!(":{free}"));
        env.insert("LICENSING_LISTEN_ADDR".into(), listen);
        assert_eq!(env["LICENSING_METRICS_ADDR"], format!("127.0.0.1:{METRICS_PORT}"), "{name}");
        let metrics_port = crate::common::process::free_port();
        env.insert("LICENSING_METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}"));
        // The account service's portal on a free port too (its default may be taken here).
        let portal_port = crate::common::process::free_port();
        env.insert("LICENSING_PORTAL_ADDR".into(), format!("127.0.0.1:{portal_port}"));
        if portal.is_some() {
            portals.push(portal_port);
        }
        metrics_ports.push((name, metrics_port));
        let child = Command::new(binary(&command[0]))
            .env_clear()
            .envs(&env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LICENSING_DATA_DIR", data.path().join(name))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        running.0.push((name.to_owned(), child));
        let healthcheck = strings(&service["healthcheck"]["test"]);
        assert_eq!(healthcheck[0], "CMD");
        assert!(healthcheck.iter().any(|a| a.ends_with(&format!(":{port}"))), "{name}'s health check probes {port}");
        let healthcheck: Vec<String> =
            healthcheck[1..].iter().map(|a| a.replace(&format!(":{port}"), &format!(":{free}"))).collect();
        checks.push((name, free, healthcheck, env));
    }
    for (name, _, check, env) in &checks {
        assert!(wait_serving(check, env).await, "{name} became SERVING (checked with {check:?})");
        if tls_certs.is_some() {
            let plaintext: HashMap<String, String> = HashMap::new();
            assert!(!wait_once(check, &plaintext).await, "{name} refuses a probe without TLS");
        }
    }
    Started { running, checks, metrics_ports, portals, _data: data }
}

/// Starts the compose services natively (with the TLS overlay when `tls_certs` is set), checks
/// each becomes SERVING through its own health check, then stops them with SIGTERM.
async fn run_compose(tls_certs: Option<&std::path::Path>) {
    let started = start_compose(tls_certs).await;
    // The running services answer the health service for their own gRPC service names too.
    let named = [
        ("account", "licensing.account.v1.AdminService"),
        ("activation", "licensing.activation.v1.ActivationService"),
        ("seat", "licensing.seat.v1.SeatService"),
    ];
    for (name, grpc_service) in named {
        let (_, _, check, env) = started.checks.iter().find(|(n, ..)| *n == name).unwrap();
        let mut check = check.clone();
        check.push(grpc_service.to_owned());
        assert!(wait_serving(&check, env).await, "{name} reports {grpc_service} SERVING");
    }
    // Each serves its metrics, and sees its stores.
    for (name, port) in &started.metrics_ports {
        let text = scrape(([127, 0, 0, 1], *port).into()).await;
        assert_eq!(series(&text, "licensing_store_up", &[("store", "postgresql")]), Some(1.0), "{name}:\n{text}");
        if *name == "seat" {
            assert_eq!(series(&text, "licensing_store_up", &[("store", "redis")]), Some(1.0), "{name}");
        }
        let service_name = format!("service_name=\"licensing-{name}\"");
        assert!(text.lines().any(|l| l.starts_with("target_info") && l.contains(&service_name)), "{name}");
    }
    // The Account service serves the customer portal in a browser (TLS with the overlay).
    assert_eq!(started.portals.len(), 1, "the compose file publishes the portal");
    if tls_certs.is_none() {
        for port in &started.portals {
            let page = http_get(*port, "/login").await;
            assert!(page.starts_with("HTTP/1.1 200") && page.contains("<form"), "the portal's login page:\n{page}");
        }
    }
    started.stop().await;
}

/// `GET path` of a plain HTTP server on loopback: the whole response.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for _ in 0..50 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            return response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing serves 127.0.0.1:{port}");
}

/// deploy/gateway/nginx.conf, read: where it listens, its upstreams (name -> host:port) and its
/// gRPC routes (location -> upstream).
pub(crate) struct Gateway {
    pub(crate) text: String,
    pub(crate) listen: String,
    pub(crate) upstreams: HashMap<String, String>,
    pub(crate) routes: Vec<(String, String)>,
}

pub(crate) fn gateway() -> Gateway {
    let text = std::fs::read_to_string(format!("{}/deploy/gateway/nginx.conf", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let (mut listen, mut upstreams, mut routes) = (String::new(), HashMap::new(), vec![]);
    let (mut upstream, mut location): (Option<String>, Option<String>) = (None, None);
    for line in text.lines() {
        let line = line.split('#').next().unwrap().trim();
        let words: Vec<&str> = line.trim_end_matches([';', '{']).split_whitespace().collect();
        match words.as_slice() {
            ["upstream", name] => upstream = Some(name.to_string()),
            ["location", path] => location = Some(path.to_string()),
            ["server", addr, ..] if upstream.is_some() => {
                upstreams.insert(upstream.clone().unwrap(), addr.to_string());
            }
            ["listen", addr, "http2"] => listen = addr.to_string(),
            ["grpc_pass", target] => {
                let name = target.strip_prefix("grpc://").expect("plaintext HTTP/2 to the services");
                routes.push((location.clone().expect("grpc_pass in a location"), name.to_owned()));
            }
            ["}"] => (upstream, location) = (None, None),
            _ => {}
        }
    }
    Gateway { text, listen, upstreams, routes }
}

/// The real nginx (Debian's `nginx`; scripts/test.sh and .ci/run install it) with the shipped
/// configuration, its upstreams pointed at the natively started services and its port at a free
/// one. Stopped (gracefully, with its workers) when dropped.
struct Nginx {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// `None` (test skipped) when nginx is not installed and CI is not set.
    async fn start(started: &Started) -> Option<Self> {
        let nginx = std::env::var("NGINX").unwrap_or_else(|_| {
            ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or("nginx")
                .to_owned()
        });
        if std::process::Command::new(&nginx).arg("-v").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{nginx} not found (CI is set: install nginx, see scripts/test.sh)"
            );
            eprintln!("SKIPPED: {nginx} not found; ./scripts/test.sh installs it");
            return None;
        }
        let gateway = gateway();
        let compose = compose();
        let dir = tempfile::tempdir().unwrap();
        // Workers run as an unprivileged user when nginx starts as root: they use the temp dirs.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let port = crate::common::process::free_port();
        let mut text = gateway
            .text
            .replace(&format!("listen {} http2;", gateway.listen), &format!("listen 127.0.0.1:{port} http2;"));
        for (name, addr) in &gateway.upstreams {
            let (host, upstream_port) = addr.rsplit_once(':').unwrap();
            let service = &compose["services"][host];
            let listen = service["environment"]["LICENSING_LISTEN_ADDR"]
                .as_str()
                .unwrap_or_else(|| panic!("upstream {name}: {host} is a compose service"));
            assert_eq!(
                listen.rsplit(':').next(),
                Some(upstream_port),
                "upstream {name}: {host} serves on {upstream_port}"
            );
            text = text.replace(&format!("server {addr};"), &format!("server 127.0.0.1:{};", started.grpc_port(host)));
        }
        let temp = dir.path().display();
        text = text.replacen(
            "http {",
            &format!("http {{\n    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fastcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;"),
            1,
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, text).unwrap();
        let args = |test: bool| {
            let mut a = vec![
                "-e".to_owned(),
                "stderr".into(),
                "-p".into(),
                temp.to_string(),
                "-c".into(),
                conf.display().to_string(),
            ];
            a.push("-g".into());
            a.push(format!("pid {temp}/nginx.pid;{}", if test { "" } else { " daemon off;" }));
            if test {
                a.push("-t".into());
            }
            a
        };
        let checked = std::process::Command::new(&nginx).args(args(true)).output().unwrap();
        assert!(checked.status.success(), "nginx -t: {}", String::from_utf8_lossy(&checked.stderr));
        let child = std::process::Command::new(&nginx).args(args(false)).stdout(Stdio::null()).spawn().unwrap();
        let nginx = Nginx { child, port, _dir: dir };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(nginx);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx did not listen on {port}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: the master stops its workers and exits (a SIGKILL would orphan them).
        let _ = std::process::Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new customer with the portal password [`CUSTOMER_PASSWORD`], created through `admin`.
async fn new_customer(
    admin: &mut licensing_proto::account::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    token: &str,
) -> String {
    admin
        .create_customer(with_token(
            token,
            licensing_proto::account::v1::CreateCustomerRequest {
                company_name: "Acme".into(),
                contact_email: format!("{}@example.com", licensing_domain::ids::new_id("m").to_lowercase()),
                password: CUSTOMER_PASSWORD.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap()
        .customer_id
}

async fn channel(url: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned()).unwrap().connect().await.unwrap()
}

/// The services every process lists through reflection, from its own port.
async fn reflected_services(port: u16) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut client = ServerReflectionClient::new(channel(&format!("http://127.0.0.1:{port}")).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    match answers.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("{other:?}"),
    }
}

/// The gateway routes exactly the services each process lists through reflection, each to the
/// process that lists it (health and reflection to the Account service), so a service added to
/// a process, or moved, cannot be left unrouted. Its upstreams are the compose services' ports.
#[tokio::test]
async fn the_gateway_routes_every_reflected_service_to_the_process_serving_it() {
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let gateway = gateway();
    let started = start_compose(None).await;
    let mut expected: Vec<(String, String)> = vec![];
    for name in SERVICES {
        let addr = &gateway.upstreams[name];
        assert_eq!(addr.split(':').next(), Some(name), "upstream {name} is the compose service {name}");
        for service in reflected_services(started.grpc_port(name)).await {
            let shared = service.starts_with("grpc.");
            if !shared || name == "account" {
                expected.push((format!("/{service}/"), name.to_owned()));
            }
        }
    }
    let mut routes = gateway.routes.clone();
    routes.sort();
    expected.sort();
    assert_eq!(routes, expected, "deploy/gateway/nginx.conf routes (left) against the reflected services (right)");
    // Every licensing service routed is in the runtime's table of homes, to the same process.
    for (path, upstream) in &gateway.routes {
        let service = path.trim_matches('/');
        if let Some((_, home)) = licensing_runtime::server::SERVICE_HOMES.iter().find(|(s, _)| *s == service) {
            assert_eq!(home, upstream, "{service}");
        }
    }
    // The compose file runs the gateway with this file, on one published port, after the services.
    let compose = compose();
    let service = &compose["services"]["gateway"];
    assert_eq!(strings(&service["volumes"]), ["./deploy/gateway/nginx.conf:/etc/nginx/nginx.conf:ro"]);
    assert_eq!(strings(&service["ports"]), [format!("{0}:{0}", gateway.listen)]);
    assert_eq!(service["restart"].as_str(), Some("unless-stopped"));
    for name in SERVICES {
        assert_eq!(service["depends_on"][name]["condition"].as_str(), Some("service_healthy"), "{name}");
    }
    assert!(service["image"].as_str().unwrap().starts_with("nginx:1."), "a pinned nginx");
    started.stop().await;
}

/// Products, `licensectl` and the admin API use the one gateway address: activation, validation,
/// a seat checkout, license issuing and lease listing all go through the real nginx with the
/// shipped configuration. A call at a service's own address for another service says which
/// service serves it; an unknown service gets UNIMPLEMENTED from the gateway.
#[tokio::test]
async fn products_licensectl_and_admins_use_one_address_through_the_gateway() {
    use licensing_client::floating::{CheckoutOptions, SeatState};
    use licensing_client::node_locked::{NodeLocked, Validity};
    use licensing_client::storage::TrustedStorage;
    use licensing_client::{Client, Credentials};
    use licensing_proto::account::v1 as account;
    use licensing_proto::common::v1::Module;
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let started = start_compose(None).await;
    let Some(nginx) = Nginx::start(&started).await else {
        started.stop().await;
        return;
    };
    let url = nginx.url();
    let token = started.env("account")["LICENSING_ADMIN_TOKEN"].clone();
    let gw = channel(&url).await;

    // Health through the gateway, with the image's health check.
    let health = Command::new(binary("healthcheck"))
        .arg(format!("127.0.0.1:{}", nginx.port))
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));

    // Admin calls (AdminService, on the Account service) through the gateway.
    let mut admin = licensing_proto::account::v1::admin_service_client::AdminServiceClient::new(gw.clone());
    let product = format!("gw-{}", licensing_domain::ids::new_id("p")[2..10].to_lowercase());
    admin
        .create_product(with_token(
            &token,
            account::CreateProductRequest {
                code: product.clone(),
                name: "Gateway CAD".into(),
                modules: vec![Module { code: "render".into(), name: "Renderer".into() }],
            },
        ))
        .await
        .unwrap();
    let customer = new_customer(&mut admin, &token).await;

    // licensectl issues through the gateway.
    let ctl = |args: Vec<String>| {
        let (url, token) = (url.clone(), token.clone());
        async move {
            Command::new(env!("CARGO_BIN_EXE_licensectl"))
                .env_clear()
                .env("LICENSING_SERVER", url)
                .env("LICENSING_ADMIN_TOKEN", token)
                .args(args)
                .output()
                .await
                .unwrap()
        }
    };
    let issue = |kind: &str, seats: &str| {
        [
            "--json",
            "licenses",
            "issue",
            "--product",
            &product,
            "--customer",
            &customer,
            "--kind",
            kind,
            "--seats",
            seats,
            "--modules",
            "render",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let mut keys = vec![];
    for kind in ["node-locked", "concurrent"] {
        let out = ctl(issue(kind, "1")).await;
        assert!(out.status.success(), "licensectl licenses issue: {}", String::from_utf8_lossy(&out.stderr));
        let issued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        keys.push((
            issued["license_id"].as_str().unwrap().to_owned(),
            issued["license_key"].as_str().unwrap().to_owned(),
        ));
    }
    let [(_, node_key), (floating_id, floating_key)] = <[(String, String); 2]>::try_from(keys).unwrap();

    // The client library on the one URL: activation (ActivationService) and a seat (SeatService).
    let public_key =
        licensing_proto::activation::v1::activation_service_client::ActivationServiceClient::new(gw.clone())
            .get_verifying_key(licensing_proto::activation::v1::GetVerifyingKeyRequest {})
            .await
            .unwrap()
            .into_inner()
            .public_key;
    let client = Client::new(&url, &public_key).unwrap();
    let storage = tempfile::tempdir().unwrap();
    let fingerprint = ["machine-id", "disk-serial", "mac"]
        .map(|n| licensing_domain::fingerprint::Component { name: n.into(), value: format!("{n}-gw") })
        .to_vec();
    let product_side = NodeLocked::new(
        client.clone(),
        TrustedStorage::new(storage.path().join("license.json")),
        Credentials::LicenseKey(node_key),
        fingerprint,
    );
    product_side.activate("gw-pc", "linux", "1.0").await.unwrap();
    assert!(matches!(product_side.validate(&["render"], "").await.unwrap(), Validity::Online(_)));
    let seat = client.checkout(Credentials::LicenseKey(floating_key), CheckoutOptions::default()).await.unwrap();
    let lease_id = match seat.state() {
        SeatState::Held { lease_id, .. } => lease_id,
        other => panic!("{other:?}"),
    };

    // licensectl lists the lease (SeatService) through the gateway...
    let out = ctl(["--json", "leases", "list", &floating_id].map(str::to_owned).to_vec()).await;
    assert!(out.status.success(), "licensectl leases list: {}", String::from_utf8_lossy(&out.stderr));
    let leases: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(leases.to_string().contains(&lease_id), "{leases}");
    // ... and at the Account service's own address it is told where to go.
    let account_url = format!("http://127.0.0.1:{}", started.grpc_port("account"));
    let out = Command::new(env!("CARGO_BIN_EXE_licensectl"))
        .env_clear()
        .env("LICENSING_SERVER", &account_url)
        .env("LICENSING_ADMIN_TOKEN", &token)
        .args(["leases", "list", &floating_id])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("served by the seat service") && said.contains("gateway"), "{said}");
    let refused = licensing_proto::seat::v1::seat_service_client::SeatServiceClient::new(channel(&account_url).await)
        .list_leases(with_token(
            &token,
            licensing_proto::seat::v1::ListLeasesRequest { license_id: floating_id.clone() },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    assert_eq!(reason(&refused), "SERVED_ELSEWHERE");
    assert!(refused.message().contains("(this is the account service)"), "{}", refused.message());

    // A service nobody serves: UNIMPLEMENTED, from the gateway itself.
    let mut raw = tonic::client::Grpc::new(gw.clone());
    raw.ready().await.unwrap();
    let unknown = raw
        .unary(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/nope.v1.Nope/Do"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown:?}");

    assert!(seat.release().await, "the seat is given back through the gateway");
    drop(nginx);
    started.stop().await;
}

#[tokio::test]
async fn behind_the_gateway_limits_count_each_client_not_the_gateway() {
    use licensing_proto::account::v1 as account;
    use licensing_proto::account::v1::account_service_client::AccountServiceClient;
    if !postgres_available().await || !redis_available().await {
        return;
    }
    let compose = compose();
    assert_eq!(
        compose["services"]["gateway"]["networks"]["default"]["ipv4_address"].as_str(),
        Some(COMPOSE_GATEWAY_ADDRESS),
        "the gateway has the address the services trust"
    );
    // Three logins per client address an hour: a budget nothing refills during the test, so
    // what is counted against whom does not depend on timing (the guess throttle counts the
    // same client address, tests/portal.rs tests its delays).
    let started = start_compose_with(None, &[("LICENSING_RATE_LOGIN_PER_CLIENT", "3/h")]).await;
    assert_eq!(started.env("account")["LICENSING_TRUSTED_PROXIES"], "127.0.0.1");
    let Some(nginx) = Nginx::start(&started).await else {
        started.stop().await;
        return;
    };
    let gateway: std::net::SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    let token = started.env("account")["LICENSING_ADMIN_TOKEN"].clone();
    let mut admin =
        licensing_proto::account::v1::admin_service_client::AdminServiceClient::new(channel(&nginx.url()).await);
    let customer = new_customer(&mut admin, &token).await;
    let login = |source: &'static str, forwarded_for: Option<&'static str>| {
        let customer = customer.clone();
        async move {
            let mut request =
                tonic::Request::new(account::LoginRequest { login: customer, password: "not the password".into() });
            if let Some(forged) = forwarded_for {
                request.metadata_mut().insert("x-forwarded-for", forged.parse().unwrap());
            }
            AccountServiceClient::new(channel_from(source.parse().unwrap(), gateway).await).login(request).await
        }
    };
    // The guesser at 127.0.0.2 spends its budget...
    for _ in 0..3 {
        let err = login("127.0.0.2", None).await.unwrap_err();
        assert_eq!(reason(&err), "LOGIN_FAILED");
    }
    let err = login("127.0.0.2", None).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (tonic::Code::ResourceExhausted, "RATE_LIMITED".into()));
    // ...and cannot forge its way out: what it writes in X-Forwarded-For is left of what the
    // gateway appends, and ignored.
    let err = login("127.0.0.2", Some("198.51.100.9")).await.unwrap_err();
    assert_eq!(reason(&err), "RATE_LIMITED", "a forged X-Forwarded-For changes nothing");
    // Another client at 127.0.0.3, through the same gateway, has its own budget: the services
    // count the client the gateway forwarded, not the gateway.
    let err = login("127.0.0.3", None).await.unwrap_err();
    assert_eq!(reason(&err), "LOGIN_FAILED", "another client behind the gateway is not limited");
    drop(nginx);
    started.stop().await;
}
