//! Applies one validated reply on the hub (CONTRACT "Outbox"; PROTOCOL §8.5, §10.1, §10.20),
//! recording each step in the state database before the next one starts, so that a restart
//! resumes where it stopped:
//!
//! - with files: the documents first, without touching the case's status: the
//!   `ATTACH_DEPOSIT` event (`caseCurrentStatus` = `caseNewStatus` = the status just read;
//!   found again by its marker if it exists) → one PUT per file (digest, exact size) → every
//!   piece `RECEIVED` → the event PATCHed `SENT` (stage `deposit_sent`: delivered). Only a
//!   refused deposit (an upload refused, a piece `CORRUPTED`/`REJECTED`) is withdrawn with a
//!   DELETE. Then, as a step of its own retried alone, the status change
//!   ([`crate::sync::transition`]): whatever it meets, the documents stay delivered and
//!   `result.json` says how the status step ended. So a case never reaches `DONE` without
//!   its document, on a hub where events move the status or on one where only PATCH does;
//! - without files: the status change, whose one event carries the message; with no status
//!   (or a case someone already moved there) a `SENDING_MESSAGE` event for the message.
//!
//! A POST is never repeated blindly: before posting, and after a POST whose answer was lost,
//! the case's events are searched for the reply's marker (in the event's `comment`).

use std::time::Duration;

use crate::hubee::model::{Case, Event, NewEvent, NewEventAttachment};
use crate::hubee::status::{at_or_past, CaseStatus};
use crate::hubee::HubError;
use crate::state::outbox::{ReplyRow, ReplyStage};
use crate::state::StateError;
use crate::sync::transition::{change_status, is_final, status_event, Change, ChangeError, Moved};
use crate::sync::SubscriptionCtx;

use super::refusal::Refusal;
use super::reply::{LoadedFile, Reply};
use super::walk::status_walk;

/// PROTOCOL §4 A1: the upload endpoint's backend gives up after 300 s.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// What became of a reply this pass.
#[derive(Debug)]
pub enum Outcome {
    /// Everything is on the hub (the row is at `HubDone`).
    Sent,
    /// Refused for good; what the hub was left with is in the texts.
    Failed(Failure),
    /// Not finished: tried again at the next pass (`stop`: the whole pass should stop, e.g.
    /// the credentials were refused).
    Retry { error: String, stop: bool },
}

/// A reply refused for good, and what is left of it on the hub (French, English).
#[derive(Debug, Clone)]
pub struct Failure {
    pub refusal: Refusal,
    pub hub_fr: String,
    pub hub_en: String,
}

impl Failure {
    /// Refused before anything was done on the hub.
    pub fn untouched(refusal: Refusal) -> Failure {
        Failure {
            refusal,
            hub_fr: "rien n'a été modifié.".into(),
            hub_en: "nothing was changed.".into(),
        }
    }
}

/// The marker that finds our event again among the case's events: the first line of its
/// `comment`.
pub fn marker(reply_sha256: &str, folder: &str) -> String {
    let short: String = reply_sha256.chars().take(16).collect();
    let safe: String = folder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    format!("hubee-sync:reply:{short}:{safe}")
}

fn has_marker(ev: &Event, marker: &str) -> bool {
    ev.comment
        .as_deref()
        .is_some_and(|c| c.lines().next().map(str::trim) == Some(marker))
}

/// Why a step could not finish this pass.
enum Stop {
    Failed(Refusal),
    Retry(String, bool),
    State(StateError),
}

impl From<StateError> for Stop {
    fn from(e: StateError) -> Stop {
        Stop::State(e)
    }
}

fn transient(doing: &str, e: &HubError) -> Stop {
    Stop::Retry(
        format!("{doing}: {e}"),
        e.is_auth() || e.status() == Some(401) || e.is_fenced(),
    )
}

/// Applies `reply` (whose files are `files`, read this pass) as recorded in `row`.
pub async fn apply(
    ctx: &SubscriptionCtx,
    reply: &Reply,
    files: &[LoadedFile],
    row: &mut ReplyRow,
) -> Outcome {
    let mut a = Applier {
        ctx,
        reply,
        files,
        marker: marker(&row.key.reply_sha256, &row.key.folder),
        row,
        status_now: None,
    };
    match a.run().await {
        Ok(()) => Outcome::Sent,
        Err(Stop::Failed(refusal)) => Outcome::Failed(a.abandon(refusal).await),
        Err(Stop::Retry(error, stop)) => Outcome::Retry { error, stop },
        Err(Stop::State(e)) => Outcome::Retry {
            error: e.to_string(),
            stop: true,
        },
    }
}

struct Applier<'a> {
    ctx: &'a SubscriptionCtx,
    reply: &'a Reply,
    files: &'a [LoadedFile],
    row: &'a mut ReplyRow,
    marker: String,
    /// The case's status as last seen or set this pass.
    status_now: Option<CaseStatus>,
}

impl Applier<'_> {
    fn with_files(&self) -> bool {
        !self.reply.attachments.is_empty()
    }

    async fn save(&mut self) -> Result<(), Stop> {
        self.ctx.state.outbox_save(self.row).await?;
        Ok(())
    }

    async fn get_case(&self) -> Result<Case, Stop> {
        match self.ctx.session.get_case(&self.row.case_id).await {
            Ok((case, _)) => Ok(case),
            Err(e) if matches!(e.status(), Some(403 | 404)) => {
                Err(Stop::Failed(Refusal::CaseNotOnHub {
                    error: e.to_string(),
                }))
            }
            Err(e) => Err(transient("reading the case on the hub", &e)),
        }
    }

    async fn run(&mut self) -> Result<(), Stop> {
        let case = self.get_case().await?;
        let raw = case.status.clone().unwrap_or_default();
        let current: CaseStatus = raw
            .parse()
            .map_err(|_| Stop::Failed(Refusal::UnknownCaseStatus { status: raw }))?;
        self.status_now = Some(current);
        if self.row.status_from.is_none() {
            self.row.status_from = Some(current.as_str().to_string());
            self.save().await?;
        }
        // An impossible status is found before anything is posted: the hub stays untouched.
        if let (Some(target), ReplyStage::Started) = (self.reply.status, self.row.stage) {
            if !at_or_past(current, target) {
                status_walk(current, target, self.ctx.receipt_status).map_err(|i| {
                    Stop::Failed(Refusal::ImpossibleStatus {
                        from: i.from.to_string(),
                        to: i.to.to_string(),
                    })
                })?;
            }
        }
        if self.with_files() {
            self.deposit(case).await?;
            // The uploads were a long step: the status step reads the case again.
            self.status_step(None).await
        } else {
            self.status_step(Some(case)).await
        }
    }

    fn status_from(&self) -> String {
        self.row
            .status_from
            .clone()
            .or_else(|| self.status_now.map(|s| s.as_str().to_string()))
            .unwrap_or_default()
    }

    /// The comment of our events: the marker first, then the reply's own comment.
    fn comment(&self) -> String {
        match &self.reply.comment {
            Some(c) => format!("{}\n{c}", self.marker),
            None => self.marker.clone(),
        }
    }

    /// A deposit (no status change: `caseCurrentStatus` = `caseNewStatus` = the status just
    /// read) or a message event.
    fn new_event(&self, action_type: &str) -> NewEvent {
        let (current, new) = match action_type {
            "ATTACH_DEPOSIT" => {
                let now = self
                    .status_now
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| self.status_from());
                (Some(now.clone()), Some(now))
            }
            _ => (None, None),
        };
        let deposit = action_type == "ATTACH_DEPOSIT";
        NewEvent {
            action_type: action_type.to_string(),
            notification: true,
            author: Some(self.ctx.author.clone()),
            message: self.reply.message.clone(),
            comment: Some(self.comment()),
            case_current_status: current,
            case_new_status: new,
            attachments: self
                .files
                .iter()
                .filter(|_| deposit)
                .map(|f| NewEventAttachment {
                    file_name: f.meta.file.clone(),
                    type_: f.meta.type_.clone(),
                    size: f.meta.size,
                    mime_type: f.meta.mime_type.clone(),
                })
                .collect(),
        }
    }

    /// Our event on the case, found by its marker.
    fn find_ours<'c>(&self, case: &'c Case, action_type: &str) -> Option<&'c Event> {
        case.events
            .iter()
            .find(|e| has_marker(e, &self.marker) && e.action_type.as_deref() == Some(action_type))
    }

    /// POSTs an event unless it is already there; after a lost answer, looks for it again.
    async fn post_once(&mut self, case: &Case, action_type: &str) -> Result<Event, Stop> {
        if let Some(ev) = self.find_ours(case, action_type) {
            tracing::info!(subscription = %self.ctx.name, folder = %self.row.key.folder,
                case_id = %self.row.case_id, event_id = ?ev.id,
                "outbox: the reply's event is already on the hub (an earlier run posted it); not posting again");
            return Ok(ev.clone());
        }
        let body = self.new_event(action_type);
        match self.ctx.session.post_event(&self.row.case_id, &body).await {
            Ok(ev) if ev.id.is_some() => {
                crate::crashpoint::point("outbox_after_event_post");
                Ok(ev)
            }
            Ok(_) => {
                self.look_again(action_type, "the hub answered without an event id")
                    .await
            }
            Err(e) if e.maybe_applied() || matches!(e, HubError::Decode { .. }) => {
                self.look_again(action_type, &e.to_string()).await
            }
            Err(e) if e.is_event_cap() => Err(Stop::Failed(Refusal::EventCap {
                error: e.to_string(),
            })),
            Err(e) if is_final(&e) => Err(Stop::Failed(Refusal::HubRefused {
                doing_fr: "la création de l'événement",
                doing_en: "creating the event",
                error: e.to_string(),
            })),
            Err(e) => Err(transient("posting the reply's event", &e)),
        }
    }

    async fn look_again(&mut self, action_type: &str, why: &str) -> Result<Event, Stop> {
        tracing::warn!(subscription = %self.ctx.name, folder = %self.row.key.folder,
            case_id = %self.row.case_id, error = %why,
            "outbox: the answer to the event POST was lost; looking for the event on the case before anything else");
        let case = self.get_case().await?;
        match self.find_ours(&case, action_type) {
            Some(ev) if ev.id.is_some() => Ok(ev.clone()),
            _ => Err(Stop::Retry(
                format!("posting the reply's event: {why}; it is not on the case, so it is posted at the next pass"),
                false,
            )),
        }
    }

    /// With files: the deposit event, the uploads, the event SENT. The case's status is not
    /// touched here: the status step follows once the documents are delivered.
    async fn deposit(&mut self, case: Case) -> Result<(), Stop> {
        self.row.action_type = Some("ATTACH_DEPOSIT".into());
        if self.row.stage < ReplyStage::EventCreated || self.row.event_id.is_none() {
            let ev = self.post_once(&case, "ATTACH_DEPOSIT").await?;
            self.adopt(&ev)?;
            if ev.status.as_deref() == Some("SENT") {
                // A run stopped right after the PATCH to SENT: the documents are delivered.
                self.row.stage = ReplyStage::DepositSent;
                self.save().await?;
                return Ok(());
            }
            self.row.stage = ReplyStage::EventCreated;
            self.save().await?;
        }
        if self.row.stage < ReplyStage::FilesUploaded {
            self.upload_all().await?;
            crate::crashpoint::point("outbox_after_received_check");
            self.row.stage = ReplyStage::FilesUploaded;
            self.save().await?;
        }
        if self.row.stage < ReplyStage::DepositSent {
            let event_id = self.row.event_id.clone().unwrap_or_default();
            crate::crashpoint::point("outbox_before_sent");
            match self
                .ctx
                .session
                .patch_event_status(&self.row.case_id, &event_id, "SENT")
                .await
            {
                Ok(()) => {}
                Err(e) if is_final(&e) => {
                    // A PATCH whose first answer was lost may be refused now: look.
                    let ev = self.get_event().await?;
                    if ev.status.as_deref() != Some("SENT") {
                        return Err(Stop::Failed(Refusal::HubRefused {
                            doing_fr: "le passage de l'événement de dépôt à SENT",
                            doing_en: "setting the deposit event SENT",
                            error: e.to_string(),
                        }));
                    }
                }
                Err(e) => return Err(transient("setting the deposit event SENT", &e)),
            }
            crate::crashpoint::point("outbox_after_sent");
            self.row.stage = ReplyStage::DepositSent;
            self.save().await?;
        }
        Ok(())
    }

    /// Records the event's id and matches its attachments to our files by (fileName, size),
    /// never by position, with `type` only to break ties: an SI's piece may come back without
    /// its type (PROTOCOL §8.5, §10.22).
    fn adopt(&mut self, ev: &Event) -> Result<(), Stop> {
        self.row.event_id = ev.id.clone();
        let mut taken: Vec<&str> = Vec::new();
        let mut files = Vec::with_capacity(self.files.len());
        for f in self.files {
            let candidates: Vec<_> = ev
                .attachments
                .iter()
                .filter(|a| {
                    a.file_name.as_deref() == Some(f.meta.file.as_str())
                        && a.size == Some(f.meta.size)
                        && a.id.as_deref().is_some_and(|id| !taken.contains(&id))
                })
                .collect();
            let found = candidates
                .iter()
                .find(|a| a.type_.as_deref() == Some(f.meta.type_.as_str()))
                .or_else(|| candidates.iter().find(|a| a.type_.is_none()))
                .or_else(|| candidates.first())
                .copied();
            let Some(id) = found.and_then(|a| a.id.as_deref()) else {
                return Err(Stop::Failed(Refusal::HubRefused {
                    doing_fr: "la déclaration des fichiers",
                    doing_en: "declaring the files",
                    error: format!(
                        "the event {} the hub returned has no attachment {:?} of {} bytes",
                        ev.id.as_deref().unwrap_or("?"),
                        f.meta.file,
                        f.meta.size
                    ),
                }));
            };
            taken.push(id);
            let mut meta = f.meta.clone();
            meta.attachment_id = Some(id.to_string());
            files.push(meta);
        }
        self.row.files = files;
        Ok(())
    }

    async fn get_event(&mut self) -> Result<Event, Stop> {
        let event_id = self.row.event_id.clone().unwrap_or_default();
        match self
            .ctx
            .session
            .get_event(&self.row.case_id, &event_id)
            .await
        {
            Ok((ev, _)) => Ok(ev),
            Err(e) if e.is_not_found() => {
                // Gone (deleted by someone else): start the deposit again at the next pass.
                self.row.event_id = None;
                self.row.stage = ReplyStage::Started;
                self.row.files.clear();
                self.save().await?;
                Err(Stop::Retry(
                    format!("the deposit event {event_id} is no longer on the hub; a new one is created at the next pass"),
                    false,
                ))
            }
            Err(e) => Err(transient("reading the deposit event", &e)),
        }
    }

    /// One PUT per file not yet `RECEIVED`, then checks that every attachment is.
    async fn upload_all(&mut self) -> Result<(), Stop> {
        let event_id = self.row.event_id.clone().unwrap_or_default();
        let ev = self.get_event().await?;
        let status_of = |ev: &Event, id: &str| {
            ev.attachments
                .iter()
                .find(|a| a.id.as_deref() == Some(id))
                .and_then(|a| a.status.clone())
        };
        for i in 0..self.row.files.len() {
            let meta = self.row.files[i].clone();
            let Some(att_id) = meta.attachment_id.clone() else {
                continue;
            };
            if status_of(&ev, &att_id).as_deref() == Some("RECEIVED") {
                if !self.row.files[i].uploaded {
                    self.row.files[i].uploaded = true;
                    self.save().await?;
                }
                continue;
            }
            let Some(loaded) = self.files.iter().find(|f| f.meta.file == meta.file) else {
                continue;
            };
            if loaded.meta.sha256 != meta.sha256 || loaded.meta.size != meta.size {
                return Err(Stop::Failed(Refusal::FileChanged { file: meta.file }));
            }
            let mut sha = [0u8; 32];
            if hex::decode_to_slice(&meta.sha256, &mut sha).is_err() {
                return Err(Stop::Failed(Refusal::FileChanged { file: meta.file }));
            }
            let put = self.ctx.session.upload_event_attachment(
                &self.row.case_id,
                &event_id,
                &att_id,
                loaded.data.clone(),
                &sha,
            );
            match tokio::time::timeout(UPLOAD_TIMEOUT, put).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if is_final(&e) => {
                    return Err(Stop::Failed(Refusal::HubRefused {
                        doing_fr: "l'envoi d'un fichier",
                        doing_en: "uploading a file",
                        error: format!("{}: {e}", meta.file),
                    }))
                }
                Ok(Err(e)) => {
                    return Err(transient(&format!("uploading {}", meta.file), &e));
                }
                Err(_) => {
                    return Err(Stop::Retry(
                        format!(
                            "uploading {} took longer than the hub's 5 minutes; tried again at the next pass",
                            meta.file
                        ),
                        false,
                    ))
                }
            }
            crate::crashpoint::point("outbox_after_put");
            self.row.files[i].uploaded = true;
            self.save().await?;
        }
        // PROTOCOL §8.5 step 3: every attachment must be RECEIVED before the event is SENT.
        let ev = self.get_event().await?;
        for meta in &self.row.files {
            let status = meta
                .attachment_id
                .as_deref()
                .and_then(|id| status_of(&ev, id))
                .unwrap_or_else(|| "absent".into());
            match status.as_str() {
                "RECEIVED" => {}
                "PENDING" => {
                    return Err(Stop::Retry(
                        format!("the hub has not marked {} RECEIVED yet", meta.file),
                        false,
                    ))
                }
                _ => {
                    return Err(Stop::Failed(Refusal::FileNotAccepted {
                        file: meta.file.clone(),
                        status,
                    }))
                }
            }
        }
        Ok(())
    }

    /// The reply's status, as a step of its own ([`crate::sync::transition`]): one event, from
    /// the status just read; nothing when the case already is at or past it. After a deposit
    /// nothing here withdraws the documents: what the step met is recorded for `result.json`
    /// (`status_note`), and only a transient failure leaves it to be retried alone. Without
    /// files, the event carries the message; a case already there still gets the message.
    async fn status_step(&mut self, fresh: Option<Case>) -> Result<(), Stop> {
        if self.row.stage >= ReplyStage::HubDone {
            return Ok(());
        }
        let with_files = self.with_files();
        let Some(target) = self.reply.status else {
            if with_files {
                return self.done(None).await;
            }
            let case = match fresh {
                Some(c) => c,
                None => self.get_case().await?,
            };
            return self.message_event(&case).await;
        };
        let marker = self.marker.clone();
        let comment = self.comment();
        let author = self.ctx.author.clone();
        let message = if with_files {
            None
        } else {
            self.reply.message.clone()
        };
        let receipt = self.ctx.receipt_status;
        let path = |from: CaseStatus| status_walk(from, target, receipt).ok();
        let event =
            |from: CaseStatus| status_event(&author, message.clone(), &comment, from, target);
        let change = Change {
            case_id: &self.row.case_id,
            target,
            marker: &marker,
            path: &path,
            event: &event,
            owe_event_at_target: false,
        };
        let moved = change_status(&self.ctx.session, &change, fresh).await;
        crate::crashpoint::point("outbox_after_status_patch");
        match moved {
            Ok(Moved::Done { event_id, from }) => {
                self.status_now = Some(target);
                if with_files {
                    self.row.status_event_id = event_id;
                } else {
                    self.row.action_type = Some("STATUS_UPDATE".into());
                    self.row.event_id = event_id;
                }
                self.done(Some(serde_json::json!({
                    "outcome": "set", "from": from.as_str(), "status": target.as_str(),
                })))
                .await
            }
            Ok(Moved::AlreadyThere { status }) => {
                self.status_now = Some(status);
                tracing::info!(subscription = %self.ctx.name, folder = %self.row.key.folder,
                    case_id = %self.row.case_id, status = %status, asked = %target,
                    "outbox: the case is already at or past the reply's status (someone else set it); no status event");
                let note = serde_json::json!({
                    "outcome": "found", "status": status.as_str(),
                    "note": format!("the case was already {status} (set by someone else, e.g. in the HubEE portal); no status event was posted"),
                });
                if !with_files && self.reply.message.is_some() {
                    self.row.status_note = Some(note.to_string());
                    let case = self.get_case().await?;
                    return self.message_event(&case).await;
                }
                self.done(Some(note)).await
            }
            Ok(Moved::EventRefused {
                error,
                cap,
                status,
                reached,
            }) => {
                self.status_now = Some(status);
                if !with_files {
                    return Err(Stop::Failed(if cap {
                        Refusal::EventCap {
                            error: error.to_string(),
                        }
                    } else {
                        Refusal::HubRefused {
                            doing_fr: "l'événement de changement de statut",
                            doing_en: "the status change event",
                            error: error.to_string(),
                        }
                    }));
                }
                tracing::warn!(subscription = %self.ctx.name, folder = %self.row.key.folder,
                    case_id = %self.row.case_id, error = %error, cap, status_reached = reached,
                    "outbox: the documents are delivered, but the hub refused the status event for good");
                self.done(Some(serde_json::json!({
                    "outcome": "event_refused", "cap": cap, "status": status.as_str(),
                    "status_reached": reached, "error": error.to_string(),
                    "note": if cap {
                        "the case has reached HubEE's limit of events: the status event could not be posted (the status was set by PATCH where the hub allowed it); set or confirm the status in the HubEE portal, or contact HubEE support"
                    } else {
                        "the hub refused the status event; check the case's status in the HubEE portal"
                    },
                })))
                .await
            }
            Err(ChangeError::Transient { doing, error }) => {
                if with_files {
                    self.row.status_note = Some(
                        serde_json::json!({"outcome": "pending", "error": format!("{doing}: {error}")})
                            .to_string(),
                    );
                    self.save().await?;
                }
                Err(transient(doing, &error))
            }
            Err(ChangeError::Impossible { from, to }) => {
                self.status_refused(Refusal::ImpossibleStatus {
                    from: from.to_string(),
                    to: to.to_string(),
                })
                .await
            }
            Err(ChangeError::UnknownStatus(status)) => {
                self.status_refused(Refusal::UnknownCaseStatus { status })
                    .await
            }
            Err(ChangeError::Refused { error, .. }) => {
                let refusal = if matches!(error.status(), Some(403 | 404)) {
                    Refusal::CaseNotOnHub {
                        error: error.to_string(),
                    }
                } else {
                    Refusal::HubRefused {
                        doing_fr: "le changement de statut du dossier",
                        doing_en: "changing the case's status",
                        error: format!("to {target}: {error}"),
                    }
                };
                self.status_refused(refusal).await
            }
        }
    }

    /// The status step is refused for good: without files the reply fails; after a deposit
    /// the documents stay delivered and `result.json` says why the status did not change.
    async fn status_refused(&mut self, refusal: Refusal) -> Result<(), Stop> {
        if !self.with_files() {
            return Err(Stop::Failed(refusal));
        }
        let (_, what) = refusal.what();
        tracing::warn!(subscription = %self.ctx.name, folder = %self.row.key.folder,
            case_id = %self.row.case_id, error = %what,
            "outbox: the documents are delivered, but the case's status could not be changed");
        self.done(Some(serde_json::json!({
            "outcome": "refused", "error": what,
            "note": "the documents are delivered; the case's status was not changed: set it in the HubEE portal",
        })))
        .await
    }

    /// The `SENDING_MESSAGE` event that carries the reply's message.
    async fn message_event(&mut self, case: &Case) -> Result<(), Stop> {
        self.row.action_type = Some("SENDING_MESSAGE".into());
        let ev = self.post_once(case, "SENDING_MESSAGE").await?;
        self.row.event_id = ev.id.clone();
        self.row.stage = ReplyStage::HubDone;
        self.save().await
    }

    /// Everything is on the hub; `note` says how the status step ended.
    async fn done(&mut self, note: Option<serde_json::Value>) -> Result<(), Stop> {
        if let Some(n) = note {
            self.row.status_note = Some(n.to_string());
        }
        self.row.stage = ReplyStage::HubDone;
        self.save().await
    }

    async fn abandon(&mut self, refusal: Refusal) -> Failure {
        abandon(self.ctx, self.row, self.status_now, refusal).await
    }
}

/// Leaves the hub clean after a reply failed for good: an `IN_PROGRESS` deposit event is
/// DELETEd (allowed in that state only). Says what the hub was left with.
pub async fn abandon(
    ctx: &SubscriptionCtx,
    row: &ReplyRow,
    status_now: Option<CaseStatus>,
    refusal: Refusal,
) -> Failure {
    let from = row.status_from.clone();
    let mut now = status_now.map(|s| s.as_str().to_string());
    if now.is_none() && from.is_some() {
        // Not seen this pass (given up, or withdrawn): ask, so the text tells the truth.
        now = ctx
            .session
            .get_case(&row.case_id)
            .await
            .ok()
            .and_then(|(c, _)| c.status);
    }
    let (mut fr, mut en) = match (&from, &now) {
        (Some(f), Some(n)) if f != n => (
            format!("le statut du dossier est passé de {f} à {n}."),
            format!("the case's status went from {f} to {n}."),
        ),
        _ => (
            "le statut du dossier n'a pas changé.".to_string(),
            "the case's status was not changed.".to_string(),
        ),
    };
    // Only a deposit not yet SENT is withdrawn: once SENT, the documents are delivered.
    let deposit_open =
        row.action_type.as_deref() == Some("ATTACH_DEPOSIT") && row.stage < ReplyStage::DepositSent;
    match (&row.event_id, deposit_open) {
        (Some(event_id), true) => match ctx.session.delete_event(&row.case_id, event_id).await {
            Ok(()) => {
                fr = format!("l'événement de dépôt {event_id} a été supprimé ; {fr}");
                en = format!("the deposit event {event_id} was deleted; {en}");
            }
            Err(e) => {
                tracing::warn!(subscription = %ctx.name, case_id = %row.case_id, event_id,
                    error = %e, "outbox: cannot delete the abandoned deposit event; it stays IN_PROGRESS, which the OSL never sees");
                fr = format!("l'événement de dépôt {event_id} n'a pas pu être supprimé ({e}) ; il reste « en cours », invisible pour l'OSL ; {fr}");
                en = format!("the deposit event {event_id} could not be deleted ({e}); it stays IN_PROGRESS, which the OSL never sees; {en}");
            }
        },
        (None, _) if row.stage == ReplyStage::Started && (now.is_none() || from == now) => {
            fr = "rien n'a été modifié.".into();
            en = "nothing was changed.".into();
        }
        _ => {}
    }
    Failure {
        refusal,
        hub_fr: fr,
        hub_en: en,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_safe_and_bounded() {
        let m = marker(&"ab".repeat(32), "../../x y/é");
        assert_eq!(m, "hubee-sync:reply:abababababababab:.._.._x_y__");
        assert!(marker("00", &"n".repeat(500)).len() < 140);
    }

    #[test]
    fn marker_matches_the_first_line_exactly() {
        let ev = |c: &str| Event {
            id: Some("e".into()),
            action_type: None,
            status: None,
            message: None,
            comment: Some(c.into()),
            case_current_status: None,
            case_new_status: None,
            create_date_time: None,
            attachments: vec![],
            transmitter: None,
        };
        assert!(has_marker(
            &ev("hubee-sync:reply:1:r1\nmerci"),
            "hubee-sync:reply:1:r1"
        ));
        assert!(!has_marker(
            &ev("hubee-sync:reply:1:r10"),
            "hubee-sync:reply:1:r1"
        ));
    }
}
