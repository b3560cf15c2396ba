//! Local faults (issue 9 §3): the spool on a full filesystem, a read-only spool, a state
//! database that is locked or corrupt, a missing secret file. Each must give a clear error
//! (what, where, what to do), exit 1, acknowledge nothing (the notification stays, no receipt
//! event, nothing in `new/`), and recover once the fault is fixed — with the case delivered
//! exactly once.
//!
//! The filesystem faults need `mount` (root in CI's container): a tmpfs of 1 MiB for the full
//! disk, a read-only bind mount for the read-only spool. Where mounting is not permitted the
//! test says so and skips (RELIABILITY.md).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::{dir_entries, Daemon};
use common::{check_new, World, CLIENT};
use fake_hubee::{Content, Route};

/// A mount made by a test; unmounted when dropped, also when the test fails.
struct Mount {
    dir: PathBuf,
}

fn mount(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Mount {
    /// A tmpfs of `size` (e.g. "1m") on `dir`.
    fn tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let d = dir.to_str().expect("utf-8 path");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            d,
        ])?;
        Ok(Mount {
            dir: dir.to_path_buf(),
        })
    }

    /// `dir` bind-mounted on itself, read-only.
    fn read_only(dir: &Path) -> Result<Mount, String> {
        let d = dir.to_str().expect("utf-8 path");
        mount(&["--bind", d, d])?;
        let m = Mount {
            dir: dir.to_path_buf(),
        };
        mount(&["-o", "remount,bind,ro", d])?;
        Ok(m)
    }

    fn remount(&self, opts: &str) {
        let d = self.dir.to_str().expect("utf-8 path");
        mount(&["-o", &format!("remount,{opts}"), d]).expect("remount");
    }

    fn unmount(self) {
        // Drop does it.
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// The fault has not been acknowledged: the notification is still on the hub, no receipt
/// event, no entry for the case in `new/`.
fn assert_not_acknowledged(w: &World, case: &str, what: &str) {
    assert!(
        w.receipt_events(case).is_empty(),
        "{what}: no receipt event for {case}"
    );
    assert_eq!(
        w.hub.case_status(case).as_deref(),
        Some("HUBEE_NOTIFIED"),
        "{what}: the case was not moved on the hub"
    );
    assert!(
        w.hub
            .notifications(CLIENT)
            .iter()
            .any(|n| n["caseId"] == case),
        "{what}: the notification of {case} stays on the hub"
    );
    let published = check_new(&w.spool()).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        published.iter().all(|(_, m)| m["case_id"] != case),
        "{what}: {case} is not in new/"
    );
}

/// Delivered exactly once, verified, acknowledged once; nothing left anywhere.
fn assert_delivered_once(w: &World, cases: &[&str], what: &str) {
    let published = check_new(&w.spool()).unwrap_or_else(|e| panic!("{what}: {e}"));
    for case in cases {
        assert_eq!(
            published
                .iter()
                .filter(|(_, m)| m["case_id"] == *case)
                .count(),
            1,
            "{what}: {case} exactly once in new/"
        );
        assert_eq!(
            w.receipt_events(case).len(),
            1,
            "{what}: one receipt for {case}"
        );
    }
    assert!(
        w.hub.notifications(CLIENT).is_empty(),
        "{what}: notifications left"
    );
    assert!(w.entries("tmp").is_empty(), "{what}: tmp/ empty");
}

fn one_file(n: u64, size: u64) -> Vec<(String, Content)> {
    vec![(
        format!("acte-{n}.pdf"),
        Content::Generated { size, seed: n },
    )]
}

/// Prints the operator's view of a failed run for RELIABILITY.md, and returns it.
fn shown(what: &str, out: &str, err: &str) -> String {
    let all = format!("{out}\n{err}");
    // hubee-sync's own words, not the libraries' (sqlx logs its pool's retries itself).
    let lines: Vec<&str> = all
        .lines()
        .filter(|l| !l.contains("sqlx_core"))
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error")
                || l.contains("fail")
                || l.contains("cannot")
                || l.contains("échec")
                || l.contains("invalid")
        })
        .take(3)
        .collect();
    println!("{what}: {}", lines.join(" | "));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_on_a_full_filesystem_fails_clearly_acknowledges_nothing_and_recovers() {
    let w = World::new().await;
    let fs = match Mount::tmpfs(&w.dir.path().join("spool"), "1m") {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED full filesystem: cannot mount a tmpfs here ({why})");
            return;
        }
    };
    let small = w.add_files_case("DGS-CERTDC-SMALL-01", &one_file(1, 2_000));
    let big = w.add_files_case("DGS-CERTDC-BIG-01", &one_file(2, 3 * 1024 * 1024));

    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "a full disk is a failure to retry: {out}{err}");
    let all = shown("full filesystem", &out, &err);
    assert!(all.contains(&big), "the error names the case: {all}");
    assert!(
        all.contains("free space") && all.contains(&w.spool().display().to_string()),
        "the error says where and what to do: {all}"
    );
    assert!(!all.contains("panicked"), "{all}");
    assert_not_acknowledged(&w, &big, "full filesystem");
    // One case that does not fit does not block one that does.
    assert_eq!(
        w.receipt_events(&small).len(),
        1,
        "the small case went through"
    );
    assert!(
        w.entries("tmp").is_empty(),
        "the partial download was removed from tmp/: {:?}",
        w.entries("tmp")
    );

    // Fixed: the filesystem grows. The next run delivers the big case, once.
    fs.remount("size=16m");
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_delivered_once(&w, &[&small, &big], "after growing the filesystem");
    fs.unmount();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_spool_fails_clearly_acknowledges_nothing_and_recovers() {
    let w = World::new().await;
    let first = w.add_files_case("DGS-CERTDC-FIRST-01", &one_file(1, 5_000));
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let ro = match Mount::read_only(&w.spool()) {
        Ok(m) => m,
        Err(why) => {
            println!("SKIPPED read-only spool: cannot bind-mount read-only here ({why})");
            return;
        }
    };
    let case = w.add_files_case("DGS-CERTDC-RO-01", &one_file(2, 5_000));
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let all = shown("read-only spool", &out, &err);
    assert!(
        all.contains("read-only") && all.contains(&w.spool().display().to_string()),
        "the error says where and what to do: {all}"
    );
    assert!(!all.contains("panicked"), "{all}");
    assert_not_acknowledged(&w, &case, "read-only spool");

    ro.unmount();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_delivered_once(&w, &[&first, &case], "after remounting read-write");
}

async fn sqlite_conn(w: &World) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let url = format!("sqlite://{}", w.dir.path().join("state.db").display());
    sqlx::SqliteConnection::connect(&url)
        .await
        .expect("open state.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_state_database_fails_clearly_acknowledges_nothing_and_recovers() {
    use sqlx::Executor;
    let w = World::new().await;
    let first = w.add_files_case("DGS-CERTDC-FIRST-01", &one_file(1, 5_000));
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");

    // Another process holds the write lock for the whole run (a backup tool, an operator's
    // sqlite3 shell left open in a transaction).
    let mut holder = sqlite_conn(&w).await;
    holder.execute("BEGIN EXCLUSIVE").await.expect("lock");
    holder
        .execute("CREATE TABLE IF NOT EXISTS held_by_test (x INTEGER)")
        .await
        .expect("write under the lock");
    let case = w.add_files_case("DGS-CERTDC-LOCK-01", &one_file(2, 5_000));
    let started = Instant::now();
    let (code, out, err) = w.run(&["once"]).await;
    let waited = started.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    let all = shown("locked state database", &out, &err);
    assert!(
        all.contains("locked") && all.contains("state.db"),
        "the error names the state database and the lock: {all}"
    );
    assert!(!all.contains("panicked"), "{all}");
    assert_not_acknowledged(&w, &case, "locked state database");
    println!("locked state database: gave up after {waited:.1?}");

    holder.execute("ROLLBACK").await.expect("unlock");
    drop(holder);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_delivered_once(&w, &[&first, &case], "after the lock was released");
}

fn state_files(dir: &Path) -> Vec<PathBuf> {
    dir_entries(dir)
        .into_iter()
        .filter(|n| n.starts_with("state.db"))
        .map(|n| dir.join(n))
        .collect()
}

/// Overwrites the SQLite header (its first 100 bytes): SQLite no longer knows the file.
/// The WAL is checkpointed into the file first, so that no copy of the header survives there.
async fn corrupt_header(w: &World) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlite_conn(w).await;
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .expect("checkpoint");
    conn.close().await.expect("close");
    let db = w.dir.path().join("state.db");
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&[0x5a; 100]).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_database_fails_clearly_acknowledges_nothing_and_recovers() {
    let w = World::new().await;
    let first = w.add_files_case("DGS-CERTDC-FIRST-01", &one_file(1, 5_000));
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");

    // The operator's backup, taken while nothing runs.
    let backup = w.dir.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    for f in state_files(w.dir.path()) {
        std::fs::copy(&f, backup.join(f.file_name().unwrap())).unwrap();
    }
    corrupt_header(&w).await;
    let reads_before = w.hub.request_count(Route::GetCase);
    let case = w.add_files_case("DGS-CERTDC-CORRUPT-01", &one_file(2, 5_000));
    // `run` refuses to start on it (exit 1) rather than working without a record; started
    // beside `once` because each takes the pool's 30 s acquire timeout to give up.
    let mut d = Daemon::start(&w.config_path(), w.dir.path().join("run.log"), "info");
    let started = Instant::now();
    let (code, out, err) = w.run(&["once"]).await;
    let once_took = started.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    let all = shown("corrupt state database (once)", &out, &err);
    println!("corrupt state database: once gave up after {once_took:.1?}");
    assert!(
        all.contains("state.db"),
        "the error names the state database: {all}"
    );
    assert!(!all.contains("panicked"), "{all}");
    assert_not_acknowledged(&w, &case, "corrupt state database");
    assert_eq!(
        w.hub.request_count(Route::GetCase),
        reads_before,
        "nothing fetched without a state database"
    );

    let (code, _) = d.wait(Duration::from_secs(45)).await;
    assert_eq!(code, 1, "run exits 1:\n{}", d.log_text());
    let log = shown("corrupt state database (run)", "", &d.log_text());
    assert!(
        log.contains("state.db"),
        "run names the state database: {log}"
    );
    println!(
        "corrupt state database: run exited 1 after {:.1?}",
        started.elapsed()
    );
    assert_not_acknowledged(&w, &case, "corrupt state database, run");

    // Fixed: the backup is restored.
    for f in state_files(w.dir.path()) {
        std::fs::remove_file(f).unwrap();
    }
    for f in state_files(&backup) {
        std::fs::copy(&f, w.dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_delivered_once(&w, &[&first, &case], "after restoring the backup");
}

/// CONTRACT: "Every error a person sees says what happened, to what, and what to do next."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_state_database_is_reported_as_corrupt_at_once() {
    let w = World::new().await;
    w.add_files_case("DGS-CERTDC-FIRST-01", &one_file(1, 5_000));
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    corrupt_header(&w).await;
    let case = w.add_files_case("DGS-CERTDC-CORRUPT-01", &one_file(2, 5_000));
    let started = Instant::now();
    let (code, out, err) = w.run(&["once"]).await;
    let took = started.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    let own: String = format!("{out}\n{err}")
        .lines()
        .filter(|l| !l.contains("sqlx_core"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        own.contains("not a database") || own.contains("corrupt"),
        "hubee-sync's own message says the file is not a usable database: {own}"
    );
    assert!(
        own.contains("backup") || own.contains("move it aside"),
        "and what to do about it: {own}"
    );
    assert!(
        took < Duration::from_secs(10),
        "a corrupt file is not a transient fault: {took:?}"
    );
    assert_not_acknowledged(&w, &case, "corrupt state database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_file_fails_clearly_acknowledges_nothing_and_recovers() {
    let w = World::new().await;
    let secret = w.dir.path().join("secret");
    let saved = std::fs::read_to_string(&secret).unwrap();
    std::fs::remove_file(&secret).unwrap();
    let case = w.add_files_case("DGS-CERTDC-SECRET-01", &one_file(1, 5_000));

    let (code, out, err) = w.run(&["once"]).await;
    // `once` checks the configuration first: a secret file it names that does not exist
    // is a configuration error (CONTRACT: 78), reported with the others.
    assert_eq!(code, 78, "{out}{err}");
    let all = shown("missing secret file (once)", &out, &err);
    assert!(
        all.contains(&secret.display().to_string())
            && all.contains("client_secret_file")
            && all.contains("create it"),
        "the error names the file, the key and what to do: {all}"
    );
    assert!(!all.contains(common::SECRET), "no secret in messages");
    assert_eq!(w.hub.requests().len(), 0, "nothing asked of the hub");
    assert_not_acknowledged(&w, &case, "missing secret");

    common::write_mode(&secret, &saved, 0o600);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_delivered_once(&w, &[&case], "after restoring the secret");
}
