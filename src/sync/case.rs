//! A new télédossier (PROTOCOL §8.2): fetch the case and its files, verify, publish in the
//! spool, record it, walk the receipt status, post one STATUS_UPDATE event, and only then
//! DELETE the notification. Each step is recorded in the state database before the next, so
//! a crash anywhere means redelivery that writes nothing twice.

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::deliver::{names, EntryLocation, Manifest, ManifestAttachment, PendingEntry};
use crate::hubee::model::{Case, NewEvent};
use crate::hubee::status::{receipt_plan, CaseStatus, ReceiptPlan};
use crate::hubee::HubError;
use crate::state::{DeliveryKey, DeliveryRow, Stage};

use super::cycle::{ItemError, SubscriptionCtx};
use super::download::{fetch_verified, FileRef};

/// The comment that marks our receipt event, so a POST whose answer was lost is recognised
/// instead of being posted twice (PROTOCOL §9).
pub fn receipt_key(case_id: &str, round: i64) -> String {
    format!("hubee-sync:receipt:{case_id}:r{round}")
}

/// What happened to one new-case notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseOutcome {
    /// Published now, receipt done, notification deleted.
    Delivered,
    /// Already delivered earlier (redelivery): only the missing acknowledgement steps ran.
    AlreadyDelivered,
    /// An attachment is PENDING on the hub: the case waits, the notification stays.
    Waiting,
}

pub async fn handle_new_case(
    ctx: &SubscriptionCtx,
    notification_id: &str,
    case_id: &str,
) -> Result<CaseOutcome, ItemError> {
    let key = DeliveryKey {
        subscription: ctx.name.clone(),
        case_id: case_id.to_string(),
        event_id: String::new(),
        round: 0,
    };
    let mut row = ctx.state.delivery(&key).await?;
    let mut outcome = CaseOutcome::AlreadyDelivered;
    let mut fresh_case: Option<Case> = None;

    if row.as_ref().is_none_or(|r| r.stage < Stage::Published) {
        if let Some(r) = &row {
            // A crash around the rename: finish or confirm that publication first.
            super::cycle::recover_intent(ctx, r).await?;
        } else {
            let (case, raw) = ctx
                .session
                .get_case(case_id)
                .await
                .map_err(|e| ItemError::hub(e, "fetching the case"))?;
            match publish_case(ctx, notification_id, case_id, &key, &case, &raw).await? {
                Some(()) => {
                    outcome = CaseOutcome::Delivered;
                    fresh_case = Some(case);
                }
                None => return Ok(CaseOutcome::Waiting),
            }
        }
        row = ctx.state.delivery(&key).await?;
    }
    let row = row.ok_or_else(|| ItemError::Internal("delivery record vanished".into()))?;

    if row.stage < Stage::ReceiptDone {
        receipt(ctx, &row, fresh_case).await?;
    }
    // Always DELETE the notification in hand: it may be a second notification for a case
    // already acknowledged, and a DELETE of a deleted one is a 404, which is success.
    ctx.session
        .delete_notification(notification_id)
        .await
        .map_err(|e| ItemError::hub(e, "deleting the notification"))?;
    if row.stage < Stage::Acknowledged {
        ctx.state.advance(&key, Stage::Acknowledged).await?;
        crate::sync::cycle::log_acknowledged(ctx, &row);
    }
    Ok(outcome)
}

/// Writes, verifies and publishes the entry. `Ok(None)` when the case must wait for a file
/// still PENDING on the hub.
async fn publish_case(
    ctx: &SubscriptionCtx,
    notification_id: &str,
    case_id: &str,
    key: &DeliveryKey,
    case: &Case,
    raw: &[u8],
) -> Result<Option<()>, ItemError> {
    if let Some(id) = case.id.as_deref() {
        if id != case_id {
            return Err(ItemError::Refused(format!(
                "the hub returned case {id:?} when asked for case {case_id}"
            )));
        }
    }
    let external_id = case.external_id.clone().unwrap_or_default();
    let entry_name = names::entry_name(&external_id, case_id, None, 0);

    // Our entry may already be there although the state does not know it (state database
    // restored from a backup, or lost): recognise it by its manifest, never write it twice.
    if !matches!(ctx.spool.find_entry(&entry_name), EntryLocation::Absent) {
        if let Ok(Some(m)) = ctx.spool.read_manifest(&entry_name) {
            if m.case_id == case_id && m.event_id.is_none() && m.round == 0 {
                record_found(
                    ctx,
                    key,
                    notification_id,
                    &external_id,
                    &entry_name,
                    m.sequence,
                )
                .await?;
                return Ok(Some(()));
            }
        }
    }

    // Decide about every file before writing anything.
    for a in &case.attachments {
        let st = a.status.as_deref().unwrap_or("");
        if st == "PENDING" {
            tracing::info!(
                subscription = %ctx.name, case_id, external_id = %external_id,
                attachment_id = a.id.as_deref().unwrap_or("?"),
                "an attachment is still PENDING on the hub; the case waits for it"
            );
            return Ok(None);
        }
        if st == "RECEIVED" {
            if a.id.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err(ItemError::Refused(
                    "the hub lists a RECEIVED attachment without an id".into(),
                ));
            }
            if a.size.is_none() {
                return Err(ItemError::Refused(format!(
                    "the hub gives no usable size for attachment {} ({:?})",
                    a.id.as_deref().unwrap_or("?"),
                    a.file_name.as_deref().unwrap_or("")
                )));
            }
        }
    }

    let mut pending = ctx.spool.begin(&entry_name).map_err(ItemError::spool)?;
    match fill_entry(ctx, &mut pending, case_id, &external_id, case, raw).await {
        Ok(manifest) => {
            let sequence = manifest.sequence;
            let files_json = serde_json::to_string(&manifest.attachments).ok();
            let tmp = pending.seal(&manifest).await.map_err(ItemError::spool)?;
            let row = DeliveryRow {
                key: key.clone(),
                kind: "case".into(),
                external_id: external_id.clone(),
                entry_name: entry_name.clone(),
                tmp_path: Some(tmp.display().to_string()),
                sequence: Some(sequence as i64),
                stage: Stage::Intent,
                receipt_from: None,
                receipt_to: None,
                receipt_event_id: None,
                notification_id: Some(notification_id.to_string()),
                files_json,
            };
            ctx.state.record_intent(&row).await?;
            super::cycle::publish_recorded(ctx, &row, &tmp).await?;
            Ok(Some(()))
        }
        Err(e) => {
            if let Err(ae) = pending.abandon().await {
                tracing::warn!(subscription = %ctx.name, error = %ae, "cannot remove an abandoned entry from tmp/");
            }
            Err(e)
        }
    }
}

async fn record_found(
    ctx: &SubscriptionCtx,
    key: &DeliveryKey,
    notification_id: &str,
    external_id: &str,
    entry_name: &str,
    sequence: u64,
) -> Result<(), ItemError> {
    tracing::info!(subscription = %ctx.name, case_id = %key.case_id, entry = entry_name,
        "entry already in the spool; recording it instead of writing it again");
    let row = DeliveryRow {
        key: key.clone(),
        kind: "case".into(),
        external_id: external_id.to_string(),
        entry_name: entry_name.to_string(),
        tmp_path: None,
        sequence: Some(sequence as i64),
        stage: Stage::Intent,
        receipt_from: None,
        receipt_to: None,
        receipt_event_id: None,
        notification_id: Some(notification_id.to_string()),
        files_json: None,
    };
    ctx.state.record_intent(&row).await?;
    ctx.state.advance(key, Stage::Published).await?;
    Ok(())
}

async fn fill_entry(
    ctx: &SubscriptionCtx,
    pending: &mut PendingEntry,
    case_id: &str,
    external_id: &str,
    case: &Case,
    raw: &[u8],
) -> Result<Manifest, ItemError> {
    pending
        .write_small("case.json", raw)
        .await
        .map_err(ItemError::spool)?;
    // Paths are allocated up front (names must be unique), downloads then run in parallel.
    let mut jobs = Vec::new();
    let mut listed = Vec::new();
    for a in &case.attachments {
        let st = a.status.clone().unwrap_or_default();
        let file_name = a.file_name.clone().unwrap_or_default();
        let mut ma = ManifestAttachment {
            attachment_id: a.id.clone().unwrap_or_default(),
            file_name: file_name.clone(),
            path: None,
            type_: a.type_.clone().unwrap_or_default(),
            mime_type: a.mime_type.clone().unwrap_or_default(),
            size: a.size.unwrap_or(0),
            sha256: None,
            status: st.clone(),
        };
        if st == "RECEIVED" {
            let rel = pending.attachment_path(&file_name);
            ma.path = Some(rel.clone());
            jobs.push((listed.len(), rel, ma.attachment_id.clone(), ma.size));
        } else {
            tracing::warn!(
                subscription = %ctx.name, case_id, external_id,
                attachment_id = %ma.attachment_id, status = %st,
                "attachment not fetched: the hub marks it unusable; listed in the manifest"
            );
        }
        listed.push(ma);
    }
    let pending_ref: &PendingEntry = pending;
    let results: Vec<(usize, crate::deliver::WrittenFile)> = stream::iter(jobs)
        .map(|(idx, rel, aid, size)| async move {
            let f = FileRef {
                case_id,
                event_id: None,
                attachment_id: &aid,
                expected_size: size,
                rel_path: &rel,
            };
            let w = fetch_verified(
                &ctx.session,
                pending_ref,
                &f,
                ctx.download_attempts,
                ctx.retry_base_delay,
                &ctx.shutdown,
            )
            .await?;
            Ok::<_, ItemError>((idx, w))
        })
        .buffer_unordered(ctx.max_parallel_downloads.max(1))
        .try_collect()
        .await?;
    for (idx, w) in results {
        if let Some(ma) = listed.get_mut(idx) {
            ma.sha256 = Some(w.sha256_hex());
            ma.size = w.size;
        }
    }
    let sequence = ctx.state.next_sequence(&ctx.name).await?;
    Ok(Manifest {
        subscription: ctx.name.clone(),
        process_code: case
            .process_code
            .clone()
            .unwrap_or_else(|| ctx.process_code.clone()),
        case_id: case_id.to_string(),
        external_id: external_id.to_string(),
        event_id: None,
        round: 0,
        received_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        sequence: sequence.max(0) as u64,
        attachments: listed,
    })
}

/// Walks the case to the receipt status and posts one STATUS_UPDATE event, exactly once.
async fn receipt(
    ctx: &SubscriptionCtx,
    row: &DeliveryRow,
    fresh: Option<Case>,
) -> Result<(), ItemError> {
    let key = &row.key;
    let case = match fresh {
        Some(c) => c,
        None => {
            ctx.session
                .get_case(&key.case_id)
                .await
                .map_err(|e| ItemError::hub(e, "reading the case before the receipt"))?
                .0
        }
    };
    let marker = receipt_key(&key.case_id, key.round);
    if let Some(ev) = find_marked_event(&case, &marker) {
        ctx.state.record_receipt_done(key, ev.as_deref()).await?;
        return Ok(());
    }
    let current_s = case.status.clone().unwrap_or_default();
    let current: CaseStatus = current_s.parse().map_err(|_| {
        ItemError::Refused(format!(
            "the hub reports an unknown case status {current_s:?}"
        ))
    })?;
    let target = ctx.receipt_status;
    let from = match (&row.receipt_from, row.stage >= Stage::ReceiptStarted) {
        (Some(f), true) => f.clone(),
        _ => {
            if receipt_plan(current, target) == ReceiptPlan::LeaveAsIs {
                tracing::info!(subscription = %ctx.name, case_id = %key.case_id, status = %current,
                    "case already at or past its receipt status; left as it is, no receipt event");
                ctx.state.record_receipt_done(key, None).await?;
                return Ok(());
            }
            ctx.state
                .record_receipt_start(key, current.as_str(), target.as_str())
                .await?;
            current.as_str().to_string()
        }
    };
    if let ReceiptPlan::Walk { steps } = receipt_plan(current, target) {
        for step in steps {
            ctx.session
                .patch_case_status(&key.case_id, step.as_str())
                .await
                .map_err(|e| ItemError::hub(e, "setting the receipt status"))?;
        }
    }
    let event = NewEvent {
        action_type: "STATUS_UPDATE".into(),
        notification: true,
        author: Some(ctx.author.clone()),
        message: Some(format!(
            "Télédossier reçu et intégré par le service instructeur (statut {}).",
            target.as_str()
        )),
        comment: Some(marker.clone()),
        case_current_status: Some(from),
        case_new_status: Some(target.as_str().to_string()),
        attachments: Vec::new(),
    };
    match ctx.session.post_event(&key.case_id, &event).await {
        Ok(ev) => {
            ctx.state.record_receipt_done(key, ev.id.as_deref()).await?;
            Ok(())
        }
        Err(e) if e.maybe_applied() => {
            // The answer was lost: look before posting again (PROTOCOL §9).
            let (case, _) = ctx.session.get_case(&key.case_id).await.map_err(|e2| {
                ItemError::hub(e2, "looking for a receipt event whose answer was lost")
            })?;
            match find_marked_event(&case, &marker) {
                Some(id) => {
                    ctx.state.record_receipt_done(key, id.as_deref()).await?;
                    Ok(())
                }
                None => Err(ItemError::hub(e, "posting the receipt event")),
            }
        }
        Err(e) => Err(ItemError::hub(e, "posting the receipt event")),
    }
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
