//! The daemon (`hubee-sync run`): every subscription on its schedule, a bounded number of
//! cycles at once, and a drain on stop.
//!
//! - [`schedule`]: when the next cycle starts (pure; Europe/Paris, daylight-saving rules).
//! - [`task`]: one subscription's task (cycle, wait for the tick, again), and the [`Cycle`]
//!   it runs.
//! - [`signals`]: the process's signals as [`Control`]s (the binary's side).
//! - here: [`run`], which builds each subscription's work and supervises the tasks.
//!
//! Stopping is an input, as in mini-redis: [`run`] takes a channel of [`Control`]s, which the
//! binary feeds from SIGTERM/SIGINT/SIGHUP and tests feed themselves.

pub mod metrics;
pub mod signals;
pub mod task;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};

use crate::config::{Settings, Subscription};
use crate::exit::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::hubee::HubClient;
use crate::shutdown::Shutdown;
use crate::state::StateDb;
use crate::sync::{run_cycle, SubscriptionCtx};
use crate::systemd::notify::Notifier;

use crate::config::cron::{self as schedule, Timing};
pub use task::{Cycle, Task};

/// How long a stop waits for running cycles before exiting anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stop waits for a mail being sent (a digest cut there is repeated next time).
pub const MAIL_STOP_BOUND: Duration = Duration::from_secs(5);

/// What the outside world asks of a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM, SIGINT: drain and exit. A second one while draining: exit at once.
    Stop,
    /// SIGHUP: reload the configuration (not yet supported: logged, nothing changes).
    Reload,
}

/// Runs the daemon until a [`Control::Stop`] (or until `controls` is closed). Exit status:
/// 0 after a stop (drained, or after [`DRAIN_TIMEOUT`]); 1 when the state database cannot be
/// opened or a second stop cut the drain short; 78 when the hub client cannot be built from
/// the configuration.
///
/// Under systemd (`Type=notify`): READY once the configuration, the state database and the
/// spools have been checked; a `STATUS=` line after every cycle; watchdog pings from the
/// supervising loop; RELOADING/READY around a SIGHUP reload; STOPPING on a stop.
pub async fn run(settings: Settings, mut controls: mpsc::UnboundedReceiver<Control>) -> ExitCode {
    let notifier = Arc::new(Notifier::from_env());
    let timings = match timings_of(&settings) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let state = match StateDb::open(&crate::state::state_location(&settings)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("hubee-sync run: cannot start without its state database; nothing was received or acknowledged");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let client = match HubClient::new(crate::config::hub_config(&settings)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            state.close().await;
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    check_spools(&settings);
    // Several nodes on PostgreSQL: leases; SQLite: this node alone (issue 11).
    let (manager_stop, manager_shutdown) = Shutdown::new();
    let state = match join_cluster(&settings, state, manager_shutdown.clone()).await {
        Ok(s) => s,
        Err((state, e)) => {
            eprintln!("{e}");
            eprintln!("hubee-sync run: not started; nothing was received or acknowledged");
            state.close().await;
            return ExitCode::from(EXIT_FAILURE);
        }
    };

    // [metrics] listen: opened before READY, so that a port taken stops the start.
    if let Err(e) = metrics::start(&settings, &timings, &state).await {
        eprintln!("{e}");
        state.close().await;
        return ExitCode::from(EXIT_FAILURE);
    }
    let board = Arc::new(Board::default());
    board.set_cluster(crate::cluster::Cluster::of(&state));
    // Email (digests, alerts): its own tasks; each cycle's end pokes the alert check.
    let cycle_done = Arc::new(Notify::new());
    let mut fleet = Fleet {
        shared: Arc::new(RwLock::new(Arc::new(settings))),
        generation: Arc::new(AtomicU64::new(0)),
        client,
        state: state.clone(),
        permits: Arc::new(Semaphore::new(1)),
        holder: crate::state::holder_description("run"),
        board: board.clone(),
        notifier: notifier.clone(),
        tasks: Vec::new(),
        retired: Vec::new(),
        cycle_done: cycle_done.clone(),
        outbox_stop: None,
    };
    let manager = crate::cluster::Cluster::of(&state).map(|cluster| {
        let shared = fleet.shared.clone();
        let (board, notifier) = (board.clone(), notifier.clone());
        crate::cluster::spawn_manager(
            cluster.clone(),
            state.clone(),
            move || units_of(&current_settings(&shared)),
            move || notifier.status(&board.line()),
            manager_shutdown.clone(),
        )
    });
    fleet.start(timings);
    let settings = fleet.settings();
    tracing::info!(
        config = %settings.source.display(),
        subscriptions = fleet.tasks.len(),
        schedules = %settings
            .subscriptions
            .iter()
            .map(|s| format!("{}: {}", s.name, s.schedule))
            .collect::<Vec<_>>()
            .join("; "),
        max_parallel_subscriptions = settings.hub.max_parallel_subscriptions,
        "hubee-sync run: started; every subscription runs now, then on its schedule (Europe/Paris time)"
    );
    if fleet.tasks.is_empty() {
        tracing::warn!(config = %settings.source.display(),
            "no subscription is configured: nothing to poll; add a [[subscription]] and reload (systemctl reload hubee-sync)");
    }
    board.set_subscriptions(settings.subscriptions.iter().map(|s| s.name.clone()));
    notifier.ready(&board.line());

    let mail = crate::email::spawn(settings.clone(), state.clone(), cycle_done);
    // Replies are sent as they land in outbox/new/, between cycles too (one inotify watcher
    // for every spool, and a periodic rescan).
    let (outbox_stop, outbox_shutdown) = Shutdown::new();
    let mut outbox = crate::outbox::watch::spawn(
        crate::outbox::watch::ServiceInputs {
            settings: fleet.shared.clone(),
            generation: fleet.generation.clone(),
            client: fleet.client.clone(),
            state: state.clone(),
            holder: fleet.holder.clone(),
        },
        outbox_shutdown,
    );
    fleet.outbox_stop = Some(outbox_stop);

    let watchdog = crate::systemd::notify::watchdog_interval();
    let ending = supervise_with(&mut fleet, &mut controls, DRAIN_TIMEOUT, watchdog).await;
    if ending == Ending::Aborted
        || tokio::time::timeout(DRAIN_TIMEOUT, &mut outbox)
            .await
            .is_err()
    {
        // Cut between two recorded steps at worst: the next start resumes the reply.
        outbox.abort();
    }
    notifier.stopping();
    manager_stop.send_replace(true);
    if let Some(m) = manager {
        let _ = m.await;
    }
    if let Some(cluster) = crate::cluster::Cluster::of(&state) {
        // Whatever the ending, nothing of ours runs any more: the others take over at once.
        cluster.leave(&state).await;
    } else {
        state
            .forget_node(&settings.state.node_name, &sqlite_instance())
            .await;
    }
    match ending {
        Ending::Aborted => ExitCode::from(EXIT_FAILURE),
        Ending::Drained | Ending::TimedOut => {
            if let Some(mail) = mail {
                mail.stop(MAIL_STOP_BOUND).await;
            }
            state.close().await;
            tracing::info!("hubee-sync run: stopped");
            ExitCode::from(EXIT_OK)
        }
    }
}

fn current_settings(shared: &RwLock<Arc<Settings>>) -> Arc<Settings> {
    shared
        .read()
        .map(|s| s.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

/// What the nodes share out: every subscription, and the mail (digests, alerts) when
/// `[email]` is configured.
fn units_of(settings: &Settings) -> Vec<String> {
    let mut units: Vec<String> = settings
        .subscriptions
        .iter()
        .map(|s| s.name.clone())
        .collect();
    if settings.email.is_some() {
        units.push(crate::cluster::MAIL_UNIT.to_string());
    }
    units
}

/// This process's identity in `hubee_sync_node` when the state is SQLite.
fn sqlite_instance() -> String {
    format!("pid {}", std::process::id())
}

/// PostgreSQL: this node joins the others (a node name used by a live process is refused)
/// and takes its first share of the leases before any cycle starts. SQLite: refuses to
/// start if another node (another node name) used the same file within `lease_ttl`, then
/// heartbeats so that a second node is refused in turn.
async fn join_cluster(
    settings: &Settings,
    state: StateDb,
    stop: Shutdown,
) -> Result<StateDb, (StateDb, String)> {
    let node = settings.state.node_name.clone();
    let ttl = settings.state.lease_ttl;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    if state.is_postgres() {
        let cluster = crate::cluster::Cluster::new(&node, ttl, true);
        if let Err(e) = cluster.join(&state).await {
            return Err((state, e));
        }
        let state = state.with_cluster(cluster.clone());
        if let Err(e) = cluster.round(&state, &units_of(settings)).await {
            tracing::error!(node = %node, error = %e, "leases: the first round failed; retried in a moment");
        }
        tracing::info!(node = %node, instance = %cluster.instance(), lease_ttl = ?ttl,
            held = %cluster.held().iter().map(|(u, _, _)| u.as_str()).collect::<Vec<_>>().join(", "),
            "this node shares the subscriptions with the other nodes of the PostgreSQL state database");
        return Ok(state);
    }
    let view = match state.cluster_view().await {
        Ok(v) => v,
        Err(e) => return Err((state, e.to_string())),
    };
    if let Some(other) = view
        .nodes
        .iter()
        .find(|n| n.node != node && view.now_ms - n.heartbeat_at_ms < ttl_ms)
    {
        let e = format!(
            "the SQLite state database {} is already used by node {:?} (pid {}, last heartbeat {} s ago), and this node is {node:?}: SQLite serves a single node; to run several nodes, put the state in PostgreSQL ([state] url = \"postgres://…\"), or stop the other node",
            state.place(),
            other.node,
            other.pid,
            (view.now_ms - other.heartbeat_at_ms) / 1000
        );
        return Err((state, e));
    }
    let pid = i64::from(std::process::id());
    let started = crate::state::now_ms();
    if let Err(e) = state
        .heartbeat(&node, &sqlite_instance(), pid, started, ttl_ms)
        .await
    {
        return Err((state, e.to_string()));
    }
    let hb = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.requested() => return,
                _ = tokio::time::sleep(ttl / 3) => {}
            }
            if let Err(e) = hb
                .heartbeat(&node, &sqlite_instance(), pid, started, ttl_ms)
                .await
            {
                tracing::warn!(error = %e, "cannot record this node's heartbeat");
            }
        }
    });
    Ok(state)
}

fn timings_of(settings: &Settings) -> Result<Vec<Timing>, String> {
    settings
        .subscriptions
        .iter()
        .map(|sub| {
            Timing::from_schedule(&sub.schedule).map_err(|e| {
                format!(
                    "{}: subscription {}: {e}; fix the schedule and run `hubee-sync validate`",
                    sub.source.display(),
                    sub.name
                )
            })
        })
        .collect()
}

/// Start-up check of every spool: a subscription whose spool is unusable is reported now (it
/// is retried at each of its cycles); the others run.
fn check_spools(settings: &Settings) {
    for sub in &settings.subscriptions {
        if let crate::config::Delivery::Spool { path, group } = &sub.delivery {
            if let Err(e) = crate::deliver::Spool::open(path, group.as_deref()) {
                tracing::error!(subscription = %sub.name, error = %e,
                    "spool unusable at start; this subscription fails until it is fixed");
            }
        }
    }
}

/// What `systemctl status` shows: "3 abonnements, dernier passage 10:42, 2 reçus, 0 en erreur".
#[derive(Default)]
pub struct Board {
    inner: std::sync::Mutex<BoardInner>,
    /// Several nodes: which subscriptions this node holds, for the line.
    cluster: std::sync::Mutex<Option<Arc<crate::cluster::Cluster>>>,
}

#[derive(Default)]
struct BoardInner {
    /// Subscription → whether its last cycle failed.
    subs: std::collections::BTreeMap<String, bool>,
    last_pass: Option<chrono::DateTime<chrono::Utc>>,
    received: u64,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, BoardInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_cluster(&self, cluster: Option<Arc<crate::cluster::Cluster>>) {
        *self.cluster.lock().unwrap_or_else(|p| p.into_inner()) = cluster;
    }

    pub fn set_subscriptions(&self, names: impl Iterator<Item = String>) {
        let mut b = self.lock();
        let old = std::mem::take(&mut b.subs);
        b.subs = names
            .map(|n| {
                let failing = old.get(&n).copied().unwrap_or(false);
                (n, failing)
            })
            .collect();
    }

    pub fn record(&self, report: &crate::sync::CycleReport) {
        let mut b = self.lock();
        b.last_pass = Some(chrono::Utc::now());
        b.received += report.received as u64;
        b.subs.insert(report.subscription.clone(), !report.ok());
    }

    /// The French status line.
    pub fn line(&self) -> String {
        let b = self.lock();
        let n = b.subs.len();
        if n == 0 {
            return "aucun abonnement configuré".into();
        }
        let last = b
            .last_pass
            .map(|t| t.with_timezone(&schedule::ZONE).format("%H:%M").to_string())
            .unwrap_or_else(|| "aucun".into());
        let errors = b.subs.values().filter(|f| **f).count();
        let line = format!(
            "{n} abonnement{}, dernier passage {last}, {} reçu{}, {errors} en erreur",
            if n > 1 { "s" } else { "" },
            b.received,
            if b.received > 1 { "s" } else { "" },
        );
        let cluster = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        match cluster.as_ref() {
            Some(c) => {
                let held: Vec<String> = c
                    .held()
                    .into_iter()
                    .map(|(u, _, _)| u)
                    .filter(|u| b.subs.contains_key(u))
                    .collect();
                format!(
                    "{line}; nœud {} : {} tenu{} ({})",
                    c.node(),
                    held.len(),
                    if held.len() > 1 { "s" } else { "" },
                    if held.is_empty() {
                        "aucun".to_string()
                    } else {
                        held.join(", ")
                    }
                )
            }
            None => line,
        }
    }
}

/// The running subscriptions, and what a reload needs to change them.
pub struct Fleet {
    /// The settings in force; replaced by a reload.
    shared: Arc<RwLock<Arc<Settings>>>,
    /// Bumped by every reload: each subscription rebuilds its context (and re-reads its
    /// secret) before its next cycle.
    generation: Arc<AtomicU64>,
    client: HubClient,
    state: StateDb,
    permits: Arc<Semaphore>,
    holder: String,
    board: Arc<Board>,
    notifier: Arc<Notifier>,
    tasks: Vec<(Subscription, Task)>,
    /// Tasks ended by a reload that may still be finishing a cycle (joined at stop).
    retired: Vec<Task>,
    /// Notified after each cycle (the email room's alert check).
    cycle_done: Arc<Notify>,
    /// Stops the outbox service (`outbox::watch`) when the drain starts.
    outbox_stop: Option<tokio::sync::watch::Sender<bool>>,
}

impl Fleet {
    fn settings(&self) -> Arc<Settings> {
        self.shared
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn start(&mut self, timings: Vec<Timing>) {
        let settings = self.settings();
        self.permits = Arc::new(Semaphore::new(settings.hub.max_parallel_subscriptions));
        for (sub, timing) in settings.subscriptions.iter().zip(timings) {
            self.spawn(sub, timing);
        }
    }

    fn spawn(&mut self, sub: &Subscription, timing: Timing) {
        let (stop, shutdown) = Shutdown::new();
        let work = SubscriptionWork {
            shared: self.shared.clone(),
            generation: self.generation.clone(),
            built_for: u64::MAX,
            name: sub.name.clone(),
            client: self.client.clone(),
            state: self.state.clone(),
            shutdown: shutdown.clone(),
            holder: self.holder.clone(),
            board: self.board.clone(),
            notifier: self.notifier.clone(),
            ctx: None,
            cycle_done: self.cycle_done.clone(),
        };
        let task = Task::spawn_woken(
            sub.name.clone(),
            timing,
            self.permits.clone(),
            (stop, shutdown),
            work,
            crate::cluster::Cluster::of(&self.state).map(|c| c.waker(&sub.name)),
        );
        self.tasks.push((sub.clone(), task));
    }

    /// SIGHUP: reads the configuration again. A broken one is refused, its errors logged,
    /// and the running one kept. Otherwise: removed subscriptions end after their current
    /// cycle, added ones start, the others pick up the new settings (and their secret files,
    /// re-read) at their next cycle. In-flight work is never interrupted.
    pub fn reload(&mut self) {
        self.notifier.reloading();
        let path = self.settings().source.clone();
        let new = match crate::config::load(&path) {
            Ok(s) => s,
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(error = %e, "reload refused: configuration error");
                }
                tracing::error!(config = %path.display(), errors = errors.0.len(),
                    "reload refused: the configuration has errors; the running one is kept (fix it, `hubee-sync validate`, then reload)");
                self.notifier.ready(&self.board.line());
                return;
            }
        };
        let timings = match timings_of(&new) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "reload refused; the running configuration is kept");
                self.notifier.ready(&self.board.line());
                return;
            }
        };
        check_spools(&new);
        let old_tasks = std::mem::take(&mut self.tasks);
        let new = Arc::new(new);
        if let Ok(mut w) = self.shared.write() {
            *w = new.clone();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        metrics::configure(&new, &timings, &self.state);
        let (mut added, mut removed, mut kept) = (0, 0, 0);
        let mut keep: Vec<(Subscription, Task)> = Vec::new();
        for (old_sub, task) in old_tasks {
            match new.subscriptions.iter().find(|s| s.name == old_sub.name) {
                Some(s) if s.schedule == old_sub.schedule => {
                    kept += 1;
                    keep.push((s.clone(), task));
                }
                _ => {
                    // Removed, or its schedule changed: this task ends after its cycle.
                    task.retire();
                    removed += 1;
                    self.retired.push(task);
                }
            }
        }
        self.tasks = keep;
        for (sub, timing) in new.subscriptions.iter().zip(timings) {
            if !self.tasks.iter().any(|(s, _)| s.name == sub.name) {
                self.spawn(sub, timing);
                added += 1;
            }
        }
        self.board
            .set_subscriptions(new.subscriptions.iter().map(|s| s.name.clone()));
        tracing::info!(config = %path.display(), kept, added, removed,
            "configuration reloaded; secrets are read again before each subscription's next cycle");
        self.notifier.ready(&self.board.line());
    }
}

/// How the supervision ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every task ended after the stop.
    Drained,
    /// Some cycles were still running after the drain bound; they were cut.
    TimedOut,
    /// A second stop came during the drain; running cycles were cut.
    Aborted,
}

/// Waits for a stop (a reload is only logged here: [`supervise_with`] does reloads), then
/// stops every task and waits for them (at most `drain`).
pub async fn supervise(
    tasks: Vec<Task>,
    controls: &mut mpsc::UnboundedReceiver<Control>,
    drain: Duration,
) -> Ending {
    // A stop, or the controls closed: both end the loop.
    while let Some(Control::Reload) = controls.recv().await {
        tracing::warn!("SIGHUP received: this supervisor does not reload; nothing changed");
    }
    drain_tasks(tasks, controls, drain).await
}

/// The daemon's loop: answers reloads, pings the watchdog while it turns, and on a stop
/// drains every task.
pub async fn supervise_with(
    fleet: &mut Fleet,
    controls: &mut mpsc::UnboundedReceiver<Control>,
    drain: Duration,
    watchdog: Option<Duration>,
) -> Ending {
    let mut ticker = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stall = test_stall_after();
    let started = Instant::now();
    loop {
        tokio::select! {
            c = controls.recv() => match c {
                Some(Control::Reload) => fleet.reload(),
                Some(Control::Stop) | None => break,
            },
            _ = ticker.tick(), if watchdog.is_some() => {
                if let Some(after) = stall {
                    if started.elapsed() >= after {
                        // Test hook (debug builds only): the loop is "stuck" from now on.
                        tracing::warn!("test hook: the supervising loop stalls");
                        std::future::pending::<()>().await;
                    }
                }
                fleet.notifier.watchdog();
            }
        }
    }
    fleet.notifier.stopping();
    if let Some(stop) = &fleet.outbox_stop {
        stop.send_replace(true);
    }
    let mut tasks: Vec<Task> = fleet.tasks.drain(..).map(|(_, t)| t).collect();
    tasks.append(&mut fleet.retired);
    drain_tasks(tasks, controls, drain).await
}

/// `HUBEE_SYNC_TEST_STALL_AFTER=SECONDS` (debug builds only): the supervising loop stops
/// turning after that long, so tests can see the watchdog pings stop.
fn test_stall_after() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let secs: f64 = std::env::var("HUBEE_SYNC_TEST_STALL_AFTER")
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(secs.max(0.0)))
}

/// Stops every task and waits for them, at most `drain`; a second stop cuts the wait.
async fn drain_tasks(
    mut tasks: Vec<Task>,
    controls: &mut mpsc::UnboundedReceiver<Control>,
    drain: Duration,
) -> Ending {
    let running: Vec<&str> = tasks
        .iter()
        .filter(|t| t.is_running_a_cycle())
        .map(|t| t.name.as_str())
        .collect();
    tracing::info!(
        running = %running.join(", "),
        bound = ?drain,
        "stop requested: no new cycle starts; downloads in flight are abandoned (nothing published or \
         acknowledged for them); waiting for running cycles to finish their current step"
    );
    for t in &tasks {
        t.stop();
    }
    let started = Instant::now();
    let ending = {
        let all_done = async {
            for t in &mut tasks {
                t.join().await;
            }
        };
        tokio::select! {
            _ = all_done => Ending::Drained,
            _ = tokio::time::sleep(drain) => Ending::TimedOut,
            _ = second_stop(controls) => Ending::Aborted,
        }
    };
    let cut: Vec<&str> = tasks
        .iter()
        .filter(|t| !t.is_finished())
        .map(|t| t.name.as_str())
        .collect();
    match ending {
        Ending::Drained => {
            tracing::info!(took = ?started.elapsed(), "every running cycle has finished")
        }
        Ending::TimedOut => tracing::warn!(
            still_running = %cut.join(", "),
            bound = ?drain,
            "cycles still running after the drain bound are cut; the state database makes this \
             safe: what they had not acknowledged is received again at the next start"
        ),
        Ending::Aborted => tracing::warn!(
            still_running = %cut.join(", "),
            "second stop signal: exiting at once; what the cut cycles had not acknowledged is \
             received again at the next start"
        ),
    }
    for t in &tasks {
        t.abort();
    }
    ending
}

/// Resolves on a second [`Control::Stop`]; never when the channel is closed.
async fn second_stop(controls: &mut mpsc::UnboundedReceiver<Control>) {
    loop {
        match controls.recv().await {
            Some(Control::Stop) => return,
            Some(Control::Reload) => {
                tracing::info!("SIGHUP ignored: the daemon is stopping")
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// The real work of one subscription: builds its context (again after a reload, or at the
/// next tick if that failed), runs a cycle, updates the status line.
struct SubscriptionWork {
    shared: Arc<RwLock<Arc<Settings>>>,
    generation: Arc<AtomicU64>,
    /// The generation the context was built for.
    built_for: u64,
    name: String,
    client: HubClient,
    state: StateDb,
    /// The task's stop signal, given to the context so that the cycle sees it.
    shutdown: Shutdown,
    holder: String,
    board: Arc<Board>,
    notifier: Arc<Notifier>,
    /// Built at the first cycle that can; kept until a reload (its token is cached).
    ctx: Option<SubscriptionCtx>,
    /// Notified after each cycle, so that the email room looks at alerts at once.
    cycle_done: Arc<Notify>,
}

impl Cycle for SubscriptionWork {
    async fn run(&mut self) {
        self.cycle().await;
        self.cycle_done.notify_one();
    }
}

impl SubscriptionWork {
    async fn cycle(&mut self) {
        if let Some(cluster) = crate::cluster::Cluster::of(&self.state) {
            if !cluster.holds(&self.name) {
                // Another node's (or nobody's yet): this node's lease manager wakes this
                // task when it takes the subscription.
                tracing::debug!(subscription = %self.name, "held by another node: no cycle here");
                return;
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        if self.ctx.is_none() || self.built_for != generation {
            let settings = self
                .shared
                .read()
                .map(|s| s.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            let Some(sub) = settings.subscriptions.iter().find(|s| s.name == self.name) else {
                return; // removed by a reload; the task is retiring
            };
            match crate::sync::subscription_ctx(
                &settings,
                sub,
                &self.client,
                &self.state,
                self.shutdown.clone(),
                Arc::default(),
            ) {
                Ok(ctx) => {
                    self.ctx = Some(ctx);
                    self.built_for = generation;
                }
                Err(e) => {
                    self.ctx = None;
                    tracing::error!(subscription = %self.name, error = %e,
                        "subscription cannot run this cycle; fix the cause, it is tried again at its next tick");
                    if let Err(se) = self.state.record_poll(&self.name, false, Some(&e)).await {
                        tracing::error!(subscription = %self.name, error = %se, "cannot record the poll outcome");
                    }
                    self.board.record(&crate::sync::CycleReport {
                        subscription: self.name.clone(),
                        fatal: Some(e),
                        ..Default::default()
                    });
                    self.notifier.status(&self.board.line());
                    return;
                }
            }
        }
        let Some(ctx) = &self.ctx else { return };
        // run_cycle logs its own report (events::cycle_done).
        let report = run_cycle(ctx, &self.holder).await;
        self.board.record(&report);
        self.notifier.status(&self.board.line());
        // Then the outbox (it takes the lock the cycle just released); it logs each reply.
        if !ctx.shutdown.is_requested() {
            let settings = self
                .shared
                .read()
                .map(|s| s.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            let opts = crate::outbox::outbox_options(&settings, &self.name);
            crate::outbox::run_pass(ctx, &self.holder, opts).await;
        }
        metrics::after_cycle(&self.state, &self.name).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// A cycle that ignores the stop signal and takes `takes`.
    struct Stubborn(Duration);

    impl Cycle for Stubborn {
        async fn run(&mut self) {
            tokio::time::sleep(self.0).await;
        }
    }

    fn stubborn_task(name: &str, takes: Duration) -> Task {
        Task::spawn(
            name.into(),
            Timing::Every(Duration::from_secs(60)),
            Arc::new(Semaphore::new(4)),
            Shutdown::new(),
            Stubborn(takes),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_running_cycles() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tasks = vec![stubborn_task("a", Duration::from_secs(5))];
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t0 = Instant::now();
        tx.send(Control::Reload).unwrap();
        tx.send(Control::Stop).unwrap();
        let ending = supervise(tasks, &mut rx, Duration::from_secs(30)).await;
        assert_eq!(ending, Ending::Drained);
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_millis(4900) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_is_bounded() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tasks = vec![stubborn_task("forever", Duration::from_secs(3600))];
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t0 = Instant::now();
        tx.send(Control::Stop).unwrap();
        let ending = supervise(tasks, &mut rx, Duration::from_secs(30)).await;
        assert_eq!(ending, Ending::TimedOut);
        assert_eq!(Instant::now() - t0, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn second_stop_ends_the_drain_at_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let tasks = vec![stubborn_task("forever", Duration::from_secs(3600))];
        tokio::time::sleep(Duration::from_millis(1)).await;
        let t0 = Instant::now();
        tx.send(Control::Stop).unwrap();
        let tx2 = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tx2.send(Control::Stop).unwrap();
        });
        let ending = supervise(tasks, &mut rx, Duration::from_secs(30)).await;
        assert_eq!(ending, Ending::Aborted);
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn closing_the_controls_is_a_stop() {
        let (tx, mut rx) = mpsc::unbounded_channel::<Control>();
        let tasks = vec![stubborn_task("a", Duration::from_secs(1))];
        drop(tx);
        assert_eq!(
            supervise(tasks, &mut rx, Duration::from_secs(30)).await,
            Ending::Drained
        );
    }
}
