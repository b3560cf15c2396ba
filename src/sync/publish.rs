//! An entry's publication: the rename into `new/` recorded in the state database, and the
//! recovery of a publication that a stop interrupted.

use std::path::Path;

use crate::deliver::PublishOutcome;
use crate::state::{ActivityNote, DeliveryRow, Stage};

use super::context::{ItemError, SubscriptionCtx};

/// Finishes a publication recorded as intent: the tmp directory still there means the
/// rename did not happen; gone means it did (even if the consumer has since moved or
/// deleted the entry).
pub async fn recover_intent(ctx: &SubscriptionCtx, row: &DeliveryRow) -> Result<(), ItemError> {
    match row.tmp_path.as_deref().map(Path::new) {
        Some(tmp) if tmp.exists() => publish_recorded(ctx, row, tmp, None, None).await,
        _ => {
            ctx.state.advance(&row.key, Stage::Published).await?;
            Ok(())
        }
    }
}

/// Renames a sealed entry into new/ and records it published. `turn`, when given, is
/// released as soon as the rename is done (or failed). `receipt` (from, to), when given, is
/// recorded with the publication as the start of the receipt walk (one durable write).
pub async fn publish_recorded(
    ctx: &SubscriptionCtx,
    row: &DeliveryRow,
    tmp: &Path,
    turn: Option<super::sequence::Ticket<'_>>,
    receipt: Option<(&str, &str)>,
) -> Result<(), ItemError> {
    // The rename and its fsyncs block: off the async thread, so other cases keep going.
    let (spool, from, name) = (ctx.spool.clone(), tmp.to_path_buf(), row.entry_name.clone());
    let published = tokio::task::spawn_blocking(move || spool.publish(&from, &name))
        .await
        .map_err(|e| ItemError::Internal(format!("publishing {}: {e}", row.entry_name)))?;
    drop(turn);
    match published.map_err(ItemError::spool)? {
        PublishOutcome::Published(path) => {
            crate::crashpoint::point("after_rename");
            let entry = path.display().to_string();
            let detail = (row.kind != "event").then(|| {
                let files: Vec<serde_json::Value> = row
                    .files_json
                    .as_deref()
                    .and_then(|j| serde_json::from_str(j).ok())
                    .unwrap_or_default();
                let fetched = files.iter().filter(|f| !f["path"].is_null()).count();
                let unusable: Vec<serde_json::Value> = files
                    .iter()
                    .filter(|f| f["path"].is_null())
                    .map(|f| serde_json::json!({"file_name": f["file_name"], "status": f["status"], "attachment_id": f["attachment_id"]}))
                    .collect();
                serde_json::json!({
                    "entry": entry,
                    "files": fetched,
                    "round": row.key.round,
                    "unusable": unusable,
                })
            });
            let kind = match row.kind.as_str() {
                "reopen" => "reopened",
                "redelivery" => "redelivered",
                _ => "received",
            };
            let activity = detail.map(|detail| ActivityNote {
                kind,
                case_id: Some(&row.key.case_id),
                external_id: Some(&row.external_id),
                event_id: None,
                detail,
            });
            let with_note = activity.is_some();
            if let Err(e) = ctx
                .state
                .record_published(&row.key, receipt, activity)
                .await
            {
                if !with_note {
                    return Err(e.into());
                }
                // The activity record is never a reason to fail the delivery it describes.
                tracing::warn!(subscription = %ctx.name, case_id = %row.key.case_id, error = %e,
                    "cannot record the publication with its activity record; recording it alone");
                ctx.state.record_published(&row.key, receipt, None).await?;
            }
            ctx.progress.add_entry();
            crate::events::published(
                &ctx.name,
                &row.key.case_id,
                &row.external_id,
                &row.key.event_id,
                &entry,
            );
            Ok(())
        }
        PublishOutcome::AlreadyExists(path) => {
            let theirs = ctx.spool.read_manifest(&row.entry_name).ok().flatten();
            let ours = theirs.as_ref().is_some_and(|m| {
                m.case_id == row.key.case_id
                    && m.event_id.as_deref().unwrap_or("") == row.key.event_id
                    && i64::from(m.round) == row.key.round
            });
            if ours {
                let _ = std::fs::remove_dir_all(tmp);
                ctx.state.advance(&row.key, Stage::Published).await?;
                Ok(())
            } else {
                Err(ItemError::Refused(format!(
                    "an entry named {} already exists in the spool ({}) for another delivery; move it away and the case will be delivered next cycle",
                    row.entry_name,
                    path.display()
                )))
            }
        }
    }
}
