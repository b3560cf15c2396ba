//! `hubee-sync run` end to end: the real binary against the fake hub on 127.0.0.1, stopped
//! with real signals. Every wait is bounded.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::daemon::{dir_entries, eventually, Daemon};
use common::{sha256sum_check, write_mode, World, CLIENT, SECRET};
use fake_hubee::{AttachmentSpec, CaseSpec, Content, Fault, Route};

const INFO: &str = "info,sqlx=warn,hyper=warn,reqwest=warn";
const DEBUG_DAEMON: &str = "info,sqlx=warn,hyper=warn,reqwest=warn,hubee_sync::daemon=debug";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_large_download_publishes_nothing_and_next_start_delivers_once() {
    let w = World::new().await;
    // 8 MiB served in 64 KiB chunks 40 ms apart: about 5 s if it were left to finish.
    let case = w.add_case(1, 1, 8 * 1024 * 1024);
    w.hub.inject(
        Route::GetAttachment,
        Fault::SlowBody { chunk_delay_ms: 40 },
        1,
    );
    let mut d = Daemon::start(&w.config_path(), w.dir.path().join("run1.log"), INFO);
    eventually(Duration::from_secs(15), "the download starts", &d, || {
        w.hub.request_count(Route::GetAttachment) >= 1 && !w.entries("tmp").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // well into the body
    d.signal(libc::SIGTERM);
    let (code, took) = d.wait(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert_eq!(code, 0, "a stop exits 0; log:\n{log}");
    assert!(
        took < Duration::from_secs(3),
        "the download was abandoned, not waited for ({took:?}); log:\n{log}"
    );
    assert!(
        w.entries("new").is_empty(),
        "nothing published; log:\n{log}"
    );
    assert_eq!(
        w.hub.notifications(CLIENT).len(),
        1,
        "the notification is still on the hub"
    );
    assert!(w.receipt_events(&case).is_empty(), "no receipt event");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));
    assert!(log.contains("stop requested"), "{log}");

    // The next start delivers it, once.
    let mut d = Daemon::start(&w.config_path(), w.dir.path().join("run2.log"), INFO);
    eventually(Duration::from_secs(30), "the case is delivered", &d, || {
        w.hub.notifications(CLIENT).is_empty()
    })
    .await;
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait(Duration::from_secs(15)).await;
    assert_eq!(code, 0, "{}", d.log_text());
    let entries = w.entries("new");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(sha256sum_check(&w.spool().join("new").join(&entries[0])));
    assert_eq!(w.receipt_events(&case).len(), 1, "one receipt event");
    assert!(
        w.entries("tmp").is_empty(),
        "the abandoned download was cleaned up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_drains_and_exits_zero() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 4 * 1024 * 1024);
    w.hub.inject(
        Route::GetAttachment,
        Fault::SlowBody { chunk_delay_ms: 40 },
        1,
    );
    let mut d = Daemon::start(&w.config_path(), w.dir.path().join("run.log"), INFO);
    eventually(Duration::from_secs(15), "the download starts", &d, || {
        w.hub.request_count(Route::GetAttachment) >= 1
    })
    .await;
    d.signal(libc::SIGINT);
    let (code, took) = d.wait(Duration::from_secs(15)).await;
    assert_eq!(code, 0, "{}", d.log_text());
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(w.entries("new").is_empty());
    assert_eq!(w.hub.notifications(CLIENT).len(), 1);
    assert!(w.receipt_events(&case).is_empty());
}

/// A config with two subscriptions polling every second, each with its own client.
fn two_subscriptions(w: &World) -> PathBuf {
    w.hub.add_client("etatcivil-client", SECRET, "EtatCivil");
    let d = w.dir.path().display();
    let toml = format!(
        r#"[hub]
api_url = "{api}"
token_url = "{token}"
editor_name = "Commune de Saint-Étienne"
retry_attempts = 3
retry_base_delay = "10ms"
retry_max_delay = "100ms"
timeout = "5s"

[state]
url = "sqlite://{d}/state.db"

[[subscription]]
name = "certdc"
process_code = "CERTDC"
client_id = "{CLIENT}"
client_secret_file = "{d}/secret"
schedule = "every 1s"
spool = "{d}/spool/certdc"

[[subscription]]
name = "etatcivil"
process_code = "EtatCivil"
client_id = "etatcivil-client"
client_secret_file = "{d}/secret"
schedule = "every 1s"
spool = "{d}/spool/etatcivil"
"#,
        api = w.hub.api_url(),
        token = w.hub.token_url(),
    );
    let path = w.dir.path().join("two.toml");
    write_mode(&path, &toml, 0o640);
    path
}

fn add_case_for(w: &World, client: &str, process: &str, n: usize, size: u64) -> String {
    w.hub.add_case(
        client,
        CaseSpec {
            process_code: process.into(),
            external_id: Some(format!("DGS-{process}-{n:013}-01")),
            attachments: vec![AttachmentSpec::new(
                &format!("piece-{n}.pdf"),
                "Piece",
                "application/pdf",
                Content::Generated {
                    size,
                    seed: n as u64,
                },
            )],
            applicant: None,
        },
    )
}

/// `(starting, done)` markers of one subscription's cycles, in log order.
fn cycle_markers(log: &str, sub: &str) -> Vec<&'static str> {
    let tag = format!("subscription={sub} ");
    log.lines()
        .filter(|l| l.contains(&tag) || l.ends_with(&format!("subscription={sub}")))
        .filter_map(|l| {
            if l.contains("cycle starting") {
                Some("start")
            } else if l.contains("cycle done")
                || l.contains("cycle stopped early")
                || l.contains("cycle interrupted")
            {
                Some("end")
            } else {
                None
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_polls_each_subscription_on_its_schedule() {
    let w = World::new().await;
    let config = two_subscriptions(&w);
    let mut d = Daemon::start(&config, w.dir.path().join("run.log"), DEBUG_DAEMON);
    let spool = |sub: &str| w.dir.path().join("spool").join(sub).join("new");

    // Both catch up at start, then keep polling.
    eventually(
        Duration::from_secs(15),
        "both subscriptions poll",
        &d,
        || w.hub.request_count(Route::ListNotifications) >= 4,
    )
    .await;

    // Cases that arrive while it runs are delivered at the next tick, to their own spool.
    let a = add_case_for(&w, CLIENT, "CERTDC", 1, 10_000);
    let b = add_case_for(&w, "etatcivil-client", "EtatCivil", 2, 10_000);
    eventually(
        Duration::from_secs(15),
        "both new cases delivered",
        &d,
        || {
            dir_entries(&spool("certdc")).len() == 1
                && dir_entries(&spool("etatcivil")).len() == 1
                && w.hub.notifications(CLIENT).is_empty()
                && w.hub.notifications("etatcivil-client").is_empty()
        },
    )
    .await;
    assert_eq!(w.receipt_events(&a).len(), 1);
    assert_eq!(w.receipt_events(&b).len(), 1);

    // A slow cycle (one file sent in four pieces 800 ms apart) is not started again while it
    // runs, and does not hold the other subscription back.
    w.hub.inject(
        Route::GetAttachment,
        Fault::SlowBody {
            chunk_delay_ms: 800,
        },
        1,
    );
    let c = add_case_for(&w, CLIENT, "CERTDC", 3, 200_000);
    eventually(
        Duration::from_secs(15),
        "the slow download starts",
        &d,
        || w.hub.request_count(Route::GetAttachment) >= 3,
    )
    .await;
    let polls_before = w.hub.request_count(Route::ListNotifications);
    eventually(
        Duration::from_secs(20),
        "the slow case is delivered",
        &d,
        || dir_entries(&spool("certdc")).len() == 2 && w.hub.notifications(CLIENT).is_empty(),
    )
    .await;
    let polls_during = w.hub.request_count(Route::ListNotifications) - polls_before;
    assert_eq!(w.receipt_events(&c).len(), 1);

    d.signal(libc::SIGTERM);
    let (code, _) = d.wait(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert_eq!(code, 0, "{log}");
    assert!(
        polls_during >= 2,
        "etatcivil kept polling during certdc's slow cycle ({polls_during} polls); log:\n{log}"
    );
    for sub in ["certdc", "etatcivil"] {
        let markers = cycle_markers(&log, sub);
        assert!(markers.len() >= 6, "{sub}: {markers:?}\n{log}");
        for pair in markers.chunks(2) {
            assert_eq!(
                pair[0], "start",
                "{sub}: a cycle ended that had not started: {markers:?}"
            );
            if let Some(second) = pair.get(1) {
                assert_eq!(
                    *second, "end",
                    "{sub}: a cycle started while the previous one ran: {markers:?}\n{log}"
                );
            }
        }
    }
    assert!(
        !log.contains("is being worked by another process"),
        "no cycle ever met its own lock: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_1_when_the_state_database_cannot_be_opened() {
    let w = World::new().await;
    let text = std::fs::read_to_string(w.config_path()).expect("read config");
    let d = w.dir.path().display().to_string();
    let text = text.replace(
        &format!("sqlite://{d}/state.db"),
        "sqlite:///proc/hubee-sync-nowhere/state.db",
    );
    write_mode(&w.config_path(), &text, 0o640);
    let (code, _, err) = w.run(&["run"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("state database"), "{err}");
    assert!(w.hub.requests().is_empty(), "nothing was asked of the hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_bad_config_exits_78() {
    let w = World::new().await;
    w.write_config("max_parallel_subscriptions = 0");
    let (code, _, err) = w.run(&["run"]).await;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("hub.max_parallel_subscriptions"), "{err}");
}
