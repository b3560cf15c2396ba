//! Shared test helpers: throwaway PostgreSQL databases, temporary configs, the binary.
#![allow(dead_code)]

pub mod campaign;
pub mod daemon;
pub mod netlab;
pub mod pki;

use std::path::{Path, PathBuf};

/// Takes the environment's proxy settings away from a hubee-sync command: each test says in
/// its configuration whether a proxy is used.
pub fn without_proxies(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The PostgreSQL server the tests use (scripts/test.sh starts one if needed).
pub fn pg_admin_url() -> String {
    std::env::var("HUBEE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database on the test server; dropped by [`PgDb::drop_now`].
pub struct PgDb {
    pub url: String,
    name: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        use sqlx::Connection;
        let admin = pg_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("cannot reach the test PostgreSQL at {admin}: {e}; run the tests with scripts/test.sh, which starts one")
        });
        let name = format!("hubee_test_{}_{}", std::process::id(), fastrand::u64(..));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let mut url = url::Url::parse(&admin).expect("admin url");
        url.set_path(&format!("/{name}"));
        PgDb {
            url: url.to_string(),
            name,
        }
    }

    pub async fn drop_now(self) {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn)
            .await;
        }
    }
}

/// The hubee-sync binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hubee-sync"))
}

/// Writes a file with a mode.
pub fn write_mode(path: &Path, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

use fake_hubee::{AttachmentSpec, CaseSpec, Content, FakeHub};

pub const CLIENT: &str = "certdc-client";
pub const SECRET: &str = "s3cr3t-value-never-logged";

/// A test world: a fake hub with one CERTDC client, and a directory with a config whose
/// spool and SQLite state live inside it.
pub struct World {
    pub hub: FakeHub,
    pub dir: tempfile::TempDir,
}

impl World {
    pub async fn new() -> World {
        let hub = FakeHub::start().await;
        // scripts/test.sh runs the receipt, event, outbox, crash and fault tests a second time
        // against the hub of the documents, where only PATCH moves a case (PROTOCOL §10.1).
        if std::env::var("HUBEE_TEST_HUB").as_deref() == Ok("patch-only") {
            hub.set_behaviour(fake_hubee::HubBehaviour::patch_only());
        }
        hub.add_client(CLIENT, SECRET, "CERTDC");
        let dir = tempfile::tempdir().expect("tempdir");
        let w = World { hub, dir };
        write_mode(&w.dir.path().join("secret"), &format!("{SECRET}\n"), 0o600);
        w.write_config("");
        w
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("hubee-sync.toml")
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool/certdc")
    }

    /// Writes the config; `extra_hub` adds lines to [hub], and replaces the default of a key
    /// it sets (`timeout`, `retry_attempts`, `retry_base_delay`, `retry_max_delay`).
    pub fn write_config(&self, extra_hub: &str) {
        self.write_config_with(extra_hub, "");
    }

    /// Writes the config; `extra_hub` adds lines to [hub], `extra_sub` to the subscription.
    pub fn write_config_with(&self, extra_hub: &str, extra_sub: &str) {
        let d = self.dir.path().display();
        let overridden: Vec<&str> = extra_hub
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
            .collect();
        let toml = format!(
            r#"[hub]
api_url = "{api}"
token_url = "{token}"
editor_name = "Commune de Saint-Étienne"
retry_attempts = 3
retry_base_delay = "10ms"
retry_max_delay = "100ms"
timeout = "5s"
{extra_hub}

[state]
url = "sqlite://{d}/state.db"

[[subscription]]
name = "certdc"
process_code = "CERTDC"
client_id = "{CLIENT}"
client_secret_file = "{d}/secret"
schedule = "every 5m"
spool = "{d}/spool/certdc"
{extra_sub}
"#,
            api = self.hub.api_url(),
            token = self.hub.token_url(),
        );
        let toml: String = toml
            .lines()
            .enumerate()
            .filter(|(i, l)| {
                // Default lines come before `extra_hub` in [hub]: drop those it overrides.
                let is_default = *i < 8;
                !(is_default
                    && l.split_once('=')
                        .is_some_and(|(k, _)| overridden.contains(&k.trim())))
            })
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        write_mode(&self.config_path(), &toml, 0o640);
    }

    /// Adds a case with `files` generated attachments of `size` bytes each.
    pub fn add_case(&self, n: usize, files: usize, size: u64) -> String {
        let attachments = (0..files)
            .map(|i| {
                AttachmentSpec::new(
                    &format!("certificat-{n}-{i}.pdf"),
                    "DD_Certificatdedeces",
                    "application/pdf",
                    Content::Generated {
                        size,
                        seed: (n * 100 + i) as u64,
                    },
                )
            })
            .collect();
        self.hub.add_case(
            CLIENT,
            CaseSpec {
                process_code: "CERTDC".into(),
                external_id: Some(format!("DGS-CERTDC-{n:013}-01")),
                attachments,
                applicant: None,
            },
        )
    }

    /// Runs `hubee-sync ARGS` with this world's config; returns (exit code, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("--config").arg(self.config_path()).args(args);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("join")
            .expect("run hubee-sync");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.spool().join(sub))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Our receipt events on a case (STATUS_UPDATE with our marker).
    pub fn receipt_events(&self, case_id: &str) -> Vec<serde_json::Value> {
        self.hub
            .events(case_id)
            .into_iter()
            .filter(|e| {
                e["actionType"] == "STATUS_UPDATE"
                    && e["comment"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("hubee-sync:receipt:"))
            })
            .collect()
    }
}

/// `sha256sum -c SHA256SUMS` inside an entry.
pub fn sha256sum_check(entry: &Path) -> bool {
    std::process::Command::new("sha256sum")
        .args(["--quiet", "--strict", "-c", "SHA256SUMS"])
        .current_dir(entry)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ------------------------------------------------------------------ spool invariants

/// Reads `manifest.json` of an entry.
pub fn read_manifest(entry: &Path) -> Result<serde_json::Value, String> {
    let raw = std::fs::read(entry.join("manifest.json"))
        .map_err(|e| format!("{}: no manifest.json: {e}", entry.display()))?;
    serde_json::from_slice(&raw)
        .map_err(|e| format!("{}: manifest.json is not JSON: {e}", entry.display()))
}

fn sha256_file_hex(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks that a published entry is complete and verified: `case.json` is JSON, the manifest
/// parses, `sha256sum -c SHA256SUMS` passes, every file the manifest lists is there with its
/// size and SHA-256, and `attachments/` holds nothing else. Returns the manifest.
pub fn check_entry(entry: &Path) -> Result<serde_json::Value, String> {
    let name = entry.display();
    let case_json =
        std::fs::read(entry.join("case.json")).map_err(|e| format!("{name}: no case.json: {e}"))?;
    serde_json::from_slice::<serde_json::Value>(&case_json)
        .map_err(|e| format!("{name}: case.json is not JSON: {e}"))?;
    let m = read_manifest(entry)?;
    if !entry.join("SHA256SUMS").is_file() {
        return Err(format!("{name}: no SHA256SUMS"));
    }
    if !sha256sum_check(entry) {
        return Err(format!("{name}: sha256sum -c SHA256SUMS fails"));
    }
    let atts = m["attachments"]
        .as_array()
        .ok_or_else(|| format!("{name}: manifest has no attachments list"))?;
    let mut listed = std::collections::BTreeSet::new();
    for a in atts {
        let Some(rel) = a["path"].as_str() else {
            continue;
        };
        let p = entry.join(rel);
        let meta = std::fs::metadata(&p).map_err(|e| format!("{name}: {rel} missing: {e}"))?;
        if Some(meta.len()) != a["size"].as_u64() {
            return Err(format!(
                "{name}: {rel} has {} bytes, the manifest says {}",
                meta.len(),
                a["size"]
            ));
        }
        let hex = sha256_file_hex(&p).map_err(|e| format!("{name}: {rel}: {e}"))?;
        if Some(hex.as_str()) != a["sha256"].as_str() {
            return Err(format!("{name}: {rel} SHA-256 differs from the manifest"));
        }
        listed.insert(p);
    }
    let on_disk: std::collections::BTreeSet<PathBuf> =
        match std::fs::read_dir(entry.join("attachments")) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(_) => Default::default(),
        };
    if on_disk != listed {
        return Err(format!(
            "{name}: attachments/ holds {on_disk:?}, the manifest lists {listed:?}"
        ));
    }
    Ok(m)
}

/// Checks every entry in `SPOOL/new/`; returns `(entry name, manifest)` for each.
pub fn check_new(spool: &Path) -> Result<Vec<(String, serde_json::Value)>, String> {
    check_entries_in(&spool.join("new"))
}

/// Checks every entry in `dir` (a spool's `new/` or `cur/`); returns `(entry name, manifest)`
/// for each.
pub fn check_entries_in(dir: &Path) -> Result<Vec<(String, serde_json::Value)>, String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in rd {
        let e = e.map_err(|e| e.to_string())?;
        let m = check_entry(&e.path())?;
        out.push((e.file_name().to_string_lossy().into_owned(), m));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every file or directory under `root` (symlinks not followed).
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A thread that polls `new/` while `once` runs and checks each entry the moment it appears
/// (entries are immutable once published, so each is checked once).
pub struct NewWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<WatchReport>,
}

#[derive(Debug, Default)]
pub struct WatchReport {
    /// Polls of the directory.
    pub polls: usize,
    /// Entries seen and checked.
    pub checked: usize,
    /// Entries that were incomplete or corrupt when seen.
    pub violations: Vec<String>,
}

impl NewWatcher {
    pub fn start(new_dir: PathBuf) -> NewWatcher {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut report = WatchReport::default();
            let mut seen = std::collections::HashSet::new();
            loop {
                // Read the flag first, so the last poll happens after the last run ended.
                let last = flag.load(Ordering::SeqCst);
                report.polls += 1;
                if let Ok(rd) = std::fs::read_dir(&new_dir) {
                    for e in rd.filter_map(|e| e.ok()) {
                        if seen.insert(e.file_name()) {
                            report.checked += 1;
                            if let Err(why) = check_entry(&e.path()) {
                                report.violations.push(why);
                            }
                        }
                    }
                }
                if last {
                    return report;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        NewWatcher { stop, handle }
    }

    pub fn stop(self) -> WatchReport {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().expect("watcher thread")
    }
}

impl World {
    /// Adds a case with these files (name, content) and external id.
    pub fn add_files_case(&self, external_id: &str, files: &[(String, Content)]) -> String {
        let mut spec = CaseSpec::new("CERTDC");
        spec.external_id = Some(external_id.to_string());
        spec.attachments = files
            .iter()
            .map(|(name, content)| {
                AttachmentSpec::new(
                    name,
                    "DD_Certificatdedeces",
                    "application/pdf",
                    content.clone(),
                )
            })
            .collect();
        self.hub.add_case(CLIENT, spec)
    }

    /// Files anywhere under the world's directory that are neither in the spool nor the
    /// world's own files (config, secret, state database and its journal, `locks/`).
    pub fn files_outside_spool(&self) -> Vec<PathBuf> {
        let root = self.dir.path();
        let spool_root = root.join("spool");
        // The state database's directory also holds the subscriptions' lock files.
        let locks = root.join("locks");
        walk(root)
            .into_iter()
            .filter(|p| !p.starts_with(&spool_root) && *p != spool_root)
            .filter(|p| p.parent() != Some(locks.as_path()))
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                !(p.parent() == Some(root)
                    && name.as_deref().is_some_and(|n| {
                        n == "hubee-sync.toml"
                            || n == "secret"
                            || n.starts_with("state.db")
                            || n == "locks"
                    }))
            })
            .collect()
    }
}

/// Checks every request the hub received against the official OpenAPI spec
/// (`docs/hubee/api_folder_v1.2.7.yaml`) with `scripts/check-hub-traffic.py` (Python's
/// jsonschema and PyYAML, which scripts/test.sh installs): `Err` with the violations.
pub fn traffic_violations(hub: &FakeHub) -> Result<usize, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let traffic: Vec<serde_json::Value> = hub
        .requests()
        .iter()
        .map(|r| {
            serde_json::json!({
                "method": r.method,
                "path": r.path,
                "query": r.query,
                "headers": r.headers,
                "body": r.body,
            })
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("traffic.json");
    std::fs::write(&file, serde_json::to_vec(&traffic).expect("traffic json")).expect("write");
    let out = std::process::Command::new("python3")
        .arg(root.join("scripts/check-hub-traffic.py"))
        .arg(root.join("docs/hubee/api_folder_v1.2.7.yaml"))
        .arg(&file)
        .output()
        .expect("python3 runs scripts/check-hub-traffic.py");
    if out.status.success() {
        Ok(traffic.len())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Every request the hub received follows the official OpenAPI spec (see
/// [`traffic_violations`]).
pub fn assert_traffic_follows_the_schema(hub: &FakeHub, what: &str) {
    match traffic_violations(hub) {
        Ok(n) => assert!(n > 0, "{what}: no traffic recorded, nothing was checked"),
        Err(v) => panic!("{what}: requests that break the official schema:\n{v}"),
    }
}

/// The two kinds of hub the evidence allows (PROTOCOL §10.1): fake-hubee's default (an
/// event's `caseNewStatus` moves the case, events checked strictly, a same-status PATCH
/// refused, downloads without `Content-Length`) and the hub of the documents (only PATCH moves
/// a case, events accepted, a same-status PATCH a no-op).
pub fn hubs() -> [(&'static str, fake_hubee::HubBehaviour); 2] {
    [
        (
            "events move the status",
            fake_hubee::HubBehaviour::default(),
        ),
        (
            "only PATCH moves the status",
            fake_hubee::HubBehaviour::patch_only(),
        ),
    ]
}

/// Our status events on a case that do not tell the truth: left from another status than
/// the case's real one, or announcing a move the case never made (by the event itself, or
/// by our PATCH after it). `agent_window`: on a hub that accepts any event, an agent's move
/// in the round trip between our read and our POST makes the event stale; those are
/// returned apart (the second list), told by the agent's move being the last change before
/// the event.
pub fn untruthful_status_events(
    hub: &FakeHub,
    case: &str,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let history = hub.status_history(case);
    let (mut wrong, mut raced) = (Vec::new(), Vec::new());
    for (ev, actual) in hub.si_event_audit(case) {
        let (Some(from), Some(to)) = (
            ev["caseCurrentStatus"].as_str(),
            ev["caseNewStatus"].as_str(),
        ) else {
            continue;
        };
        let made = from == to || history.iter().any(|h| h["from"] == from && h["to"] == to);
        if from == actual && made {
            continue;
        }
        // The last change to `actual` before the event was an agent's, from `from`.
        let by_agent = history
            .iter()
            .any(|h| h["by"] == "agent" && h["from"] == from && h["to"] == actual.as_str());
        if from != actual && by_agent {
            raced.push(ev);
        } else {
            wrong.push(
                serde_json::json!({"event": ev, "actual_at_post": actual, "history": history}),
            );
        }
    }
    (wrong, raced)
}

/// Every status event we posted on the case tells the truth (see
/// [`untruthful_status_events`]); none raced with an agent either.
pub fn assert_status_events_truthful(hub: &FakeHub, case: &str, what: &str) {
    let (wrong, raced) = untruthful_status_events(hub, case);
    assert!(
        wrong.is_empty(),
        "{what}: case {case}: untruthful status events: {wrong:#?}"
    );
    assert!(
        raced.is_empty(),
        "{what}: case {case}: stale status events: {raced:#?}"
    );
}

/// The case whose file the hub sent with an injected fault (the first such download), by id.
pub fn case_of_faulted_download(hub: &FakeHub) -> String {
    let requests = hub.requests();
    let faulted = requests
        .iter()
        .find(|r| r.route == Some(fake_hubee::Route::GetAttachment) && r.fault.is_some())
        .expect("a download was sent with the injected fault");
    faulted
        .path
        .split("/cases/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Where, in the hub's request log, the first event POSTed on `case_id` is (its receipt).
pub fn first_event_post(requests: &[fake_hubee::RequestRecord], case_id: &str) -> usize {
    let path = format!("/cases/{case_id}/events");
    requests
        .iter()
        .position(|r| r.route == Some(fake_hubee::Route::PostEvent) && r.path.ends_with(&path))
        .unwrap_or_else(|| panic!("case {case_id} got no event (its receipt)"))
}
