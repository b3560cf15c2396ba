//! The daemon's outbox service: replies are sent as soon as they land in `outbox/new/`,
//! between cycles, without waiting for the next one.
//!
//! One inotify watcher (the `notify` crate's `RecommendedWatcher`) watches every spool's
//! `outbox/new/` (non-recursive): one inotify instance for all subscriptions, so hundreds of
//! them cannot exhaust `fs.inotify.max_user_instances`. Its events wake the subscription
//! whose outbox changed. A rescan of every outbox every [`RESCAN_EVERY`] is the safety net for
//! events lost (queue overflow, a watch refused because `max_user_watches` is reached, no
//! inotify at all), logged once. Each wake runs [`super::run_pass`] under the subscription's
//! lock; when a cycle holds it, the pass is tried again a moment later.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Delivery, Settings};
use crate::hubee::HubClient;
use crate::shutdown::Shutdown;
use crate::state::StateDb;
use crate::sync::SubscriptionCtx;

use super::files::OutboxDirs;
use super::PassOptions;

/// The safety net: every outbox is looked at this often even without an event.
pub const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// Events that come in a burst (a folder and its files) are handled together.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A wake that found the subscription's lock held is tried again after this.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// What wakes the service.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wake {
    One(String),
    /// Events may have been lost (inotify queue overflow): look everywhere.
    All,
}

/// The inotify watcher and the outbox directories it watches.
struct Watcher {
    inner: Option<notify::RecommendedWatcher>,
    /// `outbox/new/` → subscription, shared with the watcher's thread.
    map: Arc<RwLock<HashMap<PathBuf, String>>>,
    /// Paths whose watch was refused (logged once each).
    refused: BTreeSet<PathBuf>,
}

impl Watcher {
    fn start(tx: mpsc::UnboundedSender<Wake>) -> Watcher {
        let map: Arc<RwLock<HashMap<PathBuf, String>>> = Arc::default();
        let shared = map.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            let ev = match res {
                Ok(ev) => ev,
                Err(_) => {
                    let _ = tx.send(Wake::All);
                    return;
                }
            };
            if ev.need_rescan() {
                let _ = tx.send(Wake::All);
                return;
            }
            if matches!(ev.kind, EventKind::Access(_) | EventKind::Remove(_)) {
                return;
            }
            let map = shared.read().unwrap_or_else(|p| p.into_inner());
            for p in &ev.paths {
                if let Some(name) = p.parent().and_then(|dir| map.get(dir)) {
                    let _ = tx.send(Wake::One(name.clone()));
                }
            }
        };
        let inner = match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, every = ?RESCAN_EVERY,
                    "outbox: cannot watch outbox/new/ (inotify unavailable); every outbox is rescanned periodically instead");
                None
            }
        };
        Watcher {
            inner,
            map,
            refused: BTreeSet::new(),
        }
    }

    /// Watches exactly these `(subscription, outbox/new/)` pairs.
    fn set(&mut self, wanted: &[(String, PathBuf)]) {
        let current: HashMap<PathBuf, String> = self
            .map
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        if let Some(w) = self.inner.as_mut() {
            for dir in current.keys() {
                if !wanted.iter().any(|(_, d)| d == dir) {
                    let _ = w.unwatch(dir);
                }
            }
            for (name, dir) in wanted {
                if current.contains_key(dir) {
                    continue;
                }
                if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                    if self.refused.insert(dir.clone()) {
                        tracing::warn!(subscription = %name, dir = %dir.display(), error = %e, every = ?RESCAN_EVERY,
                            "outbox: cannot watch this outbox (for lack of inotify watches, raise fs.inotify.max_user_watches); it is rescanned periodically instead");
                    }
                }
            }
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        *map = wanted.iter().map(|(n, d)| (d.clone(), n.clone())).collect();
    }
}

/// What the service needs from the daemon: the settings in force (replaced by a reload, with
/// `generation` bumped), the hub client, the state database, and who we are for the locks.
pub struct ServiceInputs {
    pub settings: Arc<RwLock<Arc<Settings>>>,
    pub generation: Arc<AtomicU64>,
    pub client: HubClient,
    pub state: StateDb,
    pub holder: String,
}

/// Starts the outbox service; it ends when `stop` fires (after the pass it may be running,
/// which itself stops between replies).
pub fn spawn(inputs: ServiceInputs, stop: Shutdown) -> JoinHandle<()> {
    tokio::spawn(service(inputs, stop))
}

fn current(settings: &RwLock<Arc<Settings>>) -> Arc<Settings> {
    settings
        .read()
        .map(|s| s.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

fn outboxes(settings: &Settings) -> Vec<(String, PathBuf)> {
    settings
        .subscriptions
        .iter()
        .filter_map(|s| match &s.delivery {
            Delivery::Spool { path, .. } => Some((s.name.clone(), OutboxDirs::of(path).new_dir())),
            Delivery::Database { .. } => None,
        })
        .collect()
}

async fn service(inputs: ServiceInputs, stop: Shutdown) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Wake>();
    let mut watcher = Watcher::start(tx.clone());
    let mut seen_generation = u64::MAX;
    let mut settings = current(&inputs.settings);
    // Contexts are built when first needed and kept (their token is cached) until a reload.
    let mut ctxs: HashMap<String, SubscriptionCtx> = HashMap::new();
    let mut rescan =
        tokio::time::interval_at(tokio::time::Instant::now() + RESCAN_EVERY, RESCAN_EVERY);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_pending: BTreeSet<String> = BTreeSet::new();
    loop {
        let generation = inputs.generation.load(Ordering::SeqCst);
        if generation != seen_generation {
            seen_generation = generation;
            settings = current(&inputs.settings);
            watcher.set(&outboxes(&settings));
            ctxs.clear();
        }
        let mut due: BTreeSet<String> = BTreeSet::new();
        let all = || outboxes(&settings).into_iter().map(|(n, _)| n);
        tokio::select! {
            _ = stop.requested() => break,
            w = rx.recv() => match w {
                Some(Wake::One(n)) => { retry_pending.remove(&n); due.insert(n); }
                Some(Wake::All) => due.extend(all()),
                None => break,
            },
            _ = rescan.tick() => due.extend(all()),
        }
        tokio::time::sleep(DEBOUNCE).await;
        while let Ok(w) = rx.try_recv() {
            match w {
                Wake::One(n) => {
                    retry_pending.remove(&n);
                    due.insert(n);
                }
                Wake::All => due.extend(all()),
            }
        }
        let mut runnable = Vec::new();
        for name in due {
            if let Some(cluster) = crate::cluster::Cluster::of(&inputs.state) {
                if !cluster.holds(&name) {
                    continue; // another node's replies (several nodes on one PostgreSQL)
                }
            }
            let Some(sub) = settings.subscriptions.iter().find(|s| s.name == name) else {
                continue;
            };
            let Delivery::Spool { path, .. } = &sub.delivery else {
                continue;
            };
            if !OutboxDirs::of(path).has_candidates() {
                continue;
            }
            if !ctxs.contains_key(&name) {
                match crate::sync::subscription_ctx(
                    &settings,
                    sub,
                    &inputs.client,
                    &inputs.state,
                    stop.clone(),
                    Arc::default(),
                ) {
                    Ok(ctx) => {
                        ctxs.insert(name.clone(), ctx);
                    }
                    Err(e) => {
                        tracing::error!(subscription = %name, error = %e,
                            "outbox: cannot send this subscription's replies; fix the cause, they are sent at its next cycle");
                        continue;
                    }
                }
            }
            let opts = PassOptions {
                retention: None,
                give_up_after: sub.quarantine_after,
            };
            runnable.push((name, opts));
        }
        let parallel = settings.hub.max_parallel_subscriptions.max(1);
        let ctxs_ref = &ctxs;
        let holder = inputs.holder.as_str();
        let busy: Vec<String> = stream::iter(runnable)
            .map(|(name, opts)| async move {
                let ctx = ctxs_ref.get(&name)?;
                let report = super::run_pass(ctx, holder, opts).await;
                report.busy.then_some(name)
            })
            .buffer_unordered(parallel)
            .filter_map(|b| async move { b })
            .collect()
            .await;
        // A cycle holds the lock (it sends the outbox itself when it ends, but a reply that
        // arrived after its pass would wait for the rescan): try again shortly.
        for name in busy {
            if retry_pending.insert(name.clone()) {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(BUSY_RETRY).await;
                    let _ = tx.send(Wake::One(name));
                });
            }
        }
    }
    tracing::debug!("outbox: watcher stopped");
}
