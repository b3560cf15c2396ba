//! `hubee-sync run` and the outbox: a reply that lands in `outbox/new/` between two cycles is
//! sent at once (inotify), not at the next cycle five minutes later.

mod common;

use std::time::Duration;

use common::daemon::{eventually, Daemon};
use common::World;
use serde_json::json;

const INFO: &str = "info,sqlx=warn,hyper=warn,reqwest=warn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sends_a_reply_as_soon_as_it_lands_in_outbox_new() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 2_000);
    let mut d = Daemon::start(&w.config_path(), w.dir.path().join("run.log"), INFO);
    eventually(Duration::from_secs(20), "the case is received", &d, || {
        w.hub.case_status(&case).as_deref() == Some("IN_PROGRESS") && !w.entries("new").is_empty()
    })
    .await;
    // Let the first cycle (and its outbox pass) end: the reply comes between cycles.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let tmp = w.spool().join("outbox/tmp/done-1");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::write(tmp.join("acte.pdf"), b"%PDF-1.4\nacte de deces\n").unwrap();
    std::fs::write(
        tmp.join("reply.json"),
        json!({"case_id": case, "status": "DONE",
               "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]})
        .to_string(),
    )
    .unwrap();
    std::fs::rename(&tmp, w.spool().join("outbox/new/done-1")).unwrap();

    // The schedule is every 5 minutes and the rescan every 60 s: only the watcher is this fast.
    eventually(Duration::from_secs(15), "the reply is sent", &d, || {
        w.entries("outbox/sent") == vec!["done-1".to_string()]
    })
    .await;
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("DONE"));
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait(Duration::from_secs(15)).await;
    let log = d.log_text();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("outbox: reply sent to the hub"), "{log}");
}
