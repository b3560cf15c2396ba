//! The outbox's record in the state database, on SQLite and on PostgreSQL alike.

mod common;

use hubee_sync::state::outbox::{ReplyFile, ReplyKey, ReplyRow, ReplyStage};
use hubee_sync::state::{DeliveryKey, DeliveryRow, Location, Stage, StateDb};

async fn exercise(db: &StateDb) {
    // A case received by "certdc".
    let delivery = DeliveryRow {
        key: DeliveryKey {
            subscription: "certdc".into(),
            case_id: "case-1".into(),
            event_id: String::new(),
            round: 0,
        },
        kind: "case".into(),
        external_id: "DGS-CERTDC-0000000000001-01".into(),
        entry_name: "DGS-CERTDC-0000000000001-01~case-1".into(),
        tmp_path: None,
        sequence: Some(1),
        stage: Stage::Intent,
        receipt_from: None,
        receipt_to: None,
        receipt_event_id: None,
        notification_id: None,
        files_json: None,
    };
    db.record_intent(&delivery).await.unwrap();
    let found = Some((
        "case-1".to_string(),
        "DGS-CERTDC-0000000000001-01".to_string(),
    ));
    assert_eq!(
        db.known_case("certdc", Some("case-1"), None).await.unwrap(),
        found
    );
    assert_eq!(
        db.known_case("certdc", None, Some("DGS-CERTDC-0000000000001-01"))
            .await
            .unwrap(),
        found
    );
    assert_eq!(
        db.known_case("etatcivil", Some("case-1"), None)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        db.case_owner("etatcivil", Some("case-1"), None)
            .await
            .unwrap()
            .as_deref(),
        Some("certdc")
    );

    let key = ReplyKey {
        subscription: "certdc".into(),
        folder: "acte-1".into(),
        reply_sha256: "ab".repeat(32),
    };
    let mut row = ReplyRow::new(key.clone(), "case-1", "DGS-CERTDC-0000000000001-01");
    row.status_to = Some("DONE".into());
    row.files = vec![ReplyFile {
        file: "acte.pdf".into(),
        type_: "DD_Certificatdedeces".into(),
        mime_type: "application/pdf".into(),
        size: 42,
        sha256: "cd".repeat(32),
        attachment_id: None,
        uploaded: false,
    }];
    db.outbox_start(&row).await.unwrap();
    assert_eq!(db.outbox_reply(&key).await.unwrap().as_ref(), Some(&row));
    assert_eq!(db.outbox_counts("certdc").await.unwrap().pending, 1);

    row.stage = ReplyStage::EventCreated;
    row.event_id = Some("ev-1".into());
    row.status_from = Some("IN_PROGRESS".into());
    row.files[0].attachment_id = Some("att-1".into());
    row.files[0].uploaded = true;
    row.attempts = 2;
    row.failing_since = Some(1_700_000_000_000);
    row.last_error = Some("hub unreachable".into());
    db.outbox_save(&row).await.unwrap();
    assert_eq!(db.outbox_reply(&key).await.unwrap().as_ref(), Some(&row));
    assert_eq!(
        db.outbox_unfinished("certdc").await.unwrap(),
        vec![row.clone()]
    );

    row.stage = ReplyStage::Finished;
    row.outcome = Some("sent".into());
    db.outbox_save(&row).await.unwrap();
    assert!(db.outbox_unfinished("certdc").await.unwrap().is_empty());
    let counts = db.outbox_counts("certdc").await.unwrap();
    assert_eq!((counts.pending, counts.sent, counts.failed), (0, 1, 0));

    // Starting the same key again (a failed reply put back) replaces the record.
    let fresh = ReplyRow::new(key.clone(), "case-1", "DGS-CERTDC-0000000000001-01");
    db.outbox_start(&fresh).await.unwrap();
    assert_eq!(db.outbox_reply(&key).await.unwrap(), Some(fresh));
}

#[tokio::test]
async fn outbox_progress_is_recorded_and_read_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = StateDb::open(&Location::Sqlite(dir.path().join("state.db")))
        .await
        .unwrap();
    exercise(&db).await;
    db.close().await;
}

#[tokio::test]
async fn outbox_progress_is_recorded_and_read_back_on_postgresql() {
    let pg = common::PgDb::create().await;
    let db = StateDb::open(&Location::Postgres(pg.url.clone()))
        .await
        .unwrap();
    exercise(&db).await;
    db.close().await;
    pg.drop_now().await;
}
