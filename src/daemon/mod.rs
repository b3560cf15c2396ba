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

pub mod schedule;
pub mod signals;
pub mod task;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify, Semaphore};

use crate::app::{self, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::config::{Settings, Subscription};
use crate::hubee::HubClient;
use crate::state::StateDb;
use crate::sync::{run_cycle, Shutdown, SubscriptionCtx};

use schedule::Timing;
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
pub async fn run(settings: Settings, mut controls: mpsc::UnboundedReceiver<Control>) -> ExitCode {
    let mut timings = Vec::with_capacity(settings.subscriptions.len());
    for sub in &settings.subscriptions {
        match Timing::from_schedule(&sub.schedule) {
            Ok(t) => timings.push(t),
            Err(e) => {
                eprintln!(
                    "{}: subscription {}: {e}; fix the schedule and run `hubee-sync validate`",
                    sub.source.display(),
                    sub.name
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let state = match StateDb::open(&app::state_location(&settings)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("hubee-sync run: cannot start without its state database; nothing was received or acknowledged");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let client = match HubClient::new(app::hub_config(&settings)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            state.close().await;
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let settings = Arc::new(settings);
    let permits = Arc::new(Semaphore::new(settings.hub.max_parallel_subscriptions));
    let holder = app::holder_description("run");
    // Email (digests, alerts): its own tasks; each cycle's end pokes the alert check.
    let cycle_done = Arc::new(Notify::new());
    let tasks: Vec<Task> = settings
        .subscriptions
        .iter()
        .zip(timings)
        .map(|(sub, timing)| {
            let (stop, shutdown) = Shutdown::new();
            let work = SubscriptionWork {
                settings: settings.clone(),
                sub: sub.clone(),
                client: client.clone(),
                state: state.clone(),
                shutdown: shutdown.clone(),
                holder: holder.clone(),
                ctx: None,
                cycle_done: cycle_done.clone(),
            };
            Task::spawn(
                sub.name.clone(),
                timing,
                permits.clone(),
                (stop, shutdown),
                work,
            )
        })
        .collect();
    tracing::info!(
        config = %settings.source.display(),
        subscriptions = tasks.len(),
        schedules = %settings
            .subscriptions
            .iter()
            .map(|s| format!("{}: {}", s.name, s.schedule))
            .collect::<Vec<_>>()
            .join("; "),
        max_parallel_subscriptions = settings.hub.max_parallel_subscriptions,
        "hubee-sync run: started; every subscription runs now, then on its schedule (Europe/Paris time)"
    );
    if tasks.is_empty() {
        tracing::warn!(config = %settings.source.display(),
            "no subscription is configured: nothing to poll; add a [[subscription]] and restart");
    }

    let mail = crate::email::spawn(settings.clone(), state.clone(), cycle_done);

    let ending = supervise(tasks, &mut controls, DRAIN_TIMEOUT).await;
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

/// Waits for a stop, then stops every task and waits for them (at most `drain`). Reload
/// requests are answered here: this is where a later version swaps the set of tasks.
pub async fn supervise(
    mut tasks: Vec<Task>,
    controls: &mut mpsc::UnboundedReceiver<Control>,
    drain: Duration,
) -> Ending {
    // A stop, or the controls closed: both end the loop.
    while let Some(Control::Reload) = controls.recv().await {
        tracing::warn!(
            "SIGHUP received: reloading the configuration is not supported yet; \
             nothing changed — restart the service to apply a new configuration"
        );
    }
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

/// The real work of one subscription: builds its context (again at the next tick if that
/// failed), runs a cycle, logs the report.
struct SubscriptionWork {
    settings: Arc<Settings>,
    sub: Subscription,
    client: HubClient,
    state: StateDb,
    /// The task's stop signal, given to the context so that the cycle sees it.
    shutdown: Shutdown,
    holder: String,
    /// Built at the first cycle that can; kept afterwards (its token is cached).
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
        if self.ctx.is_none() {
            match app::subscription_ctx(
                &self.settings,
                &self.sub,
                &self.client,
                &self.state,
                self.shutdown.clone(),
                Arc::default(),
            ) {
                Ok(ctx) => self.ctx = Some(ctx),
                Err(e) => {
                    tracing::error!(subscription = %self.sub.name, error = %e,
                        "subscription cannot run this cycle; fix the cause, it is tried again at its next tick");
                    if let Err(se) = self
                        .state
                        .record_poll(&self.sub.name, false, Some(&e))
                        .await
                    {
                        tracing::error!(subscription = %self.sub.name, error = %se, "cannot record the poll outcome");
                    }
                    return;
                }
            }
        }
        let Some(ctx) = &self.ctx else { return };
        // run_cycle logs its own report (events::cycle_done).
        run_cycle(ctx, &self.holder).await;
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
