//! Delivery into a business database (`delivery = "database"`), for legacy software that
//! reads tables (CONTRACT, "Database layout"). One delivery is one transaction: the
//! `hubee_delivery` row (whose unique key makes a redelivery write nothing), its
//! `hubee_attachment` rows and the files as `hubee_attachment_chunk` rows of at most 4 MiB,
//! streamed: memory stays bounded whatever the size, and no value comes near PostgreSQL's
//! 1 GB limit. Verification happens before COMMIT; a failed one rolls everything back.
//!
//! Migrations are ours, versioned and forward-only, one set per backend (BLOB and BYTEA,
//! AUTOINCREMENT and IDENTITY differ), bookkept in our own table
//! `hubee_sync_delivery_schema` so they never clash with the application's own migrations.

use sha2::{Digest, Sha256};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

/// Largest chunk stored in one row.
pub const CHUNK: usize = 4 * 1024 * 1024;

/// The migrations, in SQLite's words; [`for_backend`] turns them into PostgreSQL's (its own
/// identity column, BYTEA for BLOB).
const MIGRATIONS: &[&str] = &["CREATE TABLE IF NOT EXISTS hubee_delivery (
        delivery_id INTEGER PRIMARY KEY AUTOINCREMENT,
        subscription TEXT NOT NULL,
        kind TEXT NOT NULL,
        case_id TEXT NOT NULL,
        event_id TEXT NOT NULL DEFAULT '',
        round BIGINT NOT NULL DEFAULT 0,
        external_id TEXT,
        process_code TEXT,
        case_status TEXT,
        action_type TEXT,
        message TEXT,
        case_json TEXT,
        event_json TEXT,
        received_at TEXT NOT NULL,
        UNIQUE (subscription, case_id, event_id, round)
    );
    CREATE TABLE IF NOT EXISTS hubee_attachment (
        delivery_id BIGINT NOT NULL REFERENCES hubee_delivery (delivery_id),
        attachment_id TEXT NOT NULL,
        file_name TEXT,
        type TEXT,
        mime_type TEXT,
        size BIGINT,
        sha256 TEXT,
        status TEXT,
        PRIMARY KEY (delivery_id, attachment_id)
    );
    CREATE TABLE IF NOT EXISTS hubee_attachment_chunk (
        delivery_id BIGINT NOT NULL,
        attachment_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (delivery_id, attachment_id, seq)
    )"];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the delivery database {place}: {detail}; check database_url, that the server runs and accepts this user, and that the file's directory is writable")]
    Open { place: String, detail: String },
    #[error("the delivery database {place} has schema version {found}, newer than this hubee-sync knows ({known}); upgrade hubee-sync")]
    TooNew {
        place: String,
        found: i64,
        known: i64,
    },
    #[error("delivery database {place}: {doing} failed: {source}; the delivery is rolled back and retried next cycle (check the server, disk space and rights)")]
    Query {
        place: String,
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// One migration's SQL for the backend at hand.
fn for_backend(sqlite_sql: &str, postgres: bool) -> String {
    if postgres {
        sqlite_sql
            .replace(
                "INTEGER PRIMARY KEY AUTOINCREMENT",
                "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
            )
            .replace(" BLOB ", " BYTEA ")
    } else {
        sqlite_sql.to_string()
    }
}

/// A business database, cheap to clone.
#[derive(Clone)]
pub struct BusinessDb {
    pool: AnyPool,
    place: String,
    postgres: bool,
}

impl std::fmt::Debug for BusinessDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BusinessDb({})", self.place)
    }
}

/// The `hubee_delivery` row of one delivery.
#[derive(Debug, Clone, Default)]
pub struct DeliveryRecord {
    pub subscription: String,
    /// `case`, `event` or `reopen`.
    pub kind: String,
    pub case_id: String,
    pub event_id: String,
    pub round: i64,
    pub external_id: String,
    pub process_code: String,
    pub case_status: Option<String>,
    pub action_type: Option<String>,
    pub message: Option<String>,
    pub case_json: String,
    pub event_json: Option<String>,
    pub received_at: String,
}

/// The `hubee_attachment` row of one file.
#[derive(Debug, Clone, Default)]
pub struct AttachmentRecord {
    pub attachment_id: String,
    pub file_name: String,
    pub type_: String,
    pub mime_type: String,
    pub size: u64,
    pub sha256: Option<String>,
    pub status: String,
}

/// What `begin` found.
pub enum Begun {
    /// A transaction holding the new `hubee_delivery` row.
    New(DbTxn),
    /// The delivery is already committed (a redelivery): nothing to write.
    Exists(i64),
}

impl BusinessDb {
    /// Opens (creating a SQLite file if needed) and migrates.
    pub async fn open(url: &str) -> Result<BusinessDb, DbError> {
        sqlx::any::install_default_drivers();
        let place = crate::state::redact(url);
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let url = if postgres {
            url.to_string()
        } else {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            if let Some(dir) = std::path::Path::new(path).parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            format!("sqlite://{path}?mode=rwc")
        };
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            // A delivery database that is down must stop the cycle soon, with its error.
            .acquire_timeout(std::time::Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !postgres {
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=FULL").await?;
                        conn.execute("PRAGMA busy_timeout=10000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| DbError::Open {
                place: place.clone(),
                detail: crate::hubee::client::error_chain(&e),
            })?;
        let db = BusinessDb {
            pool,
            place,
            postgres,
        };
        db.migrate().await?;
        Ok(db)
    }

    pub fn place(&self) -> &str {
        &self.place
    }

    fn q(&self, doing: &'static str) -> impl Fn(sqlx::Error) -> DbError + '_ {
        move |source| DbError::Query {
            place: self.place.clone(),
            doing,
            source,
        }
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let set: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| for_backend(m, self.postgres))
            .collect();
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS hubee_sync_delivery_schema (version BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(self.q("creating the schema version table"))?;
        let current: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM hubee_sync_delivery_schema")
                .fetch_one(&self.pool)
                .await
                .and_then(|r| r.try_get::<i64, _>(0))
                .map_err(self.q("reading the schema version"))?;
        let known = set.len() as i64;
        if current > known {
            return Err(DbError::TooNew {
                place: self.place.clone(),
                found: current,
                known,
            });
        }
        for (i, m) in set.iter().enumerate().skip(current as usize) {
            let mut tx = self.pool.begin().await.map_err(self.q("migrating"))?;
            for stmt in m.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(self.q("migrating"))?;
            }
            sqlx::query("INSERT INTO hubee_sync_delivery_schema (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut *tx)
                .await
                .map_err(self.q("migrating"))?;
            tx.commit().await.map_err(self.q("migrating"))?;
        }
        Ok(())
    }

    /// The id of an already committed delivery with that key.
    pub async fn find(
        &self,
        subscription: &str,
        case_id: &str,
        event_id: &str,
        round: i64,
    ) -> Result<Option<i64>, DbError> {
        let r = sqlx::query(
            "SELECT delivery_id FROM hubee_delivery
             WHERE subscription = $1 AND case_id = $2 AND event_id = $3 AND round = $4",
        )
        .bind(subscription)
        .bind(case_id)
        .bind(event_id)
        .bind(round)
        .fetch_optional(&self.pool)
        .await
        .map_err(self.q("looking for a delivery"))?;
        r.map(|r| r.try_get::<i64, _>(0))
            .transpose()
            .map_err(self.q("looking for a delivery"))
    }

    /// Starts a delivery's transaction with its `hubee_delivery` row.
    pub async fn begin(&self, d: &DeliveryRecord) -> Result<Begun, DbError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(self.q("starting a transaction"))?;
        let inserted = sqlx::query(
            "INSERT INTO hubee_delivery (subscription, kind, case_id, event_id, round, external_id,
                process_code, case_status, action_type, message, case_json, event_json, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (subscription, case_id, event_id, round) DO NOTHING
             RETURNING delivery_id",
        )
        .bind(&d.subscription)
        .bind(&d.kind)
        .bind(&d.case_id)
        .bind(&d.event_id)
        .bind(d.round)
        .bind(&d.external_id)
        .bind(&d.process_code)
        .bind(d.case_status.clone())
        .bind(d.action_type.clone())
        .bind(d.message.clone())
        .bind(&d.case_json)
        .bind(d.event_json.clone())
        .bind(&d.received_at)
        .fetch_optional(&mut *tx)
        .await
        .map_err(self.q("inserting the delivery row"))?;
        match inserted {
            Some(r) => Ok(Begun::New(DbTxn {
                delivery_id: r.try_get(0).map_err(self.q("inserting the delivery row"))?,
                tx,
                place: self.place.clone(),
            })),
            None => {
                let _ = tx.rollback().await;
                let id = self
                    .find(&d.subscription, &d.case_id, &d.event_id, d.round)
                    .await?
                    .unwrap_or(0);
                Ok(Begun::Exists(id))
            }
        }
    }

    /// A file put back together from its chunks (for tests and the consumer's reference).
    pub async fn read_file(
        &self,
        delivery_id: i64,
        attachment_id: &str,
    ) -> Result<Vec<u8>, DbError> {
        let rows = sqlx::query(
            "SELECT data FROM hubee_attachment_chunk WHERE delivery_id = $1 AND attachment_id = $2 ORDER BY seq",
        )
        .bind(delivery_id)
        .bind(attachment_id)
        .fetch_all(&self.pool)
        .await
        .map_err(self.q("reading chunks"))?;
        let mut out = Vec::new();
        for r in rows {
            out.extend_from_slice(
                &r.try_get::<Vec<u8>, _>(0)
                    .map_err(self.q("reading chunks"))?,
            );
        }
        Ok(out)
    }

    /// Rows in one of our tables (for tests and `check`).
    pub async fn count(&self, table: &str) -> Result<i64, DbError> {
        let table = match table {
            "hubee_delivery" | "hubee_attachment" | "hubee_attachment_chunk" => table,
            _ => "hubee_delivery",
        };
        sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .map_err(self.q("counting rows"))
    }

    /// The largest chunk stored, in bytes.
    pub async fn max_chunk_len(&self) -> Result<i64, DbError> {
        let len = if self.postgres {
            "octet_length(data)"
        } else {
            "length(data)"
        };
        sqlx::query(&format!(
            "SELECT COALESCE(MAX({len}), 0) FROM hubee_attachment_chunk"
        ))
        .fetch_one(&self.pool)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .map_err(self.q("measuring chunks"))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One delivery's open transaction.
pub struct DbTxn {
    tx: Transaction<'static, Any>,
    delivery_id: i64,
    place: String,
}

impl DbTxn {
    pub fn delivery_id(&self) -> i64 {
        self.delivery_id
    }

    fn q(&self, doing: &'static str) -> impl Fn(sqlx::Error) -> DbError + '_ {
        move |source| DbError::Query {
            place: self.place.clone(),
            doing,
            source,
        }
    }

    /// Records a file's metadata (after its chunks, with its verified SHA-256).
    pub async fn attachment(&mut self, a: &AttachmentRecord) -> Result<(), DbError> {
        let place = self.place.clone();
        sqlx::query(
            "INSERT INTO hubee_attachment (delivery_id, attachment_id, file_name, type, mime_type, size, sha256, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(self.delivery_id)
        .bind(&a.attachment_id)
        .bind(&a.file_name)
        .bind(&a.type_)
        .bind(&a.mime_type)
        .bind(a.size as i64)
        .bind(a.sha256.clone())
        .bind(&a.status)
        .execute(&mut *self.tx)
        .await
        .map_err(|source| DbError::Query {
            place,
            doing: "inserting an attachment row",
            source,
        })?;
        Ok(())
    }

    /// A writer that stores a file as chunks of at most [`CHUNK`] bytes, hashing it.
    pub fn writer(&mut self, attachment_id: &str) -> ChunkWriter<'_> {
        ChunkWriter {
            txn: self,
            attachment_id: attachment_id.to_string(),
            seq: 0,
            buf: Vec::with_capacity(CHUNK),
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Forgets the chunks stored for a file (before another attempt).
    pub async fn discard_chunks(&mut self, attachment_id: &str) -> Result<(), DbError> {
        let delivery_id = self.delivery_id;
        let place = self.place.clone();
        sqlx::query(
            "DELETE FROM hubee_attachment_chunk WHERE delivery_id = $1 AND attachment_id = $2",
        )
        .bind(delivery_id)
        .bind(attachment_id)
        .execute(&mut *self.tx)
        .await
        .map_err(|source| DbError::Query {
            place,
            doing: "discarding chunks",
            source,
        })?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), DbError> {
        let place = self.place.clone();
        self.tx.commit().await.map_err(|source| DbError::Query {
            place,
            doing: "committing the delivery",
            source,
        })
    }

    pub async fn rollback(self) {
        let _ = self.tx.rollback().await;
    }
}

/// Streams one file into chunk rows.
pub struct ChunkWriter<'a> {
    txn: &'a mut DbTxn,
    attachment_id: String,
    seq: i64,
    buf: Vec<u8>,
    hasher: Sha256,
    bytes: u64,
}

impl ChunkWriter<'_> {
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), DbError> {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let room = CHUNK - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    async fn flush(&mut self) -> Result<(), DbError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let delivery_id = self.txn.delivery_id;
        sqlx::query(
            "INSERT INTO hubee_attachment_chunk (delivery_id, attachment_id, seq, data) VALUES ($1, $2, $3, $4)",
        )
        .bind(delivery_id)
        .bind(&self.attachment_id)
        .bind(self.seq)
        .bind(data)
        .execute(&mut *self.txn.tx)
        .await
        .map_err(self.txn.q("storing a chunk"))?;
        self.seq += 1;
        Ok(())
    }

    /// Stores the last chunk; returns the size and SHA-256 of what was stored.
    pub async fn finish(mut self) -> Result<(u64, [u8; 32]), DbError> {
        self.flush().await?;
        let sha = std::mem::take(&mut self.hasher).finalize().into();
        Ok((self.bytes, sha))
    }
}
