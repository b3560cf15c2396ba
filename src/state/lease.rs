//! The tables behind several nodes sharing one PostgreSQL state database (issue 11): who is
//! alive (`hubee_sync_node`) and who holds which subscription until when
//! (`hubee_sync_lease`). Every time here is the database server's clock, in ms since the
//! epoch, so that the nodes' clocks never matter. The decisions (what to take, what to give
//! back) are in `crate::cluster`; this file only reads and writes rows, each write
//! conditional on what the caller believes (holder instance and epoch).

use sqlx::Row;

use super::{StateDb, StateError};

/// A live (or recently live) node, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub node: String,
    pub instance: String,
    pub pid: i64,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
}

/// One subscription's lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRow {
    pub subscription: String,
    /// The node name, `None` when released.
    pub holder: Option<String>,
    /// The process holding it (node, pid, start), `None` when released.
    pub holder_instance: Option<String>,
    pub epoch: i64,
    pub acquired_at_ms: Option<i64>,
    pub expires_at_ms: i64,
}

/// The leases and the nodes, read at one instant of the database clock.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub now_ms: i64,
    pub nodes: Vec<NodeRow>,
    pub leases: Vec<LeaseRow>,
}

impl StateDb {
    /// "Now" in ms on the database server (SQLite: this machine's clock; it serves one node).
    pub(crate) fn now_sql(&self) -> &'static str {
        if self.is_postgres() {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        } else {
            "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.lock_dir.is_none()
    }

    /// The database clock now, in ms.
    pub async fn db_now_ms(&self) -> Result<i64, StateError> {
        sqlx::query(&format!("SELECT {}", self.now_sql()))
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .map_err(self.q("reading the database clock"))
    }

    /// This node's heartbeat: creates or refreshes its row (the row of a node name belongs
    /// to the latest instance that started under it).
    pub async fn heartbeat(
        &self,
        node: &str,
        instance: &str,
        pid: i64,
        started_at_ms: i64,
        lease_ttl_ms: i64,
    ) -> Result<(), StateError> {
        let now = self.now_sql();
        sqlx::query(&format!(
            "INSERT INTO hubee_sync_node (node, instance, pid, started_at, heartbeat_at, lease_ttl_ms)
             VALUES ($1, $2, $3, $4, {now}, $5)
             ON CONFLICT (node) DO UPDATE SET instance = $2, pid = $3, started_at = $4,
                heartbeat_at = {now}, lease_ttl_ms = $5"
        ))
        .bind(node)
        .bind(instance)
        .bind(pid)
        .bind(started_at_ms)
        .bind(lease_ttl_ms)
        .execute(&self.pool)
        .await
        .map_err(self.q("recording this node's heartbeat"))?;
        Ok(())
    }

    /// Removes this node's row at a clean stop (if it is still this instance's).
    pub async fn forget_node(&self, node: &str, instance: &str) {
        let _ = sqlx::query("DELETE FROM hubee_sync_node WHERE node = $1 AND instance = $2")
            .bind(node)
            .bind(instance)
            .execute(&self.pool)
            .await;
    }

    /// Every node row and every lease, with the database clock.
    pub async fn cluster_view(&self) -> Result<ClusterView, StateError> {
        let now_ms = self.db_now_ms().await?;
        let nodes = sqlx::query(
            "SELECT node, instance, pid, started_at, heartbeat_at FROM hubee_sync_node ORDER BY node",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.q("reading the nodes"))?
        .iter()
        .map(|r| {
            Ok(NodeRow {
                node: r.try_get(0)?,
                instance: r.try_get(1)?,
                pid: r.try_get(2)?,
                started_at_ms: r.try_get(3)?,
                heartbeat_at_ms: r.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(self.q("reading the nodes"))?;
        let leases = sqlx::query(
            "SELECT subscription, holder, holder_instance, epoch, acquired_at, expires_at
             FROM hubee_sync_lease ORDER BY subscription",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(self.q("reading the leases"))?
        .iter()
        .map(|r| {
            Ok(LeaseRow {
                subscription: r.try_get(0)?,
                holder: r.try_get(1)?,
                holder_instance: r.try_get(2)?,
                epoch: r.try_get(3)?,
                acquired_at_ms: r.try_get(4)?,
                expires_at_ms: r.try_get(5)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(self.q("reading the leases"))?;
        Ok(ClusterView {
            now_ms,
            nodes,
            leases,
        })
    }

    /// Takes a subscription's lease if it is free, released or expired: a new epoch.
    /// `Ok(None)` when someone else holds it.
    pub async fn take_lease(
        &self,
        subscription: &str,
        node: &str,
        instance: &str,
        ttl_ms: i64,
    ) -> Result<Option<i64>, StateError> {
        let now = self.now_sql();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.q("taking a subscription's lease"))?;
        if self.is_postgres() {
            // The row may be locked by the previous holder's last transaction: if that
            // process is paused, the server ends its transaction within a second (see
            // `StateDb::open`); meanwhile do not block the renewals of this node's leases.
            sqlx::query("SET LOCAL lock_timeout = '300ms'")
                .execute(&mut *tx)
                .await
                .map_err(self.q("taking a subscription's lease"))?;
        }
        let row = sqlx::query(&format!(
            "INSERT INTO hubee_sync_lease (subscription, holder, holder_instance, epoch, acquired_at, renewed_at, expires_at)
             VALUES ($1, $2, $3, 1, {now}, {now}, {now} + $4)
             ON CONFLICT (subscription) DO UPDATE SET holder = $2, holder_instance = $3,
                epoch = hubee_sync_lease.epoch + 1, acquired_at = {now}, renewed_at = {now},
                expires_at = {now} + $4
             WHERE hubee_sync_lease.holder_instance IS NULL OR hubee_sync_lease.expires_at <= {now}
             RETURNING epoch"
        ))
        .bind(subscription)
        .bind(node)
        .bind(instance)
        .bind(ttl_ms)
        .fetch_optional(&mut *tx)
        .await;
        let row = match row {
            Ok(r) => r,
            // 55P03 lock_not_available: still locked; tried again at the next round.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                return Ok(None)
            }
            Err(e) => return Err(self.q("taking a subscription's lease")(e)),
        };
        let epoch = row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()
            .map_err(self.q("taking a subscription's lease"))?;
        tx.commit()
            .await
            .map_err(self.q("taking a subscription's lease"))?;
        Ok(epoch)
    }

    /// Renews every lease this instance holds; returns (subscription, epoch) of those
    /// renewed. A lease missing from the answer was taken over: it is lost.
    pub async fn renew_leases(
        &self,
        instance: &str,
        ttl_ms: i64,
    ) -> Result<Vec<(String, i64)>, StateError> {
        let now = self.now_sql();
        let rows = sqlx::query(&format!(
            "UPDATE hubee_sync_lease SET renewed_at = {now}, expires_at = {now} + $2
             WHERE holder_instance = $1 RETURNING subscription, epoch"
        ))
        .bind(instance)
        .bind(ttl_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(self.q("renewing this node's leases"))?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.q("renewing this node's leases"))
    }

    /// Gives a lease back (free at once for another node), if it is still ours.
    pub async fn release_lease(
        &self,
        subscription: &str,
        instance: &str,
        epoch: i64,
    ) -> Result<bool, StateError> {
        let now = self.now_sql();
        let done = sqlx::query(&format!(
            "UPDATE hubee_sync_lease SET holder = NULL, holder_instance = NULL, expires_at = {now}
             WHERE subscription = $1 AND holder_instance = $2 AND epoch = $3"
        ))
        .bind(subscription)
        .bind(instance)
        .bind(epoch)
        .execute(&self.pool)
        .await
        .map_err(self.q("releasing a subscription's lease"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Frees the leases of a dead instance of this very node (restarted after a crash: its
    /// pid is gone), so that they need not wait for their expiry.
    pub async fn free_leases_of(&self, instance: &str) -> Result<u64, StateError> {
        let now = self.now_sql();
        let done = sqlx::query(&format!(
            "UPDATE hubee_sync_lease SET holder = NULL, holder_instance = NULL, expires_at = {now}
             WHERE holder_instance = $1"
        ))
        .bind(instance)
        .execute(&self.pool)
        .await
        .map_err(self.q("freeing the leases of a dead instance"))?;
        Ok(done.rows_affected())
    }
}
