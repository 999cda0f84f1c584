//! [`LeaseStore`] on SQL, for the embedded default: the same semantics as the Redis store, with
//! the pool row locked for each decision and the server process's clock as the one clock.
//! Persisted, so a restart loses no lease. Calls that arrive together share the trip to the
//! writer: heartbeats and checkins one statement per batch, checkouts one transaction per batch
//! (decided one after another in it, as if each had its own).
//!
//! Seats are decided with [`decide_new_seat`] over the pool's live leases (the Redis store keeps
//! counters instead). Like Redis, every pool decision first moves the pool's expired leases to
//! `expired_leases`, in expiry order, so a seat shared by several leases is freed exactly once,
//! when its last lease goes; the sweep records them from there.

use super::*;
use async_trait::async_trait;
use licensing_domain::clock::{Millis, SharedClock};
use licensing_domain::model::{Lease, Released};
use licensing_domain::seat_policy::{decide_new_seat, PoolUsage};
use licensing_domain::store::*;
use sqlx::{Any, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// [`LeaseStore`] on the SQL database (the embedded default); see the module docs.
#[derive(Clone)]
pub struct SqlLeaseStore {
    sql: SqlStore,
    clock: SharedClock,
    /// Heartbeats on their way to the one writer, extended together.
    heartbeats: Queue<Pending>,
    /// Checkins on their way to the one writer, released together.
    checkins: Queue<Pending>,
    /// Checkouts on their way to the one writer, decided together.
    checkouts: Queue<PendingCheckout>,
}

/// Calls on their way to one of the writer's batch loops, which starts on first use.
type Queue<T> = Arc<OnceLock<mpsc::UnboundedSender<T>>>;

/// Queues the call `call` makes around the sender of its answer, for the batch loop `start`
/// spawns on first use, and waits for the answer.
async fn through_batches<T, R, Loop>(
    queue: &Queue<T>,
    start: impl FnOnce(mpsc::UnboundedReceiver<T>) -> Loop,
    call: impl FnOnce(oneshot::Sender<Result<R, StoreError>>) -> T,
) -> Result<R, StoreError>
where
    Loop: std::future::Future<Output = ()> + Send + 'static,
{
    let sender = queue.get_or_init(|| {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(start(receiver));
        sender
    });
    let (reply, answer) = oneshot::channel();
    let gone = || StoreError::Unavailable("the lease writer stopped".into());
    sender.send(call(reply)).map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// A single-statement lease change that many calls share: the common case of a heartbeat or a
/// checkin, a live lease of its own seat (no share key), not lingering. The rest takes the
/// locked path.
#[derive(Debug, Clone, Copy)]
enum BatchedChange {
    /// A heartbeat: the lease's expiry moves to now + its TTL (not for a borrowed lease, which
    /// lives out its period).
    Extend,
    /// A checkin without lingering: the lease goes, and with it its seat.
    Release,
}

impl BatchedChange {
    /// The statement for `rows`, a list of `($n, $m)` (lease ID, license ID); `$1` is now.
    fn statement(self, rows: &str) -> String {
        let leases = format!(
            "(lease_id, license_id) IN (VALUES {rows}) AND expires_at > $1 AND lingering = 0 AND share_key = ''"
        );
        match self {
            Self::Extend => format!(
                "UPDATE leases SET expires_at = $1 + ttl_ms WHERE {leases} AND borrowed = 0 RETURNING {LEASE_COLUMNS}"
            ),
            Self::Release => format!("DELETE FROM leases WHERE {leases} RETURNING {LEASE_COLUMNS}"),
        }
    }
}

/// A call waiting for its batch: the lease, and where its answer goes (the lease as changed and
/// the time of the change, or `None` when the single statement does not apply to it).
struct Pending {
    license_id: String,
    lease_id: String,
    reply: oneshot::Sender<Result<Option<(Lease, Millis)>, StoreError>>,
}

/// Leases changed by one statement at most (two parameters each).
const BATCH: usize = 64;

/// The calls queued for the writer, up to [`BATCH`], once there is at least one; `None` once the
/// store is gone. Before taking them it lets the tasks that are ready run, so the calls they are
/// about to queue join this batch rather than wait for the next (no wait when none are ready).
async fn next_batch<T>(queue: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let first = queue.recv().await?;
    tokio::task::yield_now().await;
    let mut batch = vec![first];
    while batch.len() < BATCH {
        match queue.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Applies `change` to the calls that arrive while the previous batch is written, each batch in
/// one statement: on SQLite every statement is a hand-off to the one writer's thread, and under
/// load the heartbeats and checkins of many seats queue for it at once. Nothing waits for a
/// batch to fill.
async fn apply_in_batches(
    sql: SqlStore,
    clock: SharedClock,
    change: BatchedChange,
    mut queue: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(batch) = next_batch(&mut queue).await {
        // Padded to a power of two with the last lease again (a repeat matches nothing more), so
        // a connection prepares at most seven statements of each kind, not one per batch size:
        // sqlx keeps 100 prepared statements a connection, and two kinds of 64 sizes would churn.
        let slots = batch.len().next_power_of_two();
        let rows = (0..slots).map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3)).collect::<Vec<_>>();
        let statement = change.statement(&rows.join(", "));
        let now = clock.now();
        let mut query = sqlx::query(&statement).bind(now);
        for i in 0..slots {
            let pending = &batch[i.min(batch.len() - 1)];
            query = query.bind(&pending.lease_id).bind(&pending.license_id);
        }
        let changed = query
            .fetch_all(&sql.pool)
            .await
            .map_err(map_err)
            .and_then(|rows| rows.iter().map(lease_from_row).collect::<Result<Vec<_>, _>>());
        for pending in batch {
            let answer = changed.as_ref().map_err(Clone::clone).map(|leases| {
                let lease =
                    leases.iter().find(|l| l.lease_id == pending.lease_id && l.license_id == pending.license_id);
                lease.map(|l| (l.clone(), now))
            });
            // A caller that gave up is no error: its change was made all the same.
            let _ = pending.reply.send(answer);
        }
    }
}

/// A checkout waiting for its batch, and where its outcome goes.
struct PendingCheckout {
    command: CheckoutCommand,
    reply: oneshot::Sender<Result<CheckoutOutcome, StoreError>>,
}

/// Decides the checkouts that arrive while the previous batch is written, each batch in one
/// transaction: the pools it names are locked and read once, the checkouts decided in arrival
/// order (each sees the leases granted before it), and only what they grant is written. A
/// batch on one pool takes the trips to the writer that one checkout took (begin, lock, read,
/// insert, commit), plus one per renewal and per further power-of-two chunk of new leases.
/// Nothing waits for a batch to fill.
async fn decide_checkouts_in_batches(
    sql: SqlStore,
    clock: SharedClock,
    mut queue: mpsc::UnboundedReceiver<PendingCheckout>,
) {
    while let Some(batch) = next_batch(&mut queue).await {
        let commands: Vec<&CheckoutCommand> = batch.iter().map(|p| &p.command).collect();
        match decide_checkouts(&sql, &clock, &commands).await {
            Ok(outcomes) => {
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    // A caller that gave up is no error: its checkout stands, and expires unless
                    // it comes back with the same client instance ID (then it is renewed).
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            // Nothing of the batch was committed: each caller hears why.
            Err(e) => {
                for pending in batch {
                    let _ = pending.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Decides `commands` in one transaction, in order, and commits what they grant.
async fn decide_checkouts(
    sql: &SqlStore,
    clock: &SharedClock,
    commands: &[&CheckoutCommand],
) -> Result<Vec<CheckoutOutcome>, StoreError> {
    // Checkouts per pool, in license order, so batches on PostgreSQL (several processes) lock
    // the pools in one order and cannot deadlock.
    let mut checkouts: BTreeMap<&str, i64> = BTreeMap::new();
    for c in commands {
        *checkouts.entry(c.license_id.as_str()).or_default() += 1;
    }
    let mut tx = sql.begin().await?;
    let now = clock.now();
    // Each pool locked and read once, its fence raised once per checkout on it.
    let mut pools = HashMap::with_capacity(checkouts.len());
    for (license_id, count) in checkouts {
        let next_fence = raise_fence(&mut tx, license_id, count).await? - count + 1;
        let live = SqlLeaseStore::reap(&mut tx, license_id, now).await?;
        pools.insert(license_id, PoolInBatch { next_fence, live });
    }
    let mut outcomes = Vec::with_capacity(commands.len());
    let mut writes = Vec::new();
    for c in commands {
        let Some(pool) = pools.get_mut(c.license_id.as_str()) else {
            return Err(StoreError::Other(format!("pool {} was not locked for its checkout", c.license_id)));
        };
        let (outcome, write) = decide_checkout(&mut pool.live, c, pool.next_fence, now);
        pool.next_fence += 1;
        outcomes.push(outcome);
        writes.extend(write);
    }
    // New leases first, in one statement: a renewal later in the batch may update one of them.
    let new: Vec<&Lease> =
        writes.iter().filter_map(|w| if let LeaseWrite::Insert(l) = w { Some(l) } else { None }).collect();
    insert_new_leases(&mut tx, &new).await?;
    for write in &writes {
        if let LeaseWrite::Update(lease) = write {
            update_lease(&mut tx, lease).await?;
        }
    }
    tx.commit().await.map_err(map_err)?;
    Ok(outcomes)
}

/// A pool locked by a checkout batch.
struct PoolInBatch {
    /// The fence of the next checkout on it in this batch.
    next_fence: i64,
    /// Its live leases in expiry order, with what the batch granted so far.
    live: Vec<Lease>,
}

/// Raises the fence of `license_id`'s pool by `by`, creating the pool row if need be (and, in
/// a transaction, locking it): the pool's fence after. Fences need only grow, so a decision
/// that grants nothing may raise it too.
async fn raise_fence(tx: &mut Transaction<'static, Any>, license_id: &str, by: i64) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO lease_pools (license_id, fence) VALUES ($1, $2) \
         ON CONFLICT (license_id) DO UPDATE SET fence = lease_pools.fence + $2 RETURNING fence",
    )
    .bind(license_id)
    .bind(by)
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    get_i64(&row, "fence")
}

/// What a checkout decided writes.
enum LeaseWrite {
    Insert(Lease),
    Update(Lease),
}

/// Decides checkout `c` on the pool's `live` leases (kept in expiry order, updated with what it
/// grants), with `fence` for a new lease.
fn decide_checkout(
    live: &mut Vec<Lease>,
    c: &CheckoutCommand,
    fence: i64,
    now: Millis,
) -> (CheckoutOutcome, Option<LeaseWrite>) {
    let usage = pool_usage(live);
    // The client's own lease: the same client instance ID held by the same user and host (an ID
    // alone is no proof of who holds a lease: another user or host naming it is another client).
    let own = |l: &Lease| l.client_instance_id == c.client_instance_id && l.user == c.user && l.host == c.host;
    let given_back = live.iter().position(own).or_else(|| {
        // A seat lingering for the same user, host and feature (the latest to expire).
        live.iter().rposition(|l| l.lingering && l.user == c.user && l.host == c.host && l.feature == c.feature)
    });
    if let Some(at) = given_back {
        let lease = renewed(live.remove(at), c, now);
        keep_in_expiry_order(live, lease.clone());
        let outcome =
            CheckoutOutcome::Granted { lease: lease.clone(), renewed: true, in_use: usage.in_use, seats_taken: 0 };
        return (outcome, Some(LeaseWrite::Update(lease)));
    }
    let mut lease = Lease {
        lease_id: c.lease_id.clone(),
        license_id: c.license_id.clone(),
        client_instance_id: c.client_instance_id.clone(),
        user: c.user.clone(),
        host: c.host.clone(),
        feature: c.feature.clone(),
        checked_out_at: now,
        last_heartbeat_at: now,
        expires_at: capped(now + c.ttl_ms, c),
        ttl_ms: c.ttl_ms,
        fence,
        seats_held: c.cost,
        group_id: c.lease_id.clone(),
        shared_processes: 1,
        borrowed: c.borrowed,
        overdraft: false,
        lingering: false,
        bucket: String::new(),
        principals: c.limits.principals.clone(),
        share_key: c.share_key.clone().unwrap_or_default(),
    };
    // Join the newest seat with this share key that has room for another process.
    let shared = c.share_key.as_ref().and_then(|key| {
        live.iter()
            .filter(|l| &l.share_key == key)
            .max_by_key(|l| l.fence)
            .filter(|l| c.max_processes == 0 || l.shared_processes < c.max_processes)
    });
    let seats_taken = if let Some(seat) = shared {
        lease.group_id = seat.group_id.clone();
        lease.seats_held = seat.seats_held;
        lease.bucket = seat.bucket.clone();
        lease.principals = seat.principals.clone();
        lease.overdraft = seat.overdraft;
        0
    } else {
        match decide_new_seat(c.seats, c.cost, &c.limits, &usage, c.queue_blocked) {
            Ok(charge) => {
                lease.bucket = charge.bucket;
                lease.overdraft = charge.overdraft;
                c.cost
            }
            Err(denial) => {
                let earliest_expiry = live.iter().map(|l| l.expires_at).min();
                return (CheckoutOutcome::Denied { denial, in_use: usage.in_use, earliest_expiry }, None);
            }
        }
    };
    // Every member of the seat counts the new one.
    lease.shared_processes = 1 + live.iter().filter(|l| l.group_id == lease.group_id).count() as i32;
    for member in live.iter_mut().filter(|l| l.group_id == lease.group_id) {
        member.shared_processes = lease.shared_processes;
    }
    keep_in_expiry_order(live, lease.clone());
    let outcome = CheckoutOutcome::Granted {
        lease: lease.clone(),
        renewed: false,
        in_use: usage.in_use + seats_taken,
        seats_taken,
    };
    (outcome, Some(LeaseWrite::Insert(lease)))
}

/// Puts `lease` among the pool's `live` leases, which stay in expiry order (then fence order)
/// as the pool read returns them: a shift, not a sort, per checkout in a batch.
fn keep_in_expiry_order(live: &mut Vec<Lease>, lease: Lease) {
    let key = (lease.expires_at, lease.fence);
    let at = live.partition_point(|l| (l.expires_at, l.fence) <= key);
    live.insert(at, lease);
}

/// An expiry no later than checkout `c` allows.
fn capped(expires_at: Millis, c: &CheckoutCommand) -> Millis {
    c.not_after.map_or(expires_at, |not_after| expires_at.min(not_after))
}

/// A lease (the client's own, or a lingering one) as given back to the client by checkout `c`.
fn renewed(mut lease: Lease, c: &CheckoutCommand, now: Millis) -> Lease {
    let reclaimed = lease.lingering;
    lease.lingering = false;
    lease.client_instance_id = c.client_instance_id.clone();
    if c.borrowed {
        lease.borrowed = true;
        lease.ttl_ms = c.ttl_ms;
        lease.expires_at = now + c.ttl_ms;
    } else if reclaimed {
        lease.ttl_ms = c.ttl_ms;
        lease.expires_at = now + c.ttl_ms;
    } else if !lease.borrowed {
        lease.expires_at = now + lease.ttl_ms;
    }
    lease.expires_at = capped(lease.expires_at, c);
    lease.last_heartbeat_at = now;
    lease
}

const LEASE_COLUMNS: &str = "lease_id, license_id, client_instance_id, user_name, host, feature, checked_out_at, \
     expires_at, ttl_ms, fence, seats_held, group_id, share_key, bucket, principals_json, borrowed, overdraft, lingering";

fn lease_from_row(row: &AnyRow) -> Result<Lease, StoreError> {
    let expires_at = get_i64(row, "expires_at")?;
    let ttl_ms = get_i64(row, "ttl_ms")?;
    let lingering = get_i64(row, "lingering")? != 0;
    Ok(Lease {
        lease_id: get_str(row, "lease_id")?,
        license_id: get_str(row, "license_id")?,
        client_instance_id: get_str(row, "client_instance_id")?,
        user: get_str(row, "user_name")?,
        host: get_str(row, "host")?,
        feature: get_str(row, "feature")?,
        checked_out_at: get_i64(row, "checked_out_at")?,
        last_heartbeat_at: if lingering { expires_at } else { expires_at - ttl_ms },
        expires_at,
        ttl_ms,
        fence: get_i64(row, "fence")?,
        seats_held: get_i32(row, "seats_held")?,
        group_id: get_str(row, "group_id")?,
        shared_processes: 1,
        borrowed: get_i64(row, "borrowed")? != 0,
        overdraft: get_i64(row, "overdraft")? != 0,
        lingering,
        bucket: get_str(row, "bucket")?,
        principals: from_json("principals_json", &get_str(row, "principals_json")?)?,
        share_key: get_str(row, "share_key")?,
    })
}

/// Inserts new leases into `leases`, a few statements for many: in chunks of power-of-two
/// sizes (13 leases: 8, 4 and 1), so a connection prepares at most seven such statements, not
/// one per count (see [`apply_in_batches`]).
async fn insert_new_leases(tx: &mut Transaction<'static, Any>, mut leases: &[&Lease]) -> Result<(), StoreError> {
    const COLUMNS: usize = 18;
    while !leases.is_empty() {
        let size = 1 << leases.len().ilog2();
        let (chunk, rest) = leases.split_at(size);
        let rows = (0..size)
            .map(|i| {
                let values: Vec<String> = (1..=COLUMNS).map(|c| format!("${}", i * COLUMNS + c)).collect();
                format!("({})", values.join(", "))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("INSERT INTO leases ({LEASE_COLUMNS}) VALUES {rows}");
        let mut query = sqlx::query(&sql);
        for lease in chunk {
            query = bind_lease(query, lease);
        }
        query.execute(&mut **tx).await.map_err(map_err)?;
        leases = rest;
    }
    Ok(())
}

/// Binds a lease's values in the order of [`LEASE_COLUMNS`].
fn bind_lease<'q>(
    query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    lease: &'q Lease,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(&lease.lease_id)
        .bind(&lease.license_id)
        .bind(&lease.client_instance_id)
        .bind(&lease.user)
        .bind(&lease.host)
        .bind(&lease.feature)
        .bind(lease.checked_out_at)
        .bind(lease.expires_at)
        .bind(lease.ttl_ms)
        .bind(lease.fence)
        .bind(i64::from(lease.seats_held))
        .bind(&lease.group_id)
        .bind(&lease.share_key)
        .bind(&lease.bucket)
        .bind(to_json(&lease.principals))
        .bind(i64::from(lease.borrowed))
        .bind(i64::from(lease.overdraft))
        .bind(i64::from(lease.lingering))
}

/// Inserts a lease into `leases` or `expired_leases` (which adds `seats_freed`).
async fn insert_lease(
    tx: &mut Transaction<'static, Any>,
    table: &str,
    lease: &Lease,
    seats_freed: Option<i32>,
) -> Result<(), StoreError> {
    let (extra_column, extra_value) = if seats_freed.is_some() { (", seats_freed", ", $19") } else { ("", "") };
    let sql = format!(
        "INSERT INTO {table} ({LEASE_COLUMNS}{extra_column}) VALUES \
         ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18{extra_value})"
    );
    let mut query = bind_lease(sqlx::query(&sql), lease);
    if let Some(freed) = seats_freed {
        query = query.bind(i64::from(freed));
    }
    query.execute(&mut **tx).await.map_err(map_err)?;
    Ok(())
}

/// Stores a lease's changed fields (a renewal, a heartbeat, the start or end of lingering).
async fn update_lease(tx: &mut Transaction<'static, Any>, lease: &Lease) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE leases SET expires_at = $1, ttl_ms = $2, client_instance_id = $3, borrowed = $4, lingering = $5 \
         WHERE lease_id = $6",
    )
    .bind(lease.expires_at)
    .bind(lease.ttl_ms)
    .bind(&lease.client_instance_id)
    .bind(i64::from(lease.borrowed))
    .bind(i64::from(lease.lingering))
    .bind(&lease.lease_id)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Seats held, per reservation and per principal, counting each seat group once.
fn pool_usage(live: &[Lease]) -> PoolUsage {
    let mut usage = PoolUsage::default();
    let mut seen = HashSet::new();
    for lease in live.iter().filter(|l| seen.insert(l.group_id.as_str())) {
        usage.in_use += lease.seats_held;
        if !lease.bucket.is_empty() {
            *usage.by_bucket.entry(lease.bucket.clone()).or_default() += lease.seats_held;
        }
        for p in &lease.principals {
            *usage.by_principal.entry(p.clone()).or_default() += lease.seats_held;
        }
    }
    usage
}

fn with_sharing(mut leases: Vec<Lease>) -> Vec<Lease> {
    let mut members: HashMap<String, i32> = HashMap::new();
    for l in &leases {
        *members.entry(l.group_id.clone()).or_default() += 1;
    }
    for l in &mut leases {
        l.shared_processes = members[&l.group_id];
    }
    leases
}

/// A pool decision under way: the pool row is locked, the pool's expired leases are moved out,
/// and the transaction is still open.
struct LockedPool {
    tx: Transaction<'static, Any>,
    /// The pool's fence, raised by this decision: the fence of a lease it grants, or of a revocation.
    fence: i64,
    now: Millis,
    /// What is left in the pool, earliest expiry first.
    live: Vec<Lease>,
}

/// A lease's seat cost when it leaves `live` (which holds it) and no other lease holds its seat.
fn seats_freed(lease: &Lease) -> i32 {
    if lease.shared_processes <= 1 {
        lease.seats_held
    } else {
        0
    }
}

impl SqlLeaseStore {
    /// A lease store in `sql`'s database, judging expiry by `clock`.
    pub fn new(sql: SqlStore, clock: SharedClock) -> Self {
        Self { sql, clock, heartbeats: Arc::default(), checkins: Arc::default(), checkouts: Arc::default() }
    }

    /// `change` applied to the lease in the next batch of its kind: the lease as changed and the
    /// time of the change, or `None` when the single statement does not apply to it.
    async fn in_batch(
        &self,
        change: BatchedChange,
        license_id: &str,
        lease_id: &str,
    ) -> Result<Option<(Lease, Millis)>, StoreError> {
        let queue = match change {
            BatchedChange::Extend => &self.heartbeats,
            BatchedChange::Release => &self.checkins,
        };
        through_batches(
            queue,
            |calls| apply_in_batches(self.sql.clone(), self.clock.clone(), change, calls),
            |reply| Pending { license_id: license_id.to_owned(), lease_id: lease_id.to_owned(), reply },
        )
        .await
    }

    /// Begins a pool decision. Each statement is a hand-off to the SQLite writer's thread, so
    /// this takes two: one that creates, locks and raises the pool row's fence (fences need only
    /// grow, so a decision that grants nothing may raise it too), and one read of the pool.
    async fn lock_pool(&self, license_id: &str) -> Result<LockedPool, StoreError> {
        let mut tx = self.sql.begin().await?;
        let fence = raise_fence(&mut tx, license_id, 1).await?;
        let now = self.clock.now();
        let live = Self::reap(&mut tx, license_id, now).await?;
        Ok(LockedPool { tx, fence, now, live })
    }

    /// Moves the pool's expired leases to `expired_leases`, earliest first (a seat is freed with
    /// the last lease of its group), and returns the live ones.
    async fn reap(tx: &mut Transaction<'static, Any>, license_id: &str, now: Millis) -> Result<Vec<Lease>, StoreError> {
        let leases = Self::pool_leases(tx, license_id).await?;
        if leases.iter().all(|l| l.expires_at > now) {
            return Ok(with_sharing(leases));
        }
        let mut members: HashMap<String, i32> = HashMap::new();
        for l in &leases {
            *members.entry(l.group_id.clone()).or_default() += 1;
        }
        let mut live = Vec::with_capacity(leases.len());
        let mut moved_on = false;
        for lease in leases {
            if lease.expires_at > now {
                live.push(lease);
                continue;
            }
            // Conditional: on PostgreSQL a heartbeat's single-statement extension (which takes
            // no pool lock) may have just moved it on.
            let deleted = sqlx::query("DELETE FROM leases WHERE lease_id = $1 AND expires_at <= $2")
                .bind(&lease.lease_id)
                .bind(now)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
            if deleted.rows_affected() == 0 {
                moved_on = true;
                continue;
            }
            let left = members.entry(lease.group_id.clone()).or_default();
            *left -= 1;
            let freed = if *left == 0 { lease.seats_held } else { 0 };
            insert_lease(tx, "expired_leases", &lease, Some(freed)).await?;
        }
        if moved_on {
            return Ok(with_sharing(Self::pool_leases(tx, license_id).await?));
        }
        Ok(with_sharing(live))
    }

    async fn pool_leases(tx: &mut Transaction<'static, Any>, license_id: &str) -> Result<Vec<Lease>, StoreError> {
        static POOL: LazyLock<String> = LazyLock::new(|| {
            format!("SELECT {LEASE_COLUMNS} FROM leases WHERE license_id = $1 ORDER BY expires_at, fence")
        });
        let rows = sqlx::query(&POOL).bind(license_id).fetch_all(&mut **tx).await.map_err(map_err)?;
        rows.iter().map(lease_from_row).collect()
    }
}

#[async_trait]
impl LeaseStore for SqlLeaseStore {
    #[tracing::instrument(name = "store.checkout", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn checkout(&self, c: &CheckoutCommand) -> Result<CheckoutOutcome, StoreError> {
        // This store keeps no license revisions, so it cannot tell whether a cached license is
        // current: the caller reads it fresh instead.
        if c.license_revision.is_some() {
            return Ok(CheckoutOutcome::StaleLicense);
        }
        through_batches(
            &self.checkouts,
            |calls| decide_checkouts_in_batches(self.sql.clone(), self.clock.clone(), calls),
            |reply| PendingCheckout { command: c.clone(), reply },
        )
        .await
    }

    #[tracing::instrument(name = "store.heartbeat", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn heartbeat(
        &self,
        license_id: &str,
        lease_id: &str,
        not_after: Option<Millis>,
    ) -> Result<HeartbeatOutcome, StoreError> {
        // The common case in one conditional statement, shared with the heartbeats beside it.
        // Everything else takes the locked path below, and so does a lease the statement moved
        // past `not_after` (only in the license's last TTL before its end of use): the locked
        // path caps it at once.
        if let Some((lease, _)) = self.in_batch(BatchedChange::Extend, license_id, lease_id).await? {
            if not_after.is_none_or(|cap| lease.expires_at <= cap) {
                return Ok(HeartbeatOutcome::Extended(lease));
            }
        }
        let LockedPool { mut tx, now, live, .. } = self.lock_pool(license_id).await?;
        let Some(mut lease) = live.into_iter().find(|l| l.lease_id == lease_id) else {
            let expired = sqlx::query("SELECT 1 AS one FROM expired_leases WHERE lease_id = $1 AND license_id = $2")
                .bind(lease_id)
                .bind(license_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            let revoked = sqlx::query("SELECT 1 AS one FROM lease_tombstones WHERE lease_id = $1 AND license_id = $2")
                .bind(lease_id)
                .bind(license_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            return Ok(if revoked.is_some() {
                HeartbeatOutcome::Revoked
            } else if expired.is_some() {
                HeartbeatOutcome::Expired
            } else {
                HeartbeatOutcome::Unknown
            });
        };
        if lease.lingering {
            tx.commit().await.map_err(map_err)?;
            return Ok(HeartbeatOutcome::Unknown);
        }
        // A borrowed lease lives out its period; heartbeats do not lengthen it.
        if !lease.borrowed {
            lease.expires_at = not_after.map_or(now + lease.ttl_ms, |cap| (now + lease.ttl_ms).min(cap));
            lease.last_heartbeat_at = now;
            update_lease(&mut tx, &lease).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(HeartbeatOutcome::Extended(lease))
    }

    #[tracing::instrument(name = "store.checkin", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn checkin(&self, license_id: &str, lease_id: &str, linger_ms: i64) -> Result<Option<Released>, StoreError> {
        // The common case in one statement shared with the checkins beside it: a lease alone in
        // its seat, checked in for good. Lingering, shared seats and the rest take the locked path.
        if linger_ms <= 0 {
            if let Some((lease, at)) = self.in_batch(BatchedChange::Release, license_id, lease_id).await? {
                return Ok(Some(Released { seats_freed: lease.seats_held, lease, at }));
            }
        }
        let LockedPool { mut tx, now, live, .. } = self.lock_pool(license_id).await?;
        let Some(mut lease) = live.into_iter().find(|l| l.lease_id == lease_id && !l.lingering) else {
            tx.commit().await.map_err(map_err)?;
            return Ok(None);
        };
        let seats_freed = if linger_ms > 0 && !lease.borrowed {
            lease.lingering = true;
            lease.expires_at = now + linger_ms;
            lease.last_heartbeat_at = lease.expires_at;
            update_lease(&mut tx, &lease).await?;
            0
        } else {
            sqlx::query("DELETE FROM leases WHERE lease_id = $1")
                .bind(lease_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            seats_freed(&lease)
        };
        tx.commit().await.map_err(map_err)?;
        Ok(Some(Released { lease, seats_freed, at: now }))
    }

    #[tracing::instrument(name = "store.revoke", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn revoke(&self, license_id: &str, lease_id: &str) -> Result<Option<(i64, Released)>, StoreError> {
        let LockedPool { mut tx, fence, now, live } = self.lock_pool(license_id).await?;
        let Some(lease) = live.into_iter().find(|l| l.lease_id == lease_id) else {
            tx.commit().await.map_err(map_err)?;
            return Ok(None);
        };
        sqlx::query("DELETE FROM leases WHERE lease_id = $1")
            .bind(lease_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let seats_freed = seats_freed(&lease);
        sqlx::query("INSERT INTO lease_tombstones (lease_id, license_id, revoked_at) VALUES ($1, $2, $3) ON CONFLICT (lease_id) DO NOTHING")
            .bind(lease_id)
            .bind(license_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some((fence, Released { lease, seats_freed, at: now })))
    }

    #[tracing::instrument(name = "store.list", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list(&self, license_id: &str) -> Result<Vec<Lease>, StoreError> {
        let sql = format!(
            "SELECT {LEASE_COLUMNS} FROM leases WHERE license_id = $1 AND expires_at > $2 ORDER BY expires_at, fence"
        );
        let rows = sqlx::query(&sql)
            .bind(license_id)
            .bind(self.clock.now())
            .fetch_all(&self.sql.pool)
            .await
            .map_err(map_err)?;
        Ok(with_sharing(rows.iter().map(lease_from_row).collect::<Result<_, _>>()?))
    }

    #[tracing::instrument(name = "store.licenses_with_leases", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn licenses_with_leases(&self, max: usize) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT license_id FROM leases ORDER BY license_id LIMIT $1")
            .bind(max as i64)
            .fetch_all(&self.sql.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(|row| get_str(row, "license_id")).collect()
    }

    #[tracing::instrument(name = "store.sweep_expired", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn sweep_expired(&self, max: usize) -> Result<Vec<Released>, StoreError> {
        let due = sqlx::query("SELECT DISTINCT license_id FROM leases WHERE expires_at <= $1 LIMIT $2")
            .bind(self.clock.now())
            .bind(max as i64)
            .fetch_all(&self.sql.pool)
            .await
            .map_err(map_err)?;
        for row in &due {
            let pool = self.lock_pool(&get_str(row, "license_id")?).await?;
            pool.tx.commit().await.map_err(map_err)?;
        }
        let mut tx = self.sql.begin().await?;
        let sql =
            format!("SELECT sequence, seats_freed, {LEASE_COLUMNS} FROM expired_leases ORDER BY sequence LIMIT $1");
        let rows = sqlx::query(&sql).bind(max as i64).fetch_all(&mut *tx).await.map_err(map_err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            sqlx::query("DELETE FROM expired_leases WHERE sequence = $1")
                .bind(get_i64(row, "sequence")?)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let lease = lease_from_row(row)?;
            out.push(Released { at: lease.expires_at, seats_freed: get_i32(row, "seats_freed")?, lease });
        }
        tx.commit().await.map_err(map_err)?;
        Ok(out)
    }

    // No span: mostly a read of the clock, on every seat call.
    async fn now(&self) -> Result<Millis, StoreError> {
        Ok(self.clock.now())
    }
}
