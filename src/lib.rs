//! The licensing server's processes: one all-in-one server on the embedded default, and one
//! binary per service for production.
//!
//! # Layout
//! - [`Role`]: which services a process serves.
//! - [`Application`]: `build` (open the stores, bootstrap the admin token, bind the port) then
//!   `run_until_stopped` (serve until SIGTERM/SIGINT, drain).
//! - [`main`]: what each binary's `main` calls (its command line, then [`run`]).
//! - `src/main.rs` (all-in-one), `src/bin/{account,activation,seat}.rs`: the binaries.

use anyhow::Context as _;
use licensing_account::grpc::{AccountApi, AdminApi};
use licensing_account::mail::{FileOutbox, Mailer, SmtpMailer};
use licensing_account::portal::{Portal, PortalDeps, PortalSettings};
use licensing_account::web::serve::WebServer;
use licensing_account::web::WebSettings;
use licensing_account::{Catalog, CatalogDeps};
use licensing_activation::grpc::ActivationApi;
use licensing_activation::{ActivationDeps, ActivationSettings, Activations, ValidationCache};
use licensing_domain::certificate::Signer;
use licensing_domain::clock::{system_clock, SharedClock};
use licensing_domain::fingerprint::Component;
use licensing_domain::secrets::{KeyedHasher, PasswordHasher};
use licensing_domain::store::CatalogStore;
use licensing_domain::store::{ActivationStore, LeaseStore};
use licensing_onprem::grpc::{Gated, OnPremisesApi};
use licensing_onprem::vendor::{GrpcVendor, Vendor};
use licensing_onprem::{OnPremises, OnPremisesDeps, OnPremisesSettings};
use licensing_runtime::auth::{bootstrap_admin_token, validate_admin_token_shape, AdminAuth, SessionAuth};
use licensing_runtime::config::{Config, Lookup, Migrate};
use licensing_runtime::credentials::CredentialResolver;
use licensing_runtime::keys::ServerKeys;
use licensing_runtime::limiter::{GuessThrottle, RateLimiter};
use licensing_runtime::metrics::{Gauge, GaugeSource, Reading};
use licensing_runtime::server::CancellationToken;
use licensing_runtime::server::{GrpcServer, StackSettings};
use licensing_seat::grpc::SeatApi;
use licensing_seat::{LicenseCache, SeatSettings, Seats, UsageLog};
use licensing_store::sql::{Dialect, SqlOptions};
use licensing_store::{RedisLeaseStore, SqlLeaseStore, SqlStore};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

/// The embedded SQLite file inside the data directory.
pub const DATABASE_FILE: &str = "licensing.db";

/// Which services a process serves (one binary per role, or all in one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// All three services in one process: the embedded default.
    AllInOne,
    /// The Account service (admin API and customer portal).
    Account,
    /// The Activation service (node-locked activations, validations).
    Activation,
    /// The Seat service (floating seats).
    Seat,
}

impl Role {
    /// The gRPC address served unless `LICENSING_LISTEN_ADDR` says otherwise.
    pub fn default_addr(self) -> &'static str {
        match self {
            Self::AllInOne => "127.0.0.1:50051",
            Self::Account => "127.0.0.1:50052",
            Self::Activation => "127.0.0.1:50053",
            Self::Seat => "127.0.0.1:50054",
        }
    }

    /// Where the customer portal (a web browser's) listens unless configured; `None` for the
    /// processes that do not serve the Account service.
    pub fn default_portal_addr(self) -> Option<&'static str> {
        match self {
            Self::AllInOne => Some("127.0.0.1:8080"),
            Self::Account => Some("127.0.0.1:8082"),
            Self::Activation | Self::Seat => None,
        }
    }

    /// Where the Prometheus scrape endpoint listens unless configured.
    pub fn default_metrics_addr(self) -> &'static str {
        match self {
            Self::AllInOne => "127.0.0.1:9464",
            Self::Account => "127.0.0.1:9465",
            Self::Activation => "127.0.0.1:9466",
            Self::Seat => "127.0.0.1:9467",
        }
    }

    /// The service name on traces and metrics unless `OTEL_SERVICE_NAME` says otherwise.
    pub fn service_name(self) -> &'static str {
        match self {
            Self::AllInOne => "licensing-server",
            Self::Account => "licensing-account",
            Self::Activation => "licensing-activation",
            Self::Seat => "licensing-seat",
        }
    }

    /// The name of the binary that serves as this role (src/main.rs, src/bin/*.rs).
    fn binary_name(self) -> &'static str {
        match self {
            Self::AllInOne => "licensing-server",
            Self::Account => "account",
            Self::Activation => "activation",
            Self::Seat => "seat",
        }
    }

    /// What `--help` says the binary does.
    fn about(self) -> &'static str {
        match self {
            Self::AllInOne => {
                "The licensing server: the account (admin API and customer portal), activation and seat \
                               services in one process, on an embedded SQLite file and lease store unless \
                               LICENSING_DATABASE_URL and LICENSING_REDIS_URL say otherwise"
            }
            Self::Account => {
                "The licensing server's account service alone (admin API, customer portal), for production \
                              on PostgreSQL and Redis"
            }
            Self::Activation => {
                "The licensing server's activation service alone (node-locked activation, offline \
                                 certificates), for production on PostgreSQL"
            }
            Self::Seat => {
                "The licensing server's seat service alone (floating seats, leases, usage), for production \
                           on PostgreSQL and Redis"
            }
        }
    }

    fn serves_account(self) -> bool {
        matches!(self, Self::AllInOne | Self::Account)
    }

    fn serves_activation(self) -> bool {
        matches!(self, Self::AllInOne | Self::Activation)
    }

    fn serves_seat(self) -> bool {
        matches!(self, Self::AllInOne | Self::Seat)
    }
}

/// Things a test may want to replace.
#[derive(Clone)]
pub struct Overrides {
    /// The clock every service reads.
    pub clock: SharedClock,
    /// Hashes customers' passwords (tests use cheap parameters).
    pub password_hasher: PasswordHasher,
    /// This machine's fingerprint as an on-premises server reads it; `None`: read from the
    /// machine (tests run several servers on one machine as if on several).
    pub machine: Option<Vec<Component>>,
}

impl Default for Overrides {
    fn default() -> Self {
        Self { clock: system_clock(), password_hasher: PasswordHasher::owasp(), machine: None }
    }
}

/// A built server process: the bound gRPC listener (and portal, metrics), its stores and
/// background tasks, ready to run.
pub struct Application {
    server: GrpcServer,
    store: SqlStore,
    /// Background tasks (the lease sweep), stopped with the server.
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Flushed at shutdown, so recorded usage is not lost.
    usage_log: Option<UsageLog>,
    /// A freshly generated admin token, to be shown once; `None` when one existed or was configured.
    pub generated_admin_token: Option<String>,
    metrics_addr: Option<SocketAddr>,
    /// Stops the metrics endpoint (after the gRPC drain, so the last scrape sees it).
    stop_metrics: tokio::sync::oneshot::Sender<()>,
    /// The customer portal in a browser, when this process serves it.
    portal: Option<WebServer>,
    portal_addr: Option<SocketAddr>,
    /// Cancelled when the drain starts: the portal stops accepting then, with the gRPC port.
    drain: CancellationToken,
    shutdown_grace: std::time::Duration,
}

/// What the services of a role are built from: this process's stores, keys and settings.
struct Deps<'a> {
    config: &'a Config,
    overrides: &'a Overrides,
    stack: &'a StackSettings,
    store: SqlStore,
    catalog: Arc<dyn CatalogStore>,
    hasher: KeyedHasher,
    signer: Signer,
    credentials: CredentialResolver,
    /// Where leases live (Redis or the embedded store); `None` where this role reads none.
    leases: Option<Arc<dyn LeaseStore>>,
    /// The Redis lease store when leases live there (it also keeps license revisions).
    redis: Option<RedisLeaseStore>,
}

/// What the roles add to the process: their gRPC services, background work, and what must be
/// stopped or flushed at shutdown.
#[derive(Default)]
struct Served {
    routes: RoutesBuilder,
    /// The names of the services in `routes`, as tonic generated them (for health and reflection).
    names: Vec<&'static str>,
    background: Vec<tokio::task::JoinHandle<()>>,
    usage_log: Option<UsageLog>,
    portal: Option<WebServer>,
}

impl Served {
    /// Serves `service`, under the name tonic generated for it.
    fn serve<S>(&mut self, service: S)
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
    }
}

impl Application {
    /// Builds the process `role` serves from `config`: opens the stores, binds the listeners.
    pub async fn build(config: &Config, role: Role) -> anyhow::Result<Self> {
        Self::build_with(config, role, Overrides::default()).await
    }

    /// Opens the stores, bootstraps the admin token, builds the services of `role` from one set
    /// of dependencies, and binds the ports.
    pub async fn build_with(config: &Config, role: Role, overrides: Overrides) -> anyhow::Result<Self> {
        if let Some(token) = &config.admin_token {
            validate_admin_token_shape(token).map_err(anyhow::Error::msg)?;
        }
        let store = open_sql_store(config, role).await?;
        let (hash_key, signing_key) = (config.hash_key_b64.as_deref(), config.signing_key_b64.as_deref());
        // One process may keep its keys in its data directory; separate services must share them.
        let keys = match role {
            Role::AllInOne => ServerKeys::load_or_create(&config.data_dir, hash_key, signing_key)?,
            _ => ServerKeys::from_env_values(hash_key, signing_key)?,
        };
        let catalog: Arc<dyn CatalogStore> = Arc::new(store.clone());
        let hasher = keys.hasher();
        let generated_admin_token = if role.serves_account() {
            let now = overrides.clock.now();
            bootstrap_admin_token(catalog.as_ref(), &hasher, config.admin_token.as_deref(), now).await?
        } else {
            None
        };
        let stack = StackSettings::from(config);
        let (leases, redis) = lease_stores(config, role, &store, &overrides).await?;
        let deps = Deps {
            config,
            overrides: &overrides,
            stack: &stack,
            credentials: CredentialResolver::new(
                catalog.clone(),
                hasher.clone(),
                overrides.password_hasher.clone(),
                GuessThrottle::default(),
            ),
            signer: Signer::from_seed(&keys.signing_seed),
            store: store.clone(),
            catalog,
            hasher,
            leases,
            redis,
        };
        let mut served = Served::default();
        if let Some(on_premises) = &config.on_premises {
            anyhow::ensure!(role == Role::AllInOne, "LICENSING_ON_PREMISES: only licensing-server serves on premises");
            let onprem = on_premises_server(&deps, on_premises).await?;
            activation_routes(&deps, &mut served, Some(&onprem));
            seat_routes(&deps, &mut served, Some(&onprem))?;
            on_premises_routes(&deps, on_premises, onprem, &mut served);
        } else {
            if role.serves_account() {
                account_routes(&deps, role, &mut served).await?;
            }
            if role.serves_activation() {
                activation_routes(&deps, &mut served, None);
            }
            if role.serves_seat() {
                seat_routes(&deps, &mut served, None)?;
            }
        }
        if let (true, Some(url)) = (role.serves_seat() || role.serves_activation(), &config.database_url) {
            // Their caches hear of changes made by other processes (the Account service, other
            // replicas) through PostgreSQL NOTIFY.
            served.background.push(store.listen_for_license_changes(url));
        }
        let metrics = stack.metrics.clone();
        metrics.add_source(Arc::new(StoreHealth { sql: store.clone(), redis: deps.redis.clone() }));
        drop(deps);
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_addr = match config.metrics.resolve(role.default_metrics_addr()) {
            Some(addr) => {
                let stopped = async {
                    let _ = metrics_stopped.await;
                };
                let (bound, task) = licensing_runtime::metrics::serve(addr, metrics, stopped)
                    .await
                    .with_context(|| format!("binding the metrics endpoint {addr} (LICENSING_METRICS_ADDR)"))?;
                served.background.push(task);
                Some(bound)
            }
            None => None,
        };
        let drain = stack.drain.clone();
        let portal_addr = served.portal.as_ref().map(|p| p.local_addr()).transpose()?;
        let server = GrpcServer::bind(config.listen_addr, served.routes.routes(), &served.names, stack)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        Ok(Self {
            server,
            store,
            background: served.background,
            usage_log: served.usage_log,
            generated_admin_token,
            metrics_addr,
            stop_metrics,
            portal: served.portal,
            portal_addr,
            drain,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// The bound gRPC address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The bound Prometheus scrape endpoint, unless turned off.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The bound customer portal (HTTP or HTTPS), unless this process does not serve it.
    pub fn portal_addr(&self) -> Option<SocketAddr> {
        self.portal_addr
    }

    /// Serves until `shutdown` completes, then drains (see `StackSettings`): calls in flight finish
    /// within the grace period, background tasks stop, the usage log is flushed and the store closed.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        // The portal stops accepting when the gRPC drain starts (the same token), and lets its
        // requests in flight finish within the same grace period.
        let portal = self.portal.map(|p| tokio::spawn(p.run(self.drain.clone(), self.shutdown_grace)));
        let result = self.server.run_until_stopped(shutdown).await;
        self.drain.cancel();
        if let Some(portal) = portal {
            let _ = tokio::time::timeout(self.shutdown_grace + std::time::Duration::from_secs(1), portal).await;
        }
        let _ = self.stop_metrics.send(());
        for task in &self.background {
            task.abort();
        }
        if let Some(usage) = &self.usage_log {
            // Bounded: a store that is down must not hold up the exit.
            if tokio::time::timeout(std::time::Duration::from_secs(5), usage.flush()).await.is_err() {
                tracing::warn!("usage log not fully written at shutdown");
            }
        }
        self.store.close().await;
        result.context("serving gRPC")
    }
}

/// The SQL store: PostgreSQL when configured (the separate services need it), else the embedded
/// SQLite file of the all-in-one server.
async fn open_sql_store(config: &Config, role: Role) -> anyhow::Result<SqlStore> {
    Ok(match (&config.database_url, role) {
        (Some(url), _) => {
            let options = SqlOptions {
                max_connections: config.database_max_connections,
                migrate: config.migrate != Migrate::Off,
                ..Default::default()
            };
            let context = match config.migrate {
                Migrate::Off => "connecting to PostgreSQL (LICENSING_MIGRATE=off: apply the migrations first, with LICENSING_MIGRATE=only)",
                _ => "connecting to PostgreSQL",
            };
            SqlStore::connect_postgres(url, &options).await.context(context)?
        }
        (None, Role::AllInOne) => {
            let path = config.data_dir.join(DATABASE_FILE);
            SqlStore::open_sqlite(&path).await.with_context(|| format!("opening {}", path.display()))?
        }
        (None, _) => {
            anyhow::bail!("LICENSING_DATABASE_URL is required: the separate services share one PostgreSQL database")
        }
    })
}

/// Where leases live: Redis when configured, else the embedded store in the all-in-one server.
/// The separate Account service reads them to show a customer's live leases.
async fn lease_stores(
    config: &Config,
    role: Role,
    store: &SqlStore,
    overrides: &Overrides,
) -> anyhow::Result<(Option<Arc<dyn LeaseStore>>, Option<RedisLeaseStore>)> {
    let Some(url) = &config.redis_url else {
        return match role {
            Role::AllInOne => Ok((Some(Arc::new(SqlLeaseStore::new(store.clone(), overrides.clock.clone()))), None)),
            Role::Seat => {
                anyhow::bail!("LICENSING_REDIS_URL is required: the separate Seat service keeps its leases in Redis")
            }
            Role::Account => {
                tracing::warn!("no LICENSING_REDIS_URL: this Account service shows no live leases, and Seat services on Redis hear of its license changes only by PostgreSQL NOTIFY, so a checkout right after a change may still see the old license");
                Ok((None, None))
            }
            Role::Activation => Ok((None, None)),
        };
    };
    if role == Role::Activation {
        return Ok((None, None));
    }
    let mut redis = RedisLeaseStore::connect(url)
        .await
        .context("connecting to Redis")?
        .with_recovery_window(config.max_lease_ttl.as_millis() as i64);
    if role.serves_seat() {
        // Every expiry a holder is told is first recorded in SQL, which outlives Redis: a
        // recovery after a loss lasts until the latest of them.
        redis = redis.with_expiry_horizon(Arc::new(store.clone()));
        for (name, current, recommended) in redis.config_shortfalls().await {
            tracing::warn!(
                setting = name,
                current,
                recommended,
                "Redis is configured below what the lease store is sized for: leases take more memory (set {name} {recommended} in redis.conf)"
            );
        }
        // Only the process that grants seats records the epoch: an empty Redis in a deployment
        // that used it before lost its leases (see RedisLeaseStore).
        let now = overrides.clock.now();
        let used_before = store.mark("redis_lease_store", now).await.context("recording Redis use")?;
        let until = redis.open_epoch(used_before).await.context("reading the Redis epoch")?;
        if until > now {
            tracing::warn!(until = %licensing_domain::clock::rfc3339(until), "the lease store is recovering: no new seats until then");
        }
    }
    // Every license change made through this process raises the license's revision, so no Seat
    // service grants a seat on the license as it was before the change.
    store.raise_license_revisions_in(Arc::new(redis.clone()));
    Ok((Some(Arc::new(redis.clone())), Some(redis)))
}

/// The Account service: the vendor's admin API, the customer portal over gRPC, and the customer
/// portal in a browser when `LICENSING_PORTAL_ADDR` is not off.
async fn account_routes(deps: &Deps<'_>, role: Role, served: &mut Served) -> anyhow::Result<()> {
    let Deps { config, overrides, stack, store, catalog: catalog_store, hasher, .. } = deps;
    // The portal's listener is bound first: the mail it sends links to the address it got.
    let portal_listener = match role.default_portal_addr().and_then(|d| config.portal.resolve(d)) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the portal {addr} (LICENSING_PORTAL_ADDR)"))?,
        ),
        None => None,
    };
    let portal_url = match (&config.portal_url, &portal_listener) {
        (Some(url), _) => url.clone(),
        (None, Some(listener)) => local_url(listener.local_addr()?, config.tls.is_some()),
        (None, None) => "http://127.0.0.1:8080".to_owned(),
    };
    let activations: Arc<dyn ActivationStore> = Arc::new(store.clone());
    let catalog = Catalog::new(CatalogDeps {
        store: catalog_store.clone(),
        activations: activations.clone(),
        meters: Arc::new(store.clone()),
        hasher: hasher.clone(),
        passwords: overrides.password_hasher.clone(),
        clock: overrides.clock.clone(),
        trials: Arc::new(store.clone()),
        server_usage: Arc::new(store.clone()),
    });
    let mailer: Arc<dyn Mailer> = match &config.smtp_url {
        Some(url) => Arc::new(SmtpMailer::new(url, &config.mail_from).map_err(anyhow::Error::msg)?),
        None => Arc::new(FileOutbox::new(config.data_dir.join("outbox"))),
    };
    let settings = PortalSettings {
        reset_url: config.reset_url.clone().unwrap_or_else(|| format!("{portal_url}/reset-password")),
        logins_per_account: config.rate_limits.login_per_account,
        ..PortalSettings::default()
    };
    let portal = Portal::new(
        PortalDeps {
            catalog: catalog.clone(),
            portal: Arc::new(store.clone()),
            activations,
            leases: deps.leases.clone(),
            usage: Arc::new(store.clone()),
            passwords: overrides.password_hasher.clone(),
            mailer,
        },
        settings,
    );
    served.serve(
        AdminApi::new(catalog, AdminAuth::new(catalog_store.clone(), hasher.clone()), activation_use_cases(deps))
            .into_server(config.max_message_bytes),
    );
    if let Some(listener) = portal_listener {
        let tls = match &config.tls {
            Some(tls) => Some(tls.rustls_config(&[b"http/1.1"]).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let unlimited = |what| RateLimiter::new(what, None);
        let settings = WebSettings {
            keys: hasher.clone(),
            secure: tls.is_some(),
            // One budget per client address across the gRPC port and the portal.
            login_per_client: stack.client_limiter("login").unwrap_or_else(|| unlimited("login")),
            reset_per_client: stack.client_limiter("password reset").unwrap_or_else(|| unlimited("password reset")),
            request_timeout: config.request_timeout,
            concurrency_limit: config.concurrency_limit,
        };
        let router = licensing_account::web::router(portal.clone(), settings);
        tracing::info!(addr = %listener.local_addr()?, url = %portal_url, "customer portal");
        served.portal =
            Some(WebServer::new(listener, router, tls).with_trusted_proxies(config.trusted_proxies.clone()));
    }
    served.serve(AccountApi::new(portal).into_server(config.max_message_bytes));
    Ok(())
}

/// The Activation service's use cases over the process's stores and keys (without caches): the
/// Activation service adds its own; the Account service answers on-premises servers' request
/// files with them.
fn activation_use_cases(deps: &Deps<'_>) -> Activations {
    let Deps { config, overrides, store, hasher, .. } = deps;
    let settings = ActivationSettings {
        match_threshold: config.fingerprint_match,
        activations_per_license: config.rate_limits.activate_per_license,
        ..ActivationSettings::default()
    };
    Activations::new(
        ActivationDeps {
            catalog: deps.catalog.clone(),
            store: Arc::new(store.clone()),
            meters: Arc::new(store.clone()),
            // Portal sessions prove a deactivation by Installation ID.
            sessions: SessionAuth::new(Arc::new(store.clone()), hasher.clone(), overrides.clock.clone()),
            credentials: deps.credentials.clone(),
            signer: deps.signer.clone(),
            clock: overrides.clock.clone(),
            trials: Arc::new(store.clone()),
            server_usage: Arc::new(store.clone()),
        },
        settings,
    )
}

/// Serves `service`, gated on an on-premises server by what its file allows.
fn serve_gated<S>(served: &mut Served, service: S, onprem: Option<&OnPremises>)
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    match onprem {
        Some(onprem) => served.serve(Gated::new(service, onprem.clone())),
        None => served.serve(service),
    }
}

/// The on-premises server (`LICENSING_ON_PREMISES=true`): its file and state in the data
/// directory, the served licenses in the local store, the vendor when online.
async fn on_premises_server(
    deps: &Deps<'_>,
    on_premises: &licensing_runtime::config::OnPremisesConfig,
) -> anyhow::Result<OnPremises> {
    let leases = deps.leases.clone().context("an on-premises server needs a lease store")?;
    let vendor: Option<Arc<dyn Vendor>> = match &on_premises.vendor_url {
        Some(url) => Some(Arc::new(
            GrpcVendor::new(url, on_premises.vendor_ca.as_deref())
                .map_err(anyhow::Error::msg)
                .context("LICENSING_VENDOR_URL")?,
        )),
        None => None,
    };
    let machine = deps.overrides.machine.clone().unwrap_or_else(licensing_client::fingerprint::this_machine);
    let server_name = on_premises.server_name.clone().unwrap_or_else(|| {
        machine.iter().find(|c| c.name == "hostname").map_or_else(|| "on-premises".to_owned(), |c| c.value.clone())
    });
    let vendor_key = ed25519_dalek::VerifyingKey::from_bytes(&on_premises.vendor_public_key)
        .context("LICENSING_VENDOR_PUBLIC_KEY")?;
    let onprem = OnPremises::open(
        OnPremisesDeps {
            catalog: deps.catalog.clone(),
            activations: Arc::new(deps.store.clone()),
            leases,
            usage: Arc::new(deps.store.clone()),
            hasher: deps.hasher.clone(),
            vendor,
            clock: deps.overrides.clock.clone(),
        },
        OnPremisesSettings {
            license_key: on_premises.license_key.clone(),
            vendor_key,
            machine,
            server_name,
            files: licensing_onprem::state::StateFiles::new(deps.config.data_dir.clone()),
            vendor_url: on_premises.vendor_url.clone().unwrap_or_default(),
        },
    )
    .await
    .context("opening the on-premises server's file and state")?;
    Ok(onprem)
}

/// `OnPremisesService` (the local admin token), and the background work of an on-premises
/// server: the refresh from the vendor when online, and keeping the latest instant seen.
fn on_premises_routes(
    deps: &Deps<'_>,
    on_premises: &licensing_runtime::config::OnPremisesConfig,
    onprem: OnPremises,
    served: &mut Served,
) {
    served.background.push(tokio::spawn(keep_on_premises_current(onprem.clone(), on_premises.refresh_interval)));
    let admin = AdminAuth::new(deps.catalog.clone(), deps.hasher.clone());
    served.serve(OnPremisesApi::new(onprem, admin).into_server(deps.config.max_message_bytes));
}

/// Every `refresh_interval`, an online server asks the vendor for a fresh file (the first at
/// once) and then sends it the usage since its last report; every server keeps the latest instant its clock showed, so a clock set back is caught
/// after a restart too.
async fn keep_on_premises_current(onprem: OnPremises, refresh_interval: std::time::Duration) {
    let mut refresh = tokio::time::interval(refresh_interval);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = tokio::time::interval(std::time::Duration::from_secs(10));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = refresh.tick(), if onprem.is_online() => {
                match onprem.refresh().await {
                    Ok(_) => {
                        if let Err(e) = onprem.upload_usage().await {
                            tracing::warn!(error = %e, "sending the usage report to the vendor failed; the next one covers its period too");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "refreshing the server license file from the vendor failed; it will be tried again"),
                }
            }
            _ = clock.tick() => {
                if let Err(e) = onprem.persist_clock() {
                    tracing::warn!(error = %e, "keeping the latest time seen failed");
                }
            }
        }
    }
}

/// The Activation service: node-locked activations and validations.
fn activation_routes(deps: &Deps<'_>, served: &mut Served, onprem: Option<&OnPremises>) {
    let Deps { config, stack, store, .. } = deps;
    let activations = activation_use_cases(deps)
        .with_observer(Arc::new(stack.metrics.clone()))
        // Validations read licenses and live activations from a cache that follows the store's
        // change feed (activations changed by any process are reported too).
        .with_validation_cache(Arc::new(ValidationCache::following(store.license_feed())));
    served.background.push(tokio::spawn(cull_silent_machines(activations.clone(), config.cull_interval)));
    // WatchLicense streams end when the server drains.
    let api = ActivationApi::new(activations, config.watch_poll).with_drain(stack.drain.clone());
    serve_gated(served, api.into_server(config.max_message_bytes), onprem);
}

/// The Seat service: floating seats, their policies and usage, the sweep of expired leases.
fn seat_routes(deps: &Deps<'_>, served: &mut Served, onprem: Option<&OnPremises>) -> anyhow::Result<()> {
    let Deps { config, overrides, stack, store, hasher, .. } = deps;
    let leases = deps.leases.clone().context("the Seat service needs a lease store")?;
    let usage = UsageLog::start(Arc::new(store.clone()), config.usage_queue);
    served.usage_log = Some(usage.clone());
    let seats = Seats::new(
        deps.catalog.clone(),
        leases,
        Arc::new(store.clone()),
        usage,
        deps.credentials.clone(),
        deps.signer.clone(),
        SeatSettings {
            max_ttl: config.max_lease_ttl.as_millis() as i64,
            checkouts_per_license: config.rate_limits.checkout_per_license,
            overdraft_allowed: onprem.is_none(),
            ..SeatSettings::default()
        },
    );
    // Heartbeats and checkins read licenses from a cache that follows the store's change feed:
    // complete at once on SQLite; on PostgreSQL once the listener runs (LISTEN), so changes made
    // by the Account process reach it too.
    let licenses = Arc::new(LicenseCache::following(store.license_feed()));
    let mut seats = seats.with_observer(Arc::new(stack.metrics.clone())).with_license_cache(licenses);
    if let Some(redis) = &deps.redis {
        // Redis fences checkouts by license revision, so they may use the cache too.
        seats = seats.with_license_revisions(Arc::new(redis.clone()));
    }
    stack.metrics.add_source(Arc::new(seats.clone()));
    served.background.push(tokio::spawn(sweep_expired_leases(seats.clone(), config.sweep_interval)));
    // A license's own customer may list its leases and read its usage with a portal session;
    // WaitForSeat streams end when the server drains.
    let sessions = SessionAuth::new(Arc::new(store.clone()), hasher.clone(), overrides.clock.clone());
    let api = SeatApi::new(seats, AdminAuth::new(deps.catalog.clone(), hasher.clone()), sessions)
        .with_drain(stack.drain.clone());
    serve_gated(served, api.into_server(config.max_message_bytes), onprem);
    Ok(())
}

/// The portal's URL on the address it is bound to (`localhost` for every interface).
fn local_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    match addr.ip() {
        ip if ip.is_unspecified() => format!("{scheme}://localhost:{}", addr.port()),
        std::net::IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}", addr.port()),
        ip => format!("{scheme}://{ip}:{}", addr.port()),
    }
}

/// Whether the stores answer, and how busy the SQL pool is, read at each scrape.
struct StoreHealth {
    sql: SqlStore,
    redis: Option<RedisLeaseStore>,
}

#[async_trait::async_trait]
impl GaugeSource for StoreHealth {
    async fn read(&self, out: &mut Vec<Reading>) {
        let sql = match self.sql.dialect() {
            Dialect::Postgres => "postgresql",
            Dialect::Sqlite => "sqlite",
        };
        let up = |ok: bool| if ok { 1.0 } else { 0.0 };
        let ping = tokio::time::timeout(std::time::Duration::from_secs(2), self.sql.ping()).await;
        out.push(Reading::new(Gauge::StoreUp, &[("store", sql)], up(matches!(ping, Ok(Ok(()))))));
        let (idle, in_use) = self.sql.pool_connections();
        out.push(Reading::new(Gauge::DbPoolConnections, &[("store", sql), ("state", "idle")], f64::from(idle)));
        out.push(Reading::new(Gauge::DbPoolConnections, &[("store", sql), ("state", "in_use")], f64::from(in_use)));
        if let Some(redis) = &self.redis {
            let ping = tokio::time::timeout(std::time::Duration::from_secs(2), redis.ping()).await;
            out.push(Reading::new(Gauge::StoreUp, &[("store", "redis")], up(matches!(ping, Ok(Ok(()))))));
        }
    }
}

/// Records expired leases now and then. Seats never wait for it: an expired lease stops
/// counting at its expiry, whether or not the sweep has run.
async fn sweep_expired_leases(seats: Seats, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = seats.sweep().await {
            tracing::warn!(error = %e, "lease sweep failed; it will run again");
        }
    }
}

/// Deactivates machines that missed their license's heartbeat timeout, every `every`. Every
/// Activation replica runs it: the store culls each machine once however many run at once.
async fn cull_silent_machines(activations: Activations, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = activations.cull_silent_machines().await {
            tracing::warn!(error = %e, "culling machines without heartbeats failed; it will run again");
        }
    }
}

/// `LICENSING_MIGRATE=only`: applies the database migrations and returns without serving (the
/// migration job that runs before the services start with `LICENSING_MIGRATE=off`).
pub async fn migrate_only(config: &Config, role: Role) -> anyhow::Result<()> {
    let store = open_sql_store(config, role).await?;
    store.close().await;
    tracing::info!("database migrations applied (LICENSING_MIGRATE=only); exiting");
    Ok(())
}

/// The command line of a server binary: `--help`, `--version`, and every configuration variable
/// as a flag (`LICENSING_LISTEN_ADDR` or `--listen-addr`; see `licensing_runtime::config`).
pub fn command(role: Role) -> clap::Command {
    let portal = role.default_portal_addr().map_or(String::new(), |addr| format!(", the customer portal on {addr}"));
    clap::Command::new(role.binary_name())
        .version(env!("CARGO_PKG_VERSION"))
        .about(role.about())
        .after_help(format!(
            "Every option is also an environment variable, named in brackets; an option given wins.\n\
             Unset, it serves gRPC on {}, metrics on {}{portal}, and keeps its files in ./data.\n\
             The README's Configuration section gives every default.",
            role.default_addr(),
            role.default_metrics_addr(),
        ))
        .args(licensing_runtime::config::server_args())
}

/// `main` of every server binary: the command line (answering `--help` and `--version` without
/// starting anything), then [`run`] with it.
pub async fn main(role: Role) -> anyhow::Result<()> {
    let settings = command(role).get_matches();
    run(role, &settings).await
}

/// Serves as `role`: configuration from `lookup`, telemetry, serve until stopped.
pub async fn run(role: Role, lookup: &dyn Lookup) -> anyhow::Result<()> {
    let config = Config::from_lookup(lookup, role.default_addr(), role.service_name())?;
    let _telemetry = licensing_runtime::telemetry::init(&config)?;
    if config.migrate == Migrate::Only {
        return migrate_only(&config, role).await;
    }
    let app = Application::build(&config, role).await?;
    if let Some(token) = &app.generated_admin_token {
        // Printed once, on purpose, to stdout: only its keyed digest is stored.
        println!("\n  First start: an admin token was created. It is shown only now; keep it safe:\n\n    {token}\n");
    }
    tracing::info!(addr = %app.local_addr(), portal = ?app.portal_addr(), role = ?role, "serving");
    app.run_until_stopped(licensing_runtime::server::shutdown_signal()).await
}
