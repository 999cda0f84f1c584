//! [`LeaseStore`] on Redis: one sorted set per license pool scored by expiry, driven by Lua
//! scripts that take "now" from `redis.call('TIME')`, so one clock judges expiry. All keys of a
//! license share the hash tag `{<license id>}`, so a pool would sit in one cluster slot; but the
//! granting scripts also read the global `leases:epoch` key, so Redis Cluster is not supported
//! yet (a cluster refuses such a script: CROSSSLOT; see the README).
//!
//! The scripts are files in `services/store/lua/` (loaded with `include_str!`); `prelude.lua`
//! names every key and packed field, and each script names its arguments.
//!
//! Keys of license L:
//! - `lease:{L}:z`: ZSET lease ID -> expiry (ms)
//! - `lease:{L}:d`: HASH lease ID -> packed lease (its fields are named in `lua/prelude.lua`)
//! - `lease:{L}:c`: HASH holder (client instance ID, user, host) -> lease ID (reconnects renew,
//!   not double count; the same ID from another user or host is another client)
//! - `lease:{L}:u`: seats in use (sum of the costs of open seat groups)
//! - `lease:{L}:f`: fencing counter
//! - `lease:{L}:x`: LIST of expired leases not yet recorded by the sweep, and `lease:{L}:xi` the
//!   HASH of their IDs (a heartbeat on one answers "expired", as the SQL store does)
//! - `lease:{L}:g`: HASH seat group -> packed group (processes sharing it, and its charge), for
//!   seats opened with a share key only: a lease without one holds a seat of its own, whose
//!   charge its packed lease already records, so it writes no group (memory: most leases)
//! - `lease:{L}:s`: HASH share key -> the seat group new sharers join
//! - `lease:{L}:b`: HASH reservation -> seats held under it
//! - `lease:{L}:h`: HASH principal (`u:…`, `h:…`, `g:…`) -> seats held, for caps
//! - `lease:{L}:l`: HASH user, host and feature -> lingering lease
//! - `lease:{L}:r:<lease>`: revocation tombstone (expires by itself)
//! - `lease:{L}:v`: the license's revision ([`LicenseRevisions`]), raised after every committed
//!   change to the license; a checkout decided on an older one is refused. Missing means 0.
//!
//! Plus `leases:sweep`, a ZSET license -> earliest expiry, so the sweep visits only pools
//! with something expired (it is an index for the sweep, not part of any seat decision).
//!
//! And `leases:epoch`, the store's recovery state: the time (ms) until which new seats are held
//! back, 0 when none are. It is written once and never expires, so when it is missing Redis lost
//! its data (restarted empty, or failed over to a replica that lagged). The scripts that grant
//! seats refuse to run without it; the store then opens a recovery period one maximum lease TTL
//! long, in which no new seat is handed out (every forgotten lease may still be held) and
//! holders put their leases back by heartbeat with their signed lease token
//! ([`LeaseStore::reestablish`]). Each granting script reads the epoch key itself, so the check
//! is atomic with the decision on one Redis server; on Redis Cluster it sits on one shard, so
//! losing another shard alone goes unnoticed (the README says so).

use async_trait::async_trait;
use licensing_domain::clock::{Clock as _, Millis, SystemClock};
use licensing_domain::error::StoreError;
use licensing_domain::model::{Lease, Released};
use licensing_domain::seat_policy::SeatDenial;
use licensing_domain::store::*;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Redis settings this store is sized for, as `(name, value)`. A packed lease is about 90 to
/// 130 bytes, over Redis's default `hash-max-listpack-value` of 64, which would turn every pool's
/// lease hash into a hash table (about 85 bytes more a lease). docker-compose passes these to
/// `redis-server`; the Seat service warns at start when its Redis has lower values.
pub const RECOMMENDED_CONFIG: &[(&str, i64)] = &[("hash-max-listpack-value", 256)];

const SWEEP_INDEX: &str = "leases:sweep";
const EPOCH: &str = "leases:epoch";
/// How long a revocation is remembered, so the revoked holder hears "revoked", not "unknown".
const TOMBSTONE_MS: i64 = 24 * 3_600_000;
/// Separates packed fields; names are validated free of control characters, so it cannot
/// appear in them.
const SEP: char = '\u{1f}';
/// Separates principal keys inside one field.
const LIST_SEP: char = '\u{1e}';

/// The Lua scripts, in `services/store/lua/`: each runs after the shared prelude, which names
/// the keys, the packed fields and `now`; each script names its own arguments.
mod lua {
    pub(crate) const PRELUDE: &str = include_str!("../lua/prelude.lua");
    pub(crate) const CHECKOUT: &str = include_str!("../lua/checkout.lua");
    pub(crate) const HEARTBEAT: &str = include_str!("../lua/heartbeat.lua");
    pub(crate) const CHECKIN: &str = include_str!("../lua/checkin.lua");
    pub(crate) const REVOKE: &str = include_str!("../lua/revoke.lua");
    pub(crate) const LIST: &str = include_str!("../lua/list.lua");
    pub(crate) const DRAIN_EXPIRED: &str = include_str!("../lua/drain_expired.lua");
    pub(crate) const REESTABLISH: &str = include_str!("../lua/reestablish.lua");
    pub(crate) const NOW: &str = include_str!("../lua/now.lua");
}

/// A script's arguments by the names its `named(ARGV, {…})` declares, in that order. Only the
/// values are sent; the names keep the Rust side and the script in step (a test compares them).
type NamedArgs = Vec<(&'static str, String)>;

/// [`LeaseStore`] on Redis: each decision one Lua script, by Redis's clock; also the license
/// revisions ([`LicenseRevisions`]) that fence checkouts decided on cached licenses.
#[derive(Clone)]
pub struct RedisLeaseStore {
    conn: ConnectionManager,
    checkout: Script,
    heartbeat: Script,
    checkin: Script,
    revoke: Script,
    list: Script,
    drain: Script,
    reestablish: Script,
    now: Script,
    clock: Arc<RedisClock>,
    /// How long new seats are held back after a loss when no [`ExpiryHorizon`] was recorded:
    /// the longest a lease lives unheartbeated.
    recovery_window_ms: Millis,
    /// The durable record of the latest expiry any holder was told, which bounds a recovery.
    horizon: Option<Arc<dyn ExpiryHorizon>>,
    /// The horizon as this process last saw it: an expiry before it needs no write.
    horizon_seen: Arc<AtomicI64>,
}

/// Redis's clock without a round trip per call: local time plus an offset measured again when
/// older than [`CLOCK_RECHECK_MS`]. Seat decisions never use it (the scripts read `TIME`); it
/// serves the service's checks of license dates and the stamps of usage events.
#[derive(Debug, Default)]
struct RedisClock {
    offset_ms: AtomicI64,
    /// Local time of the last measurement; 0 before the first.
    measured_at: AtomicI64,
}

const CLOCK_RECHECK_MS: i64 = 5_000;

/// How much earlier than a new lease's expiry (as the service guesses it) a checkout indexes its
/// license for the sweep: more than any error of the measured clock offset.
const SWEEP_INDEX_LEAD_MS: i64 = 1_000;

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", lua::PRELUDE))
}

/// Connection faults and timeouts are Unavailable: the caller may retry, and the connection
/// manager reconnects by itself.
fn map_err(e: redis::RedisError) -> StoreError {
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        StoreError::Unavailable(format!("Redis: {e}"))
    } else {
        StoreError::Other(format!("Redis: {e}"))
    }
}

fn parse_err(e: redis::ParsingError) -> StoreError {
    StoreError::Corrupt(format!("Redis reply: {e}"))
}

/// The checkout script's named arguments, then its variable tail: the reservations as
/// (key, seats, candidate) triples after their count, the caps as (key, max) pairs after theirs,
/// and last the license revision ('' when the license was read fresh).
fn checkout_args(c: &CheckoutCommand) -> (NamedArgs, Vec<String>) {
    let named = vec![
        ("lease_id", c.lease_id.clone()),
        ("client", c.client_instance_id.clone()),
        ("user", c.user.clone()),
        ("host", c.host.clone()),
        ("feature", c.feature.clone()),
        ("ttl_ms", c.ttl_ms.to_string()),
        ("cost", c.cost.to_string()),
        ("seats", c.seats.to_string()),
        ("overdraft", c.limits.overdraft.to_string()),
        ("queue_blocked", i32::from(c.queue_blocked).to_string()),
        ("borrowed", i32::from(c.borrowed).to_string()),
        ("share_key", c.share_key.clone().unwrap_or_default()),
        ("max_processes", c.max_processes.to_string()),
        ("principals", c.limits.principals.join(&LIST_SEP.to_string())),
        ("not_after", c.not_after.map(|t| t.to_string()).unwrap_or_default()),
        ("reservations", c.limits.reservations.len().to_string()),
    ];
    let mut tail = vec![];
    for (key, seats) in &c.limits.reservations {
        tail.extend([key.clone(), seats.to_string(), i32::from(c.limits.candidates.contains(key)).to_string()]);
    }
    tail.push(c.limits.caps.len().to_string());
    for (key, max) in &c.limits.caps {
        tail.extend([key.clone(), max.to_string()]);
    }
    tail.push(c.license_revision.map(|r| r.to_string()).unwrap_or_default());
    (named, tail)
}

/// Every argument of the checkout script, in order.
fn checkout_argv(c: &CheckoutCommand) -> Vec<String> {
    let (named, tail) = checkout_args(c);
    named.into_iter().map(|(_, v)| v).chain(tail).collect()
}

fn heartbeat_args(lease_id: &str, not_after: Option<Millis>) -> NamedArgs {
    vec![("lease_id", lease_id.to_owned()), ("not_after", not_after.map(|t| t.to_string()).unwrap_or_default())]
}

fn checkin_args(lease_id: &str, linger_ms: i64) -> NamedArgs {
    vec![("lease_id", lease_id.to_owned()), ("linger_ms", linger_ms.to_string())]
}

fn revoke_args(lease_id: &str) -> NamedArgs {
    vec![("lease_id", lease_id.to_owned()), ("tombstone_ms", TOMBSTONE_MS.to_string())]
}

fn drain_args(max: usize) -> NamedArgs {
    vec![("max", max.to_string())]
}

fn reestablish_args(l: &LostLease) -> NamedArgs {
    vec![
        ("lease_id", l.lease_id.clone()),
        ("client", l.client_instance_id.clone()),
        ("user", l.user.clone()),
        ("host", l.host.clone()),
        ("feature", l.feature.clone()),
        ("ttl_ms", l.ttl_ms.to_string()),
        ("cost", l.seats_held.max(1).to_string()),
        ("seats", l.seats.to_string()),
        ("fence", l.fence.to_string()),
    ]
}

/// The keys of a license's pool by the names the prelude's `named(KEYS, {…})` declares, in its
/// order: the pool's own, then the revocation tombstone of `lease_id` (a placeholder when the
/// script needs none), the epoch and the license's revision.
fn named_keys(license_id: &str, lease_id: &str) -> Vec<(&'static str, String)> {
    let p = format!("lease:{{{license_id}}}");
    [
        ("expiries", "z"),
        ("leases", "d"),
        ("clients", "c"),
        ("in_use", "u"),
        ("expired", "x"),
        ("fence", "f"),
        ("groups", "g"),
        ("shared", "s"),
        ("reserved", "b"),
        ("held_by", "h"),
        ("lingering", "l"),
        ("expired_ids", "xi"),
    ]
    .into_iter()
    .map(|(name, suffix)| (name, format!("{p}:{suffix}")))
    .chain([
        ("tombstone", format!("{p}:r:{lease_id}")),
        ("epoch", EPOCH.to_owned()),
        ("revision", revision_key(license_id)),
    ])
    .collect()
}

fn keys(license_id: &str, lease_id: &str) -> Vec<String> {
    named_keys(license_id, lease_id).into_iter().map(|(_, key)| key).collect()
}

fn revision_key(license_id: &str) -> String {
    format!("lease:{{{license_id}}}:v")
}

fn invoke<'a>(script: &'a Script, license_id: &str, lease_id: &str) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    for key in keys(license_id, lease_id) {
        invocation.key(key);
    }
    invocation
}

/// [`invoke`] with the script's named arguments.
fn invoke_with<'a>(
    script: &'a Script,
    license_id: &str,
    lease_id: &str,
    args: NamedArgs,
) -> redis::ScriptInvocation<'a> {
    let mut invocation = invoke(script, license_id, lease_id);
    for (_, value) in args {
        invocation.arg(value);
    }
    invocation
}

/// A packed lease (13 fields) back into a lease.
fn unpack(
    license_id: &str,
    lease_id: &str,
    packed: &str,
    expires_at: Millis,
    members: i32,
) -> Result<Lease, StoreError> {
    let parts: Vec<&str> = packed.split(SEP).collect();
    unpack_fields(license_id, lease_id, &parts, expires_at, members)
}

fn unpack_fields(
    license_id: &str,
    lease_id: &str,
    parts: &[&str],
    expires_at: Millis,
    members: i32,
) -> Result<Lease, StoreError> {
    let bad = || StoreError::Corrupt(format!("lease {lease_id}: {}", parts.join("|")));
    if parts.len() != 13 {
        return Err(bad());
    }
    let ttl_ms: i64 = parts[7].parse().map_err(|_| bad())?;
    let flags = parts[9];
    let lingering = flags.contains('l');
    Ok(Lease {
        lease_id: lease_id.to_owned(),
        license_id: license_id.to_owned(),
        fence: parts[0].parse().map_err(|_| bad())?,
        client_instance_id: parts[1].to_owned(),
        user: parts[2].to_owned(),
        host: parts[3].to_owned(),
        feature: parts[4].to_owned(),
        checked_out_at: parts[5].parse().map_err(|_| bad())?,
        seats_held: parts[6].parse().map_err(|_| bad())?,
        ttl_ms,
        expires_at,
        last_heartbeat_at: if lingering { expires_at } else { expires_at - ttl_ms },
        // Empty for the lease's own seat.
        group_id: if parts[8].is_empty() { lease_id.to_owned() } else { parts[8].to_owned() },
        shared_processes: members.max(1),
        borrowed: flags.contains('b'),
        overdraft: flags.contains('o'),
        lingering,
        bucket: parts[10].to_owned(),
        principals: parts[11].split(LIST_SEP).filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        share_key: parts[12].to_owned(),
    })
}

fn int(v: &redis::Value) -> Result<i64, StoreError> {
    redis::from_redis_value_ref(v).map_err(parse_err)
}

fn text(v: &redis::Value) -> Result<String, StoreError> {
    redis::from_redis_value_ref(v).map_err(parse_err)
}

fn denial(code: &str, detail: &str) -> SeatDenial {
    match code {
        "CAP" => {
            let (principal, max) = detail.split_once(SEP).unwrap_or((detail, "0"));
            SeatDenial::CapReached { principal: principal.to_owned(), max_seats: max.parse().unwrap_or(0) }
        }
        "RESERVED" => SeatDenial::Reserved,
        "QUEUED" => SeatDenial::Queued,
        _ => SeatDenial::Full,
    }
}

/// The reply of a granting script when the epoch key is missing.
const EPOCH_MISSING: i64 = -9;
/// The reply of a checkout while new seats are held back: `{-8, until}`.
const RECOVERING: i64 = -8;
/// The reply of a checkout whose license revision is older than the stored one.
const STALE_LICENSE: i64 = -7;

impl RedisLeaseStore {
    /// Connects. It does not touch the epoch: the process that grants seats records it with
    /// [`Self::open_epoch`], and a granting script that finds none opens a recovery period.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        use redis::IntoConnectionInfo as _;
        let info = url.into_connection_info().map_err(|e| StoreError::Unavailable(format!("Redis URL: {e}")))?;
        // Without TCP_NODELAY a script's reply can sit out the peer's delayed ACK (40 ms).
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| StoreError::Unavailable(format!("Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client, config).await.map_err(map_err)?;
        Ok(Self {
            conn,
            checkout: script(lua::CHECKOUT),
            heartbeat: script(lua::HEARTBEAT),
            checkin: script(lua::CHECKIN),
            revoke: script(lua::REVOKE),
            list: script(lua::LIST),
            drain: script(lua::DRAIN_EXPIRED),
            reestablish: script(lua::REESTABLISH),
            now: script(lua::NOW),
            clock: Arc::default(),
            recovery_window_ms: 3_600_000,
            horizon: None,
            horizon_seen: Arc::default(),
        })
    }

    /// Whether Redis answers (for metrics).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(map_err)?;
        Ok(())
    }

    /// The [`RECOMMENDED_CONFIG`] settings this Redis has lower values for, as
    /// `(name, current, recommended)`. Empty when Redis does not allow `CONFIG GET` (managed
    /// services often do not): the store works either way, only its memory differs.
    pub async fn config_shortfalls(&self) -> Vec<(&'static str, i64, i64)> {
        let mut conn = self.conn.clone();
        let mut out = vec![];
        for &(name, recommended) in RECOMMENDED_CONFIG {
            let reply: Result<Vec<String>, _> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(&mut conn).await;
            let current = reply.ok().and_then(|pair| pair.get(1)?.parse::<i64>().ok());
            if let Some(current) = current.filter(|&c| c < recommended) {
                out.push((name, current, recommended));
            }
        }
        out
    }

    /// Sets how long new seats are held back after a loss when no horizon was recorded; it must
    /// be at least the longest lease TTL the Seat service grants.
    pub fn with_recovery_window(mut self, window_ms: Millis) -> Self {
        self.recovery_window_ms = window_ms;
        self
    }

    /// Records in `horizon` (which outlives Redis) every expiry a holder is told before telling
    /// it, so a recovery after a loss lasts only until the latest of them, not a whole
    /// maximum TTL. Borrowed leases are not counted: one lost with Redis is not held back for
    /// (see the README's limits).
    pub fn with_expiry_horizon(mut self, horizon: Arc<dyn ExpiryHorizon>) -> Self {
        self.horizon = Some(horizon);
        self
    }

    /// Makes sure the horizon covers `lease`'s expiry before its holder hears of it. Raised a
    /// heartbeat interval (a third of the TTL) beyond, so a busy pool writes it about once an
    /// interval, not at every heartbeat.
    async fn cover(&self, lease: &Lease) -> Result<(), StoreError> {
        let Some(horizon) = &self.horizon else { return Ok(()) };
        if lease.borrowed || lease.expires_at <= self.horizon_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let raised = horizon.raise(lease.expires_at + (lease.ttl_ms / 3).max(1_000)).await?;
        self.horizon_seen.fetch_max(raised, Ordering::Relaxed);
        Ok(())
    }

    /// Records the epoch at start-up. With `used_before` (this deployment kept leases in Redis
    /// before), a missing epoch means Redis lost them, and a recovery period opens; otherwise a
    /// missing epoch is a fresh Redis. Returns until when new seats are held back (0: not).
    pub async fn open_epoch(&self, used_before: bool) -> Result<Millis, StoreError> {
        if used_before {
            return self.begin_recovery().await;
        }
        let mut conn = self.conn.clone();
        let _: Option<String> =
            redis::cmd("SET").arg(EPOCH).arg(0).arg("NX").query_async(&mut conn).await.map_err(map_err)?;
        self.epoch_until().await
    }

    /// The epoch's value: until when new seats are held back (0 when they are not).
    async fn epoch_until(&self) -> Result<Millis, StoreError> {
        let mut conn = self.conn.clone();
        let value: Option<Millis> = redis::cmd("GET").arg(EPOCH).query_async(&mut conn).await.map_err(map_err)?;
        Ok(value.unwrap_or(0))
    }

    /// Opens a recovery period unless one is already recorded (NX: the first process to notice
    /// the loss sets it, the others adopt it). It lasts until the recorded horizon (no holder
    /// was told of a later expiry), or a whole recovery window when none was recorded.
    async fn begin_recovery(&self) -> Result<Millis, StoreError> {
        let now = self.now().await?;
        let recorded = match &self.horizon {
            Some(horizon) => horizon.read().await?,
            None => None,
        };
        let until = recorded.map_or(now + self.recovery_window_ms, |h| h.max(now));
        let mut conn = self.conn.clone();
        // 0 when every lease a holder may still believe in has already expired.
        let epoch = if until > now { until } else { 0 };
        let set: Option<String> =
            redis::cmd("SET").arg(EPOCH).arg(epoch).arg("NX").query_async(&mut conn).await.map_err(map_err)?;
        if set.is_some() && epoch > 0 {
            tracing::warn!(
                until = %licensing_domain::clock::rfc3339(until),
                bounded_by = if recorded.is_some() { "the latest expiry a holder was told" } else { "LICENSING_MAX_LEASE_TTL_MS (no expiry horizon recorded yet)" },
                "Redis lost its leases (no epoch): new seats are held back until every forgotten lease has expired; holders re-establish theirs by heartbeat. An administrator can end this early (SeatService/EndLeaseStoreRecovery)"
            );
        } else if set.is_some() {
            tracing::warn!(
                "Redis lost its leases (no epoch), but every lease it held had expired: nothing is held back"
            );
        }
        self.epoch_until().await
    }

    /// Runs a granting script; when Redis lost the epoch, opens a recovery period and runs it again.
    async fn invoke_granting(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Vec<redis::Value>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await.map_err(map_err)?;
        if reply.first().map(int).transpose()? != Some(EPOCH_MISSING) {
            return Ok(reply);
        }
        self.begin_recovery().await?;
        let reply: Vec<redis::Value> = invocation.invoke_async(&mut conn).await.map_err(map_err)?;
        if reply.first().map(int).transpose()? == Some(EPOCH_MISSING) {
            return Err(StoreError::Unavailable("Redis keeps losing its epoch key; is it evicting keys?".into()));
        }
        Ok(reply)
    }

    /// A checkout in calls of its own: the script (loading it, or opening a recovery, as
    /// needed), then the sweep index at the lease's real expiry.
    async fn checkout_unpipelined(
        &self,
        c: &CheckoutCommand,
        args: &[String],
    ) -> Result<Vec<redis::Value>, StoreError> {
        let mut invocation = invoke(&self.checkout, &c.license_id, "");
        for arg in args {
            invocation.arg(arg);
        }
        let reply = self.invoke_granting(&invocation).await?;
        if int(&reply[0])? > 0 {
            self.index_for_sweep(&c.license_id, int(&reply[3])?).await;
        }
        Ok(reply)
    }

    async fn index_for_sweep(&self, license_id: &str, expires_at: Millis) {
        // Best effort: the index only tells the sweep where to look; seat decisions never use it.
        let mut conn = self.conn.clone();
        // LT adds a missing license and only ever moves an indexed one earlier.
        let _: Result<i64, _> =
            redis::cmd("ZADD").arg(SWEEP_INDEX).arg("LT").arg(expires_at).arg(license_id).query_async(&mut conn).await;
    }
}

#[async_trait]
impl LicenseRevisions for RedisLeaseStore {
    async fn current(&self, license_id: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        let revision: Option<u64> =
            redis::cmd("GET").arg(revision_key(license_id)).query_async(&mut conn).await.map_err(map_err)?;
        Ok(revision.unwrap_or(0))
    }

    async fn raise(&self, license_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: u64 = redis::cmd("INCR").arg(revision_key(license_id)).query_async(&mut conn).await.map_err(map_err)?;
        Ok(())
    }
}

#[async_trait]
impl LeaseStore for RedisLeaseStore {
    #[tracing::instrument(name = "store.checkout", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn checkout(&self, c: &CheckoutCommand) -> Result<CheckoutOutcome, StoreError> {
        let args = checkout_argv(c);
        // The sweep index goes in the same round trip, after the script. Its expiry is a guess
        // (the script reads TIME), made early so the sweep comes too soon rather than too late:
        // early, it finds nothing and moves the license to its real earliest expiry.
        let expiry_guess = self.now().await? + c.ttl_ms - SWEEP_INDEX_LEAD_MS;
        let keys = keys(&c.license_id, "");
        let mut pipe = redis::pipe();
        pipe.cmd("EVALSHA").arg(self.checkout.get_hash()).arg(keys.len()).arg(&keys).arg(&args);
        pipe.cmd("ZADD").arg(SWEEP_INDEX).arg("LT").arg(expiry_guess).arg(&c.license_id).ignore();
        let mut conn = self.conn.clone();
        let pipelined: Result<(Vec<redis::Value>,), _> = pipe.query_async(&mut conn).await;
        let reply = match pipelined {
            Ok((reply,)) if reply.first().map(int).transpose()? != Some(EPOCH_MISSING) => reply,
            // The script is not loaded (Redis restarted or flushed its scripts), or the epoch is
            // gone: the one-call path loads it or opens the recovery, then indexes the grant.
            Ok(_) => self.checkout_unpipelined(c, &args).await?,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.checkout_unpipelined(c, &args).await?
            }
            Err(e) => return Err(map_err(e)),
        };
        match int(&reply[0])? {
            RECOVERING => Ok(CheckoutOutcome::Recovering { until: int(&reply[1])? }),
            STALE_LICENSE => Ok(CheckoutOutcome::StaleLicense),
            0 => {
                let earliest = int(&reply[2])?;
                Ok(CheckoutOutcome::Denied {
                    denial: denial(&text(&reply[3])?, &text(&reply[4])?),
                    in_use: int(&reply[1])? as i32,
                    earliest_expiry: (earliest >= 0).then_some(earliest),
                })
            }
            kind => {
                let lease_id = text(&reply[1])?;
                let expires_at = int(&reply[3])?;
                let lease = unpack(&c.license_id, &lease_id, &text(&reply[2])?, expires_at, int(&reply[6])? as i32)?;
                self.cover(&lease).await?;
                Ok(CheckoutOutcome::Granted {
                    lease,
                    renewed: kind == 1,
                    in_use: int(&reply[4])? as i32,
                    seats_taken: int(&reply[5])? as i32,
                })
            }
        }
    }

    #[tracing::instrument(name = "store.heartbeat", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn heartbeat(
        &self,
        license_id: &str,
        lease_id: &str,
        not_after: Option<Millis>,
    ) -> Result<HeartbeatOutcome, StoreError> {
        let invocation = invoke_with(&self.heartbeat, license_id, lease_id, heartbeat_args(lease_id, not_after));
        let reply = self.invoke_granting(&invocation).await?;
        Ok(match int(&reply[0])? {
            1 => {
                // No index update as a rule: a heartbeat moves an expiry later, and the index may
                // hold an earlier time (the sweep then finds nothing and moves it on). A capped
                // one may have moved it earlier (the license's end of use came closer): indexed.
                let expires_at = int(&reply[3])?;
                if not_after == Some(expires_at) {
                    self.index_for_sweep(license_id, expires_at).await;
                }
                let lease = unpack(license_id, lease_id, &text(&reply[2])?, expires_at, int(&reply[4])? as i32)?;
                self.cover(&lease).await?;
                HeartbeatOutcome::Extended(lease)
            }
            -2 => HeartbeatOutcome::Revoked,
            -3 => HeartbeatOutcome::Expired,
            _ => HeartbeatOutcome::Unknown,
        })
    }

    #[tracing::instrument(name = "store.checkin", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn checkin(&self, license_id: &str, lease_id: &str, linger_ms: i64) -> Result<Option<Released>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> =
            invoke_with(&self.checkin, license_id, lease_id, checkin_args(lease_id, linger_ms))
                .invoke_async(&mut conn)
                .await
                .map_err(map_err)?;
        if int(&reply[0])? != 1 {
            return Ok(None);
        }
        let expires_at = int(&reply[2])?;
        let lease = unpack(license_id, lease_id, &text(&reply[1])?, expires_at, int(&reply[4])? as i32)?;
        if lease.lingering {
            // A lingering seat is still held (for the same user, host and feature).
            self.cover(&lease).await?;
            self.index_for_sweep(license_id, expires_at).await;
        }
        Ok(Some(Released { lease, seats_freed: int(&reply[3])? as i32, at: int(&reply[5])? }))
    }

    #[tracing::instrument(name = "store.revoke", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn revoke(&self, license_id: &str, lease_id: &str) -> Result<Option<(i64, Released)>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> = invoke_with(&self.revoke, license_id, lease_id, revoke_args(lease_id))
            .invoke_async(&mut conn)
            .await
            .map_err(map_err)?;
        if int(&reply[0])? != 1 {
            return Ok(None);
        }
        let at = int(&reply[3])?;
        let lease = unpack(license_id, lease_id, &text(&reply[2])?, at, int(&reply[5])? as i32)?;
        Ok(Some((int(&reply[1])?, Released { lease, seats_freed: int(&reply[4])? as i32, at })))
    }

    #[tracing::instrument(name = "store.list", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn list(&self, license_id: &str) -> Result<Vec<Lease>, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = invoke(&self.list, license_id, "").invoke_async(&mut conn).await.map_err(map_err)?;
        reply[1..]
            .chunks(4)
            .map(|c| {
                let expires: Millis = c[1].parse().map_err(|_| StoreError::Corrupt(format!("expiry {}", c[1])))?;
                unpack(license_id, &c[0], &c[2], expires, c[3].parse().unwrap_or(1))
            })
            .collect()
    }

    #[tracing::instrument(name = "store.licenses_with_leases", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn licenses_with_leases(&self, max: usize) -> Result<Vec<String>, StoreError> {
        if max == 0 {
            return Ok(vec![]);
        }
        let mut conn = self.conn.clone();
        // The sweep index holds every license with a lease (until the sweep finds it empty).
        redis::cmd("ZRANGE").arg(SWEEP_INDEX).arg(0).arg(max as i64 - 1).query_async(&mut conn).await.map_err(map_err)
    }

    #[tracing::instrument(name = "store.sweep_expired", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn sweep_expired(&self, max: usize) -> Result<Vec<Released>, StoreError> {
        let now = self.now().await?;
        let mut conn = self.conn.clone();
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(SWEEP_INDEX)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(max.max(1))
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        let mut out = vec![];
        for license_id in due {
            let reply: Vec<String> = invoke_with(&self.drain, &license_id, "", drain_args(max))
                .invoke_async(&mut conn)
                .await
                .map_err(map_err)?;
            let earliest: i64 = reply[0].parse().unwrap_or(-1);
            for item in &reply[1..] {
                // id, expiry, seats freed, then the packed lease.
                let parts: Vec<&str> = item.split(SEP).collect();
                if parts.len() != 16 {
                    return Err(StoreError::Corrupt(format!("expired lease record of {license_id}")));
                }
                let expires_at = parts[1].parse().unwrap_or(0);
                let lease = unpack_fields(&license_id, parts[0], &parts[3..], expires_at, 1)?;
                out.push(Released { lease, seats_freed: parts[2].parse().unwrap_or(0), at: expires_at });
            }
            if earliest < 0 {
                let _: Result<i64, _> =
                    redis::cmd("ZREM").arg(SWEEP_INDEX).arg(&license_id).query_async(&mut conn).await;
                // A checkout may have landed between the drain and the ZREM (its own ZADD came
                // first): put the license back, so its leases are still recorded when they expire.
                let first: Vec<(String, i64)> = redis::cmd("ZRANGE")
                    .arg(&keys(&license_id, "")[0])
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if let Some((_, expiry)) = first.first() {
                    self.index_for_sweep(&license_id, *expiry).await;
                }
            } else {
                let _: Result<i64, _> =
                    redis::cmd("ZADD").arg(SWEEP_INDEX).arg(earliest).arg(&license_id).query_async(&mut conn).await;
            }
        }
        Ok(out)
    }

    #[tracing::instrument(name = "store.reestablish", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn reestablish(&self, l: &LostLease) -> Result<ReestablishOutcome, StoreError> {
        let invocation = invoke_with(&self.reestablish, &l.license_id, &l.lease_id, reestablish_args(l));
        let reply = self.invoke_granting(&invocation).await?;
        match int(&reply[0])? {
            1 => {
                let expires_at = int(&reply[2])?;
                self.index_for_sweep(&l.license_id, expires_at).await;
                let lease = unpack(&l.license_id, &l.lease_id, &text(&reply[1])?, expires_at, 1)?;
                self.cover(&lease).await?;
                Ok(ReestablishOutcome::Restored(lease))
            }
            // Already back (a retried heartbeat): an ordinary heartbeat extends it.
            2 => match self.heartbeat(&l.license_id, &l.lease_id, None).await? {
                HeartbeatOutcome::Extended(lease) => Ok(ReestablishOutcome::Restored(lease)),
                _ => Ok(ReestablishOutcome::NoSeat),
            },
            -1 => Ok(ReestablishOutcome::NoSeat),
            _ => Ok(ReestablishOutcome::NotRecovering),
        }
    }

    async fn recovering_until(&self) -> Result<Option<Millis>, StoreError> {
        let until = self.epoch_until().await?;
        Ok((until > self.now().await?).then_some(until))
    }

    #[tracing::instrument(name = "store.end_recovery", skip_all, fields(otel.kind = "client", store = "redis"))]
    async fn end_recovery(&self) -> Result<Option<Millis>, StoreError> {
        let mut conn = self.conn.clone();
        // XX: only a recorded epoch; a missing one (a loss nobody has noticed yet) stays missing.
        let before: Option<Millis> =
            redis::cmd("SET").arg(EPOCH).arg(0).arg("XX").arg("GET").query_async(&mut conn).await.map_err(map_err)?;
        let now = self.now().await?;
        Ok(before.filter(|&until| until > now))
    }

    // No span: mostly a read of the clock, on every seat call.
    async fn now(&self) -> Result<Millis, StoreError> {
        let local = SystemClock.now();
        if local - self.clock.measured_at.load(Ordering::Relaxed) < CLOCK_RECHECK_MS {
            return Ok(local + self.clock.offset_ms.load(Ordering::Relaxed));
        }
        let mut conn = self.conn.clone();
        let redis_now: Millis = self.now.invoke_async(&mut conn).await.map_err(map_err)?;
        self.clock.offset_ms.store(redis_now - SystemClock.now(), Ordering::Relaxed);
        self.clock.measured_at.store(local, Ordering::Relaxed);
        Ok(redis_now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use licensing_domain::seat_policy::SeatLimits;

    /// The quoted names of `named(<what>, {…})` in a script, in order (comments skipped).
    fn declared(script: &str, what: &str) -> Vec<String> {
        let start = script.find(&format!("named({what}, {{")).unwrap_or_else(|| panic!("no named({what}, …)"));
        let body = &script[start..];
        let body = &body[..body.find("})").expect("the table ends")];
        body.lines()
            .map(|line| line.split("--").next().unwrap_or(""))
            .flat_map(|code| code.split('\'').skip(1).step_by(2).map(str::to_owned).collect::<Vec<_>>())
            .collect()
    }

    fn names(args: &[(&'static str, String)]) -> Vec<String> {
        args.iter().map(|(name, _)| name.to_string()).collect()
    }

    #[test]
    fn the_keys_sent_are_the_keys_the_prelude_names() {
        assert_eq!(names(&named_keys("lic_X", "lse_Y")), declared(lua::PRELUDE, "KEYS"));
    }

    #[test]
    fn each_script_is_sent_the_arguments_it_names() {
        let command = CheckoutCommand {
            license_id: "lic_X".into(),
            seats: 2,
            lease_id: "lse_Y".into(),
            client_instance_id: "c".into(),
            user: "u".into(),
            host: "h".into(),
            feature: String::new(),
            ttl_ms: 1,
            cost: 1,
            limits: SeatLimits {
                reservations: vec![("g:a".into(), 1)],
                caps: vec![("u:u".into(), 1)],
                ..SeatLimits::default()
            },
            queue_blocked: false,
            share_key: None,
            max_processes: 0,
            borrowed: false,
            license_revision: Some(3),
            not_after: None,
        };
        let (named, tail) = checkout_args(&command);
        assert_eq!(names(&named), declared(lua::CHECKOUT, "ARGV"));
        // The tail the script reads by its cursor: one reservation triple, the cap count and
        // pair, the revision.
        assert_eq!(tail, ["g:a", "1", "0", "1", "u:u", "1", "3"]);
        assert!(lua::CHECKOUT.contains(&format!("local cursor = {}", named.len())));
        assert_eq!(names(&heartbeat_args("l", None)), declared(lua::HEARTBEAT, "ARGV"));
        assert_eq!(names(&checkin_args("l", 0)), declared(lua::CHECKIN, "ARGV"));
        assert_eq!(names(&revoke_args("l")), declared(lua::REVOKE, "ARGV"));
        assert_eq!(names(&drain_args(1)), declared(lua::DRAIN_EXPIRED, "ARGV"));
        let lost = LostLease {
            license_id: "lic_X".into(),
            lease_id: "lse_Y".into(),
            client_instance_id: "c".into(),
            user: "u".into(),
            host: "h".into(),
            feature: String::new(),
            fence: 1,
            seats_held: 1,
            ttl_ms: 1,
            seats: 1,
        };
        assert_eq!(names(&reestablish_args(&lost)), declared(lua::REESTABLISH, "ARGV"));
    }
}
