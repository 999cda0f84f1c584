//! The servers under measurement, each a child process running the same code as the shipped
//! binaries (`licensing::run`), so a figure includes everything a real process does and its
//! memory can be read from `/proc`.

use anyhow::{bail, Context as _};
use base64::Engine as _;
use licensing_store::RedisLeaseStore;
use rand::RngCore as _;
use sqlx::Connection as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

/// The admin token every benchmark server accepts.
pub(crate) const ADMIN_TOKEN: &str = "adm_BENCHTOKEN0123456789ABCDEFGH";

/// What a child process serves (the argument of `licensing-bench serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serves {
    AllInOne,
    Account,
    Activation,
    Seat,
    Echo,
}

impl Serves {
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Self::AllInOne => "all-in-one",
            Self::Account => "account",
            Self::Activation => "activation",
            Self::Seat => "seat",
            Self::Echo => "echo",
        }
    }

    pub(crate) fn parse(arg: &str) -> Option<Self> {
        [Self::AllInOne, Self::Account, Self::Activation, Self::Seat, Self::Echo].into_iter().find(|s| s.arg() == arg)
    }

    /// The process name used in reports.
    pub(crate) fn process(self) -> &'static str {
        match self {
            Self::AllInOne => "licensing-server",
            Self::Account => "licensing-account",
            Self::Activation => "licensing-activation",
            Self::Seat => "licensing-seat",
            Self::Echo => "echo",
        }
    }
}

/// Every request rate limit, so high that a benchmark's single client address never meets it;
/// the limiters still count every call, so their cost stays in the figures.
const RATE_LIMITS_OUT_OF_REACH: [(&str, &str); 7] = [
    ("LICENSING_RATE_LOGIN_PER_CLIENT", "1000000000/s"),
    ("LICENSING_RATE_LOGIN_PER_ACCOUNT", "1000000000/s"),
    ("LICENSING_RATE_RESET_PER_CLIENT", "1000000000/s"),
    ("LICENSING_RATE_ACTIVATE_PER_CLIENT", "1000000000/s"),
    ("LICENSING_RATE_ACTIVATE_PER_LICENSE", "1000000000/s"),
    ("LICENSING_RATE_CHECKOUT_PER_CLIENT", "1000000000/s"),
    ("LICENSING_RATE_CHECKOUT_PER_LICENSE", "1000000000/s"),
];

/// One child server.
pub(crate) struct Server {
    pub serves: Serves,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Server {
    async fn start(serves: Serves, env: &[(String, String)], logs: &Path) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let log = logs.join(format!("{}.log", serves.arg()));
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg(serves.arg())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LICENSING_LISTEN_ADDR", addr.to_string())
            .env("LICENSING_METRICS_ADDR", "127.0.0.1:0")
            .env("LICENSING_PORTAL_ADDR", "127.0.0.1:0")
            .envs(RATE_LIMITS_OUT_OF_REACH)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", serves.process()))?;
        let mut server = Self { serves, addr, child, log };
        server.wait_serving().await?;
        Ok(server)
    }

    /// Waits for the health service to answer SERVING, or the process to die.
    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited ({status}) at start:\n{}", self.serves.process(), self.log_tail());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} not serving after 60 s:\n{}", self.serves.process(), self.log_tail());
            }
            if let Ok(channel) = Endpoint::from_shared(format!("http://{}", self.addr))?.connect().await {
                let answer = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
                if answer.is_ok_and(|a| a.into_inner().status == ServingStatus::Serving as i32) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident memory now, in MiB.
    pub(crate) fn rss_mib(&self) -> Option<f64> {
        self.status_kib("VmRSS:").map(|k| k as f64 / 1024.0)
    }

    /// The most resident memory the process has had, in MiB.
    pub(crate) fn peak_rss_mib(&self) -> Option<f64> {
        self.status_kib("VmHWM:").map(|k| k as f64 / 1024.0)
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// `n` connections to the server; callers are spread over them as products would be.
    pub(crate) async fn channels(&self, n: usize) -> anyhow::Result<Vec<Channel>> {
        let mut out = vec![];
        for _ in 0..n.max(1) {
            out.push(Endpoint::from_shared(format!("http://{}", self.addr))?.tcp_nodelay(true).connect().await?);
        }
        Ok(out)
    }

    /// SIGTERM, then a bounded wait (the server drains), then kill.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            if tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
    }
}

/// A port free now on loopback (the child binds it a moment later).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Which deployment a stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deployment {
    /// The all-in-one server on its SQLite file and embedded lease store.
    Embedded,
    /// Account, Activation and Seat as separate processes on PostgreSQL and Redis.
    Production,
}

/// A running deployment and the echo baseline server beside it.
pub(crate) struct Stack {
    pub deployment: Deployment,
    pub servers: Vec<Server>,
    pub echo: Server,
    /// The PostgreSQL database made for this run (dropped at the end), or the SQLite file.
    pub database: Database,
    pub redis_url: Option<String>,
    /// The servers' LICENSING_HASH_KEY, so the bench can write fingerprints as they store them.
    pub hash_key: Vec<u8>,
    /// Redis settings this run changed to the lease store's recommended ones, with the values
    /// to put back when it stops.
    redis_settings_before: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

pub(crate) enum Database {
    Sqlite(PathBuf),
    Postgres { url: String, admin_url: String, name: String },
}

/// Where the production stack's state lives.
#[derive(Debug, Clone)]
pub(crate) struct ExternalStores {
    /// A PostgreSQL URL with rights to create databases; the run uses a fresh one.
    pub postgres_admin_url: String,
    /// A Redis URL; its database is flushed before and after the run.
    pub redis_url: String,
}

impl Stack {
    pub(crate) async fn embedded() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let hash_key = random_bytes();
        let env = vec![
            ("LICENSING_DATA_DIR".to_owned(), data.display().to_string()),
            ("LICENSING_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
            ("LICENSING_HASH_KEY".to_owned(), base64::engine::general_purpose::STANDARD.encode(hash_key)),
        ];
        let echo = Server::start(Serves::Echo, &env, dir.path()).await?;
        let server = Server::start(Serves::AllInOne, &env, dir.path()).await?;
        Ok(Self {
            deployment: Deployment::Embedded,
            servers: vec![server],
            echo,
            database: Database::Sqlite(data.join(licensing::DATABASE_FILE)),
            redis_url: None,
            hash_key: hash_key.to_vec(),
            redis_settings_before: vec![],
            _dir: dir,
        })
    }

    pub(crate) async fn production(stores: &ExternalStores) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (url, name) = fresh_database(&stores.postgres_admin_url).await?;
        flush_redis(&stores.redis_url).await?;
        // Measure Redis as deployed (docker-compose sets these too).
        let redis_settings_before = apply_recommended_redis_config(&stores.redis_url).await?;
        let key = || base64::engine::general_purpose::STANDARD.encode(random_bytes());
        let hash_key = random_bytes();
        let env = vec![
            ("LICENSING_DATABASE_URL".to_owned(), url.clone()),
            ("LICENSING_REDIS_URL".to_owned(), stores.redis_url.clone()),
            ("LICENSING_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
            ("LICENSING_HASH_KEY".to_owned(), base64::engine::general_purpose::STANDARD.encode(hash_key)),
            ("LICENSING_SIGNING_KEY".to_owned(), key()),
            // The scale scenario times the sweep itself; a background sweep would race it.
            ("LICENSING_SWEEP_INTERVAL_MS".to_owned(), "3600000".to_owned()),
        ];
        let echo = Server::start(Serves::Echo, &env, dir.path()).await?;
        // Account first: it applies the migrations the others expect.
        let mut servers = vec![];
        for serves in [Serves::Account, Serves::Activation, Serves::Seat] {
            servers.push(Server::start(serves, &env, dir.path()).await?);
        }
        Ok(Self {
            deployment: Deployment::Production,
            servers,
            echo,
            database: Database::Postgres { url, admin_url: stores.postgres_admin_url.clone(), name },
            redis_url: Some(stores.redis_url.clone()),
            hash_key: hash_key.to_vec(),
            redis_settings_before,
            _dir: dir,
        })
    }

    fn serving(&self, wanted: Serves) -> &Server {
        self.servers
            .iter()
            .find(|s| s.serves == wanted || s.serves == Serves::AllInOne)
            .expect("every stack serves every service")
    }

    pub(crate) fn account(&self) -> &Server {
        self.serving(Serves::Account)
    }

    pub(crate) fn activation(&self) -> &Server {
        self.serving(Serves::Activation)
    }

    pub(crate) fn seat(&self) -> &Server {
        self.serving(Serves::Seat)
    }

    /// Stops every process and removes what the run created.
    pub(crate) async fn stop(self) {
        self.echo.stop().await;
        for server in self.servers {
            server.stop().await;
        }
        if let Database::Postgres { admin_url, name, .. } = &self.database {
            if let Ok(mut conn) = sqlx::PgConnection::connect(admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
            }
        }
        if let Some(url) = &self.redis_url {
            let _ = flush_redis(url).await;
            if let Ok(mut conn) = redis_connection(url).await {
                for (name, value) in &self.redis_settings_before {
                    let _: Result<(), _> =
                        redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query_async(&mut conn).await;
                }
            }
        }
    }
}

fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

async fn fresh_database(admin_url: &str) -> anyhow::Result<(String, String)> {
    let name = format!("licensing_bench_{}", licensing_domain::ids::new_id("db").to_lowercase());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {admin_url} (set LICENSING_BENCH_DATABASE_URL)"))?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let base =
        admin_url.rsplit_once('/').map(|(base, _)| base).context("the PostgreSQL URL must end in /<database>")?;
    Ok((format!("{base}/{name}"), name))
}

pub(crate) async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to Redis at {url} (set LICENSING_BENCH_REDIS_URL)"))
}

/// Sets Redis to the lease store's recommended settings where it is below them
/// ([`RedisLeaseStore::config_shortfalls`]); returns the previous values. A Redis that refuses
/// `CONFIG` is measured as it is (the memory line prints the setting it ran under).
async fn apply_recommended_redis_config(url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let store = RedisLeaseStore::connect(url).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut conn = redis_connection(url).await?;
    let mut before = vec![];
    for (name, current, recommended) in store.config_shortfalls().await {
        match redis::cmd("CONFIG").arg("SET").arg(name).arg(recommended).query_async::<()>(&mut conn).await {
            Ok(()) => before.push((name.to_owned(), current.to_string())),
            Err(e) => eprintln!("licensing-bench: could not set {name} {recommended} ({e}); measuring Redis as it is"),
        }
    }
    Ok(before)
}

async fn flush_redis(url: &str) -> anyhow::Result<()> {
    let mut conn = redis_connection(url).await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await?;
    Ok(())
}
