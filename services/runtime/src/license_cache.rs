//! [`LicenseCache`]: what a service derives from a license (the license itself for seats; the
//! license and its live activations for validation), kept without a database read per call and
//! exact by the store's [`LicenseEvent`] feed.
//!
//! Heartbeats, checkins and validations run every few seconds or minutes for every seat and
//! every installed product; the database reads were most of their cost (BENCHMARKS.md, "I/O
//! floor"). A checkout, which allocates, uses it only where the lease store keeps license
//! revisions ([`LicenseRevisions`], Redis): the Seat service keeps the revision read before the
//! license in its entry, and the store refuses a checkout carrying a revision older than the
//! license's. Products name their license by key, so the cache also maps key digests to license
//! IDs (a key never moves to another license).
//!
//! The cache answers only while the feed is live: it starts cold and pass-through until the
//! feed says [`LicenseEvent::Live`] (at once on SQLite, where this process is the only writer),
//! forgets everything on `Lost` and `Live`, and a `Changed` license is dropped. The feed is read
//! at every use of the cache, not by a task of its own, so a change this process made (whose
//! event is sent before the changing call returns) is seen by the very next lookup; a change made
//! by another process is seen once its PostgreSQL NOTIFY arrives (milliseconds). A read that
//! began before a change cannot put the old data back: every event bumps a generation, and a
//! fill carries the generation it was started under. Entries also age out after [`MAX_AGE`], a
//! bound on staleness should an event ever go missing.

use licensing_domain::store::LicenseEvent;
#[cfg(doc)]
use licensing_domain::store::LicenseRevisions;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{self, error::TryRecvError};

/// The longest an entry is trusted without an event.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Entries kept at most; past it the stale ones go, then all (a full cache is only a miss).
const MAX_ENTRIES: usize = 100_000;

/// Values of type `V` by license ID, dropped when their license changes.
#[derive(Debug)]
pub struct LicenseCache<V> {
    state: Mutex<State<V>>,
}

#[derive(Debug)]
struct State<V> {
    /// Whether the feed reports every change; when not, nothing is served or kept.
    live: bool,
    /// Bumped by every event: a fill started under an older generation may hold stale data.
    generation: u64,
    /// License ID -> the value and when it was read.
    entries: HashMap<String, (V, Instant)>,
    /// License-key digest -> license ID. A license's key never changes, so these never go stale.
    key_owners: HashMap<String, String>,
    /// The store's change feed, read up to date whenever the state is used; `None` once it
    /// ended (then nothing is served again) or when events come only through [`LicenseCache::apply`].
    feed: Option<broadcast::Receiver<LicenseEvent>>,
}

impl<V> State<V> {
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

    fn apply(&mut self, event: &LicenseEvent) {
        match event {
            LicenseEvent::Changed(license_id) => self.forget_one(license_id),
            LicenseEvent::Live => {
                self.forget();
                self.live = true;
            }
            LicenseEvent::Lost => {
                self.forget();
                self.live = false;
            }
        }
    }

    /// Applies every event sent since the last use. A feed that fell behind lost events: forget
    /// everything; a feed that ended will never report a change again: serve nothing.
    fn catch_up(&mut self) {
        while let Some(feed) = self.feed.as_mut() {
            match feed.try_recv() {
                Ok(event) => self.apply(&event),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Lagged(_)) => self.forget(),
                Err(TryRecvError::Closed) => {
                    self.apply(&LicenseEvent::Lost);
                    self.feed = None;
                }
            }
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<V> {
    Hit(V),
    /// Read it from the store, then hand it to [`LicenseCache::fill`] with this ticket.
    Miss(FillTicket),
}

/// The generation a miss was read under.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket(u64);

impl<V> Default for LicenseCache<V> {
    /// A pass-through cache: it serves nothing until told [`LicenseEvent::Live`].
    fn default() -> Self {
        Self::new(false, None)
    }
}

impl<V> LicenseCache<V> {
    fn new(live: bool, feed: Option<broadcast::Receiver<LicenseEvent>>) -> Self {
        Self {
            state: Mutex::new(State { live, generation: 0, entries: HashMap::new(), key_owners: HashMap::new(), feed }),
        }
    }
}

impl<V: Clone> LicenseCache<V> {
    /// A cache that answers from the start and hears of changes only through [`Self::apply`].
    pub fn live() -> Self {
        Self::new(true, None)
    }

    /// A cache that follows `feed`, live from the start when the feed is `complete` without a
    /// listener (SQLite), else from its first [`LicenseEvent::Live`].
    pub fn following(feed: broadcast::Receiver<LicenseEvent>, complete: bool) -> Self {
        Self::new(complete, Some(feed))
    }

    fn state(&self) -> MutexGuard<'_, State<V>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.catch_up();
        state
    }

    pub fn lookup(&self, license_id: &str) -> Lookup<V> {
        let state = self.state();
        match state.entries.get(license_id) {
            Some((value, at)) if state.live && at.elapsed() < MAX_AGE => Lookup::Hit(value.clone()),
            _ => Lookup::Miss(FillTicket(state.generation)),
        }
    }

    /// A ticket for reading a license whose ID is not known yet (found by key).
    pub fn ticket(&self) -> FillTicket {
        FillTicket(self.state().generation)
    }

    /// Keeps `value`, read for `license_id` after the miss that gave `ticket`, unless an event
    /// came since.
    pub fn fill(&self, ticket: FillTicket, license_id: &str, value: V) {
        let mut state = self.state();
        if !state.live || state.generation != ticket.0 {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES {
            state.entries.retain(|_, (_, at)| at.elapsed() < MAX_AGE);
            if state.entries.len() >= MAX_ENTRIES {
                state.entries.clear();
            }
        }
        state.entries.insert(license_id.to_owned(), (value, Instant::now()));
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
        self.state().apply(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the tests cache for a license: a status word is enough to tell old from new.
    type Cache = LicenseCache<&'static str>;

    fn hit(cache: &Cache, id: &str) -> Option<&'static str> {
        match cache.lookup(id) {
            Lookup::Hit(status) => Some(status),
            Lookup::Miss(_) => None,
        }
    }

    fn miss(cache: &Cache, id: &str) -> FillTicket {
        match cache.lookup(id) {
            Lookup::Miss(ticket) => ticket,
            Lookup::Hit(..) => panic!("{id} should not be cached"),
        }
    }

    #[test]
    fn serves_what_it_was_filled_with_until_that_license_changes() {
        let cache = Cache::live();
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        cache.fill(miss(&cache, "lic_b"), "lic_b", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"));
        cache.apply(&LicenseEvent::Changed("lic_a".into()));
        assert_eq!(hit(&cache, "lic_a"), None, "a changed license is read again");
        assert_eq!(hit(&cache, "lic_b"), Some("active"), "others stay");
    }

    #[test]
    fn a_read_that_began_before_a_change_does_not_put_the_old_value_back() {
        let cache = Cache::live();
        let ticket = miss(&cache, "lic_a");
        // The store read returned Active, then the suspension committed and was reported...
        cache.apply(&LicenseEvent::Changed("lic_a".into()));
        // ...before the reader got to fill.
        cache.fill(ticket, "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "suspended");
        assert_eq!(hit(&cache, "lic_a"), Some("suspended"));
        // A read by key takes its ticket before it knows the license: the same holds.
        let ticket = cache.ticket();
        cache.apply(&LicenseEvent::Changed("lic_a".into()));
        cache.fill(ticket, "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None);
    }

    #[test]
    fn answers_nothing_until_the_feed_is_live_and_forgets_everything_when_it_is_lost() {
        let cache = Cache::default();
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "not live: pass-through");
        cache.apply(&LicenseEvent::Live);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"));
        cache.apply(&LicenseEvent::Lost);
        assert_eq!(hit(&cache, "lic_a"), None);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "nothing is kept while changes may go unseen");
        cache.apply(&LicenseEvent::Live);
        assert_eq!(hit(&cache, "lic_a"), None, "back live, it starts empty");
    }

    #[test]
    fn keeps_the_owners_of_keys_through_every_event() {
        let cache = Cache::live();
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        cache.forget("lic_a");
        assert!(matches!(cache.lookup("lic_a"), Lookup::Miss(_)), "forgotten like a changed license");
        assert_eq!(cache.key_owner("digest"), None);
        cache.remember_key_owner("digest".into(), "lic_a".into());
        cache.apply(&LicenseEvent::Lost);
        assert_eq!(cache.key_owner("digest").as_deref(), Some("lic_a"), "a key's license never changes");
    }

    #[test]
    fn an_event_sent_before_a_lookup_is_seen_by_that_lookup() {
        let (sender, receiver) = broadcast::channel(16);
        let cache = Cache::following(receiver, true);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        sender.send(LicenseEvent::Changed("lic_a".into())).unwrap();
        // No task runs in between: the lookup itself reads the feed.
        assert_eq!(hit(&cache, "lic_a"), None);
    }

    #[test]
    fn a_followed_feed_goes_live_on_its_listener_and_forgets_everything_when_it_falls_behind_or_ends() {
        let (sender, receiver) = broadcast::channel(2);
        let cache = Cache::following(receiver, false);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "no listener yet: pass-through");
        sender.send(LicenseEvent::Live).unwrap();
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"));
        // Three events into a buffer of two: the cache lags, and keeps nothing from before.
        for id in ["lic_x", "lic_y", "lic_z"] {
            sender.send(LicenseEvent::Changed(id.into())).unwrap();
        }
        assert_eq!(hit(&cache, "lic_a"), None, "lagged: nothing from before is trusted");
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"), "still live after a lag");
        drop(sender);
        assert_eq!(hit(&cache, "lic_a"), None, "the feed ended");
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "the feed is gone: pass-through from now on");
    }
}
