//! Errors from the hub, classified so callers can decide: retry later, give up on this
//! item, or stop the subscription (credentials refused).

use std::fmt;

/// What went wrong talking to HubEE. Never holds a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The token endpoint refused the client id and secret.
    #[error("the hub refused client_id {client_id} ({detail}); regenerate the secret in the HubEE portal (Gestion des abonnements) and update the subscription's secret")]
    AuthRefused { client_id: String, detail: String },

    /// The hub answered with an error status that retrying will not fix (4xx), or that
    /// persisted through every retry (5xx, 429).
    #[error("{op} answered HTTP {status}{}{}", .summary.as_ref().map(|s| format!(": {s}")).unwrap_or_default(), hint(*.status))]
    Status {
        op: Op,
        status: u16,
        summary: Option<String>,
    },

    /// No answer: connection refused, reset, timed out, or the body broke off.
    /// `maybe_applied` is true when the request may have reached the hub (the answer was lost).
    #[error("{op} failed: {detail}; check the network, proxy and [hub] api_url")]
    Network {
        op: Op,
        detail: String,
        maybe_applied: bool,
    },

    /// The hub answered 2xx with a body we cannot read.
    #[error("{op} returned a body that is not the expected JSON: {detail}")]
    Decode { op: Op, detail: String },

    /// Not sent: this process no longer holds the subscription's lease (several nodes).
    #[error("{op} not sent: {detail}")]
    Fenced { op: Op, detail: String },

    /// Local set-up of the HTTP client (CA file, proxy) failed.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => " (token refused even after renewal; check the subscription's credentials)",
        403 => " (this subscription has no right on that object; check the démarche and the organisation in the HubEE portal)",
        500..=599 => " (the hub is failing; it will be retried next cycle)",
        _ => "",
    }
}

impl HubError {
    pub fn status(&self) -> Option<u16> {
        match self {
            HubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The request may have taken effect although we saw no answer.
    pub fn maybe_applied(&self) -> bool {
        match self {
            HubError::Network { maybe_applied, .. } => *maybe_applied,
            // A 5xx may come from a gateway after the backend acted.
            HubError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    pub fn is_auth(&self) -> bool {
        matches!(self, HubError::AuthRefused { .. })
    }

    /// Refused by our own fence: the subscription is another node's now.
    pub fn is_fenced(&self) -> bool {
        matches!(self, HubError::Fenced { .. })
    }

    /// The hub's own words, when it gave some.
    pub fn summary(&self) -> Option<&str> {
        match self {
            HubError::Status { summary, .. } => summary.as_deref(),
            _ => None,
        }
    }

    /// HubEE's cap on the number of events per case (PROTOCOL §10.17): a 4xx whose message
    /// speaks of a maximum or a limit of events. Neither the number nor the wording is
    /// published; this reads the likely words in French and English.
    pub fn is_event_cap(&self) -> bool {
        let Some(s) = self.status() else {
            return false;
        };
        if !(400..500).contains(&s) || matches!(s, 401 | 404 | 408 | 429) {
            return false;
        }
        let m = self.summary().unwrap_or_default().to_lowercase();
        let events = m.contains("event") || m.contains("événement") || m.contains("evenement");
        let limit = ["maximum", "limit", "limite", "too many", "trop", "max "]
            .iter()
            .any(|w| m.contains(w));
        events && limit
    }
}

/// The operation, for messages: method and path without host or query (never a token).
#[derive(Debug, Clone)]
pub struct Op {
    pub method: &'static str,
    pub path: String,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}
