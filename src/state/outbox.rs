//! The outbox's record in the state database: one row per reply, known by its subscription,
//! its folder name and the SHA-256 of its `reply.json`, advanced step by step as the reply is
//! applied on the hub (event created with its id, each file uploaded, status set, event
//! sent), so that a restart resumes where it stopped and never creates a second event.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::Stmt;
use super::{now_ms, StateDb, StateError};

/// Identifies a reply: the same folder name with another `reply.json` is another reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    pub subscription: String,
    pub folder: String,
    /// Hex SHA-256 of `reply.json`.
    pub reply_sha256: String,
}

/// How far a reply went. Ordered: each stage implies the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplyStage {
    /// Validated; nothing done on the hub yet (or only status steps, see `status_from`).
    Started,
    /// The `ATTACH_DEPOSIT` event exists on the hub (`event_id`, attachment ids in `files`).
    EventCreated,
    /// Every file is uploaded and `RECEIVED`.
    FilesUploaded,
    /// Written by versions before 0.2 only (they changed the status before the deposit was
    /// SENT): the status is set, the deposit may still be `IN_PROGRESS`.
    StatusSet,
    /// The deposit is `SENT`: the documents are delivered; the status step may remain.
    DepositSent,
    /// Everything is on the hub (the status step done, or what it met recorded in
    /// `status_note`), or the status/message event posted.
    HubDone,
    /// Moved out of `outbox/new/` (`outcome` says to `sent/` or `failed/`).
    Finished,
}

impl ReplyStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyStage::Started => "started",
            ReplyStage::EventCreated => "event_created",
            ReplyStage::FilesUploaded => "files_uploaded",
            ReplyStage::StatusSet => "status_set",
            ReplyStage::DepositSent => "deposit_sent",
            ReplyStage::HubDone => "hub_done",
            ReplyStage::Finished => "finished",
        }
    }

    fn parse(s: &str) -> ReplyStage {
        match s {
            "event_created" => ReplyStage::EventCreated,
            "files_uploaded" => ReplyStage::FilesUploaded,
            "status_set" => ReplyStage::StatusSet,
            "deposit_sent" => ReplyStage::DepositSent,
            "hub_done" => ReplyStage::HubDone,
            "finished" => ReplyStage::Finished,
            _ => ReplyStage::Started,
        }
    }
}

/// One file of a reply, as declared to the hub.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplyFile {
    /// The file's name in the reply folder, also its `fileName` on the hub.
    pub file: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub mime_type: String,
    pub size: u64,
    /// Hex SHA-256 of the content declared (a file changed afterwards is refused).
    pub sha256: String,
    /// The hub's id for it, once the event is created.
    #[serde(default)]
    pub attachment_id: Option<String>,
    #[serde(default)]
    pub uploaded: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplyRow {
    pub key: ReplyKey,
    pub case_id: String,
    pub external_id: String,
    pub stage: ReplyStage,
    /// `sent` or `failed` once finished.
    pub outcome: Option<String>,
    /// The case's status when the reply started (the event's `caseCurrentStatus`).
    pub status_from: Option<String>,
    pub status_to: Option<String>,
    pub action_type: Option<String>,
    pub event_id: Option<String>,
    pub files: Vec<ReplyFile>,
    /// Passes that ended in a transient failure, and since when (ms) it keeps failing.
    pub attempts: i64,
    pub failing_since: Option<i64>,
    pub last_error: Option<String>,
    pub finished_at: Option<i64>,
    pub moved_to: Option<String>,
    /// With files: the event of the status step that followed the deposit.
    pub status_event_id: Option<String>,
    /// What the status step did or met (JSON), for result.json: `{"outcome": "set" | "found"
    /// | "event_refused" | "refused" | "impossible" | "pending", "status", "error", "cap"}`.
    pub status_note: Option<String>,
}

impl ReplyRow {
    pub fn new(key: ReplyKey, case_id: &str, external_id: &str) -> ReplyRow {
        ReplyRow {
            key,
            case_id: case_id.to_string(),
            external_id: external_id.to_string(),
            stage: ReplyStage::Started,
            outcome: None,
            status_from: None,
            status_to: None,
            action_type: None,
            event_id: None,
            files: Vec::new(),
            attempts: 0,
            failing_since: None,
            last_error: None,
            finished_at: None,
            moved_to: None,
            status_event_id: None,
            status_note: None,
        }
    }
}

/// A subscription's outbox in numbers, for `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxCounts {
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
}

const COLUMNS: &str = "subscription, folder, reply_sha256, case_id, external_id, stage, outcome,
    status_from, status_to, action_type, event_id, files_json, attempts, failing_since,
    last_error, finished_at, moved_to, status_event_id, status_note";

fn row_to_reply(r: &AnyRow) -> Result<ReplyRow, sqlx::Error> {
    let files_json: Option<String> = r.try_get(11)?;
    let files = match files_json.as_deref() {
        Some(j) if !j.is_empty() => {
            serde_json::from_str(j).map_err(|e| sqlx::Error::Decode(Box::new(e)))?
        }
        _ => Vec::new(),
    };
    Ok(ReplyRow {
        key: ReplyKey {
            subscription: r.try_get(0)?,
            folder: r.try_get(1)?,
            reply_sha256: r.try_get(2)?,
        },
        case_id: r.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
        external_id: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
        stage: ReplyStage::parse(&r.try_get::<String, _>(5)?),
        outcome: r.try_get(6)?,
        status_from: r.try_get(7)?,
        status_to: r.try_get(8)?,
        action_type: r.try_get(9)?,
        event_id: r.try_get(10)?,
        files,
        attempts: r.try_get(12)?,
        failing_since: r.try_get(13)?,
        last_error: r.try_get(14)?,
        finished_at: r.try_get(15)?,
        moved_to: r.try_get(16)?,
        status_event_id: r.try_get(17)?,
        status_note: r.try_get(18)?,
    })
}

impl StateDb {
    /// The record of a reply, if it was seen before.
    pub async fn outbox_reply(&self, key: &ReplyKey) -> Result<Option<ReplyRow>, StateError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM outbox_reply
             WHERE subscription = $1 AND folder = $2 AND reply_sha256 = $3"
        ))
        .bind(&key.subscription)
        .bind(&key.folder)
        .bind(&key.reply_sha256)
        .fetch_optional(self.pool())
        .await
        .map_err(self.q("reading an outbox reply"))?;
        row.map(|r| row_to_reply(&r))
            .transpose()
            .map_err(self.q("decoding an outbox reply"))
    }

    /// Replies of a subscription not finished yet (in progress, or interrupted).
    pub async fn outbox_unfinished(&self, subscription: &str) -> Result<Vec<ReplyRow>, StateError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM outbox_reply
             WHERE subscription = $1 AND stage <> 'finished' ORDER BY created_at"
        ))
        .bind(subscription)
        .fetch_all(self.pool())
        .await
        .map_err(self.q("listing unfinished outbox replies"))?;
        rows.iter()
            .map(row_to_reply)
            .collect::<Result<_, _>>()
            .map_err(self.q("decoding an outbox reply"))
    }

    /// Records a reply as started, replacing any earlier record of the same key (a failed
    /// reply put back into `outbox/new/` by a person starts again).
    pub async fn outbox_start(&self, row: &ReplyRow) -> Result<(), StateError> {
        let now = now_ms();
        let mut tx = self.begin_write_atomic(&row.key.subscription).await?;
        sqlx::query(
            "DELETE FROM outbox_reply WHERE subscription = $1 AND folder = $2 AND reply_sha256 = $3",
        )
        .bind(&row.key.subscription)
        .bind(&row.key.folder)
        .bind(&row.key.reply_sha256)
        .execute(&mut *tx)
        .await
        .map_err(self.q("recording an outbox reply"))?;
        sqlx::query(
            "INSERT INTO outbox_reply (subscription, folder, reply_sha256, case_id, external_id,
                stage, status_to, action_type, files_json, attempts, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $10)",
        )
        .bind(&row.key.subscription)
        .bind(&row.key.folder)
        .bind(&row.key.reply_sha256)
        .bind(&row.case_id)
        .bind(&row.external_id)
        .bind(row.stage.as_str())
        .bind(row.status_to.clone())
        .bind(row.action_type.clone())
        .bind(files_json(&row.files))
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(self.q("recording an outbox reply"))?;
        tx.commit()
            .await
            .map_err(self.q("recording an outbox reply"))?;
        Ok(())
    }

    /// Writes a reply's progress (every mutable column) in one statement.
    pub async fn outbox_save(&self, row: &ReplyRow) -> Result<(), StateError> {
        let query = Stmt::new(
            "UPDATE outbox_reply SET case_id = $4, external_id = $5, stage = $6, outcome = $7,
                status_from = $8, status_to = $9, action_type = $10, event_id = $11,
                files_json = $12, attempts = $13, failing_since = $14, last_error = $15,
                finished_at = $16, moved_to = $17, updated_at = $18, status_event_id = $19,
                status_note = $20
             WHERE subscription = $1 AND folder = $2 AND reply_sha256 = $3",
        )
        .bind(&row.key.subscription)
        .bind(&row.key.folder)
        .bind(&row.key.reply_sha256)
        .bind(&row.case_id)
        .bind(&row.external_id)
        .bind(row.stage.as_str())
        .bind(row.outcome.clone())
        .bind(row.status_from.clone())
        .bind(row.status_to.clone())
        .bind(row.action_type.clone())
        .bind(row.event_id.clone())
        .bind(files_json(&row.files))
        .bind(row.attempts)
        .bind(row.failing_since)
        .bind(row.last_error.clone())
        .bind(row.finished_at)
        .bind(row.moved_to.clone())
        .bind(now_ms())
        .bind(row.status_event_id.clone())
        .bind(row.status_note.clone());
        self.write_one(
            &row.key.subscription,
            "recording an outbox reply's progress",
            query,
        )
        .await
    }

    /// Pending (not finished), sent and failed replies of a subscription.
    pub async fn outbox_counts(&self, subscription: &str) -> Result<OutboxCounts, StateError> {
        let r = sqlx::query(
            "SELECT
                (SELECT COUNT(*) FROM outbox_reply WHERE subscription = $1 AND stage <> 'finished'),
                (SELECT COUNT(*) FROM outbox_reply WHERE subscription = $1 AND stage = 'finished' AND outcome = 'sent'),
                (SELECT COUNT(*) FROM outbox_reply WHERE subscription = $1 AND stage = 'finished' AND outcome = 'failed')",
        )
        .bind(subscription)
        .fetch_one(self.pool())
        .await
        .map_err(self.q("counting outbox replies"))?;
        let get = |i: usize| {
            r.try_get::<i64, _>(i)
                .map_err(self.q("counting outbox replies"))
        };
        Ok(OutboxCounts {
            pending: get(0)?,
            sent: get(1)?,
            failed: get(2)?,
        })
    }

    /// A case this subscription received, found by its case id, else by its external id:
    /// `(case_id, external_id)` of its latest round.
    pub async fn known_case(
        &self,
        subscription: &str,
        case_id: Option<&str>,
        external_id: Option<&str>,
    ) -> Result<Option<(String, String)>, StateError> {
        Ok(self
            .find_case(Some(subscription), None, case_id, external_id)
            .await?
            .map(|(_, c, e)| (c, e)))
    }

    /// Which other subscription received this case, if any (for a reply in the wrong outbox).
    pub async fn case_owner(
        &self,
        not_subscription: &str,
        case_id: Option<&str>,
        external_id: Option<&str>,
    ) -> Result<Option<String>, StateError> {
        Ok(self
            .find_case(None, Some(not_subscription), case_id, external_id)
            .await?
            .map(|(s, _, _)| s))
    }

    /// `(subscription, case_id, external_id)` of a delivered case, by case id first, then by
    /// external id; within `only`, or outside `not`.
    async fn find_case(
        &self,
        only: Option<&str>,
        not: Option<&str>,
        case_id: Option<&str>,
        external_id: Option<&str>,
    ) -> Result<Option<(String, String, String)>, StateError> {
        let doing = "looking up a case for an outbox reply";
        let (sub_clause, sub_value) = match (only, not) {
            (Some(s), _) => ("subscription = $1", s),
            (None, Some(s)) => ("subscription <> $1", s),
            (None, None) => ("$1 = $1", ""),
        };
        for (column, value) in [("case_id", case_id), ("external_id", external_id)] {
            let Some(value) = value else { continue };
            let r = sqlx::query(&format!(
                "SELECT subscription, case_id, external_id FROM delivery
                 WHERE {sub_clause} AND event_id = '' AND {column} = $2
                 ORDER BY round DESC, updated_at DESC LIMIT 1"
            ))
            .bind(sub_value)
            .bind(value)
            .fetch_optional(self.pool())
            .await
            .map_err(self.q(doing))?;
            if let Some(r) = r {
                let get = |e| self.q(doing)(e);
                return Ok(Some((
                    r.try_get::<String, _>(0).map_err(get)?,
                    r.try_get::<String, _>(1).map_err(get)?,
                    r.try_get::<Option<String>, _>(2)
                        .map_err(get)?
                        .unwrap_or_default(),
                )));
            }
        }
        Ok(None)
    }
}

fn files_json(files: &[ReplyFile]) -> String {
    serde_json::to_string(files).unwrap_or_else(|_| "[]".into())
}
