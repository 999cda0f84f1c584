//! [`SqlStore`]: PostgreSQL or SQLite behind one implementation.

mod activation;
mod catalog;
mod leases;
mod meters;
mod policies;
mod portal;
mod server_usage;
mod trials;
mod usage;

pub use leases::SqlLeaseStore;

use licensing_domain::error::StoreError;
use licensing_domain::store::{LicenseChanged, LicenseFeed, LicenseRevisions};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Which database a [`SqlStore`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL: the production catalog, shared by every service process.
    Postgres,
    /// A SQLite file: the embedded default of the all-in-one server.
    Sqlite,
}

impl Dialect {
    /// Row lock for read-modify-write transactions. SQLite needs none: the embedded store uses a
    /// single connection, so its transactions never interleave.
    fn for_update(self) -> &'static str {
        match self {
            Self::Postgres => " FOR UPDATE",
            Self::Sqlite => "",
        }
    }
}

/// The SQL store. Cheap to clone (pool handles).
#[derive(Clone, Debug)]
pub struct SqlStore {
    /// Every write, and reads inside transactions.
    pool: AnyPool,
    /// Plain reads. On PostgreSQL the same pool; on SQLite read-only connections beside the one
    /// writer (WAL lets them read while it writes), so a license lookup never queues behind a
    /// write transaction.
    readers: AnyPool,
    dialect: Dialect,
    /// Committed license changes made through this store (and, once
    /// [`SqlStore::listen_for_license_changes`] runs, through any process on the database).
    license_events: tokio::sync::broadcast::Sender<LicenseChanged>,
    /// On PostgreSQL, whether [`SqlStore::listen_for_license_changes`] is listening, so every
    /// process's changes are in `license_events`. Kept apart from the events so a cache that
    /// fell behind them (a lagging broadcast drops its oldest events) still knows.
    listening: Option<Arc<tokio::sync::watch::Sender<bool>>>,
    /// Raised after each committed license change, when leases are in a store that fences
    /// checkouts by license revision ([`SqlStore::raise_license_revisions_in`]).
    revisions: RevisionsHook,
}

/// The [`LicenseRevisions`] this store raises, set once for every clone of the store.
#[derive(Clone, Default)]
struct RevisionsHook(Arc<std::sync::OnceLock<Arc<dyn LicenseRevisions>>>);

impl std::fmt::Debug for RevisionsHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "RevisionsHook(set)" } else { "RevisionsHook(unset)" })
    }
}

/// The PostgreSQL NOTIFY channel of committed license changes (payload: the license ID).
const LICENSE_CHANNEL: &str = "licensing_license_changed";

/// Events a slow subscriber may fall behind by before it is told it lagged.
const LICENSE_EVENTS_BUFFER: usize = 1024;

/// Read-only connections of the embedded SQLite store.
const SQLITE_READERS: u32 = 4;

/// A pooled PostgreSQL connection idle this long is pinged before use. sqlx pings every
/// connection when it goes back to the pool, so one used moments ago is known to be alive; the
/// default (a ping on every acquire) cost a round trip per query.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

/// Settings for connecting; the defaults suit a service process.
#[derive(Debug, Clone)]
pub struct SqlOptions {
    /// Most PostgreSQL connections the pool opens (a SQLite store has one writer and `SQLITE_READERS` readers).
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before the store reports Unavailable.
    pub acquire_timeout: Duration,
    /// Apply the migrations when connecting; when false, only check that every migration of this
    /// build was applied (a migration job applies them before the services start).
    pub migrate: bool,
}

impl Default for SqlOptions {
    fn default() -> Self {
        Self { max_connections: 16, acquire_timeout: Duration::from_secs(3), migrate: true }
    }
}

/// The migrations, written in PostgreSQL's dialect; SQLite's are derived from them.
static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// PostgreSQL DDL to SQLite DDL: the only constructs the migrations use that SQLite lacks (an
/// auto-increment key, and the JSON array of an activation's fingerprint as rows).
fn sqlite_dialect(sql: &str) -> String {
    sql.replace("BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT")
        .replace("jsonb_array_elements(CAST(a.fingerprint_json AS JSONB))", "json_each(a.fingerprint_json)")
}

/// The migrations in SQLite's dialect, so both databases follow one schema history.
#[derive(Debug)]
struct SqliteMigrations;

impl sqlx::migrate::MigrationSource<'static> for SqliteMigrations {
    fn resolve(
        self,
    ) -> futures::future::BoxFuture<'static, Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|m| {
                    let sql = std::borrow::Cow::Owned(sqlite_dialect(&m.sql));
                    sqlx::migrate::Migration::new(m.version, m.description.clone(), m.migration_type, sql, m.no_tx)
                })
                .collect())
        })
    }
}

impl SqlStore {
    /// Connects to `postgres://…` and applies the migrations.
    pub async fn connect_postgres(url: &str, options: &SqlOptions) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_WHEN_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect(url)
            .await
            .map_err(map_err)?;
        let store = Self {
            readers: pool.clone(),
            pool,
            dialect: Dialect::Postgres,
            license_events: tokio::sync::broadcast::channel(LICENSE_EVENTS_BUFFER).0,
            listening: Some(Arc::new(tokio::sync::watch::channel(false).0)),
            revisions: RevisionsHook::default(),
        };
        if options.migrate {
            MIGRATIONS
                .run(&store.pool)
                .await
                .map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        } else {
            store.require_migrated().await?;
        }
        Ok(store)
    }

    /// Fails unless every migration of this build was applied to the PostgreSQL database (newer
    /// ones, from a later build, are fine: they only add to the schema).
    async fn require_migrated(&self) -> Result<(), StoreError> {
        let applied: Vec<i64> = match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&self.pool)
            .await
        {
            Ok(applied) => applied,
            // No migration ever ran here.
            Err(e) if e.to_string().contains("does not exist") => vec![],
            Err(e) => return Err(map_err(e)),
        };
        let missing: Vec<String> = MIGRATIONS
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .map(|m| format!("{} {}", m.version, m.description))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "the database schema lacks {} migration(s) of this build ({}): run the migrations first",
            missing.len(),
            missing.join(", ")
        )))
    }

    /// Opens (creating it if missing) the SQLite file at `path` and applies the migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create data directory {}: {e}", dir.display())))?;
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        // One connection: SQLite has one writer anyway, and a single connection makes every
        // transaction atomic without SQLITE_BUSY retries. A file connection cannot drop, so no
        // ping before use (each is a hand-off to the connection's worker thread).
        let pool = AnyPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(map_err)?;
        let migrator = sqlx::migrate::Migrator::new(SqliteMigrations)
            .await
            .map_err(|e| StoreError::Other(format!("migrations: {e}")))?;
        migrator.run(&pool).await.map_err(|e| StoreError::Unavailable(format!("migrations failed: {e}")))?;
        let readers = AnyPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(SQLITE_READERS)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute("PRAGMA query_only = ON").await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(map_err)?;
        Ok(Self {
            pool,
            readers,
            dialect: Dialect::Sqlite,
            license_events: tokio::sync::broadcast::channel(LICENSE_EVENTS_BUFFER).0,
            listening: None,
            revisions: RevisionsHook::default(),
        })
    }

    /// Which database this store talks to.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Committed changes to licenses and their activations, for caches. On SQLite this process
    /// is the only writer, so the feed is complete from the start; on PostgreSQL other processes
    /// write too, and only [`Self::listen_for_license_changes`] makes it complete.
    pub fn license_feed(&self) -> LicenseFeed {
        LicenseFeed {
            changes: self.license_events.subscribe(),
            listening: self.listening.as_ref().map(|listening| listening.subscribe()),
        }
    }

    /// Inside a transaction that changes `license_id`: on PostgreSQL, a NOTIFY that other
    /// processes receive when (and only if) the transaction commits.
    pub(crate) async fn notify_license_change(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        license_id: &str,
    ) -> Result<(), StoreError> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(LICENSE_CHANNEL)
                .bind(license_id)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    /// From now on (for every clone of this store), each committed license change raises the
    /// license's revision in `revisions` before the call that made it returns, so checkouts
    /// decided on a license cached before the change are refused. Set once; later calls are
    /// ignored.
    pub fn raise_license_revisions_in(&self, revisions: Arc<dyn LicenseRevisions>) {
        let _ = self.revisions.0.set(revisions);
    }

    /// After the commit of a change to `license_id`: raises its revision and tells this
    /// process's subscribers.
    pub(crate) async fn license_changed(&self, license_id: &str) {
        if let Some(revisions) = self.revisions.0.get() {
            // The change is committed either way. Caches still hear of it (in this process at
            // once, in others by NOTIFY); only the fence against a checkout decided on the old
            // license in the meantime is missing, so say so.
            if let Err(e) = revisions.raise(license_id).await {
                tracing::warn!(license_id, error = %e, "could not raise the license's revision in the lease store; Seat services may decide checkouts on the old license until they hear of the change");
            }
        }
        self.tell_subscribers(license_id);
    }

    /// After the commit of a change to a license or to its activations: tells this process's
    /// subscribers at once (other processes hear of it by the NOTIFY sent at commit). Alone, for
    /// activations, it raises no revision in the lease store: no checkout reads activations.
    pub(crate) fn tell_subscribers(&self, license_id: &str) {
        // No subscriber is not an error.
        let _ = self.license_events.send(LicenseChanged(license_id.to_owned()));
    }

    /// Follows every process's license changes on PostgreSQL (LISTEN) into
    /// [`Self::license_feed`]: listening once it listens, a change per commit, not listening
    /// when the connection drops (then it reconnects every second). Runs until aborted.
    pub fn listen_for_license_changes(&self, url: &str) -> tokio::task::JoinHandle<()> {
        let events = self.license_events.clone();
        let listening = self.listening.clone();
        let set_listening = move |now: bool| {
            if let Some(listening) = &listening {
                listening.send_replace(now);
            }
        };
        let url = url.to_owned();
        tokio::spawn(async move {
            let mut was_listening = false;
            loop {
                if let Ok(mut listener) = sqlx::postgres::PgListener::connect(&url).await {
                    if listener.listen(LICENSE_CHANNEL).await.is_ok() {
                        set_listening(true);
                        was_listening = true;
                        // `Ok(None)`: the connection was lost (notifications may have been missed).
                        while let Ok(Some(notification)) = listener.try_recv().await {
                            let _ = events.send(LicenseChanged(notification.payload().to_owned()));
                        }
                    }
                }
                if std::mem::take(&mut was_listening) {
                    tracing::warn!("lost the PostgreSQL LISTEN connection for license changes; license caches answer nothing until it is back");
                }
                set_listening(false);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Whether the database answers (for readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    /// Connections of the write pool: (idle, in use); for metrics.
    pub fn pool_connections(&self) -> (u32, u32) {
        let size = self.pool.size();
        let idle = self.pool.num_idle() as u32;
        (idle, size.saturating_sub(idle))
    }

    /// Records the marker `name` if it is new; returns whether it was already there.
    pub async fn mark(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("INSERT INTO markers (name, set_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 0)
    }

    /// The row of `markers` that keeps the Redis lease store's [`ExpiryHorizon`].
    const LEASE_HORIZON: &'static str = "redis_lease_expiry_horizon";

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
        self.readers.close().await;
    }
}

/// Connection faults become Unavailable (the caller may retry); constraint violations become
/// AlreadyExists or Conflict; anything else is a bug.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    use sqlx::error::ErrorKind;
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation => StoreError::AlreadyExists(db.message().to_string()),
            ErrorKind::ForeignKeyViolation | ErrorKind::CheckViolation | ErrorKind::NotNullViolation => {
                StoreError::Conflict(db.message().to_string())
            }
            _ => {
                // PostgreSQL class 08 (connection), 57P0x (shutdown), 53 (resources) are
                // transient; SQLite BUSY/LOCKED too.
                let code = db.code().unwrap_or_default();
                // 22021 character_not_in_repertoire (a NUL), 22P05 untranslatable_character.
                if code == "22021" || code == "22P05" {
                    return StoreError::UnstorableText(db.message().to_string());
                }
                if code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || code == "5"
                    || code == "6"
                {
                    StoreError::Unavailable(db.message().to_string())
                } else {
                    StoreError::Other(db.message().to_string())
                }
            }
        },
        _ => StoreError::Other(e.to_string()),
    }
}

pub(crate) fn get_i64(row: &AnyRow, col: &str) -> Result<i64, StoreError> {
    row.try_get::<i64, _>(col).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(crate) fn get_opt_i64(row: &AnyRow, col: &str) -> Result<Option<i64>, StoreError> {
    row.try_get::<Option<i64>, _>(col).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(crate) fn get_str(row: &AnyRow, col: &str) -> Result<String, StoreError> {
    row.try_get::<String, _>(col).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(crate) fn get_opt_str(row: &AnyRow, col: &str) -> Result<Option<String>, StoreError> {
    row.try_get::<Option<String>, _>(col).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(crate) fn get_i32(row: &AnyRow, col: &str) -> Result<i32, StoreError> {
    let v = get_i64(row, col)?;
    i32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col}: {v} out of range")))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(col: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializing plain data to JSON does not fail")
}

/// Page size within bounds, as an SQL LIMIT.
pub(crate) fn limit(page: &licensing_domain::model::Page) -> i64 {
    use licensing_domain::model::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
    i64::from(if page.limit == 0 { DEFAULT_PAGE_SIZE } else { page.limit.min(MAX_PAGE_SIZE) })
}

/// The Redis lease store's horizon, in the `markers` table: only ever raised, by any process.
#[async_trait::async_trait]
impl licensing_domain::store::ExpiryHorizon for SqlStore {
    async fn raise(&self, at_least: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO markers (name, set_at) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE \
             SET set_at = CASE WHEN markers.set_at < $2 THEN $2 ELSE markers.set_at END RETURNING set_at",
        )
        .bind(Self::LEASE_HORIZON)
        .bind(at_least)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        get_i64(&row, "set_at")
    }

    async fn read(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT set_at FROM markers WHERE name = $1")
            .bind(Self::LEASE_HORIZON)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|row| get_i64(&row, "set_at")).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_migrations_are_the_postgres_ones_in_sqlite_dialect() {
        assert!(MIGRATIONS.iter().count() >= 4);
        for m in MIGRATIONS.iter() {
            let sqlite = sqlite_dialect(&m.sql);
            assert!(!sqlite.contains("SERIAL"), "{}: SQLite has no SERIAL", m.description);
            assert!(!sqlite.contains("jsonb"), "{}: SQLite has no jsonb", m.description);
        }
    }
}
