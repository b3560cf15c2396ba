//! What the state database asks of whoever holds the subscriptions' leases (the cluster), as
//! a trait: the cluster decides who works what, state stores and checks it in each fenced
//! write. Storage does not import the cluster.

use std::any::Any;
use std::sync::Arc;

/// The lease holder of this process, seen from the state database.
pub trait Leases: Send + Sync + 'static {
    /// This node's name, for messages.
    fn node(&self) -> &str;
    /// This process's instance id, as written in `hubee_sync_lease.holder_instance`.
    fn instance(&self) -> &str;
    /// The epoch the running work on `subscription` started under, if still held.
    fn working_epoch(&self, subscription: &str) -> Option<i64>;
    /// A fenced write found the lease gone.
    fn mark_lost(&self, subscription: &str, epoch: i64);
    /// Starts work on `subscription` under its lease; the guard ends it when dropped. `Err`
    /// names the holder.
    fn work_guard(
        self: Arc<Self>,
        subscription: &str,
    ) -> Result<Box<dyn Any + Send + Sync>, String>;
    /// For the rooms above, which know the concrete holder.
    fn as_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}
