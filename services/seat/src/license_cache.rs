//! [`LicenseCache`]: licenses for the heartbeat and checkin paths without a database read per
//! call, kept exact by the store's [`LicenseEvent`] feed.
//!
//! A heartbeat needs the license only to refuse a suspended, retired or expired one, and a
//! checkin only for its linger policy; both run every few seconds for every held seat, and the
//! database read was most of their cost (BENCHMARKS.md, "I/O floor"). Checkouts use it only
//! where the lease store keeps license revisions ([`LicenseRevisions`], Redis): an entry carries
//! the revision read before the license, and the store refuses a checkout carrying a revision
//! older than the license's (raised after each committed change, before the changing call
//! returns), so a seat is never granted on a stale license; the service then reads it fresh. A
//! checkout names its license by key, so the cache also maps key digests to license IDs.
//!
//! The cache answers only while the feed is live: it starts cold and pass-through until the
//! feed says [`LicenseEvent::Live`] (at once on SQLite, where this process is the only writer),
//! forgets everything on `Lost` and `Live`, and a `Changed` license is dropped. A read that began
//! before a change cannot put the old license back: every event bumps a generation, and a fill
//! carries the generation it was started under. Entries also age out after [`MAX_AGE`], a bound
//! on staleness should an event ever go missing.

use licensing_domain::model::License;
use licensing_domain::store::LicenseEvent;
#[cfg(doc)]
use licensing_domain::store::LicenseRevisions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// The longest an entry is trusted without an event.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Entries kept at most; past it the stale ones go, then all (a full cache is only a miss).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
pub struct LicenseCache {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Whether the feed reports every change; when not, nothing is served or kept.
    live: bool,
    /// Bumped by every event: a fill started under an older generation may hold stale data.
    generation: u64,
    /// License ID -> the license, when it was read, and the lease store's revision of it read
    /// before it (when the store keeps revisions).
    entries: HashMap<String, (Arc<License>, Instant, Option<u64>)>,
    /// License-key digest -> license ID. A license's key never changes, so these never go stale.
    key_owners: HashMap<String, String>,
}

impl State {
    /// Drops every entry, and every fill begun before now.
    fn forget(&mut self) {
        self.generation += 1;
        self.entries.clear();
    }

    /// Drops one license, and every fill begun before now.
    fn forget_one(&mut self, license_id: &str) {
        self.generation += 1;
        self.entries.remove(license_id);
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// The license, and the revision read before it (see [`LicenseCache::fill`]).
    Hit(Arc<License>, Option<u64>),
    /// Read it from the store, then hand it to [`LicenseCache::fill`] with this ticket.
    Miss(FillTicket),
}

/// The generation a miss was read under.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket(u64);

impl LicenseCache {
    /// A cache that answers from the start: for a feed that is complete without a listener.
    pub fn live() -> Self {
        Self { state: Mutex::new(State { live: true, ..State::default() }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn lookup(&self, license_id: &str) -> Lookup {
        let state = self.state();
        match state.entries.get(license_id) {
            Some((license, at, revision)) if state.live && at.elapsed() < MAX_AGE => {
                Lookup::Hit(license.clone(), *revision)
            }
            _ => Lookup::Miss(FillTicket(state.generation)),
        }
    }

    /// Keeps `license` as read after the miss that gave `ticket`, unless an event came since.
    /// `revision` is the lease store's revision of the license, read before the license.
    pub fn fill(&self, ticket: FillTicket, license: &Arc<License>, revision: Option<u64>) {
        let mut state = self.state();
        if !state.live || state.generation != ticket.0 {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES {
            state.entries.retain(|_, (_, at, _)| at.elapsed() < MAX_AGE);
            if state.entries.len() >= MAX_ENTRIES {
                state.entries.clear();
            }
        }
        state.entries.insert(license.license_id.clone(), (Arc::clone(license), Instant::now(), revision));
    }

    /// The license whose key has this digest, if one was seen.
    pub fn key_owner(&self, key_digest: &str) -> Option<String> {
        self.state().key_owners.get(key_digest).cloned()
    }

    pub fn remember_key_owner(&self, key_digest: String, license_id: String) {
        let mut state = self.state();
        if state.key_owners.len() >= MAX_ENTRIES {
            state.key_owners.clear();
        }
        state.key_owners.insert(key_digest, license_id);
    }

    /// Drops a license known to be out of date (as a change event for it would).
    pub fn forget(&self, license_id: &str) {
        self.state().forget_one(license_id);
    }

    pub fn apply(&self, event: &LicenseEvent) {
        let mut state = self.state();
        match event {
            LicenseEvent::Changed(license_id) => state.forget_one(license_id),
            LicenseEvent::Live => {
                state.forget();
                state.live = true;
            }
            LicenseEvent::Lost => {
                state.forget();
                state.live = false;
            }
        }
    }

    /// Follows `events` until the sender is gone. A subscriber that fell behind lost events:
    /// it forgets everything.
    pub async fn follow(&self, mut events: broadcast::Receiver<LicenseEvent>) {
        loop {
            match events.recv().await {
                Ok(event) => self.apply(&event),
                Err(broadcast::error::RecvError::Lagged(_)) => self.state().forget(),
                Err(broadcast::error::RecvError::Closed) => {
                    self.apply(&LicenseEvent::Lost);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use licensing_domain::model::{LicenseKind, LicenseStatus};

    fn license(id: &str, status: LicenseStatus) -> Arc<License> {
        Arc::new(License {
            license_id: id.into(),
            product_code: "p".into(),
            customer_id: "c".into(),
            kind: LicenseKind::Concurrent,
            status,
            seats: 1,
            allowed_deactivations: 0,
            activations_used: 0,
            deactivations_used: 0,
            modules: vec![],
            valid_from: 0,
            expires_at: None,
            upgrades_until: None,
            associated_customer_id: None,
            portal_deactivation_counts: false,
            replaces_license_id: None,
            notes: String::new(),
            seat_policy: Default::default(),
            created_at: 0,
            updated_at: 0,
        })
    }

    fn hit(cache: &LicenseCache, id: &str) -> Option<LicenseStatus> {
        match cache.lookup(id) {
            Lookup::Hit(l, _) => Some(l.status),
            Lookup::Miss(_) => None,
        }
    }

    fn miss(cache: &LicenseCache, id: &str) -> FillTicket {
        match cache.lookup(id) {
            Lookup::Miss(ticket) => ticket,
            Lookup::Hit(..) => panic!("{id} should not be cached"),
        }
    }

    #[test]
    fn serves_what_it_was_filled_with_until_that_license_changes() {
        let cache = LicenseCache::live();
        cache.fill(miss(&cache, "lic_a"), &license("lic_a", LicenseStatus::Active), None);
        cache.fill(miss(&cache, "lic_b"), &license("lic_b", LicenseStatus::Active), None);
        assert_eq!(hit(&cache, "lic_a"), Some(LicenseStatus::Active));
        cache.apply(&LicenseEvent::Changed("lic_a".into()));
        assert_eq!(hit(&cache, "lic_a"), None, "a changed license is read again");
        assert_eq!(hit(&cache, "lic_b"), Some(LicenseStatus::Active), "others stay");
    }

    #[test]
    fn a_read_that_began_before_a_change_does_not_put_the_old_license_back() {
        let cache = LicenseCache::live();
        let ticket = miss(&cache, "lic_a");
        // The store read returned Active, then the suspension committed and was reported...
        cache.apply(&LicenseEvent::Changed("lic_a".into()));
        // ...before the reader got to fill.
        cache.fill(ticket, &license("lic_a", LicenseStatus::Active), None);
        assert_eq!(hit(&cache, "lic_a"), None);
        cache.fill(miss(&cache, "lic_a"), &license("lic_a", LicenseStatus::Suspended), None);
        assert_eq!(hit(&cache, "lic_a"), Some(LicenseStatus::Suspended));
    }

    #[test]
    fn answers_nothing_until_the_feed_is_live_and_forgets_everything_when_it_is_lost() {
        let cache = LicenseCache::default();
        cache.fill(miss(&cache, "lic_a"), &license("lic_a", LicenseStatus::Active), None);
        assert_eq!(hit(&cache, "lic_a"), None, "not live: pass-through");
        cache.apply(&LicenseEvent::Live);
        cache.fill(miss(&cache, "lic_a"), &license("lic_a", LicenseStatus::Active), None);
        assert_eq!(hit(&cache, "lic_a"), Some(LicenseStatus::Active));
        cache.apply(&LicenseEvent::Lost);
        assert_eq!(hit(&cache, "lic_a"), None);
        cache.fill(miss(&cache, "lic_a"), &license("lic_a", LicenseStatus::Active), None);
        assert_eq!(hit(&cache, "lic_a"), None, "nothing is kept while changes may go unseen");
        cache.apply(&LicenseEvent::Live);
        assert_eq!(hit(&cache, "lic_a"), None, "back live, it starts empty");
    }

    #[test]
    fn keeps_the_revision_read_with_a_license_and_the_owners_of_keys() {
        let cache = LicenseCache::live();
        cache.fill(miss(&cache, "lic_a"), &license("lic_a", LicenseStatus::Active), Some(7));
        assert!(matches!(cache.lookup("lic_a"), Lookup::Hit(_, Some(7))));
        cache.forget("lic_a");
        assert!(matches!(cache.lookup("lic_a"), Lookup::Miss(_)), "forgotten like a changed license");
        assert_eq!(cache.key_owner("digest"), None);
        cache.remember_key_owner("digest".into(), "lic_a".into());
        cache.apply(&LicenseEvent::Lost);
        assert_eq!(cache.key_owner("digest").as_deref(), Some("lic_a"), "a key's license never changes");
    }

    #[tokio::test]
    async fn follows_a_feed_and_forgets_everything_when_it_falls_behind_or_ends() {
        let cache = Arc::new(LicenseCache::live());
        let (sender, receiver) = broadcast::channel(2);
        cache.fill(miss(&cache, "lic_a"), &license("lic_a", LicenseStatus::Active), None);
        // Three events into a buffer of two: the follower lags.
        for id in ["lic_x", "lic_y", "lic_z"] {
            sender.send(LicenseEvent::Changed(id.into())).unwrap();
        }
        let follower = tokio::spawn({
            let cache = cache.clone();
            async move { cache.follow(receiver).await }
        });
        drop(sender);
        follower.await.unwrap();
        assert_eq!(hit(&cache, "lic_a"), None, "lagged, then closed: nothing is trusted");
        cache.fill(miss(&cache, "lic_a"), &license("lic_a", LicenseStatus::Active), None);
        assert_eq!(hit(&cache, "lic_a"), None, "the feed is gone: pass-through from now on");
    }
}
