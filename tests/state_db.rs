//! The state database behaves the same on SQLite and on a real PostgreSQL server.

mod common;

use hubee_sync::state::{DeliveryKey, DeliveryRow, Location, LockError, Stage, StateDb, WorkItem};

fn row(sub: &str, case: &str) -> DeliveryRow {
    DeliveryRow {
        key: DeliveryKey {
            subscription: sub.into(),
            case_id: case.into(),
            event_id: String::new(),
            round: 0,
        },
        kind: "case".into(),
        external_id: "DGS-CERTDC-1".into(),
        entry_name: format!("DGS-CERTDC-1~{case}"),
        tmp_path: Some("/tmp/x".into()),
        sequence: Some(1),
        stage: Stage::Intent,
        receipt_from: None,
        receipt_to: None,
        receipt_event_id: None,
        notification_id: Some("n1".into()),
        files_json: None,
    }
}

async fn delivery_progress_is_recorded_step_by_step(db: &StateDb) {
    let r = row("certdc", "case-1");
    db.record_intent(&r).await.unwrap();
    assert_eq!(db.intents("certdc").await.unwrap().len(), 1);
    db.advance(&r.key, Stage::Published).await.unwrap();
    assert!(db.intents("certdc").await.unwrap().is_empty());
    db.record_receipt_start(&r.key, "HUBEE_NOTIFIED", "IN_PROGRESS")
        .await
        .unwrap();
    let got = db.delivery(&r.key).await.unwrap().unwrap();
    assert_eq!(got.stage, Stage::ReceiptStarted);
    assert_eq!(got.receipt_from.as_deref(), Some("HUBEE_NOTIFIED"));
    assert_eq!(got.tmp_path, None, "tmp path is forgotten once published");
    db.record_receipt_done(&r.key, Some("ev-1")).await.unwrap();
    db.advance(&r.key, Stage::Acknowledged).await.unwrap();
    let got = db.delivery(&r.key).await.unwrap().unwrap();
    assert_eq!(got.stage, Stage::Acknowledged);
    assert_eq!(got.receipt_event_id.as_deref(), Some("ev-1"));

    // A round is found again by the notification that opened it (a reopening seen again
    // after a crash), never by an event's row with the same notification. (Another
    // subscription, so the counts below stay those of certdc.)
    let mut r0 = row("etatcivil", "case-1");
    r0.notification_id = Some("n-new".into());
    db.record_intent(&r0).await.unwrap();
    let mut r2 = row("etatcivil", "case-1");
    r2.key.round = 2;
    r2.notification_id = Some("n-reopen".into());
    db.record_intent(&r2).await.unwrap();
    let mut ev = row("etatcivil", "case-1");
    ev.key.event_id = "ev-9".into();
    ev.notification_id = Some("n-event".into());
    db.record_intent(&ev).await.unwrap();
    for (case, nid, want) in [
        ("case-1", "n-reopen", Some(2)),
        ("case-1", "n-new", Some(0)),
        ("case-1", "n-event", None),
        ("case-1", "n-other", None),
        ("case-9", "n-reopen", None),
    ] {
        assert_eq!(
            db.case_round_announced_by("etatcivil", case, nid)
                .await
                .unwrap(),
            want,
            "{case} {nid}"
        );
    }
    assert_eq!(
        db.case_round_announced_by("certdc", "case-1", "n-reopen")
            .await
            .unwrap(),
        None
    );

    // Sequences grow per subscription.
    let a = db.next_sequence("certdc").await.unwrap();
    let b = db.next_sequence("certdc").await.unwrap();
    assert_eq!(b, a + 1);

    // Failures count up, park, and clear.
    let item = WorkItem {
        kind: "case".into(),
        case_id: "case-2".into(),
        event_id: String::new(),
        round: 0,
        external_id: Some("DGS-2".into()),
        notification_id: Some("n2".into()),
    };
    let f1 = db.record_failure("certdc", &item, "boom").await.unwrap();
    let f2 = db
        .record_failure("certdc", &item, "boom again")
        .await
        .unwrap();
    assert_eq!((f1.attempts, f2.attempts), (1, 2));
    assert_eq!(f2.last_error, "boom again");
    db.record_poll("certdc", false, Some("hub down"))
        .await
        .unwrap();
    let st = db.status(&["certdc".to_string()]).await.unwrap();
    assert_eq!(st[0].received, 1);
    assert_eq!(st[0].acknowledged, 1);
    assert_eq!(st[0].failing, 1);
    assert_eq!(st[0].consecutive_failures, 1);
    assert_eq!(st[0].last_error.as_deref(), Some("hub down"));
    db.park("certdc", &item).await.unwrap();
    let parked = db.parked("certdc").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].item, item, "parked work says what is owed");
    let st = db.status(&["certdc".to_string()]).await.unwrap();
    assert_eq!((st[0].failing, st[0].parked), (0, 1));
    db.clear_failure("certdc", &item).await.unwrap();
    db.record_poll("certdc", true, None).await.unwrap();
    let st = db.status(&["certdc".to_string()]).await.unwrap();
    assert_eq!((st[0].failing, st[0].consecutive_failures), (0, 0));
    assert_eq!(st[0].last_outcome.as_deref(), Some("ok"));
}

async fn second_process_cannot_take_a_held_subscription(db: &StateDb, other: &StateDb) {
    let held = db
        .lock_subscription("certdc", "pid 1 on test (hubee-sync run)")
        .await
        .unwrap();
    match other
        .lock_subscription("certdc", "pid 2 on test (hubee-sync once)")
        .await
    {
        Err(LockError::Held { holder, .. }) => {
            assert!(holder.contains("pid 1"), "names who holds it: {holder}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("two holders of one subscription"),
    }
    // Another subscription is free.
    let _free = other.lock_subscription("etatcivil", "pid 2").await.unwrap();
    held.release().await;
    let _again = other.lock_subscription("certdc", "pid 2").await.unwrap();
}

#[tokio::test]
async fn sqlite_state_records_delivery_progress_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::Sqlite(dir.path().join("state/state.db"));
    let db = StateDb::open(&loc).await.unwrap();
    delivery_progress_is_recorded_step_by_step(&db).await;
    let other = StateDb::open(&loc).await.unwrap();
    second_process_cannot_take_a_held_subscription(&db, &other).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("state/state.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "state database readable by others: {mode:o}"
    );
}

#[tokio::test]
async fn postgres_state_records_delivery_progress_and_locks() {
    let pg = common::PgDb::create().await;
    let loc = Location::Postgres(pg.url.clone());
    let db = StateDb::open(&loc).await.unwrap();
    delivery_progress_is_recorded_step_by_step(&db).await;
    let other = StateDb::open(&loc).await.unwrap();
    second_process_cannot_take_a_held_subscription(&db, &other).await;
    db.close().await;
    other.close().await;
    pg.drop_now().await;
}

#[tokio::test]
async fn state_database_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::Sqlite(dir.path().join("state.db"));
    let db = StateDb::open(&loc).await.unwrap();
    db.close().await;
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}",
            dir.path().join("state.db").display()
        ))
        .await
        .unwrap();
        sqlx::query("INSERT INTO hubee_sync_schema (version) VALUES (999)")
            .execute(&mut c)
            .await
            .unwrap();
    }
    match StateDb::open(&loc).await {
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("999") && msg.contains("upgrade hubee-sync"),
                "{msg}"
            );
        }
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[tokio::test]
async fn activity_is_read_back_in_sequence_order_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let pg = common::PgDb::create().await;
    for loc in [
        Location::Sqlite(dir.path().join("s.db")),
        Location::Postgres(pg.url.clone()),
    ] {
        let db = StateDb::open(&loc).await.unwrap();
        let a = db
            .record_activity(
                "certdc",
                "received",
                Some("c1"),
                Some("E1"),
                None,
                serde_json::json!({"files": 2}),
            )
            .await
            .unwrap();
        let b = db
            .record_activity(
                "etatcivil",
                "quarantined",
                Some("c2"),
                None,
                None,
                serde_json::json!({}),
            )
            .await
            .unwrap();
        assert!(b > a);
        let all = db.activity_since(0, &[], 100).await.unwrap();
        assert_eq!(all.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(all[0].detail["files"], 2);
        let only = db
            .activity_since(0, &["etatcivil".to_string()], 100)
            .await
            .unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].kind, "quarantined");
        assert!(db.activity_since(b, &[], 100).await.unwrap().is_empty());
        db.close().await;
    }
    pg.drop_now().await;
}
