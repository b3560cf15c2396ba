//! Stage 2 — the files read and merged, over the defaults.
//!
//! Reads the main file, expands `include` (glob with `*` and `?` in the last path component,
//! files sorted by name), gathers every `[[subscription]]` with the file it came from, checks
//! that the files themselves are safe (not writable by others; not readable by others when
//! they hold a secret), and fills in every default that does not depend on another key.
//! Values are still as written; stage 3 ([`super::settings`]) gives them meaning.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::error::Collector;
use super::raw::{self, FileKind, RawConfig, RawEmail, RawHub, RawSubscription};
use super::secret::url_has_password;

/// Defaults, as they would be written in the file.
pub(crate) mod defaults {
    pub const APPLICATION_NAME: &str = "hubee-sync";
    pub const TIMEOUT: &str = "60s";
    pub const MAX_PARALLEL_DOWNLOADS: i64 = 4;
    pub const MAX_PARALLEL_SUBSCRIPTIONS: i64 = 4;
    pub const MAX_PARALLEL_CASES: i64 = 16;
    pub const RETRY_ATTEMPTS: i64 = 5;
    pub const RETRY_BASE_DELAY: &str = "500ms";
    pub const RETRY_MAX_DELAY: &str = "60s";
    pub const DOWNLOAD_ATTEMPTS: i64 = 3;
    pub const STATE_URL: &str = "sqlite:///var/lib/hubee-sync/state.db";
    /// How long a node's hold on a subscription lasts without renewal (issue 11).
    pub const LEASE_TTL: &str = "30s";
    pub const DIGEST_SCHEDULE: &str = "0 0 8 * * Mon-Fri";
    pub const ALERT_AFTER: &str = "1h";
    pub const ALERT_EVERY: &str = "6h";
    pub const SCHEDULE: &str = "every 5m";
    pub const DELIVERY: &str = "spool";
    pub const SPOOL_ROOT: &str = "/var/spool/hubee-sync";
    pub const QUARANTINE_AFTER: &str = "24h";
    /// How long `outbox/sent/` and `outbox/failed/` keep a reply (CONTRACT "Outbox").
    pub const OUTBOX_RETENTION: &str = "90d";
}

/// Everything the files say, merged, defaults filled in.
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    /// The main file, as an absolute path.
    pub source: PathBuf,
    /// Its directory: relative paths in the main file resolve against it.
    pub dir: PathBuf,
    pub hub: HubInputs,
    pub state_url: String,
    /// `[state] node_name`; `None`: the host name.
    pub node_name: Option<String>,
    pub lease_ttl: String,
    pub email: Option<EmailInputs>,
    pub metrics: Option<super::metrics::RawMetrics>,
    pub subscriptions: Vec<SubscriptionInputs>,
}

#[derive(Debug, Clone)]
pub(crate) struct HubInputs {
    pub api_url: Option<String>,
    pub token_url: Option<String>,
    pub editor_name: Option<String>,
    pub application_name: String,
    pub proxy: Option<String>,
    pub ca_file: Option<String>,
    pub timeout: String,
    pub max_parallel_downloads: i64,
    pub max_parallel_subscriptions: i64,
    pub max_parallel_cases: i64,
    pub retry_attempts: i64,
    pub retry_base_delay: String,
    pub retry_max_delay: String,
    pub download_attempts: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct EmailInputs {
    pub smtp_url: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    pub digest_schedule: String,
    pub send_empty: bool,
    pub include_personal_data: bool,
    pub alert_after: String,
    pub alert_every: String,
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct SubscriptionInputs {
    /// The file it was written in.
    pub file: PathBuf,
    /// `subscription[N]`, counted from 1 within its file.
    pub label: String,
    pub name: Option<String>,
    pub process_code: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub client_secret_credential: Option<String>,
    pub schedule: String,
    pub receipt_status: Option<String>,
    pub delivery: String,
    pub spool: Option<String>,
    pub spool_group: Option<String>,
    pub database_url: Option<String>,
    pub email_to: Vec<String>,
    pub quarantine_after: String,
    pub outbox_retention: String,
}

/// Reads the main file and its includes. `None` when the main file could not be read or
/// parsed at all (the reason is in `errors`); otherwise the inputs, possibly with errors
/// beside them.
pub(crate) fn read(path: &Path, errors: &mut Collector) -> Option<Inputs> {
    let source = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = source
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let main = read_file(&source, FileKind::Main, errors)?;
    let mut subscriptions = subscriptions_of(&source, main.subscription.clone());

    let mut seen: HashSet<PathBuf> = HashSet::new();
    seen.insert(source.canonicalize().unwrap_or_else(|_| source.clone()));
    for (i, pattern) in main.include.iter().flatten().enumerate() {
        let label = format!("include[{}]", i + 1);
        for file in expand(pattern, &dir, &source, &label, errors) {
            let canonical = file.canonicalize().unwrap_or_else(|_| file.clone());
            if !seen.insert(canonical) {
                continue; // the main file itself, or matched by an earlier pattern
            }
            if let Some(included) = read_file(&file, FileKind::Included, errors) {
                subscriptions.extend(subscriptions_of(&file, included.subscription));
            }
        }
    }

    let state = main.state.unwrap_or_default();
    Some(Inputs {
        hub: hub_inputs(main.hub.unwrap_or_default()),
        state_url: state.url.unwrap_or_else(|| defaults::STATE_URL.to_string()),
        node_name: state.node_name,
        lease_ttl: state
            .lease_ttl
            .unwrap_or_else(|| defaults::LEASE_TTL.to_string()),
        email: main.email.map(email_inputs),
        metrics: main.metrics,
        subscriptions,
        source,
        dir,
    })
}

fn hub_inputs(raw: RawHub) -> HubInputs {
    HubInputs {
        api_url: raw.api_url,
        token_url: raw.token_url,
        editor_name: raw.editor_name,
        application_name: raw
            .application_name
            .unwrap_or_else(|| defaults::APPLICATION_NAME.into()),
        proxy: raw.proxy,
        ca_file: raw.ca_file,
        timeout: raw.timeout.unwrap_or_else(|| defaults::TIMEOUT.into()),
        max_parallel_downloads: raw
            .max_parallel_downloads
            .unwrap_or(defaults::MAX_PARALLEL_DOWNLOADS),
        max_parallel_subscriptions: raw
            .max_parallel_subscriptions
            .unwrap_or(defaults::MAX_PARALLEL_SUBSCRIPTIONS),
        max_parallel_cases: raw
            .max_parallel_cases
            .unwrap_or(defaults::MAX_PARALLEL_CASES),
        retry_attempts: raw.retry_attempts.unwrap_or(defaults::RETRY_ATTEMPTS),
        retry_base_delay: raw
            .retry_base_delay
            .unwrap_or_else(|| defaults::RETRY_BASE_DELAY.into()),
        retry_max_delay: raw
            .retry_max_delay
            .unwrap_or_else(|| defaults::RETRY_MAX_DELAY.into()),
        download_attempts: raw.download_attempts.unwrap_or(defaults::DOWNLOAD_ATTEMPTS),
    }
}

fn email_inputs(raw: RawEmail) -> EmailInputs {
    EmailInputs {
        smtp_url: raw.smtp_url,
        from: raw.from,
        to: raw.to,
        digest_schedule: raw
            .digest_schedule
            .unwrap_or_else(|| defaults::DIGEST_SCHEDULE.into()),
        send_empty: raw.send_empty.unwrap_or(false),
        include_personal_data: raw.include_personal_data.unwrap_or(false),
        alert_after: raw
            .alert_after
            .unwrap_or_else(|| defaults::ALERT_AFTER.into()),
        alert_every: raw
            .alert_every
            .unwrap_or_else(|| defaults::ALERT_EVERY.into()),
        ca_file: raw.ca_file,
    }
}

fn subscriptions_of(file: &Path, raw: Option<Vec<RawSubscription>>) -> Vec<SubscriptionInputs> {
    raw.unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, s)| SubscriptionInputs {
            file: file.to_path_buf(),
            label: format!("subscription[{}]", i + 1),
            name: s.name,
            process_code: s.process_code,
            client_id: s.client_id,
            client_secret: s.client_secret,
            client_secret_file: s.client_secret_file,
            client_secret_credential: s.client_secret_credential,
            schedule: s.schedule.unwrap_or_else(|| defaults::SCHEDULE.into()),
            receipt_status: s.receipt_status,
            delivery: s.delivery.unwrap_or_else(|| defaults::DELIVERY.into()),
            spool: s.spool,
            spool_group: s.spool_group,
            database_url: s.database_url,
            email_to: s.email_to.unwrap_or_default(),
            quarantine_after: s
                .quarantine_after
                .unwrap_or_else(|| defaults::QUARANTINE_AFTER.into()),
            outbox_retention: s
                .outbox_retention
                .unwrap_or_else(|| defaults::OUTBOX_RETENTION.into()),
        })
        .collect()
}

/// Reads, parses and checks the permissions of one file.
fn read_file(path: &Path, kind: FileKind, errors: &mut Collector) -> Option<RawConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let fix = match (e.kind(), kind) {
                (io::ErrorKind::NotFound, FileKind::Main) => "create it (the package ships a commented example) or give another path with --config PATH or $HUBEE_SYNC_CONFIG".to_string(),
                (io::ErrorKind::NotFound, FileKind::Included) => "create it or correct the include pattern".to_string(),
                (io::ErrorKind::PermissionDenied, _) => format!("let the service read it: chown root:hubee-sync {p}; chmod 0640 {p}", p = path.display()),
                (io::ErrorKind::InvalidData, _) => "save it as UTF-8 text".to_string(),
                _ => "check that it is a readable file".to_string(),
            };
            errors.push(path, "", format!("cannot be read: {e}"), fix);
            return None;
        }
    };
    let raw = raw::parse(&text, path, kind, errors)?;
    match std::fs::metadata(path) {
        Ok(meta) => check_mode(
            path,
            meta.permissions().mode() & 0o7777,
            holds_secret(&raw),
            errors,
        ),
        Err(e) => errors.push(
            path,
            "",
            format!("cannot be examined: {e}"),
            "check that it is a readable file",
        ),
    }
    Some(raw)
}

/// Whether a file holds a secret in clear: an inline `client_secret` or a password in a URL.
fn holds_secret(raw: &RawConfig) -> bool {
    let url_secret = |u: &Option<String>| u.as_deref().is_some_and(url_has_password);
    raw.hub.as_ref().is_some_and(|h| url_secret(&h.proxy))
        || raw.state.as_ref().is_some_and(|s| url_secret(&s.url))
        || raw.email.as_ref().is_some_and(|e| url_secret(&e.smtp_url))
        || raw
            .subscription
            .iter()
            .flatten()
            .any(|s| s.client_secret.is_some() || url_secret(&s.database_url))
}

/// A file others may write could redirect every télédossier; one holding a secret must not be
/// readable by others either.
pub(crate) fn check_mode(path: &Path, mode: u32, holds_secret: bool, errors: &mut Collector) {
    let p = path.display();
    if holds_secret && mode & 0o007 != 0 {
        errors.push(
            path,
            "",
            format!("holds a secret (client_secret, or a password in a URL) and is open to others (mode {mode:04o})"),
            format!("run `chmod 0640 {p}` and `chown root:hubee-sync {p}`, or move the secret to a client_secret_file"),
        );
    } else if mode & 0o002 != 0 {
        errors.push(
            path,
            "",
            format!("is writable by others (mode {mode:04o}): anyone on this machine could change where télédossiers go"),
            format!("run `chmod 0644 {p}` (or 0640)"),
        );
    }
}

/// The files an include pattern names, sorted by name.
fn expand(
    pattern: &str,
    dir: &Path,
    main: &Path,
    label: &str,
    errors: &mut Collector,
) -> Vec<PathBuf> {
    let full = dir.join(pattern);
    let (Some(parent), Some(last)) = (full.parent(), full.file_name().and_then(|n| n.to_str()))
    else {
        errors.push(
            main,
            label,
            format!("{pattern:?} does not name files"),
            "write a pattern such as \"/etc/hubee-sync/conf.d/*.toml\"",
        );
        return Vec::new();
    };
    let wild = |s: &str| s.contains(['*', '?', '[']);
    if parent
        .components()
        .any(|c| matches!(c, Component::Normal(n) if n.to_str().is_some_and(wild)))
    {
        errors.push(
            main,
            label,
            format!("{pattern:?} has a wildcard in a directory"),
            "wildcards (* and ?) are allowed only in the file name, e.g. \"/etc/hubee-sync/conf.d/*.toml\"",
        );
        return Vec::new();
    }
    if last.contains('[') {
        errors.push(
            main,
            label,
            format!("{pattern:?} uses [ ], which include does not support"),
            "use only * and ? in the file name",
        );
        return Vec::new();
    }
    if !wild(last) {
        return match std::fs::metadata(&full) {
            Ok(_) => vec![full],
            Err(e) => {
                errors.push(main, label, format!("{} cannot be read: {e}", full.display()), "create it, or correct the path (a pattern with * may match nothing; a plain file name must exist)");
                Vec::new()
            }
        };
    }
    let entries = match std::fs::read_dir(parent) {
        Ok(entries) => entries,
        Err(e) => {
            let problem = if e.kind() == io::ErrorKind::NotFound {
                format!("directory {} does not exist", parent.display())
            } else {
                format!("directory {} cannot be read: {e}", parent.display())
            };
            errors.push(
                main,
                label,
                problem,
                format!(
                    "create it (mkdir -p {}; an empty directory is fine) or remove the pattern",
                    parent.display()
                ),
            );
            return Vec::new();
        }
    };
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name.starts_with('.') && !last.starts_with('.') {
                    continue; // hidden files (editor leftovers) unless asked for
                }
                if glob_match(last, &name) {
                    names.push(name);
                }
            }
            Err(e) => errors.push(
                main,
                label,
                format!("directory {} cannot be listed: {e}", parent.display()),
                "check its permissions",
            ),
        }
    }
    names.sort();
    let mut files = Vec::new();
    for name in names {
        let path = parent.join(&name);
        if path.is_dir() {
            errors.push(
                main,
                label,
                format!("{} is a directory", path.display()),
                "make the pattern match files only, e.g. *.toml",
            );
        } else {
            files.push(path);
        }
    }
    files
}

/// `*` matches any run of characters, `?` exactly one.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_star_and_question_mark() {
        assert!(glob_match("*.toml", "a.toml"));
        assert!(glob_match("*.toml", ".toml"));
        assert!(!glob_match("*.toml", "a.toml.bak"));
        assert!(glob_match("org-??.toml", "org-01.toml"));
        assert!(!glob_match("org-??.toml", "org-1.toml"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXbYbc"));
    }
}
