//! One subscription's cycle: finish interrupted publications, check the credentials, drain
//! the queue ([`super::queue`]), then the parked items; each notification handled on its own
//! so that one failing case never stops the others.

use std::collections::HashSet;

use crate::state::LockError;

use super::case::CaseOutcome;
use super::context::{ItemError, SubscriptionCtx};
use super::item::{after_failure, work};
use super::publish::recover_intent;
use super::queue::{self, Drained};
use super::report::{fail, CycleReport};

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

    // 3. The queue, until the hub has nothing more for this cycle (PROTOCOL §8.1).
    let mut attempted: HashSet<String> = HashSet::new();
    if queue::drain(ctx, report, &mut attempted).await? == Drained::Stopping {
        return Ok(());
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
