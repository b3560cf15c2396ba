//! Stage 3, the checks: the merged inputs of stage 2 turned into [`Settings`], every problem
//! pushed to the collector; the value checkers the sections share.

mod email;
mod hub;
mod subscription;

use email::*;
use hub::*;
use subscription::*;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::duration::parse_duration;
use super::error::Collector;
use super::inputs::{defaults, EmailInputs, HubInputs, Inputs, SubscriptionInputs};
use super::secret::{redact_url_str, url_has_password};
use super::suggest::closest;
use super::transliterate::to_ascii;
use crate::hubee::status::CaseStatus;

use super::settings::*;

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

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A value fit to quote in a message: URLs with a password are shown with it hidden.
pub(super) fn shown(text: &str) -> String {
    if url_has_password(text) {
        format!("{:?}", redact_url_str(text))
    } else if text.contains('@') && text.contains("://") {
        // Unparseable but credential-shaped: say nothing of it.
        "the URL".into()
    } else {
        format!("{text:?}")
    }
}

pub(super) fn required<'a, T>(
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

pub(super) fn duration(
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

pub(super) fn number(
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

pub(super) fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}
