//! The outbox: replies the legacy software writes into `SPOOL/outbox/new/`, applied on the
//! hub exactly once, then moved to `outbox/sent/` (with `result.json`) or `outbox/failed/`
//! (with `error.txt`, in French then English) (CONTRACT "Outbox").
//!
//! - [`reply`]: `reply.json` and the files it names, read and checked (no hub call);
//! - [`walk`]: which statuses a reply may ask, and the allowed steps to them (pure);
//! - [`apply`]: the reply on the hub, step by step, each step recorded before the next;
//! - [`files`]: the outbox's directories: listing, notes, moves, pruning;
//! - [`refusal`]: why a reply was refused, in both languages;
//! - [`watch`]: the daemon's inotify watcher over every spool's `outbox/new/`;
//! - here: [`run_pass`], one pass over a subscription's outbox under its lock.

pub mod apply;
pub mod files;
pub mod refusal;
pub mod reply;
pub mod walk;
pub mod watch;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::state::outbox::{ReplyKey, ReplyRow, ReplyStage};
use crate::state::{now_ms, StateError};
use crate::sync::SubscriptionCtx;

use apply::{Failure, Outcome};
use files::{Candidate, Dest, OutboxDirs, ERROR_TXT, RESULT_JSON};
use refusal::Refusal;
use reply::Reply;

/// A folder without `reply.json` younger than this may still be being written (by a
/// program that ignores the tmp-then-rename rule): it waits instead of failing.
const GRACE_WITHOUT_REPLY_JSON: Duration = Duration::from_secs(30);

/// What a pass does besides applying replies.
#[derive(Debug, Clone, Copy)]
pub struct PassOptions {
    /// Prune `sent/` and `failed/` of replies older than this (per-cycle passes only).
    pub retention: Option<Duration>,
    /// A reply that keeps failing for a transient reason this long is given up (moved to
    /// `failed/`, its deposit event deleted). The subscription's `quarantine_after`.
    pub give_up_after: Duration,
}

/// What an outbox pass run by a cycle does: it also prunes `sent/` and `failed/`.
pub fn outbox_options(settings: &crate::config::Settings, subscription: &str) -> PassOptions {
    let sub = settings
        .subscriptions
        .iter()
        .find(|s| s.name == subscription);
    PassOptions {
        retention: sub.map(|s| s.outbox_retention),
        give_up_after: sub.map_or(Duration::from_secs(86400), |s| s.quarantine_after),
    }
}

/// What a pass did, for `once`'s report and the logs.
#[derive(Debug, Default, Clone)]
pub struct OutboxReport {
    pub subscription: String,
    /// Folder names moved to `sent/`.
    pub sent: Vec<String>,
    /// Folder names moved to `failed/`, with the reason (English).
    pub failed: Vec<(String, String)>,
    /// Folders left in `new/` to be tried again, with the reason.
    pub pending: Vec<(String, String)>,
    /// A failure that stopped the pass (lock held, spool unreadable, state database).
    pub fatal: Option<String>,
    /// The subscription's lock was held by someone else: nothing was looked at.
    pub busy: bool,
}

impl OutboxReport {
    /// Nothing left that will be retried. A reply moved to `failed/` is handled: it is
    /// reported (log, digest) and waits for a person, not for the next cycle.
    pub fn ok(&self) -> bool {
        self.fatal.is_none() && self.pending.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
            && self.failed.is_empty()
            && self.pending.is_empty()
            && self.fatal.is_none()
    }
}

/// One pass over a subscription's `outbox/new/`, under the subscription's lock (taken
/// here: a cycle never runs at the same time).
pub async fn run_pass(ctx: &SubscriptionCtx, holder: &str, opts: PassOptions) -> OutboxReport {
    let mut report = OutboxReport {
        subscription: ctx.name.clone(),
        ..Default::default()
    };
    let lock = match ctx.state.lock_subscription(&ctx.name, holder).await {
        Ok(l) => l,
        Err(e) => {
            report.busy = matches!(e, crate::state::LockError::Held { .. });
            report.fatal = Some(e.to_string());
            return report;
        }
    };
    if let Err(e) = pass_locked(ctx, opts, &mut report).await {
        tracing::error!(subscription = %ctx.name, error = %e, "outbox: pass stopped; tried again at the next cycle");
        report.fatal = Some(e);
    }
    ctx.state.clear_holder(&ctx.name).await;
    lock.release().await;
    crate::metrics::outbox_pass(
        &ctx.name,
        report.sent.len(),
        report.failed.len(),
        report.fatal.is_none().then_some(report.pending.len()),
    );
    report
}

async fn pass_locked(
    ctx: &SubscriptionCtx,
    opts: PassOptions,
    report: &mut OutboxReport,
) -> Result<(), String> {
    let dirs = OutboxDirs::of(ctx.spool.root());
    let candidates = dirs.candidates().map_err(|e| {
        format!(
            "cannot list {}: {e}; check that the service user can read it (group of the spool, mode 2770)",
            dirs.new_dir().display()
        )
    })?;
    let mut present: HashSet<ReplyKey> = HashSet::new();
    let mut complete = true;
    for c in &candidates {
        if ctx.shutdown.is_requested() {
            complete = false;
            break;
        }
        match handle(ctx, &dirs, c, opts, report, &mut present).await {
            Ok(Flow::Next) => {}
            Ok(Flow::StopPass(why)) => {
                report.fatal = Some(why);
                complete = false;
                break;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if complete {
        reconcile(ctx, &present).await.map_err(|e| e.to_string())?;
    }
    if let Some(retention) = opts.retention {
        let (removed, failed) = dirs.prune(retention);
        for p in removed {
            tracing::info!(subscription = %ctx.name, path = %p.display(), "outbox: removed a reply older than outbox_retention");
        }
        for (p, e) in failed {
            tracing::warn!(subscription = %ctx.name, path = %p.display(), error = %e,
                "outbox: cannot remove an old reply; check its permissions (the legacy software may have made it read-only)");
        }
    }
    Ok(())
}

enum Flow {
    Next,
    StopPass(String),
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// One entry of `outbox/new/`.
async fn handle(
    ctx: &SubscriptionCtx,
    dirs: &OutboxDirs,
    c: &Candidate,
    opts: PassOptions,
    report: &mut OutboxReport,
    present: &mut HashSet<ReplyKey>,
) -> Result<Flow, StateError> {
    let folder = c.name.to_string_lossy().into_owned();
    // Refused before reply.json could be read: known by the folder name alone.
    let early = if c.name.to_str().is_none() {
        Some(Err(Refusal::NameNotUtf8))
    } else if !c.is_dir {
        Some(Err(Refusal::NotAFolder))
    } else {
        match reply::read_reply_json(&c.path).await {
            Ok(raw) => Some(Ok(raw)),
            Err(Refusal::NoReplyJson) if young(&c.path) => None,
            Err(r) => Some(Err(r)),
        }
    };
    let (key, raw) = match early {
        None => {
            report.pending.push((folder, "no reply.json yet".into()));
            return Ok(Flow::Next);
        }
        Some(Ok(raw)) => (key(ctx, &folder, &sha256_hex(&raw)), Ok(raw)),
        Some(Err(r)) => (key(ctx, &folder, ""), Err(r)),
    };
    present.insert(key.clone());
    let known = ctx.state.outbox_reply(&key).await?;
    let mut resumed = match known {
        Some(row)
            if row.stage == ReplyStage::Finished
                && row.outcome.as_deref() == Some("failed")
                && row.moved_to.is_none() =>
        {
            // Refused by an earlier pass that could not move it: only the move is owed.
            retry_failed_move(ctx, dirs, c, &row, report).await;
            return Ok(Flow::Next);
        }
        Some(row)
            if row.stage == ReplyStage::Finished && row.outcome.as_deref() == Some("sent") =>
        {
            // The very same reply again (same name, same reply.json): it was applied once.
            again_sent(ctx, dirs, c, &row, report).await?;
            return Ok(Flow::Next);
        }
        // A failed reply put back into new/ by a person starts over.
        Some(row) if row.stage == ReplyStage::Finished => None,
        Some(row) => Some(row),
        None => None,
    };
    let raw = match raw {
        Ok(raw) => raw,
        Err(r) => {
            refuse(ctx, dirs, c, resumed, keyless_with(key), r, report).await?;
            return Ok(Flow::Next);
        }
    };
    let reply = match reply::parse(&raw) {
        Ok(r) => r,
        Err(r) => {
            refuse(ctx, dirs, c, resumed, keyless_with(key), r, report).await?;
            return Ok(Flow::Next);
        }
    };
    // The case: one this subscription received.
    let (case_id, external_id) = match resolve_case(ctx, &reply).await? {
        Ok(found) => found,
        Err(r) => {
            refuse(ctx, dirs, c, resumed, keyless_with(key), r, report).await?;
            return Ok(Flow::Next);
        }
    };
    let mut files = Vec::with_capacity(reply.attachments.len());
    for att in &reply.attachments {
        match reply::load_file(&c.path, att, reply::file_limit()).await {
            Ok(f) => files.push(f),
            Err(r) => {
                let row = ReplyRow::new(key.clone(), &case_id, &external_id);
                refuse(ctx, dirs, c, resumed, row, r, report).await?;
                return Ok(Flow::Next);
            }
        }
    }
    let mut row = match resumed.take() {
        Some(row) if row.stage == ReplyStage::HubDone => {
            finish_sent(ctx, dirs, c, row, report).await?;
            return Ok(Flow::Next);
        }
        Some(row) => {
            tracing::info!(subscription = %ctx.name, folder, case_id = %row.case_id,
                stage = row.stage.as_str(), "outbox: resuming a reply where an earlier run stopped");
            row
        }
        None => {
            let mut row = ReplyRow::new(key, &case_id, &external_id);
            row.status_to = reply.status.map(|s| s.as_str().to_string());
            row.files = files.iter().map(|f| f.meta.clone()).collect();
            ctx.state.outbox_start(&row).await?;
            row
        }
    };
    match apply::apply(ctx, &reply, &files, &mut row).await {
        Outcome::Sent => finish_sent(ctx, dirs, c, row, report).await?,
        Outcome::Failed(f) => finish_failed(ctx, dirs, c, row, f, report).await?,
        Outcome::Retry { error, stop } => {
            let now = now_ms();
            row.attempts += 1;
            let since = *row.failing_since.get_or_insert(now);
            row.last_error = Some(error.clone());
            ctx.state.outbox_save(&row).await?;
            let failing_for = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
            if failing_for >= opts.give_up_after && row.attempts > 1 {
                if delivered(&row) {
                    // The documents are on the hub: only the status step is given up.
                    give_up_status(&mut row, &ms_to_rfc3339(since), &error);
                    finish_sent(ctx, dirs, c, row, report).await?;
                    return Ok(Flow::Next);
                }
                let refusal = Refusal::GaveUp {
                    since: ms_to_rfc3339(since),
                    error,
                };
                let f = apply::abandon(ctx, &row, None, refusal).await;
                finish_failed(ctx, dirs, c, row, f, report).await?;
            } else {
                tracing::warn!(subscription = %ctx.name, folder, case_id = %row.case_id,
                    external_id = %row.external_id, attempts = row.attempts, error = %error,
                    "outbox: reply not finished; it stays in outbox/new/ and is tried again at the next pass");
                report.pending.push((folder, error.clone()));
                if stop {
                    return Ok(Flow::StopPass(error));
                }
            }
        }
    }
    Ok(Flow::Next)
}

/// The reply's documents are on the hub (its deposit is SENT): whatever happens to its
/// status step, it is never undone nor reported as failed.
fn delivered(row: &ReplyRow) -> bool {
    row.action_type.as_deref() == Some("ATTACH_DEPOSIT") && row.stage >= ReplyStage::DepositSent
}

/// The status step of a delivered reply is abandoned: recorded as such for result.json.
fn give_up_status(row: &mut ReplyRow, since: &str, error: &str) {
    row.status_note = Some(
        serde_json::json!({
            "outcome": "gave_up",
            "since": since,
            "error": error,
            "note": "the documents are delivered; the case's status could not be changed in time: set it in the HubEE portal",
        })
        .to_string(),
    );
    row.stage = ReplyStage::HubDone;
}

fn key(ctx: &SubscriptionCtx, folder: &str, sha: &str) -> ReplyKey {
    ReplyKey {
        subscription: ctx.name.clone(),
        folder: folder.to_string(),
        reply_sha256: sha.to_string(),
    }
}

fn keyless_with(key: ReplyKey) -> ReplyRow {
    ReplyRow::new(key, "", "")
}

/// Arrived in `new/` less than the grace period ago.
fn young(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < GRACE_WITHOUT_REPLY_JSON)
}

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// The case a reply names, among those this subscription received.
async fn resolve_case(
    ctx: &SubscriptionCtx,
    reply: &Reply,
) -> Result<Result<(String, String), Refusal>, StateError> {
    let by_id = match &reply.case_id {
        Some(id) => ctx.state.known_case(&ctx.name, Some(id), None).await?,
        None => None,
    };
    let by_ext = match &reply.external_id {
        Some(ext) => ctx.state.known_case(&ctx.name, None, Some(ext)).await?,
        None => None,
    };
    let found = match (by_id, by_ext) {
        (Some(a), Some(b)) if a.0 != b.0 => {
            return Ok(Err(Refusal::CaseMismatch {
                case_id: reply.case_id.clone().unwrap_or_default(),
                external_id: reply.external_id.clone().unwrap_or_default(),
            }))
        }
        (Some(a), _) => Some(a),
        (None, Some(b)) if reply.case_id.is_none() => Some(b),
        (None, Some(_)) => None,
        (None, None) => None,
    };
    if let Some(found) = found {
        if let Some(ext) = &reply.external_id {
            if &found.1 != ext {
                return Ok(Err(Refusal::CaseMismatch {
                    case_id: reply.case_id.clone().unwrap_or_default(),
                    external_id: ext.clone(),
                }));
            }
        }
        return Ok(Ok(found));
    }
    let id = reply
        .case_id
        .clone()
        .or_else(|| reply.external_id.clone())
        .unwrap_or_default();
    let owner = ctx
        .state
        .case_owner(
            &ctx.name,
            reply.case_id.as_deref(),
            reply.external_id.as_deref(),
        )
        .await?;
    Ok(Err(match owner {
        Some(owner) => Refusal::OtherSubscription { id, owner },
        None => Refusal::UnknownCase { id },
    }))
}

/// A reply refused before it was applied. When an earlier run had started it (`resumed`),
/// its deposit event is deleted first.
async fn refuse(
    ctx: &SubscriptionCtx,
    dirs: &OutboxDirs,
    c: &Candidate,
    resumed: Option<ReplyRow>,
    fresh: ReplyRow,
    refusal: Refusal,
    report: &mut OutboxReport,
) -> Result<(), StateError> {
    match resumed {
        Some(mut row) if delivered(&row) => {
            // The documents are delivered already; the status step is what is refused.
            let (_, what) = refusal.what();
            give_up_status(&mut row, &ms_to_rfc3339(now_ms()), &what);
            finish_sent(ctx, dirs, c, row, report).await
        }
        Some(row) => {
            let f = apply::abandon(ctx, &row, None, refusal).await;
            finish_failed(ctx, dirs, c, row, f, report).await
        }
        None => {
            let mut row = fresh;
            refuse_new(ctx, dirs, c, &mut row, refusal, report).await
        }
    }
}

async fn refuse_new(
    ctx: &SubscriptionCtx,
    dirs: &OutboxDirs,
    c: &Candidate,
    row: &mut ReplyRow,
    refusal: Refusal,
    report: &mut OutboxReport,
) -> Result<(), StateError> {
    ctx.state.outbox_start(row).await?;
    finish_failed(
        ctx,
        dirs,
        c,
        row.clone(),
        Failure::untouched(refusal),
        report,
    )
    .await
}

/// The result of a sent reply, as `result.json` shows it.
fn result_json(ctx: &SubscriptionCtx, row: &ReplyRow, sent_at: i64) -> serde_json::Value {
    serde_json::json!({
        "subscription": ctx.name,
        "folder": row.key.folder,
        "reply_sha256": row.key.reply_sha256,
        "case_id": row.case_id,
        "external_id": row.external_id,
        "event_id": row.event_id,
        "action_type": row.action_type,
        "status_from": row.status_from,
        "status": row.status_to,
        "status_event_id": row.status_event_id,
        // How the reply's status step ended (with files it follows the deposit): set, found
        // (already there, set by someone else), event_refused, refused, impossible, pending.
        "status_step": row.status_note.as_deref().and_then(|n| serde_json::from_str::<serde_json::Value>(n).ok()),
        "files": row.files.iter().map(|f| serde_json::json!({
            "file": f.file,
            "type": f.type_,
            "mime_type": f.mime_type,
            "size": f.size,
            "sha256": f.sha256,
            "attachment_id": f.attachment_id,
        })).collect::<Vec<_>>(),
        "sent_at": ms_to_rfc3339(sent_at),
    })
}

/// Everything is on the hub: `result.json`, move to `sent/`, record, tell the digest.
async fn finish_sent(
    ctx: &SubscriptionCtx,
    dirs: &OutboxDirs,
    c: &Candidate,
    mut row: ReplyRow,
    report: &mut OutboxReport,
) -> Result<(), StateError> {
    let now = now_ms();
    let result = result_json(ctx, &row, now);
    let text = serde_json::to_vec_pretty(&result).unwrap_or_default();
    let moved = match files::write_note(&c.path, RESULT_JSON, &text) {
        Ok(_) => {
            crate::crashpoint::point("outbox_before_move");
            dirs.move_out(&c.path, &c.name, Dest::Sent)
        }
        Err(e) => Err(e),
    };
    let to = match moved {
        Ok(to) => to,
        Err(e) => {
            // On the hub it is done; only the move is owed, retried at the next pass.
            tracing::error!(subscription = %ctx.name, folder = %row.key.folder, error = %e,
                "outbox: the reply is on the hub but cannot be moved to outbox/sent/; check the permissions of the outbox (group of the spool, mode 2770)");
            report.pending.push((row.key.folder.clone(), e.to_string()));
            return Ok(());
        }
    };
    row.stage = ReplyStage::Finished;
    row.outcome = Some("sent".into());
    row.finished_at = Some(now);
    row.moved_to = Some(to.display().to_string());
    ctx.state.outbox_save(&row).await?;
    note_sent(ctx, &row).await;
    report.sent.push(row.key.folder.clone());
    Ok(())
}

/// Records a reply's outcome in the activity journal (the digest lists both); a failure to
/// record is logged, never a reason to fail the reply.
async fn note_outcome(
    ctx: &SubscriptionCtx,
    kind: &str,
    row: &ReplyRow,
    detail: serde_json::Value,
) {
    if let Err(e) = ctx
        .state
        .record_activity(
            &ctx.name,
            kind,
            Some(row.case_id.as_str()).filter(|c| !c.is_empty()),
            Some(row.external_id.as_str()).filter(|c| !c.is_empty()),
            row.event_id.as_deref(),
            detail,
        )
        .await
    {
        tracing::warn!(subscription = %ctx.name, error = %e, "cannot record outbox activity for the digest");
    }
}

async fn note_sent(ctx: &SubscriptionCtx, row: &ReplyRow) {
    tracing::info!(subscription = %ctx.name, folder = %row.key.folder, case_id = %row.case_id,
        external_id = %row.external_id, event_id = row.event_id.as_deref().unwrap_or(""),
        status = row.status_to.as_deref().unwrap_or(""), files = row.files.len(),
        moved_to = row.moved_to.as_deref().unwrap_or(""),
        "outbox: reply sent to the hub");
    let detail = serde_json::json!({
        "folder": row.key.folder,
        "status": row.status_to,
        "action_type": row.action_type,
        "files": row.files.iter().map(|f| f.file.clone()).collect::<Vec<_>>(),
        "moved_to": row.moved_to,
        "status_step": row.status_note.as_deref().and_then(|n| serde_json::from_str::<serde_json::Value>(n).ok()),
    });
    note_outcome(ctx, "outbox_sent", row, detail).await;
}

/// The same reply (same folder name, same reply.json) already sent: not applied again.
async fn again_sent(
    ctx: &SubscriptionCtx,
    dirs: &OutboxDirs,
    c: &Candidate,
    row: &ReplyRow,
    report: &mut OutboxReport,
) -> Result<(), StateError> {
    let mut result = result_json(ctx, row, row.finished_at.unwrap_or_else(now_ms));
    if let Some(o) = result.as_object_mut() {
        o.insert(
            "note".into(),
            "this reply (same folder name, same reply.json) was already sent; it was not applied again"
                .into(),
        );
    }
    let text = serde_json::to_vec_pretty(&result).unwrap_or_default();
    let moved = files::write_note(&c.path, RESULT_JSON, &text)
        .and_then(|_| dirs.move_out(&c.path, &c.name, Dest::Sent));
    match moved {
        Ok(to) => {
            tracing::warn!(subscription = %ctx.name, folder = %row.key.folder, case_id = %row.case_id,
                moved_to = %to.display(),
                "outbox: this reply was already sent (same folder name and reply.json); not applied again, moved to outbox/sent/");
            report.sent.push(row.key.folder.clone());
        }
        Err(e) => report.pending.push((row.key.folder.clone(), e.to_string())),
    }
    Ok(())
}

/// The text of `error.txt`: French, then English.
fn error_text(ctx: &SubscriptionCtx, row: &ReplyRow, f: &Failure, at: i64) -> String {
    let (what_fr, what_en) = f.refusal.what();
    let (fix_fr, fix_en) = f.refusal.fix();
    let case = match (row.external_id.as_str(), row.case_id.as_str()) {
        ("", "") => "-".to_string(),
        (ext, "") => ext.to_string(),
        ("", id) => id.to_string(),
        (ext, id) => format!("{ext} ({id})"),
    };
    format!(
        "hubee-sync : réponse refusée / reply refused\n\
         abonnement / subscription : {sub}\n\
         réponse / reply : outbox/new/{folder}\n\
         dossier / case : {case}\n\
         date : {date}\n\
         \n\
         Ce qui ne va pas : {what_fr}.\n\
         Que faire : {fix_fr}.\n\
         Sur le hub : {hub_fr}\n\
         \n\
         What is wrong: {what_en}.\n\
         What to do: {fix_en}.\n\
         On the hub: {hub_en}\n",
        sub = ctx.name,
        folder = row.key.folder,
        date = ms_to_rfc3339(at),
        hub_fr = f.hub_fr,
        hub_en = f.hub_en,
    )
}

/// A refused reply whose move to `failed/` failed earlier: the move again (and its
/// `error.txt`, if that could not be written either).
async fn retry_failed_move(
    ctx: &SubscriptionCtx,
    dirs: &OutboxDirs,
    c: &Candidate,
    row: &ReplyRow,
    report: &mut OutboxReport,
) {
    let why = row.last_error.clone().unwrap_or_default();
    let mut moved = Ok(());
    if c.is_dir && !c.path.join(ERROR_TXT).exists() {
        let text = format!("hubee-sync : réponse refusée / reply refused\n{why}\n");
        moved = files::write_note(&c.path, ERROR_TXT, text.as_bytes()).map(|_| ());
    }
    match moved.and_then(|()| dirs.move_out(&c.path, &c.name, Dest::Failed)) {
        Ok(to) => {
            let mut row = row.clone();
            row.moved_to = Some(to.display().to_string());
            if let Err(e) = ctx.state.outbox_save(&row).await {
                tracing::warn!(subscription = %ctx.name, error = %e, "cannot record where a refused reply went");
            }
            report.failed.push((row.key.folder.clone(), why));
        }
        Err(e) => {
            tracing::error!(subscription = %ctx.name, folder = %row.key.folder, error = %e,
                "outbox: a refused reply still cannot be moved to outbox/failed/; check the permissions of the outbox (group of the spool, mode 2770)");
            report.pending.push((row.key.folder.clone(), e.to_string()));
        }
    }
}

/// Refused for good: `error.txt`, move to `failed/`, record, tell the digest.
async fn finish_failed(
    ctx: &SubscriptionCtx,
    dirs: &OutboxDirs,
    c: &Candidate,
    mut row: ReplyRow,
    f: Failure,
    report: &mut OutboxReport,
) -> Result<(), StateError> {
    let now = now_ms();
    let text = error_text(ctx, &row, &f, now);
    let note_dir = if c.is_dir { Some(c.path.clone()) } else { None };
    let moved = match note_dir {
        Some(dir) => files::write_note(&dir, ERROR_TXT, text.as_bytes())
            .and_then(|_| dirs.move_out(&c.path, &c.name, Dest::Failed)),
        None => dirs
            .move_out(&c.path, &c.name, Dest::Failed)
            .and_then(|to| files::write_note(&to, ERROR_TXT, text.as_bytes()).map(|_| to)),
    };
    let reason = f.refusal.to_string();
    let to = match moved {
        Ok(to) => Some(to),
        Err(e) => {
            tracing::error!(subscription = %ctx.name, folder = %row.key.folder, error = %e,
                "outbox: the reply is refused but cannot be moved to outbox/failed/; check the permissions of the outbox (group of the spool, mode 2770)");
            None
        }
    };
    row.stage = ReplyStage::Finished;
    row.outcome = Some("failed".into());
    row.finished_at = Some(now);
    row.last_error = Some(reason.clone());
    row.moved_to = to.as_ref().map(|p| p.display().to_string());
    ctx.state.outbox_save(&row).await?;
    tracing::warn!(subscription = %ctx.name, folder = %row.key.folder, case_id = %row.case_id,
        external_id = %row.external_id, error = %reason, hub = %f.hub_en,
        moved_to = row.moved_to.as_deref().unwrap_or(""),
        "outbox: reply refused; moved to outbox/failed/ with error.txt");
    let detail = serde_json::json!({
        "folder": row.key.folder,
        "error": reason,
        "error_fr": f.refusal.what().0,
        "hub": f.hub_en,
        "moved_to": row.moved_to,
    });
    note_outcome(ctx, "outbox_failed", &row, detail).await;
    report.failed.push((row.key.folder.clone(), reason));
    Ok(())
}

/// Replies recorded as unfinished whose folder is no longer in `new/` (or whose
/// `reply.json` changed): one moved by a run that stopped before recording it is finished;
/// any other was withdrawn, and its deposit event is deleted.
async fn reconcile(ctx: &SubscriptionCtx, present: &HashSet<ReplyKey>) -> Result<(), StateError> {
    for mut row in ctx.state.outbox_unfinished(&ctx.name).await? {
        if present.contains(&row.key) {
            continue;
        }
        if row.stage == ReplyStage::HubDone || delivered(&row) {
            if row.stage < ReplyStage::HubDone {
                give_up_status(
                    &mut row,
                    &ms_to_rfc3339(now_ms()),
                    "the reply's folder left outbox/new/ before its status step",
                );
            }
            row.stage = ReplyStage::Finished;
            row.outcome = Some("sent".into());
            row.finished_at = Some(now_ms());
            ctx.state.outbox_save(&row).await?;
            note_sent(ctx, &row).await;
            continue;
        }
        let f = apply::abandon(ctx, &row, None, Refusal::Withdrawn).await;
        row.stage = ReplyStage::Finished;
        row.outcome = Some("failed".into());
        row.finished_at = Some(now_ms());
        row.last_error = Some(Refusal::Withdrawn.to_string());
        ctx.state.outbox_save(&row).await?;
        tracing::warn!(subscription = %ctx.name, folder = %row.key.folder, case_id = %row.case_id,
            hub = %f.hub_en, "outbox: a reply left outbox/new/ (or its reply.json changed) before it was sent; it is abandoned");
        if let Err(e) = ctx
            .state
            .record_activity(
                &ctx.name,
                "outbox_failed",
                Some(row.case_id.as_str()).filter(|c| !c.is_empty()),
                Some(row.external_id.as_str()).filter(|c| !c.is_empty()),
                row.event_id.as_deref(),
                serde_json::json!({"folder": row.key.folder, "error": Refusal::Withdrawn.to_string(), "hub": f.hub_en}),
            )
            .await
        {
            tracing::warn!(subscription = %ctx.name, error = %e, "cannot record outbox activity for the digest");
        }
    }
    Ok(())
}
