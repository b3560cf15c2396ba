//! Spool sequence numbers: the next one, blocks reserved in one durable write, and the unused
//! ones given back.

use super::*;

impl StateDb {
    /// The next `sequence` number for a subscription's spool.
    pub async fn next_sequence(&self, subscription: &str) -> Result<i64, StateError> {
        self.reserve_sequences(subscription, 1).await
    }

    /// Reserves `count` spool sequence numbers at once (one durable write); returns the last
    /// of them: the block is `last - count + 1 ..= last`.
    pub async fn reserve_sequences(
        &self,
        subscription: &str,
        count: i64,
    ) -> Result<i64, StateError> {
        self.ensure_subscription(subscription).await?;
        let mut tx = self.begin_write(subscription).await?;
        let row = sqlx::query(
            "UPDATE subscription_state SET spool_sequence = spool_sequence + $2
             WHERE subscription = $1 RETURNING spool_sequence",
        )
        .bind(subscription)
        .bind(count)
        .fetch_one(&mut *tx)
        .await
        .map_err(self.q("reserving spool sequence numbers"))?;
        tx.commit()
            .await
            .map_err(self.q("reserving spool sequence numbers"))?;
        row.try_get::<i64, _>(0)
            .map_err(self.q("reserving spool sequence numbers"))
    }

    /// Gives back reserved numbers after `used_last`, only if no one reserved after
    /// `reserved_last` (else they stay a gap, never a repeat).
    pub async fn return_sequences(
        &self,
        subscription: &str,
        reserved_last: i64,
        used_last: i64,
    ) -> Result<(), StateError> {
        let query = Stmt::new(
            "UPDATE subscription_state SET spool_sequence = $3
             WHERE subscription = $1 AND spool_sequence = $2",
        )
        .bind(subscription)
        .bind(reserved_last)
        .bind(used_last);
        self.write_one(subscription, "giving back spool sequence numbers", query)
            .await
    }
}
