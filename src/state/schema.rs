//! Versioned, forward-only migrations of the state database, in one SQL dialect that both
//! SQLite and PostgreSQL accept. Bookkeeping in our own table `hubee_sync_schema`.

use sqlx::Row;

use super::{StateDb, StateError};

/// Each entry is one version; statements are separated by `;`.
const MIGRATIONS: &[&str] = &[
    // 1: deliveries, failures, subscriptions.
    "CREATE TABLE IF NOT EXISTS subscription_state (
        subscription TEXT PRIMARY KEY,
        last_poll_at BIGINT,
        last_outcome TEXT,
        last_error TEXT,
        last_success_at BIGINT,
        consecutive_failures BIGINT NOT NULL DEFAULT 0,
        spool_sequence BIGINT NOT NULL DEFAULT 0,
        holder TEXT,
        held_since BIGINT
    );
    CREATE TABLE IF NOT EXISTS delivery (
        subscription TEXT NOT NULL,
        case_id TEXT NOT NULL,
        event_id TEXT NOT NULL DEFAULT '',
        round BIGINT NOT NULL DEFAULT 0,
        kind TEXT NOT NULL,
        external_id TEXT,
        entry_name TEXT NOT NULL,
        tmp_path TEXT,
        sequence BIGINT,
        stage TEXT NOT NULL,
        receipt_from TEXT,
        receipt_to TEXT,
        receipt_event_id TEXT,
        notification_id TEXT,
        files_json TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        published_at BIGINT,
        acknowledged_at BIGINT,
        PRIMARY KEY (subscription, case_id, event_id, round)
    );
    CREATE INDEX IF NOT EXISTS delivery_stage ON delivery (subscription, stage);
    CREATE TABLE IF NOT EXISTS failure (
        subscription TEXT NOT NULL,
        item TEXT NOT NULL,
        case_id TEXT,
        external_id TEXT,
        attempts BIGINT NOT NULL,
        first_at BIGINT NOT NULL,
        last_at BIGINT NOT NULL,
        last_error TEXT NOT NULL,
        parked BIGINT NOT NULL DEFAULT 0,
        quarantined BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (subscription, item)
    )",
    // 2: parked work says what it is owed for (a case round or an event).
    "ALTER TABLE failure ADD COLUMN kind TEXT;
    ALTER TABLE failure ADD COLUMN event_id TEXT;
    ALTER TABLE failure ADD COLUMN round BIGINT;
    ALTER TABLE failure ADD COLUMN notification_id TEXT;
    ALTER TABLE failure ADD COLUMN parked_at BIGINT;
    ALTER TABLE failure ADD COLUMN quarantined_at BIGINT;
    ALTER TABLE failure ADD COLUMN quarantine_path TEXT",
    // 3: what happened, in order, for digests and `status`: a journal of notable things.
    "CREATE TABLE IF NOT EXISTS activity (
        seq BIGINT PRIMARY KEY,
        subscription TEXT NOT NULL,
        at BIGINT NOT NULL,
        kind TEXT NOT NULL,
        case_id TEXT,
        external_id TEXT,
        event_id TEXT,
        detail TEXT
    );
    CREATE INDEX IF NOT EXISTS activity_subscription ON activity (subscription, seq);
    CREATE TABLE IF NOT EXISTS hubee_sync_counter (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO hubee_sync_counter (name, value) VALUES ('activity', 0)",
    // 4: email: where each recipient list's digests stand, and each subscription's alerts.
    "CREATE TABLE IF NOT EXISTS email_digest_cursor (
        list_key TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL,
        sent_at BIGINT NOT NULL,
        recipients TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS email_alert (
        subscription TEXT PRIMARY KEY,
        failing_since BIGINT,
        alerted_at BIGINT,
        alert_open BIGINT NOT NULL DEFAULT 0
    )",
    // 5: replies from the outbox, step by step (src/state/outbox.rs): a reply is known by its
    // folder name and the SHA-256 of its reply.json.
    "CREATE TABLE IF NOT EXISTS outbox_reply (
        subscription TEXT NOT NULL,
        folder TEXT NOT NULL,
        reply_sha256 TEXT NOT NULL,
        case_id TEXT,
        external_id TEXT,
        stage TEXT NOT NULL,
        outcome TEXT,
        status_from TEXT,
        status_to TEXT,
        action_type TEXT,
        event_id TEXT,
        files_json TEXT,
        attempts BIGINT NOT NULL DEFAULT 0,
        failing_since BIGINT,
        last_error TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        finished_at BIGINT,
        moved_to TEXT,
        PRIMARY KEY (subscription, folder, reply_sha256)
    );
    CREATE INDEX IF NOT EXISTS outbox_reply_stage ON outbox_reply (subscription, stage)",
    // 6: several nodes on one PostgreSQL (src/state/lease.rs, src/cluster): the live nodes,
    // and which node holds which subscription until when. Times are the database server's
    // clock in ms, never a node's. `epoch` grows at each takeover: the fencing token.
    "CREATE TABLE IF NOT EXISTS hubee_sync_node (
        node TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        pid BIGINT NOT NULL,
        started_at BIGINT NOT NULL,
        heartbeat_at BIGINT NOT NULL,
        lease_ttl_ms BIGINT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS hubee_sync_lease (
        subscription TEXT PRIMARY KEY,
        holder TEXT,
        holder_instance TEXT,
        epoch BIGINT NOT NULL,
        acquired_at BIGINT,
        renewed_at BIGINT,
        expires_at BIGINT NOT NULL
    )",
    // 7: a reply with files changes the case's status as a step of its own, after its deposit
    // is SENT (PROTOCOL §10.1, §10.20): that step's event, and what the step found or met
    // (JSON: outcome, status, error), for result.json.
    // And the status events the hub refused for good, counted by `status`.
    "ALTER TABLE outbox_reply ADD COLUMN status_event_id TEXT;
    ALTER TABLE outbox_reply ADD COLUMN status_note TEXT;
    CREATE INDEX IF NOT EXISTS activity_kind ON activity (subscription, kind, seq)",
];

/// The newest schema this binary knows.
pub const KNOWN_VERSION: i64 = MIGRATIONS.len() as i64;

/// Key of the advisory lock that serialises migrations on PostgreSQL ("hubee-sy" in ASCII).
const MIGRATION_LOCK: i64 = 0x6875_6265_652d_7379;

pub(super) async fn migrate(db: &StateDb) -> Result<(), StateError> {
    let q = |doing: &'static str| {
        move |source| StateError::Query {
            doing,
            place: db.place().to_string(),
            source,
        }
    };
    if !db.is_postgres() {
        return migrate_unlocked(db).await;
    }
    // Several nodes starting together on a fresh database: one migrates, the others wait
    // for it and then find nothing left to do.
    let mut conn = db
        .pool()
        .acquire()
        .await
        .map_err(q("waiting for other nodes' migrations"))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(q("waiting for other nodes' migrations"))?;
    let result = migrate_unlocked(db).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    result
}

async fn migrate_unlocked(db: &StateDb) -> Result<(), StateError> {
    let pool = db.pool();
    let q = |doing: &'static str| {
        move |source| StateError::Query {
            doing,
            place: db.place().to_string(),
            source,
        }
    };
    sqlx::query("CREATE TABLE IF NOT EXISTS hubee_sync_schema (version BIGINT NOT NULL)")
        .execute(pool)
        .await
        .map_err(q("creating the schema version table"))?;
    let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM hubee_sync_schema")
        .fetch_one(pool)
        .await
        .and_then(|r| r.try_get::<i64, _>(0))
        .map_err(q("reading the schema version"))?;
    if current > KNOWN_VERSION {
        return Err(StateError::TooNew {
            place: db.place().to_string(),
            found: current,
            known: KNOWN_VERSION,
        });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let mut tx = pool.begin().await.map_err(q("starting a migration"))?;
        for stmt in migration
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            sqlx::query(stmt)
                .execute(&mut *tx)
                .await
                .map_err(q("applying a schema migration"))?;
        }
        sqlx::query("INSERT INTO hubee_sync_schema (version) VALUES ($1)")
            .bind(version)
            .execute(&mut *tx)
            .await
            .map_err(q("recording a schema migration"))?;
        tx.commit()
            .await
            .map_err(q("committing a schema migration"))?;
        tracing::info!(version, "state database migrated");
    }
    Ok(())
}
