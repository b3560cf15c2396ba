//! A télédossier (PROTOCOL §8.2), in its round (0, then one more per reopening): fetch the
//! case and its files, verify, publish in the spool, record it, walk the receipt status and
//! post one STATUS_UPDATE event. Each step is recorded in the state database before the
//! next, so a crash anywhere means redelivery that writes nothing twice. The caller DELETEs
//! the notification afterwards.

use crate::deliver::names;
use crate::hubee::model::Case;
use crate::hubee::status::{receipt_plan, CaseStatus, ReceiptPlan};
use crate::hubee::HubError;
use crate::state::{DeliveryKey, DeliveryRow, Stage};

use super::context::{ItemError, SubscriptionCtx};
use super::entry::{self, EntrySource, Publication};
use super::transition::{change_status, status_event, Change, ChangeError, Moved};

/// The comment that marks our receipt event, so a POST whose answer was lost is recognised
/// instead of being posted twice (PROTOCOL §9).
pub fn receipt_key(case_id: &str, round: i64) -> String {
    format!("hubee-sync:receipt:{case_id}:r{round}")
}

/// What happened to one piece of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseOutcome {
    /// Published now and its receipt done.
    Delivered,
    /// Already delivered earlier (redelivery): only the missing acknowledgement steps ran.
    AlreadyDelivered,
    /// An attachment is PENDING on the hub: the work waits, the notification stays.
    Waiting,
    /// Nothing to deliver (an acknowledgement of our own event, an informational event).
    Nothing,
}

/// Statuses a case is put back to when the OSL reopens it (PROTOCOL §9, §10.16).
fn is_reopened_status(s: CaseStatus) -> bool {
    matches!(
        s,
        CaseStatus::HubeeReceived | CaseStatus::HubeeCompleted | CaseStatus::HubeeNotified
    )
}

/// What announced the case round being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// A new-case notification (`eventId` null), or a reopening without a notification id:
    /// a new round only when the case is back at `HUBEE_NOTIFIED` (or before) after a
    /// finished round (the OSL sent the télédossier again).
    NewCase,
    /// A reopening event (`STATUS_UPDATE` back to `HUBEE_NOTIFIED`): one round of its own,
    /// whatever the case's status is by the time it is read (a second reopening may arrive
    /// after an earlier round already walked the case on). `opened` is the round its
    /// notification already opened, found again after a crash: never a second one.
    Reopening { opened: Option<i64> },
}

/// Which round to deliver. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundDecision {
    /// Deliver this round, or finish it if it was begun.
    Round(i64),
    /// An earlier round, opened by another notification, is unfinished: finish it first,
    /// then decide again (its receipt comes before this reopening's).
    FinishFirst(i64),
}

/// Which round of a case an announcement is about. Pure.
///
/// - never delivered: round 0;
/// - a reopening that already opened a round: that round;
/// - the latest round is unfinished: a new-case notification finishes it; a reopening
///   finishes it first, then opens its own;
/// - a reopening: a new round;
/// - a new-case notification while the case is back at `HUBEE_NOTIFIED` (or before) after a
///   finished round: a new round;
/// - otherwise the notification repeats one we handled: the latest round.
pub fn decide_round(
    latest: Option<&DeliveryRow>,
    status: Option<CaseStatus>,
    announced: Announcement,
) -> RoundDecision {
    use RoundDecision::{FinishFirst, Round};
    match (announced, latest) {
        (Announcement::Reopening { opened: Some(r) }, _) => Round(r),
        (_, None) => Round(0),
        (Announcement::Reopening { opened: None }, Some(r)) if r.stage < Stage::ReceiptDone => {
            FinishFirst(r.key.round)
        }
        (Announcement::Reopening { opened: None }, Some(r)) => Round(r.key.round + 1),
        (Announcement::NewCase, Some(r)) if r.stage < Stage::ReceiptDone => Round(r.key.round),
        (Announcement::NewCase, Some(r)) if status.is_some_and(is_reopened_status) => {
            Round(r.key.round + 1)
        }
        (Announcement::NewCase, Some(r)) => Round(r.key.round),
    }
}

/// Delivers the case a notification announces, in the right round, with its receipt.
/// `fresh` is the case when the caller already fetched it; `reopening` is true when the
/// notification is a reopening event (it then gets a round of its own).
pub async fn deliver_case(
    ctx: &SubscriptionCtx,
    case_id: &str,
    notification_id: Option<&str>,
    fresh: Option<(Case, bytes::Bytes)>,
    reopening: bool,
) -> Result<CaseOutcome, ItemError> {
    let (case, raw) = match fresh {
        Some(c) => c,
        None => ctx
            .session
            .get_case(case_id)
            .await
            .map_err(|e| ItemError::hub(e, "fetching the case"))?,
    };
    // An answer without the case's id (`{}`, `[]`, another case) is not this case: taking
    // it for a case without files would publish an empty entry and lose the files.
    match case.id.as_deref() {
        Some(id) if id == case_id => {}
        Some(id) => {
            return Err(ItemError::Refused(format!(
                "the hub returned case {id:?} when asked for case {case_id}"
            )))
        }
        None => {
            return Err(ItemError::Refused(format!(
                "the hub's answer for case {case_id} is not a case (no id); it will be retried"
            )))
        }
    }
    if case.status.as_deref().is_none_or(|s| s.trim().is_empty()) {
        return Err(ItemError::Refused(format!(
            "the hub's answer for case {case_id} has no status; it will be retried"
        )));
    }
    let status = case
        .status
        .as_deref()
        .and_then(|s| s.parse::<CaseStatus>().ok());
    let announced = match (reopening, notification_id) {
        (true, Some(nid)) => Announcement::Reopening {
            opened: ctx
                .state
                .case_round_announced_by(&ctx.name, case_id, nid)
                .await?,
        },
        _ => Announcement::NewCase,
    };
    // The case as read, for the receipt; stale once an earlier round's receipt moved it on.
    let mut for_receipt = Some(case.clone());
    for _ in 0..2 {
        let latest = ctx.state.latest_case_round(&ctx.name, case_id).await?;
        match decide_round(latest.as_ref(), status, announced) {
            RoundDecision::FinishFirst(earlier) => {
                // Its row exists: nothing is published from `case` for it.
                let outcome =
                    deliver_round(ctx, &case, &raw, earlier, None, for_receipt.take()).await?;
                if outcome == CaseOutcome::Waiting {
                    return Ok(CaseOutcome::Waiting);
                }
            }
            RoundDecision::Round(round) => {
                if latest.as_ref().is_some_and(|l| l.key.round < round) {
                    crate::events::reopened(&ctx.name, case_id, round);
                }
                return deliver_round(ctx, &case, &raw, round, notification_id, for_receipt).await;
            }
        }
    }
    Err(ItemError::Internal(format!(
        "case {case_id}: an earlier round stays unfinished after finishing it"
    )))
}

/// Publishes round `round` of the case (unless it already is) and does its receipt.
async fn deliver_round(
    ctx: &SubscriptionCtx,
    case: &Case,
    raw: &bytes::Bytes,
    round: i64,
    notification_id: Option<&str>,
    for_receipt: Option<Case>,
) -> Result<CaseOutcome, ItemError> {
    let case_id = case.id.as_deref().unwrap_or_default();
    let key = DeliveryKey {
        subscription: ctx.name.clone(),
        case_id: case_id.to_string(),
        event_id: String::new(),
        round,
    };
    let mut row = ctx.state.delivery(&key).await?;
    let mut outcome = CaseOutcome::AlreadyDelivered;
    if row.as_ref().is_none_or(|r| r.stage < Stage::Published) {
        match &row {
            Some(r) => super::publish::recover_intent(ctx, r).await?,
            None => {
                let external_id = case.external_id.clone().unwrap_or_default();
                let src = EntrySource {
                    key: &key,
                    kind: if round == 0 { "case" } else { "reopen" },
                    entry_name: names::entry_name(&external_id, case_id, None, round.max(0) as u32),
                    external_id,
                    process_code: case
                        .process_code
                        .clone()
                        .unwrap_or_else(|| ctx.process_code.clone()),
                    notification_id,
                    case_raw: raw,
                    event_raw: None,
                    event_id: None,
                    attachments: &case.attachments,
                    // Only from the case the receipt will use (not a stale one).
                    receipt_start: for_receipt
                        .as_ref()
                        .and_then(|c| receipt_start(ctx, c, round)),
                };
                match entry::publish(ctx, src).await? {
                    Publication::Done => outcome = CaseOutcome::Delivered,
                    Publication::Waiting { .. } => return Ok(CaseOutcome::Waiting),
                }
            }
        }
        row = ctx.state.delivery(&key).await?;
    }
    let row = row.ok_or_else(|| ItemError::Internal("delivery record vanished".into()))?;
    if row.stage < Stage::ReceiptDone {
        receipt(ctx, &row).await?;
    }
    Ok(outcome)
}

/// Where the receipt walk of a case about to be published will start (its status now, the
/// receipt status), when it will walk at all; [`receipt`] decides the same way.
fn receipt_start(ctx: &SubscriptionCtx, case: &Case, round: i64) -> Option<(String, String)> {
    if find_marked_event(case, &receipt_key(case.id.as_deref()?, round)).is_some() {
        return None;
    }
    let current: CaseStatus = case.status.as_deref()?.parse().ok()?;
    let target = ctx.receipt_status;
    let reopened_at_target = round > 0 && current == target;
    match receipt_plan(current, target) {
        ReceiptPlan::LeaveAsIs if !reopened_at_target => None,
        _ => Some((
            current.as_str().to_string(),
            ctx.receipt_status.as_str().to_string(),
        )),
    }
}

/// Walks the case to the receipt status with one STATUS_UPDATE event, exactly once, on any
/// kind of hub ([`transition`]). The case is read again first: the one read before the
/// downloads may be stale (a portal agent may have moved it meanwhile).
async fn receipt(ctx: &SubscriptionCtx, row: &DeliveryRow) -> Result<(), ItemError> {
    let key = &row.key;
    let marker = receipt_key(&key.case_id, key.round);
    let target = ctx.receipt_status;
    let (case, _) = ctx
        .session
        .get_case(&key.case_id)
        .await
        .map_err(|e| ItemError::hub(e, "reading the case before the receipt"))?;
    // Our event already there (posted by an earlier attempt): the change finishes what is
    // missing after it (a PATCH on a hub where only PATCH moves a case).
    let posted = find_marked_event(&case, &marker).is_some();
    let current_s = case.status.clone().unwrap_or_default();
    let current: CaseStatus = current_s.parse().map_err(|_| {
        ItemError::Refused(format!(
            "the hub reports an unknown case status {current_s:?}"
        ))
    })?;
    // A reopened round whose case an earlier round already walked to the receipt status (two
    // reopenings before the first was read) still owes the OSL its receipt (an event with no
    // status change); past the receipt status, or a first round someone else took there,
    // needs no event: every event counts against the hub's cap (PROTOCOL §10.17).
    if row.stage < Stage::ReceiptStarted && !posted {
        let reopened_at_target = key.round > 0 && current == target;
        if receipt_plan(current, target) == ReceiptPlan::LeaveAsIs && !reopened_at_target {
            tracing::info!(subscription = %ctx.name, case_id = %key.case_id, status = %current,
                "case already at or past its receipt status; left as it is, no receipt event");
            ctx.state.record_receipt_done(key, None).await?;
            return Ok(());
        }
        ctx.state
            .record_receipt_start(key, current.as_str(), target.as_str())
            .await?;
    }
    let author = ctx.author.clone();
    let path = |from: CaseStatus| match receipt_plan(from, target) {
        ReceiptPlan::LeaveAsIs => Some(Vec::new()),
        ReceiptPlan::Walk { steps } => Some(steps),
    };
    let message = format!(
        "Télédossier reçu et intégré par le service instructeur (statut {}).",
        target.as_str()
    );
    let event =
        |from: CaseStatus| status_event(&author, Some(message.clone()), &marker, from, target);
    let change = Change {
        case_id: &key.case_id,
        target,
        marker: &marker,
        path: &path,
        event: &event,
        owe_event_at_target: key.round > 0,
    };
    match change_status(&ctx.session, &change, Some(case)).await {
        Ok(Moved::Done { event_id, .. }) => {
            ctx.state
                .record_receipt_done(key, event_id.as_deref())
                .await?;
            Ok(())
        }
        Ok(Moved::AlreadyThere { status }) => {
            tracing::info!(subscription = %ctx.name, case_id = %key.case_id, status = %status,
                "case moved to or past its receipt status by someone else; no receipt event");
            ctx.state.record_receipt_done(key, None).await?;
            Ok(())
        }
        Ok(Moved::EventRefused {
            error,
            cap,
            status,
            reached,
        }) => {
            // Final: never retried, never a reason to withhold the delivery (§10.17).
            let detail = serde_json::json!({"what": "receipt", "round": key.round});
            note_event_refused(
                ctx,
                &key.case_id,
                None,
                detail,
                &error,
                cap,
                status,
                reached,
                target,
            )
            .await?;
            ctx.state.record_receipt_done(key, None).await?;
            Ok(())
        }
        Err(ChangeError::Transient { doing, error } | ChangeError::Refused { doing, error }) => {
            Err(ItemError::hub(error, doing))
        }
        Err(e @ (ChangeError::Impossible { .. } | ChangeError::UnknownStatus(_))) => Err(
            ItemError::Refused(format!("the receipt of case {}: {e}", key.case_id)),
        ),
    }
}

/// A status event of ours the hub refused for good (its cap, a démarche's rule): the
/// journal and the activity record (`hub_event_refused`, for `status` and the digest).
/// `detail` says what the event was for; the refusal's facts are added to it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn note_event_refused(
    ctx: &SubscriptionCtx,
    case_id: &str,
    external_id: Option<&str>,
    mut detail: serde_json::Value,
    error: &HubError,
    cap: bool,
    status: CaseStatus,
    reached: bool,
    target: CaseStatus,
) -> Result<(), ItemError> {
    crate::events::receipt_event_refused(&ctx.name, case_id, cap, error, &status);
    if let Some(d) = detail.as_object_mut() {
        d.insert("cap".into(), cap.into());
        d.insert("status".into(), status.as_str().into());
        d.insert("status_reached".into(), reached.into());
        d.insert("target".into(), target.as_str().into());
        d.insert("error".into(), error.to_string().into());
    }
    ctx.state
        .record_activity(
            &ctx.name,
            "hub_event_refused",
            Some(case_id),
            external_id,
            None,
            detail,
        )
        .await?;
    Ok(())
}

/// Our event among the case's events, found by the marker in its comment.
fn find_marked_event(case: &Case, marker: &str) -> Option<Option<String>> {
    case.events
        .iter()
        .find(|e| e.comment.as_deref().is_some_and(|c| c.trim() == marker))
        .map(|e| e.id.clone())
}

impl ItemError {
    pub fn hub(e: HubError, doing: &'static str) -> ItemError {
        ItemError::Hub { doing, source: e }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(round: i64, stage: Stage) -> DeliveryRow {
        DeliveryRow {
            key: DeliveryKey {
                subscription: "s".into(),
                case_id: "c".into(),
                event_id: String::new(),
                round,
            },
            kind: "case".into(),
            external_id: "x".into(),
            entry_name: "x~c".into(),
            tmp_path: None,
            sequence: Some(1),
            stage,
            receipt_from: None,
            receipt_to: None,
            receipt_event_id: None,
            notification_id: None,
            files_json: None,
        }
    }

    use Announcement::{NewCase, Reopening};
    use RoundDecision::{FinishFirst, Round};

    const FRESH_REOPENING: Announcement = Reopening { opened: None };

    #[test]
    fn first_notification_is_round_zero() {
        assert_eq!(
            decide_round(None, Some(CaseStatus::HubeeNotified), NewCase),
            Round(0)
        );
        assert_eq!(
            decide_round(None, Some(CaseStatus::HubeeNotified), FRESH_REOPENING),
            Round(0)
        );
    }

    #[test]
    fn unfinished_round_is_finished_not_restarted() {
        let r = row(1, Stage::Published);
        assert_eq!(
            decide_round(Some(&r), Some(CaseStatus::HubeeNotified), NewCase),
            Round(1)
        );
    }

    #[test]
    fn case_back_at_notified_after_a_done_round_is_a_reopening() {
        let r = row(0, Stage::Acknowledged);
        assert_eq!(
            decide_round(Some(&r), Some(CaseStatus::HubeeNotified), NewCase),
            Round(1)
        );
        assert_eq!(
            decide_round(Some(&r), Some(CaseStatus::HubeeCompleted), NewCase),
            Round(1)
        );
    }

    #[test]
    fn repeated_notification_of_a_done_round_is_not_a_reopening() {
        let r = row(2, Stage::ReceiptDone);
        assert_eq!(
            decide_round(Some(&r), Some(CaseStatus::InProgress), NewCase),
            Round(2)
        );
        assert_eq!(
            decide_round(Some(&r), Some(CaseStatus::Done), NewCase),
            Round(2)
        );
        assert_eq!(decide_round(Some(&r), None, NewCase), Round(2));
    }

    #[test]
    fn second_reopening_read_after_the_first_walked_the_case_gets_its_own_round() {
        // Two reopenings before hubee-sync read the first: the first's round (1) already
        // walked the case to IN_PROGRESS when the second is read.
        let r = row(1, Stage::ReceiptDone);
        for status in [
            Some(CaseStatus::InProgress),
            Some(CaseStatus::HubeeNotified),
            Some(CaseStatus::Done),
            None,
        ] {
            assert_eq!(
                decide_round(Some(&r), status, FRESH_REOPENING),
                Round(2),
                "{status:?}"
            );
        }
    }

    #[test]
    fn reopening_seen_again_after_a_crash_keeps_the_round_it_opened() {
        // Its round published but not yet receipted, done, or already followed by a later
        // reopening's round: always the same round, never another.
        for latest in [
            row(3, Stage::Intent),
            row(3, Stage::Published),
            row(3, Stage::ReceiptDone),
            row(5, Stage::Acknowledged),
        ] {
            assert_eq!(
                decide_round(
                    Some(&latest),
                    Some(CaseStatus::InProgress),
                    Reopening { opened: Some(3) }
                ),
                Round(3)
            );
        }
    }

    #[test]
    fn reopening_behind_an_unfinished_round_finishes_it_first() {
        let r = row(1, Stage::Published);
        assert_eq!(
            decide_round(Some(&r), Some(CaseStatus::HubeeNotified), FRESH_REOPENING),
            FinishFirst(1)
        );
        let r = row(1, Stage::ReceiptDone);
        assert_eq!(
            decide_round(Some(&r), Some(CaseStatus::InProgress), FRESH_REOPENING),
            Round(2)
        );
    }
}
