//! Group commit of a SQLite state database's progress writes.
//!
//! Each progress write must be durable (`synchronous=FULL`: the WAL is fsynced at every
//! commit) before the step it records is followed by the next one. With cases worked side by
//! side, each writing its own rows, that was one WAL fsync per write, and four connections
//! taking turns at SQLite's single write lock. Here one task owns one connection and writes
//! for everyone: it takes every write waiting, runs them in one transaction, commits once,
//! and only then answers each writer. A writer still returns only once its write is durable;
//! writes that arrive while a commit is on its way wait for the next one (no timer).
//!
//! A write that fails inside a batch (a constraint, a full disk) must not fail the others:
//! the batch is rolled back and each of its writes is then run alone, so that each gets its
//! own outcome. PostgreSQL groups commits itself; this is used for SQLite only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, Connection, Executor};
use tokio::sync::{mpsc, oneshot};

/// A value bound to a statement (the types the state database uses).
#[derive(Debug, Clone)]
pub(crate) enum Val {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(Some(v.to_string()))
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Val {
        Val::Text(Some(v.clone()))
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(Some(v))
    }
}
impl From<Option<String>> for Val {
    fn from(v: Option<String>) -> Val {
        Val::Text(v)
    }
}
impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Val {
        Val::Text(v.map(str::to_string))
    }
}
impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(Some(v))
    }
}
impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Val {
        Val::Int(v)
    }
}

/// One statement with its values, owned: it can wait in the committer's queue.
#[derive(Debug, Clone)]
pub(crate) struct Stmt {
    sql: &'static str,
    args: Vec<Val>,
}

impl Stmt {
    pub(crate) fn new(sql: &'static str) -> Stmt {
        Stmt {
            sql,
            args: Vec::new(),
        }
    }

    /// Binds the next `$n`.
    pub(crate) fn bind(mut self, v: impl Into<Val>) -> Stmt {
        self.args.push(v.into());
        self
    }

    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, AnyArguments<'_>> {
        self.args
            .iter()
            .fold(sqlx::query(self.sql), |q, a| match a {
                Val::Text(t) => q.bind(t.as_deref()),
                Val::Int(i) => q.bind(*i),
            })
    }

    /// Runs the statement on `conn`.
    pub(crate) async fn execute(&self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        self.query().execute(conn).await.map(drop)
    }
}

/// What became of a write handed to the committer.
pub(crate) enum Outcome {
    /// Committed (Ok), or failed when run alone (its own error).
    Done(Result<(), sqlx::Error>),
    /// The committer could not take it (stopped, or cannot reach the database): the writer
    /// runs it itself, so that the error it meets is its own.
    Back(Vec<Stmt>),
}

struct Job {
    stmts: Vec<Stmt>,
    reply: oneshot::Sender<Outcome>,
}

enum Msg {
    Write(Job),
    Close(oneshot::Sender<()>),
}

/// The writers' end of the committer (cheap to clone).
#[derive(Clone, Debug)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Msg>,
    /// Transactions committed so far (batches and writes run alone).
    commits: Arc<AtomicU64>,
}

/// At most this many writes in one transaction (a bound on the time a batch holds the lock).
const MAX_BATCH: usize = 128;

impl Committer {
    /// Starts the committer task on the current runtime; it connects to `url` (SQLite) when
    /// it has its first write.
    pub(crate) fn start(url: String) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(url, rx, commits.clone()));
        Committer { tx, commits }
    }

    /// Transactions committed so far.
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Writes `stmts` in one transaction, durably, together with whatever other writes are
    /// waiting.
    pub(crate) async fn write(&self, stmts: Vec<Stmt>) -> Outcome {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(Msg::Write(job))) =
            self.tx.send(Msg::Write(Job { stmts, reply }))
        {
            return Outcome::Back(job.stmts);
        }
        match answer.await {
            Ok(outcome) => outcome,
            // The task ended with the write in hand (its runtime shut down): whether it was
            // committed is unknown, so it is not run again here.
            Err(_) => Outcome::Done(Err(sqlx::Error::WorkerCrashed)),
        }
    }

    /// Finishes the writes already queued, then closes the connection.
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).is_ok() {
            let _ = wait.await;
            tracing::debug!(
                commits = self.commits(),
                "state database: group commit closed"
            );
        }
    }
}

async fn run(url: String, mut rx: mpsc::UnboundedReceiver<Msg>, commits: Arc<AtomicU64>) {
    let mut conn: Option<AnyConnection> = None;
    while let Some(first) = rx.recv().await {
        let mut jobs = Vec::new();
        let mut close = None;
        match first {
            Msg::Write(job) => jobs.push(job),
            Msg::Close(done) => close = Some(done),
        }
        while close.is_none() && jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Write(job)) => jobs.push(job),
                Ok(Msg::Close(done)) => close = Some(done),
                Err(_) => break,
            }
        }
        if !jobs.is_empty() {
            commit_batch(&url, &mut conn, jobs, &commits).await;
        }
        if let Some(done) = close {
            if let Some(c) = conn.take() {
                let _ = c.close().await;
            }
            rx.close();
            // Writes that slipped in after the close are given back to their writers.
            while let Ok(msg) = rx.try_recv() {
                if let Msg::Write(job) = msg {
                    let _ = job.reply.send(Outcome::Back(job.stmts));
                }
            }
            let _ = done.send(());
            return;
        }
    }
}

async fn commit_batch(
    url: &str,
    conn: &mut Option<AnyConnection>,
    jobs: Vec<Job>,
    commits: &AtomicU64,
) {
    let c = match conn {
        Some(c) => c,
        None => match connect(url).await {
            Ok(c) => conn.insert(c),
            Err(e) => {
                tracing::debug!(error = %e, "state committer cannot connect; writers write themselves");
                for job in jobs {
                    let _ = job.reply.send(Outcome::Back(job.stmts));
                }
                return;
            }
        },
    };
    if jobs.len() > 1 {
        let all: Vec<&Stmt> = jobs.iter().flat_map(|j| j.stmts.iter()).collect();
        let together = in_transaction(c, &all).await;
        if together.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
            for job in jobs {
                let _ = job.reply.send(Outcome::Done(Ok(())));
            }
            return;
        }
    }
    // One write, or a batch that failed: each alone, with its own outcome.
    let mut broken = false;
    for job in jobs {
        let own: Vec<&Stmt> = job.stmts.iter().collect();
        let alone = in_transaction(c, &own).await;
        if alone.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        broken |= matches!(
            alone,
            Err(sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::PoolClosed)
        );
        let _ = job.reply.send(Outcome::Done(alone));
    }
    if broken {
        *conn = None;
    }
}

/// Runs `stmts` in one transaction, committed (rolled back if one fails).
async fn in_transaction(c: &mut AnyConnection, stmts: &[&Stmt]) -> Result<(), sqlx::Error> {
    let mut tx = c.begin().await?;
    for s in stmts {
        s.execute(&mut tx).await?;
    }
    tx.commit().await
}

/// A SQLite connection set up as the pool's are.
async fn connect(url: &str) -> Result<AnyConnection, sqlx::Error> {
    let mut c = AnyConnection::connect(url).await?;
    sqlite_pragmas(&mut c).await?;
    Ok(c)
}

/// Durability first: a published entry's record must survive power loss.
pub(crate) async fn sqlite_pragmas(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    conn.execute("PRAGMA journal_mode=WAL").await?;
    conn.execute("PRAGMA synchronous=FULL").await?;
    conn.execute("PRAGMA busy_timeout=10000").await?;
    conn.execute("PRAGMA foreign_keys=ON").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{DeliveryKey, DeliveryRow, Location, Stage, StateDb, StateError};

    fn intent(case: usize) -> DeliveryRow {
        DeliveryRow {
            key: DeliveryKey {
                subscription: "certdc".into(),
                case_id: format!("case-{case}"),
                event_id: String::new(),
                round: 0,
            },
            kind: "case".into(),
            external_id: format!("DGS-{case}"),
            entry_name: format!("DGS-{case}~case-{case}"),
            tmp_path: Some(format!("/spool/tmp/{case}")),
            sequence: Some(case as i64),
            stage: Stage::Intent,
            receipt_from: None,
            receipt_to: None,
            receipt_event_id: None,
            notification_id: Some(format!("n-{case}")),
            files_json: None,
        }
    }

    async fn open(dir: &tempfile::TempDir) -> StateDb {
        StateDb::open(&Location::Sqlite(dir.path().join("state.db")))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn writes_waiting_together_share_one_commit_and_each_is_stored_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        let before = db.committer.as_ref().unwrap().commits();
        let rows: Vec<DeliveryRow> = (0..40).map(intent).collect();
        let results =
            futures_util::future::join_all(rows.iter().map(|r| db.record_intent(r))).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let commits = db.committer.as_ref().unwrap().commits() - before;
        assert_eq!(
            commits, 1,
            "40 writes waiting at once made {commits} commits"
        );
        // Every write is there for another connection (another process) once answered.
        let other = open(&dir).await;
        for r in &rows {
            let got = other.delivery(&r.key).await.unwrap();
            assert_eq!(
                got.map(|g| g.stage),
                Some(Stage::Intent),
                "{}",
                r.key.case_id
            );
        }
    }

    #[tokio::test]
    async fn a_failing_write_in_a_batch_fails_alone_and_the_others_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        let rows: Vec<DeliveryRow> = (0..9).map(intent).collect();
        let bad = db.write_one(
            "certdc",
            "writing into a missing table",
            Stmt::new("INSERT INTO no_such_table (x) VALUES ($1)").bind(1),
        );
        let good = futures_util::future::join_all(rows.iter().map(|r| db.record_intent(r)));
        let (bad, good) = tokio::join!(bad, good);
        match bad {
            Err(StateError::Query { doing, .. }) => {
                assert_eq!(doing, "writing into a missing table")
            }
            other => panic!("the failing write was answered {other:?}"),
        }
        assert!(good.iter().all(Result::is_ok), "{good:?}");
        for r in &rows {
            assert!(
                db.delivery(&r.key).await.unwrap().is_some(),
                "{}",
                r.key.case_id
            );
        }
    }

    #[tokio::test]
    async fn a_write_after_close_is_refused_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        db.record_intent(&intent(1)).await.unwrap();
        db.close().await;
        let late = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            db.record_intent(&intent(2)),
        )
        .await
        .expect("a write after close hung");
        assert!(late.is_err(), "a write after close was accepted");
    }
}
