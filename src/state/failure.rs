//! Items that fail: their failure counts, then parked (owed work, notification deleted) or
//! quarantined.

use super::*;

/// One item that failed: how often (in distinct cycles), since when, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub attempts: i64,
    pub first_at_ms: i64,
    pub last_error: String,
}

/// What a failing item is: the work owed for it when it is parked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// `case` (a case round) or `event`.
    pub kind: String,
    pub case_id: String,
    /// `""` for a case.
    pub event_id: String,
    pub round: i64,
    pub external_id: Option<String>,
    pub notification_id: Option<String>,
}

impl WorkItem {
    /// The key under which failures of this item are counted.
    pub fn key(&self) -> String {
        if self.event_id.is_empty() {
            self.case_id.clone()
        } else {
            format!("{}/{}", self.case_id, self.event_id)
        }
    }
}

/// A parked item: work owed, its notification already deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub item: WorkItem,
    pub failure: Failure,
}

impl StateDb {
    /// Counts one more failure of an item (at most once per cycle: the cycle skips an item
    /// that already failed in it); returns the failure record after the update.
    pub async fn record_failure(
        &self,
        subscription: &str,
        item: &WorkItem,
        error: &str,
    ) -> Result<Failure, StateError> {
        let mut tx = self.begin_write(subscription).await?;
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO failure (subscription, item, case_id, external_id, attempts, first_at, last_at,
                last_error, kind, event_id, round, notification_id)
             VALUES ($1, $2, $3, $4, 1, $5, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (subscription, item) DO UPDATE SET attempts = failure.attempts + 1,
                last_at = $5, last_error = $6, external_id = COALESCE($4, failure.external_id),
                notification_id = COALESCE($10, failure.notification_id)
             RETURNING attempts, first_at, last_error",
        )
        .bind(subscription)
        .bind(item.key())
        .bind(&item.case_id)
        .bind(item.external_id.clone())
        .bind(now)
        .bind(error)
        .bind(&item.kind)
        .bind(&item.event_id)
        .bind(item.round)
        .bind(item.notification_id.clone())
        .fetch_one(&mut *tx)
        .await
        .map_err(self.q("recording a failure"))?;
        tx.commit().await.map_err(self.q("recording a failure"))?;
        Ok(Failure {
            attempts: row.try_get(0).map_err(self.q("recording a failure"))?,
            first_at_ms: row.try_get(1).map_err(self.q("recording a failure"))?,
            last_error: row.try_get(2).map_err(self.q("recording a failure"))?,
        })
    }

    /// Records an item as parked: owed work, whose notification may now be deleted.
    pub async fn park(&self, subscription: &str, item: &WorkItem) -> Result<(), StateError> {
        let query = Stmt::new(
            "UPDATE failure SET parked = 1, parked_at = COALESCE(parked_at, $3)
             WHERE subscription = $1 AND item = $2",
        )
        .bind(subscription)
        .bind(item.key())
        .bind(now_ms());
        self.write_one(subscription, "parking an item", query).await
    }

    /// Records an item as quarantined: reported to a person, no longer retried.
    pub async fn quarantine(
        &self,
        subscription: &str,
        item: &WorkItem,
        path: Option<&str>,
    ) -> Result<(), StateError> {
        let query = Stmt::new(
            "UPDATE failure SET quarantined = 1, quarantined_at = $3, quarantine_path = $4
             WHERE subscription = $1 AND item = $2",
        )
        .bind(subscription)
        .bind(item.key())
        .bind(now_ms())
        .bind(path.map(str::to_string));
        self.write_one(subscription, "recording a quarantine", query)
            .await
    }

    /// Parked items still owed (not quarantined).
    pub async fn parked(&self, subscription: &str) -> Result<Vec<Parked>, StateError> {
        let rows = sqlx::query(
            "SELECT kind, case_id, event_id, round, external_id, notification_id, attempts, first_at, last_error
             FROM failure WHERE subscription = $1 AND parked = 1 AND quarantined = 0
             ORDER BY first_at",
        )
        .bind(subscription)
        .fetch_all(&self.pool)
        .await
        .map_err(self.q("listing parked items"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let get = |e| self.q("reading a parked item")(e);
            out.push(Parked {
                item: WorkItem {
                    kind: r
                        .try_get::<Option<String>, _>(0)
                        .map_err(get)?
                        .unwrap_or_else(|| "case".into()),
                    case_id: r
                        .try_get::<Option<String>, _>(1)
                        .map_err(get)?
                        .unwrap_or_default(),
                    event_id: r
                        .try_get::<Option<String>, _>(2)
                        .map_err(get)?
                        .unwrap_or_default(),
                    round: r.try_get::<Option<i64>, _>(3).map_err(get)?.unwrap_or(0),
                    external_id: r.try_get(4).map_err(get)?,
                    notification_id: r.try_get(5).map_err(get)?,
                },
                failure: Failure {
                    attempts: r.try_get(6).map_err(get)?,
                    first_at_ms: r.try_get(7).map_err(get)?,
                    last_error: r.try_get(8).map_err(get)?,
                },
            });
        }
        Ok(out)
    }

    /// The failure record of an item, if it is failing.
    pub async fn failure(
        &self,
        subscription: &str,
        item: &WorkItem,
    ) -> Result<Option<(Failure, bool, bool)>, StateError> {
        let r = sqlx::query(
            "SELECT attempts, first_at, last_error, parked, quarantined FROM failure
             WHERE subscription = $1 AND item = $2",
        )
        .bind(subscription)
        .bind(item.key())
        .fetch_optional(&self.pool)
        .await
        .map_err(self.q("reading a failure"))?;
        let Some(r) = r else { return Ok(None) };
        let get = |e| self.q("reading a failure")(e);
        Ok(Some((
            Failure {
                attempts: r.try_get(0).map_err(get)?,
                first_at_ms: r.try_get(1).map_err(get)?,
                last_error: r.try_get(2).map_err(get)?,
            },
            r.try_get::<i64, _>(3).map_err(get)? != 0,
            r.try_get::<i64, _>(4).map_err(get)? != 0,
        )))
    }

    /// Forgets an item's failures once it is delivered (a quarantined one stays on record).
    pub async fn clear_failure(
        &self,
        subscription: &str,
        item: &WorkItem,
    ) -> Result<(), StateError> {
        let query = Stmt::new(
            "DELETE FROM failure WHERE subscription = $1 AND item = $2 AND quarantined = 0",
        )
        .bind(subscription)
        .bind(item.key());
        self.write_one(subscription, "clearing a failure", query)
            .await
    }
}
