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
async fn compose_database() -> String {
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
    assert_eq!(mounts, ["./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"]);
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
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

/// Starts the compose services natively (with the TLS overlay when `tls_certs` is set), checks
/// each becomes SERVING through its own health check, then stops them with SIGTERM.
async fn run_compose(tls_certs: Option<&std::path::Path>) {
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
        let command = strings(&service["command"]);
        let mut env = native_env(service, &database_url);
        if let Some(certs) = tls_certs {
            env.extend(tls_overlay_env(name, certs));
        }
        let port = env["LICENSING_LISTEN_ADDR"].rsplit(':').next().unwrap().to_owned();
        let published = strings(&service["ports"]);
        let mut expected = vec![format!("{port}:{port}")];
        let portal = env.get("LICENSING_PORTAL_ADDR").map(|a| a.rsplit(':').next().unwrap().to_owned());
        if let Some(portal) = &portal {
            assert_eq!(name, "account", "only the Account service serves the portal");
            expected.push(format!("{portal}:{portal}"));
        }
        assert_eq!(published, expected, "{name} publishes its listen port (and the portal's)");
        // Natively the compose ports (in the ephemeral range) may be taken by some connection:
        // serve on a free port instead, as a container's port mapping would.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
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
        checks.push((name, healthcheck, env));
    }
    for (name, check, env) in &checks {
        assert!(wait_serving(check, env).await, "{name} became SERVING (checked with {check:?})");
        if tls_certs.is_some() {
            let plaintext: HashMap<String, String> = HashMap::new();
            assert!(!wait_once(check, &plaintext).await, "{name} refuses a probe without TLS");
        }
    }
    // The running services answer the health service for their own gRPC service names too.
    let named = [
        ("account", "licensing.account.v1.AdminService"),
        ("activation", "licensing.activation.v1.ActivationService"),
        ("seat", "licensing.seat.v1.SeatService"),
    ];
    for (name, grpc_service) in named {
        let (_, check, env) = checks.iter().find(|(n, _, _)| *n == name).unwrap();
        let mut check = check.clone();
        check.push(grpc_service.to_owned());
        assert!(wait_serving(&check, env).await, "{name} reports {grpc_service} SERVING");
    }
    // Each serves its metrics, and sees its stores.
    for (name, port) in &metrics_ports {
        let text = scrape(([127, 0, 0, 1], *port).into()).await;
        assert_eq!(series(&text, "licensing_store_up", &[("store", "postgresql")]), Some(1.0), "{name}:\n{text}");
        if *name == "seat" {
            assert_eq!(series(&text, "licensing_store_up", &[("store", "redis")]), Some(1.0), "{name}");
        }
        let service_name = format!("service_name=\"licensing-{name}\"");
        assert!(text.lines().any(|l| l.starts_with("target_info") && l.contains(&service_name)), "{name}");
    }
    // The Account service serves the customer portal in a browser (TLS with the overlay).
    assert_eq!(portals.len(), 1, "the compose file publishes the portal");
    if tls_certs.is_none() {
        for port in &portals {
            let page = http_get(*port, "/login").await;
            assert!(page.starts_with("HTTP/1.1 200") && page.contains("<form"), "the portal's login page:\n{page}");
        }
    }
    // SIGTERM: each drains and exits cleanly.
    for (name, child) in &mut running.0 {
        let pid = child.id().unwrap().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        let status =
            tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("exits after SIGTERM").unwrap();
        assert!(status.success(), "{name} exited with {status}");
    }
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
