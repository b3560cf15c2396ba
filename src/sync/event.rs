//! An event notification from the OSL (PROTOCOL §8.3): a message, a status change (closing,
//! or a reopening), or a deposit of files. Each that carries something becomes a spool entry
//! with `event.json`; a reopening also delivers the case again as a new round (`~rN`). Then
//! the event is PATCHed `RECEIVED` (unless it already is); the caller DELETEs the
//! notification.

use crate::deliver::names;
use crate::hubee::status::CaseStatus;
use crate::state::{DeliveryKey, Stage};

use super::case::{deliver_case, CaseOutcome};
use super::context::{ItemError, SubscriptionCtx};
use super::entry::{self, EntrySource, Publication};

/// Event types that carry something for the SI (PROTOCOL §8.3); the others (`ATTACH_DL`,
/// `ATTACH_DL_ALL`, `COM_ADD`) are informational: acknowledged, not delivered.
fn carries_something(action_type: &str) -> bool {
    matches!(
        action_type,
        "SENDING_MESSAGE" | "STATUS_UPDATE" | "ATTACH_DEPOSIT"
    )
}

fn is_reopening(new_status: Option<&str>) -> bool {
    new_status
        .and_then(|s| s.parse::<CaseStatus>().ok())
        .is_some_and(|s| {
            matches!(
                s,
                CaseStatus::HubeeNotified | CaseStatus::HubeeCompleted | CaseStatus::HubeeReceived
            )
        })
}

pub async fn deliver_event(
    ctx: &SubscriptionCtx,
    case_id: &str,
    event_id: &str,
    notification_id: Option<&str>,
) -> Result<CaseOutcome, ItemError> {
    let (ev, ev_raw) = ctx
        .session
        .get_event(case_id, event_id)
        .await
        .map_err(|e| ItemError::hub(e, "fetching the event"))?;
    let status = ev.status.clone().unwrap_or_default();
    if status == "RECEIVED" && ev.from_si() {
        // The OSL acknowledged one of our own events: nothing to deliver (PROTOCOL §7.3).
        return Ok(CaseOutcome::Nothing);
    }
    let action = ev.action_type.clone().unwrap_or_default();
    let key = DeliveryKey {
        subscription: ctx.name.clone(),
        case_id: case_id.to_string(),
        event_id: event_id.to_string(),
        round: 0,
    };
    let mut outcome = CaseOutcome::Nothing;
    if carries_something(&action) {
        outcome = CaseOutcome::AlreadyDelivered;
        let row = ctx
            .state
            .event_delivery(&ctx.name, case_id, event_id)
            .await?;
        match &row {
            Some(r) if r.stage >= Stage::Published => {}
            Some(r) => super::publish::recover_intent(ctx, r).await?,
            None => {
                let (case, case_raw) = ctx
                    .session
                    .get_case(case_id)
                    .await
                    .map_err(|e| ItemError::hub(e, "fetching the case of an event"))?;
                let external_id = case.external_id.clone().unwrap_or_default();
                let src = EntrySource {
                    key: &key,
                    kind: "event",
                    entry_name: names::entry_name(&external_id, case_id, Some(event_id), 0),
                    external_id,
                    process_code: case
                        .process_code
                        .clone()
                        .unwrap_or_else(|| ctx.process_code.clone()),
                    notification_id,
                    case_raw: &case_raw,
                    event_raw: Some(&ev_raw),
                    event_id: Some(event_id),
                    attachments: &ev.attachments,
                    receipt_start: None,
                };
                match entry::publish(ctx, src).await? {
                    Publication::Done => outcome = CaseOutcome::Delivered,
                    Publication::Waiting { .. } => return Ok(CaseOutcome::Waiting),
                }
            }
        }
    }
    if action == "STATUS_UPDATE" && is_reopening(ev.case_new_status.as_deref()) {
        // The reopened case is delivered again, as a round of this reopening's own, before
        // the event is acknowledged. Its notification marks the round, so a crash never
        // opens a second one for it.
        if deliver_case(ctx, case_id, notification_id, None, true).await? == CaseOutcome::Waiting {
            return Ok(CaseOutcome::Waiting);
        }
    }
    if status != "RECEIVED" {
        ctx.session
            .patch_event_status(case_id, event_id, "RECEIVED")
            .await
            .map_err(|e| ItemError::hub(e, "acknowledging the event (RECEIVED)"))?;
    }
    if carries_something(&action) {
        ctx.state.record_receipt_done(&key, None).await?;
    }
    if carries_something(&action) && outcome == CaseOutcome::Delivered {
        let row = ctx
            .state
            .event_delivery(&ctx.name, case_id, event_id)
            .await?;
        let (entry, external_id) = row
            .map(|r| (r.entry_name, r.external_id))
            .unwrap_or_default();
        super::context::note(
            ctx,
            "event",
            case_id,
            Some(&external_id),
            Some(event_id),
            serde_json::json!({
                "action_type": action,
                "case_new_status": ev.case_new_status,
                "has_message": ev.message.as_deref().is_some_and(|m| !m.is_empty()),
                "files": ev.attachments.iter().filter(|a| a.status.as_deref() == Some("RECEIVED")).count(),
                "entry": entry,
            }),
        )
        .await;
    }
    crate::events::event_received(
        &ctx.name,
        case_id,
        event_id,
        &action,
        carries_something(&action),
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_is_a_status_update_back_to_notified() {
        assert!(is_reopening(Some("HUBEE_NOTIFIED")));
        assert!(is_reopening(Some("HUBEE_COMPLETED")));
        assert!(!is_reopening(Some("CLOSED")));
        assert!(!is_reopening(None));
    }

    #[test]
    fn informational_events_carry_nothing() {
        for a in ["ATTACH_DL", "ATTACH_DL_ALL", "COM_ADD", "SOMETHING_NEW"] {
            assert!(!carries_something(a));
        }
        for a in ["SENDING_MESSAGE", "STATUS_UPDATE", "ATTACH_DEPOSIT"] {
            assert!(carries_something(a));
        }
    }
}
