//! Stage 3 — validated settings with strong types. Code after start-up only sees these.
//!
//! [`validate`] turns the merged inputs of stage 2 into [`Settings`], checking every value
//! and pushing every problem it finds; it also looks at the files the configuration names
//! (secret files, `ca_file`) so that a bad path is a configuration error, not a failure at
//! 3 a.m.

use std::collections::HashMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::duration::parse_duration;
use super::error::Collector;
use super::inputs::{defaults, EmailInputs, HubInputs, Inputs, SubscriptionInputs};
pub use super::schedule::Schedule;
use super::secret::{redact_url, redact_url_str, url_has_password};
pub use super::secret::{Secret, SecretError, SecretSource};
use super::suggest::closest;
use super::transliterate::to_ascii;
use crate::hubee::status::CaseStatus;

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The main configuration file (absolute).
    pub source: PathBuf,
    pub hub: HubSettings,
    pub state: StateSettings,
    /// `None` when there is no `[email]` section: no digest, no alert mail.
    pub email: Option<EmailSettings>,
    /// `None` when there is no `[metrics]` section: nothing is served.
    pub metrics: Option<super::metrics::MetricsSettings>,
    /// In file order: the main file's first, then each included file's, files sorted by name.
    pub subscriptions: Vec<Subscription>,
}

/// How to reach the hub.
#[derive(Clone)]
pub struct HubSettings {
    /// API base as written, without a trailing `/` in its path (`/teledossiers/v1` is
    /// appended by the client). https, or http to a loopback address (tests, a local fake).
    pub api_url: Url,
    pub token_url: Url,
    /// As written (for messages and the digest).
    pub editor_name: String,
    /// `editor_name` in ASCII for the `editorName` header; at most 50 characters.
    pub editor_name_header: String,
    /// The `applicationName` header: ASCII, at most 50 characters.
    pub application_name: String,
    /// Forced proxy; `None` means HTTPS_PROXY/NO_PROXY from the environment. May carry a
    /// password: print it with [`HubSettings::proxy_redacted`].
    pub proxy: Option<Url>,
    /// Extra CA certificates (PEM), added to the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Connect and idle timeout of one request.
    pub timeout: Duration,
    /// Attachments downloaded at once, per subscription.
    pub max_parallel_downloads: usize,
    /// Subscriptions whose cycles run at the same time (`run` and `once`); the others wait
    /// for a free slot.
    pub max_parallel_subscriptions: usize,
    /// Cases (and events) of one subscription worked at the same time within a batch.
    pub max_parallel_cases: usize,
    /// Total tries of an idempotent call (1 = no retry).
    pub retry_attempts: u32,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Tries of one attachment download within a cycle.
    pub download_attempts: u32,
}

impl Settings {
    /// The subscription of that name, if any.
    pub fn subscription(&self, name: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| s.name == name)
    }
}

impl HubSettings {
    /// `api_url` as text without a trailing `/` (a URL with an empty path always prints one:
    /// `https://host/`), ready for `format!("{}/teledossiers/v1/…", hub.api_base())`.
    pub fn api_base(&self) -> &str {
        self.api_url.as_str().trim_end_matches('/')
    }

    /// The proxy URL with its password hidden, for logs.
    pub fn proxy_redacted(&self) -> Option<String> {
        self.proxy.as_ref().map(|p| {
            let mut p = p.clone();
            redact_url(&mut p);
            p.to_string()
        })
    }
}

impl fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("api_url", &self.api_url.as_str())
            .field("token_url", &self.token_url.as_str())
            .field("editor_name", &self.editor_name)
            .field("editor_name_header", &self.editor_name_header)
            .field("application_name", &self.application_name)
            .field("proxy", &self.proxy_redacted())
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("max_parallel_downloads", &self.max_parallel_downloads)
            .field(
                "max_parallel_subscriptions",
                &self.max_parallel_subscriptions,
            )
            .field("max_parallel_cases", &self.max_parallel_cases)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("download_attempts", &self.download_attempts)
            .finish()
    }
}

/// Where hubee-sync keeps its own record (what was delivered, acknowledged, parked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    pub url: StateUrl,
    /// This node's name among the nodes sharing a PostgreSQL state database (issue 11):
    /// `[state] node_name`, else the host name. `[A-Za-z0-9._-]`, at most 64 characters.
    pub node_name: String,
    /// How long a node's hold on a subscription lasts without renewal: a dead node's
    /// subscriptions are taken over by the others after at most this long.
    pub lease_ttl: Duration,
}

/// The shortest `lease_ttl` accepted: renewals run every third of it, and a renewal is one
/// short query, so 2 s still leaves room (tests use it; production keeps the 30 s default).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(600);

/// The host name, the default node name (`localhost` if it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUrl {
    /// An SQLite file, absolute (a relative path was resolved against the config's directory).
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL, as written (it may hold a password).
    Postgres(Secret),
}

/// Digest and alert mail.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// `smtp://host:25`, `smtps://user:pass@host:465`, `smtp://…?tls=required`.
    pub smtp_url: Secret,
    /// `a@b` or `Name <a@b>`.
    pub from: String,
    pub to: Vec<String>,
    /// Cron with seconds, Europe/Paris (checked like a subscription's schedule).
    pub digest_schedule: String,
    /// Send the digest even when nothing happened.
    pub send_empty: bool,
    /// Whether the digest may name applicants (off: only ids and counts).
    pub include_personal_data: bool,
    /// A subscription failing for this long raises an alert mail…
    pub alert_after: Duration,
    /// …repeated this often while it keeps failing.
    pub alert_every: Duration,
    /// Extra CA certificates (PEM) trusted for the SMTP server, beside the system's.
    pub ca_file: Option<PathBuf>,
}

/// One HubEE subscription: a démarche, its credentials, and where its télédossiers go.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Unique, `[a-z0-9_-]{1,64}`: in logs, paths and the state database.
    pub name: String,
    /// As written (case matters to the hub).
    pub process_code: String,
    pub client_id: String,
    pub secret: SecretSource,
    pub schedule: Schedule,
    /// Where a received case is walked to; always a receipt status.
    pub receipt_status: CaseStatus,
    pub delivery: Delivery,
    /// Extra digest recipients for this subscription.
    pub email_to: Vec<String>,
    /// Parked work still failing after this long is quarantined.
    pub quarantine_after: Duration,
    /// Replies in `outbox/sent/` and `outbox/failed/` older than this are removed.
    pub outbox_retention: Duration,
    /// The file it was defined in (main or included).
    pub source: PathBuf,
}

/// Where a subscription's télédossiers are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A Maildir-style spool (absolute; distinct from and not nested in any other spool).
    Spool {
        path: PathBuf,
        group: Option<String>,
    },
    /// A business database: `postgres://…`, or `sqlite:///abs/path` (a relative SQLite path
    /// was resolved against the directory of the file that names it). The spool still holds
    /// quarantine/ and outbox/.
    Database {
        url: Secret,
        spool: PathBuf,
        group: Option<String>,
    },
}

/// What validation may look at in the environment (so tests need not change it).
#[derive(Debug, Clone, Default)]
pub(crate) struct Env {
    pub credentials_directory: Option<PathBuf>,
}

impl Env {
    pub(crate) fn from_process() -> Env {
        Env {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

/// Checks everything; `None` if anything is wrong (all of it in `errors`).
pub(crate) fn validate(inputs: Inputs, env: &Env, errors: &mut Collector) -> Option<Settings> {
    let main = inputs.source.clone();
    let hub = validate_hub(&inputs.hub, &main, &inputs.dir, errors);
    let state = match parse_database_url(&inputs.state_url, &inputs.dir) {
        Ok(DbUrl::Sqlite(path)) => Some(StateUrl::Sqlite(path)),
        Ok(DbUrl::Postgres(url)) => Some(StateUrl::Postgres(url)),
        Err(why) => {
            errors.push(
                &main,
                "state.url",
                format!("{} {why}", shown(&inputs.state_url)),
                "write \"sqlite:///var/lib/hubee-sync/state.db\" (a relative path is relative to this file) or \"postgres://user@host/db\"",
            );
            None
        }
    };
    let node_name = match &inputs.node_name {
        Some(n) if valid_node_name(n) => Some(n.clone()),
        Some(n) => {
            errors.push(
                &main,
                "state.node_name",
                format!("{n:?} is not a node name"),
                "write 1 to 64 characters among letters, digits, '.', '_' and '-', unique among the nodes (e.g. \"hubee-1\")",
            );
            None
        }
        None => {
            let host = host_name();
            // A host name with other characters is cut down to the allowed ones.
            let cleaned: String = host
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(64)
                .collect();
            Some(if cleaned.is_empty() {
                "localhost".into()
            } else {
                cleaned
            })
        }
    };
    let lease_ttl = duration(
        &inputs.lease_ttl,
        &main,
        "state.lease_ttl",
        MIN_LEASE_TTL,
        MAX_LEASE_TTL,
        errors,
    );
    let email = match &inputs.email {
        Some(e) => validate_email(e, &main, &inputs.dir, errors).map(Some),
        None => Some(None),
    };
    let metrics = super::metrics::validate(&inputs.metrics, &main, errors);
    let mut subscriptions = Vec::new();
    let mut names: HashMap<String, (PathBuf, String)> = HashMap::new();
    for sub in &inputs.subscriptions {
        if let Some(name) = &sub.name {
            if let Some((file, label)) = names.get(name) {
                errors.push(
                    &sub.file,
                    format!("{}.name", sub.label),
                    format!(
                        "{name:?} is already the name of {label} in {}",
                        file.display()
                    ),
                    "give each subscription its own name",
                );
            } else {
                names.insert(name.clone(), (sub.file.clone(), sub.label.clone()));
            }
        }
        if let Some(s) = validate_subscription(sub, inputs.email.is_some(), env, errors) {
            subscriptions.push(s);
        }
    }
    check_spools(&subscriptions, &inputs.subscriptions, errors);

    if !errors.is_empty() {
        return None;
    }
    Some(Settings {
        source: inputs.source,
        hub: hub?,
        state: StateSettings {
            url: state?,
            node_name: node_name?,
            lease_ttl: lease_ttl?,
        },
        email: email?,
        metrics: metrics?,
        subscriptions,
    })
}

fn validate_hub(
    h: &HubInputs,
    file: &Path,
    dir: &Path,
    errors: &mut Collector,
) -> Option<HubSettings> {
    let api_url = required(&h.api_url, file, "hub.api_url", "api_url = \"https://api.bas.hubee.numerique.gouv.fr\" to [hub] (production: https://api.hubee.numerique.gouv.fr)", errors)
        .and_then(|v| hub_url(v, file, "hub.api_url", errors));
    let token_url = required(&h.token_url, file, "hub.token_url", "token_url = \"https://auth.bas.hubee.numerique.gouv.fr/oauth2/token\" to [hub] (production: https://auth.hubee.numerique.gouv.fr/oauth2/token)", errors)
        .and_then(|v| hub_url(v, file, "hub.token_url", errors));
    let editor = required(
        &h.editor_name,
        file,
        "hub.editor_name",
        "editor_name = \"Commune de …\" (your organisation, as registered with HubEE) to [hub]",
        errors,
    )
    .and_then(|v| editor_name(v, file, errors));

    let application_name = {
        let a = &h.application_name;
        if a.is_empty() || a.len() > 50 || !a.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            errors.push(
                file,
                "hub.application_name",
                format!("{a:?} must be 1 to 50 plain ASCII characters"),
                format!(
                    "write application_name = \"{}\" or leave it out",
                    defaults::APPLICATION_NAME
                ),
            );
            None
        } else {
            Some(a.clone())
        }
    };
    let proxy = match &h.proxy {
        None => Some(None),
        Some(p) => match Url::parse(p) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                Some(Some(u))
            }
            _ => {
                errors.push(file, "hub.proxy", format!("{} is not an http:// or https:// proxy URL", shown(p)), "write proxy = \"http://proxy.rie.example:3128\", or leave it out to use HTTPS_PROXY/NO_PROXY");
                None
            }
        },
    };
    let ca_file = ca_file(
        h.ca_file.as_deref(),
        dir,
        file,
        "hub.ca_file",
        "put the CA certificate(s) in it in PEM form (-----BEGIN CERTIFICATE-----)",
        "create it with the extra CA certificate(s) in PEM form, readable by the service, or remove ca_file",
        errors,
    );

    let timeout = duration(
        &h.timeout,
        file,
        "hub.timeout",
        Duration::from_secs(1),
        Duration::from_secs(3600),
        errors,
    );
    let max_parallel_downloads = number(
        h.max_parallel_downloads,
        file,
        "hub.max_parallel_downloads",
        1,
        64,
        errors,
    );
    let max_parallel_subscriptions = number(
        h.max_parallel_subscriptions,
        file,
        "hub.max_parallel_subscriptions",
        1,
        64,
        errors,
    );
    let max_parallel_cases = number(
        h.max_parallel_cases,
        file,
        "hub.max_parallel_cases",
        1,
        64,
        errors,
    );
    let retry_attempts = number(h.retry_attempts, file, "hub.retry_attempts", 1, 20, errors);
    let download_attempts = number(
        h.download_attempts,
        file,
        "hub.download_attempts",
        1,
        20,
        errors,
    );
    let retry_base_delay = duration(
        &h.retry_base_delay,
        file,
        "hub.retry_base_delay",
        Duration::from_millis(1),
        Duration::from_secs(3600),
        errors,
    );
    let retry_max_delay = duration(
        &h.retry_max_delay,
        file,
        "hub.retry_max_delay",
        Duration::from_millis(1),
        Duration::from_secs(86400),
        errors,
    );
    if let (Some(base), Some(max)) = (retry_base_delay, retry_max_delay) {
        if max < base {
            errors.push(
                file,
                "hub.retry_max_delay",
                format!(
                    "{:?} is shorter than retry_base_delay ({:?})",
                    h.retry_max_delay, h.retry_base_delay
                ),
                "make retry_max_delay at least retry_base_delay",
            );
        }
    }
    let (editor_name, editor_name_header) = editor?;
    Some(HubSettings {
        api_url: api_url?,
        token_url: token_url?,
        editor_name,
        editor_name_header,
        application_name: application_name?,
        proxy: proxy?,
        ca_file: ca_file?,
        timeout: timeout?,
        max_parallel_downloads: usize::try_from(max_parallel_downloads?).ok()?,
        max_parallel_subscriptions: usize::try_from(max_parallel_subscriptions?).ok()?,
        max_parallel_cases: usize::try_from(max_parallel_cases?).ok()?,
        retry_attempts: u32::try_from(retry_attempts?).ok()?,
        retry_base_delay: retry_base_delay?,
        retry_max_delay: retry_max_delay?,
        download_attempts: u32::try_from(download_attempts?).ok()?,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn editor_name(name: &str, file: &Path, errors: &mut Collector) -> Option<(String, String)> {
    if name.trim().is_empty() {
        errors.push(
            file,
            "hub.editor_name",
            "is empty",
            "write your organisation's name, e.g. editor_name = \"Commune de Saint-Exemple\"",
        );
        return None;
    }
    if name.chars().any(char::is_control) {
        errors.push(
            file,
            "hub.editor_name",
            "holds a control character (a line break or tab)",
            "write the name on one line",
        );
        return None;
    }
    let header = to_ascii(name);
    if header.chars().count() > 50 {
        errors.push(file, "hub.editor_name", format!("{name:?} is {} characters long once in ASCII ({header:?}); the hub accepts at most 50", header.chars().count()), "shorten it (abbreviate \"Communauté de communes\" as \"CC\", for instance)");
        return None;
    }
    Some((name.to_string(), header))
}

/// An https URL, or http to a loopback address (a local fake hub); no credentials, no query.
fn hub_url(text: &str, file: &Path, key: &str, errors: &mut Collector) -> Option<Url> {
    let mut url = match Url::parse(text.trim()) {
        Ok(u) => u,
        Err(e) => {
            errors.push(
                file,
                key,
                format!("{} is not a URL ({e})", shown(text)),
                "write the full URL, e.g. \"https://api.bas.hubee.numerique.gouv.fr\"",
            );
            return None;
        }
    };
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.host().is_none() || !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
        errors.push(file, key, format!("{} is not an https:// URL", shown(text)), "the hub is reached over https only (http is accepted for localhost, for tests); write \"https://…\"");
        return None;
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        errors.push(
            file,
            key,
            format!("{} has a user, a query or a fragment", shown(text)),
            "write only scheme, host and path: credentials belong in the subscriptions",
        );
        return None;
    }
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Some(url)
}

fn validate_email(
    e: &EmailInputs,
    file: &Path,
    dir: &Path,
    errors: &mut Collector,
) -> Option<EmailSettings> {
    let smtp_url = required(&e.smtp_url, file, "email.smtp_url", "smtp_url = \"smtp://127.0.0.1:25\" to [email], or remove the [email] section", errors).and_then(|u| {
        match Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "smtp" | "smtps") && url.host_str().is_some_and(|h| !h.is_empty()) => {
                // The email room reads the same URL (email::smtp); only `tls=required`
                // (STARTTLS, refused if the server does not offer it) is a choice here.
                match url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned()) {
                    Some(v) if v != "required" => {
                        errors.push(file, "email.smtp_url", format!("{}: tls={v:?} is not supported", shown(u)), "write ?tls=required for STARTTLS (the connection fails if the server does not offer it), use smtps:// for implicit TLS, or leave tls out for a plain connection to a local relay");
                        None
                    }
                    _ => Some(Secret::new(u.clone())),
                }
            }
            _ => {
                errors.push(file, "email.smtp_url", format!("{} is not an smtp:// or smtps:// URL", shown(u)), "write \"smtp://127.0.0.1:25\", \"smtps://user:pass@host:465\" or \"smtp://host:587?tls=required\"");
                None
            }
        }
    });
    let from = required(
        &e.from,
        file,
        "email.from",
        "from = \"hubee-sync <hubee@mairie.example>\" to [email]",
        errors,
    )
    .and_then(|f| {
        let bare = match (f.rfind('<'), f.ends_with('>')) {
            (Some(i), true) => &f[i + 1..f.len() - 1],
            _ => f.as_str(),
        };
        if loose_address(bare) {
            Some(f.clone())
        } else {
            errors.push(
                file,
                "email.from",
                format!("{f:?} is not an address"),
                "write \"hubee@mairie.example\" or \"hubee-sync <hubee@mairie.example>\"",
            );
            None
        }
    });
    let to = required(
        &e.to,
        file,
        "email.to",
        "to = [\"dsi@mairie.example\"] to [email]",
        errors,
    )
    .and_then(|list| {
        if list.is_empty() {
            errors.push(
                file,
                "email.to",
                "is empty",
                "name at least one recipient: to = [\"dsi@mairie.example\"]",
            );
            return None;
        }
        addresses(list, file, "email.to", errors)
    });
    let digest_schedule = match e.digest_schedule.parse::<Schedule>() {
        Ok(Schedule::Cron(c)) => Some(c),
        Ok(Schedule::Every(_)) => {
            errors.push(file, "email.digest_schedule", format!("{:?} is an interval, but the digest goes out at set times", e.digest_schedule), "write a cron with seconds, e.g. \"0 0 8 * * Mon-Fri\" (8:00, Monday to Friday, Paris time)");
            None
        }
        Err(why) => {
            errors.push(
                file,
                "email.digest_schedule",
                why,
                "write a cron with seconds, e.g. \"0 0 8 * * Mon-Fri\"",
            );
            None
        }
    };
    let alert_after = duration(
        &e.alert_after,
        file,
        "email.alert_after",
        Duration::from_secs(1),
        Duration::from_secs(30 * 86400),
        errors,
    );
    let alert_every = duration(
        &e.alert_every,
        file,
        "email.alert_every",
        Duration::from_secs(60),
        Duration::from_secs(30 * 86400),
        errors,
    );
    let ca_file = ca_file(
        e.ca_file.as_deref(),
        dir,
        file,
        "email.ca_file",
        "put the CA certificate(s) of the SMTP server in it in PEM form (-----BEGIN CERTIFICATE-----)",
        "create it with the SMTP server's CA certificate(s) in PEM form, readable by the service, or remove ca_file",
        errors,
    );

    Some(EmailSettings {
        smtp_url: smtp_url?,
        from: from?,
        to: to?,
        digest_schedule: digest_schedule?,
        send_empty: e.send_empty,
        include_personal_data: e.include_personal_data,
        alert_after: alert_after?,
        alert_every: alert_every?,
        ca_file: ca_file?,
    })
}

/// One `@` with something on both sides, no whitespace, no angle brackets.
fn loose_address(a: &str) -> bool {
    let mut parts = a.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && !d.is_empty())
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',')
}

fn addresses(
    list: &[String],
    file: &Path,
    key: &str,
    errors: &mut Collector,
) -> Option<Vec<String>> {
    let mut ok = true;
    for (i, a) in list.iter().enumerate() {
        if !loose_address(a) {
            errors.push(
                file,
                format!("{key}[{}]", i + 1),
                format!("{a:?} is not an address"),
                "write a bare address such as \"dsi@mairie.example\"",
            );
            ok = false;
        }
    }
    ok.then(|| list.to_vec())
}

fn validate_subscription(
    s: &SubscriptionInputs,
    email: bool,
    env: &Env,
    errors: &mut Collector,
) -> Option<Subscription> {
    let file = s.file.as_path();
    let dir = file.parent().unwrap_or(Path::new("/"));
    let key = |k: &str| format!("{}.{k}", s.label);

    let name = required(&s.name, file, &key("name"), "name = \"certdc\" (unique; lowercase letters, digits, - and _)", errors).and_then(|n| {
        if n.is_empty() || n.len() > 64 || !n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            errors.push(file, key("name"), format!("{n:?} is not a valid name"), "use 1 to 64 lowercase letters, digits, - and _ (it becomes a directory name), e.g. \"certdc\"");
            None
        } else {
            Some(n.clone())
        }
    });
    let process_code = required(&s.process_code, file, &key("process_code"), "process_code = \"CERTDC\" (the démarche's code, as HubEE spells it)", errors).and_then(|p| {
        if p.is_empty() || p.chars().count() > 30 || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(file, key("process_code"), format!("{p:?} is not a process code"), "write the démarche's code exactly as HubEE spells it (1 to 30 characters, no spaces), e.g. \"CERTDC\"");
            None
        } else {
            Some(p.clone())
        }
    });
    let client_id = required(
        &s.client_id,
        file,
        &key("client_id"),
        "client_id = \"…\" (from the HubEE portal, Gestion des abonnements)",
        errors,
    )
    .and_then(|c| {
        if c.is_empty() || c.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            errors.push(
                file,
                key("client_id"),
                "is empty or holds spaces",
                "copy the client id from the HubEE portal (Gestion des abonnements) without spaces",
            );
            None
        } else {
            Some(c.clone())
        }
    });
    let secret = secret_source(s, dir, env, errors);
    let schedule = match s.schedule.parse::<Schedule>() {
        Ok(sch) => Some(sch),
        Err(why) => {
            // `why` quotes the schedule and ends with how to write one.
            let (problem, fix) = match why.split_once(" — ") {
                Some((p, f)) => (p.to_string(), f.to_string()),
                None => (
                    why,
                    r#"write a cron with seconds ("0 */5 * * * *") or "every 5m""#.to_string(),
                ),
            };
            errors.push(file, key("schedule"), problem, fix);
            None
        }
    };
    let receipt_status = match &s.receipt_status {
        None => process_code.as_deref().map(CaseStatus::default_receipt_for),
        Some(text) => {
            const RECEIPTS: [&str; 3] = ["SENT", "SI_RECEIVED", "IN_PROGRESS"];
            match text.parse::<CaseStatus>() {
                Ok(st) if st.is_receipt_status() => Some(st),
                Ok(st) => {
                    errors.push(file, key("receipt_status"), format!("{st} is not a receipt status: receiving a case only acknowledges it"), "use SENT, SI_RECEIVED or IN_PROGRESS (or leave it out for the démarche's default); decisions such as DONE go through the outbox");
                    None
                }
                Err(_) => {
                    let fix = match closest(text, RECEIPTS) {
                        Some(c) => format!("did you mean \"{c}\"?"),
                        None => "use SENT, SI_RECEIVED or IN_PROGRESS, or leave it out for the démarche's default".into(),
                    };
                    errors.push(
                        file,
                        key("receipt_status"),
                        format!("{text:?} is not a case status"),
                        fix,
                    );
                    None
                }
            }
        }
    };
    let delivery = delivery(s, name.as_deref(), dir, errors);
    let email_to = if s.email_to.is_empty() {
        Some(Vec::new())
    } else if !email {
        errors.push(
            file,
            key("email_to"),
            "is set, but there is no [email] section to send with",
            "add an [email] section to the main file, or remove email_to",
        );
        None
    } else {
        addresses(&s.email_to, file, &key("email_to"), errors)
    };
    let quarantine_after = duration(
        &s.quarantine_after,
        file,
        &key("quarantine_after"),
        Duration::from_secs(1),
        Duration::from_secs(365 * 86400),
        errors,
    );
    let outbox_retention = duration(
        &s.outbox_retention,
        file,
        &key("outbox_retention"),
        Duration::from_secs(60),
        Duration::from_secs(10 * 365 * 86400),
        errors,
    );
    Some(Subscription {
        name: name?,
        process_code: process_code?,
        client_id: client_id?,
        secret: secret?,
        schedule: schedule?,
        receipt_status: receipt_status?,
        delivery: delivery?,
        email_to: email_to?,
        quarantine_after: quarantine_after?,
        outbox_retention: outbox_retention?,
        source: s.file.clone(),
    })
}

fn secret_source(
    s: &SubscriptionInputs,
    dir: &Path,
    env: &Env,
    errors: &mut Collector,
) -> Option<SecretSource> {
    let file = s.file.as_path();
    let given: Vec<&str> = [
        ("client_secret", s.client_secret.is_some()),
        ("client_secret_file", s.client_secret_file.is_some()),
        (
            "client_secret_credential",
            s.client_secret_credential.is_some(),
        ),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| *k)
    .collect();
    match given.len() {
        0 => {
            errors.push(file, format!("{}.client_secret_file", s.label), "is missing: the subscription has no client secret", "add client_secret_file = \"/etc/hubee-sync/secrets/NAME\" (or client_secret_credential = \"NAME\" under systemd, or client_secret = \"…\")");
            return None;
        }
        1 => {}
        _ => {
            errors.push(file, format!("{}.{}", s.label, given[1]), format!("{} are all set; only one may be", given.join(" and ")), "keep one way to give the secret, preferably client_secret_file or client_secret_credential");
            return None;
        }
    }
    if let Some(secret) = &s.client_secret {
        if secret.trim().is_empty() {
            errors.push(
                file,
                format!("{}.client_secret", s.label),
                "is empty",
                "write the secret from the HubEE portal, or better, put it in a client_secret_file",
            );
            return None;
        }
        return Some(SecretSource::Inline(Secret::new(secret.clone())));
    }
    if let Some(path) = &s.client_secret_file {
        let key = format!("{}.client_secret_file", s.label);
        if path.trim().is_empty() {
            errors.push(file, key, "is empty", "write the path of the file holding the secret, e.g. \"/etc/hubee-sync/secrets/certdc\"");
            return None;
        }
        let source = SecretSource::File(dir.join(path));
        return match source.load_with(None) {
            Ok(_) => Some(source),
            Err(e) => {
                errors.push(file, key, e.problem(), e.fix());
                None
            }
        };
    }
    let name = s.client_secret_credential.as_deref().unwrap_or_default();
    let key = format!("{}.client_secret_credential", s.label);
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        errors.push(
            file,
            key,
            format!("{name:?} is not a credential name"),
            "write the name given to LoadCredential= in the unit, e.g. \"certdc\"",
        );
        return None;
    }
    let source = SecretSource::Credential {
        name: name.to_string(),
    };
    // Under systemd (ExecStartPre=hubee-sync validate) the credential can be checked now;
    // from a shell it cannot, and the daemon will say so at start.
    if let Some(dir) = &env.credentials_directory {
        if let Err(e) = source.load_with(Some(dir)) {
            errors.push(file, key, e.problem(), e.fix());
            return None;
        }
    }
    Some(source)
}

/// Where a subscription's spool is, and its group: `spool` (absolute, no `..`), by default
/// SPOOL_ROOT/NAME; `spool_group` a plain group name.
fn spool_location(
    s: &SubscriptionInputs,
    name: Option<&str>,
    errors: &mut Collector,
) -> Option<(PathBuf, Option<String>)> {
    let file = s.file.as_path();
    let key = |k: &str| format!("{}.{k}", s.label);
    let mut ok = true;
    let group = match &s.spool_group {
        Some(g) if !valid_group(g) => {
            errors.push(file, key("spool_group"), format!("{g:?} is not a group name"), "write the name of the group of the software that reads the spool, e.g. \"etatcivil\"");
            ok = false;
            None
        }
        other => other.clone(),
    };
    let path = match &s.spool {
        Some(p) => {
            let path = Path::new(p);
            if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
                errors.push(
                    file,
                    key("spool"),
                    format!("{p:?} is not an absolute path without .."),
                    format!(
                        "write the full path, e.g. \"{}/{}\"",
                        defaults::SPOOL_ROOT,
                        name.unwrap_or("NAME")
                    ),
                );
                return None;
            }
            path.components().collect::<PathBuf>()
        }
        None => Path::new(defaults::SPOOL_ROOT).join(name?),
    };
    ok.then_some((path, group))
}

fn delivery(
    s: &SubscriptionInputs,
    name: Option<&str>,
    dir: &Path,
    errors: &mut Collector,
) -> Option<Delivery> {
    let file = s.file.as_path();
    let key = |k: &str| format!("{}.{k}", s.label);
    match s.delivery.as_str() {
        "spool" => {
            let mut ok = true;
            if s.database_url.is_some() {
                errors.push(file, key("database_url"), "is set, but delivery is \"spool\"", "write delivery = \"database\" to deliver into that database, or remove database_url");
                ok = false;
            }
            let (path, group) = spool_location(s, name, errors)?;
            ok.then_some(Delivery::Spool { path, group })
        }
        "database" => {
            // The spool still holds quarantine/ and outbox/ for a database subscription.
            let location = spool_location(s, name, errors);
            let text = required(&s.database_url, file, &key("database_url"), "database_url = \"postgres://user@host/db\" (or \"sqlite:///path/to/file.db\"), since delivery = \"database\"", errors)?;
            let url = match parse_database_url(text, dir) {
                Ok(DbUrl::Sqlite(path)) => Secret::new(format!("sqlite://{}", path.display())),
                Ok(DbUrl::Postgres(url)) => url,
                Err(why) => {
                    errors.push(
                        file,
                        key("database_url"),
                        format!("{} {why}", shown(text)),
                        "write \"postgres://user@host/db\" or \"sqlite:///path/to/file.db\"",
                    );
                    return None;
                }
            };
            let (spool, group) = location?;
            Some(Delivery::Database { url, spool, group })
        }
        other => {
            let fix = match closest(other, ["spool", "database"]) {
                Some(c) => format!("did you mean \"{c}\"?"),
                None => "write \"spool\" or \"database\"".into(),
            };
            errors.push(
                file,
                key("delivery"),
                format!("{other:?} is not a kind of delivery"),
                fix,
            );
            None
        }
    }
}

/// An extra CA file (`[hub] ca_file`, `[email] ca_file`): relative to the config's
/// directory, readable, holding at least one PEM certificate. `Some(None)` when not set,
/// `None` after an error was recorded.
fn ca_file(
    value: Option<&str>,
    dir: &Path,
    file: &Path,
    key: &str,
    fix_not_pem: &str,
    fix_unreadable: &str,
    errors: &mut Collector,
) -> Option<Option<PathBuf>> {
    let Some(p) = value else { return Some(None) };
    let path = dir.join(p);
    match std::fs::read(&path) {
        Ok(bytes) if contains(&bytes, b"-----BEGIN CERTIFICATE-----") => Some(Some(path)),
        Ok(_) => {
            errors.push(
                file,
                key,
                format!("{} holds no PEM certificate", path.display()),
                fix_not_pem,
            );
            None
        }
        Err(err) => {
            errors.push(
                file,
                key,
                format!("{} cannot be read: {err}", path.display()),
                fix_unreadable,
            );
            None
        }
    }
}

fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 32
        && !g.starts_with('-')
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Two subscriptions writing the same spool, or one spool inside another, would mix or
/// swallow each other's entries.
fn check_spools(subs: &[Subscription], inputs: &[SubscriptionInputs], errors: &mut Collector) {
    let spools: Vec<(&Path, &Subscription)> = subs
        .iter()
        .map(|s| match &s.delivery {
            Delivery::Spool { path, .. } => (path.as_path(), s),
            Delivery::Database { spool, .. } => (spool.as_path(), s),
        })
        .collect();
    for (i, (path, sub)) in spools.iter().enumerate() {
        for (other_path, other) in &spools[..i] {
            let problem = if path == other_path {
                format!(
                    "{} is also the spool of subscription {:?}",
                    path.display(),
                    other.name
                )
            } else if path.starts_with(other_path) {
                format!(
                    "{} is inside the spool of subscription {:?} ({})",
                    path.display(),
                    other.name,
                    other_path.display()
                )
            } else if other_path.starts_with(path) {
                format!(
                    "{} holds the spool of subscription {:?} ({})",
                    path.display(),
                    other.name,
                    other_path.display()
                )
            } else {
                continue;
            };
            let label = inputs
                .iter()
                .find(|inp| {
                    inp.name.as_deref() == Some(sub.name.as_str()) && inp.file == sub.source
                })
                .map_or_else(|| sub.name.clone(), |inp| inp.label.clone());
            errors.push(
                &sub.source,
                format!("{label}.spool"),
                problem,
                format!(
                    "give each subscription its own spool side by side, e.g. \"{}/{}\"",
                    defaults::SPOOL_ROOT,
                    sub.name
                ),
            );
        }
    }
}

enum DbUrl {
    Sqlite(PathBuf),
    Postgres(Secret),
}

/// `sqlite:///abs`, `sqlite://rel/path`, `sqlite:rel` (relative to `dir`), `postgres://…`,
/// `postgresql://…`. The error completes "URL …".
fn parse_database_url(text: &str, dir: &Path) -> Result<DbUrl, String> {
    let t = text.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        return match Url::parse(t) {
            Ok(u)
                if u.host_str().is_some_and(|h| !h.is_empty())
                    || u.query().is_some_and(|q| q.contains("host=")) =>
            {
                Ok(DbUrl::Postgres(Secret::new(t.to_string())))
            }
            Ok(_) => Err("has no host".into()),
            Err(e) => Err(format!("is not a URL ({e})")),
        };
    }
    let rest = t
        .strip_prefix("sqlite://")
        .or_else(|| t.strip_prefix("sqlite:"))
        .ok_or_else(|| "is neither sqlite: nor postgres://".to_string())?;
    if rest.is_empty() {
        return Err("names no file".into());
    }
    if rest.contains(":memory:") || rest.starts_with("file:") {
        return Err("is not a file: the record must survive a restart".into());
    }
    if rest.contains('?') {
        return Err("has options after `?`, which are not supported here".into());
    }
    let path = dir.join(rest);
    Ok(DbUrl::Sqlite(path.components().collect()))
}

/// A value fit to quote in a message: URLs with a password are shown with it hidden.
fn shown(text: &str) -> String {
    if url_has_password(text) {
        format!("{:?}", redact_url_str(text))
    } else if text.contains('@') && text.contains("://") {
        // Unparseable but credential-shaped: say nothing of it.
        "the URL".into()
    } else {
        format!("{text:?}")
    }
}

fn required<'a, T>(
    value: &'a Option<T>,
    file: &Path,
    key: &str,
    add: &str,
    errors: &mut Collector,
) -> Option<&'a T> {
    if value.is_none() {
        errors.push(file, key, "is missing", format!("add {add}"));
    }
    value.as_ref()
}

fn duration(
    text: &str,
    file: &Path,
    key: &str,
    min: Duration,
    max: Duration,
    errors: &mut Collector,
) -> Option<Duration> {
    use super::duration::format_duration as f;
    match parse_duration(text) {
        Ok(d) if d < min || d > max => {
            errors.push(
                file,
                key,
                format!("{text:?} is outside {} to {}", f(min), f(max)),
                format!("write a duration from {} to {}", f(min), f(max)),
            );
            None
        }
        Ok(d) => Some(d),
        Err(why) => {
            errors.push(
                file,
                key,
                format!("{text:?} is not a duration: it {why}"),
                "write a number and a unit, e.g. \"500ms\", \"30s\", \"5m\", \"2h30m\", \"1d\"",
            );
            None
        }
    }
}

fn number(
    value: i64,
    file: &Path,
    key: &str,
    min: i64,
    max: i64,
    errors: &mut Collector,
) -> Option<i64> {
    if (min..=max).contains(&value) {
        Some(value)
    } else {
        errors.push(
            file,
            key,
            format!("{value} is outside {min} to {max}"),
            format!("write a number from {min} to {max}"),
        );
        None
    }
}
