//! Several hubee-sync nodes on one PostgreSQL state database (issue 11): each subscription
//! is worked by one node at a time, under a lease with expiry that its holder renews.
//!
//! - [`plan`]: which leases a node takes and gives back (pure).
//! - here: [`Cluster`], this process's leases as it knows them (with a monotonic deadline
//!   per lease), the fence that every change on the hub and every progress record goes
//!   through, and the manager task that heartbeats, renews, takes and gives back.
//!
//! Why a lease and not only PostgreSQL's advisory lock: a session lock survives a paused
//! process (SIGSTOP, a frozen VM), so the other nodes could never take over, and the paused
//! process would carry on as if nothing happened when it resumes. A lease expires on the
//! database clock; its holder stops itself before the expiry (monotonic clock, with a
//! margin of a third of the TTL), and its progress is written only in a transaction that
//! checks, and share-locks, the lease with the epoch the cycle started with.
//!
//! Timings: renewal every `lease_ttl / 3`; the fence refuses a change on the hub when less
//! than `lease_ttl / 3` of the lease is left; a dead node's leases are free `lease_ttl` after
//! their last renewal, and taken at the next renewal round of a live node (so at most
//! `lease_ttl + lease_ttl / 3` after the death).

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::shutdown::Shutdown;
use crate::state::{ClusterView, Leases, StateDb};

/// The unit under which one node sends the digests and alerts (not a subscription name:
/// those are `[a-z0-9_-]+`).
pub const MAIL_UNIT: &str = "~mail";

/// What this process knows of one lease.
#[derive(Debug, Clone)]
struct Cell {
    held: bool,
    epoch: i64,
    /// Monotonic: the renewal's send time plus the TTL (the database's expiry is later).
    deadline: Instant,
    /// When this node took it (database clock, ms), for `status` and logs.
    since_ms: i64,
    /// The epoch the running cycle started under, while one runs.
    working: Option<i64>,
}

/// This process's leases. Shared by the manager task, the subscriptions' tasks, their hub
/// sessions (the fence) and the state database handle (fenced writes).
pub struct Cluster {
    node: String,
    instance: String,
    pid: i64,
    started_at_ms: i64,
    ttl: Duration,
    /// A change on the hub is refused when less than this is left of the lease.
    margin: Duration,
    /// `true` for a `run` node (heartbeats, balances); `false` for `once` (fixed set).
    balanced: bool,
    cells: Mutex<HashMap<String, Cell>>,
    /// Who holds the units this node does not, for messages ("node hubee-2").
    others: Mutex<HashMap<String, String>>,
    wakes: Mutex<HashMap<String, Arc<Notify>>>,
}

/// Held while a subscription is worked (a cycle, an outbox pass) under its lease.
pub struct WorkGuard {
    cluster: Arc<Cluster>,
    unit: String,
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.cells().get_mut(&self.unit) {
            c.working = None;
        }
    }
}

/// The state database checks the leases through this (it does not import the cluster).
impl Leases for Cluster {
    fn node(&self) -> &str {
        Cluster::node(self)
    }
    fn instance(&self) -> &str {
        Cluster::instance(self)
    }
    fn working_epoch(&self, subscription: &str) -> Option<i64> {
        Cluster::working_epoch(self, subscription)
    }
    fn mark_lost(&self, subscription: &str, epoch: i64) {
        Cluster::mark_lost(self, subscription, epoch)
    }
    fn work_guard(
        self: Arc<Self>,
        subscription: &str,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, String> {
        Cluster::begin_work(&self, subscription)
            .map(|g| Box::new(g) as Box<dyn std::any::Any + Send + Sync>)
    }
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Cluster {
    /// The cluster `state` works under, if any.
    pub fn of(state: &StateDb) -> Option<Arc<Cluster>> {
        state
            .leases()
            .and_then(|l| l.clone().as_any().downcast::<Cluster>().ok())
    }

    /// A node of `run` (`balanced`) or a `once` process (it takes only what it names).
    pub fn new(node: &str, ttl: Duration, balanced: bool) -> Arc<Cluster> {
        let pid = i64::from(std::process::id());
        let started_at_ms = crate::state::now_ms();
        let kind = if balanced { "run" } else { "once" };
        Arc::new(Cluster {
            node: node.to_string(),
            instance: format!("{node}:{pid}:{started_at_ms}:{kind}"),
            pid,
            started_at_ms,
            ttl,
            margin: ttl / 3,
            balanced,
            cells: Mutex::new(HashMap::new()),
            others: Mutex::new(HashMap::new()),
            wakes: Mutex::new(HashMap::new()),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn cells(&self) -> MutexGuard<'_, HashMap<String, Cell>> {
        self.cells.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node holds `unit` with enough of the lease left to start work.
    pub fn holds(&self, unit: &str) -> bool {
        let now = Instant::now();
        self.cells()
            .get(unit)
            .is_some_and(|c| c.held && now + self.margin < c.deadline)
    }

    /// Units held now, with their epoch and since when (database clock, ms).
    pub fn held(&self) -> Vec<(String, i64, i64)> {
        let mut v: Vec<_> = self
            .cells()
            .iter()
            .filter(|(_, c)| c.held)
            .map(|(u, c)| (u.clone(), c.epoch, c.since_ms))
            .collect();
        v.sort();
        v
    }

    /// Wakes the task of `unit` when this node takes it (so it need not wait for its tick).
    pub fn waker(&self, unit: &str) -> Arc<Notify> {
        self.wakes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(unit.to_string())
            .or_default()
            .clone()
    }

    /// Starts work on `unit` under its lease; the guard ends it. `Err` names the holder.
    pub fn begin_work(self: &Arc<Self>, unit: &str) -> Result<WorkGuard, String> {
        let now = Instant::now();
        let mut cells = self.cells();
        match cells.get_mut(unit) {
            // One task at a time in this process too (a cycle, or the outbox watcher's
            // pass), as the file lock and the advisory lock do without a cluster.
            Some(c) if c.working.is_some() => Err(format!(
                "this process (node {}), busy with another pass on it",
                self.node
            )),
            Some(c) if c.held && now + self.margin < c.deadline => {
                c.working = Some(c.epoch);
                Ok(WorkGuard {
                    cluster: self.clone(),
                    unit: unit.to_string(),
                })
            }
            _ => {
                drop(cells);
                let other = self
                    .others
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(unit)
                    .cloned();
                Err(match other {
                    Some(o) => format!("held by {o} (lease in the state database)"),
                    None => format!(
                        "this node ({}) does not hold its lease; see `hubee-sync status`",
                        self.node
                    ),
                })
            }
        }
    }

    /// The epoch the running work on `unit` started under, if that lease is still held.
    pub fn working_epoch(&self, unit: &str) -> Option<i64> {
        let now = Instant::now();
        let cells = self.cells();
        let c = cells.get(unit)?;
        match c.working {
            Some(e) if c.held && c.epoch == e && now < c.deadline => Some(e),
            _ => None,
        }
    }

    /// The fence before a change on the hub: the work's lease is held, with the same epoch,
    /// and more than the margin is left of it.
    pub fn permit(&self, unit: &str) -> Result<(), String> {
        let now = Instant::now();
        let cells = self.cells();
        let Some(c) = cells.get(unit) else {
            return Err(format!(
                "this node ({}) holds no lease on subscription {unit}",
                self.node
            ));
        };
        if !c.held || c.working != Some(c.epoch) {
            return Err(format!(
                "this node ({}) lost the lease of subscription {unit} (another node took it over); nothing more is changed on the hub by this process",
                self.node
            ));
        }
        if now + self.margin >= c.deadline {
            return Err(format!(
                "the lease of subscription {unit} on this node ({}) is about to expire or expired (not renewed: paused, or cut off from the state database); nothing more is changed on the hub until it is renewed",
                self.node
            ));
        }
        Ok(())
    }

    /// The fence for a subscription's hub session.
    pub fn fence(self: &Arc<Self>, unit: &str) -> crate::hubee::Fence {
        let me = self.clone();
        let unit = unit.to_string();
        Arc::new(move || me.permit(&unit))
    }

    /// A fenced write found the lease gone.
    pub fn mark_lost(&self, unit: &str, epoch: i64) {
        if let Some(c) = self.cells().get_mut(unit) {
            if c.epoch == epoch && c.held {
                c.held = false;
                crate::events::lease_lost(
                    unit,
                    &self.node,
                    epoch,
                    "a progress record found it taken over",
                );
            }
        }
    }

    /// After a renewal sent at `sent`: the renewed leases get a new deadline, the others
    /// held here are lost.
    fn apply_renewal(&self, renewed: &[(String, i64)], sent: Instant) {
        let mut cells = self.cells();
        for (unit, c) in cells.iter_mut() {
            if !c.held {
                continue;
            }
            if renewed.iter().any(|(u, e)| u == unit && *e == c.epoch) {
                c.deadline = sent + self.ttl;
            } else {
                c.held = false;
                crate::events::lease_lost(
                    unit,
                    &self.node,
                    c.epoch,
                    "not renewed: another node holds it",
                );
            }
        }
    }

    /// Records a lease just taken (sent at `sent`).
    fn adopt(&self, unit: &str, epoch: i64, sent: Instant, since_ms: i64) {
        let mut cells = self.cells();
        let working = cells.get(unit).and_then(|c| c.working);
        cells.insert(
            unit.to_string(),
            Cell {
                held: true,
                epoch,
                deadline: sent + self.ttl,
                since_ms,
                working,
            },
        );
        drop(cells);
        self.waker(unit).notify_one();
    }

    /// Marks `unit` given back if no work runs on it; returns its epoch then.
    fn try_release(&self, unit: &str) -> Option<i64> {
        let mut cells = self.cells();
        let c = cells.get_mut(unit)?;
        if !c.held || c.working.is_some() {
            return None;
        }
        c.held = false;
        Some(c.epoch)
    }

    fn busy(&self) -> HashSet<String> {
        self.cells()
            .iter()
            .filter(|(_, c)| c.working.is_some())
            .map(|(u, _)| u.clone())
            .collect()
    }

    fn note_others(&self, view: &ClusterView) {
        let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
        others.clear();
        for l in &view.leases {
            if let (Some(h), Some(i)) = (&l.holder, &l.holder_instance) {
                if i != &self.instance && l.expires_at_ms > view.now_ms {
                    others.insert(l.subscription.clone(), format!("node {h}"));
                }
            }
        }
    }

    /// Node start-up: refuses a node name already used by a live process; frees at once
    /// the leases of this node's previous instance if its process is gone (a restart after
    /// a crash need not wait for their expiry).
    pub async fn join(&self, state: &StateDb) -> Result<(), String> {
        let view = state.cluster_view().await.map_err(|e| e.to_string())?;
        if let Some(prev) = view.nodes.iter().find(|n| n.node == self.node) {
            let fresh = view.now_ms - prev.heartbeat_at_ms < self.ttl_ms();
            if prev.instance != self.instance {
                if fresh && pid_alive(prev.pid) {
                    return Err(format!(
                        "node name {:?} is already used by a running hubee-sync (pid {}, last heartbeat {} ms ago) on the state database {}; give each node its own [state] node_name, or stop the other one",
                        self.node,
                        prev.pid,
                        view.now_ms - prev.heartbeat_at_ms,
                        state.place()
                    ));
                }
                let freed = state
                    .free_leases_of(&prev.instance)
                    .await
                    .map_err(|e| e.to_string())?;
                if freed > 0 {
                    tracing::info!(node = %self.node, previous_pid = prev.pid, freed,
                        "this node's previous instance is gone: its leases are free at once");
                }
            }
        }
        self.beat(state).await
    }

    /// This node's heartbeat: it is alive, as of the database's clock.
    async fn beat(&self, state: &StateDb) -> Result<(), String> {
        state
            .heartbeat(
                &self.node,
                &self.instance,
                self.pid,
                self.started_at_ms,
                self.ttl_ms(),
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// One round: heartbeat, renew, then (balanced) take and give back; (fixed) take the
    /// `units` not held yet.
    pub async fn round(&self, state: &StateDb, units: &[String]) -> Result<(), String> {
        let sent = Instant::now();
        if self.balanced {
            self.beat(state).await?;
        }
        let renewed = state
            .renew_leases(&self.instance, self.ttl_ms())
            .await
            .map_err(|e| e.to_string())?;
        self.apply_renewal(&renewed, sent);
        let mut view = state.cluster_view().await.map_err(|e| e.to_string())?;
        // Leases of a dead process of this very node (a `once` or a `run` that crashed):
        // free at once, without waiting for their expiry.
        let mut freed = false;
        for l in &view.leases {
            let (Some(holder), Some(instance)) = (&l.holder, &l.holder_instance) else {
                continue;
            };
            if holder == &self.node && instance != &self.instance && l.expires_at_ms > view.now_ms {
                let pid = instance
                    .split(':')
                    .nth(1)
                    .and_then(|p| p.parse::<i64>().ok());
                if pid.is_some_and(|p| p != self.pid && !pid_alive(p)) {
                    state
                        .free_leases_of(instance)
                        .await
                        .map_err(|e| e.to_string())?;
                    freed = true;
                }
            }
        }
        if freed {
            view = state.cluster_view().await.map_err(|e| e.to_string())?;
        }
        self.note_others(&view);
        let decision = if self.balanced {
            let mut live: Vec<String> = view
                .nodes
                .iter()
                .filter(|n| view.now_ms - n.heartbeat_at_ms < self.ttl_ms())
                .map(|n| n.instance.clone())
                .collect();
            if !live.contains(&self.instance) {
                live.push(self.instance.clone());
            }
            plan::decide(&plan::Input {
                me: &self.instance,
                now_ms: view.now_ms,
                units,
                live: &live,
                ttl_ms: self.ttl_ms(),
                leases: &view.leases,
                busy: &self.busy(),
            })
        } else {
            plan::Decision {
                take: units
                    .iter()
                    .filter(|u| {
                        !self.holds(u)
                            && plan::takeable(
                                view.leases.iter().find(|l| &l.subscription == *u),
                                view.now_ms,
                            )
                    })
                    .cloned()
                    .collect(),
                release: Vec::new(),
            }
        };
        for unit in &decision.release {
            if let Some(epoch) = self.try_release(unit) {
                match state.release_lease(unit, &self.instance, epoch).await {
                    Ok(_) => crate::events::lease_released(unit, &self.node, epoch),
                    Err(e) => tracing::warn!(subscription = %unit, error = %e,
                        "cannot give a lease back; it expires by itself"),
                }
            }
        }
        for unit in &decision.take {
            let sent = Instant::now();
            match state
                .take_lease(unit, &self.node, &self.instance, self.ttl_ms())
                .await
            {
                Ok(Some(epoch)) => {
                    let before = view.leases.iter().find(|l| &l.subscription == unit);
                    let from = before.and_then(|l| l.holder.clone());
                    let waited_ms = before
                        .filter(|l| l.holder_instance.is_some())
                        .map(|l| view.now_ms - l.expires_at_ms);
                    let since = state.db_now_ms().await.unwrap_or(view.now_ms);
                    self.adopt(unit, epoch, sent, since);
                    crate::events::lease_taken(unit, &self.node, epoch, from.as_deref(), waited_ms);
                }
                Ok(None) => {} // another node was faster
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Gives every lease back (a clean stop: the others take over at once) and, for a
    /// node, removes its row.
    pub async fn leave(&self, state: &StateDb) {
        let held: Vec<(String, i64, i64)> = self.held();
        for (unit, epoch, _) in held {
            self.cells().remove(&unit);
            if let Err(e) = state.release_lease(&unit, &self.instance, epoch).await {
                tracing::warn!(subscription = %unit, error = %e, "cannot give a lease back at stop; it expires by itself");
            }
        }
        if self.balanced {
            state.forget_node(&self.node, &self.instance).await;
        }
    }
}

/// Runs rounds every `ttl / 3` until `stop`; `units` gives the current work units.
pub fn spawn_manager(
    cluster: Arc<Cluster>,
    state: StateDb,
    units: impl Fn() -> Vec<String> + Send + 'static,
    on_change: impl Fn() + Send + 'static,
    stop: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = cluster.ttl / 3;
        let mut failing_since: Option<Instant> = None;
        loop {
            let before = cluster.held();
            match cluster.round(&state, &units()).await {
                Ok(()) => {
                    if failing_since.take().is_some() {
                        tracing::info!(node = %cluster.node, "leases: the state database answers again");
                    }
                }
                Err(e) => {
                    if failing_since.is_none() {
                        failing_since = Some(Instant::now());
                        tracing::error!(node = %cluster.node, error = %e,
                            "leases: cannot renew or take leases; this node stops changing anything on the hub when its leases run out, and the other nodes take over");
                    }
                }
            }
            if cluster
                .held()
                .iter()
                .map(|(u, e, _)| (u, e))
                .ne(before.iter().map(|(u, e, _)| (u, e)))
            {
                on_change();
            }
            tokio::select! {
                _ = stop.requested() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    })
}

/// Whether a process with this pid exists on this machine.
fn pid_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_under_a_lease_lost_and_taken_again_is_still_fenced() {
        let c = Cluster::new("a", Duration::from_secs(30), true);
        c.adopt("s", 1, Instant::now(), 0);
        let guard = c.begin_work("s").unwrap();
        assert!(c.permit("s").is_ok());
        assert_eq!(c.working_epoch("s"), Some(1));
        // Lost while the cycle runs, then taken again with a new epoch.
        c.apply_renewal(&[], Instant::now());
        assert!(c.permit("s").is_err());
        c.adopt("s", 3, Instant::now(), 0);
        assert!(c.permit("s").is_err(), "the old cycle's epoch is 1");
        assert_eq!(c.working_epoch("s"), None);
        drop(guard);
        let _g = c.begin_work("s").unwrap();
        assert!(c.permit("s").is_ok());
    }

    #[test]
    fn a_unit_is_worked_by_one_task_at_a_time() {
        let c = Cluster::new("a", Duration::from_secs(30), true);
        c.adopt("s", 1, Instant::now(), 0);
        let first = c.begin_work("s").unwrap();
        let e = c.begin_work("s").err().unwrap();
        assert!(e.contains("busy with another pass"), "{e}");
        assert!(
            c.permit("s").is_ok(),
            "the first one still may change the hub"
        );
        drop(first);
        let _second = c.begin_work("s").unwrap();
    }

    #[test]
    fn a_lease_near_its_deadline_permits_nothing() {
        let c = Cluster::new("a", Duration::from_secs(3), true);
        // Renewed 2.5 s ago: 0.5 s left, below the 1 s margin.
        let long_ago = Instant::now() - Duration::from_millis(2500);
        c.adopt("s", 1, long_ago, 0);
        assert!(c.begin_work("s").is_err());
        c.adopt("s", 1, Instant::now(), 0);
        let _g = c.begin_work("s").unwrap();
        c.apply_renewal(&[("s".into(), 1)], long_ago);
        let e = c.permit("s").unwrap_err();
        assert!(e.contains("about to expire"), "{e}");
    }

    #[test]
    fn a_busy_lease_is_not_given_back() {
        let c = Cluster::new("a", Duration::from_secs(30), true);
        c.adopt("s", 1, Instant::now(), 0);
        let g = c.begin_work("s").unwrap();
        assert_eq!(c.try_release("s"), None);
        drop(g);
        assert_eq!(c.try_release("s"), Some(1));
        assert!(c.begin_work("s").is_err());
    }
}
