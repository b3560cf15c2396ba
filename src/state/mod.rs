//! The state database: our own record of what was fetched and how far its acknowledgement
//! went (fetchmail's UIDL list), failures, last polls, and spool sequences. SQLite by
//! default (created if missing, WAL, synchronous=FULL), PostgreSQL by URL; one SQL dialect
//! through sqlx's `Any` driver. Schema versions are our own (`hubee_sync_schema`), so our
//! bookkeeping never clashes with an application's own sqlx migrations.

mod activity;
mod commit;
mod delivery;
mod digest;
mod failure;
pub mod lease;
mod leases;
mod lock;
pub mod outbox;
mod schema;
mod sequence;
mod subscription;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use commit::Stmt;
use commit::{Committer, Outcome};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use activity::{activity_stmts, row_to_activity};
pub use activity::{Activity, ActivityNote};
pub use delivery::{DeliveryKey, DeliveryRow, Stage};
pub use digest::{AlertRecord, DigestCursor, OpenWork, SubscriptionHealth};
pub use failure::{Failure, Parked, WorkItem};
pub use lease::{ClusterView, LeaseRow, NodeRow};
pub use leases::Leases;
pub use lock::{holder_description, LockError, SubscriptionLock};
pub use subscription::SubscriptionStatus;

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

    pub async fn close(&self) {
        if let Some(committer) = &self.committer {
            committer.close().await;
        }
        self.pool.close().await;
    }
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
