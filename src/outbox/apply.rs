//! Applies one validated reply on the hub, in the order of CONTRACT "Outbox", recording each
//! step in the state database before the next one starts, so that a restart resumes where it
//! stopped:
//!
//! - with files: `ATTACH_DEPOSIT` event (found again by its marker if it exists) → one PUT per
//!   file (digest, exact size) → every attachment `RECEIVED` → the case's status walk → the
//!   event PATCHed to `SENT`. Until that last PATCH the OSL sees nothing, and a reply that
//!   fails for good has its event DELETEd, so a failed upload never leaves a case `DONE`
//!   without its document;
//! - without files: the status walk → one `STATUS_UPDATE` (or `SENDING_MESSAGE`) event.
//!
//! A POST is never repeated blindly: before posting, and after a POST whose answer was lost,
//! the case's events are searched for the reply's marker (in the event's `comment`).

use std::time::Duration;

use crate::hubee::model::{Case, Event, NewEvent, NewEventAttachment};
use crate::hubee::status::CaseStatus;
use crate::hubee::HubError;
use crate::state::outbox::{ReplyRow, ReplyStage};
use crate::state::StateError;
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

/// A 4xx that no retry will fix (401 is a credentials problem, 408 and 429 are transient).
fn is_final(e: &HubError) -> bool {
    matches!(e.status(), Some(s) if (400..500).contains(&s) && !matches!(s, 401 | 408 | 429))
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
        if let (Some(target), true) = (self.reply.status, self.row.stage < ReplyStage::StatusSet) {
            status_walk(current, target, self.ctx.receipt_status).map_err(|i| {
                Stop::Failed(Refusal::ImpossibleStatus {
                    from: i.from.to_string(),
                    to: i.to.to_string(),
                })
            })?;
        }
        if self.with_files() {
            self.deposit(case).await
        } else {
            self.walk().await?;
            self.status_event(case).await
        }
    }

    fn status_from(&self) -> String {
        self.row
            .status_from
            .clone()
            .or_else(|| self.status_now.map(|s| s.as_str().to_string()))
            .unwrap_or_default()
    }

    fn new_event(&self, action_type: &str) -> NewEvent {
        let from = self.status_from();
        let (current, new) = match (action_type, self.reply.status) {
            ("SENDING_MESSAGE", _) => (None, None),
            (_, Some(t)) => (Some(from), Some(t.as_str().to_string())),
            (_, None) => (Some(from.clone()), Some(from)),
        };
        let comment = match &self.reply.comment {
            Some(c) => format!("{}\n{c}", self.marker),
            None => self.marker.clone(),
        };
        NewEvent {
            action_type: action_type.to_string(),
            notification: true,
            author: Some(self.ctx.author.clone()),
            message: self.reply.message.clone(),
            comment: Some(comment),
            case_current_status: current,
            case_new_status: new,
            attachments: self
                .files
                .iter()
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

    /// With files: deposit event, uploads, status walk, event SENT.
    async fn deposit(&mut self, case: Case) -> Result<(), Stop> {
        self.row.action_type = Some("ATTACH_DEPOSIT".into());
        if self.row.stage < ReplyStage::EventCreated || self.row.event_id.is_none() {
            let ev = self.post_once(&case, "ATTACH_DEPOSIT").await?;
            self.adopt(&ev)?;
            if ev.status.as_deref() == Some("SENT") {
                // A run stopped right after the final PATCH: everything is on the hub.
                self.row.stage = ReplyStage::HubDone;
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
        if self.row.stage < ReplyStage::StatusSet {
            self.walk().await?;
        }
        if self.row.stage < ReplyStage::HubDone {
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
                    return Err(Stop::Failed(Refusal::HubRefused {
                        doing_fr: "le passage de l'événement de dépôt à SENT",
                        doing_en: "setting the deposit event SENT",
                        error: e.to_string(),
                    }))
                }
                Err(e) => return Err(transient("setting the deposit event SENT", &e)),
            }
            crate::crashpoint::point("outbox_after_sent");
            self.row.stage = ReplyStage::HubDone;
            self.save().await?;
        }
        Ok(())
    }

    /// Records the event's id and matches its attachments to our files by (fileName, type,
    /// size), never by position (PROTOCOL §8.5).
    fn adopt(&mut self, ev: &Event) -> Result<(), Stop> {
        self.row.event_id = ev.id.clone();
        let mut taken: Vec<&str> = Vec::new();
        let mut files = Vec::with_capacity(self.files.len());
        for f in self.files {
            let found = ev.attachments.iter().find(|a| {
                a.file_name.as_deref() == Some(f.meta.file.as_str())
                    && a.type_.as_deref() == Some(f.meta.type_.as_str())
                    && a.size == Some(f.meta.size)
                    && a.id.as_deref().is_some_and(|id| !taken.contains(&id))
            });
            let Some(id) = found.and_then(|a| a.id.as_deref()) else {
                return Err(Stop::Failed(Refusal::HubRefused {
                    doing_fr: "la déclaration des fichiers",
                    doing_en: "declaring the files",
                    error: format!(
                        "the event {} the hub returned has no attachment {:?} of type {:?} and {} bytes",
                        ev.id.as_deref().unwrap_or("?"),
                        f.meta.file,
                        f.meta.type_,
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

    /// PATCHes the case through the allowed steps to the reply's status (skipping steps the
    /// case has passed), then records it.
    async fn walk(&mut self) -> Result<(), Stop> {
        if self.row.stage >= ReplyStage::StatusSet {
            return Ok(());
        }
        if let Some(target) = self.reply.status {
            let current = self.status_now.unwrap_or(target);
            let steps = status_walk(current, target, self.ctx.receipt_status).map_err(|i| {
                Stop::Failed(Refusal::ImpossibleStatus {
                    from: i.from.to_string(),
                    to: i.to.to_string(),
                })
            })?;
            for step in steps {
                match self
                    .ctx
                    .session
                    .patch_case_status(&self.row.case_id, step.as_str())
                    .await
                {
                    Ok(()) => {}
                    Err(e) if is_final(&e) => {
                        return Err(Stop::Failed(Refusal::HubRefused {
                            doing_fr: "le changement de statut du dossier",
                            doing_en: "changing the case's status",
                            error: format!("to {step}: {e}"),
                        }))
                    }
                    Err(e) => return Err(transient(&format!("setting the case {step}"), &e)),
                }
                self.status_now = Some(step);
                crate::crashpoint::point("outbox_after_status_patch");
            }
        }
        self.row.stage = ReplyStage::StatusSet;
        self.save().await
    }

    /// Without files: the one event that tells the OSL.
    async fn status_event(&mut self, case: Case) -> Result<(), Stop> {
        if self.row.stage >= ReplyStage::HubDone {
            return Ok(());
        }
        let action = if self.reply.status.is_some() {
            "STATUS_UPDATE"
        } else {
            "SENDING_MESSAGE"
        };
        self.row.action_type = Some(action.into());
        let ev = self.post_once(&case, action).await?;
        self.row.event_id = ev.id.clone();
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
    let deposit_open =
        row.action_type.as_deref() == Some("ATTACH_DEPOSIT") && row.stage < ReplyStage::HubDone;
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
