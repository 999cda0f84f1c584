//! The queue behind `WaitForSeat`: first come, first served per license, in this process.
//! A waiter's [`Ticket`] leaves the queue when dropped, so a client that disconnects is gone at
//! once and the next one moves up.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Default)]
struct Queue {
    order: VecDeque<u64>,
    /// Woken when a seat may have been freed or the queue changed.
    changed: Arc<Notify>,
}

/// The `WaitForSeat` queues of this process, one per license.
#[derive(Clone, Default)]
pub struct WaitQueues {
    queues: Arc<Mutex<HashMap<String, Queue>>>,
    next_id: Arc<AtomicU64>,
}

/// A waiter's place in its license's queue; dropping it leaves the queue.
pub struct Ticket {
    id: u64,
    license_id: String,
    queues: WaitQueues,
    changed: Arc<Notify>,
}

impl WaitQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a waiter at the end of the license's queue.
    pub fn enqueue(&self, license_id: &str) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut queues = self.lock();
        let queue = queues.entry(license_id.to_owned()).or_default();
        queue.order.push_back(id);
        Ticket { id, license_id: license_id.to_owned(), queues: self.clone(), changed: queue.changed.clone() }
    }

    /// Wakes the waiters of a license (a seat may be free).
    pub fn notify(&self, license_id: &str) {
        if let Some(queue) = self.lock().get(license_id) {
            queue.changed.notify_waiters();
        }
    }

    /// How many wait for a license.
    pub fn waiting(&self, license_id: &str) -> usize {
        self.lock().get(license_id).map_or(0, |q| q.order.len())
    }

    /// Every license with waiters, and how many (for metrics).
    pub fn lengths(&self) -> Vec<(String, usize)> {
        self.lock().iter().filter(|(_, q)| !q.order.is_empty()).map(|(id, q)| (id.clone(), q.order.len())).collect()
    }

    /// Whether a checkout not holding `ticket` must leave the seat to the queue.
    pub fn someone_else_first(&self, license_id: &str, ticket: Option<&Ticket>) -> bool {
        match self.lock().get(license_id).and_then(|q| q.order.front().copied()) {
            None => false,
            Some(head) => ticket.is_none_or(|t| t.id != head),
        }
    }
}

impl Ticket {
    /// 1 is next.
    pub fn position(&self) -> usize {
        self.queues
            .lock()
            .get(&self.license_id)
            .and_then(|q| q.order.iter().position(|id| *id == self.id))
            .map_or(0, |p| p + 1)
    }

    /// Woken when a seat may have been freed or the queue changed.
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut queues = self.queues.lock();
        if let Some(queue) = queues.get_mut(&self.license_id) {
            queue.order.retain(|id| *id != self.id);
            queue.changed.notify_waiters();
            if queue.order.is_empty() {
                queues.remove(&self.license_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_come_first_served_and_leaving_moves_others_up() {
        let q = WaitQueues::default();
        let a = q.enqueue("l");
        let b = q.enqueue("l");
        assert_eq!((a.position(), b.position()), (1, 2));
        assert!(q.someone_else_first("l", Some(&b)));
        assert!(!q.someone_else_first("l", Some(&a)));
        assert!(q.someone_else_first("l", None));
        drop(a);
        assert_eq!(b.position(), 1);
        drop(b);
        assert_eq!(q.waiting("l"), 0);
        assert!(!q.someone_else_first("l", None));
    }
}
