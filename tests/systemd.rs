//! Running under systemd: journald fields, readiness, STATUS, watchdog, SIGHUP reload —
//! each over the real protocol on a real Unix datagram socket.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::daemon::{dir_entries, eventually, Daemon};
use common::{World, CLIENT, SECRET};

const INFO: &str = "info,sqlx=warn,hyper=warn,reqwest=warn";

/// A notify (or journal) socket in the test's directory.
fn socket(w: &World, name: &str) -> (UnixDatagram, String) {
    let path = w.dir.path().join(name);
    let s = UnixDatagram::bind(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (s, path.display().to_string())
}

/// Every datagram received until `bound`, with when it came.
fn collect(s: &UnixDatagram, bound: Duration) -> Vec<(Duration, String)> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while start.elapsed() < bound {
        if let Ok(n) = s.recv(&mut buf) {
            out.push((
                start.elapsed(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    out
}

fn fast_schedule(w: &World) {
    let cfg = std::fs::read_to_string(w.config_path()).unwrap();
    common::write_mode(
        &w.config_path(),
        &cfg.replace("every 5m", "every 1s"),
        0o640,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_records_carry_the_subscription_case_and_message_id_fields() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new().await;
    let case = w.add_case(1, 1, 100);
    let (journal, journal_path) = socket(&w, "journal.sock");
    // stderr is a file whose device and inode JOURNAL_STREAM names, as systemd does.
    let err_path = w.dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).unwrap();
    let meta = err.metadata().unwrap();
    let out = std::process::Command::new(common::bin())
        .arg("--config")
        .arg(w.config_path())
        .arg("once")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("HUBEE_SYNC_JOURNAL_SOCKET", &journal_path)
        .stderr(err)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&err_path).unwrap()
    );
    let records = collect(&journal, Duration::from_millis(300));
    let published = records
        .iter()
        .map(|(_, r)| r)
        .find(|r| {
            r.contains(&format!(
                "MESSAGE_ID={}\n",
                hubee_sync::events::id::PUBLISHED
            ))
        })
        .unwrap_or_else(|| panic!("no PUBLISHED record in {records:?}"));
    for field in [
        "SUBSCRIPTION=certdc\n".to_string(),
        format!("CASE_ID={case}\n"),
        "EXTERNAL_ID=DGS-CERTDC-0000000000001-01\n".to_string(),
        "SYSLOG_IDENTIFIER=hubee-sync\n".to_string(),
        "PRIORITY=6\n".to_string(),
    ] {
        assert!(
            published.contains(&field),
            "{field:?} missing in {published}"
        );
    }
    let acked = records
        .iter()
        .map(|(_, r)| r)
        .find(|r| {
            r.contains(&format!(
                "MESSAGE_ID={}\n",
                hubee_sync::events::id::ACKNOWLEDGED
            ))
        })
        .expect("an ACKNOWLEDGED record");
    assert!(acked.contains("NOTIFICATION_ID="), "{acked}");
    assert!(
        !records
            .iter()
            .any(|(_, r)| r.contains("\nF_") || r.starts_with("F_")),
        "no F_ prefix"
    );
    assert!(!records.iter().any(|(_, r)| r.contains(SECRET)));
    // Nothing went to stderr as text: the journal has it.
    assert!(!std::fs::read_to_string(&err_path)
        .unwrap()
        .contains("published in the spool"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_comes_after_the_start_up_checks_then_status_after_each_cycle() {
    let w = World::new().await;
    w.add_case(1, 1, 100);
    let (notify, path) = socket(&w, "notify.sock");
    let mut d = Daemon::start_with(
        &w.config_path(),
        w.dir.path().join("run.log"),
        INFO,
        &[("NOTIFY_SOCKET", &path)],
    );
    let msgs = collect(&notify, Duration::from_secs(3));
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait(Duration::from_secs(15)).await;
    assert_eq!(code, 0, "{}", d.log_text());
    let texts: Vec<&str> = msgs.iter().map(|(_, m)| m.as_str()).collect();
    assert!(
        texts[0].starts_with("READY=1\nSTATUS=1 abonnement, dernier passage aucun"),
        "{texts:?}"
    );
    assert!(
        w.dir.path().join("state.db").exists(),
        "the state database was opened before READY"
    );
    assert!(
        texts
            .iter()
            .any(|m| m.starts_with("STATUS=1 abonnement, dernier passage ")
                && m.ends_with(", 1 reçu, 0 en erreur")),
        "{texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_when_the_state_database_cannot_be_opened() {
    let w = World::new().await;
    let cfg = std::fs::read_to_string(w.config_path()).unwrap();
    let blocker = w.dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let bad = cfg.replace(
        &format!("sqlite://{}/state.db", w.dir.path().display()),
        &format!("sqlite://{}/state.db", blocker.display()),
    );
    common::write_mode(&w.config_path(), &bad, 0o640);
    let (notify, path) = socket(&w, "notify.sock");
    let mut d = Daemon::start_with(
        &w.config_path(),
        w.dir.path().join("run.log"),
        INFO,
        &[("NOTIFY_SOCKET", &path)],
    );
    let (code, _) = d.wait(Duration::from_secs(15)).await;
    assert_eq!(code, 1, "{}", d.log_text());
    let msgs = collect(&notify, Duration::from_millis(300));
    assert!(!msgs.iter().any(|(_, m)| m.contains("READY=1")), "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_when_the_loop_is_stuck() {
    let w = World::new().await;
    let (notify, path) = socket(&w, "notify.sock");
    let mut d = Daemon::start_with(
        &w.config_path(),
        w.dir.path().join("run.log"),
        INFO,
        &[
            ("NOTIFY_SOCKET", &path),
            ("WATCHDOG_USEC", "200000"),
            ("HUBEE_SYNC_TEST_STALL_AFTER", "1.0"),
        ],
    );
    let msgs = collect(&notify, Duration::from_millis(2500));
    d.signal(libc::SIGKILL);
    let _ = d.wait(Duration::from_secs(5)).await;
    let pings: Vec<Duration> = msgs
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    let early = pings
        .iter()
        .filter(|t| **t < Duration::from_millis(900))
        .count();
    let late = pings
        .iter()
        .filter(|t| **t > Duration::from_millis(1500))
        .count();
    assert!(
        early >= 4,
        "pings every 100 ms while the loop turns: {pings:?}"
    );
    assert_eq!(late, 0, "no ping once the loop is stuck: {pings:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_picks_up_a_regenerated_secret_without_a_restart() {
    let w = World::new().await;
    fast_schedule(&w);
    common::write_mode(&w.dir.path().join("secret"), "old-secret\n", 0o600);
    let (notify, path) = socket(&w, "notify.sock");
    let mut d = Daemon::start_with(
        &w.config_path(),
        w.dir.path().join("run.log"),
        INFO,
        &[("NOTIFY_SOCKET", &path)],
    );
    eventually(
        Duration::from_secs(10),
        "the refused secret is logged",
        &d,
        || d.log_text().contains("refused client_id"),
    )
    .await;
    let case = w.add_case(1, 1, 100);
    // The agent regenerates the secret in the portal and updates the file, then reloads.
    common::write_mode(&w.dir.path().join("secret"), &format!("{SECRET}\n"), 0o600);
    d.signal(libc::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the case is delivered after the reload",
        &d,
        || w.receipt_events(&case).len() == 1,
    )
    .await;
    let msgs = collect(&notify, Duration::from_millis(200));
    assert!(
        msgs.iter().any(|(_, m)| m.starts_with("READY=1")),
        "ready after the reload: {msgs:?}"
    );
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait(Duration::from_secs(15)).await;
    assert_eq!(code, 0);
    assert!(
        d.log_text().contains("configuration reloaded"),
        "{}",
        d.log_text()
    );
    assert_eq!(dir_entries(&w.spool().join("new")).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_broken_config_and_keeps_running() {
    let w = World::new().await;
    fast_schedule(&w);
    let (notify, path) = socket(&w, "notify.sock");
    let mut d = Daemon::start_with(
        &w.config_path(),
        w.dir.path().join("run.log"),
        INFO,
        &[("NOTIFY_SOCKET", &path)],
    );
    eventually(Duration::from_secs(10), "a first cycle", &d, || {
        d.log_text().contains("cycle done")
    })
    .await;
    let good = std::fs::read_to_string(w.config_path()).unwrap();
    common::write_mode(
        &w.config_path(),
        &good.replace("[state]", "[state\nbroken = "),
        0o640,
    );
    d.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), "the reload is refused", &d, || {
        d.log_text().contains("reload refused")
    })
    .await;
    let msgs = collect(&notify, Duration::from_millis(500));
    assert!(
        msgs.iter().any(|(_, m)| m.starts_with("RELOADING=1")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|(_, m)| m.starts_with("READY=1")),
        "ready again with the old config: {msgs:?}"
    );
    // Still working with the old configuration.
    let case = w.add_case(2, 1, 100);
    eventually(
        Duration::from_secs(10),
        "a case is still delivered",
        &d,
        || w.receipt_events(&case).len() == 1,
    )
    .await;
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait(Duration::from_secs(15)).await;
    assert_eq!(code, 0, "{}", d.log_text());
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_subscriptions() {
    let w = World::new().await;
    fast_schedule(&w);
    w.hub
        .add_client("etatcivil-client", "etatcivil-secret", "EtatCivil");
    common::write_mode(
        &w.dir.path().join("etatcivil.secret"),
        "etatcivil-secret\n",
        0o600,
    );
    let mut d = Daemon::start(&w.config_path(), w.dir.path().join("run.log"), INFO);
    eventually(Duration::from_secs(10), "a first cycle", &d, || {
        d.log_text().contains("cycle done")
    })
    .await;
    let one = std::fs::read_to_string(w.config_path()).unwrap();
    let d2 = w.dir.path().display();
    let etatcivil = format!(
        "\n[[subscription]]\nname = \"etatcivil\"\nprocess_code = \"EtatCivil\"\nclient_id = \"etatcivil-client\"\nclient_secret_file = \"{d2}/etatcivil.secret\"\nschedule = \"every 1s\"\nspool = \"{d2}/spool/etatcivil\"\n"
    );
    common::write_mode(&w.config_path(), &format!("{one}{etatcivil}"), 0o640);
    d.signal(libc::SIGHUP);
    let mut spec = fake_hubee::CaseSpec::new("EtatCivil");
    spec.external_id = Some("DILA-AEC-1".into());
    let case = w.hub.add_case("etatcivil-client", spec);
    eventually(
        Duration::from_secs(10),
        "the added subscription delivers",
        &d,
        || w.receipt_events(&case).len() == 1,
    )
    .await;
    // Remove certdc: its cases are no longer polled.
    let only_etatcivil = format!(
        "{}{etatcivil}",
        one.split("[[subscription]]").next().unwrap()
    );
    common::write_mode(&w.config_path(), &only_etatcivil, 0o640);
    d.signal(libc::SIGHUP);
    eventually(Duration::from_secs(10), "the second reload", &d, || {
        d.log_text().matches("configuration reloaded").count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let certdc_case = w.add_case(9, 0, 0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        w.receipt_events(&certdc_case).is_empty(),
        "a removed subscription is not polled"
    );
    d.signal(libc::SIGTERM);
    let (code, _) = d.wait(Duration::from_secs(15)).await;
    assert_eq!(code, 0, "{}", d.log_text());
}
