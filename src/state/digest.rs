//! What the email room reads and writes in the state database: the digest cursors (one per
//! recipient list: the last activity `seq` a sent digest included), the alert record of each
//! subscription, and the read-only views a digest shows (activity since a cursor, subscription
//! health, work still owed).
//!
//! The cursor moves only after the SMTP server accepted the digest, and only forward: a crash
//! in between repeats items in the next digest, never skips one.

use sqlx::Row;

use super::{Activity, StateDb, StateError};

/// Where a recipient list's digests stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestCursor {
    /// The highest activity `seq` included in a sent digest.
    pub last_seq: i64,
    /// When that digest was accepted by the SMTP server (ms since the epoch).
    pub sent_at_ms: i64,
}

/// A subscription's health as the last cycles left it (`subscription_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionHealth {
    pub subscription: String,
    pub last_poll_at_ms: Option<i64>,
    /// `ok` or `failed`; `None` before the first cycle.
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub last_success_at_ms: Option<i64>,
    pub consecutive_failures: i64,
}

impl SubscriptionHealth {
    /// The last cycle failed.
    pub fn failing(&self) -> bool {
        self.consecutive_failures > 0 && self.last_outcome.as_deref() != Some("ok")
    }
}

/// Work a subscription still owes, now (not since the last digest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenWork {
    /// Parked items: their notification is deleted, they are retried every cycle.
    pub parked: i64,
    /// Quarantined items kept on record (each was reported when it happened).
    pub quarantined: i64,
}

/// What the alert logic remembers of one subscription between evaluations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertRecord {
    /// When the current run of failures was first seen; `None` while healthy.
    pub failing_since_ms: Option<i64>,
    /// When the last alert mail was accepted (rate limit); kept across recoveries.
    pub alerted_at_ms: Option<i64>,
    /// An alert was sent for the current failure and no recovery mail yet.
    pub open: bool,
}

impl StateDb {
    /// The cursor of a recipient list, `None` before its first sent digest.
    pub async fn digest_cursor(&self, list_key: &str) -> Result<Option<DigestCursor>, StateError> {
        let row =
            sqlx::query("SELECT last_seq, sent_at FROM email_digest_cursor WHERE list_key = $1")
                .bind(list_key)
                .fetch_optional(&self.pool)
                .await
                .map_err(self.q("reading a digest cursor"))?;
        let Some(r) = row else { return Ok(None) };
        let get = |e| self.q("reading a digest cursor")(e);
        Ok(Some(DigestCursor {
            last_seq: r.try_get(0).map_err(get)?,
            sent_at_ms: r.try_get(1).map_err(get)?,
        }))
    }

    /// Moves a recipient list's cursor to `seq` after its digest was accepted. Never moves it
    /// back (two senders at once — `digest --send` beside `run` — leave the higher one).
    pub async fn move_digest_cursor(
        &self,
        list_key: &str,
        recipients: &str,
        seq: i64,
        sent_at_ms: i64,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO email_digest_cursor (list_key, last_seq, sent_at, recipients)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (list_key) DO UPDATE SET
                last_seq = CASE WHEN excluded.last_seq > email_digest_cursor.last_seq
                                THEN excluded.last_seq ELSE email_digest_cursor.last_seq END,
                sent_at = excluded.sent_at,
                recipients = excluded.recipients",
        )
        .bind(list_key)
        .bind(seq)
        .bind(sent_at_ms)
        .bind(recipients)
        .execute(&self.pool)
        .await
        .map_err(self.q("moving a digest cursor"))?;
        Ok(())
    }

    /// The highest `seq` recorded before `before_ms` (0 if none): where a new recipient
    /// list's first digest starts.
    pub async fn activity_seq_before(&self, before_ms: i64) -> Result<i64, StateError> {
        sqlx::query("SELECT COALESCE(MAX(seq), 0) FROM activity WHERE at < $1")
            .bind(before_ms)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .map_err(self.q("reading the activity journal"))
    }

    /// Activity of these subscriptions after `after_seq`, oldest first, at most `limit`.
    pub async fn activity_of(
        &self,
        after_seq: i64,
        subscriptions: &[String],
        limit: i64,
    ) -> Result<Vec<Activity>, StateError> {
        if subscriptions.is_empty() {
            return Ok(Vec::new());
        }
        let list = placeholders(3, subscriptions.len());
        let sql = format!(
            "SELECT seq, subscription, at, kind, case_id, external_id, event_id, detail
             FROM activity WHERE seq > $1 AND subscription IN ({list}) ORDER BY seq LIMIT $2"
        );
        let mut q = sqlx::query(&sql).bind(after_seq).bind(limit);
        for s in subscriptions {
            q = q.bind(s);
        }
        let rows = q
            .fetch_all(&self.pool)
            .await
            .map_err(self.q("reading the activity journal"))?;
        rows.iter()
            .map(super::row_to_activity)
            .collect::<Result<_, _>>()
            .map_err(self.q("reading the activity journal"))
    }

    /// Health of each named subscription, in the order given; one that never ran has no
    /// outcome.
    pub async fn subscription_health(
        &self,
        subscriptions: &[String],
    ) -> Result<Vec<SubscriptionHealth>, StateError> {
        let mut out = Vec::with_capacity(subscriptions.len());
        for name in subscriptions {
            let row = sqlx::query(
                "SELECT last_poll_at, last_outcome, last_error, last_success_at, consecutive_failures
                 FROM subscription_state WHERE subscription = $1",
            )
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.q("reading subscription health"))?;
            let mut h = SubscriptionHealth {
                subscription: name.clone(),
                last_poll_at_ms: None,
                last_outcome: None,
                last_error: None,
                last_success_at_ms: None,
                consecutive_failures: 0,
            };
            if let Some(r) = row {
                let get = |e| self.q("reading subscription health")(e);
                h.last_poll_at_ms = r.try_get(0).map_err(get)?;
                h.last_outcome = r.try_get(1).map_err(get)?;
                h.last_error = r.try_get(2).map_err(get)?;
                h.last_success_at_ms = r.try_get(3).map_err(get)?;
                h.consecutive_failures = r.try_get(4).map_err(get)?;
            }
            out.push(h);
        }
        Ok(out)
    }

    /// Parked and quarantined items of a subscription, now.
    pub async fn open_work(&self, subscription: &str) -> Result<OpenWork, StateError> {
        let r = sqlx::query(
            "SELECT
                (SELECT COUNT(*) FROM failure WHERE subscription = $1 AND parked = 1 AND quarantined = 0),
                (SELECT COUNT(*) FROM failure WHERE subscription = $1 AND quarantined = 1)",
        )
        .bind(subscription)
        .fetch_one(&self.pool)
        .await
        .map_err(self.q("counting parked and quarantined items"))?;
        let get = |e| self.q("counting parked and quarantined items")(e);
        Ok(OpenWork {
            parked: r.try_get(0).map_err(get)?,
            quarantined: r.try_get(1).map_err(get)?,
        })
    }

    /// The alert record of a subscription (all empty before its first failure).
    pub async fn alert_record(&self, subscription: &str) -> Result<AlertRecord, StateError> {
        let row = sqlx::query(
            "SELECT failing_since, alerted_at, alert_open FROM email_alert WHERE subscription = $1",
        )
        .bind(subscription)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.q("reading an alert record"))?;
        let Some(r) = row else {
            return Ok(AlertRecord::default());
        };
        let get = |e| self.q("reading an alert record")(e);
        Ok(AlertRecord {
            failing_since_ms: r.try_get(0).map_err(get)?,
            alerted_at_ms: r.try_get(1).map_err(get)?,
            open: r.try_get::<i64, _>(2).map_err(get)? != 0,
        })
    }

    pub async fn save_alert_record(
        &self,
        subscription: &str,
        record: &AlertRecord,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO email_alert (subscription, failing_since, alerted_at, alert_open)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (subscription) DO UPDATE SET
                failing_since = excluded.failing_since,
                alerted_at = excluded.alerted_at,
                alert_open = excluded.alert_open",
        )
        .bind(subscription)
        .bind(record.failing_since_ms)
        .bind(record.alerted_at_ms)
        .bind(i64::from(record.open))
        .execute(&self.pool)
        .await
        .map_err(self.q("saving an alert record"))?;
        Ok(())
    }
}

/// `$first, $first+1, …` for `n` bound values (both SQLite and PostgreSQL read `$N`).
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Location;

    async fn db() -> (tempfile::TempDir, StateDb) {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&Location::Sqlite(dir.path().join("state.db")))
            .await
            .unwrap();
        (dir, db)
    }

    #[tokio::test]
    async fn cursor_only_moves_forward() {
        let (_dir, db) = db().await;
        assert_eq!(db.digest_cursor("k").await.unwrap(), None);
        db.move_digest_cursor("k", "a@b", 5, 1000).await.unwrap();
        db.move_digest_cursor("k", "a@b", 3, 2000).await.unwrap();
        let c = db.digest_cursor("k").await.unwrap().unwrap();
        assert_eq!((c.last_seq, c.sent_at_ms), (5, 2000));
    }

    #[tokio::test]
    async fn activity_is_filtered_by_subscription_before_the_limit() {
        let (_dir, db) = db().await;
        for _ in 0..3 {
            db.record_activity(
                "other",
                "received",
                Some("c"),
                None,
                None,
                serde_json::json!({}),
            )
            .await
            .unwrap();
        }
        let mine = db
            .record_activity(
                "mine",
                "received",
                Some("c"),
                None,
                None,
                serde_json::json!({}),
            )
            .await
            .unwrap();
        let got = db.activity_of(0, &["mine".into()], 1).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].seq, mine);
        assert!(db.activity_of(0, &[], 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn alert_record_round_trips() {
        let (_dir, db) = db().await;
        assert_eq!(db.alert_record("s").await.unwrap(), AlertRecord::default());
        let r = AlertRecord {
            failing_since_ms: Some(1),
            alerted_at_ms: Some(2),
            open: true,
        };
        db.save_alert_record("s", &r).await.unwrap();
        assert_eq!(db.alert_record("s").await.unwrap(), r);
    }
}
