//! Each subscription's own row: its last poll, and the line `status` shows for it.

use super::*;

/// One subscription's line in `status`.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct SubscriptionStatus {
    pub subscription: String,
    pub last_poll_at: Option<String>,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub last_success_at: Option<String>,
    pub consecutive_failures: i64,
    pub received: i64,
    pub acknowledged: i64,
    pub in_progress: i64,
    pub failing: i64,
    pub parked: i64,
    pub quarantined: i64,
    /// Replies in outbox/: being applied (or waiting for a retry), sent, failed.
    pub outbox_pending: i64,
    pub outbox_sent: i64,
    pub outbox_failed: i64,
    pub holder: Option<String>,
    /// Several nodes: the node holding the subscription's lease (unexpired), since when,
    /// with which epoch (grows at each takeover), and until when unless renewed.
    pub node: Option<String>,
    pub node_since: Option<String>,
    pub lease_epoch: Option<i64>,
    pub lease_expires_at: Option<String>,
    /// Status events of ours the hub refused for good (its cap on events per case, a rule of
    /// the démarche): the télédossiers were delivered, the events could not be posted.
    pub events_refused: i64,
    /// The latest of them: "case ID at TIME: error".
    pub last_event_refused: Option<String>,
}

impl StateDb {
    pub(super) async fn ensure_subscription(&self, subscription: &str) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO subscription_state (subscription) VALUES ($1) ON CONFLICT (subscription) DO NOTHING",
        )
        .bind(subscription)
        .execute(&self.pool)
        .await
        .map_err(self.q("registering a subscription"))?;
        Ok(())
    }

    /// Records the outcome of a poll cycle.
    pub async fn record_poll(
        &self,
        subscription: &str,
        ok: bool,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        self.ensure_subscription(subscription).await?;
        let now = now_ms();
        let sql = if ok {
            "UPDATE subscription_state SET last_poll_at = $2, last_outcome = 'ok', last_error = NULL,
                last_success_at = $2, consecutive_failures = 0 WHERE subscription = $1"
        } else {
            "UPDATE subscription_state SET last_poll_at = $2, last_outcome = 'failed', last_error = $3,
                consecutive_failures = consecutive_failures + 1 WHERE subscription = $1"
        };
        let mut q = sqlx::query(sql).bind(subscription).bind(now);
        if !ok {
            q = q.bind(error.unwrap_or("unknown error").to_string());
        }
        q.execute(&self.pool)
            .await
            .map_err(self.q("recording a poll"))?;
        Ok(())
    }

    /// Everything `status` shows, for the named subscriptions (those in the config).
    pub async fn status(
        &self,
        subscriptions: &[String],
    ) -> Result<Vec<SubscriptionStatus>, StateError> {
        let mut out = Vec::with_capacity(subscriptions.len());
        let view = self.cluster_view().await?;
        for name in subscriptions {
            let s = sqlx::query(
                "SELECT last_poll_at, last_outcome, last_error, last_success_at, consecutive_failures,
                        holder, held_since
                 FROM subscription_state WHERE subscription = $1",
            )
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.q("reading subscription status"))?;
            let counts = sqlx::query(
                "SELECT
                    (SELECT COUNT(*) FROM delivery WHERE subscription = $1),
                    (SELECT COUNT(*) FROM delivery WHERE subscription = $1 AND stage = 'acknowledged'),
                    (SELECT COUNT(*) FROM failure WHERE subscription = $1 AND parked = 0 AND quarantined = 0),
                    (SELECT COUNT(*) FROM failure WHERE subscription = $1 AND parked = 1 AND quarantined = 0),
                    (SELECT COUNT(*) FROM failure WHERE subscription = $1 AND quarantined = 1)",
            )
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(self.q("counting deliveries"))?;
            let get = |i: usize| -> Result<i64, StateError> {
                counts
                    .try_get::<i64, _>(i)
                    .map_err(self.q("counting deliveries"))
            };
            let (received, acknowledged) = (get(0)?, get(1)?);
            let mut st = SubscriptionStatus {
                subscription: name.clone(),
                last_poll_at: None,
                last_outcome: None,
                last_error: None,
                last_success_at: None,
                consecutive_failures: 0,
                received,
                acknowledged,
                in_progress: received - acknowledged,
                failing: get(2)?,
                parked: get(3)?,
                quarantined: get(4)?,
                outbox_pending: 0,
                outbox_sent: 0,
                outbox_failed: 0,
                holder: None,
                node: None,
                node_since: None,
                lease_epoch: None,
                lease_expires_at: None,
                events_refused: 0,
                last_event_refused: None,
            };
            let refused = sqlx::query(
                "SELECT COUNT(*),
                    (SELECT case_id FROM activity WHERE subscription = $1 AND kind = 'hub_event_refused' ORDER BY seq DESC LIMIT 1),
                    (SELECT at FROM activity WHERE subscription = $1 AND kind = 'hub_event_refused' ORDER BY seq DESC LIMIT 1),
                    (SELECT detail FROM activity WHERE subscription = $1 AND kind = 'hub_event_refused' ORDER BY seq DESC LIMIT 1)
                 FROM activity WHERE subscription = $1 AND kind = 'hub_event_refused'",
            )
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(self.q("counting refused events"))?;
            st.events_refused = refused.try_get::<i64, _>(0).unwrap_or(0);
            if st.events_refused > 0 {
                let case: Option<String> = refused.try_get(1).ok().flatten();
                let at: Option<i64> = refused.try_get(2).ok().flatten();
                let detail: Option<String> = refused.try_get(3).ok().flatten();
                let error = detail
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                    .and_then(|d| d.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or_default();
                st.last_event_refused = Some(format!(
                    "case {} at {}: {error}",
                    case.unwrap_or_default(),
                    at.map(ms_to_rfc3339).unwrap_or_default()
                ));
            }
            if let Some(l) = view.leases.iter().find(|l| &l.subscription == name) {
                if l.holder.is_some() && l.expires_at_ms > view.now_ms {
                    st.node = l.holder.clone();
                    st.node_since = l.acquired_at_ms.map(ms_to_rfc3339);
                    st.lease_epoch = Some(l.epoch);
                    st.lease_expires_at = Some(ms_to_rfc3339(l.expires_at_ms));
                }
            }
            let outbox = self.outbox_counts(name).await?;
            st.outbox_pending = outbox.pending;
            st.outbox_sent = outbox.sent;
            st.outbox_failed = outbox.failed;
            if let Some(r) = s {
                let ms = |i: usize| r.try_get::<Option<i64>, _>(i).ok().flatten();
                let text = |i: usize| r.try_get::<Option<String>, _>(i).ok().flatten();
                st.last_poll_at = ms(0).map(ms_to_rfc3339);
                st.last_outcome = text(1);
                st.last_error = text(2);
                st.last_success_at = ms(3).map(ms_to_rfc3339);
                st.consecutive_failures = r.try_get::<i64, _>(4).unwrap_or(0);
                st.holder = text(5).map(|h| match ms(6) {
                    Some(since) => format!("{h} since {}", ms_to_rfc3339(since)),
                    None => h,
                });
            }
            out.push(st);
        }
        Ok(out)
    }

    /// Last poll time per subscription in ms (for overdue checks).
    pub async fn last_poll_ms(&self, subscription: &str) -> Result<Option<i64>, StateError> {
        let r = sqlx::query("SELECT last_poll_at FROM subscription_state WHERE subscription = $1")
            .bind(subscription)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.q("reading the last poll"))?;
        Ok(r.and_then(|r| r.try_get::<Option<i64>, _>(0).ok().flatten()))
    }
}
