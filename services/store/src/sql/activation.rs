//! [`ActivationStore`] on SQL: the license row is locked for the whole decision, and the count
//! moves only through conditional updates, so racing activations never exceed the seats.
//!
//! A machine is matched through `activation_components` (the component digests of live
//! activations, keyed by license and digest) and `activation_component_counts` (how many share
//! each): the candidates are the activations that share a component with it, so matching costs
//! the same at 50 installations as at 100,000.

use super::catalog::{insert_audit, license_from_row};
use super::*;
use async_trait::async_trait;
use licensing_domain::clock::Millis;
use licensing_domain::fingerprint::{self, ComponentDigest};
use licensing_domain::model::{Activation, ActivationEvent, AuditRecord, InstallationCursor, License, MAX_PAGE_SIZE};
use licensing_domain::store::*;
use sqlx::{Any, AnyConnection, Transaction};
use std::collections::HashMap;
use std::fmt::Write as _;

/// A presented component shared by more live activations than this (a CPU model common across
/// a site) is "common": it is followed only to the activations small enough to match through
/// common components alone ([`fingerprint::most_stored_components_for`]); the others that share
/// it are found through a component they do not share with many.
const COMMON_COMPONENT: usize = 64;

/// Installations loaded per statement (bind parameters stay far below both databases' limits).
const CHUNK: usize = 500;

fn activation_from_row(row: &AnyRow) -> Result<Activation, StoreError> {
    Ok(Activation {
        installation_id: get_str(row, "installation_id")?,
        license_id: get_str(row, "license_id")?,
        fingerprint: from_json("fingerprint_json", &get_str(row, "fingerprint_json")?)?,
        machine_name: get_str(row, "machine_name")?,
        platform: get_str(row, "platform")?,
        product_version: get_str(row, "product_version")?,
        activated_at: get_i64(row, "activated_at")?,
        last_seen_at: get_i64(row, "last_seen_at")?,
        deactivated_at: get_opt_i64(row, "deactivated_at")?,
        offline: get_i64(row, "offline")? != 0,
        server_serial: get_i64(row, "server_serial")?,
    })
}

fn event_from_row(row: &AnyRow) -> Result<ActivationEvent, StoreError> {
    Ok(ActivationEvent {
        sequence: get_i64(row, "sequence")?,
        occurred_at: get_i64(row, "occurred_at")?,
        action: get_str(row, "action")?,
        installation_id: get_str(row, "installation_id")?,
        machine_name: get_str(row, "machine_name")?,
        fingerprint_digest: get_str(row, "fingerprint_digest")?,
        outcome: get_str(row, "outcome")?,
    })
}

/// `$first, $first+1, …` for `n` parameters.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "${}", first + i);
    }
    out
}

/// A page size within bounds (0: the default).
fn page_limit(limit: u32) -> i64 {
    use licensing_domain::model::DEFAULT_PAGE_SIZE;
    i64::from(if limit == 0 { DEFAULT_PAGE_SIZE } else { limit.min(MAX_PAGE_SIZE) })
}

async fn insert_event(conn: &mut AnyConnection, license_id: &str, e: &ActivationEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO activation_events (license_id, installation_id, action, machine_name, fingerprint_digest, outcome, occurred_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(license_id)
    .bind(&e.installation_id)
    .bind(&e.action)
    .bind(&e.machine_name)
    .bind(&e.fingerprint_digest)
    .bind(&e.outcome)
    .bind(e.occurred_at)
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// The distinct component digests of a fingerprint.
pub(crate) fn distinct_digests(fingerprint: &[ComponentDigest]) -> Vec<&str> {
    let mut digests: Vec<&str> = fingerprint.iter().map(|c| c.digest.as_str()).collect();
    digests.sort_unstable();
    digests.dedup();
    digests
}

/// Indexes a live activation's components for matching, and counts them.
async fn insert_components(
    conn: &mut AnyConnection,
    license_id: &str,
    installation_id: &str,
    fingerprint: &[ComponentDigest],
) -> Result<(), StoreError> {
    let digests = distinct_digests(fingerprint);
    if digests.is_empty() {
        return Ok(());
    }
    // One row per digest: `row` with `$d` standing for the digest's parameter, from `$first` on.
    let rows = |row: &str, first: usize| {
        (0..digests.len()).map(|i| row.replace("$d", &format!("${}", first + i))).collect::<Vec<_>>().join(", ")
    };
    let sql = format!(
        "INSERT INTO activation_components (license_id, digest, component_count, installation_id) VALUES {}",
        rows("($1, $d, $2, $3)", 4)
    );
    let mut query = sqlx::query(&sql).bind(license_id).bind(fingerprint.len() as i64).bind(installation_id);
    for d in &digests {
        query = query.bind(*d);
    }
    query.execute(&mut *conn).await.map_err(map_err)?;
    let sql = format!(
        "INSERT INTO activation_component_counts (license_id, digest, component_count, activations) VALUES {} \
         ON CONFLICT (license_id, digest, component_count) \
         DO UPDATE SET activations = activation_component_counts.activations + 1",
        rows("($1, $d, $2, 1)", 3)
    );
    let mut query = sqlx::query(&sql).bind(license_id).bind(fingerprint.len() as i64);
    for d in &digests {
        query = query.bind(*d);
    }
    query.execute(conn).await.map_err(map_err)?;
    Ok(())
}

/// Removes a live activation's components from the index and from the counts.
async fn delete_components(
    conn: &mut AnyConnection,
    license_id: &str,
    installation_id: &str,
) -> Result<(), StoreError> {
    let removed =
        sqlx::query("DELETE FROM activation_components WHERE installation_id = $1 RETURNING digest, component_count")
            .bind(installation_id)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
    let mut by_count: HashMap<i64, Vec<String>> = HashMap::new();
    for row in &removed {
        by_count.entry(get_i64(row, "component_count")?).or_default().push(get_str(row, "digest")?);
    }
    for (count, digests) in by_count {
        // A count that reaches zero goes, so the counts hold only components in use.
        for sql in [
            "DELETE FROM activation_component_counts WHERE license_id = $1 AND component_count = $2 AND activations <= 1 \
             AND digest IN",
            "UPDATE activation_component_counts SET activations = activations - 1 WHERE license_id = $1 \
             AND component_count = $2 AND digest IN",
        ] {
            let sql = format!("{sql} ({})", placeholders(3, digests.len()));
            let mut query = sqlx::query(&sql).bind(license_id).bind(count);
            for d in &digests {
                query = query.bind(d.as_str());
            }
            query.execute(&mut *conn).await.map_err(map_err)?;
        }
    }
    Ok(())
}

fn sorted_components(f: &[ComponentDigest]) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = f.iter().map(|c| (c.name.as_str(), c.digest.as_str())).collect();
    v.sort_unstable();
    v
}

/// The same components, in whatever order.
fn same_components(a: &[ComponentDigest], b: &[ComponentDigest]) -> bool {
    sorted_components(a) == sorted_components(b)
}

/// The best of `found` for `presented`: the highest share at or above `min_share` (ties: the
/// lowest Installation ID, so the answer does not depend on row order).
fn best_of(
    found: impl IntoIterator<Item = Activation>,
    presented: &[ComponentDigest],
    min_share: f64,
) -> Option<MachineMatch> {
    let mut best: Option<MachineMatch> = None;
    for activation in found {
        let share = fingerprint::match_share(&activation.fingerprint, presented);
        if share < min_share || activation.deactivated_at.is_some() {
            continue;
        }
        let better = best.as_ref().is_none_or(|b| {
            share > b.share || (share == b.share && activation.installation_id < b.activation.installation_id)
        });
        if better {
            best = Some(MachineMatch { activation, share });
        }
    }
    best
}

/// The live activation of `license_id` that `presented` matches best (at least `min_share`),
/// read through the components they share, never by reading every activation.
///
/// First the counts say how many live activations share each presented component (and how
/// many components theirs have). A component shared by at most [`COMMON_COMPONENT`] is listed
/// with its activations; from those lists an activation's share is bounded (it shares at most
/// the listed components plus every common one), and only activations whose bound reaches
/// `min_share` are read, with those small enough to match through common components alone
/// when the counts say there are any. No statement reads more than a bounded number of rows,
/// whatever the database's statistics say: a new machine on a site license costs the counts
/// alone.
async fn best_live_match_on(
    conn: &mut AnyConnection,
    license_id: &str,
    presented: &[ComponentDigest],
    min_share: f64,
) -> Result<Option<MachineMatch>, StoreError> {
    let digests = distinct_digests(presented);
    if digests.is_empty() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT digest, component_count, activations FROM activation_component_counts \
         WHERE license_id = $1 AND digest IN ({})",
        placeholders(2, digests.len())
    );
    let mut query = sqlx::query(&sql).bind(license_id);
    for d in &digests {
        query = query.bind(*d);
    }
    // Digest -> (activations sharing it, the fewest components one of them has).
    let mut counts: HashMap<String, (i64, i64)> = HashMap::new();
    for row in query.fetch_all(&mut *conn).await.map_err(map_err)? {
        let (count, activations) = (get_i64(&row, "component_count")?, get_i64(&row, "activations")?);
        let entry = counts.entry(get_str(&row, "digest")?).or_insert((0, i64::MAX));
        entry.0 += activations;
        entry.1 = entry.1.min(count);
    }
    let common: Vec<&str> =
        digests.iter().copied().filter(|d| counts.get(*d).is_some_and(|c| c.0 > COMMON_COMPONENT as i64)).collect();
    let uncommon: Vec<&str> =
        digests.iter().copied().filter(|d| counts.get(*d).is_some_and(|c| c.0 <= COMMON_COMPONENT as i64)).collect();
    let most = fingerprint::most_stored_components_for(common.len(), min_share) as i64;
    // Common components some activation small enough to match through them alone has.
    let small: Vec<&str> = common.iter().copied().filter(|d| counts.get(*d).is_some_and(|c| c.1 <= most)).collect();
    let mut viable = vec![];
    if !uncommon.is_empty() {
        let sql = format!(
            "SELECT installation_id, component_count FROM activation_components WHERE license_id = $1 AND digest IN ({})",
            placeholders(2, uncommon.len())
        );
        let mut query = sqlx::query(&sql).bind(license_id);
        for d in &uncommon {
            query = query.bind(*d);
        }
        // Installation -> (uncommon components it shares, its component count).
        let mut listed: HashMap<String, (usize, i64)> = HashMap::new();
        for row in query.fetch_all(&mut *conn).await.map_err(map_err)? {
            let count = get_i64(&row, "component_count")?;
            listed.entry(get_str(&row, "installation_id")?).or_insert((0, count)).0 += 1;
        }
        viable = listed
            .into_iter()
            .filter(|(_, (shared, count))| {
                let most = (*shared + common.len()).min(*count as usize);
                *count > 0 && most as f64 / *count as f64 >= min_share
            })
            .map(|(installation_id, _)| installation_id)
            .collect();
    }
    if viable.is_empty() && small.is_empty() {
        return Ok(None);
    }
    // The viable ones by key, and those that could match through common components alone
    // through the index: each part drives its own lookups, so neither reads the license's
    // other activations.
    let mut parts = vec![];
    // $1 is the license when the common-components part names it.
    let mut next = if small.is_empty() { 1 } else { 2 };
    if !viable.is_empty() {
        parts
            .push(format!("SELECT * FROM activations WHERE installation_id IN ({})", placeholders(next, viable.len())));
        next += viable.len();
    }
    if !small.is_empty() {
        parts.push(format!(
            "SELECT a.* FROM activation_components c JOIN activations a ON a.installation_id = c.installation_id \
             WHERE c.license_id = $1 AND c.digest IN ({}) AND c.component_count <= ${}",
            placeholders(next + 1, small.len()),
            next
        ));
    }
    let sql = parts.join(" UNION ALL ");
    let mut query = sqlx::query(&sql);
    if !small.is_empty() {
        query = query.bind(license_id);
    }
    for installation_id in &viable {
        query = query.bind(installation_id.as_str());
    }
    if !small.is_empty() {
        query = query.bind(most);
        for d in &small {
            query = query.bind(*d);
        }
    }
    let mut found: HashMap<String, Activation> = HashMap::new();
    for row in query.fetch_all(&mut *conn).await.map_err(map_err)? {
        let activation = activation_from_row(&row)?;
        if activation.license_id == license_id {
            found.entry(activation.installation_id.clone()).or_insert(activation);
        }
    }
    let found = found.into_values();
    Ok(best_of(found, presented, min_share))
}

/// Raises the license's server license file serial by one and records it on the activation
/// `installation_id`; returns it. Called with the license row locked, so serials never repeat.
async fn next_server_serial(
    tx: &mut Transaction<'_, Any>,
    license_id: &str,
    installation_id: &str,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "UPDATE licenses SET server_license_serial = server_license_serial + 1 WHERE license_id = $1 \
         RETURNING server_license_serial",
    )
    .bind(license_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(map_err)?;
    let serial = get_i64(&row, "server_license_serial")?;
    sqlx::query("UPDATE activations SET server_serial = $1 WHERE installation_id = $2")
        .bind(serial)
        .bind(installation_id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
    Ok(serial)
}

/// When the activation `installation_id` of `license_id` was last (re-)activated or refreshed
/// after `after` (each of which signs a certificate for it), if it was: read from its history.
async fn reactivated_since(
    conn: &mut AnyConnection,
    license_id: &str,
    installation_id: &str,
    after: Millis,
) -> Result<Option<Millis>, StoreError> {
    let row = sqlx::query(
        "SELECT occurred_at FROM activation_events WHERE license_id = $1 AND installation_id = $2 \
         AND action IN ('activate', 'offline_activate', 'refresh') AND outcome LIKE 'ok%' AND occurred_at > $3 \
         ORDER BY occurred_at DESC LIMIT 1",
    )
    .bind(license_id)
    .bind(installation_id)
    .bind(after)
    .fetch_optional(conn)
    .await
    .map_err(map_err)?;
    row.as_ref().map(|r| get_i64(r, "occurred_at")).transpose()
}

/// The live activation `installation_id` of `license_id`.
async fn live_installation(
    conn: &mut AnyConnection,
    license_id: &str,
    installation_id: &str,
) -> Result<Option<Activation>, StoreError> {
    let row = sqlx::query(
        "SELECT * FROM activations WHERE installation_id = $1 AND license_id = $2 AND deactivated_at IS NULL",
    )
    .bind(installation_id)
    .bind(license_id)
    .fetch_optional(conn)
    .await
    .map_err(map_err)?;
    row.as_ref().map(activation_from_row).transpose()
}

impl SqlStore {
    /// The license as it is after a change to its activations, read inside the change's
    /// transaction. On PostgreSQL the same statement queues the change's NOTIFY (sent at commit,
    /// not at all on rollback) for other processes' caches, so the hot path pays no round trip
    /// for it.
    async fn license_after_activations_changed(
        &self,
        tx: &mut Transaction<'_, Any>,
        license_id: &str,
    ) -> Result<License, StoreError> {
        let query = match self.dialect {
            Dialect::Postgres => sqlx::query(
                "SELECT *, CAST(pg_notify($2, license_id) AS TEXT) AS notified FROM licenses WHERE license_id = $1",
            )
            .bind(license_id)
            .bind(LICENSE_CHANNEL),
            Dialect::Sqlite => sqlx::query("SELECT * FROM licenses WHERE license_id = $1").bind(license_id),
        };
        let row = query.fetch_one(&mut **tx).await.map_err(map_err)?;
        license_from_row(&row)
    }

    /// Records a refusal in the history and commits it; the refusal is the answer.
    async fn refuse<T>(
        &self,
        mut tx: Transaction<'static, Any>,
        license_id: &str,
        event: ActivationEvent,
        refusal: ActivationStoreError,
    ) -> Result<T, ActivationStoreError> {
        let outcome = refusal.recorded_reason().unwrap_or("REFUSED");
        insert_event(&mut tx, license_id, &ActivationEvent { outcome: outcome.into(), ..event }).await?;
        tx.commit().await.map_err(map_err)?;
        Err(refusal)
    }

    /// Deactivation for every caller; with `usable`, a product's (checked, refusals recorded).
    async fn deactivate_with(
        &self,
        c: &DeactivateCommand,
        usable: Option<&UsableCheck>,
    ) -> Result<(Activation, License), ActivationStoreError> {
        let mut tx = self.begin().await?;
        let license = self
            .lock_license(&mut tx, &c.license_id)
            .await?
            .ok_or_else(|| ActivationStoreError::LicenseNotFound(c.license_id.clone()))?;
        let found = match &c.target {
            DeactivateTarget::Installation(id)
            | DeactivateTarget::ServerLicenseFile { installation_id: id, .. }
            | DeactivateTarget::OfflineRequest { installation_id: id, .. } => {
                live_installation(&mut tx, &c.license_id, id).await?
            }
            DeactivateTarget::Fingerprint { digests, match_threshold } => {
                best_live_match_on(&mut tx, &c.license_id, digests, *match_threshold).await?.map(|m| m.activation)
            }
        };
        // What a refusal's history line names: the installation when it is this license's.
        let refused_event = || ActivationEvent {
            sequence: 0,
            occurred_at: c.now,
            action: c.action.into(),
            installation_id: found.as_ref().map(|a| a.installation_id.clone()).unwrap_or_default(),
            machine_name: found.as_ref().map(|a| a.machine_name.clone()).unwrap_or_default(),
            fingerprint_digest: match (&found, &c.target) {
                (Some(a), _) => fingerprint::summary(&a.fingerprint),
                (None, DeactivateTarget::Fingerprint { digests, .. }) => fingerprint::summary(digests),
                (
                    None,
                    DeactivateTarget::Installation(_)
                    | DeactivateTarget::ServerLicenseFile { .. }
                    | DeactivateTarget::OfflineRequest { .. },
                ) => String::new(),
            },
            outcome: String::new(),
        };
        if let Some(usable) = usable {
            if let Err(refusal) = usable(&license) {
                let event = refused_event();
                return self.refuse(tx, &c.license_id, event, ActivationStoreError::Refused(refusal)).await;
            }
        }
        let Some(mut activation) = found.clone() else {
            return Err(ActivationStoreError::NoActivation);
        };
        if let DeactivateTarget::ServerLicenseFile { serial, .. } = &c.target {
            // Decided with the license row locked: a file signed meanwhile has raised the serial.
            if *serial != activation.server_serial {
                return Err(ActivationStoreError::Refused(licensing_domain::model::Refusal {
                    reason: "SUPERSEDED_SERVER_LICENSE",
                    message: format!(
                        "the server license file with serial {serial} was superseded by serial {} of installation {}; \
                         only the latest file can be returned",
                        activation.server_serial, activation.installation_id
                    ),
                }));
            }
        }
        if let DeactivateTarget::OfflineRequest { certificate_issued_at, .. } = &c.target {
            // Decided with the license row locked: a (re-)activation or refresh meanwhile has
            // signed a newer certificate, which the machine may hold.
            let newer =
                reactivated_since(&mut tx, &c.license_id, &activation.installation_id, *certificate_issued_at).await?;
            if *certificate_issued_at < activation.activated_at || newer.is_some() {
                let refusal = ActivationStoreError::Refused(licensing_domain::model::Refusal {
                    reason: "SUPERSEDED_CERTIFICATE",
                    message: format!(
                        "the request gives back a certificate of installation {} issued at {}, but {}: only the \
                         latest certificate's request frees it (write a new request on the machine, after it \
                         deleted its latest certificate)",
                        activation.installation_id,
                        licensing_domain::clock::rfc3339(*certificate_issued_at),
                        match newer {
                            Some(at) => format!(
                                "the machine was activated again or refreshed its certificate at {}",
                                licensing_domain::clock::rfc3339(at)
                            ),
                            None => format!(
                                "the installation was activated at {}, after it",
                                licensing_domain::clock::rfc3339(activation.activated_at)
                            ),
                        }
                    ),
                });
                if usable.is_some() {
                    let event = refused_event();
                    return self.refuse(tx, &c.license_id, event, refusal).await;
                }
                return Err(refusal);
            }
        }
        let spent = sqlx::query(
            "UPDATE licenses SET activations_used = activations_used - 1, deactivations_used = deactivations_used + $2 \
             WHERE license_id = $1 AND activations_used > 0 \
             AND ($2 = 0 OR allowed_deactivations = -1 OR deactivations_used < allowed_deactivations)",
        )
        .bind(&c.license_id)
        .bind(i64::from(c.counts))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if spent.rows_affected() == 0 {
            let refusal = ActivationStoreError::DeactivationLimit { allowed: license.allowed_deactivations };
            if usable.is_some() {
                let event = refused_event();
                return self.refuse(tx, &c.license_id, event, refusal).await;
            }
            return Err(refusal);
        }
        sqlx::query("UPDATE activations SET deactivated_at = $1 WHERE installation_id = $2")
            .bind(c.now)
            .bind(&activation.installation_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        delete_components(&mut tx, &c.license_id, &activation.installation_id).await?;
        let event = ActivationEvent {
            outcome: if c.counts { "ok".into() } else { "ok: not counted".into() },
            ..refused_event()
        };
        insert_event(&mut tx, &c.license_id, &event).await?;
        if let DeactivateTarget::ServerLicenseFile { audit, .. } | DeactivateTarget::OfflineRequest { audit, .. } =
            &c.target
        {
            insert_audit(&mut tx, audit, c.now).await?;
        }
        let license = self.license_after_activations_changed(&mut tx, &c.license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.tell_subscribers(&c.license_id);
        activation.deactivated_at = Some(c.now);
        Ok((activation, license))
    }

    /// Culls the silent machines of one license, at most `max`, in one transaction with the
    /// license row locked (see [`ActivationStore::cull_silent_activations`]).
    async fn cull_license(
        &self,
        license_id: &str,
        now: Millis,
        max: usize,
    ) -> Result<Vec<CulledActivation>, StoreError> {
        let mut tx = self.begin().await?;
        // The timeout as it is now, with the row locked: an administrator may have lifted it.
        let Some(timeout) = self.lock_license(&mut tx, license_id).await?.and_then(|l| l.heartbeat_timeout_ms) else {
            return Ok(vec![]);
        };
        let cutoff = now.saturating_sub(timeout);
        // The conditions stand on the updated rows themselves, not only in the subquery: a
        // heartbeat committed meanwhile (it takes no license lock) is seen when PostgreSQL
        // re-reads the row, so a machine seen in time is never culled; and a second culler,
        // waiting for the license lock, finds the rows deactivated already and frees nothing.
        let rows = sqlx::query(
            "UPDATE activations SET deactivated_at = $1 WHERE license_id = $2 AND deactivated_at IS NULL              AND last_seen_at <= $3 AND installation_id IN (SELECT installation_id FROM activations              WHERE license_id = $2 AND deactivated_at IS NULL AND last_seen_at <= $3              ORDER BY last_seen_at, installation_id LIMIT $4) RETURNING *",
        )
        .bind(now)
        .bind(license_id)
        .bind(cutoff)
        .bind(max as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        if rows.is_empty() {
            return Ok(vec![]);
        }
        let culled: Vec<Activation> = rows.iter().map(activation_from_row).collect::<Result<_, _>>()?;
        // Frees their activations; deactivations_used stays: the customer returned nothing.
        let freed = sqlx::query(
            "UPDATE licenses SET activations_used = activations_used - $2 WHERE license_id = $1 AND activations_used >= $2",
        )
        .bind(license_id)
        .bind(culled.len() as i64)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if freed.rows_affected() == 0 {
            return Err(StoreError::Corrupt(format!(
                "license {license_id} counts fewer activations than the {} live ones culled",
                culled.len()
            )));
        }
        for activation in &culled {
            delete_components(&mut tx, license_id, &activation.installation_id).await?;
            let silent_s = (now - activation.last_seen_at) / 1000;
            let event = ActivationEvent {
                sequence: 0,
                occurred_at: now,
                action: "cull".into(),
                installation_id: activation.installation_id.clone(),
                machine_name: activation.machine_name.clone(),
                fingerprint_digest: fingerprint::summary(&activation.fingerprint),
                outcome: format!("ok: no heartbeat for {silent_s} s (timeout {} s)", timeout / 1000),
            };
            insert_event(&mut tx, license_id, &event).await?;
            let audit = AuditRecord::new("system", "activation.culled", license_id).with_details(serde_json::json!({
                "installation_id": activation.installation_id,
                "machine_name": activation.machine_name,
                "last_seen_at": activation.last_seen_at,
                "heartbeat_timeout_ms": timeout,
            }));
            insert_audit(&mut tx, &audit, now).await?;
        }
        self.license_after_activations_changed(&mut tx, license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.tell_subscribers(license_id);
        Ok(culled
            .into_iter()
            .map(|activation| CulledActivation { activation, heartbeat_timeout_ms: timeout })
            .collect())
    }

    /// Adds live activations to a license in bulk, as though each machine had been activated:
    /// for moving installations over from another system, and for the benchmark's site
    /// licenses. One transaction; the license's count rises by as many, never past its seats.
    /// No history lines are written.
    pub async fn import_activations(
        &self,
        license_id: &str,
        activations: &[Activation],
    ) -> Result<License, ActivationStoreError> {
        let mut tx = self.begin().await?;
        let license = self
            .lock_license(&mut tx, license_id)
            .await?
            .ok_or_else(|| ActivationStoreError::LicenseNotFound(license_id.to_owned()))?;
        let raised = sqlx::query(
            "UPDATE licenses SET activations_used = activations_used + $2 WHERE license_id = $1 \
             AND activations_used + $2 <= seats",
        )
        .bind(license_id)
        .bind(activations.len() as i64)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if raised.rows_affected() == 0 {
            return Err(ActivationStoreError::LimitReached { seats: license.seats });
        }
        for chunk in activations.chunks(CHUNK) {
            let mut sql = String::from(
                "INSERT INTO activations (installation_id, license_id, fingerprint_json, machine_name, platform, \
                 product_version, activated_at, last_seen_at, deactivated_at, offline) VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let p = 2 + i * 8;
                let _ = write!(
                    sql,
                    "(${}, $1, ${}, ${}, ${}, ${}, ${}, ${}, NULL, ${})",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5,
                    p + 6,
                    p + 7
                );
            }
            let mut query = sqlx::query(&sql).bind(license_id);
            for a in chunk {
                query = query
                    .bind(&a.installation_id)
                    .bind(to_json(&a.fingerprint))
                    .bind(&a.machine_name)
                    .bind(&a.platform)
                    .bind(&a.product_version)
                    .bind(a.activated_at)
                    .bind(a.last_seen_at)
                    .bind(i64::from(a.offline));
            }
            query.execute(&mut *tx).await.map_err(map_err)?;
            let components: Vec<(&str, i64, &str)> = chunk
                .iter()
                .flat_map(|a| {
                    let count = a.fingerprint.len() as i64;
                    a.fingerprint.iter().map(move |c| (c.digest.as_str(), count, a.installation_id.as_str()))
                })
                .collect();
            for rows in components.chunks(CHUNK) {
                let mut sql = String::from(
                    "INSERT INTO activation_components (license_id, digest, component_count, installation_id) VALUES ",
                );
                for i in 0..rows.len() {
                    if i > 0 {
                        sql.push_str(", ");
                    }
                    let p = 2 + i * 3;
                    let _ = write!(sql, "($1, ${}, ${}, ${})", p, p + 1, p + 2);
                }
                let mut query = sqlx::query(&sql).bind(license_id);
                for (digest, count, installation_id) in rows {
                    query = query.bind(*digest).bind(*count).bind(*installation_id);
                }
                query.execute(&mut *tx).await.map_err(map_err)?;
            }
        }
        // The counts, raised by as many as each component gained.
        let mut counts: HashMap<(&str, i64), i64> = HashMap::new();
        for a in activations {
            for digest in distinct_digests(&a.fingerprint) {
                *counts.entry((digest, a.fingerprint.len() as i64)).or_default() += 1;
            }
        }
        let counts: Vec<((&str, i64), i64)> = counts.into_iter().collect();
        for rows in counts.chunks(CHUNK) {
            let values: Vec<String> =
                (0..rows.len()).map(|i| format!("($1, ${}, ${}, ${})", 2 + i * 3, 3 + i * 3, 4 + i * 3)).collect();
            let sql = format!(
                "INSERT INTO activation_component_counts (license_id, digest, component_count, activations) VALUES {} \
                 ON CONFLICT (license_id, digest, component_count) \
                 DO UPDATE SET activations = activation_component_counts.activations + excluded.activations",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(license_id);
            for ((digest, count), n) in rows {
                query = query.bind(*digest).bind(*count).bind(*n);
            }
            query.execute(&mut *tx).await.map_err(map_err)?;
        }
        let license = self.license_after_activations_changed(&mut tx, license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.tell_subscribers(license_id);
        Ok(license)
    }
}

#[async_trait]
impl ActivationStore for SqlStore {
    #[tracing::instrument(name = "store.activate", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn activate(
        &self,
        c: &ActivateCommand,
        usable: &UsableCheck,
    ) -> Result<ActivateOutcome, ActivationStoreError> {
        let mut tx = self.begin().await?;
        let license = self
            .lock_license(&mut tx, &c.license_id)
            .await?
            .ok_or_else(|| ActivationStoreError::LicenseNotFound(c.license_id.clone()))?;
        let action = if c.offline { "offline_activate" } else { "activate" };
        let event = |installation_id: &str, outcome: &str| ActivationEvent {
            sequence: 0,
            occurred_at: c.now,
            action: action.into(),
            installation_id: installation_id.into(),
            machine_name: c.machine_name.clone(),
            fingerprint_digest: c.fingerprint_summary.clone(),
            outcome: outcome.into(),
        };
        if let Err(refusal) = usable(&license) {
            return self.refuse(tx, &c.license_id, event("", ""), ActivationStoreError::Refused(refusal)).await;
        }
        let existing = best_live_match_on(&mut tx, &c.license_id, &c.fingerprint, c.match_threshold).await?;
        if let Some(MachineMatch { activation: mut existing, .. }) = existing {
            // The same machine: refresh what it looks like now, so gradual hardware changes keep matching.
            sqlx::query("UPDATE activations SET fingerprint_json = $1, last_seen_at = $2, machine_name = $3, product_version = $4 WHERE installation_id = $5")
                .bind(to_json(&c.fingerprint))
                .bind(c.now)
                .bind(&c.machine_name)
                .bind(&c.product_version)
                .bind(&existing.installation_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let moved = !same_components(&existing.fingerprint, &c.fingerprint);
            if moved {
                delete_components(&mut tx, &c.license_id, &existing.installation_id).await?;
                insert_components(&mut tx, &c.license_id, &existing.installation_id, &c.fingerprint).await?;
                // Validation caches must match against the new fingerprint.
                self.notify_license_change(&mut tx, &c.license_id).await?;
            }
            insert_event(&mut tx, &c.license_id, &event(&existing.installation_id, "ok: already activated")).await?;
            if c.server {
                existing.server_serial = next_server_serial(&mut tx, &c.license_id, &existing.installation_id).await?;
            }
            tx.commit().await.map_err(map_err)?;
            if moved {
                self.tell_subscribers(&c.license_id);
            }
            existing.fingerprint = c.fingerprint.clone();
            existing.last_seen_at = c.now;
            existing.machine_name = c.machine_name.clone();
            existing.product_version = c.product_version.clone();
            return Ok(ActivateOutcome::Existing(existing, license));
        }
        let raised = sqlx::query("UPDATE licenses SET activations_used = activations_used + 1 WHERE license_id = $1 AND activations_used < seats")
            .bind(&c.license_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if raised.rows_affected() == 0 {
            let refusal = ActivationStoreError::LimitReached { seats: license.seats };
            return self.refuse(tx, &c.license_id, event("", ""), refusal).await;
        }
        // A license whose time counts from its first use starts it with this activation.
        self.start_first_use_in(&mut tx, &mut license.clone(), c.now).await?;
        let activation = Activation {
            installation_id: c.installation_id.clone(),
            license_id: c.license_id.clone(),
            fingerprint: c.fingerprint.clone(),
            machine_name: c.machine_name.clone(),
            platform: c.platform.clone(),
            product_version: c.product_version.clone(),
            activated_at: c.now,
            last_seen_at: c.now,
            deactivated_at: None,
            offline: c.offline,
            server_serial: 0,
        };
        sqlx::query(
            "INSERT INTO activations (installation_id, license_id, fingerprint_json, machine_name, platform, product_version, \
             activated_at, last_seen_at, deactivated_at, offline) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)",
        )
        .bind(&activation.installation_id)
        .bind(&activation.license_id)
        .bind(to_json(&activation.fingerprint))
        .bind(&activation.machine_name)
        .bind(&activation.platform)
        .bind(&activation.product_version)
        .bind(c.now)
        .bind(c.now)
        .bind(i64::from(c.offline))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_components(&mut tx, &c.license_id, &activation.installation_id, &activation.fingerprint).await?;
        insert_event(&mut tx, &c.license_id, &event(&activation.installation_id, "ok")).await?;
        let mut activation = activation;
        if c.server {
            activation.server_serial = next_server_serial(&mut tx, &c.license_id, &activation.installation_id).await?;
        }
        let license = self.license_after_activations_changed(&mut tx, &c.license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.tell_subscribers(&c.license_id);
        Ok(ActivateOutcome::New(activation, license))
    }

    #[tracing::instrument(name = "store.deactivate", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn deactivate(&self, c: &DeactivateCommand) -> Result<(Activation, License), ActivationStoreError> {
        self.deactivate_with(c, None).await
    }

    #[tracing::instrument(name = "store.deactivate", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn deactivate_checked(
        &self,
        c: &DeactivateCommand,
        usable: &UsableCheck,
    ) -> Result<(Activation, License), ActivationStoreError> {
        self.deactivate_with(c, Some(usable)).await
    }

    #[tracing::instrument(name = "store.get_activation", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn get_activation(&self, installation_id: &str) -> Result<Option<Activation>, StoreError> {
        let row = sqlx::query("SELECT * FROM activations WHERE installation_id = $1")
            .bind(installation_id)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        row.as_ref().map(activation_from_row).transpose()
    }

    #[tracing::instrument(name = "store.best_live_match", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn best_live_match(
        &self,
        license_id: &str,
        presented: &[ComponentDigest],
        min_share: f64,
    ) -> Result<Option<MachineMatch>, StoreError> {
        let mut conn = self.readers.acquire().await.map_err(map_err)?;
        best_live_match_on(&mut conn, license_id, presented, min_share).await
    }

    #[tracing::instrument(name = "store.list_activations", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_activations(&self, license_id: &str) -> Result<Vec<Activation>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM activations WHERE license_id = $1 ORDER BY activated_at DESC, installation_id")
                .bind(license_id)
                .fetch_all(&self.readers)
                .await
                .map_err(map_err)?;
        rows.iter().map(activation_from_row).collect()
    }

    #[tracing::instrument(name = "store.page_activations", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn page_activations(
        &self,
        license_id: &str,
        after: Option<&InstallationCursor>,
        limit: u32,
    ) -> Result<Vec<Activation>, StoreError> {
        // Newest first, ties by Installation ID, both descending: one backward index range scan.
        let query = match after {
            None => sqlx::query(
                "SELECT * FROM activations WHERE license_id = $1 \
                 ORDER BY activated_at DESC, installation_id DESC LIMIT $2",
            )
            .bind(license_id)
            .bind(page_limit(limit)),
            Some(after) => sqlx::query(
                "SELECT * FROM activations WHERE license_id = $1 AND (activated_at < $2 OR \
                 (activated_at = $2 AND installation_id < $3)) ORDER BY activated_at DESC, installation_id DESC LIMIT $4",
            )
            .bind(license_id)
            .bind(after.activated_at)
            .bind(after.installation_id.clone())
            .bind(page_limit(limit)),
        };
        let rows = query.fetch_all(&self.readers).await.map_err(map_err)?;
        rows.iter().map(activation_from_row).collect()
    }

    #[tracing::instrument(name = "store.list_live_activations", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_live_activations(&self, license_id: &str) -> Result<Vec<Activation>, StoreError> {
        let sql = "SELECT * FROM activations WHERE license_id = $1 AND deactivated_at IS NULL \
                   ORDER BY activated_at DESC, installation_id";
        let rows = sqlx::query(sql).bind(license_id).fetch_all(&self.readers).await.map_err(map_err)?;
        rows.iter().map(activation_from_row).collect()
    }

    #[tracing::instrument(name = "store.record_refresh", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn record_refresh(
        &self,
        installation_id: &str,
        event: &ActivationEvent,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let row =
            sqlx::query("UPDATE activations SET last_seen_at = $1 WHERE installation_id = $2 RETURNING license_id")
                .bind(now)
                .bind(installation_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let license_id = match row {
            Some(row) => get_str(&row, "license_id")?,
            None => return Err(StoreError::NotFound(format!("installation {installation_id}"))),
        };
        insert_event(&mut tx, &license_id, event).await?;
        tx.commit().await.map_err(map_err)
    }

    #[tracing::instrument(name = "store.record_heartbeat", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn record_heartbeat(
        &self,
        license_id: &str,
        installation_id: &str,
        now: Millis,
    ) -> Result<Option<Activation>, StoreError> {
        // Never moves the sighting back (a heartbeat delayed behind a later one).
        let row = sqlx::query(
            "UPDATE activations SET last_seen_at = CASE WHEN last_seen_at > $1 THEN last_seen_at ELSE $1 END \
             WHERE installation_id = $2 AND license_id = $3 AND deactivated_at IS NULL RETURNING *",
        )
        .bind(now)
        .bind(installation_id)
        .bind(license_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(activation_from_row).transpose()
    }

    #[tracing::instrument(name = "store.cull_silent_activations", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn cull_silent_activations(&self, now: Millis, max: usize) -> Result<Vec<CulledActivation>, StoreError> {
        // The licenses with a silent machine: only those requiring heartbeats are read, and in
        // each only its live activations silent past the timeout (both through partial indexes).
        let rows = sqlx::query(
            "SELECT DISTINCT l.license_id FROM licenses l JOIN activations a ON a.license_id = l.license_id \
             WHERE l.heartbeat_timeout_ms IS NOT NULL AND a.deactivated_at IS NULL \
             AND a.last_seen_at <= $1 - l.heartbeat_timeout_ms LIMIT $2",
        )
        .bind(now)
        .bind(max as i64)
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        let mut culled = vec![];
        for row in &rows {
            if culled.len() >= max {
                break;
            }
            let license_id = get_str(row, "license_id")?;
            culled.extend(self.cull_license(&license_id, now, max - culled.len()).await?);
        }
        Ok(culled)
    }

    #[tracing::instrument(name = "store.record_refusal", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn record_refusal(&self, license_id: &str, event: &ActivationEvent) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        insert_event(&mut conn, license_id, event).await
    }

    #[tracing::instrument(name = "store.list_activation_events", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_activation_events(&self, license_id: &str) -> Result<Vec<ActivationEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM activation_events WHERE license_id = $1 ORDER BY sequence")
            .bind(license_id)
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    #[tracing::instrument(name = "store.page_activation_events", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn page_activation_events(
        &self,
        license_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ActivationEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM activation_events WHERE license_id = $1 AND sequence < $2 ORDER BY sequence DESC LIMIT $3",
        )
        .bind(license_id)
        .bind(before.unwrap_or(i64::MAX))
        .bind(page_limit(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }
}
