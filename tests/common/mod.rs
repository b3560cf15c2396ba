//! Shared test helpers: throwaway PostgreSQL databases, temporary configs, the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

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

    /// Writes the config; `extra_hub` adds lines to [hub].
    pub fn write_config(&self, extra_hub: &str) {
        self.write_config_with(extra_hub, "");
    }

    /// Writes the config; `extra_hub` adds lines to [hub], `extra_sub` to the subscription.
    pub fn write_config_with(&self, extra_hub: &str, extra_sub: &str) {
        let d = self.dir.path().display();
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
