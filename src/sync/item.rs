//! One item's work and what follows it: the work a notification asks for, its
//! acknowledgement (the DELETE, once the work is durably done), and, when it fails, the count
//! that parks or quarantines it. Shared by the queue and the pass over parked items.

use crate::state::{Stage, WorkItem};

use super::case::{deliver_case, CaseOutcome};
use super::context::{log_acknowledged, note, ItemError, SubscriptionCtx};
use super::event::deliver_event;
use super::park::{self, Verdict};
use super::report::CycleReport;

/// Does the work an item asks for (without deleting its notification).
pub(super) async fn work(ctx: &SubscriptionCtx, item: &WorkItem) -> Result<CaseOutcome, ItemError> {
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
pub(super) async fn acknowledge(
    ctx: &SubscriptionCtx,
    item: &WorkItem,
    nid: &str,
) -> Result<(), ItemError> {
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

/// Counts a failed cycle for an item and parks or quarantines it when due. Returns true when
/// the item left the queue (its notification deleted).
pub(super) async fn after_failure(
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
