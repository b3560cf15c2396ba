//! The queue of one subscription (PROTOCOL §8.1), drained as a pipeline.
//!
//! The hub lists at most 25 notifications, oldest first, with no offset, and a notification
//! stays listed until it is deleted. Waiting for a whole batch before listing again makes
//! every batch as long as its slowest case: with the hub 20 ms away that bounded a national
//! day (BENCHMARKS.md, "The hub 20 ms away"). So the queue lists again as soon as what it
//! listed is under way and a slot is free. Such a list returns the notifications still under
//! way (or failed in this cycle) first: they are skipped by id, and the new ones start as
//! slots free up.
//!
//! What does not change: one case's notifications run one after the other, in the order
//! [`plan::order`] gives, and never beside another group of the same case (a notification
//! about a case under way waits for a later list); cases run side by side up to
//! `max_parallel_cases` (one at a time for a database delivery); the cycle ends when a list
//! comes back short, or when a list brings nothing new and nothing is under way (a full list
//! of items that failed or wait: the hub would return the same ones again, PROTOCOL §9). A
//! local failure met while cases ran side by side (a full disk, the state database) stops the
//! side-by-side pass: what was under way or ready is then worked one case at a time, in
//! order, before the queue goes on.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::hubee::model::Notification;
use crate::hubee::HubError;
use crate::state::{StateError, WorkItem};

use super::case::CaseOutcome;
use super::context::{ItemError, SubscriptionCtx};
use super::item::{acknowledge, after_failure, work};
use super::plan::{self, Action};
use super::report::{fail, CycleReport};

/// The list's size: "par lot de 25 max" (PROTOCOL §4 N1, §10.5).
pub const BATCH: u32 = 25;

/// A list is sent early only when it can bring at least this many new notifications: the
/// ones under way fill the rest of it.
const MIN_NEW: usize = 5;

/// How the queue ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Nothing more for this cycle.
    Done,
    /// The process is stopping: the rest waits for the next start.
    Stopping,
}

/// The notifications of one case not started yet, worked in order.
struct Group {
    /// Its place in the order the lists gave (the one-at-a-time pass keeps it).
    index: usize,
    case: String,
    steps: Vec<Step>,
}

/// What keeps the queue from taking new work, the strongest first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Halt {
    No,
    /// A local failure while cases ran side by side: once nothing is under way, what is left
    /// is worked one case at a time.
    Alone,
    /// The process is stopping.
    Cancelled,
    /// A failure that concerns the whole subscription: the cycle stops.
    Stop(String),
}

impl Halt {
    fn raise(&mut self, to: Halt) {
        if to > *self {
            *self = to;
        }
    }
}

/// What the lists of this cycle brought.
struct Queue {
    /// Notification ids taken in this cycle (under way, done or failed): a later list that
    /// returns them (not deleted yet, or failed) does not take them twice.
    taken: HashSet<String>,
    /// Notifications without an id, already reported in this cycle.
    unnamed: HashSet<String>,
    /// Groups listed and not started yet.
    ready: VecDeque<Group>,
    /// Notifications taken that stay on the hub (failed, or without an id): every list
    /// returns them first.
    kept: usize,
    /// The last list was full (or left notifications of a case under way): the hub may hold
    /// more.
    more: bool,
    /// False after a list that brought nothing new, until a group ends.
    may_list: bool,
    next_index: usize,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            taken: HashSet::new(),
            unnamed: HashSet::new(),
            ready: VecDeque::new(),
            kept: 0,
            more: true,
            may_list: true,
            next_index: 0,
        }
    }

    /// Takes what a list brought, but for what is taken already and the notifications of a
    /// case under way (`busy`). `attempted`: the work items of this cycle.
    fn take(
        &mut self,
        ctx: &SubscriptionCtx,
        report: &mut CycleReport,
        batch: Vec<Notification>,
        busy: &HashSet<String>,
        attempted: &mut HashSet<String>,
    ) {
        let full = batch.len() >= BATCH as usize;
        let mut planned = Vec::with_capacity(batch.len());
        for n in &batch {
            match plan::decide(n) {
                Some(p) => planned.push(p),
                None => self.unnamed(ctx, report, n),
            }
        }
        let mut left_for_later = false;
        let mut took = false;
        for p in plan::order(planned) {
            if self.taken.contains(&p.notification_id) {
                continue;
            }
            let case = p.notification.case_id.clone().unwrap_or_default();
            if busy.contains(&case) {
                left_for_later = true;
                continue;
            }
            self.taken.insert(p.notification_id.clone());
            took = true;
            let item = work_item(&p);
            // Several notifications about one item in a cycle: the first does the work.
            let first = item.as_ref().is_none_or(|i| attempted.insert(i.key()));
            let step = Step { p, item, first };
            // `order` puts a case's notifications together and in order: the group of a case
            // not started yet takes them after its own.
            match self.ready.iter_mut().find(|g| g.case == case) {
                Some(g) => g.steps.push(step),
                None => {
                    self.ready.push_back(Group {
                        index: self.next_index,
                        case,
                        steps: vec![step],
                    });
                    self.next_index += 1;
                }
            }
        }
        self.more = full || left_for_later;
        self.may_list = took;
    }

    /// A notification without an id cannot be deleted, so it comes back in every list:
    /// reported once per cycle, with its case, so that a person can ask the hub's support.
    fn unnamed(&mut self, ctx: &SubscriptionCtx, report: &mut CycleReport, n: &Notification) {
        let key = format!("{:?} {:?} {:?}", n.case_id, n.event_id, n.date_time);
        if !self.unnamed.insert(key) {
            return;
        }
        self.kept += 1;
        let case_id = n.case_id.clone();
        let e = ItemError::Refused(format!(
            "the hub sent a notification without an id (case {}); it cannot be acknowledged — report it to support@hubee.numerique.gouv.fr",
            case_id.as_deref().unwrap_or("unknown")
        ));
        crate::events::item_failed(
            &ctx.name,
            case_id.as_deref().unwrap_or(""),
            "",
            "",
            &e.to_string(),
        );
        fail(report, "(none)", case_id.as_deref(), &e);
    }
}

/// A group under way: its index, its case and how many notifications it holds.
struct UnderWay {
    index: usize,
    case: String,
    notifications: usize,
}

/// Drains the queue. `attempted` collects the work items of this cycle (the parked pass that
/// follows skips them).
pub async fn drain(
    ctx: &SubscriptionCtx,
    report: &mut CycleReport,
    attempted: &mut HashSet<String>,
) -> Result<Drained, String> {
    let parallel = if ctx.database_url.is_some() {
        // One open transaction per delivery in the business database: one at a time.
        1
    } else {
        ctx.max_parallel_cases.max(1)
    };
    let side_by_side = parallel > 1;
    let stop = AtomicBool::new(false);
    let mut queue = Queue::new();
    let mut halt = Halt::No;
    let mut running = FuturesUnordered::new();
    let mut under_way: Vec<UnderWay> = Vec::new();
    let mut rests: Vec<(usize, Vec<Step>)> = Vec::new();
    let mut listing: Option<BoxFuture<'_, Result<Vec<Notification>, HubError>>> = None;
    loop {
        if ctx.shutdown.is_requested() {
            halt.raise(Halt::Cancelled);
        }
        if halt != Halt::No {
            // A list is only a read: nothing is lost by not waiting for it.
            listing = None;
        } else {
            while running.len() < parallel {
                let Some(g) = queue.ready.pop_front() else {
                    break;
                };
                under_way.push(UnderWay {
                    index: g.index,
                    case: g.case,
                    notifications: g.steps.len(),
                });
                let (index, steps, stop) = (g.index, g.steps, &stop);
                running
                    .push(async move { (index, run_group(ctx, steps, stop, side_by_side).await) });
            }
            let listed: usize =
                under_way.iter().map(|u| u.notifications).sum::<usize>() + queue.kept;
            if listing.is_none()
                && queue.more
                && queue.may_list
                && queue.ready.is_empty()
                && running.len() < parallel
                && listed < BATCH as usize
                && (running.is_empty() || listed + MIN_NEW <= BATCH as usize)
            {
                listing = Some(Box::pin(ctx.session.list_notifications(BATCH)));
            }
        }
        if running.is_empty() && listing.is_none() {
            if halt != Halt::Alone {
                break;
            }
            // Nothing under way any more: what is left, one case at a time, in order.
            rests.sort_by_key(|r| r.0);
            let mut left: Vec<(usize, Vec<Step>)> = std::mem::take(&mut rests);
            left.extend(queue.ready.drain(..).map(|g| (g.index, g.steps)));
            let alone = AtomicBool::new(false);
            for (index, steps) in left {
                if alone.load(Ordering::Relaxed) || ctx.shutdown.is_requested() {
                    break;
                }
                let done = run_group(ctx, steps, &alone, false).await;
                end_group(report, &mut queue, &mut halt, &mut rests, index, done);
            }
            if halt == Halt::Alone {
                halt = Halt::No;
                stop.store(false, Ordering::Relaxed);
            }
            continue;
        }
        tokio::select! {
            Some((index, done)) = running.next(), if !running.is_empty() => {
                under_way.retain(|u| u.index != index);
                end_group(report, &mut queue, &mut halt, &mut rests, index, done);
            }
            listed = async {
                match listing.as_mut() {
                    Some(l) => l.await,
                    None => std::future::pending().await,
                }
            }, if listing.is_some() => {
                listing = None;
                match listed {
                    Ok(batch) => {
                        let busy: HashSet<String> =
                            under_way.iter().map(|u| u.case.clone()).collect();
                        queue.take(ctx, report, batch, &busy, attempted);
                    }
                    Err(e) => halt.raise(Halt::Stop(format!("cannot list notifications: {e}"))),
                }
            }
        }
    }
    match halt {
        Halt::Stop(e) => Err(e),
        Halt::Cancelled => {
            tracing::info!(subscription = %ctx.name, "stop requested: the rest of the queue waits for the next start");
            Ok(Drained::Stopping)
        }
        Halt::No | Halt::Alone => Ok(Drained::Done),
    }
}

/// Takes in what a group did.
fn end_group(
    report: &mut CycleReport,
    queue: &mut Queue,
    halt: &mut Halt,
    rests: &mut Vec<(usize, Vec<Step>)>,
    index: usize,
    done: GroupDone,
) {
    report.add(done.report);
    queue.kept += done.kept;
    queue.may_list = true;
    if let Some(e) = done.stop {
        halt.raise(Halt::Stop(e));
    }
    if done.cancelled {
        halt.raise(Halt::Cancelled);
    }
    if !done.rest.is_empty() {
        rests.push((index, done.rest));
        halt.raise(Halt::Alone);
    }
}

/// One notification with the work it asks for (`None`: only delete it), and whether it is
/// the first of the cycle about that work.
struct Step {
    p: plan::Planned,
    item: Option<WorkItem>,
    first: bool,
}

/// What one group of steps (the notifications of one case) did.
#[derive(Default)]
struct GroupDone {
    report: CycleReport,
    /// Notifications of the group that failed and stay on the hub: every later list of the
    /// cycle returns them again (they are not tried again in this cycle).
    kept: usize,
    /// A failure that concerns the whole subscription: the cycle stops.
    stop: Option<String>,
    /// The process is stopping: the rest waits for the next start.
    cancelled: bool,
    /// Steps left undone because a local failure stopped the side-by-side pass (the step
    /// that failed first), to be worked again one case at a time.
    rest: Vec<Step>,
}

impl GroupDone {
    /// What counting a failed item did: it left the queue (parked or quarantined, its
    /// notification deleted), or it stays on the hub; a failure of the count stops the cycle.
    fn counted(&mut self, counted: Result<bool, String>) {
        match counted {
            Ok(true) => {}
            Ok(false) => self.kept += 1,
            Err(e) => {
                self.kept += 1;
                self.stop = Some(e);
            }
        }
    }
}

fn work_item(p: &plan::Planned) -> Option<WorkItem> {
    let nid = &p.notification_id;
    let (kind, case_id, event_id) = match &p.action {
        Action::DeleteOnly => return None,
        Action::NewCase { case_id } => ("case", case_id.clone(), String::new()),
        Action::Event { case_id, event_id } => ("event", case_id.clone(), event_id.clone()),
        Action::Invalid { .. } => (
            "invalid",
            p.notification
                .case_id
                .clone()
                .filter(|c| !c.trim().is_empty())
                .unwrap_or_else(|| format!("notification-{nid}")),
            String::new(),
        ),
    };
    Some(WorkItem {
        kind: kind.into(),
        case_id,
        event_id,
        round: 0,
        external_id: None,
        notification_id: Some(nid.clone()),
    })
}

/// Runs the steps of one case in order. Stops early when another group hit a failure that
/// stops the cycle, or when the process is stopping. `side_by_side`: other groups run at the
/// same time, so a local failure hands the undone steps back (`rest`) instead of failing.
async fn run_group(
    ctx: &SubscriptionCtx,
    steps: Vec<Step>,
    stop: &AtomicBool,
    side_by_side: bool,
) -> GroupDone {
    let mut out = GroupDone::default();
    let mut steps = steps.into_iter();
    while let Some(step) = steps.next() {
        if ctx.shutdown.is_requested() {
            out.cancelled = true;
            break;
        }
        if stop.load(Ordering::Relaxed) {
            if side_by_side {
                out.rest.push(step);
                out.rest.extend(steps);
            }
            break;
        }
        if let Some(step) = run_step(ctx, step, &mut out, side_by_side).await {
            out.rest.push(step);
            out.rest.extend(steps);
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if out.stop.is_some() {
            stop.store(true, Ordering::Relaxed);
            break;
        }
        if out.cancelled {
            break;
        }
    }
    out
}

/// Handles one notification: its work, then its DELETE (PROTOCOL §8.2, §8.3). With
/// `hand_back`, a local failure that stops the cycle is not recorded: the step is handed
/// back to be worked again alone.
async fn run_step(
    ctx: &SubscriptionCtx,
    step: Step,
    out: &mut GroupDone,
    hand_back: bool,
) -> Option<Step> {
    let Step { p, item, first } = step;
    let nid = p.notification_id.clone();
    let report = &mut out.report;
    let Some(item) = item else {
        match ctx.session.delete_notification(&nid).await {
            Ok(()) => report.acknowledged += 1,
            Err(e) => {
                let e = ItemError::hub(e, "deleting the notification");
                fail(report, &nid, None, &e);
                out.kept += 1;
            }
        }
        return None;
    };
    let result = match (&p.action, first) {
        (Action::Invalid { reason }, _) => Err(ItemError::Refused(reason.clone())),
        (_, false) => Ok(CaseOutcome::AlreadyDelivered),
        _ => work(ctx, &item).await,
    };
    match result {
        Ok(CaseOutcome::Waiting) => {
            report.waiting += 1;
            let e = ItemError::Refused("an attachment is still PENDING on the hub".into());
            let counted = after_failure(ctx, report, &item, &e).await;
            out.counted(counted);
        }
        Ok(outcome) => {
            // Acknowledge: the work is durably done (CONTRACT, rule of acknowledgement).
            match acknowledge(ctx, &item, &nid).await {
                Ok(()) => {
                    report.acknowledged += 1;
                    if outcome == CaseOutcome::Delivered {
                        report.received += 1;
                    }
                }
                Err(e) => {
                    fail(report, &nid, Some(&item.case_id), &e);
                    out.kept += 1;
                    if e.stops_cycle() {
                        out.stop = Some(e.to_string());
                    }
                }
            }
        }
        Err(e) if e.is_cancelled() => {
            tracing::info!(subscription = %ctx.name, notification_id = %nid,
                "stop requested during a download: nothing published or acknowledged for it");
            out.cancelled = true;
        }
        Err(e)
            if hand_back
                && e.stops_cycle()
                && !matches!(
                    e,
                    ItemError::Hub { .. } | ItemError::State(StateError::LeaseLost { .. })
                ) =>
        {
            tracing::debug!(subscription = %ctx.name, notification_id = %nid, error = %e,
                "local failure while cases ran side by side; tried again alone");
            return Some(Step {
                p,
                item: Some(item),
                first,
            });
        }
        Err(e) => {
            fail(report, &nid, Some(&item.case_id), &e);
            if e.stops_cycle() {
                out.kept += 1;
                out.stop = Some(e.to_string());
                return None;
            }
            let counted = after_failure(ctx, report, &item, &e).await;
            out.counted(counted);
        }
    }
    None
}
