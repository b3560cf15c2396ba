//! Digests and alerts end to end: the real binary (`once`, `digest`, `digest --send`, `run`)
//! against the fake hub, sending to a real SMTP server on 127.0.0.1 (aiosmtpd, started by
//! each test through scripts/smtp-sink.py; it keeps every message decoded as JSON).
//! Every wait is bounded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, write_mode, World, CLIENT, SECRET};
use fake_hubee::{AttachmentSpec, CaseSpec, Content, Fault, Route};
use serde_json::Value;

// ------------------------------------------------------------------ the SMTP sink

/// scripts/smtp-sink.py running on a free port of 127.0.0.1.
struct Sink {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sink {
    fn start(args: &[&str]) -> Sink {
        let dir = tempfile::tempdir().expect("tempdir");
        let port_file = dir.path().join("port");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/smtp-sink.py");
        let child = Command::new("python3")
            .arg(&script)
            .arg("--dir")
            .arg(dir.path())
            .arg("--port-file")
            .arg(&port_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3 scripts/smtp-sink.py");
        let mut sink = Sink {
            child,
            port: 0,
            dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                sink.port = p.trim().parse().expect("port number");
                return sink;
            }
            if let Ok(Some(_)) = sink.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = sink.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!("the SMTP sink exited: {err}\n(is aiosmtpd installed? scripts/test.sh installs it: python3 -m pip install aiosmtpd)");
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the SMTP sink did not start within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every message received so far, oldest first.
    fn mails(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("json"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|p| {
                serde_json::from_slice(&std::fs::read(p).expect("read mail")).expect("mail JSON")
            })
            .collect()
    }

    /// Waits until at least `n` messages arrived (at most `bound`).
    async fn wait_for(&self, n: usize, bound: Duration, what: &str) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let m = self.mails();
            if m.len() >= n {
                return m;
            }
            assert!(
                start.elapsed() < bound,
                "{what}: {} message(s) after {bound:?}, expected {n}: {m:#?}",
                m.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn maildir_count(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("maildir/new"))
            .map(|rd| rd.count())
            .unwrap_or(0)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

// ------------------------------------------------------------------ configuration

/// One subscription of a test config.
struct Sub<'a> {
    name: &'a str,
    client: &'a str,
    process_code: &'a str,
    extra: &'a str,
}

const CERTDC: Sub<'static> = Sub {
    name: "certdc",
    client: CLIENT,
    process_code: "CERTDC",
    extra: "",
};

/// Writes the world's config with an [email] section (state in SQLite).
fn write_config(w: &World, smtp_url: &str, email_extra: &str, subs: &[Sub<'_>], schedule: &str) {
    let state = format!("sqlite://{}/state.db", w.dir.path().display());
    write_config_on(w, &state, smtp_url, email_extra, subs, schedule);
}

/// Writes the world's config with an [email] section and this state database.
fn write_config_on(
    w: &World,
    state_url: &str,
    smtp_url: &str,
    email_extra: &str,
    subs: &[Sub<'_>],
    schedule: &str,
) {
    let d = w.dir.path().display();
    let mut toml = format!(
        r#"[hub]
api_url = "{api}"
token_url = "{token}"
editor_name = "Commune de Saint-Étienne"
retry_attempts = 2
retry_base_delay = "10ms"
retry_max_delay = "50ms"
timeout = "5s"

[state]
url = "{state_url}"

[email]
smtp_url = "{smtp_url}"
from = "hubee-sync <hubee@mairie.example>"
to = ["dsi@mairie.example"]
{email_extra}
"#,
        api = w.hub.api_url(),
        token = w.hub.token_url(),
    );
    for s in subs {
        toml.push_str(&format!(
            r#"
[[subscription]]
name = "{name}"
process_code = "{code}"
client_id = "{client}"
client_secret_file = "{d}/secret"
schedule = "{schedule}"
spool = "{d}/spool/{name}"
{extra}
"#,
            name = s.name,
            code = s.process_code,
            client = s.client,
            extra = s.extra,
        ));
    }
    write_mode(&w.config_path(), &toml, 0o640);
}

fn plain(sink: &Sink) -> String {
    format!("smtp://127.0.0.1:{}", sink.port)
}

fn case_with_files(
    w: &World,
    n: usize,
    applicant: Option<Value>,
    extra: Vec<AttachmentSpec>,
) -> String {
    let mut spec = CaseSpec::new("CERTDC");
    spec.external_id = Some(format!("DGS-CERTDC-{n:013}-01"));
    spec.applicant = applicant;
    spec.attachments = vec![AttachmentSpec::new(
        &format!("certificat-{n}.pdf"),
        "DD_Certificatdedeces",
        "application/pdf",
        Content::Generated {
            size: 2048,
            seed: n as u64,
        },
    )];
    spec.attachments.extend(extra);
    w.hub.add_case(CLIENT, spec)
}

fn ext(n: usize) -> String {
    format!("DGS-CERTDC-{n:013}-01")
}

async fn once(w: &World) {
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "once failed:\n{out}\n{err}");
}

// ------------------------------------------------------------------ digests

#[tokio::test]
async fn digest_lists_received_cases_in_french_text_and_html() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config(&w, &plain(&sink), "", &[CERTDC], "every 5m");
    case_with_files(&w, 1, None, vec![]);
    let corrupted = AttachmentSpec::new(
        "scan.pdf",
        "DD_Certificatdedeces",
        "application/pdf",
        Content::Generated { size: 10, seed: 9 },
    )
    .with_status("CORRUPTED");
    case_with_files(&w, 2, None, vec![corrupted]);
    once(&w).await;

    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mails = sink.wait_for(1, Duration::from_secs(5), "digest").await;
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(sink.maildir_count(), 1);
    let m = &mails[0];
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["rcpt_tos"], serde_json::json!(["dsi@mairie.example"]));
    let subject = m["subject"].as_str().unwrap_or("");
    assert!(
        subject.contains("2 télédossiers reçus") && subject.contains("1 point à traiter"),
        "{subject}"
    );
    let text = m["text"].as_str().unwrap_or("");
    let html = m["html"].as_str().unwrap_or("");
    let spool = w.dir.path().join("spool/certdc/new");
    for needle in [
        ext(1),
        ext(2),
        "Synthèse hubee-sync — Commune de Saint-Étienne".to_string(),
        "Télédossiers reçus (2)".to_string(),
        "CERTDC (certificat de décès)".to_string(),
        "CORRUPTED".to_string(),
        "À traiter".to_string(),
        spool.display().to_string(),
    ] {
        assert!(text.contains(&needle), "text lacks {needle:?}:\n{text}");
        assert!(html.contains(&needle), "html lacks {needle:?}:\n{html}");
    }
    assert!(html.contains("<table"), "{html}");
    // Paris time, French style: "reçu le : 25/11/2026 08:00".
    let received_at = text
        .split("reçu le : ")
        .nth(1)
        .map(|s| s.chars().take(16).collect::<String>())
        .unwrap_or_default();
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Europe::Paris);
    assert_eq!(
        received_at.get(..10),
        Some(now.format("%d/%m/%Y").to_string().as_str()),
        "{text}"
    );
    assert!(
        received_at.as_bytes().get(13) == Some(&b':'),
        "{received_at}"
    );
    // One file each: the corrupted one is not counted, and is reported with its status.
    assert!(text.contains("pièces : 1"), "{text}");
}

#[tokio::test]
async fn each_item_appears_in_exactly_one_sent_digest() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config(&w, &plain(&sink), "", &[CERTDC], "every 5m");
    case_with_files(&w, 1, None, vec![]);
    once(&w).await;
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");

    case_with_files(&w, 2, None, vec![]);
    once(&w).await;
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");

    // Nothing new: no third message.
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rien à signaler"), "{out}");

    let mails = sink
        .wait_for(2, Duration::from_secs(5), "two digests")
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails_after = sink.mails();
    assert_eq!(mails_after.len(), 2, "{mails_after:#?}");
    let text = |i: usize| mails[i]["text"].as_str().unwrap_or("").to_string();
    assert!(
        text(0).contains(&ext(1)) && !text(0).contains(&ext(2)),
        "{}",
        text(0)
    );
    assert!(
        text(1).contains(&ext(2)) && !text(1).contains(&ext(1)),
        "{}",
        text(1)
    );
    // The second digest says since when.
    assert!(text(1).contains("Du "), "{}", text(1));
}

#[tokio::test]
async fn digest_cursor_works_on_postgresql_state() {
    let pg = common::PgDb::create().await;
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config_on(&w, &pg.url, &plain(&sink), "", &[CERTDC], "every 5m");
    case_with_files(&w, 1, None, vec![]);
    once(&w).await;
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    case_with_files(&w, 2, None, vec![]);
    once(&w).await;
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mails = sink
        .wait_for(2, Duration::from_secs(5), "two digests")
        .await;
    let text = |i: usize| mails[i]["text"].as_str().unwrap_or("").to_string();
    assert!(
        text(0).contains(&ext(1)) && !text(0).contains(&ext(2)),
        "{}",
        text(0)
    );
    assert!(
        text(1).contains(&ext(2)) && !text(1).contains(&ext(1)),
        "{}",
        text(1)
    );
    pg.drop_now().await;
}

#[tokio::test]
async fn failed_send_keeps_items_for_the_next_digest() {
    let w = World::new().await;
    let dead = format!("smtp://hubee:hunter2@127.0.0.1:{}", closed_port());
    write_config(&w, &dead, "", &[CERTDC], "every 5m");
    case_with_files(&w, 1, None, vec![]);
    once(&w).await;
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 1, "a failed send exits 1:\n{out}\n{err}");
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}"
    );

    case_with_files(&w, 2, None, vec![]);
    once(&w).await;
    let sink = Sink::start(&[]);
    write_config(&w, &plain(&sink), "", &[CERTDC], "every 5m");
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mails = sink.wait_for(1, Duration::from_secs(5), "digest").await;
    let text = mails[0]["text"].as_str().unwrap_or("");
    assert!(text.contains(&ext(1)) && text.contains(&ext(2)), "{text}");
}

#[tokio::test]
async fn nothing_to_say_sends_no_digest_unless_send_empty() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config(&w, &plain(&sink), "", &[CERTDC], "every 5m");
    once(&w).await;
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("rien à signaler"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.mails().is_empty(), "{:#?}", sink.mails());

    write_config(
        &w,
        &plain(&sink),
        "send_empty = true",
        &[CERTDC],
        "every 5m",
    );
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mails = sink
        .wait_for(1, Duration::from_secs(5), "empty digest")
        .await;
    let subject = mails[0]["subject"].as_str().unwrap_or("");
    assert!(subject.contains("rien de nouveau"), "{subject}");
    assert!(mails[0]["text"]
        .as_str()
        .unwrap_or("")
        .contains("Rien de nouveau"));
}

#[tokio::test]
async fn subscription_email_to_gets_only_its_own_subscription() {
    let w = World::new().await;
    w.hub.add_client("pacs-client", SECRET, "depotDossierPACS");
    let sink = Sink::start(&[]);
    let subs = [
        Sub {
            extra: "email_to = [\"etat-civil@mairie.example\"]",
            ..CERTDC
        },
        Sub {
            name: "pacs",
            client: "pacs-client",
            process_code: "depotDossierPACS",
            extra: "",
        },
    ];
    write_config(&w, &plain(&sink), "", &subs, "every 5m");
    case_with_files(&w, 1, None, vec![]);
    let mut pacs = CaseSpec::new("depotDossierPACS");
    pacs.external_id = Some("PACS-0000000000042".into());
    w.hub.add_case("pacs-client", pacs);
    once(&w).await;

    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mails = sink
        .wait_for(2, Duration::from_secs(5), "two digests")
        .await;
    assert_eq!(mails.len(), 2);
    let to = |addr: &str| {
        mails
            .iter()
            .find(|m| m["rcpt_tos"] == serde_json::json!([addr]))
            .unwrap_or_else(|| panic!("no digest to {addr}: {mails:#?}"))["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let global = to("dsi@mairie.example");
    assert!(
        global.contains(&ext(1)) && global.contains("PACS-0000000000042"),
        "{global}"
    );
    assert!(global.contains("depotDossierPACS (PACS)"), "{global}");
    let own = to("etat-civil@mairie.example");
    assert!(own.contains(&ext(1)), "{own}");
    assert!(
        !own.contains("PACS-0000000000042") && !own.contains("pacs"),
        "{own}"
    );
}

#[tokio::test]
async fn no_personal_data_by_default() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config(&w, &plain(&sink), "", &[CERTDC], "every 5m");
    let rejected = AttachmentSpec::new(
        "acte-CURIE-SECRET.pdf",
        "DD_Certificatdedeces",
        "application/pdf",
        Content::Generated { size: 10, seed: 3 },
    )
    .with_status("REJECTED");
    case_with_files(
        &w,
        1,
        Some(
            serde_json::json!({"firstName": "Marie", "lastName": "CURIE-SECRET", "email": "marie@example.org"}),
        ),
        vec![rejected],
    );
    once(&w).await;

    let (code, shown, err) = w.run(&["digest"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        shown.contains(&ext(1)) && shown.contains("REJECTED"),
        "{shown}"
    );
    assert!(
        !shown.contains("CURIE") && !shown.contains("marie@"),
        "{shown}"
    );

    // The switch works: with include_personal_data the applicant and file name appear.
    write_config(
        &w,
        &plain(&sink),
        "include_personal_data = true",
        &[CERTDC],
        "every 5m",
    );
    let (code, shown, err) = w.run(&["digest"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(shown.contains("Marie CURIE-SECRET"), "{shown}");
    assert!(shown.contains("acte-CURIE-SECRET.pdf"), "{shown}");

    write_config(&w, &plain(&sink), "", &[CERTDC], "every 5m");
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mails = sink.wait_for(1, Duration::from_secs(5), "digest").await;
    for part in ["text", "html", "subject"] {
        let p = mails[0][part].as_str().unwrap_or("");
        assert!(!p.contains("CURIE") && !p.contains("Marie"), "{part}: {p}");
    }
}

#[tokio::test]
async fn digest_command_renders_without_sending() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config(&w, &plain(&sink), "", &[CERTDC], "every 5m");
    case_with_files(&w, 1, None, vec![]);
    once(&w).await;
    let (code, out, err) = w.run(&["digest"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Synthèse pour dsi@mairie.example"), "{out}");
    assert!(
        out.contains("Objet : hubee-sync : 1 télédossier reçu"),
        "{out}"
    );
    assert!(out.contains(&ext(1)), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.mails().is_empty(), "digest without --send sent mail");
    // Rendering moved nothing: the same case is in the digest sent next.
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let mails = sink.wait_for(1, Duration::from_secs(5), "digest").await;
    assert!(mails[0]["text"].as_str().unwrap_or("").contains(&ext(1)));

    // Without an [email] section: a configuration error.
    w.write_config("");
    let (code, _, err) = w.run(&["digest"]).await;
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("[email]"), "{err}");
}

#[test]
fn digest_schedule_stays_at_8_paris_across_dst() {
    use chrono::{TimeZone, Utc};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    write_mode(&dir.path().join("secret"), "s\n", 0o600);
    std::fs::write(
        &path,
        format!(
            "[hub]\napi_url = \"https://api.bas.hubee.numerique.gouv.fr\"\ntoken_url = \"https://auth.bas.hubee.numerique.gouv.fr/oauth2/token\"\neditor_name = \"x\"\n[state]\nurl = \"sqlite://{d}/s.db\"\n[email]\nsmtp_url = \"smtp://127.0.0.1:25\"\nfrom = \"a@b.example\"\nto = [\"c@d.example\"]\n",
            d = dir.path().display()
        ),
    )
    .expect("write config");
    let settings = hubee_sync::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let email = settings.email.expect("[email]");
    assert_eq!(email.digest_schedule, "0 0 8 * * Mon-Fri");
    let next = |y, mo, d, h| {
        hubee_sync::email::next_digest_after(
            &email,
            Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap(),
        )
        .expect("schedule")
        .expect("fires")
    };
    let utc = |y, mo, d, h| Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap();
    // Spring forward on Sunday 29 March 2026: Friday 27 at 07:00 UTC (CET), then Monday 30
    // at 06:00 UTC (CEST): 08:00 in Paris both times.
    assert_eq!(next(2026, 3, 26, 12), utc(2026, 3, 27, 7));
    assert_eq!(next(2026, 3, 27, 12), utc(2026, 3, 30, 6));
    // Fall back on Sunday 25 October 2026: Friday 23 at 06:00 UTC, Monday 26 at 07:00 UTC.
    assert_eq!(next(2026, 10, 22, 12), utc(2026, 10, 23, 6));
    assert_eq!(next(2026, 10, 23, 12), utc(2026, 10, 26, 7));
    // Right at 08:00 Paris the next one is the next working day.
    assert_eq!(next(2026, 3, 30, 6), utc(2026, 3, 31, 6));
}

// ------------------------------------------------------------------ TLS

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        common::pki::make_pki(dir.path(), "hubee-sync test CA", "server", "127.0.0.1");
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test]
async fn starttls_required_refuses_a_server_without_starttls() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config(
        &w,
        &format!("smtp://127.0.0.1:{}?tls=required", sink.port),
        "",
        &[CERTDC],
        "every 5m",
    );
    case_with_files(&w, 1, None, vec![]);
    once(&w).await;
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains("STARTTLS"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sink.mails().is_empty(),
        "sent in clear: {:#?}",
        sink.mails()
    );
}

#[tokio::test]
async fn starttls_and_implicit_tls_authenticate_and_verify_the_server() {
    let pki = Pki::new();
    let w = World::new().await;
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let starttls = Sink::start(&[
        "--starttls",
        &cert,
        &key,
        "--auth",
        "hubee@mairie.example:p@ss w",
    ]);
    let smtps = Sink::start(&[
        "--smtps",
        &cert,
        &key,
        "--auth",
        "hubee@mairie.example:p@ss w",
    ]);
    let ca = format!("ca_file = \"{}\"", pki.path("ca.pem"));
    case_with_files(&w, 1, None, vec![]);

    // Without the CA, the server's certificate is not trusted: nothing is sent.
    write_config(
        &w,
        &format!(
            "smtp://hubee%40mairie.example:p%40ss%20w@127.0.0.1:{}?tls=required",
            starttls.port
        ),
        "",
        &[CERTDC],
        "every 5m",
    );
    once(&w).await;
    let (code, _, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("p%40ss") && !err.contains("p@ss"), "{err}");

    // STARTTLS with the CA and the credentials.
    write_config(
        &w,
        &format!(
            "smtp://hubee%40mairie.example:p%40ss%20w@127.0.0.1:{}?tls=required",
            starttls.port
        ),
        &ca,
        &[CERTDC],
        "every 5m",
    );
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let m = starttls
        .wait_for(1, Duration::from_secs(5), "STARTTLS digest")
        .await;
    assert!(m[0]["text"].as_str().unwrap_or("").contains(&ext(1)));

    // Implicit TLS; a wrong password is refused.
    case_with_files(&w, 2, None, vec![]);
    once(&w).await;
    write_config(
        &w,
        &format!(
            "smtps://hubee%40mairie.example:wrong@127.0.0.1:{}",
            smtps.port
        ),
        &ca,
        &[CERTDC],
        "every 5m",
    );
    let (code, _, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 1, "{err}");
    write_config(
        &w,
        &format!(
            "smtps://hubee%40mairie.example:p%40ss%20w@127.0.0.1:{}",
            smtps.port
        ),
        &ca,
        &[CERTDC],
        "every 5m",
    );
    let (code, out, err) = w.run(&["digest", "--send"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let m = smtps
        .wait_for(1, Duration::from_secs(5), "SMTPS digest")
        .await;
    assert!(m[0]["text"].as_str().unwrap_or("").contains(&ext(2)));
}

// ------------------------------------------------------------------ alerts (run)

/// A `hubee-sync run` child, stderr to a file.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(w: &World) -> Daemon {
        let log = w.dir.path().join("run.log");
        let err = std::fs::File::create(&log).expect("create log file");
        let child = common::without_proxies(
            Command::new(bin())
                .arg("--config")
                .arg(w.config_path())
                .arg("run")
                .env("HUBEE_SYNC_LOG", "info"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start hubee-sync run");
        Daemon { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (at most 40 s).
    async fn stop(mut self) -> i32 {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "run did not stop:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Digests far away (1 January 2099), so that only alerts are sent.
const NO_DIGEST: &str = "digest_schedule = \"0 0 8 1 1 * 2099\"";

#[tokio::test]
async fn run_sends_the_digest_at_its_schedule() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    // Every 2 seconds, so that the test sees a few ticks.
    write_config(
        &w,
        &plain(&sink),
        "digest_schedule = \"*/2 * * * * *\"",
        &[CERTDC],
        "every 1s",
    );
    case_with_files(&w, 1, None, vec![]);
    let d = Daemon::start(&w);
    let mails = sink
        .wait_for(1, Duration::from_secs(20), "scheduled digest")
        .await;
    let text = mails[0]["text"].as_str().unwrap_or("");
    assert!(text.contains(&ext(1)), "{text}");
    // Later ticks have nothing new to say (send_empty = false): no more mail.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sink.mails().len(),
        1,
        "{:#?}\n{}",
        sink.mails(),
        d.log_text()
    );
    assert!(d.log_text().contains("digest sent"), "{}", d.log_text());
    assert_eq!(d.stop().await, 0);
}

#[tokio::test]
async fn auth_failure_sends_one_alert_then_recovery() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config(&w, &plain(&sink), NO_DIGEST, &[CERTDC], "every 1s");
    // The secret was regenerated in the portal: the hub refuses ours.
    w.hub.add_client(CLIENT, "regenerated-secret", "CERTDC");
    let d = Daemon::start(&w);
    let mails = sink.wait_for(1, Duration::from_secs(20), "alert").await;
    let subject = mails[0]["subject"].as_str().unwrap_or("").to_string();
    assert!(
        subject.contains("ALERTE")
            && subject.contains("identifiants")
            && subject.contains("certdc"),
        "{subject}"
    );
    assert_eq!(
        mails[0]["rcpt_tos"],
        serde_json::json!(["dsi@mairie.example"])
    );
    let text = mails[0]["text"].as_str().unwrap_or("");
    assert!(text.contains("Gestion des abonnements"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    // More failing cycles: still one alert.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        sink.mails().len(),
        1,
        "{:#?}\n{}",
        sink.mails(),
        d.log_text()
    );

    // The operator puts the right secret back (here: the hub takes ours again).
    w.hub.add_client(CLIENT, SECRET, "CERTDC");
    let mails = sink.wait_for(2, Duration::from_secs(20), "recovery").await;
    let subject = mails[1]["subject"].as_str().unwrap_or("");
    assert!(subject.contains("fonctionne de nouveau"), "{subject}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sink.mails().len(), 2, "{:#?}", sink.mails());
    assert_eq!(d.stop().await, 0);
}

#[tokio::test]
async fn alerts_are_rate_limited() {
    let w = World::new().await;
    let sink = Sink::start(&[]);
    write_config(
        &w,
        &plain(&sink),
        &format!("{NO_DIGEST}\nalert_after = \"2s\"\nalert_every = \"1m\""),
        &[CERTDC],
        "every 1s",
    );
    // A hub outage: every listing answers 503.
    w.hub
        .inject(Route::ListNotifications, Fault::Status(503), 100_000);
    let started = Instant::now();
    let d = Daemon::start(&w);
    let mails = sink
        .wait_for(1, Duration::from_secs(20), "outage alert")
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "alerted before alert_after"
    );
    let subject = mails[0]["subject"].as_str().unwrap_or("").to_string();
    assert!(subject.contains("en échec depuis"), "{subject}");
    // Still failing: no second alert within alert_every.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(sink.mails().len(), 1, "{:#?}", sink.mails());

    // It recovers (one recovery mail), then fails again within alert_every: no new alert.
    w.hub.clear_faults();
    sink.wait_for(2, Duration::from_secs(20), "recovery").await;
    w.hub
        .inject(Route::ListNotifications, Fault::Status(503), 100_000);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}\n{}", d.log_text());
    assert!(mails[1]["subject"]
        .as_str()
        .unwrap_or("")
        .contains("fonctionne de nouveau"));
    assert_eq!(d.stop().await, 0);
}
