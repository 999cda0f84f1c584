//! What the services tell the outside about events worth counting (metrics), without knowing how
//! they are counted: the runtime implements [`Observer`] with OpenTelemetry.

use std::sync::Arc;

/// Receives the events the services count; the runtime turns them into metrics.
pub trait Observer: Send + Sync {
    /// A checkout was refused: no seat free, or a seat policy said no (`reason` is its code).
    fn seat_denied(&self, license_id: &str, feature: &str, reason: &str);
    /// A new node-locked activation (not a retried one).
    fn activated(&self, product_code: &str);
}

/// Counts nothing: the default where no metrics are wired (tests, tools).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn seat_denied(&self, _: &str, _: &str, _: &str) {}
    fn activated(&self, _: &str) {}
}

/// The observer the services hold, shared between them.
pub type SharedObserver = Arc<dyn Observer>;

/// The default observer.
pub fn unobserved() -> SharedObserver {
    Arc::new(Unobserved)
}
