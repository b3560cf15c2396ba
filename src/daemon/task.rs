//! One subscription's scheduling task: run a cycle, wait for the next tick, again, until told
//! to stop. The task awaits its own cycle, so a subscription's next cycle can never start
//! while its previous one still runs; a shared [`Semaphore`] bounds how many cycles run at
//! once across subscriptions.
//!
//! What a cycle does is behind [`Cycle`], so that the scheduling can be tested with cycles
//! that only take time (see the tests below, on tokio's paused clock).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::clock::sleep_until_wall;
use crate::config::cron::Timing;
use crate::shutdown::Shutdown;

/// One cycle of one subscription.
pub trait Cycle: Send + 'static {
    /// Runs one cycle to its end. It watches the stop signal itself (the sync room abandons
    /// downloads in flight and starts no new item); the task never cancels it.
    fn run(&mut self) -> impl Future<Output = ()> + Send;
}

/// A running subscription task, as the supervisor sees it.
pub struct Task {
    pub name: String,
    /// Tells this task (and the cycle it runs) to stop. One per task, so that a reload can
    /// later stop one subscription without touching the others.
    stop: watch::Sender<bool>,
    /// Tells this task to end after its current cycle, without touching that cycle (a
    /// reload that removes or replaces the subscription).
    retire: watch::Sender<bool>,
    /// `true` while a cycle runs (for the log line of a drain that timed out).
    running: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl Task {
    /// Starts a subscription's task: a first cycle at once (catch-up after a start), then
    /// one per tick of `timing`. `stop`/`shutdown` is the pair from [`Shutdown::new`]; the
    /// cycle must watch the same `shutdown`.
    pub fn spawn(
        name: String,
        timing: Timing,
        permits: Arc<Semaphore>,
        pair: (watch::Sender<bool>, Shutdown),
        cycle: impl Cycle,
    ) -> Task {
        Task::spawn_woken(name, timing, permits, pair, cycle, None)
    }

    /// As [`Task::spawn`]; `wake` also starts a cycle at once (several nodes: this node
    /// just took the subscription's lease).
    pub fn spawn_woken(
        name: String,
        timing: Timing,
        permits: Arc<Semaphore>,
        (stop, shutdown): (watch::Sender<bool>, Shutdown),
        cycle: impl Cycle,
        wake: Option<Arc<tokio::sync::Notify>>,
    ) -> Task {
        let running = Arc::new(AtomicBool::new(false));
        let (retire, retired) = watch::channel(false);
        let handle = tokio::spawn(schedule_loop(
            name.clone(),
            timing,
            permits,
            Shutdown::merge(&shutdown, retired),
            running.clone(),
            cycle,
            wake,
        ));
        Task {
            name,
            stop,
            retire,
            running,
            handle,
        }
    }

    /// Asks the task to stop: no new cycle starts; a running one abandons its downloads.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Asks the task to end after the cycle it may be running, which goes on undisturbed.
    pub fn retire(&self) {
        self.retire.send_replace(true);
    }

    pub fn is_running_a_cycle(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the task to end.
    pub async fn join(&mut self) {
        if let Err(e) = (&mut self.handle).await {
            if e.is_panic() {
                tracing::error!(subscription = %self.name, "the subscription's task panicked; this is a bug, please report it");
            }
        }
    }

    /// Ends the task now, wherever it is (the state database makes that safe).
    pub fn abort(&self) {
        self.handle.abort();
    }
}

/// `stop` fires on a stop or a retirement: it ends the loop's waits. The cycle watches only
/// the task's stop signal, which a retirement leaves alone.
async fn schedule_loop(
    name: String,
    timing: Timing,
    permits: Arc<Semaphore>,
    stop: Shutdown,
    running: Arc<AtomicBool>,
    mut cycle: impl Cycle,
    wake: Option<Arc<tokio::sync::Notify>>,
) {
    let woken = || async {
        match &wake {
            Some(w) => w.notified().await,
            None => std::future::pending::<()>().await,
        }
    };
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.requested() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return, // semaphore closed: the daemon is going away
            },
        };
        if stop.is_requested() {
            return;
        }
        running.store(true, Ordering::SeqCst);
        tracing::debug!(subscription = %name, "cycle starting");
        cycle.run().await;
        running.store(false, Ordering::SeqCst);
        drop(permit);

        match &timing {
            Timing::Every(d) => {
                tracing::debug!(subscription = %name, every = ?d, "next cycle after the interval");
                tokio::select! {
                    _ = stop.requested() => return,
                    _ = tokio::time::sleep(*d) => {}
                    _ = woken() => {}
                }
            }
            Timing::Cron(c) => {
                let Some(at) = c.next_after(Utc::now()) else {
                    tracing::warn!(subscription = %name, schedule = %c,
                        "the schedule never fires again; this subscription is idle until the configuration changes");
                    stop.requested().await;
                    return;
                };
                tracing::debug!(subscription = %name, next = %at.with_timezone(&crate::config::cron::ZONE), "next cycle");
                tokio::select! {
                    _ = stop.requested() => return,
                    _ = sleep_until_wall(at) => {}
                    _ = woken() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::time::Instant;

    /// Which cycle ran, from when to when.
    type RunLog = Arc<Mutex<Vec<(&'static str, Instant, Instant)>>>;

    /// A cycle that only takes time, and records when it ran.
    struct Sleeper {
        name: &'static str,
        takes: Duration,
        log: RunLog,
        busy: Arc<std::sync::atomic::AtomicUsize>,
        max_busy: Arc<std::sync::atomic::AtomicUsize>,
        shutdown: Option<Shutdown>,
    }

    impl Cycle for Sleeper {
        async fn run(&mut self) {
            let now = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_busy.fetch_max(now, Ordering::SeqCst);
            let start = Instant::now();
            match &self.shutdown {
                // A cycle that honours the stop signal (like the sync room's).
                Some(s) => tokio::select! {
                    _ = tokio::time::sleep(self.takes) => {}
                    _ = s.requested() => {}
                },
                None => tokio::time::sleep(self.takes).await,
            }
            self.busy.fetch_sub(1, Ordering::SeqCst);
            self.log
                .lock()
                .unwrap()
                .push((self.name, start, Instant::now()));
        }
    }

    struct Bench {
        log: RunLog,
        busy: Arc<std::sync::atomic::AtomicUsize>,
        max_busy: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Bench {
        fn new() -> Bench {
            Bench {
                log: Default::default(),
                busy: Default::default(),
                max_busy: Default::default(),
            }
        }

        fn task(
            &self,
            name: &'static str,
            every: Duration,
            takes: Duration,
            permits: &Arc<Semaphore>,
        ) -> Task {
            let (tx, shutdown) = Shutdown::new();
            let cycle = Sleeper {
                name,
                takes,
                log: self.log.clone(),
                busy: self.busy.clone(),
                max_busy: self.max_busy.clone(),
                shutdown: Some(shutdown.clone()),
            };
            Task::spawn(
                name.into(),
                Timing::Every(every),
                permits.clone(),
                (tx, shutdown),
                cycle,
            )
        }

        fn runs_of(&self, name: &str) -> Vec<(Instant, Instant)> {
            self.log
                .lock()
                .unwrap()
                .iter()
                .filter(|(n, _, _)| *n == name)
                .map(|(_, a, b)| (*a, *b))
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_cycle_is_never_started_twice() {
        let b = Bench::new();
        let permits = Arc::new(Semaphore::new(4));
        let t0 = Instant::now();
        // Every second, but each cycle takes 3.5 s.
        let mut t = b.task(
            "slow",
            Duration::from_secs(1),
            Duration::from_millis(3500),
            &permits,
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        t.stop();
        t.join().await;
        let runs = b.runs_of("slow");
        assert!(runs.len() >= 4, "{runs:?}");
        assert_eq!(runs[0].0, t0, "the first cycle runs at once (catch-up)");
        for w in runs.windows(2) {
            assert!(
                w[1].0 >= w[0].1 + Duration::from_secs(1),
                "a cycle started before the previous one ended plus the interval: {w:?}"
            );
        }
        assert_eq!(b.max_busy.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_n_cycles_run_at_once_across_subscriptions() {
        let b = Bench::new();
        let permits = Arc::new(Semaphore::new(2));
        let mut tasks: Vec<Task> = ["a", "b", "c", "d", "e"]
            .into_iter()
            .map(|n| b.task(n, Duration::from_secs(1), Duration::from_secs(2), &permits))
            .collect();
        tokio::time::sleep(Duration::from_secs(15)).await;
        for t in &tasks {
            t.stop();
        }
        for t in &mut tasks {
            t.join().await;
        }
        assert_eq!(b.max_busy.load(Ordering::SeqCst), 2);
        for n in ["a", "b", "c", "d", "e"] {
            assert!(!b.runs_of(n).is_empty(), "{n} never ran");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_a_waiting_task_at_once_and_lets_a_running_cycle_finish() {
        let b = Bench::new();
        let permits = Arc::new(Semaphore::new(1));
        let mut running = b.task(
            "running",
            Duration::from_secs(60),
            Duration::from_secs(5),
            &permits,
        );
        // Waits for the single permit while "running" holds it.
        let mut waiting = b.task(
            "waiting",
            Duration::from_secs(60),
            Duration::from_secs(5),
            &permits,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(running.is_running_a_cycle());
        assert!(!waiting.is_running_a_cycle());
        let stopped_at = Instant::now();
        running.stop();
        waiting.stop();
        waiting.join().await;
        running.join().await;
        assert_eq!(
            Instant::now(),
            stopped_at,
            "the cycle honoured the stop at once"
        );
        assert_eq!(
            b.runs_of("running").len(),
            1,
            "the running cycle ended normally"
        );
        assert!(
            b.runs_of("waiting").is_empty(),
            "no cycle starts after a stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cron_task_waits_for_its_tick() {
        // Paused tokio time does not move the wall clock: a cron that fires every second
        // still ends its naps after at most a second of wall time.
        let b = Bench::new();
        let permits = Arc::new(Semaphore::new(1));
        let (tx, shutdown) = Shutdown::new();
        let cycle = Sleeper {
            name: "cron",
            takes: Duration::ZERO,
            log: b.log.clone(),
            busy: b.busy.clone(),
            max_busy: b.max_busy.clone(),
            shutdown: None,
        };
        let timing = Timing::Cron(crate::config::cron::Cron::parse("0 0 0 1 1 ? 2099").unwrap());
        let mut t = Task::spawn("cron".into(), timing, permits, (tx, shutdown), cycle);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(b.runs_of("cron").len(), 1, "only the catch-up cycle");
        t.stop();
        t.join().await;
    }
}
