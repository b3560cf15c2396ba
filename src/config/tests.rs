//! Behaviour of the whole loading pipeline, on real files in temporary directories.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::hubee::status::CaseStatus;

const HUB: &str = r#"
[hub]
api_url = "https://api.bas.hubee.numerique.gouv.fr/"
token_url = "https://auth.bas.hubee.numerique.gouv.fr/oauth2/token"
editor_name = "Commune de Saint-Exemple"
"#;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    /// A secret file with a safe mode.
    fn secret(&self, name: &str) -> PathBuf {
        self.write(name, "s3cr3t-value\n", 0o640)
    }

    /// The main file, with [hub] and the given text after it.
    fn config(&self, text: &str) -> PathBuf {
        self.write("hubee-sync.toml", &format!("{HUB}{text}"), 0o640)
    }

    fn load(&self, path: &Path) -> Result<Settings, ConfigErrors> {
        load_with(path, &Env::default())
    }

    fn errors(&self, path: &Path) -> Vec<String> {
        match self.load(path) {
            Ok(s) => panic!("accepted: {s:#?}"),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }
}

fn subscription(name: &str, secret: &Path) -> String {
    format!(
        "[[subscription]]\nname = \"{name}\"\nprocess_code = \"CERTDC\"\nclient_id = \"id-{name}\"\nclient_secret_file = \"{}\"\n",
        secret.display()
    )
}

fn assert_has(errors: &[String], needle: &str) {
    assert!(
        errors.iter().any(|e| e.contains(needle)),
        "no error contains {needle:?}:\n{}",
        errors.join("\n")
    );
}

#[test]
fn packaged_example_validates_with_zero_subscriptions() {
    let f = Fixture::new();
    let text = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/hubee-sync.toml"
    ))
    .unwrap();
    // The example includes /etc/hubee-sync/conf.d, which need not exist here.
    let text = text.replace("/etc/hubee-sync/conf.d/*.toml", "conf.d/*.toml");
    fs::create_dir(f.path("conf.d")).unwrap();
    let path = f.write("hubee-sync.toml", &text, 0o644);
    let settings = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(settings.subscriptions.is_empty());
    assert!(settings.email.is_none());
    assert_eq!(
        settings.state.url,
        StateUrl::Sqlite("/var/lib/hubee-sync/state.db".into())
    );
}

#[test]
fn packaged_example_subscription_validates_once_uncommented() {
    let f = Fixture::new();
    let secret = f.secret("certdc");
    let text = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/hubee-sync.toml"
    ))
    .unwrap();
    let (head, tail) = text.split_at(text.find("# [[subscription]]").unwrap());
    let keep = [
        "[[subscription]]",
        "name",
        "process_code",
        "client_id",
        "client_secret_file",
        "schedule",
        "receipt_status",
        "delivery",
        "spool",
        "spool_group",
    ];
    let mut text = head.replace("/etc/hubee-sync/conf.d/*.toml", "conf.d/*.toml");
    for line in tail.lines() {
        let uncommented = line.trim_start_matches("# ");
        if keep
            .iter()
            .any(|k| uncommented.starts_with(&format!("{k} ")) || uncommented == *k)
        {
            text.push_str(uncommented);
        } else {
            text.push_str(line);
        }
        text.push('\n');
    }
    let text = text.replace(
        "/etc/hubee-sync/secrets/certdc",
        &secret.display().to_string(),
    );
    fs::create_dir(f.path("conf.d")).unwrap();
    let path = f.write("hubee-sync.toml", &text, 0o644);
    let settings = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(settings.subscriptions.len(), 1);
    assert_eq!(settings.subscriptions[0].name, "certdc");
}

#[test]
fn a_valid_config_gives_strong_settings_with_defaults() {
    let f = Fixture::new();
    let secret = f.secret("certdc");
    let path = f.config(&format!(
        "[state]\nurl = \"sqlite:state/state.db\"\n{}",
        subscription("certdc", &secret)
    ));
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.source, path);
    assert_eq!(
        s.hub.api_url.as_str(),
        "https://api.bas.hubee.numerique.gouv.fr/"
    );
    assert_eq!(s.hub.application_name, "hubee-sync");
    assert_eq!(s.hub.timeout, Duration::from_secs(60));
    assert_eq!(s.hub.max_parallel_downloads, 4);
    assert_eq!(s.hub.max_parallel_subscriptions, 4);
    assert_eq!(s.hub.retry_attempts, 5);
    assert_eq!(s.hub.retry_base_delay, Duration::from_millis(500));
    assert_eq!(s.hub.retry_max_delay, Duration::from_secs(60));
    assert_eq!(s.hub.download_attempts, 3);
    let sub = &s.subscriptions[0];
    assert_eq!(sub.receipt_status, CaseStatus::InProgress);
    assert_eq!(sub.schedule, Schedule::Every(Duration::from_secs(300)));
    assert_eq!(sub.quarantine_after, Duration::from_secs(86400));
    assert_eq!(sub.outbox_retention, Duration::from_secs(90 * 86400));
    assert_eq!(sub.secret, SecretSource::File(secret.clone()));
    assert_eq!(sub.source, path);
    assert_eq!(
        sub.delivery,
        Delivery::Spool {
            path: "/var/spool/hubee-sync/certdc".into(),
            group: None
        }
    );
    assert_eq!(sub.secret.load().unwrap().expose(), "s3cr3t-value");
}

#[test]
fn max_parallel_subscriptions_is_read_and_bounded() {
    let f = Fixture::new();
    let path = f.write(
        "c.toml",
        &format!("{HUB}max_parallel_subscriptions = 9\n"),
        0o644,
    );
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.hub.max_parallel_subscriptions, 9);
    for bad in ["0", "65"] {
        let path = f.write(
            "c.toml",
            &format!("{HUB}max_parallel_subscriptions = {bad}\n"),
            0o644,
        );
        let errors = f.errors(&path);
        assert_has(
            &errors,
            &format!("hub.max_parallel_subscriptions: {bad} is outside 1 to 64"),
        );
        assert_eq!(errors.len(), 1, "{}", errors.join("\n"));
    }
    let path = f.write(
        "c.toml",
        &format!("{HUB}max_parallel_subscriptions = \"four\"\n"),
        0o644,
    );
    assert_has(&f.errors(&path), "hub.max_parallel_subscriptions");
}

#[test]
fn api_url_is_stored_without_trailing_slash() {
    let f = Fixture::new();
    let path = f.write(
        "c.toml",
        &HUB.replace(
            "https://api.bas.hubee.numerique.gouv.fr/",
            "https://hub.example/api/",
        ),
        0o644,
    );
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.hub.api_url.as_str(), "https://hub.example/api");
    assert_eq!(s.hub.api_base(), "https://hub.example/api");
}

#[test]
fn every_error_is_reported_at_once() {
    let f = Fixture::new();
    let path = f.write(
        "hubee-sync.toml",
        r#"
[hub]
api_url = "ftp://api.example"
editor_name = "Commune"
timeout = "forever"
max_parallel_downloads = 0
timeuot = "1s"

[state]
url = "mysql://db"

[[subscription]]
name = "Bad Name"
process_code = "CERTDC"
client_id = "id"
client_secret_file = "/nonexistent/secret"
schedule = "every banana"
receipt_status = "DONE"
colour = "blue"

[[subscription]]
process_code = "X"
client_id = "id"
delivery = "database"
"#,
        0o644,
    );
    let errors = f.errors(&path);
    for needle in [
        "hub.api_url: \"ftp://api.example\" is not an https:// URL",
        "hub.token_url: is missing",
        "hub.timeout: \"forever\" is not a duration",
        "hub.max_parallel_downloads: 0 is outside 1 to 64",
        "hub.timeuot: unknown key",
        "state.url",
        "subscription[1].name: \"Bad Name\" is not a valid name",
        "subscription[1].client_secret_file: secret file /nonexistent/secret does not exist",
        "subscription[1].schedule: \"every banana\" is not a schedule",
        "subscription[1].receipt_status: DONE is not a receipt status",
        "subscription[1].colour: unknown key",
        "subscription[2].name: is missing",
        "subscription[2].client_secret_file: is missing",
        "subscription[2].database_url: is missing",
    ] {
        assert_has(&errors, needle);
    }
    assert_eq!(errors.len(), 14, "{}", errors.join("\n"));
}

#[test]
fn error_display_names_file_key_problem_and_fix() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "{}schedule = \"every banana\"\n",
        subscription("a", &secret)
    ));
    let errors = f.load(&path).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{}: subscription[1].schedule: \"every banana\" is not a schedule: the interval must be a number followed by a unit (ms, s, m, h, d) — write \"every 5m\", \"every 30s\" or \"every 1h\"",
            path.display()
        )
    );
    let e = &errors.0[0];
    assert_eq!(
        (e.file.as_path(), e.key.as_str()),
        (path.as_path(), "subscription[1].schedule")
    );
}

#[test]
fn unknown_key_suggests_the_close_one() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "[[subscription]]\nname = \"a\"\nprocess_code = \"X\"\nclient_id = \"i\"\nclient_secret_fil = \"{}\"\n",
        secret.display()
    ));
    let errors = f.errors(&path);
    assert_has(
        &errors,
        "subscription[1].client_secret_fil: unknown key `client_secret_fil` in [[subscription]] — did you mean `client_secret_file`?",
    );
}

#[test]
fn unknown_tables_and_keys_are_all_named() {
    let f = Fixture::new();
    let path = f.config("[hubb]\nx = 1\n[state]\nurll = \"sqlite:a.db\"\npath = \"x\"\n");
    let errors = f.errors(&path);
    assert_has(
        &errors,
        "hubb: unknown key `hubb` at the top of the file — did you mean `hub`?",
    );
    assert_has(
        &errors,
        "state.urll: unknown key `urll` in [state] — did you mean `url`?",
    );
    assert_has(&errors, "state.path: unknown key");
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn tls_cannot_be_turned_off() {
    let f = Fixture::new();
    let path = f.config("insecure = true\ndanger_accept_invalid_certs = true\n");
    let errors = f.errors(&path);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    for e in &errors {
        assert!(
            e.contains("always verified") && e.contains("ca_file"),
            "{e}"
        );
    }
}

#[test]
fn missing_required_keys_are_named() {
    let f = Fixture::new();
    let path = f.write(
        "c.toml",
        "[[subscription]]\nschedule = \"every 5m\"\n",
        0o644,
    );
    let errors = f.errors(&path);
    for key in [
        "hub.api_url: is missing",
        "hub.token_url: is missing",
        "hub.editor_name: is missing",
        "subscription[1].name: is missing",
        "subscription[1].process_code: is missing",
        "subscription[1].client_id: is missing",
        "subscription[1].client_secret_file: is missing",
    ] {
        assert_has(&errors, key);
    }
    assert_eq!(errors.len(), 7, "{errors:#?}");
}

#[test]
fn only_one_client_secret_source_is_allowed() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "{}client_secret_credential = \"a\"\n",
        subscription("a", &secret)
    ));
    let errors = f.errors(&path);
    assert_has(
        &errors,
        "client_secret_file and client_secret_credential are all set; only one may be",
    );
}

#[test]
fn missing_secret_file_says_how_to_create_it() {
    let f = Fixture::new();
    let missing = f.path("secrets/certdc");
    let path = f.config(&subscription("certdc", &missing));
    let errors = f.errors(&path);
    assert_has(&errors, "does not exist");
    assert_has(
        &errors,
        "Gestion des abonnements), chmod 0640, owner root:hubee-sync",
    );
}

#[test]
fn secret_readable_by_others_is_refused_with_chmod() {
    let f = Fixture::new();
    let secret = f.write("secret", "s3cr3t-value\n", 0o644);
    let path = f.config(&subscription("a", &secret));
    let errors = f.errors(&path);
    assert_has(&errors, &format!("run `chmod 0640 {}`", secret.display()));
    assert_has(&errors, "is readable by others (mode 0644)");
}

#[test]
fn secret_file_unreadable_by_the_service_is_refused() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("skipped: root reads every file");
        return;
    }
    let f = Fixture::new();
    let secret = f.write("secret", "s3cr3t-value\n", 0o000);
    let path = f.config(&subscription("a", &secret));
    let errors = f.errors(&path);
    assert_has(&errors, "cannot be read");
    assert_has(&errors, &format!("chmod 0640 {}", secret.display()));
}

#[test]
fn relative_secret_file_resolves_against_its_config_file() {
    let f = Fixture::new();
    f.secret("secrets/a");
    let path = f.config(&subscription("a", Path::new("secrets/a")));
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.subscriptions[0].secret,
        SecretSource::File(f.path("secrets/a"))
    );
}

#[test]
fn secret_never_appears_in_errors() {
    let f = Fixture::new();
    let secret_file = f.write("exposed", "s3cr3t-value\n", 0o666);
    let path = f.write(
        "hubee-sync.toml",
        &format!(
            r#"{HUB}
proxy = "socks5://user:pr0xy-pass@proxy"
[state]
url = "postgres://hubee:st4te-pass@/db"
[email]
smtp_url = "imap://user:sm7p-pass@mail.example"
from = "x@y"
to = ["a@b"]
[[subscription]]
name = "a"
process_code = "X"
client_id = "i"
client_secret = "inl1ne-secret"
client_secret_file = "{}"
[[subscription]]
name = "b"
process_code = "X"
client_id = "i"
client_secret = 123456789
[[subscription]]
name = "c"
process_code = "X"
client_id = "i"
client_secret_file = "{}"
delivery = "database"
database_url = "postgresql://u:d4tabase-pass@"
"#,
            secret_file.display(),
            secret_file.display()
        ),
        0o644,
    );
    let errors = f.load(&path).unwrap_err();
    let text = format!("{errors}\n{errors:?}");
    assert!(errors.len() >= 6, "{text}");
    for secret in [
        "s3cr3t-value",
        "pr0xy-pass",
        "st4te-pass",
        "sm7p-pass",
        "inl1ne-secret",
        "123456789",
        "d4tabase-pass",
    ] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    // …and the problems are still reported.
    assert!(text.contains("holds a secret"), "{text}");
    assert!(
        text.contains("is an integer, but must be a string"),
        "{text}"
    );
}

#[test]
fn syntax_error_never_shows_the_line() {
    let f = Fixture::new();
    let path = f.config("[[subscription]]\nclient_secret = \"s3cr3t-value\n");
    let text = f.load(&path).unwrap_err().to_string();
    assert!(text.contains("TOML syntax error at line 7"), "{text}");
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[test]
fn config_with_inline_secret_readable_by_others_is_refused() {
    let f = Fixture::new();
    let text = format!(
        "{HUB}[[subscription]]\nname = \"a\"\nprocess_code = \"X\"\nclient_id = \"i\"\nclient_secret = \"s3cr3t-value\"\n"
    );
    let path = f.write("c.toml", &text, 0o644);
    let errors = f.errors(&path);
    assert_has(&errors, "holds a secret");
    assert_has(&errors, &format!("`chmod 0640 {}`", path.display()));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(&s.subscriptions[0].secret, SecretSource::Inline(x) if x.expose() == "s3cr3t-value")
    );
}

#[test]
fn config_writable_by_others_is_refused() {
    let f = Fixture::new();
    let path = f.write("c.toml", HUB, 0o666);
    let errors = f.errors(&path);
    assert_has(&errors, "is writable by others (mode 0666)");
    assert_has(&errors, &format!("`chmod 0644 {}`", path.display()));
}

#[test]
fn editor_name_is_transliterated_for_the_header() {
    let f = Fixture::new();
    let path = f.write(
        "c.toml",
        &HUB.replace(
            "Commune de Saint-Exemple",
            "Commune de Saint-Étienne’s Œuvre",
        ),
        0o644,
    );
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.hub.editor_name, "Commune de Saint-Étienne’s Œuvre");
    assert_eq!(
        s.hub.editor_name_header,
        "Commune de Saint-Etienne's OEuvre"
    );
}

#[test]
fn editor_name_longer_than_50_in_ascii_is_refused() {
    let f = Fixture::new();
    // 49 characters as written, 51 once œ and ß are spelt out.
    let name = format!("{}œß", "a".repeat(47));
    let path = f.write(
        "c.toml",
        &HUB.replace("Commune de Saint-Exemple", &name),
        0o644,
    );
    let errors = f.errors(&path);
    assert_has(&errors, "hub.editor_name");
    assert_has(&errors, "at most 50");
}

#[test]
fn relative_sqlite_path_resolves_against_config_dir() {
    for (url, expected) in [
        ("sqlite:state.db", "state.db"),
        ("sqlite://data/state.db", "data/state.db"),
        ("sqlite:./data/../state.db", "data/../state.db"),
    ] {
        let f = Fixture::new();
        let path = f.config(&format!("[state]\nurl = \"{url}\"\n"));
        let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
        let want: PathBuf = f.path(expected).components().collect();
        assert_eq!(s.state.url, StateUrl::Sqlite(want), "{url}");
    }
    let f = Fixture::new();
    let path = f.config("[state]\nurl = \"sqlite:///srv/state.db\"\n");
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.state.url, StateUrl::Sqlite("/srv/state.db".into()));
}

#[test]
fn postgres_state_url_is_kept_secret() {
    let f = Fixture::new();
    let path = f.config("[state]\nurl = \"postgresql://hubee:pw@db.example/hubee\"\n");
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    let StateUrl::Postgres(url) = &s.state.url else {
        panic!("{:?}", s.state.url)
    };
    assert_eq!(url.expose(), "postgresql://hubee:pw@db.example/hubee");
    assert_eq!(
        url.redacted_url(),
        "postgresql://hubee:***@db.example/hubee"
    );
    assert!(!format!("{s:?}").contains(":pw@"));
}

#[test]
fn included_files_add_subscriptions() {
    let f = Fixture::new();
    let secret = f.secret("s");
    f.write("conf.d/20-b.toml", &subscription("b", &secret), 0o644);
    f.write("conf.d/10-a.toml", &subscription("a", &secret), 0o644);
    f.write("conf.d/.10-a.toml.swp", "garbage", 0o644);
    f.write("conf.d/notes.txt", "garbage", 0o644);
    let path = f.write(
        "hubee-sync.toml",
        &format!(
            "include = [\"conf.d/*.toml\", \"empty/*.toml\"]\n{HUB}{}",
            subscription("main", &secret)
        ),
        0o644,
    );
    fs::create_dir(f.path("empty")).unwrap();
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = s.subscriptions.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["main", "a", "b"]);
    assert_eq!(s.subscriptions[1].source, f.path("conf.d/10-a.toml"));
}

#[test]
fn include_of_a_missing_directory_is_an_error() {
    let f = Fixture::new();
    let path = f.write(
        "c.toml",
        &format!("include = [\"nowhere/*.toml\"]\n{HUB}"),
        0o644,
    );
    let errors = f.errors(&path);
    assert_has(&errors, "include[1]: directory");
    assert_has(&errors, "does not exist");
}

#[test]
fn include_wildcards_only_in_the_file_name() {
    let f = Fixture::new();
    let path = f.write("c.toml", &format!("include = [\"*/x.toml\"]\n{HUB}"), 0o644);
    assert_has(&f.errors(&path), "wildcard in a directory");
}

#[test]
fn included_file_may_hold_only_subscriptions() {
    let f = Fixture::new();
    f.write("conf.d/a.toml", &format!("{HUB}include = [\"x\"]\n"), 0o644);
    let path = f.write(
        "c.toml",
        &format!("include = [\"conf.d/*.toml\"]\n{HUB}"),
        0o644,
    );
    let errors = f.errors(&path);
    assert_has(
        &errors,
        "a.toml: hub: an included file may hold only [[subscription]] tables",
    );
}

#[test]
fn errors_in_included_files_name_that_file() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let included = f.write(
        "conf.d/a.toml",
        &format!(
            "{}schedule = \"0 0 25 * * *\"\n",
            subscription("a", &secret)
        ),
        0o644,
    );
    let path = f.write(
        "c.toml",
        &format!("include = [\"conf.d/*.toml\"]\n{HUB}"),
        0o644,
    );
    let errors = f.errors(&path);
    assert_has(
        &errors,
        &format!(
            "{}: subscription[1].schedule: \"0 0 25 * * *\" is not a schedule: the hours field",
            included.display()
        ),
    );
}

#[test]
fn duplicate_subscription_names_are_refused() {
    let f = Fixture::new();
    let secret = f.secret("s");
    f.write("conf.d/a.toml", &subscription("certdc", &secret), 0o644);
    let path = f.write(
        "c.toml",
        &format!(
            "include = [\"conf.d/*.toml\"]\n{HUB}{}",
            subscription("certdc", &secret)
        ),
        0o644,
    );
    let errors = f.errors(&path);
    assert_has(
        &errors,
        "a.toml: subscription[1].name: \"certdc\" is already the name of subscription[1] in",
    );
}

#[test]
fn spools_must_be_distinct_and_not_nested() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "{}spool = \"/srv/spool\"\n{}spool = \"/srv/spool/b\"\n{}spool = \"/srv/spool/\"\n",
        subscription("a", &secret),
        subscription("b", &secret),
        subscription("c", &secret)
    ));
    let errors = f.errors(&path);
    assert_has(
        &errors,
        "subscription[2].spool: /srv/spool/b is inside the spool of subscription \"a\"",
    );
    assert_has(
        &errors,
        "subscription[3].spool: /srv/spool is also the spool of subscription \"a\"",
    );
    assert_has(
        &errors,
        "subscription[3].spool: /srv/spool holds the spool of subscription \"b\"",
    );
}

#[test]
fn spool_must_be_absolute() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "{}spool = \"spool/a\"\n",
        subscription("a", &secret)
    ));
    assert_has(
        &f.errors(&path),
        "subscription[1].spool: \"spool/a\" is not an absolute path",
    );
}

#[test]
fn database_delivery_takes_a_database_url() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "{}delivery = \"database\"\ndatabase_url = \"sqlite:deliveries.db\"\n{}delivery = \"database\"\ndatabase_url = \"postgres://u@db/x\"\n",
        subscription("a", &secret),
        subscription("b", &secret)
    ));
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    let Delivery::Database { url, .. } = &s.subscriptions[0].delivery else {
        panic!()
    };
    assert_eq!(
        url.expose(),
        format!("sqlite://{}", f.path("deliveries.db").display())
    );
    let Delivery::Database { url, .. } = &s.subscriptions[1].delivery else {
        panic!()
    };
    assert_eq!(url.expose(), "postgres://u@db/x");
}

#[test]
fn delivery_keys_must_match_the_kind() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "{}delivery = \"databse\"\n{}database_url = \"postgres://u@db/x\"\n{}delivery = \"database\"\nspool = \"/srv/x\"\ndatabase_url = \"postgres://u@db/x\"\n",
        subscription("a", &secret),
        subscription("b", &secret),
        subscription("c", &secret)
    ));
    let errors = f.errors(&path);
    assert_has(&errors, "subscription[1].delivery: \"databse\" is not a kind of delivery — did you mean \"database\"?");
    assert_has(
        &errors,
        "subscription[2].database_url: is set, but delivery is \"spool\"",
    );
    // A database subscription may name its spool: it holds quarantine/ and outbox/.
    assert!(
        !errors.iter().any(|e| e.contains("subscription[3].spool")),
        "{errors:?}"
    );
}

#[test]
fn receipt_status_defaults_by_process_code_and_must_be_a_receipt() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "{}\n{}receipt_status = \"SENT\"\n",
        subscription("a", &secret).replace("CERTDC", "EtatCivil"),
        subscription("b", &secret)
    ));
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.subscriptions[0].receipt_status, CaseStatus::SiReceived);
    assert_eq!(s.subscriptions[1].receipt_status, CaseStatus::Sent);

    let path = f.config(&format!(
        "{}receipt_status = \"IN_PROGRES\"\n",
        subscription("a", &secret)
    ));
    assert_has(&f.errors(&path), "did you mean \"IN_PROGRESS\"?");
}

#[test]
fn email_section_is_checked() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "[email]\nsmtp_url = \"smtp://127.0.0.1:25\"\nfrom = \"hubee-sync <hubee@mairie.example>\"\nto = [\"dsi@mairie.example\"]\n{}email_to = [\"ec@mairie.example\"]\n",
        subscription("a", &secret)
    ));
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    let email = s.email.unwrap();
    assert_eq!(email.digest_schedule, "0 0 8 * * Mon-Fri");
    assert_eq!(email.alert_after, Duration::from_secs(3600));
    assert_eq!(email.alert_every, Duration::from_secs(6 * 3600));
    assert!(!email.send_empty && !email.include_personal_data);
    assert_eq!(s.subscriptions[0].email_to, ["ec@mairie.example"]);

    let path = f.config(&format!(
        "[email]\nsmtp_url = \"http://x\"\nfrom = \"nobody\"\nto = [\"a b@c\"]\ndigest_schedule = \"every 1d\"\n{}email_to = [\"x\"]\n",
        subscription("a", &secret)
    ));
    let errors = f.errors(&path);
    assert_has(&errors, "email.smtp_url: \"http://x\" is not an smtp://");
    assert_has(&errors, "email.from: \"nobody\" is not an address");
    assert_has(&errors, "email.to[1]: \"a b@c\" is not an address");
    assert_has(
        &errors,
        "email.digest_schedule: \"every 1d\" is an interval",
    );
    assert_has(
        &errors,
        "subscription[1].email_to[1]: \"x\" is not an address",
    );
}

#[test]
fn email_tls_mode_and_ca_file_are_checked() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "[email]\nsmtp_url = \"smtp://mx.example:587?tls=opportunistic\"\nfrom = \"a@b\"\nto = [\"c@d\"]\nca_file = \"missing.pem\"\n{}",
        subscription("a", &secret)
    ));
    let errors = f.errors(&path);
    assert_has(&errors, "tls=\"opportunistic\" is not supported");
    assert_has(&errors, "email.ca_file");
}

#[test]
fn email_to_needs_an_email_section() {
    let f = Fixture::new();
    let secret = f.secret("s");
    let path = f.config(&format!(
        "{}email_to = [\"a@b\"]\n",
        subscription("a", &secret)
    ));
    assert_has(&f.errors(&path), "there is no [email] section");
}

#[test]
fn hub_urls_must_be_https_except_on_loopback() {
    let f = Fixture::new();
    let path = f.write(
        "c.toml",
        &HUB.replace(
            "https://api.bas.hubee.numerique.gouv.fr/",
            "http://127.0.0.1:8080",
        )
        .replace(
            "https://auth.bas.hubee.numerique.gouv.fr/oauth2/token",
            "http://auth.example/token",
        ),
        0o644,
    );
    let errors = f.errors(&path);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_has(
        &errors,
        "hub.token_url: \"http://auth.example/token\" is not an https:// URL",
    );
}

#[test]
fn ca_file_must_be_a_readable_pem() {
    let f = Fixture::new();
    f.write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        0o644,
    );
    f.write("junk.pem", "junk", 0o644);
    let path = f.config("");
    let ok = fs::read_to_string(&path)
        .unwrap()
        .replace("[hub]\n", "[hub]\nca_file = \"ca.pem\"\n");
    fs::write(&path, ok).unwrap();
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.hub.ca_file, Some(f.path("ca.pem")));
    for (name, why) in [
        ("junk.pem", "holds no PEM certificate"),
        ("none.pem", "cannot be read"),
    ] {
        let text = fs::read_to_string(&path).unwrap().replace("ca.pem", name);
        let bad = f.write(&format!("bad-{name}.toml"), &text, 0o644);
        assert_has(&f.errors(&bad), why);
    }
}

#[test]
fn credential_is_checked_when_the_credentials_directory_is_known() {
    let f = Fixture::new();
    let path = f.config(
        "[[subscription]]\nname = \"a\"\nprocess_code = \"X\"\nclient_id = \"i\"\nclient_secret_credential = \"certdc\"\n",
    );
    // From a shell: nothing to check yet.
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.subscriptions[0].secret,
        SecretSource::Credential {
            name: "certdc".into()
        }
    );
    // Under systemd: the credential must be there.
    let creds = f.path("creds");
    fs::create_dir(&creds).unwrap();
    let env = Env {
        credentials_directory: Some(creds.clone()),
    };
    let errors = load_with(&path, &env).unwrap_err().to_string();
    assert!(
        errors.contains("subscription[1].client_secret_credential"),
        "{errors}"
    );
    fs::write(creds.join("certdc"), "x").unwrap();
    assert!(load_with(&path, &env).is_ok());
}

#[test]
fn missing_main_file_says_what_to_do() {
    let f = Fixture::new();
    let errors = f.errors(&f.path("absent.toml"));
    assert_eq!(errors.len(), 1);
    assert_has(&errors, "--config PATH");
}

#[test]
fn default_path_prefers_the_environment() {
    assert_eq!(
        default_path_from(None),
        PathBuf::from("/etc/hubee-sync/hubee-sync.toml")
    );
    assert_eq!(
        default_path_from(Some("".into())),
        PathBuf::from("/etc/hubee-sync/hubee-sync.toml")
    );
    assert_eq!(
        default_path_from(Some("/tmp/x.toml".into())),
        PathBuf::from("/tmp/x.toml")
    );
}

#[test]
fn node_name_defaults_to_the_host_name_and_lease_ttl_to_30s() {
    let f = Fixture::new();
    let path = f.config("[state]\nurl = \"postgres://db.example/hubee\"\n");
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    let host: String = host_name()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    assert_eq!(s.state.node_name, host);
    assert_eq!(s.state.lease_ttl, Duration::from_secs(30));
}

#[test]
fn node_name_and_lease_ttl_are_read() {
    let f = Fixture::new();
    let path = f.config(
        "[state]\nurl = \"postgres://db.example/hubee\"\nnode_name = \"hubee-2.dc1\"\nlease_ttl = \"2s\"\n",
    );
    let s = f.load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.state.node_name, "hubee-2.dc1");
    assert_eq!(s.state.lease_ttl, Duration::from_secs(2));
}

#[test]
fn bad_node_name_and_too_short_lease_ttl_are_both_reported() {
    let f = Fixture::new();
    let path = f.config(
        "[state]\nurl = \"postgres://db.example/hubee\"\nnode_name = \"node one/two\"\nlease_ttl = \"500ms\"\n",
    );
    let errors = f.errors(&path);
    assert_has(
        &errors,
        "state.node_name: \"node one/two\" is not a node name",
    );
    assert_has(&errors, "state.lease_ttl: \"500ms\" is outside 2s to 10m");
    assert_eq!(errors.len(), 2, "{}", errors.join("\n"));
}
