//! The deliveries table: what was fetched, how far its publication and receipt went, and the
//! rounds of a reopened case.

use super::*;

/// Identifies one delivery: a case (event_id ""), an event, or a reopening round.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub subscription: String,
    pub case_id: String,
    pub event_id: String,
    pub round: i64,
}

/// How far a delivery went. Ordered: each stage implies the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Sealed in tmp/ and about to be renamed into new/ (`tmp_path` says where).
    Intent,
    /// Published in new/ (or committed in the business database).
    Published,
    /// The receipt status walk began (`receipt_from` is where the case started).
    ReceiptStarted,
    /// The receipt status and its event are on the hub, or nothing was owed.
    ReceiptDone,
    /// The notification is deleted.
    Acknowledged,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Intent => "intent",
            Stage::Published => "published",
            Stage::ReceiptStarted => "receipt_started",
            Stage::ReceiptDone => "receipt_done",
            Stage::Acknowledged => "acknowledged",
        }
    }
    fn parse(s: &str) -> Stage {
        match s {
            "published" => Stage::Published,
            "receipt_started" => Stage::ReceiptStarted,
            "receipt_done" => Stage::ReceiptDone,
            "acknowledged" => Stage::Acknowledged,
            _ => Stage::Intent,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub key: DeliveryKey,
    pub kind: String,
    pub external_id: String,
    pub entry_name: String,
    pub tmp_path: Option<String>,
    pub sequence: Option<i64>,
    pub stage: Stage,
    pub receipt_from: Option<String>,
    pub receipt_to: Option<String>,
    pub receipt_event_id: Option<String>,
    pub notification_id: Option<String>,
    /// JSON list of `{path, size, sha256}` of the files delivered.
    pub files_json: Option<String>,
}

pub(super) fn row_to_delivery(r: &AnyRow) -> Result<DeliveryRow, sqlx::Error> {
    Ok(DeliveryRow {
        key: DeliveryKey {
            subscription: r.try_get(0)?,
            case_id: r.try_get(1)?,
            event_id: r.try_get(2)?,
            round: r.try_get(3)?,
        },
        kind: r.try_get(4)?,
        external_id: r.try_get::<Option<String>, _>(5)?.unwrap_or_default(),
        entry_name: r.try_get(6)?,
        tmp_path: r.try_get(7)?,
        sequence: r.try_get(8)?,
        stage: Stage::parse(&r.try_get::<String, _>(9)?),
        receipt_from: r.try_get(10)?,
        receipt_to: r.try_get(11)?,
        receipt_event_id: r.try_get(12)?,
        notification_id: r.try_get(13)?,
        files_json: r.try_get(14)?,
    })
}

impl StateDb {
    pub async fn delivery(&self, key: &DeliveryKey) -> Result<Option<DeliveryRow>, StateError> {
        let row = sqlx::query(
            "SELECT subscription, case_id, event_id, round, kind, external_id, entry_name, tmp_path,
                    sequence, stage, receipt_from, receipt_to, receipt_event_id, notification_id, files_json
             FROM delivery WHERE subscription = $1 AND case_id = $2 AND event_id = $3 AND round = $4",
        )
        .bind(&key.subscription)
        .bind(&key.case_id)
        .bind(&key.event_id)
        .bind(key.round)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.q("reading a delivery"))?;
        row.map(|r| row_to_delivery(&r))
            .transpose()
            .map_err(self.q("decoding a delivery"))
    }

    /// Deliveries of a subscription stuck at `intent` (crash around the rename).
    pub async fn intents(&self, subscription: &str) -> Result<Vec<DeliveryRow>, StateError> {
        let rows = sqlx::query(
            "SELECT subscription, case_id, event_id, round, kind, external_id, entry_name, tmp_path,
                    sequence, stage, receipt_from, receipt_to, receipt_event_id, notification_id, files_json
             FROM delivery WHERE subscription = $1 AND stage = 'intent'",
        )
        .bind(subscription)
        .fetch_all(&self.pool)
        .await
        .map_err(self.q("listing unfinished deliveries"))?;
        rows.iter()
            .map(row_to_delivery)
            .collect::<Result<_, _>>()
            .map_err(self.q("decoding a delivery"))
    }

    /// Records the intent to publish: the entry is sealed in `tmp_path`.
    pub async fn record_intent(&self, row: &DeliveryRow) -> Result<(), StateError> {
        let now = now_ms();
        let query = Stmt::new(
            "INSERT INTO delivery (subscription, case_id, event_id, round, kind, external_id, entry_name,
                tmp_path, sequence, stage, notification_id, files_json, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'intent', $10, $11, $12, $12)
             ON CONFLICT (subscription, case_id, event_id, round) DO UPDATE SET
                kind = $5, external_id = $6, entry_name = $7, tmp_path = $8, sequence = $9,
                stage = 'intent', notification_id = $10, files_json = $11, updated_at = $12",
        )
        .bind(&row.key.subscription)
        .bind(&row.key.case_id)
        .bind(&row.key.event_id)
        .bind(row.key.round)
        .bind(&row.kind)
        .bind(&row.external_id)
        .bind(&row.entry_name)
        .bind(row.tmp_path.clone())
        .bind(row.sequence)
        .bind(row.notification_id.clone())
        .bind(row.files_json.clone())
        .bind(now);
        self.write_one(&row.key.subscription, "recording a delivery intent", query)
            .await
    }

    /// Moves a delivery forward to `stage` (never backward).
    pub async fn advance(&self, key: &DeliveryKey, stage: Stage) -> Result<(), StateError> {
        let now = now_ms();
        let (published, acked) = match stage {
            Stage::Published => (Some(now), None),
            Stage::Acknowledged => (None, Some(now)),
            _ => (None, None),
        };
        let query = Stmt::new(
            "UPDATE delivery SET stage = $5, updated_at = $6,
                published_at = COALESCE(published_at, $7), acknowledged_at = COALESCE(acknowledged_at, $8),
                tmp_path = CASE WHEN $5 = 'intent' THEN tmp_path ELSE NULL END
             WHERE subscription = $1 AND case_id = $2 AND event_id = $3 AND round = $4",
        )
        .bind(&key.subscription)
        .bind(&key.case_id)
        .bind(&key.event_id)
        .bind(key.round)
        .bind(stage.as_str())
        .bind(now)
        .bind(published)
        .bind(acked);
        self.write_one(&key.subscription, "recording delivery progress", query)
            .await
    }

    /// Records where the receipt walk starts, before the first PATCH.
    pub async fn record_receipt_start(
        &self,
        key: &DeliveryKey,
        from: &str,
        to: &str,
    ) -> Result<(), StateError> {
        let query = Stmt::new(
            "UPDATE delivery SET stage = 'receipt_started', receipt_from = $5, receipt_to = $6, updated_at = $7
             WHERE subscription = $1 AND case_id = $2 AND event_id = $3 AND round = $4",
        )
        .bind(&key.subscription)
        .bind(&key.case_id)
        .bind(&key.event_id)
        .bind(key.round)
        .bind(from)
        .bind(to)
        .bind(now_ms());
        self.write_one(&key.subscription, "recording the receipt walk", query)
            .await
    }

    /// Records the receipt as done, with the id of our event when one was posted.
    pub async fn record_receipt_done(
        &self,
        key: &DeliveryKey,
        event_id: Option<&str>,
    ) -> Result<(), StateError> {
        let query = Stmt::new(
            "UPDATE delivery SET stage = 'receipt_done', receipt_event_id = $5, updated_at = $6
             WHERE subscription = $1 AND case_id = $2 AND event_id = $3 AND round = $4",
        )
        .bind(&key.subscription)
        .bind(&key.case_id)
        .bind(&key.event_id)
        .bind(key.round)
        .bind(event_id.map(str::to_string))
        .bind(now_ms());
        self.write_one(&key.subscription, "recording the receipt", query)
            .await
    }

    /// The latest round delivered (or being delivered) of a case.
    pub async fn latest_case_round(
        &self,
        subscription: &str,
        case_id: &str,
    ) -> Result<Option<DeliveryRow>, StateError> {
        let row = sqlx::query(
            "SELECT subscription, case_id, event_id, round, kind, external_id, entry_name, tmp_path,
                    sequence, stage, receipt_from, receipt_to, receipt_event_id, notification_id, files_json
             FROM delivery WHERE subscription = $1 AND case_id = $2 AND event_id = ''
             ORDER BY round DESC LIMIT 1",
        )
        .bind(subscription)
        .bind(case_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.q("reading a case's latest round"))?;
        row.map(|r| row_to_delivery(&r))
            .transpose()
            .map_err(self.q("decoding a delivery"))
    }

    /// The case round (if any) that notification `notification_id` opened: a reopening
    /// event opens one round of its own, and this finds it again after a crash.
    pub async fn case_round_announced_by(
        &self,
        subscription: &str,
        case_id: &str,
        notification_id: &str,
    ) -> Result<Option<i64>, StateError> {
        let row = sqlx::query(
            "SELECT round FROM delivery
             WHERE subscription = $1 AND case_id = $2 AND event_id = '' AND notification_id = $3
             ORDER BY round DESC LIMIT 1",
        )
        .bind(subscription)
        .bind(case_id)
        .bind(notification_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.q("finding the round a reopening opened"))?;
        row.map(|r| r.try_get::<i64, _>(0))
            .transpose()
            .map_err(self.q("decoding a round"))
    }

    /// The delivery of an event, whatever its round.
    pub async fn event_delivery(
        &self,
        subscription: &str,
        case_id: &str,
        event_id: &str,
    ) -> Result<Option<DeliveryRow>, StateError> {
        let row = sqlx::query(
            "SELECT subscription, case_id, event_id, round, kind, external_id, entry_name, tmp_path,
                    sequence, stage, receipt_from, receipt_to, receipt_event_id, notification_id, files_json
             FROM delivery WHERE subscription = $1 AND case_id = $2 AND event_id = $3
             ORDER BY round DESC LIMIT 1",
        )
        .bind(subscription)
        .bind(case_id)
        .bind(event_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.q("reading an event delivery"))?;
        row.map(|r| row_to_delivery(&r))
            .transpose()
            .map_err(self.q("decoding a delivery"))
    }

    /// Records a delivery published (its rename done), in one transaction (one durable write
    /// instead of up to three) with: where its receipt walk starts (`receipt` = from, to; the
    /// stage becomes `receipt_started`, durable before the first PATCH exactly as
    /// [`StateDb::record_receipt_start`] makes it), and its activity record.
    pub async fn record_published(
        &self,
        key: &DeliveryKey,
        receipt: Option<(&str, &str)>,
        note: Option<ActivityNote<'_>>,
    ) -> Result<(), StateError> {
        let now = now_ms();
        let stage = if receipt.is_some() {
            Stage::ReceiptStarted
        } else {
            Stage::Published
        };
        let mut stmts = vec![Stmt::new(
            "UPDATE delivery SET stage = $5, updated_at = $6, published_at = COALESCE(published_at, $6),
                tmp_path = NULL, receipt_from = COALESCE($7, receipt_from), receipt_to = COALESCE($8, receipt_to)
             WHERE subscription = $1 AND case_id = $2 AND event_id = $3 AND round = $4",
        )
        .bind(&key.subscription)
        .bind(&key.case_id)
        .bind(&key.event_id)
        .bind(key.round)
        .bind(stage.as_str())
        .bind(now)
        .bind(receipt.map(|r| r.0))
        .bind(receipt.map(|r| r.1))];
        if let Some(note) = &note {
            stmts.extend(activity_stmts(&key.subscription, now, note));
        }
        // Fenced under a cluster, and one transaction in any case.
        self.write_all(&key.subscription, "recording a publication", stmts)
            .await
    }
}
