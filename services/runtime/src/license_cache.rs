//! [`LicenseCache`]: what a service derives from a license (the license itself for seats; the
//! license and its live activations for validation), kept without a database read per call and
//! exact by the store's [`LicenseFeed`].
//!
//! Heartbeats, checkins and validations run every few seconds or minutes for every seat and
//! every installed product; the database reads were most of their cost (BENCHMARKS.md, "I/O
//! floor"). A checkout, which allocates, uses it only where the lease store keeps license
//! revisions ([`LicenseRevisions`], Redis): the Seat service keeps the revision read before the
//! license in its entry, and the store refuses a checkout carrying a revision older than the
//! license's. Products name their license by key, so the cache also maps key digests to license
//! IDs (a key never moves to another license).
//!
//! The cache answers only while the feed is complete: on SQLite always (this process is the
//! only writer), on PostgreSQL while the store's LISTEN connection is up; it forgets everything
//! when that changes, and a changed license is dropped. The feed is read at every use of the
//! cache, not by a task of its own, so a change this process made (reported before the changing
//! call returns) is seen by the very next lookup; a change made by another process is seen once
//! its PostgreSQL NOTIFY arrives (milliseconds). A read that began before a change cannot put the
//! old data back: every change bumps a generation, and a fill carries the generation it was
//! started under. Entries also age out after [`MAX_AGE`], a
//! bound on staleness should an event ever go missing.

use licensing_domain::store::LicenseChanged;
use licensing_domain::store::LicenseFeed;
#[cfg(doc)]
use licensing_domain::store::LicenseRevisions;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::sync::watch;

/// The longest an entry is trusted without an event.
pub const MAX_AGE: Duration = Duration::from_secs(10);

/// Entries kept at most; past it the stale ones go, then all (a full cache is only a miss).
const MAX_ENTRIES: usize = 100_000;

/// How often a fill also drops the entries too old to be served, so the cache holds about the
/// licenses used in the last [`MAX_AGE`] rather than every license ever used (an entry for
/// validation holds every live activation of its license).
const SWEEP_EVERY: Duration = MAX_AGE;

/// Values of type `V` by license ID, dropped when their license changes.
#[derive(Debug)]
pub struct LicenseCache<V> {
    state: Mutex<State<V>>,
}

#[derive(Debug)]
struct State<V> {
    /// Whether the feed reports every change; when not, nothing is served or kept.
    live: bool,
    /// Bumped by every change: a fill started under an older generation may hold stale data.
    generation: u64,
    /// License ID -> the value and when it was read.
    entries: HashMap<String, (V, Instant)>,
    /// License-key digest -> license ID. A license's key never changes, so these never go stale.
    key_owners: HashMap<String, String>,
    /// When entries too old to serve were last dropped.
    swept_at: Instant,
    /// The store's changes, read up to date whenever the state is used; `None` for a
    /// pass-through cache and once they ended (then nothing is served again).
    changes: Option<broadcast::Receiver<LicenseChanged>>,
    /// Whether the changes are complete (the store's listener is up): it decides `live`. `None`
    /// when they always are (SQLite).
    listening: Option<watch::Receiver<bool>>,
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

    /// The feed will never report a change again: serve nothing from now on.
    fn stop_serving(&mut self) {
        self.forget();
        self.live = false;
        self.changes = None;
        self.listening = None;
    }

    fn lookup(&self, license_id: &str) -> Lookup<V>
    where
        V: Clone,
    {
        match self.entries.get(license_id) {
            Some((value, at)) if self.live && at.elapsed() < MAX_AGE => Lookup::Hit(value.clone()),
            _ => Lookup::Miss(FillTicket(self.generation)),
        }
    }

    /// Applies every change reported since the last use. A feed that fell behind lost changes:
    /// forget everything. Then whether the feed is complete decides whether to serve.
    fn catch_up(&mut self) {
        while let Some(changes) = self.changes.as_mut() {
            match changes.try_recv() {
                Ok(LicenseChanged(license_id)) => self.forget_one(&license_id),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_)) => self.forget(),
                Err(TryRecvError::Closed) => self.stop_serving(),
            }
        }
        if let Some(listening) = self.listening.as_mut() {
            match listening.has_changed() {
                Ok(false) => {}
                Ok(true) => {
                    // Changes may have gone unseen around any flip (a reconnect): start over.
                    let now = *listening.borrow_and_update();
                    self.forget();
                    self.live = now;
                }
                Err(_) => self.stop_serving(),
            }
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup<V> {
    /// What the cache holds for the license (not older than `MAX_AGE`).
    Hit(V),
    /// Read it from the store, then hand it to [`LicenseCache::fill`] with this ticket.
    Miss(FillTicket),
}

/// The generation a miss was read under.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket(u64);

impl<V> Default for LicenseCache<V> {
    /// A pass-through cache: it serves nothing (no feed tells it of changes).
    fn default() -> Self {
        Self::new(None, None)
    }
}

impl<V> LicenseCache<V> {
    fn new(changes: Option<broadcast::Receiver<LicenseChanged>>, mut listening: Option<watch::Receiver<bool>>) -> Self {
        let live = changes.is_some() && listening.as_mut().is_none_or(|listening| *listening.borrow_and_update());
        Self {
            state: Mutex::new(State {
                live,
                generation: 0,
                entries: HashMap::new(),
                key_owners: HashMap::new(),
                swept_at: Instant::now(),
                changes,
                listening,
            }),
        }
    }
}

impl<V: Clone> LicenseCache<V> {
    /// A cache that follows `feed`: live while it is complete (always on SQLite; on PostgreSQL
    /// while the store's listener is up).
    pub fn following(feed: LicenseFeed) -> Self {
        Self::new(Some(feed.changes), feed.listening)
    }

    fn state(&self) -> MutexGuard<'_, State<V>> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.catch_up();
        state
    }

    /// What the cache holds for `license_id`, or a ticket to fill it after a store read.
    pub fn lookup(&self, license_id: &str) -> Lookup<V> {
        self.state().lookup(license_id)
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
        if state.entries.len() >= MAX_ENTRIES || state.swept_at.elapsed() >= SWEEP_EVERY {
            state.entries.retain(|_, (_, at)| at.elapsed() < MAX_AGE);
            state.swept_at = Instant::now();
            if state.entries.len() >= MAX_ENTRIES {
                state.entries.clear();
            }
        }
        state.entries.insert(license_id.to_owned(), (value, Instant::now()));
    }

    /// The license whose key has this digest, if one was seen, and what the cache holds for it
    /// (one look under the lock for both).
    pub fn lookup_by_key(&self, key_digest: &str) -> Option<(String, Lookup<V>)> {
        let state = self.state();
        let license_id = state.key_owners.get(key_digest)?.clone();
        let found = state.lookup(&license_id);
        Some((license_id, found))
    }

    /// Remembers that the key with this digest belongs to `license_id` (keys never move).
    pub fn remember_key_owner(&self, key_digest: String, license_id: String) {
        let mut state = self.state();
        if state.key_owners.len() >= MAX_ENTRIES {
            state.key_owners.clear();
        }
        state.key_owners.insert(key_digest, license_id);
    }

    /// Drops a license known to be out of date (as a change reported for it would).
    pub fn forget(&self, license_id: &str) {
        self.state().forget_one(license_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the tests cache for a license: a status word is enough to tell old from new.
    type Cache = LicenseCache<&'static str>;

    /// A cache following a feed that is complete by itself (as on SQLite), and the feed's sender.
    fn following_a_complete_feed(buffer: usize) -> (broadcast::Sender<LicenseChanged>, Cache) {
        let (sender, changes) = broadcast::channel(buffer);
        (sender, Cache::following(LicenseFeed { changes, listening: None }))
    }

    fn changed(sender: &broadcast::Sender<LicenseChanged>, license_id: &str) {
        sender.send(LicenseChanged(license_id.into())).unwrap();
    }

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
        let (feed, cache) = following_a_complete_feed(16);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        cache.fill(miss(&cache, "lic_b"), "lic_b", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"));
        // No task runs in between: the lookup itself reads the feed.
        changed(&feed, "lic_a");
        assert_eq!(hit(&cache, "lic_a"), None, "a changed license is read again");
        assert_eq!(hit(&cache, "lic_b"), Some("active"), "others stay");
    }

    #[test]
    fn a_read_that_began_before_a_change_does_not_put_the_old_value_back() {
        let (feed, cache) = following_a_complete_feed(16);
        let ticket = miss(&cache, "lic_a");
        // The store read returned Active, then the suspension committed and was reported...
        changed(&feed, "lic_a");
        // ...before the reader got to fill.
        cache.fill(ticket, "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "suspended");
        assert_eq!(hit(&cache, "lic_a"), Some("suspended"));
        // A read by key takes its ticket before it knows the license: the same holds.
        let ticket = cache.ticket();
        changed(&feed, "lic_a");
        cache.fill(ticket, "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None);
    }

    #[test]
    fn a_cache_without_a_feed_serves_nothing() {
        let cache = Cache::default();
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "pass-through");
    }

    #[test]
    fn entries_too_old_to_serve_are_dropped_by_a_later_fill_not_kept_until_the_cache_is_full() {
        let (_feed, cache) = following_a_complete_feed(16);
        cache.fill(miss(&cache, "lic_old"), "lic_old", "active");
        cache.fill(miss(&cache, "lic_recent"), "lic_recent", "active");
        {
            // As if lic_old was read 11 s ago and the last sweep was as long ago.
            let mut state = cache.state();
            let long_ago = Instant::now().checked_sub(MAX_AGE + Duration::from_secs(1)).expect("uptime over 11 s");
            state.entries.get_mut("lic_old").unwrap().1 = long_ago;
            state.swept_at = long_ago;
        }
        cache.fill(miss(&cache, "lic_new"), "lic_new", "active");
        let mut held: Vec<String> = cache.state().entries.keys().cloned().collect();
        held.sort();
        assert_eq!(held, ["lic_new", "lic_recent"]);
    }

    #[test]
    fn keeps_the_owners_of_keys_through_every_change() {
        let (feed, cache) = following_a_complete_feed(2);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        cache.forget("lic_a");
        assert!(matches!(cache.lookup("lic_a"), Lookup::Miss(_)), "forgotten like a changed license");
        assert!(cache.lookup_by_key("digest").is_none());
        cache.remember_key_owner("digest".into(), "lic_a".into());
        for id in ["lic_a", "lic_x", "lic_y"] {
            changed(&feed, id);
        }
        let Some((owner, Lookup::Miss(ticket))) = cache.lookup_by_key("digest") else {
            panic!("a key's license never changes, and its entry went with the change")
        };
        assert_eq!(owner, "lic_a");
        cache.fill(ticket, &owner, "suspended");
        assert!(matches!(cache.lookup_by_key("digest"), Some((_, Lookup::Hit("suspended")))), "found by key once read");
    }

    #[test]
    fn a_followed_feed_is_served_while_its_listener_is_up_even_after_falling_behind_its_changes() {
        let (feed, changes) = broadcast::channel(2);
        let (listener, listening) = watch::channel(false);
        let cache = Cache::following(LicenseFeed { changes, listening: Some(listening) });
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "no listener yet: pass-through");
        // The listener comes up, then more changes arrive than the buffer holds before the cache
        // is used again: it must still serve.
        listener.send_replace(true);
        for id in ["lic_x", "lic_y", "lic_z"] {
            changed(&feed, id);
        }
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"), "live after a lag");
        // Three changes into a buffer of two: the cache lags, and keeps nothing from before.
        for id in ["lic_x", "lic_y", "lic_z"] {
            changed(&feed, id);
        }
        assert_eq!(hit(&cache, "lic_a"), None, "lagged: nothing from before is trusted");
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"), "still live after a lag");
        // The connection drops and comes back between two uses: changes may have been missed.
        listener.send_replace(false);
        listener.send_replace(true);
        assert_eq!(hit(&cache, "lic_a"), None, "a reconnect forgets everything");
        listener.send_replace(false);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "no listener: pass-through");
        listener.send_replace(true);
        assert_eq!(hit(&cache, "lic_a"), None, "back, it starts empty");
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"));
        drop(listener);
        assert_eq!(hit(&cache, "lic_a"), None, "the listener is gone");
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "pass-through from now on");
    }

    #[test]
    fn a_feed_that_ends_is_served_no_more() {
        let (feed, cache) = following_a_complete_feed(2);
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), Some("active"));
        drop(feed);
        assert_eq!(hit(&cache, "lic_a"), None, "the feed ended");
        cache.fill(miss(&cache, "lic_a"), "lic_a", "active");
        assert_eq!(hit(&cache, "lic_a"), None, "the feed is gone: pass-through from now on");
    }
}
