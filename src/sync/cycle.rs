//! The batch loop of one subscription (PROTOCOL §8.1): batches of 25 until a short batch,
//! each notification handled on its own so that one failing case never stops the others.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::stream::{self, StreamExt};

use crate::state::{LockError, Stage, StateError, WorkItem};

use super::case::{deliver_case, CaseOutcome};
use super::context::{log_acknowledged, note, ItemError, SubscriptionCtx};
use super::event::deliver_event;
use super::park::{self, Verdict};
use super::plan::{self, Action};
use super::publish::recover_intent;

/// Batch size: "par lot de 25 max" (PROTOCOL §4 N1, §10.5).
pub const BATCH: u32 = 25;

/// One failed item, for the report.
#[derive(Debug, Clone)]
pub struct ItemFailure {
    pub notification_id: String,
    pub case_id: Option<String>,
    pub error: String,
}

/// What a cycle did.
#[derive(Debug, Default, Clone)]
pub struct CycleReport {
    pub subscription: String,
    /// Entries published this cycle.
    pub received: usize,
    /// Notifications deleted this cycle.
    pub acknowledged: usize,
    /// Cases waiting for a PENDING file.
    pub waiting: usize,
    /// Items parked this cycle (notification deleted, work owed).
    pub parked: usize,
    /// Items quarantined this cycle.
    pub quarantined: usize,
    pub failures: Vec<ItemFailure>,
    /// A failure that stopped the whole cycle (lock, credentials, hub unreachable, spool).
    pub fatal: Option<String>,
}

impl CycleReport {
    /// What the cycle's journal line says.
    pub fn summary(&self) -> crate::events::CycleSummary<'_> {
        crate::events::CycleSummary {
            subscription: &self.subscription,
            received: self.received,
            acknowledged: self.acknowledged,
            failed: self.failures.len(),
            waiting: self.waiting,
            parked: self.parked,
            quarantined: self.quarantined,
            fatal: self.fatal.as_deref(),
            first_error: self.failures.first().map(|f| f.error.as_str()),
        }
    }

    pub fn ok(&self) -> bool {
        self.fatal.is_none() && self.failures.is_empty()
    }
}

/// Runs one complete cycle of a subscription. Never panics on hub data; every failure ends
/// up in the report and the state database.
pub async fn run_cycle(ctx: &SubscriptionCtx, holder: &str) -> CycleReport {
    let mut report = CycleReport {
        subscription: ctx.name.clone(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let lock = match ctx.state.lock_subscription(&ctx.name, holder).await {
        Ok(l) => l,
        Err(e @ LockError::Held { .. }) => {
            report.fatal = Some(e.to_string());
            return report;
        }
        Err(e) => {
            report.fatal = Some(e.to_string());
            return report;
        }
    };
    if let Err(e) = cycle_locked(ctx, &mut report).await {
        crate::events::cycle_failed(&ctx.name, &e);
        report.fatal = Some(e);
    }
    ctx.sequences.give_back(&ctx.state, &ctx.name).await;
    crate::events::cycle_done(
        &report.summary(),
        started.elapsed(),
        ctx.shutdown.is_requested(),
    );
    let outcome_error = report.fatal.clone().or_else(|| {
        report.failures.first().map(|f| {
            format!(
                "{} item(s) failed; first: {}",
                report.failures.len(),
                f.error
            )
        })
    });
    if let Err(e) = ctx
        .state
        .record_poll(&ctx.name, report.ok(), outcome_error.as_deref())
        .await
    {
        tracing::error!(subscription = %ctx.name, error = %e, "cannot record the poll outcome");
    }
    ctx.state.clear_holder(&ctx.name).await;
    lock.release().await;
    report
}

async fn cycle_locked(ctx: &SubscriptionCtx, report: &mut CycleReport) -> Result<(), String> {
    // 1. Finish publications a crash interrupted, then clear tmp/ of leftovers.
    let intents = ctx
        .state
        .intents(&ctx.name)
        .await
        .map_err(|e| e.to_string())?;
    for row in &intents {
        recover_intent(ctx, row).await.map_err(|e| e.to_string())?;
    }
    match ctx.spool.clean_tmp(&[]) {
        Ok(removed) => {
            for p in removed {
                tracing::info!(subscription = %ctx.name, path = %p.display(), "removed an unfinished entry left in tmp/ by an interrupted run");
            }
        }
        Err(e) => return Err(e.to_string()),
    }

    // 2. Credentials first: a refused secret is one clear error, not one per case.
    if let Err(e) = ctx.session.authenticate().await {
        if e.is_auth() {
            crate::events::auth_failed(&ctx.name, &e.to_string());
        }
        return Err(e.to_string());
    }

    // 3. Batches until a short one (PROTOCOL §8.1).
    let mut attempted: HashSet<String> = HashSet::new();
    let mut failed_ids: HashSet<String> = HashSet::new();
    loop {
        let batch = ctx
            .session
            .list_notifications(BATCH)
            .await
            .map_err(|e| format!("cannot list notifications: {e}"))?;
        let len = batch.len();
        let mut planned = Vec::with_capacity(len);
        for n in &batch {
            match plan::decide(n) {
                Some(p) => planned.push(p),
                None => {
                    // It cannot be deleted, so it will come back: report it every cycle,
                    // with its case, so that a person can ask the hub's support.
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
        }
        // Steps grouped by case, in the order plan::order gives (the case first, then its
        // events by time): one group's steps run one after the other, groups side by side.
        let mut groups: Vec<Vec<Step>> = Vec::new();
        let mut group_case: Option<String> = None;
        for p in plan::order(planned) {
            if failed_ids.contains(&p.notification_id) {
                continue;
            }
            let item = work_item(&p);
            // Several notifications about one item in a batch: the first does the work.
            let first = item.as_ref().is_none_or(|i| attempted.insert(i.key()));
            let case = p.notification.case_id.clone().unwrap_or_default();
            if group_case.as_ref() != Some(&case) || groups.is_empty() {
                groups.push(Vec::new());
                group_case = Some(case);
            }
            if let Some(g) = groups.last_mut() {
                g.push(Step { p, item, first });
            }
        }
        let stop = AtomicBool::new(false);
        let parallel = if ctx.database_url.is_some() {
            // One open transaction per delivery in the business database: one at a time.
            1
        } else {
            ctx.max_parallel_cases.max(1)
        };
        let mut done: Vec<GroupDone> = stream::iter(groups)
            .map(|g| run_group(ctx, g, &stop, parallel > 1))
            .buffered(parallel)
            .collect()
            .await;
        // A local failure (full disk, state database) met while cases ran side by side may
        // be the doing of the others (a big file filling the disk): what is left of the batch
        // is then worked one case at a time, in order, as a batch is without concurrency, so
        // that a case that fits is never held back by one that does not.
        // (Not after a failure of the hub's, such as refused credentials: that stops the cycle.)
        if done.iter().any(|g| !g.rest.is_empty())
            && done.iter().all(|g| g.stop.is_none())
            && !ctx.shutdown.is_requested()
        {
            let alone = AtomicBool::new(false);
            let mut again = Vec::new();
            for g in done.iter_mut() {
                let rest = std::mem::take(&mut g.rest);
                if rest.is_empty() || alone.load(Ordering::Relaxed) {
                    continue;
                }
                again.push(run_group(ctx, rest, &alone, false).await);
            }
            done.extend(again);
        }
        let mut progressed = false;
        let mut stopped: Option<String> = None;
        let mut cancelled = false;
        for g in done {
            report.received += g.report.received;
            report.acknowledged += g.report.acknowledged;
            report.waiting += g.report.waiting;
            report.parked += g.report.parked;
            report.quarantined += g.report.quarantined;
            report.failures.extend(g.report.failures);
            failed_ids.extend(g.failed);
            progressed |= g.progressed;
            cancelled |= g.cancelled;
            if stopped.is_none() {
                stopped = g.stop;
            }
        }
        if let Some(e) = stopped {
            return Err(e);
        }
        if cancelled || ctx.shutdown.is_requested() {
            tracing::info!(subscription = %ctx.name, "stop requested: the rest of the queue waits for the next start");
            return Ok(());
        }
        if len < BATCH as usize {
            break;
        }
        // A full batch made only of items that failed or wait: the hub would return the same
        // ones again (oldest first, no offset), so stop instead of spinning (PROTOCOL §9).
        if !progressed {
            break;
        }
    }

    // 4. Parked work, owed since its notification was deleted (GET /cases/{id}).
    let parked = ctx
        .state
        .parked(&ctx.name)
        .await
        .map_err(|e| e.to_string())?;
    for p in parked {
        if ctx.shutdown.is_requested() {
            return Ok(());
        }
        if !attempted.insert(p.item.key()) {
            continue;
        }
        match work(ctx, &p.item).await {
            Ok(CaseOutcome::Waiting) => {
                report.waiting += 1;
                let e = ItemError::Refused("an attachment is still PENDING on the hub".into());
                after_failure(ctx, report, &p.item, &e).await?;
            }
            Ok(outcome) => {
                if outcome == CaseOutcome::Delivered {
                    report.received += 1;
                }
                let _ = ctx.state.clear_failure(&ctx.name, &p.item).await;
                crate::events::unparked(
                    &ctx.name,
                    &p.item.case_id,
                    &p.item.event_id,
                    p.failure.attempts,
                );
            }
            Err(e) if e.is_cancelled() => return Ok(()),
            Err(e) => {
                let nid = p.item.notification_id.clone().unwrap_or_default();
                fail(report, &nid, Some(&p.item.case_id), &e);
                if e.stops_cycle() {
                    return Err(e.to_string());
                }
                after_failure(ctx, report, &p.item, &e).await?;
            }
        }
    }
    Ok(())
}

/// One notification of a batch with the work it asks for (`None`: only delete it), and
/// whether it is the first of the batch about that work.
struct Step {
    p: plan::Planned,
    item: Option<WorkItem>,
    first: bool,
}

/// What one group of steps (the notifications of one case) did.
#[derive(Default)]
struct GroupDone {
    report: CycleReport,
    progressed: bool,
    /// Notification ids that failed (not tried again in this cycle).
    failed: Vec<String>,
    /// A failure that concerns the whole subscription: the cycle stops.
    stop: Option<String>,
    /// The process is stopping: the rest waits for the next start.
    cancelled: bool,
    /// Steps left undone because a local failure stopped the side-by-side pass (the step
    /// that failed first), to be worked again one case at a time.
    rest: Vec<Step>,
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
            Ok(()) => {
                out.progressed = true;
                report.acknowledged += 1;
            }
            Err(e) => {
                let e = ItemError::hub(e, "deleting the notification");
                fail(report, &nid, None, &e);
                out.failed.push(nid);
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
            out.failed.push(nid.clone());
            let e = ItemError::Refused("an attachment is still PENDING on the hub".into());
            if let Err(e) = after_failure(ctx, report, &item, &e).await {
                out.stop = Some(e);
            }
        }
        Ok(outcome) => {
            // Acknowledge: the work is durably done (CONTRACT, rule of acknowledgement).
            match acknowledge(ctx, &item, &nid).await {
                Ok(()) => {
                    out.progressed = true;
                    report.acknowledged += 1;
                    if outcome == CaseOutcome::Delivered {
                        report.received += 1;
                    }
                }
                Err(e) => {
                    fail(report, &nid, Some(&item.case_id), &e);
                    out.failed.push(nid);
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
            out.failed.push(nid);
            if e.stops_cycle() {
                out.stop = Some(e.to_string());
                return None;
            }
            match after_failure(ctx, report, &item, &e).await {
                Ok(true) => out.progressed = true,
                Ok(false) => {}
                Err(e) => out.stop = Some(e),
            }
        }
    }
    None
}

/// Does the work an item asks for (without deleting its notification).
async fn work(ctx: &SubscriptionCtx, item: &WorkItem) -> Result<CaseOutcome, ItemError> {
    let nid = item.notification_id.as_deref();
    match item.kind.as_str() {
        "event" => deliver_event(ctx, &item.case_id, &item.event_id, nid).await,
        "invalid" => Err(ItemError::Refused(
            "the notification names no case (caseId is empty)".into(),
        )),
        _ => deliver_case(ctx, &item.case_id, nid, None, false).await,
    }
}

/// DELETEs the notification once its work is durably done, and records it.
async fn acknowledge(ctx: &SubscriptionCtx, item: &WorkItem, nid: &str) -> Result<(), ItemError> {
    crate::crashpoint::point("before_delete");
    ctx.session
        .delete_notification(nid)
        .await
        .map_err(|e| ItemError::hub(e, "deleting the notification"))?;
    if item.kind == "case" {
        if let Some(row) = ctx
            .state
            .latest_case_round(&ctx.name, &item.case_id)
            .await?
        {
            if row.stage < Stage::Acknowledged {
                ctx.state.advance(&row.key, Stage::Acknowledged).await?;
                log_acknowledged(ctx, &row);
            }
        }
    } else if let Some(row) = ctx
        .state
        .event_delivery(&ctx.name, &item.case_id, &item.event_id)
        .await?
    {
        if row.stage < Stage::Acknowledged {
            ctx.state.advance(&row.key, Stage::Acknowledged).await?;
        }
    }
    let _ = ctx.state.clear_failure(&ctx.name, item).await;
    Ok(())
}

fn fail(report: &mut CycleReport, nid: &str, case_id: Option<&str>, e: &ItemError) {
    crate::metrics::item_failed(&report.subscription, e.failure_kind());
    report.failures.push(ItemFailure {
        notification_id: nid.to_string(),
        case_id: case_id.map(str::to_string),
        error: e.to_string(),
    });
}

/// Counts a failed cycle for an item and parks or quarantines it when due. Returns true when
/// the item left the queue (its notification deleted).
async fn after_failure(
    ctx: &SubscriptionCtx,
    report: &mut CycleReport,
    item: &WorkItem,
    e: &ItemError,
) -> Result<bool, String> {
    let msg = e.to_string();
    crate::events::item_failed(
        &ctx.name,
        &item.case_id,
        &item.event_id,
        item.notification_id.as_deref().unwrap_or(""),
        &msg,
    );
    let f = ctx
        .state
        .record_failure(&ctx.name, item, &msg)
        .await
        .map_err(|e| e.to_string())?;
    let (already_parked, _) = match ctx.state.failure(&ctx.name, item).await {
        Ok(Some((_, parked, quarantined))) => (parked, quarantined),
        _ => (false, false),
    };
    match park::verdict(&f, crate::state::now_ms(), ctx.quarantine_after) {
        Verdict::Retry => Ok(false),
        Verdict::Park if already_parked => Ok(false),
        Verdict::Park => {
            ctx.state
                .park(&ctx.name, item)
                .await
                .map_err(|e| e.to_string())?;
            report.parked += 1;
            crate::events::parked(&ctx.name, &item.case_id, &item.event_id, f.attempts, &msg);
            note(
                ctx,
                "parked",
                &item.case_id,
                item.external_id.as_deref(),
                (!item.event_id.is_empty()).then_some(item.event_id.as_str()),
                serde_json::json!({"attempts": f.attempts, "error": msg}),
            )
            .await;
            delete_if_present(ctx, item).await;
            Ok(true)
        }
        Verdict::Quarantine => match park::quarantine(ctx, item, &f).await {
            Ok(_) => {
                report.quarantined += 1;
                delete_if_present(ctx, item).await;
                Ok(true)
            }
            Err(qe) => {
                tracing::error!(subscription = %ctx.name, case_id = %item.case_id, error = %qe,
                    "cannot quarantine the télédossier yet; retried next cycle");
                Ok(false)
            }
        },
    }
}

async fn delete_if_present(ctx: &SubscriptionCtx, item: &WorkItem) {
    if let Some(nid) = &item.notification_id {
        if let Err(e) = ctx.session.delete_notification(nid).await {
            tracing::warn!(subscription = %ctx.name, notification_id = %nid, error = %e,
                "cannot delete the notification of a parked item; the work is recorded and it will be deleted later");
        }
    }
}
