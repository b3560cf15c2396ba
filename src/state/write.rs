//! Where a subscription's progress is written: a transaction fenced by the lease (several
//! nodes), the group commit (SQLite), or a plain connection.

use super::*;

/// Where a subscription's progress is written: a transaction that checked the lease
/// (several nodes), or a plain connection.
pub(crate) enum Write {
    /// A transaction (that checked the lease, under a cluster).
    Fenced(sqlx::Transaction<'static, sqlx::Any>),
    Plain(sqlx::pool::PoolConnection<sqlx::Any>),
}

impl std::ops::Deref for Write {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        match self {
            Write::Fenced(tx) => tx,
            Write::Plain(c) => c,
        }
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        match self {
            Write::Fenced(tx) => &mut *tx,
            Write::Plain(c) => &mut *c,
        }
    }
}

impl Write {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Write::Fenced(tx) => tx.commit().await,
            Write::Plain(_) => Ok(()),
        }
    }
}

impl StateDb {
    /// A transaction for a subscription's progress. Under a cluster, its first statement
    /// checks (and share-locks until commit) the lease this process's current cycle holds:
    /// a takeover waits for the commit, and a write after a takeover is refused.
    /// Without a cluster: a plain connection, each statement its own transaction, as before.
    pub(super) async fn begin_write(&self, subscription: &str) -> Result<Write, StateError> {
        self.begin_write_with(subscription, false).await
    }

    /// One statement of a subscription's progress, committed (durably) before it returns;
    /// `doing` names it in the error. See [`StateDb::write_all`].
    pub(crate) async fn write_one(
        &self,
        subscription: &str,
        doing: &'static str,
        stmt: Stmt,
    ) -> Result<(), StateError> {
        self.write_all(subscription, doing, vec![stmt]).await
    }

    /// Statements of a subscription's progress, in one transaction, committed (durably)
    /// before it returns; `doing` names them in the error. On SQLite they go to the group
    /// commit with the other writes waiting; otherwise through [`StateDb::begin_write`]
    /// (fenced under a cluster).
    pub(crate) async fn write_all(
        &self,
        subscription: &str,
        doing: &'static str,
        stmts: Vec<Stmt>,
    ) -> Result<(), StateError> {
        let stmts = match (&self.committer, &self.cluster) {
            (Some(committer), None) => match committer.write(stmts).await {
                Outcome::Done(result) => return result.map_err(self.q(doing)),
                Outcome::Back(stmts) => stmts,
            },
            _ => stmts,
        };
        let mut tx = if stmts.len() > 1 {
            self.begin_write_atomic(subscription).await?
        } else {
            self.begin_write(subscription).await?
        };
        for stmt in &stmts {
            stmt.execute(&mut tx).await.map_err(self.q(doing))?;
        }
        tx.commit().await.map_err(self.q(doing))
    }

    /// As [`StateDb::begin_write`], always in a transaction (several statements at once).
    pub(crate) async fn begin_write_atomic(&self, subscription: &str) -> Result<Write, StateError> {
        self.begin_write_with(subscription, true).await
    }

    pub(super) async fn begin_write_with(
        &self,
        subscription: &str,
        atomic: bool,
    ) -> Result<Write, StateError> {
        let Some(cluster) = &self.cluster else {
            if atomic {
                return self
                    .pool
                    .begin()
                    .await
                    .map(Write::Fenced)
                    .map_err(self.q("starting a transaction"));
            }
            return self
                .pool
                .acquire()
                .await
                .map(Write::Plain)
                .map_err(self.q("reaching the state database"));
        };
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.q("starting a transaction"))?;
        {
            let lost = || StateError::LeaseLost {
                subscription: subscription.to_string(),
                node: cluster.node().to_string(),
            };
            let epoch = cluster.working_epoch(subscription).ok_or_else(lost)?;
            // FOR SHARE: writes of one subscription (its concurrent cases) do not wait for
            // each other; a takeover's UPDATE waits for all of them.
            let held = sqlx::query(&format!(
                "SELECT epoch FROM hubee_sync_lease
                 WHERE subscription = $1 AND holder_instance = $2 AND epoch = $3 AND expires_at > {}
                 FOR SHARE",
                self.now_sql()
            ))
            .bind(subscription)
            .bind(cluster.instance())
            .bind(epoch)
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.q("checking the subscription's lease"))?;
            if held.is_none() {
                cluster.mark_lost(subscription, epoch);
                return Err(lost());
            }
        }
        Ok(Write::Fenced(tx))
    }
}
