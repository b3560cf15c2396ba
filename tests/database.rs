//! Delivery into a business database (SQLite and a real PostgreSQL), and the state database
//! on PostgreSQL: one transaction per delivery, chunks of at most 4 MiB, nothing
//! acknowledged before COMMIT, nothing written twice.

mod common;

use common::{PgDb, World, CLIENT};
use fake_hubee::{Fault, Route};
use hubee_sync::deliver::database::{BusinessDb, CHUNK};

fn use_database(w: &World, url: &str) {
    w.write_config_with(
        "",
        &format!("delivery = \"database\"\ndatabase_url = \"{url}\""),
    );
}

fn use_pg_state(w: &World, url: &str) {
    let cfg = std::fs::read_to_string(w.config_path()).unwrap();
    let cfg = cfg.replace(
        &format!("sqlite://{}/state.db", w.dir.path().display()),
        url,
    );
    common::write_mode(&w.config_path(), &cfg, 0o640);
}

/// Each case's files, read back from the chunks, against the hub's content.
async fn assert_cases_in_db(db: &BusinessDb, w: &World, cases: &[String]) {
    for c in cases {
        let id = db
            .find("certdc", c, "", 0)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("case {c} not in the database"));
        let hub_case = w.hub.case_json(c).unwrap();
        for a in hub_case["attachments"].as_array().unwrap() {
            let aid = a["id"].as_str().unwrap();
            let bytes = db.read_file(id, aid).await.unwrap();
            assert_eq!(bytes.len() as u64, a["size"].as_u64().unwrap());
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            assert_eq!(
                w.hub.attachment_sha256(c, aid).unwrap(),
                sha,
                "case {c} attachment {aid}"
            );
        }
        assert_eq!(w.receipt_events(c).len(), 1);
    }
}

async fn count(db_url: &str, table: &str) -> i64 {
    let db = BusinessDb::open(db_url).await.unwrap();
    let n = db.count(table).await.unwrap();
    db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_cases_into_postgres_match_the_hub_sha256_when_reassembled() {
    let pg = PgDb::create().await;
    let w = World::new().await;
    use_database(&w, &pg.url);
    let mut cases: Vec<String> = (0..9).map(|n| w.add_case(n, 3, 300_000)).collect();
    // One file spans three chunks.
    cases.push(w.add_case(9, 3, (2 * CHUNK + 1000) as u64));
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let db = BusinessDb::open(&pg.url).await.unwrap();
    assert_cases_in_db(&db, &w, &cases).await;
    assert_eq!(db.count("hubee_delivery").await.unwrap(), 10);
    assert_eq!(db.count("hubee_attachment").await.unwrap(), 30);
    assert!(db.max_chunk_len().await.unwrap() <= CHUNK as i64);
    assert!(w.hub.notifications(CLIENT).is_empty());
    assert!(
        w.entries("new").is_empty(),
        "nothing in the spool for a database subscription"
    );
    // Again: nothing written twice.
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    assert_eq!(db.count("hubee_delivery").await.unwrap(), 10);
    db.close().await;
    pg.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_cases_into_sqlite_match_the_hub_sha256_when_reassembled() {
    let w = World::new().await;
    let url = format!("sqlite://{}/business.db", w.dir.path().display());
    use_database(&w, &url);
    let cases: Vec<String> = (0..10).map(|n| w.add_case(n, 3, 100_000)).collect();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let db = BusinessDb::open(&url).await.unwrap();
    assert_cases_in_db(&db, &w, &cases).await;
    assert_eq!(db.count("hubee_delivery").await.unwrap(), 10);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_with_a_lost_state_database_writes_nothing_twice() {
    let pg = PgDb::create().await;
    let w = World::new().await;
    use_database(&w, &pg.url);
    let case = w.add_case(1, 2, 1000);
    w.hub
        .inject(Route::DeleteNotification, Fault::Status(500), 100);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    w.hub.clear_faults();
    std::fs::remove_file(w.dir.path().join("state.db")).unwrap();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        count(&pg.url, "hubee_delivery").await,
        1,
        "the unique key made it a no-op"
    );
    assert_eq!(count(&pg.url, "hubee_attachment").await, 2);
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert!(w.hub.notifications(CLIENT).is_empty());
    pg.drop_now().await;
}

/// Kills every session of the database except ours.
async fn terminate_backends(db_name_url: &str) {
    use sqlx::Connection;
    let name = url::Url::parse(db_name_url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let mut c = sqlx::PgConnection::connect(&common::pg_admin_url())
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(name)
        .execute(&mut c)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connection_mid_delivery_acknowledges_nothing_and_next_cycle_delivers_once() {
    let pg = PgDb::create().await;
    let w = World::new().await;
    use_database(&w, &pg.url);
    let case = w.add_case(1, 1, 3 * CHUNK as u64);
    w.hub.inject(
        Route::GetAttachment,
        Fault::SlowBody { chunk_delay_ms: 40 },
        1,
    );
    let cfg = w.config_path();
    let child = std::process::Command::new(common::bin())
        .arg("--config")
        .arg(&cfg)
        .arg("once")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the download is under way, then cut the database connections.
    let start = std::time::Instant::now();
    while w.hub.request_count(Route::GetAttachment) == 0 && start.elapsed().as_secs() < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    terminate_backends(&pg.url).await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_eq!(
        w.hub.notifications(CLIENT).len(),
        1,
        "nothing acknowledged: {text}"
    );
    assert!(w.receipt_events(&case).is_empty());
    assert_eq!(count(&pg.url, "hubee_delivery").await, 0, "rolled back");

    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let db = BusinessDb::open(&pg.url).await.unwrap();
    assert_cases_in_db(&db, &w, std::slice::from_ref(&case)).await;
    assert_eq!(db.count("hubee_delivery").await.unwrap(), 1);
    db.close().await;
    pg.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_delivery_database_stops_that_subscription_with_a_clear_error() {
    let w = World::new().await;
    use_database(&w, "postgres://nobody@127.0.0.1:1/nothing");
    let case = w.add_case(1, 1, 100);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    let all = format!("{out}{err}");
    assert!(
        all.contains("cannot open the delivery database") && all.contains("127.0.0.1:1"),
        "{all}"
    );
    assert_eq!(w.hub.notifications(CLIENT).len(), 1);
    assert!(w.receipt_events(&case).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_on_postgres_behaves_like_sqlite_and_survives_a_killed_connection() {
    let pg = PgDb::create().await;
    let w = World::new().await;
    use_pg_state(&w, &pg.url);
    let cases: Vec<String> = (0..5).map(|n| w.add_case(n, 2, 50_000)).collect();
    w.hub.inject(
        Route::GetAttachment,
        Fault::SlowBody { chunk_delay_ms: 30 },
        2,
    );
    let cfg = w.config_path();
    let child = std::process::Command::new(common::bin())
        .arg("--config")
        .arg(&cfg)
        .arg("once")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while w.hub.request_count(Route::GetAttachment) == 0 && start.elapsed().as_secs() < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    terminate_backends(&pg.url).await;
    let _ = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap();
    // Whatever that run managed, the next ones finish cleanly.
    for _ in 0..3 {
        let (code, _, _) = w.run(&["once"]).await;
        if code == 0 {
            break;
        }
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new").len(), 5);
    for c in &cases {
        assert_eq!(w.receipt_events(c).len(), 1);
    }
    assert!(w.hub.notifications(CLIENT).is_empty());
    let (code, st, _) = w.run(&["status", "--json"]).await;
    assert_eq!(code, 0, "{st}");
    pg.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_database_newer_than_the_binary_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/business.db", dir.path().display());
    let db = BusinessDb::open(&url).await.unwrap();
    db.close().await;
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO hubee_sync_delivery_schema (version) VALUES (42)")
            .execute(&mut c)
            .await
            .unwrap();
    }
    match BusinessDb::open(&url).await {
        Err(e) => assert!(e.to_string().contains("upgrade hubee-sync"), "{e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}
