//! Building and publishing one spool entry (a case round or an event): decide about every
//! file, write in tmp/, verify, seal, record the intent, rename into new/, record it.

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::deliver::{EntryLocation, Manifest, ManifestAttachment, PendingEntry, WrittenFile};
use crate::hubee::model::Attachment;
use crate::state::{DeliveryKey, DeliveryRow, Stage};

use super::context::{ItemError, SubscriptionCtx};
use super::download::{fetch_into, fetch_verified, DownloadError, FileRef};
use super::publish::publish_recorded;
use super::sequence::Ticket;
use crate::deliver::database::{AttachmentRecord, Begun, BusinessDb, DbTxn, DeliveryRecord};

/// What to put in an entry.
pub struct EntrySource<'a> {
    pub key: &'a DeliveryKey,
    /// `case`, `reopen` or `event`.
    pub kind: &'static str,
    pub entry_name: String,
    pub external_id: String,
    pub process_code: String,
    pub notification_id: Option<&'a str>,
    /// `case.json`: the case exactly as the hub returned it.
    pub case_raw: &'a [u8],
    /// `event.json` for an event entry.
    pub event_raw: Option<&'a [u8]>,
    /// The OSL event whose files these are (downloads use the event's endpoint), if any.
    pub event_id: Option<&'a str>,
    pub attachments: &'a [Attachment],
    /// For a case: where its receipt walk will start (from, to), recorded with the
    /// publication so that no separate durable write is needed before the first PATCH.
    pub receipt_start: Option<(String, String)>,
}

/// The outcome of a publication attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// Published now, or found already published.
    Done,
    /// A file is still PENDING on the hub: nothing written, try again later.
    Waiting { attachment_id: String },
}

/// Files the hub marks as unusable: listed, never fetched (PROTOCOL §9).
fn is_final_unusable(status: &str) -> bool {
    matches!(status, "CORRUPTED" | "REJECTED" | "DELETED")
}

/// Checks that an entry can be built, before anything is written.
pub fn precheck(attachments: &[Attachment]) -> Result<Option<String>, ItemError> {
    for a in attachments {
        let st = a.status.as_deref().unwrap_or("");
        let id = a.id.as_deref().map(str::trim).unwrap_or("");
        match st {
            "PENDING" => return Ok(Some(id.to_string())),
            "RECEIVED" => {
                if id.is_empty() {
                    return Err(ItemError::Refused(
                        "the hub lists a RECEIVED attachment without an id".into(),
                    ));
                }
                if a.size.is_none() {
                    return Err(ItemError::Refused(format!(
                        "the hub gives no usable size for attachment {id} ({:?})",
                        a.file_name.as_deref().unwrap_or("")
                    )));
                }
            }
            s if is_final_unusable(s) => {}
            other => {
                return Err(ItemError::Refused(format!(
                    "attachment {id} has an unknown status {other:?}; it will be retried, and quarantined if it persists"
                )))
            }
        }
    }
    Ok(None)
}

/// `Some(Waiting)` when a file is still PENDING on the hub (nothing is written then).
fn wait_for_pending(
    ctx: &SubscriptionCtx,
    src: &EntrySource<'_>,
) -> Result<Option<Publication>, ItemError> {
    Ok(precheck(src.attachments)?.map(|attachment_id| {
        crate::events::waiting(
            &ctx.name,
            &src.key.case_id,
            &src.external_id,
            &attachment_id,
        );
        Publication::Waiting { attachment_id }
    }))
}

/// Publishes the entry described by `src`, exactly once.
pub async fn publish(
    ctx: &SubscriptionCtx,
    src: EntrySource<'_>,
) -> Result<Publication, ItemError> {
    if let Some(db) = ctx.business_db().await? {
        return publish_db(ctx, db, src).await;
    }
    // Our entry may already be there although the state does not know it (state database
    // restored from a backup, or lost): recognise it by its manifest, never write it twice.
    if !matches!(ctx.spool.find_entry(&src.entry_name), EntryLocation::Absent) {
        if let Ok(Some(m)) = ctx.spool.read_manifest(&src.entry_name) {
            if m.case_id == src.key.case_id
                && m.event_id.as_deref().unwrap_or("") == src.key.event_id
                && i64::from(m.round) == src.key.round
            {
                tracing::info!(subscription = %ctx.name, case_id = %src.key.case_id, entry = %src.entry_name,
                    "entry already in the spool; recording it instead of writing it again");
                let mut row = row_for(&src, None, m.sequence as i64, None);
                row.stage = Stage::Intent;
                ctx.state.record_intent(&row).await?;
                ctx.state.advance(src.key, Stage::Published).await?;
                return Ok(Publication::Done);
            }
        }
    }
    if let Some(waiting) = wait_for_pending(ctx, &src)? {
        return Ok(waiting);
    }

    // Two mkdirs and their chmods: off the async thread.
    let (spool, name) = (ctx.spool.clone(), src.entry_name.clone());
    let mut pending = tokio::task::spawn_blocking(move || spool.begin(&name))
        .await
        .map_err(|e| ItemError::Internal(format!("starting entry {}: {e}", src.entry_name)))?
        .map_err(ItemError::spool)?;
    match fill(ctx, &mut pending, &src).await {
        Ok((manifest, ticket)) => {
            let files_json = serde_json::to_string(&manifest.attachments).ok();
            let sequence = manifest.sequence as i64;
            let tmp = pending.seal(&manifest).await.map_err(ItemError::spool)?;
            crate::crashpoint::point("after_seal");
            let row = row_for(&src, Some(tmp.display().to_string()), sequence, files_json);
            ctx.state.record_intent(&row).await?;
            crate::crashpoint::point("after_intent");
            // Entries appear in new/ in sequence order, even with cases worked side by side.
            ticket.wait_turn().await;
            let receipt = src
                .receipt_start
                .as_ref()
                .map(|(f, t)| (f.as_str(), t.as_str()));
            publish_recorded(ctx, &row, &tmp, Some(ticket), receipt).await?;
            Ok(Publication::Done)
        }
        Err(e) => {
            if let Err(ae) = pending.abandon().await {
                tracing::warn!(subscription = %ctx.name, error = %ae, "cannot remove an abandoned entry from tmp/");
            }
            Err(e)
        }
    }
}

fn row_for(
    src: &EntrySource<'_>,
    tmp: Option<String>,
    sequence: i64,
    files_json: Option<String>,
) -> DeliveryRow {
    DeliveryRow {
        key: src.key.clone(),
        kind: src.kind.to_string(),
        external_id: src.external_id.clone(),
        entry_name: src.entry_name.clone(),
        tmp_path: tmp,
        sequence: Some(sequence),
        stage: Stage::Intent,
        receipt_from: None,
        receipt_to: None,
        receipt_event_id: None,
        notification_id: src.notification_id.map(str::to_string),
        files_json,
    }
}

async fn fill<'c>(
    ctx: &'c SubscriptionCtx,
    pending: &mut PendingEntry,
    src: &EntrySource<'_>,
) -> Result<(Manifest, Ticket<'c>), ItemError> {
    // Paths are allocated up front (names must be unique), downloads then run in parallel.
    let mut jobs = Vec::new();
    let mut listed = Vec::new();
    for a in src.attachments {
        let st = a.status.clone().unwrap_or_default();
        let mut ma = ManifestAttachment {
            attachment_id: a.id.clone().unwrap_or_default(),
            file_name: a.file_name.clone().unwrap_or_default(),
            path: None,
            type_: a.type_.clone().unwrap_or_default(),
            mime_type: a.mime_type.clone().unwrap_or_default(),
            size: a.size.unwrap_or(0),
            sha256: None,
            status: st.clone(),
        };
        if st == "RECEIVED" {
            let rel = pending.attachment_path(&ma.file_name);
            ma.path = Some(rel.clone());
            jobs.push((listed.len(), rel, ma.attachment_id.clone(), ma.size));
        } else {
            tracing::warn!(
                subscription = %ctx.name, case_id = %src.key.case_id, external_id = %src.external_id,
                attachment_id = %ma.attachment_id, status = %st,
                "attachment not fetched: the hub marks it unusable; listed in the manifest"
            );
        }
        listed.push(ma);
    }
    let pending_ref: &PendingEntry = pending;
    let event_id = src.event_id;
    let case_id = src.key.case_id.as_str();
    // case.json (and event.json) are written while the files download.
    let small = async {
        pending_ref
            .write_small("case.json", src.case_raw)
            .await
            .map_err(ItemError::spool)?;
        if let Some(ev) = src.event_raw {
            pending_ref
                .write_small("event.json", ev)
                .await
                .map_err(ItemError::spool)?;
        }
        Ok::<_, ItemError>(())
    };
    let downloads = stream::iter(jobs)
        .map(|(idx, rel, aid, size)| async move {
            let f = FileRef {
                case_id,
                event_id,
                attachment_id: &aid,
                expected_size: size,
                rel_path: &rel,
            };
            let _permit = ctx
                .downloads
                .acquire()
                .await
                .map_err(|_| ItemError::Internal("the download limiter is closed".into()))?;
            let w = fetch_verified(
                &ctx.session,
                pending_ref,
                &f,
                ctx.download_attempts,
                ctx.retry_base_delay,
                &ctx.shutdown,
                &ctx.progress,
            )
            .await?;
            Ok::<_, ItemError>((idx, w))
        })
        .buffer_unordered(ctx.max_parallel_downloads.max(1))
        .try_collect::<Vec<(usize, WrittenFile)>>();
    let ((), results) = tokio::try_join!(small, downloads)?;
    for (idx, w) in results {
        if let Some(ma) = listed.get_mut(idx) {
            ma.sha256 = Some(w.sha256_hex());
            ma.size = w.size;
        }
    }
    // Taken once every file is verified, so that what holds the turn is only local work.
    let ticket = ctx.sequences.take(&ctx.state, &ctx.name).await?;
    let sequence = ticket.number();
    let manifest = Manifest {
        subscription: ctx.name.clone(),
        process_code: src.process_code.clone(),
        case_id: src.key.case_id.clone(),
        external_id: src.external_id.clone(),
        event_id: event_id.map(str::to_string),
        round: src.key.round.max(0) as u32,
        received_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        sequence: sequence.max(0) as u64,
        attachments: listed,
    };
    Ok((manifest, ticket))
}

/// One delivery as one transaction in the business database (CONTRACT, "Database layout"):
/// the row, every file as chunks (verified), then COMMIT; a redelivery finds the row by its
/// unique key and writes nothing. The state records it published only after the commit.
async fn publish_db(
    ctx: &SubscriptionCtx,
    db: &BusinessDb,
    src: EntrySource<'_>,
) -> Result<Publication, ItemError> {
    if let Some(waiting) = wait_for_pending(ctx, &src)? {
        return Ok(waiting);
    }
    let case: serde_json::Value = serde_json::from_slice(src.case_raw).unwrap_or_default();
    let event: Option<serde_json::Value> =
        src.event_raw.and_then(|e| serde_json::from_slice(e).ok());
    let record = DeliveryRecord {
        subscription: ctx.name.clone(),
        kind: src.kind.to_string(),
        case_id: src.key.case_id.clone(),
        event_id: src.key.event_id.clone(),
        round: src.key.round,
        external_id: src.external_id.clone(),
        process_code: src.process_code.clone(),
        case_status: case["status"].as_str().map(str::to_string),
        action_type: event
            .as_ref()
            .and_then(|e| e["actionType"].as_str().map(str::to_string)),
        message: event
            .as_ref()
            .and_then(|e| e["message"].as_str().map(str::to_string)),
        case_json: String::from_utf8_lossy(src.case_raw).into_owned(),
        event_json: src
            .event_raw
            .map(|e| String::from_utf8_lossy(e).into_owned()),
        received_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let delivery_id = match db.begin(&record).await.map_err(ItemError::Database)? {
        Begun::Exists(id) => id,
        Begun::New(mut txn) => {
            match fill_db(ctx, &mut txn, &src).await {
                Ok(()) => {}
                Err(e) => {
                    txn.rollback().await;
                    return Err(e);
                }
            }
            let id = txn.delivery_id();
            txn.commit().await.map_err(ItemError::Database)?;
            crate::crashpoint::point("after_db_commit");
            id
        }
    };
    let mut row = row_for(&src, None, delivery_id, None);
    row.entry_name = format!("database:{}#{delivery_id}", db.place());
    ctx.state.record_intent(&row).await?;
    ctx.state.advance(src.key, Stage::Published).await?;
    ctx.progress.add_entry();
    crate::events::published(
        &ctx.name,
        &src.key.case_id,
        &src.external_id,
        &src.key.event_id,
        &row.entry_name,
    );
    if src.kind != "event" {
        super::context::note(
            ctx,
            if src.kind == "reopen" { "reopened" } else { "received" },
            &src.key.case_id,
            Some(&src.external_id),
            None,
            serde_json::json!({
                "entry": row.entry_name,
                "delivery_id": delivery_id,
                "files": src.attachments.iter().filter(|a| a.status.as_deref() == Some("RECEIVED")).count(),
                "round": src.key.round,
                "unusable": src.attachments.iter().filter(|a| a.status.as_deref() != Some("RECEIVED"))
                    .map(|a| serde_json::json!({"file_name": a.file_name, "status": a.status, "attachment_id": a.id}))
                    .collect::<Vec<_>>(),
            }),
        )
        .await;
    }
    Ok(Publication::Done)
}

/// Every file into the open transaction, one after the other (one connection), each with
/// its download attempts; metadata rows after their verified chunks.
async fn fill_db(
    ctx: &SubscriptionCtx,
    txn: &mut DbTxn,
    src: &EntrySource<'_>,
) -> Result<(), ItemError> {
    for a in src.attachments {
        let status = a.status.clone().unwrap_or_default();
        let aid = a.id.clone().unwrap_or_default();
        let mut rec = AttachmentRecord {
            attachment_id: aid.clone(),
            file_name: a.file_name.clone().unwrap_or_default(),
            type_: a.type_.clone().unwrap_or_default(),
            mime_type: a.mime_type.clone().unwrap_or_default(),
            size: a.size.unwrap_or(0),
            sha256: None,
            status: status.clone(),
        };
        if status == "RECEIVED" {
            let file = FileRef {
                case_id: &src.key.case_id,
                event_id: src.event_id,
                attachment_id: &aid,
                expected_size: rec.size,
                rel_path: "",
            };
            let mut tries = 0;
            let (size, sha) = loop {
                tries += 1;
                let attempt = tokio::select! {
                    r = fetch_into(&ctx.session, &file, &ctx.progress, || async { Ok(txn.writer(&aid)) }) => r,
                    _ = ctx.shutdown.requested() => Err(DownloadError::Cancelled),
                };
                match attempt {
                    Ok(v) => break v,
                    Err(e)
                        if e.is_local()
                            || tries >= ctx.download_attempts.max(1)
                            || ctx.shutdown.is_requested() =>
                    {
                        return Err(e.into())
                    }
                    Err(e) => {
                        tracing::warn!(subscription = %ctx.name, case_id = %src.key.case_id,
                            attachment_id = %aid, attempt = tries, error = %e,
                            "download failed verification or broke off, retrying");
                        txn.discard_chunks(&aid)
                            .await
                            .map_err(ItemError::Database)?;
                        let delay = ctx
                            .retry_base_delay
                            .saturating_mul(1 << (tries - 1).min(10))
                            .mul_f64(0.5 + fastrand::f64() * 0.5);
                        tokio::time::sleep(delay).await;
                    }
                }
            };
            rec.size = size;
            rec.sha256 = Some(hex::encode(sha));
        }
        txn.attachment(&rec).await.map_err(ItemError::Database)?;
    }
    Ok(())
}
