//! Stage 3 — validated settings with strong types. Code after start-up only sees these.
//!
//! `validate` (in `config/validate/`) turns the merged inputs of stage 2 into [`Settings`],
//! checking every value and pushing every problem it finds; it also looks at the files the
//! configuration names (secret files, `ca_file`) so that a bad path is a configuration
//! error, not a failure at 3 a.m.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

pub use super::schedule::Schedule;
use super::secret::redact_url;
pub use super::secret::{Secret, SecretError, SecretSource};
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
