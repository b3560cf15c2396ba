//! The activity journal that digests read: one record per notable thing, in commit order.

use super::*;

/// One notable thing that happened, as recorded in the `activity` journal.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Activity {
    /// Grows with every record, in commit order: a reader's cursor.
    pub seq: i64,
    pub subscription: String,
    /// Milliseconds since the epoch.
    pub at: i64,
    /// `received`, `reopened`, `event`, `unusable_attachment`, `parked`, `quarantined`, …
    pub kind: String,
    pub case_id: Option<String>,
    pub external_id: Option<String>,
    pub event_id: Option<String>,
    /// Kind-specific details, JSON.
    pub detail: serde_json::Value,
}

/// A record for the activity journal, written with another state change.
#[derive(Debug, Clone)]
pub struct ActivityNote<'a> {
    pub kind: &'a str,
    pub case_id: Option<&'a str>,
    pub external_id: Option<&'a str>,
    pub event_id: Option<&'a str>,
    pub detail: serde_json::Value,
}

/// An activity record as the two statements that write it in one transaction: the counter
/// moves on, and the record takes its new value as `seq`.
pub(super) fn activity_stmts(subscription: &str, at: i64, note: &ActivityNote<'_>) -> [Stmt; 2] {
    [
        Stmt::new("UPDATE hubee_sync_counter SET value = value + 1 WHERE name = 'activity'"),
        Stmt::new(
            "INSERT INTO activity (seq, subscription, at, kind, case_id, external_id, event_id, detail)
             VALUES ((SELECT value FROM hubee_sync_counter WHERE name = 'activity'), $1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(subscription)
        .bind(at)
        .bind(note.kind)
        .bind(note.case_id)
        .bind(note.external_id)
        .bind(note.event_id)
        .bind(note.detail.to_string()),
    ]
}

/// An `activity` row (columns seq, subscription, at, kind, case_id, external_id, event_id,
/// detail). A detail that is not JSON (written by a future version?) is shown as absent.
pub(crate) fn row_to_activity(r: &AnyRow) -> Result<Activity, sqlx::Error> {
    Ok(Activity {
        seq: r.try_get(0)?,
        subscription: r.try_get(1)?,
        at: r.try_get(2)?,
        kind: r.try_get(3)?,
        case_id: r.try_get(4)?,
        external_id: r.try_get(5)?,
        event_id: r.try_get(6)?,
        detail: r
            .try_get::<Option<String>, _>(7)?
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or(serde_json::Value::Null),
    })
}

impl StateDb {
    /// Appends to the activity journal. The sequence number is allocated and the record
    /// inserted in one transaction, so records become visible in sequence order: a reader
    /// that saw `seq = n` will never later find a record below `n`.
    pub async fn record_activity(
        &self,
        subscription: &str,
        kind: &str,
        case_id: Option<&str>,
        external_id: Option<&str>,
        event_id: Option<&str>,
        detail: serde_json::Value,
    ) -> Result<i64, StateError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.q("recording activity"))?;
        let note = ActivityNote {
            kind,
            case_id,
            external_id,
            event_id,
            detail,
        };
        for stmt in activity_stmts(subscription, now_ms(), &note) {
            stmt.execute(&mut tx)
                .await
                .map_err(self.q("recording activity"))?;
        }
        // Ours: the counter's row stays locked by this transaction until it commits.
        let seq: i64 = sqlx::query("SELECT value FROM hubee_sync_counter WHERE name = 'activity'")
            .fetch_one(&mut *tx)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .map_err(self.q("recording activity"))?;
        tx.commit().await.map_err(self.q("recording activity"))?;
        Ok(seq)
    }

    /// Activity after `after_seq`, oldest first, at most `limit` records; all subscriptions
    /// when `subscriptions` is empty (else see [`StateDb::activity_of`]).
    pub async fn activity_since(
        &self,
        after_seq: i64,
        subscriptions: &[String],
        limit: i64,
    ) -> Result<Vec<Activity>, StateError> {
        if !subscriptions.is_empty() {
            return self.activity_of(after_seq, subscriptions, limit).await;
        }
        let rows = sqlx::query(
            "SELECT seq, subscription, at, kind, case_id, external_id, event_id, detail
             FROM activity WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(self.q("reading activity"))?;
        rows.iter()
            .map(row_to_activity)
            .collect::<Result<_, _>>()
            .map_err(self.q("reading activity"))
    }
}
