//! Configuration from environment variables. Every variable is listed in [`VARIABLES`] (and in
//! the README's table, which a test keeps in step with it).
//!
//! The binaries parse their command line with clap from the same list ([`server_args`],
//! [`client_args`]): each variable is also a flag (`LICENSING_LISTEN_ADDR` is `--listen-addr`),
//! `--help` shows them all, and the parsed [`clap::ArgMatches`] is the [`Lookup`] the
//! configuration is read through (a flag wins over its variable).

use crate::client_address::TrustedProxies;
use crate::limiter::Rate;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where settings come from. The process environment in binaries, a map in tests.
pub trait Lookup {
    /// The value of the variable `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Lookup for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Lookup for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl<const N: usize> Lookup for [(&str, &str); N] {
    fn get(&self, key: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned())
    }
}

/// Every environment variable the servers read, with its meaning (the README documents these).
pub const VARIABLES: &[(&str, &str)] = &[
    ("LICENSING_LISTEN_ADDR", "address:port to serve gRPC on"),
    ("LICENSING_METRICS_ADDR", "address:port of the Prometheus scrape endpoint (GET /metrics), or off"),
    ("LICENSING_PORTAL_ADDR", "address:port of the customer portal in a web browser (HTTPS when LICENSING_TLS_CERT is set), or off; served by the processes that serve the Account service"),
    ("LICENSING_PORTAL_URL", "public base URL of the portal (e.g. https://licensing.vendor.example), which its mails link to (<URL>/reset-password?token=...)"),
    ("LICENSING_GRPC_WEB_ORIGINS", "comma-separated origins (https://app.vendor.example) whose browser apps may call the gRPC port with gRPC-Web (CORS); when set, the gRPC port also accepts HTTP/1.1 gRPC-Web"),
    ("LICENSING_TRUSTED_PROXIES", "comma-separated IP addresses and CIDR ranges of proxies (the gateway) whose X-Forwarded-For names the client that per-client limits count, or off"),
    ("LICENSING_DATA_DIR", "directory of the embedded SQLite file and key file"),
    ("LICENSING_DATABASE_URL", "postgres:// URL; when set, PostgreSQL replaces the embedded SQLite file; required by the separate services"),
    ("LICENSING_DATABASE_MAX_CONNECTIONS", "PostgreSQL pool size"),
    ("LICENSING_MIGRATE", "on: apply the PostgreSQL migrations at start; off: do not, and refuse to start on a schema older than this build; only: apply them and exit (the migration Job in deploy/k8s)"),
    ("LICENSING_REDIS_URL", "redis:// URL of the lease store; when set, Redis replaces the embedded lease store; required by the separate Seat service, and give it to the Account service too (it lists live leases, and its license changes raise the revision that keeps Seat services from deciding a checkout on the old license)"),
    ("LICENSING_ADMIN_TOKEN", "admin bearer token to accept (adm_ + 26 or more letters/digits; stored hashed); without it a first token is generated and printed once"),
    ("LICENSING_HASH_KEY", "base64 key (32+ bytes) for keyed hashes of keys and tokens"),
    ("LICENSING_SIGNING_KEY", "base64 32-byte Ed25519 seed that signs certificates and lease tokens"),
    ("LICENSING_REQUEST_TIMEOUT_MS", "deadline of one request (answered DEADLINE_EXCEEDED)"),
    ("LICENSING_CONCURRENCY_LIMIT", "requests served at once per process"),
    ("LICENSING_SHUTDOWN_READINESS_DELAY_MS", "after SIGTERM, how long health reports NOT_SERVING while new calls are still served, before the listener closes: the time probes and load balancers take to stop sending here (see Operations)"),
    ("LICENSING_SHUTDOWN_GRACE_MS", "then, how long in-flight requests may drain once the listener has closed (open streams end at once)"),
    ("LICENSING_MAX_MESSAGE_BYTES", "largest gRPC message decoded or encoded"),
    ("LICENSING_REFLECTION", "serve gRPC reflection"),
    ("LICENSING_FINGERPRINT_MATCH", "share (0-1) of a machine's fingerprint components that must still match its activation"),
    ("LICENSING_WATCH_POLL_MS", "how often WatchLicense streams look for vendor changes"),
    ("LICENSING_SWEEP_INTERVAL_MS", "how often expired leases are recorded (seats free at expiry regardless)"),
    ("LICENSING_CULL_INTERVAL_MS", "how often the Activation service deactivates machines of licenses with a heartbeat timeout that were not seen within it"),
    ("LICENSING_MAX_LEASE_TTL_MS", "longest lease TTL a client may ask for; also how long new seats are held back after Redis is found to have lost its leases when no lease expiry was recorded yet (otherwise until the latest recorded one, see Guarantees)"),
    ("LICENSING_RATE_LOGIN_PER_CLIENT", "portal logins per client address; a rate is N/s, N/min or N/h (bursts of up to N), or off"),
    ("LICENSING_RATE_LOGIN_PER_ACCOUNT", "portal logins per customer account from one client address (wrong passwords also slow that address down, never the account: see the customer portal)"),
    ("LICENSING_RATE_RESET_PER_CLIENT", "password reset requests and resets per client address (mail per account: at most 3 an hour)"),
    ("LICENSING_RATE_ACTIVATE_PER_CLIENT", "activations (online and offline) per client address"),
    ("LICENSING_RATE_TRIAL_PER_CLIENT", "trial requests (ActivateTrial) per client address"),
    ("LICENSING_RATE_ACTIVATE_PER_LICENSE", "activations (online and offline) and product deactivations per license"),
    ("LICENSING_RATE_CHECKOUT_PER_CLIENT", "seat checkouts and WaitForSeat calls per client address (heartbeats and checkins are never limited)"),
    ("LICENSING_RATE_CHECKOUT_PER_LICENSE", "seat checkouts and WaitForSeat calls per license"),
    ("LICENSING_TLS_CERT", "PEM certificate (chain) of the server; with LICENSING_TLS_KEY, every service serves TLS"),
    ("LICENSING_TLS_KEY", "PEM private key of LICENSING_TLS_CERT"),
    ("LICENSING_TLS_CLIENT_CA", "PEM CA certificate(s); when set, clients must present a certificate it signed (mutual TLS)"),
    ("LICENSING_TLS_CA", "clients (healthcheck, licensectl): PEM CA that signed the server's certificate; connect over TLS"),
    ("LICENSING_TLS_CLIENT_CERT", "clients: PEM certificate to present for mutual TLS"),
    ("LICENSING_TLS_CLIENT_KEY", "clients: PEM private key of LICENSING_TLS_CLIENT_CERT"),
    ("LICENSING_TLS_SERVER_NAME", "clients: name to verify in the server's certificate (e.g. localhost when probing 127.0.0.1)"),
    ("LICENSING_ON_PREMISES", "true: serve as a customer's on-premises license server under the vendor's server license file (seats and activations it grants, nothing else; see On-premises license server); needs LICENSING_SERVER_LICENSE_KEY and LICENSING_VENDOR_PUBLIC_KEY"),
    ("LICENSING_SERVER_LICENSE_KEY", "on premises: the server license's key, as the vendor issued it"),
    ("LICENSING_VENDOR_PUBLIC_KEY", "on premises: the vendor's base64 Ed25519 public key (its GetVerifyingKey), which signs server license files"),
    ("LICENSING_VENDOR_URL", "on premises: http(s):// address of the vendor's licensing server, to activate, refresh and return online; unset: air-gapped (files only)"),
    ("LICENSING_VENDOR_CA", "on premises: PEM file of the CA that signed the vendor's TLS certificate (https:// vendor URLs)"),
    ("LICENSING_SERVER_NAME", "on premises: the name this server is activated under"),
    ("LICENSING_REFRESH_INTERVAL_MS", "on premises, online: how often the server asks the vendor for a fresh file (renewals, seat changes and suspensions reach it then)"),
    ("LICENSING_USAGE_QUEUE", "usage-log events held in memory for writing; beyond it they are counted as lost, never waited for"),
    ("LICENSING_SMTP_URL", "smtp://host:port of the relay that sends password reset mail (plain SMTP: use a local relay for TLS); without it mail goes to files in <data dir>/outbox"),
    ("LICENSING_MAIL_FROM", "sender address of portal mail"),
    ("LICENSING_RESET_URL", "page that password reset mail links to in place of the portal's own, e.g. a vendor's own front end (the token is appended as ?token=)"),
    ("LICENSING_LOG_FORMAT", "text or json"),
    ("RUST_LOG", "log filter, e.g. info, or info,licensing_runtime::server=debug for a line per request"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP/gRPC collector endpoint; traces are exported when set (the SDK's OTEL_BSP_* batch settings apply)"),
    ("OTEL_SERVICE_NAME", "service name on exported traces"),
];

/// Whether a variable is read by our clients (`healthcheck`, `licensectl`) rather than the servers:
/// its meaning says so first.
fn for_clients(meaning: &str) -> bool {
    meaning.starts_with("clients")
}

/// The flag of a variable: `LICENSING_LISTEN_ADDR` is `--listen-addr`, `RUST_LOG` `--rust-log`.
pub fn flag_of(var: &str) -> String {
    var.strip_prefix("LICENSING_").unwrap_or(var).to_ascii_lowercase().replace('_', "-")
}

/// One variable as a clap argument: a flag, or the variable; `--help` shows the meaning and the
/// variable's name, never its value (some are secrets).
fn arg(var: &'static str, meaning: &'static str) -> clap::Arg {
    clap::Arg::new(var)
        .long(flag_of(var))
        .env(var)
        .hide_env_values(true)
        .value_name("VALUE")
        .help(meaning)
        .action(clap::ArgAction::Set)
}

/// The servers' variables as clap arguments (every one of [`VARIABLES`] but the clients').
pub fn server_args() -> Vec<clap::Arg> {
    VARIABLES.iter().filter(|(_, meaning)| !for_clients(meaning)).map(|(var, meaning)| arg(var, meaning)).collect()
}

/// The variables of our clients (`healthcheck`, `licensectl`: TLS to the server) as clap arguments.
pub fn client_args() -> Vec<clap::Arg> {
    VARIABLES.iter().filter(|(_, meaning)| for_clients(meaning)).map(|(var, meaning)| arg(var, meaning)).collect()
}

/// The parsed command line of a binary built with [`server_args`] or [`client_args`]: a flag,
/// else its variable. Names it has no argument for are unset.
impl Lookup for clap::ArgMatches {
    fn get(&self, key: &str) -> Option<String> {
        self.try_get_one::<String>(key).ok().flatten().cloned()
    }
}

/// Where a process's own HTTP endpoint (metrics, the web portal) listens.
pub type PortalListen = MetricsListen;

/// Where the Prometheus scrape endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// The process's default port (it differs per service, so they can share a host).
    RoleDefault,
    /// Not served.
    Off,
    /// Served on this address.
    At(SocketAddr),
}

impl MetricsListen {
    /// The address to bind, given the process's default; `None` when off.
    pub fn resolve(self, default: &str) -> Option<SocketAddr> {
        match self {
            Self::RoleDefault => Some(default.parse().expect("valid default metrics address")),
            Self::Off => None,
            Self::At(addr) => Some(addr),
        }
    }
}

/// When the database schema is migrated (`LICENSING_MIGRATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// At start, by every process (the default).
    OnStart,
    /// Never: a migration job does it; start only on a schema at least as new as this build.
    Off,
    /// Apply the migrations, then exit without serving (the migration job).
    Only,
}

/// How log lines are written (`LICENSING_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Request rates allowed per client address and per license or account; `None` is unlimited.
/// A client is the peer address of the connection: behind a proxy or NAT every caller shares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Portal logins per client address (`LICENSING_RATE_LOGIN_PER_CLIENT`).
    pub login_per_client: Option<Rate>,
    /// Portal logins per account from one client address (`LICENSING_RATE_LOGIN_PER_ACCOUNT`).
    pub login_per_account: Option<Rate>,
    /// Password-reset requests and resets per client address (`LICENSING_RATE_RESET_PER_CLIENT`).
    pub reset_per_client: Option<Rate>,
    /// Activations per client address (`LICENSING_RATE_ACTIVATE_PER_CLIENT`).
    pub activate_per_client: Option<Rate>,
    /// Activations and product deactivations per license (`LICENSING_RATE_ACTIVATE_PER_LICENSE`).
    pub activate_per_license: Option<Rate>,
    /// Trial requests per client address (`LICENSING_RATE_TRIAL_PER_CLIENT`): each new machine
    /// makes a license, so far fewer than activations.
    pub trial_per_client: Option<Rate>,
    /// Seat checkouts and waits per client address (`LICENSING_RATE_CHECKOUT_PER_CLIENT`).
    pub checkout_per_client: Option<Rate>,
    /// Seat checkouts and waits per license (`LICENSING_RATE_CHECKOUT_PER_LICENSE`).
    pub checkout_per_license: Option<Rate>,
}

impl Default for RateLimits {
    /// Generous for honest use (a whole office behind one address logging in at nine, a
    /// product relaunched in a loop by a script), tight enough to blunt floods and guessing.
    fn default() -> Self {
        let per_min = |count| Some(Rate { count, per: Duration::from_secs(60) });
        Self {
            login_per_client: per_min(120),
            login_per_account: per_min(30),
            reset_per_client: per_min(20),
            activate_per_client: per_min(600),
            activate_per_license: per_min(120),
            trial_per_client: Some(Rate { count: 30, per: Duration::from_secs(3600) }),
            checkout_per_client: per_min(6_000),
            checkout_per_license: per_min(1_200),
        }
    }
}

impl RateLimits {
    fn from_lookup(lookup: &dyn Lookup) -> Result<Self, ConfigError> {
        let rate = |var: &'static str, default: Option<Rate>| match non_empty(lookup, var).as_deref() {
            None => Ok(default),
            Some("off") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|message| ConfigError { var, message }),
        };
        let d = Self::default();
        Ok(Self {
            login_per_client: rate("LICENSING_RATE_LOGIN_PER_CLIENT", d.login_per_client)?,
            login_per_account: rate("LICENSING_RATE_LOGIN_PER_ACCOUNT", d.login_per_account)?,
            reset_per_client: rate("LICENSING_RATE_RESET_PER_CLIENT", d.reset_per_client)?,
            activate_per_client: rate("LICENSING_RATE_ACTIVATE_PER_CLIENT", d.activate_per_client)?,
            activate_per_license: rate("LICENSING_RATE_ACTIVATE_PER_LICENSE", d.activate_per_license)?,
            trial_per_client: rate("LICENSING_RATE_TRIAL_PER_CLIENT", d.trial_per_client)?,
            checkout_per_client: rate("LICENSING_RATE_CHECKOUT_PER_CLIENT", d.checkout_per_client)?,
            checkout_per_license: rate("LICENSING_RATE_CHECKOUT_PER_LICENSE", d.checkout_per_license)?,
        })
    }
}

/// Every setting of a server process, read from [`VARIABLES`] by [`Config::from_lookup`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Where gRPC is served (`LICENSING_LISTEN_ADDR`; the default differs per binary).
    pub listen_addr: SocketAddr,
    /// The Prometheus scrape endpoint (`LICENSING_METRICS_ADDR`).
    pub metrics: MetricsListen,
    /// The customer portal in a browser (served by processes that serve the Account service).
    pub portal: PortalListen,
    /// The portal's public base URL (no trailing slash); `None`: from the address it is bound to.
    pub portal_url: Option<String>,
    /// Origins allowed to call the gRPC port from a browser with gRPC-Web; empty: gRPC-Web off.
    pub grpc_web_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed; empty: the TCP peer is the client.
    pub trusted_proxies: TrustedProxies,
    /// Directory of the embedded SQLite file and the key file (`LICENSING_DATA_DIR`, default `data`).
    pub data_dir: PathBuf,
    /// PostgreSQL URL; `None` means the embedded SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// PostgreSQL pool size (`LICENSING_DATABASE_MAX_CONNECTIONS`, default 16).
    pub database_max_connections: u32,
    /// Whether this process migrates the database schema.
    pub migrate: Migrate,
    /// Redis URL; `None` means the embedded lease store.
    pub redis_url: Option<String>,
    /// An admin bearer token to accept (`LICENSING_ADMIN_TOKEN`); `None`: a first one is generated.
    pub admin_token: Option<String>,
    /// Base64 key (32+ bytes) of the keyed hashes (`LICENSING_HASH_KEY`); `None`: from the key file.
    pub hash_key_b64: Option<String>,
    /// Base64 Ed25519 seed that signs certificates and lease tokens (`LICENSING_SIGNING_KEY`); `None`: from the key file.
    pub signing_key_b64: Option<String>,
    /// Deadline of one unary request (`LICENSING_REQUEST_TIMEOUT_MS`, default 10 s).
    pub request_timeout: Duration,
    /// Requests served at once per process (`LICENSING_CONCURRENCY_LIMIT`, default 1024, at least 1).
    pub concurrency_limit: usize,
    /// After SIGTERM: how long new calls are still served once health reports NOT_SERVING.
    pub shutdown_readiness_delay: Duration,
    /// Then: how long in-flight calls may drain after the listener closes.
    pub shutdown_grace: Duration,
    /// Largest gRPC message decoded or encoded (`LICENSING_MAX_MESSAGE_BYTES`, default 4 MiB).
    pub max_message_bytes: usize,
    /// Whether gRPC reflection is served (`LICENSING_REFLECTION`, default true).
    pub reflection: bool,
    /// Share of a machine's stored fingerprint components that must still match.
    pub fingerprint_match: f64,
    /// How often WatchLicense streams look for vendor changes (`LICENSING_WATCH_POLL_MS`, default 2 s).
    pub watch_poll: Duration,
    /// How often expired leases are recorded (`LICENSING_SWEEP_INTERVAL_MS`, default 5 s, at least 10 ms).
    pub sweep_interval: Duration,
    /// How often machines that missed their license's heartbeat timeout are deactivated
    /// (`LICENSING_CULL_INTERVAL_MS`, default 60 s, at least 10 ms).
    pub cull_interval: Duration,
    /// The longest lease TTL granted, and the recovery window after Redis loses leases before any
    /// lease expiry was recorded (later ones last until the latest recorded expiry).
    pub max_lease_ttl: Duration,
    /// Request rates per client, license or account (`LICENSING_RATE_*`).
    pub rate_limits: RateLimits,
    /// TLS (and mutual TLS) of the gRPC listener; `None` serves plaintext.
    pub tls: Option<crate::tls::ServerTls>,
    /// Capacity of the bounded usage-log queue.
    pub usage_queue: usize,
    /// SMTP relay for password-reset mail (`LICENSING_SMTP_URL`); `None`: mail goes to files in `<data dir>/outbox`.
    pub smtp_url: Option<String>,
    /// Sender address of portal mail (`LICENSING_MAIL_FROM`, default `licensing@localhost`).
    pub mail_from: String,
    /// Where reset mail links to instead of the portal's own page.
    pub reset_url: Option<String>,
    /// Text or JSON log lines (`LICENSING_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// The tracing filter (`RUST_LOG`, default `info`).
    pub log_filter: String,
    /// OTLP/gRPC collector that traces are exported to (`OTEL_EXPORTER_OTLP_ENDPOINT`); `None`: not exported.
    pub otlp_endpoint: Option<String>,
    /// Service name on exported traces (`OTEL_SERVICE_NAME`; the default differs per binary).
    pub service_name: String,
    /// On-premises mode, when `LICENSING_ON_PREMISES=true`.
    pub on_premises: Option<OnPremisesConfig>,
}

/// The on-premises mode (`LICENSING_ON_PREMISES=true`) and who the server is to its vendor.
#[derive(Debug, Clone)]
pub struct OnPremisesConfig {
    /// The server license's key (`LICENSING_SERVER_LICENSE_KEY`).
    pub license_key: String,
    /// The vendor's Ed25519 public key (`LICENSING_VENDOR_PUBLIC_KEY`).
    pub vendor_public_key: [u8; 32],
    /// The vendor's address (`LICENSING_VENDOR_URL`); `None`: air-gapped.
    pub vendor_url: Option<String>,
    /// The CA of the vendor's TLS certificate (`LICENSING_VENDOR_CA`), as PEM.
    pub vendor_ca: Option<Vec<u8>>,
    /// The name the server is activated under (`LICENSING_SERVER_NAME`); `None`: the host name.
    pub server_name: Option<String>,
    /// How often an online server refreshes its file (`LICENSING_REFRESH_INTERVAL_MS`, default 1 h).
    pub refresh_interval: Duration,
}

impl OnPremisesConfig {
    fn from_lookup(lookup: &dyn Lookup) -> Result<Option<Self>, ConfigError> {
        if !parse(lookup, "LICENSING_ON_PREMISES", false, "true or false")? {
            for var in ["LICENSING_SERVER_LICENSE_KEY", "LICENSING_VENDOR_URL"] {
                if non_empty(lookup, var).is_some() {
                    return Err(ConfigError {
                        var,
                        message: "is set but LICENSING_ON_PREMISES is not true: set it to serve on premises".into(),
                    });
                }
            }
            return Ok(None);
        }
        let required = |var: &'static str| {
            non_empty(lookup, var)
                .ok_or(ConfigError { var, message: "is required with LICENSING_ON_PREMISES=true".into() })
        };
        let license_key = required("LICENSING_SERVER_LICENSE_KEY")?;
        licensing_domain::license_key::LicenseKey::parse(&license_key).map_err(|e| ConfigError {
            var: "LICENSING_SERVER_LICENSE_KEY",
            message: format!("not a license key (XXXXX-XXXXX-XXXXX-XXXXX-XXXXX): {e}"),
        })?;
        let key_b64 = required("LICENSING_VENDOR_PUBLIC_KEY")?;
        let vendor_public_key = {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(key_b64.as_bytes()).ok();
            let key: Option<[u8; 32]> = bytes.and_then(|b| b.try_into().ok());
            key.filter(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_ok()).ok_or(ConfigError {
                var: "LICENSING_VENDOR_PUBLIC_KEY",
                message: "not a base64 Ed25519 public key of 32 bytes (the vendor's GetVerifyingKey public_key)".into(),
            })?
        };
        let vendor_url = match non_empty(lookup, "LICENSING_VENDOR_URL") {
            None => None,
            Some(url) => Some(base_url(&url).map_err(|message| ConfigError { var: "LICENSING_VENDOR_URL", message })?),
        };
        let vendor_ca = match non_empty(lookup, "LICENSING_VENDOR_CA") {
            None => None,
            Some(path) => Some(std::fs::read(&path).map_err(|e| ConfigError {
                var: "LICENSING_VENDOR_CA",
                message: format!("cannot read '{path}': {e}"),
            })?),
        };
        let refresh_ms = parse::<u64>(lookup, "LICENSING_REFRESH_INTERVAL_MS", 3_600_000, "a number of milliseconds")?;
        Ok(Some(Self {
            license_key,
            vendor_public_key,
            vendor_url,
            vendor_ca,
            server_name: non_empty(lookup, "LICENSING_SERVER_NAME"),
            refresh_interval: Duration::from_millis(refresh_ms).max(Duration::from_millis(100)),
        }))
    }
}

/// A variable that is set but not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {var}: {message}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

fn parse<T: std::str::FromStr>(
    lookup: &dyn Lookup,
    var: &'static str,
    default: T,
    what: &str,
) -> Result<T, ConfigError> {
    match lookup.get(var).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError { var, message: format!("'{v}' is not {what}") }),
    }
}

/// An address:port, `off`, or unset (the process's default).
fn listen(lookup: &dyn Lookup, var: &'static str) -> Result<MetricsListen, ConfigError> {
    match non_empty(lookup, var).as_deref() {
        None => Ok(MetricsListen::RoleDefault),
        Some("off") => Ok(MetricsListen::Off),
        Some(v) => v
            .parse()
            .map(MetricsListen::At)
            .map_err(|_| ConfigError { var, message: format!("'{v}' is neither an address:port nor off") }),
    }
}

/// `scheme://host[:port]` with scheme http or https, and nothing after it but an optional path.
fn split_url(url: &str) -> Result<(&str, &str, &str), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("'{url}' is not an http:// or https:// URL"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("'{url}' is not an http:// or https:// URL"));
    }
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._:[]".contains(c);
    if authority.is_empty() || !authority.chars().all(plain) {
        return Err(format!("'{url}' has no plain host[:port] after {scheme}://"));
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("'{url}' must not carry a query, fragment or spaces"));
    }
    Ok((scheme, authority, path))
}

/// A public base URL: `http(s)://host[:port][/path]`, returned without a trailing slash.
pub fn base_url(url: &str) -> Result<String, String> {
    split_url(url)?;
    Ok(url.trim_end_matches('/').to_owned())
}

/// A browser origin: `http(s)://host[:port]`, nothing after it.
pub fn origin(value: &str) -> Result<String, String> {
    let (_, _, path) = split_url(value)?;
    if !path.is_empty() {
        return Err(format!("'{value}' is not an origin: write scheme://host[:port] without a path"));
    }
    Ok(value.to_owned())
}

fn non_empty(lookup: &dyn Lookup, var: &str) -> Option<String> {
    lookup.get(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl Config {
    /// Reads every setting; `default_addr` and `service_name` differ per binary.
    pub fn from_lookup(lookup: &dyn Lookup, default_addr: &str, service_name: &str) -> Result<Self, ConfigError> {
        let listen_addr = parse(
            lookup,
            "LICENSING_LISTEN_ADDR",
            default_addr.parse().expect("valid default address"),
            "an address:port",
        )?;
        let metrics = match non_empty(lookup, "LICENSING_METRICS_ADDR").as_deref() {
            None => MetricsListen::RoleDefault,
            Some("off") => MetricsListen::Off,
            Some(v) => MetricsListen::At(v.parse().map_err(|_| ConfigError {
                var: "LICENSING_METRICS_ADDR",
                message: format!("'{v}' is neither an address:port nor off"),
            })?),
        };
        let portal = listen(lookup, "LICENSING_PORTAL_ADDR")?;
        let portal_url = match non_empty(lookup, "LICENSING_PORTAL_URL") {
            None => None,
            Some(url) => Some(base_url(&url).map_err(|message| ConfigError { var: "LICENSING_PORTAL_URL", message })?),
        };
        let grpc_web_origins = match non_empty(lookup, "LICENSING_GRPC_WEB_ORIGINS").as_deref() {
            None | Some("off") => vec![],
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| origin(o).map_err(|message| ConfigError { var: "LICENSING_GRPC_WEB_ORIGINS", message }))
                .collect::<Result<_, _>>()?,
        };
        let trusted_proxies =
            TrustedProxies::parse(non_empty(lookup, "LICENSING_TRUSTED_PROXIES").as_deref().unwrap_or(""))
                .map_err(|message| ConfigError { var: "LICENSING_TRUSTED_PROXIES", message })?;
        let millis =
            |var, default| parse::<u64>(lookup, var, default, "a number of milliseconds").map(Duration::from_millis);
        let request_timeout = millis("LICENSING_REQUEST_TIMEOUT_MS", 10_000)?;
        let shutdown_readiness_delay = millis("LICENSING_SHUTDOWN_READINESS_DELAY_MS", 0)?;
        let shutdown_grace = millis("LICENSING_SHUTDOWN_GRACE_MS", 10_000)?;
        let concurrency_limit = parse(lookup, "LICENSING_CONCURRENCY_LIMIT", 1024usize, "a whole number")?;
        if concurrency_limit == 0 {
            return Err(ConfigError { var: "LICENSING_CONCURRENCY_LIMIT", message: "must be at least 1".into() });
        }
        let log_format = match non_empty(lookup, "LICENSING_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError {
                    var: "LICENSING_LOG_FORMAT",
                    message: format!("'{other}' is neither text nor json"),
                })
            }
        };
        let fingerprint_match = parse(lookup, "LICENSING_FINGERPRINT_MATCH", 0.6f64, "a share between 0 and 1")?;
        if !(fingerprint_match > 0.0 && fingerprint_match <= 1.0) {
            return Err(ConfigError {
                var: "LICENSING_FINGERPRINT_MATCH",
                message: "must be above 0 and at most 1".into(),
            });
        }
        let database_url = non_empty(lookup, "LICENSING_DATABASE_URL");
        if let Some(url) = &database_url {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                return Err(ConfigError { var: "LICENSING_DATABASE_URL", message: "must be a postgres:// URL".into() });
            }
        }
        let redis_url = non_empty(lookup, "LICENSING_REDIS_URL");
        if let Some(url) = &redis_url {
            if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                return Err(ConfigError { var: "LICENSING_REDIS_URL", message: "must be a redis:// URL".into() });
            }
        }
        Ok(Self {
            listen_addr,
            metrics,
            portal,
            portal_url,
            grpc_web_origins,
            trusted_proxies,
            data_dir: non_empty(lookup, "LICENSING_DATA_DIR").unwrap_or_else(|| "data".into()).into(),
            database_url,
            database_max_connections: parse(lookup, "LICENSING_DATABASE_MAX_CONNECTIONS", 16u32, "a whole number")?,
            migrate: match non_empty(lookup, "LICENSING_MIGRATE").as_deref() {
                None | Some("on") => Migrate::OnStart,
                Some("off") => Migrate::Off,
                Some("only") => Migrate::Only,
                Some(other) => {
                    return Err(ConfigError {
                        var: "LICENSING_MIGRATE",
                        message: format!("'{other}' is not on, off or only"),
                    })
                }
            },
            redis_url,
            admin_token: non_empty(lookup, "LICENSING_ADMIN_TOKEN"),
            hash_key_b64: non_empty(lookup, "LICENSING_HASH_KEY"),
            signing_key_b64: non_empty(lookup, "LICENSING_SIGNING_KEY"),
            request_timeout,
            concurrency_limit,
            shutdown_readiness_delay,
            shutdown_grace,
            max_message_bytes: parse(lookup, "LICENSING_MAX_MESSAGE_BYTES", 4 * 1024 * 1024usize, "a number of bytes")?,
            reflection: parse(lookup, "LICENSING_REFLECTION", true, "true or false")?,
            fingerprint_match,
            watch_poll: millis("LICENSING_WATCH_POLL_MS", 2_000)?,
            smtp_url: non_empty(lookup, "LICENSING_SMTP_URL"),
            mail_from: non_empty(lookup, "LICENSING_MAIL_FROM").unwrap_or_else(|| "licensing@localhost".into()),
            reset_url: non_empty(lookup, "LICENSING_RESET_URL"),
            sweep_interval: millis("LICENSING_SWEEP_INTERVAL_MS", 5_000)?.max(Duration::from_millis(10)),
            cull_interval: millis("LICENSING_CULL_INTERVAL_MS", 60_000)?.max(Duration::from_millis(10)),
            max_lease_ttl: millis("LICENSING_MAX_LEASE_TTL_MS", 3_600_000)?.max(Duration::from_secs(1)),
            rate_limits: RateLimits::from_lookup(lookup)?,
            tls: crate::tls::ServerTls::from_lookup(lookup)?,
            usage_queue: parse(lookup, "LICENSING_USAGE_QUEUE", 10_000usize, "a whole number")?.max(1),
            log_format,
            log_filter: non_empty(lookup, "RUST_LOG").unwrap_or_else(|| "info".into()),
            otlp_endpoint: non_empty(lookup, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            service_name: non_empty(lookup, "OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_owned()),
            on_premises: OnPremisesConfig::from_lookup(lookup)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("t").args(server_args()).no_binary_name(true)
    }

    #[test]
    fn flags_and_variables_are_one_list_and_a_flag_wins() {
        let flags: Vec<_> = server_args().into_iter().chain(client_args()).map(|a| a.get_id().to_string()).collect();
        let vars: Vec<_> = VARIABLES.iter().map(|(v, _)| (*v).to_owned()).collect();
        let (mut flags, mut vars) = (flags, vars);
        flags.sort();
        vars.sort();
        assert_eq!(flags, vars, "every variable is an argument of the servers or the clients");
        assert_eq!(flag_of("LICENSING_LISTEN_ADDR"), "listen-addr");
        assert_eq!(flag_of("RUST_LOG"), "rust-log");
        assert!(client_args().iter().any(|a| a.get_id() == "LICENSING_TLS_CA"));
        assert!(!server_args().iter().any(|a| a.get_id() == "LICENSING_TLS_CA"), "servers do not dial");

        let matches = command().try_get_matches_from(["--listen-addr", "0.0.0.0:7000", "--log-format=json"]).unwrap();
        let c = Config::from_lookup(&matches, "127.0.0.1:1", "s").unwrap();
        assert_eq!(c.listen_addr.port(), 7000);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(Lookup::get(&matches, "LICENSING_DATA_DIR"), None, "unset stays unset");
        assert_eq!(Lookup::get(&matches, "NOT_A_VARIABLE"), None);
        let err = Config::from_lookup(
            &command().try_get_matches_from(["--request-timeout-ms", "soon"]).unwrap(),
            "127.0.0.1:1",
            "s",
        )
        .unwrap_err();
        assert_eq!(err.var, "LICENSING_REQUEST_TIMEOUT_MS", "a bad flag names its variable");
        assert!(command().try_get_matches_from(["--no-such-flag", "1"]).is_err());
    }

    #[test]
    fn help_lists_every_server_variable_without_its_value() {
        let help = command().render_long_help().to_string();
        for (var, meaning) in VARIABLES.iter().filter(|(_, m)| !for_clients(m)) {
            assert!(help.contains(&format!("--{}", flag_of(var))), "{var}: {help}");
            assert!(help.contains(&format!("[env: {var}")), "{var}");
            assert!(help.contains(meaning.split_whitespace().next().unwrap()), "{var}");
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = Config::from_lookup(&HashMap::new(), "127.0.0.1:50051", "licensing").unwrap();
        assert_eq!(c.listen_addr.port(), 50051);
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert!(c.database_url.is_none() && c.redis_url.is_none());
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_readiness_delay, Duration::ZERO, "no delay outside Kubernetes");
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(c.reflection);
    }

    #[test]
    fn values_are_read_and_bad_ones_name_the_variable() {
        let c = Config::from_lookup(
            &[
                ("LICENSING_LISTEN_ADDR", "0.0.0.0:7000"),
                ("LICENSING_LOG_FORMAT", "json"),
                ("LICENSING_DATABASE_URL", "postgres://x/y"),
            ],
            "127.0.0.1:1",
            "s",
        )
        .unwrap();
        assert_eq!(c.listen_addr.port(), 7000);
        assert_eq!(c.log_format, LogFormat::Json);
        let err = Config::from_lookup(&[("LICENSING_REQUEST_TIMEOUT_MS", "soon")], "127.0.0.1:1", "s").unwrap_err();
        assert_eq!(err.var, "LICENSING_REQUEST_TIMEOUT_MS");
        let err = Config::from_lookup(&[("LICENSING_DATABASE_URL", "mysql://x")], "127.0.0.1:1", "s").unwrap_err();
        assert_eq!(err.var, "LICENSING_DATABASE_URL");
        let err = Config::from_lookup(&[("LICENSING_CONCURRENCY_LIMIT", "0")], "127.0.0.1:1", "s").unwrap_err();
        assert_eq!(err.var, "LICENSING_CONCURRENCY_LIMIT");
        assert_eq!(Config::from_lookup(&HashMap::new(), "127.0.0.1:1", "s").unwrap().migrate, Migrate::OnStart);
        let c = Config::from_lookup(&[("LICENSING_MIGRATE", "off")], "127.0.0.1:1", "s").unwrap();
        assert_eq!(c.migrate, Migrate::Off);
        let err = Config::from_lookup(&[("LICENSING_MIGRATE", "later")], "127.0.0.1:1", "s").unwrap_err();
        assert_eq!(err.var, "LICENSING_MIGRATE");
    }

    #[test]
    fn rate_limits_default_parse_and_turn_off() {
        let c = Config::from_lookup(
            &[("LICENSING_RATE_LOGIN_PER_CLIENT", "5/s"), ("LICENSING_RATE_CHECKOUT_PER_LICENSE", "off")],
            "127.0.0.1:1",
            "s",
        )
        .unwrap();
        assert_eq!(c.rate_limits.login_per_client, Some(Rate { count: 5, per: Duration::from_secs(1) }));
        assert_eq!(c.rate_limits.checkout_per_license, None);
        assert_eq!(c.rate_limits.activate_per_license, RateLimits::default().activate_per_license);
        let err =
            Config::from_lookup(&[("LICENSING_RATE_ACTIVATE_PER_CLIENT", "lots")], "127.0.0.1:1", "s").unwrap_err();
        assert_eq!(err.var, "LICENSING_RATE_ACTIVATE_PER_CLIENT");
        assert!(err.message.contains("60/min"), "{}", err.message);
    }

    #[test]
    fn the_portal_and_grpc_web_settings_are_read_and_checked() {
        let c = Config::from_lookup(&HashMap::new(), "127.0.0.1:1", "s").unwrap();
        assert_eq!(c.portal, MetricsListen::RoleDefault);
        assert!(c.portal_url.is_none() && c.grpc_web_origins.is_empty() && c.reset_url.is_none());
        let c = Config::from_lookup(
            &[
                ("LICENSING_PORTAL_ADDR", "off"),
                ("LICENSING_PORTAL_URL", "https://portal.vendor.example/licensing/"),
                ("LICENSING_GRPC_WEB_ORIGINS", "https://app.vendor.example, http://localhost:3000"),
            ],
            "127.0.0.1:1",
            "s",
        )
        .unwrap();
        assert_eq!(c.portal, MetricsListen::Off);
        assert_eq!(c.portal_url.as_deref(), Some("https://portal.vendor.example/licensing"));
        assert_eq!(c.grpc_web_origins, ["https://app.vendor.example", "http://localhost:3000"]);
        for (var, bad) in [
            ("LICENSING_PORTAL_ADDR", "port 8080"),
            ("LICENSING_PORTAL_URL", "portal.vendor.example"),
            ("LICENSING_PORTAL_URL", "https://portal.vendor.example/?x=1"),
            ("LICENSING_GRPC_WEB_ORIGINS", "https://app.vendor.example/path"),
            ("LICENSING_GRPC_WEB_ORIGINS", "*"),
        ] {
            let err = Config::from_lookup(&[(var, bad)], "127.0.0.1:1", "s").unwrap_err();
            assert_eq!(err.var, var, "{bad}");
        }
        let c = Config::from_lookup(&[("LICENSING_GRPC_WEB_ORIGINS", "off")], "127.0.0.1:1", "s").unwrap();
        assert!(c.grpc_web_origins.is_empty());
    }
}
