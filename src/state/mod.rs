//! The state database: our own record of what was fetched and how far its acknowledgement
//! went (fetchmail's UIDL list), failures, last polls, and spool sequences. SQLite by
//! default (created if missing, WAL, synchronous=FULL), PostgreSQL by URL; one SQL dialect
//! through sqlx's `Any` driver. Schema versions are our own (`hubee_sync_schema`), so our
//! bookkeeping never clashes with an application's own sqlx migrations.

mod commit;
mod digest;
pub mod lease;
mod leases;
mod lock;
pub mod outbox;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use commit::Stmt;
use commit::{Committer, Outcome};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

pub use digest::{AlertRecord, DigestCursor, OpenWork, SubscriptionHealth};
pub use lease::{ClusterView, LeaseRow, NodeRow};
pub use leases::Leases;
pub use lock::{holder_description, LockError, SubscriptionLock};

/// Where the state database lives.
#[derive(Clone)]
pub enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` URL (may hold a password: never printed).
    Postgres(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Location::Postgres(u) => write!(f, "{}", redact(u)),
        }
    }
}

/// Where the configuration says the state database lives.
pub fn state_location(settings: &crate::config::Settings) -> Location {
    match &settings.state.url {
        crate::config::StateUrl::Sqlite(p) => Location::Sqlite(p.clone()),
        crate::config::StateUrl::Postgres(s) => Location::Postgres(s.expose().to_string()),
    }
}

/// A database URL with its password hidden.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparsable database URL)".to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state database {place}: {detail}; {fix}")]
    Open {
        place: String,
        detail: String,
        fix: String,
    },
    #[error("the state database {place} has schema version {found}, newer than this hubee-sync knows ({known}); upgrade hubee-sync, or point [state] url at another database")]
    TooNew {
        place: String,
        found: i64,
        known: i64,
    },
    /// Several nodes (issue 11): this process no longer holds the subscription's lease, so
    /// it records nothing more for it.
    #[error("this node ({node}) no longer holds the lease of subscription {subscription}: nothing more is recorded or acknowledged for it by this process; another node took it over after the lease expired (this process was paused, or cut off from the database, for longer than [state] lease_ttl) and carries on")]
    LeaseLost { subscription: String, node: String },
    #[error("state database query failed while {doing}: {source}; check that the database at {place} is reachable, not full and writable")]
    Query {
        doing: &'static str,
        place: String,
        #[source]
        source: sqlx::Error,
    },
}

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

/// A parked item: work owed, its notification already deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub item: WorkItem,
    pub failure: Failure,
}

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

/// See `StateDb::open`: PostgreSQL ends a transaction left idle this long.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "SET idle_in_transaction_session_timeout = '1s'";

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
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

/// The state database handle. Cheap to clone.
#[derive(Clone)]
pub struct StateDb {
    pool: AnyPool,
    place: String,
    /// For SQLite: where subscription lock files live (beside the database).
    lock_dir: Option<PathBuf>,
    /// Several nodes on PostgreSQL: this process's leases. Then a subscription is worked
    /// only under its lease, and progress is written only in a transaction that checks it.
    cluster: Option<Arc<dyn Leases>>,
    /// SQLite: the group commit of progress writes (see `commit.rs`).
    committer: Option<Committer>,
}

impl StateDb {
    /// Opens (creating if needed) and migrates the state database.
    pub async fn open(location: &Location) -> Result<StateDb, StateError> {
        sqlx::any::install_default_drivers();
        let place = format!("{location:?}");
        let (url, lock_dir, max_conn) = match location {
            Location::Sqlite(path) => {
                let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    return Err(StateError::Open {
                        place,
                        detail: format!("cannot create directory {}: {e}", dir.display()),
                        fix: "create it, owned by the service user (sudo -u hubee-sync)".into(),
                    });
                }
                let url = format!("sqlite://{}?mode=rwc", path.display());
                (url, Some(dir.join("locks")), 4)
            }
            Location::Postgres(url) => (url.clone(), None, 8),
        };
        let is_sqlite = matches!(location, Location::Sqlite(_));
        if is_sqlite {
            // One direct connection first: a file that is not a database (corrupt, or another
            // file) is said at once, not retried by the pool as if it were a passing fault.
            check_sqlite_file(&url, &place).await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_conn)
            .acquire_timeout(Duration::from_secs(30))
            // A SQLite connection is a file handle in this process: nothing to test before
            // each use (a round trip to its worker thread). A server's connection may have
            // been closed by the server: tested.
            .test_before_acquire(!is_sqlite)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if is_sqlite {
                        commit::sqlite_pragmas(conn).await?;
                    } else {
                        // Our transactions are a few statements sent back to back. One left
                        // open by a paused process (SIGSTOP, a frozen VM) would keep its row
                        // locks — among them its lease's, blocking the takeover by another
                        // node — for as long as the pause: the server ends it instead, and
                        // its writes are rolled back (several nodes, issue 11).
                        conn.execute(IDLE_IN_TRANSACTION_TIMEOUT).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| StateError::Open {
                place: place.clone(),
                detail: crate::hubee::client::error_chain(&e),
                fix: if is_sqlite {
                    "check that the directory exists and is writable by the service user".into()
                } else {
                    "check that PostgreSQL is running, the URL, the user's rights and pg_hba.conf"
                        .into()
                },
            })?;
        if let (Some(dir), Location::Sqlite(path)) = (&lock_dir, location) {
            restrict_sqlite_files(path);
            if let Err(e) = std::fs::create_dir_all(dir) {
                return Err(StateError::Open {
                    place,
                    detail: format!("cannot create lock directory {}: {e}", dir.display()),
                    fix: "check permissions of the state directory".into(),
                });
            }
        }
        let db = StateDb {
            pool,
            place,
            lock_dir,
            cluster: None,
            committer: is_sqlite.then(|| Committer::start(url)),
        };
        schema::migrate(&db).await?;
        Ok(db)
    }

    pub fn place(&self) -> &str {
        &self.place
    }

    /// The same database, working under `cluster`'s leases (PostgreSQL only).
    pub fn with_cluster(&self, cluster: Arc<dyn Leases>) -> StateDb {
        StateDb {
            cluster: Some(cluster),
            ..self.clone()
        }
    }

    /// The lease holder this database works under, if any (`cluster::Cluster::of` gives
    /// the cluster itself).
    pub fn leases(&self) -> Option<&Arc<dyn Leases>> {
        self.cluster.as_ref()
    }

    /// A transaction for a subscription's progress. Under a cluster, its first statement
    /// checks (and share-locks until commit) the lease this process's current cycle holds:
    /// a takeover waits for the commit, and a write after a takeover is refused.
    /// Without a cluster: a plain connection, each statement its own transaction, as before.
    async fn begin_write(&self, subscription: &str) -> Result<Write, StateError> {
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

    async fn begin_write_with(
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

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    fn q(&self, doing: &'static str) -> impl FnOnce(sqlx::Error) -> StateError + '_ {
        move |source| StateError::Query {
            doing,
            place: self.place.clone(),
            source,
        }
    }

    /// Takes the subscription's lock: one process works a subscription at a time.
    pub async fn lock_subscription(
        &self,
        subscription: &str,
        holder: &str,
    ) -> Result<SubscriptionLock, LockError> {
        let guard = match (&self.lock_dir, &self.cluster) {
            (Some(dir), _) => SubscriptionLock::file(dir, subscription, holder)?,
            // Under a cluster the lease replaces the advisory lock: a session lock would
            // outlive a paused process and block the takeover.
            (None, Some(cluster)) => SubscriptionLock::lease(cluster, subscription)?,
            (None, None) => SubscriptionLock::advisory(&self.pool, subscription, holder).await?,
        };
        let _ = sqlx::query(
            "INSERT INTO subscription_state (subscription, holder, held_since) VALUES ($1, $2, $3)
             ON CONFLICT (subscription) DO UPDATE SET holder = $2, held_since = $3",
        )
        .bind(subscription)
        .bind(holder)
        .bind(now_ms())
        .execute(&self.pool)
        .await;
        Ok(guard)
    }

    /// Clears the holder shown by `status` after a lock is released.
    pub async fn clear_holder(&self, subscription: &str) {
        let _ = sqlx::query(
            "UPDATE subscription_state SET holder = NULL, held_since = NULL WHERE subscription = $1",
        )
        .bind(subscription)
        .execute(&self.pool)
        .await;
    }

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

    async fn ensure_subscription(&self, subscription: &str) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO subscription_state (subscription) VALUES ($1) ON CONFLICT (subscription) DO NOTHING",
        )
        .bind(subscription)
        .execute(&self.pool)
        .await
        .map_err(self.q("registering a subscription"))?;
        Ok(())
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

    pub async fn close(&self) {
        if let Some(committer) = &self.committer {
            committer.close().await;
        }
        self.pool.close().await;
    }
}

/// An activity record as the two statements that write it in one transaction: the counter
/// moves on, and the record takes its new value as `seq`.
fn activity_stmts(subscription: &str, at: i64, note: &ActivityNote<'_>) -> [Stmt; 2] {
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

fn row_to_delivery(r: &AnyRow) -> Result<DeliveryRow, sqlx::Error> {
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

async fn check_sqlite_file(url: &str, place: &str) -> Result<(), StateError> {
    use sqlx::Connection;
    let result = async {
        let mut c = sqlx::AnyConnection::connect(url).await?;
        c.execute("PRAGMA journal_mode=WAL").await?;
        c.close().await
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let detail = crate::hubee::client::error_chain(&e);
            let corrupt = detail.contains("not a database") || detail.contains("malformed");
            Err(StateError::Open {
                place: place.to_string(),
                detail: if corrupt {
                    format!("the file is not a usable SQLite database (corrupt?): {detail}")
                } else {
                    detail
                },
                fix: if corrupt {
                    "stop hubee-sync, restore the file from a backup or move it aside, and start again: a new state database is created, and entries already in the spool are recognised by their manifest, so nothing is delivered twice".into()
                } else {
                    "check that the directory exists and is writable by the service user".into()
                },
            })
        }
    }
}

/// The state database holds case ids and file names: no one else needs to read it.
fn restrict_sqlite_files(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
}
