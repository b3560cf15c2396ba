//! Stage 1 — what the file says.
//!
//! Every field is an `Option`: absence is meaningful, defaults come in stage 2
//! ([`super::inputs`]). Values stay as written (strings, integers); their meaning is checked
//! in stage 3 ([`super::settings`]).
//!
//! serde's `deny_unknown_fields` stops at the first unknown key, so a file is first parsed
//! into a `toml::Table` and walked against the known keys below: every unknown key, every
//! value of the wrong type, is reported, and the rest is still read.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::Collector;
use super::suggest::closest;

/// The main configuration file, or an included one (which holds `subscription` only).
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Glob patterns of more files holding `[[subscription]]` tables.
    pub include: Option<Vec<String>>,
    pub hub: Option<RawHub>,
    pub state: Option<RawState>,
    pub email: Option<RawEmail>,
    pub metrics: Option<super::metrics::RawMetrics>,
    pub subscription: Option<Vec<RawSubscription>>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHub {
    pub api_url: Option<String>,
    pub token_url: Option<String>,
    pub editor_name: Option<String>,
    pub application_name: Option<String>,
    pub proxy: Option<String>,
    pub ca_file: Option<String>,
    pub timeout: Option<String>,
    pub max_parallel_downloads: Option<i64>,
    pub max_parallel_subscriptions: Option<i64>,
    pub max_parallel_cases: Option<i64>,
    pub retry_attempts: Option<i64>,
    pub retry_base_delay: Option<String>,
    pub retry_max_delay: Option<String>,
    pub download_attempts: Option<i64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub url: Option<String>,
    pub node_name: Option<String>,
    pub lease_ttl: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {
    pub smtp_url: Option<String>,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    pub digest_schedule: Option<String>,
    pub send_empty: Option<bool>,
    pub include_personal_data: Option<bool>,
    pub alert_after: Option<String>,
    pub alert_every: Option<String>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscription {
    pub name: Option<String>,
    pub process_code: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub client_secret_credential: Option<String>,
    pub schedule: Option<String>,
    pub receipt_status: Option<String>,
    pub delivery: Option<String>,
    pub spool: Option<String>,
    pub spool_group: Option<String>,
    pub database_url: Option<String>,
    pub email_to: Option<Vec<String>>,
    pub quarantine_after: Option<String>,
    pub outbox_retention: Option<String>,
}

/// A key a table accepts, with what a value must look like (for error messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeySpec {
    pub name: &'static str,
    /// "a duration", "a string", …
    pub expect: &'static str,
    /// A value to show in the fix, as TOML.
    pub example: &'static str,
}

const fn key(name: &'static str, expect: &'static str, example: &'static str) -> KeySpec {
    KeySpec {
        name,
        expect,
        example,
    }
}

const DURATION: &str = "a duration in quotes, with a unit";

pub(crate) const TOP_KEYS: &[KeySpec] = &[
    key(
        "include",
        "an array of file patterns",
        r#"["/etc/hubee-sync/conf.d/*.toml"]"#,
    ),
    key("hub", "a table", "[hub]"),
    key("state", "a table", "[state]"),
    key("email", "a table", "[email]"),
    key("metrics", "a table", "[metrics]"),
    key("subscription", "an array of tables", "[[subscription]]"),
];

pub(crate) const HUB_KEYS: &[KeySpec] = &[
    key(
        "api_url",
        "a URL in quotes",
        r#""https://api.bas.hubee.numerique.gouv.fr""#,
    ),
    key(
        "token_url",
        "a URL in quotes",
        r#""https://auth.bas.hubee.numerique.gouv.fr/oauth2/token""#,
    ),
    key("editor_name", "a string", r#""Commune de Saint-Exemple""#),
    key("application_name", "a string", r#""hubee-sync""#),
    key(
        "proxy",
        "a URL in quotes",
        r#""http://proxy.rie.example:3128""#,
    ),
    key(
        "ca_file",
        "a file path in quotes",
        r#""/etc/hubee-sync/extra-ca.pem""#,
    ),
    key("timeout", DURATION, r#""60s""#),
    key("max_parallel_downloads", "a whole number", "4"),
    key("max_parallel_subscriptions", "a whole number", "4"),
    key("max_parallel_cases", "a whole number", "16"),
    key("retry_attempts", "a whole number", "5"),
    key("retry_base_delay", DURATION, r#""500ms""#),
    key("retry_max_delay", DURATION, r#""60s""#),
    key("download_attempts", "a whole number", "3"),
];

pub(crate) const STATE_KEYS: &[KeySpec] = &[
    key(
        "url",
        "a database URL in quotes",
        r#""sqlite:///var/lib/hubee-sync/state.db""#,
    ),
    key("node_name", "a name in quotes", r#""hubee-1""#),
    key("lease_ttl", DURATION, r#""30s""#),
];

pub(crate) const EMAIL_KEYS: &[KeySpec] = &[
    key("smtp_url", "a URL in quotes", r#""smtp://127.0.0.1:25""#),
    key(
        "from",
        "an address in quotes",
        r#""hubee-sync <hubee@mairie.example>""#,
    ),
    key("to", "an array of addresses", r#"["dsi@mairie.example"]"#),
    key(
        "digest_schedule",
        "a cron with seconds in quotes",
        r#""0 0 8 * * Mon-Fri""#,
    ),
    key("send_empty", "true or false", "false"),
    key("include_personal_data", "true or false", "false"),
    key("alert_after", DURATION, r#""1h""#),
    key("alert_every", DURATION, r#""6h""#),
    key(
        "ca_file",
        "a file path in quotes",
        r#""/etc/hubee-sync/smtp-ca.pem""#,
    ),
];

pub(crate) const SUBSCRIPTION_KEYS: &[KeySpec] = &[
    key("name", "a string", r#""certdc""#),
    key("process_code", "a string", r#""CERTDC""#),
    key("client_id", "a string", r#""…""#),
    key("client_secret", "a string", r#""…""#),
    key(
        "client_secret_file",
        "a file path in quotes",
        r#""/etc/hubee-sync/secrets/certdc""#,
    ),
    key(
        "client_secret_credential",
        "a credential name in quotes",
        r#""certdc""#,
    ),
    key("schedule", "a schedule in quotes", r#""0 */5 * * * *""#),
    key("receipt_status", "a status in quotes", r#""SI_RECEIVED""#),
    key("delivery", "\"spool\" or \"database\"", r#""spool""#),
    key(
        "spool",
        "a directory path in quotes",
        r#""/var/spool/hubee-sync/certdc""#,
    ),
    key("spool_group", "a group name in quotes", r#""etatcivil""#),
    key(
        "database_url",
        "a database URL in quotes",
        r#""postgres://hubee@db.example/etatcivil""#,
    ),
    key(
        "email_to",
        "an array of addresses",
        r#"["etat-civil@mairie.example"]"#,
    ),
    key("quarantine_after", DURATION, r#""24h""#),
    key("outbox_retention", DURATION, r#""90d""#),
];

/// Every table and its keys, to tell "this key belongs in another table".
const TABLES: &[(&str, &[KeySpec])] = &[
    ("hub", HUB_KEYS),
    ("state", STATE_KEYS),
    ("email", EMAIL_KEYS),
    ("metrics", super::metrics::METRICS_KEYS),
    ("[subscription]", SUBSCRIPTION_KEYS),
];

/// Whether the file is the main one or was included (then it holds `[[subscription]]` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Main,
    Included,
}

/// Parses one file's text. Returns `None` on a TOML syntax error (reported with its line and
/// column); otherwise what could be read, every problem pushed to `errors`.
pub(crate) fn parse(
    text: &str,
    file: &Path,
    kind: FileKind,
    errors: &mut Collector,
) -> Option<RawConfig> {
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let place = match e.span() {
                Some(span) => {
                    let (line, column) = line_column(text, span.start);
                    format!(" at line {line}, column {column}")
                }
                None => String::new(),
            };
            // Only the message, never the offending line: it could hold a secret.
            errors.push(
                file,
                "",
                format!("TOML syntax error{place}: {}", e.message().trim()),
                "fix the syntax there (strings in double quotes, tables as [hub], subscriptions as [[subscription]])",
            );
            return None;
        }
    };
    let mut raw = RawConfig::default();
    for (name, value) in table {
        let top_spec = TOP_KEYS.iter().find(|k| k.name == name);
        let allowed = match kind {
            FileKind::Main => top_spec.is_some(),
            FileKind::Included => name == "subscription",
        };
        if !allowed {
            if kind == FileKind::Included && top_spec.is_some() {
                errors.push(
                    file,
                    &name,
                    format!("an included file may hold only [[subscription]] tables, not `{name}`"),
                    format!("move `{name}` to the main configuration file"),
                );
            } else {
                unknown_key(file, "", &name, TOP_KEYS, errors);
            }
            continue;
        }
        match (name.as_str(), value) {
            ("include", value) => raw.include = one_value(file, "include", TOP_KEYS, value, errors),
            ("hub", toml::Value::Table(t)) => {
                raw.hub = Some(read_table(t, HUB_KEYS, "hub", file, errors))
            }
            ("state", toml::Value::Table(t)) => {
                raw.state = Some(read_table(t, STATE_KEYS, "state", file, errors))
            }
            ("email", toml::Value::Table(t)) => {
                raw.email = Some(read_table(t, EMAIL_KEYS, "email", file, errors))
            }
            ("metrics", toml::Value::Table(t)) => {
                raw.metrics = Some(read_table(
                    t,
                    super::metrics::METRICS_KEYS,
                    "metrics",
                    file,
                    errors,
                ))
            }
            ("subscription", toml::Value::Array(items)) => {
                let mut subs = Vec::new();
                for (i, item) in items.into_iter().enumerate() {
                    let label = format!("subscription[{}]", i + 1);
                    match item {
                        toml::Value::Table(t) => {
                            subs.push(read_table(t, SUBSCRIPTION_KEYS, &label, file, errors))
                        }
                        other => {
                            errors.push(
                                file,
                                &label,
                                format!("is {}, not a table", article(other.type_str())),
                                "write each subscription as a [[subscription]] table",
                            );
                            subs.push(RawSubscription::default());
                        }
                    }
                }
                raw.subscription = Some(subs);
            }
            ("subscription", toml::Value::Table(_)) => errors.push(
                file,
                "subscription",
                "is a single table [subscription], but subscriptions are an array of tables",
                "write [[subscription]] with two brackets on each side",
            ),
            (name, other) => {
                let expect = top_spec.map_or("a table", |s| s.expect);
                let example = top_spec.map_or("", |s| s.example);
                errors.push(
                    file,
                    name,
                    format!("is {}, but must be {expect}", article(other.type_str())),
                    format!("write it as {example}"),
                );
            }
        }
    }
    Some(raw)
}

/// Reads one table into its raw struct: unknown keys and badly typed values are reported
/// one by one and left out; everything else is kept.
fn read_table<T: DeserializeOwned + Default>(
    mut table: toml::Table,
    keys: &[KeySpec],
    section: &str,
    file: &Path,
    errors: &mut Collector,
) -> T {
    let unknown: Vec<String> = table
        .keys()
        .filter(|k| !keys.iter().any(|spec| spec.name == k.as_str()))
        .cloned()
        .collect();
    for name in unknown {
        unknown_key(file, section, &name, keys, errors);
        table.remove(&name);
    }
    if let Ok(value) = toml::Value::Table(table.clone()).try_into::<T>() {
        return value;
    }
    // Something has the wrong type: find every such key, alone.
    let names: Vec<String> = table.keys().cloned().collect();
    for name in names {
        let Some(value) = table.get(&name).cloned() else {
            continue;
        };
        let mut alone = toml::Table::new();
        alone.insert(name.clone(), value.clone());
        if toml::Value::Table(alone).try_into::<T>().is_err() {
            table.remove(&name);
            type_error(
                file,
                &format!("{section}.{name}"),
                &name,
                keys,
                &value,
                errors,
            );
        }
    }
    toml::Value::Table(table)
        .try_into::<T>()
        .unwrap_or_default()
}

/// One top-level value read alone (`include`).
fn one_value<T: DeserializeOwned>(
    file: &Path,
    name: &str,
    keys: &[KeySpec],
    value: toml::Value,
    errors: &mut Collector,
) -> Option<T> {
    match value.clone().try_into::<T>() {
        Ok(v) => Some(v),
        Err(_) => {
            type_error(file, name, name, keys, &value, errors);
            None
        }
    }
}

fn type_error(
    file: &Path,
    label: &str,
    name: &str,
    keys: &[KeySpec],
    value: &toml::Value,
    errors: &mut Collector,
) {
    // The value is never quoted: it could be a secret written without quotes.
    let (expect, example) = keys
        .iter()
        .find(|k| k.name == name)
        .map_or(("something else", ""), |k| (k.expect, k.example));
    let found = match value {
        toml::Value::Array(items) if !items.is_empty() => {
            format!("an array of {}s", items[0].type_str())
        }
        other => article(other.type_str()).to_string(),
    };
    errors.push(
        file,
        label,
        format!("is {found}, but must be {expect}"),
        format!("write {name} = {example}"),
    );
}

fn article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" => format!("an {type_name}"),
        other => format!("a {other}"),
    }
}

/// Reports an unknown key, with the most useful hint we can find.
fn unknown_key(file: &Path, section: &str, name: &str, keys: &[KeySpec], errors: &mut Collector) {
    let label = if section.is_empty() {
        name.to_string()
    } else {
        format!("{section}.{name}")
    };
    let table_name = if section.is_empty() {
        "at the top of the file".to_string()
    } else if section.starts_with("subscription[") {
        "in [[subscription]]".to_string()
    } else {
        format!("in [{section}]")
    };
    let problem = format!("unknown key `{name}` {table_name}");
    let lower = name.to_ascii_lowercase();
    if [
        "insecure", "danger", "verify", "invalid", "tls", "ssl", "cert",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        errors.push(
            file,
            label,
            problem,
            "TLS certificates are always verified and this cannot be turned off; to trust a private or intercepting CA, put its certificate in a PEM file and set ca_file = \"/etc/hubee-sync/extra-ca.pem\" in [hub]",
        );
        return;
    }
    if name == "include" && !section.is_empty() {
        errors.push(
            file,
            label,
            problem,
            "`include` is a top-level key: move it above the first table ([hub]), since every key after a [table] header belongs to that table",
        );
        return;
    }
    let current = if section.starts_with("subscription[") {
        "[subscription]"
    } else {
        section
    };
    if let Some(other) = TABLES
        .iter()
        .find(|(t, ks)| *t != current && ks.iter().any(|k| k.name == name))
        .map(|(t, _)| *t)
    {
        errors.push(
            file,
            label,
            problem,
            format!("`{name}` belongs in [{other}]; move it there"),
        );
        return;
    }
    let fix = match closest(name, keys.iter().map(|k| k.name)) {
        Some(known) => format!("did you mean `{known}`?"),
        None => {
            let all: Vec<&str> = keys.iter().map(|k| k.name).collect();
            format!("remove it; the keys here are: {}", all.join(", "))
        }
    };
    errors.push(file, label, problem, fix);
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_main(text: &str) -> (Option<RawConfig>, Vec<String>) {
        let mut errors = Collector::default();
        let raw = parse(text, Path::new("/x.toml"), FileKind::Main, &mut errors);
        let errs = errors
            .into_errors()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        (raw, errs)
    }

    /// The key lists and the structs must agree, or a known key would be refused.
    #[test]
    fn key_lists_match_the_structs() {
        fn check<T: DeserializeOwned + Default>(keys: &[KeySpec]) {
            for k in keys {
                let mut t = toml::Table::new();
                t.insert(
                    k.name.into(),
                    toml::Value::Datetime("1979-05-27".parse().unwrap()),
                );
                if let Err(err) = toml::Value::Table(t).try_into::<T>() {
                    let err = err.to_string();
                    assert!(!err.contains("unknown field"), "{}: {err}", k.name);
                }
            }
        }
        check::<RawHub>(HUB_KEYS);
        check::<RawState>(STATE_KEYS);
        check::<RawEmail>(EMAIL_KEYS);
        check::<RawSubscription>(SUBSCRIPTION_KEYS);
        check::<RawConfig>(TOP_KEYS);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let (raw, errs) = parse_main("[hub]\napi_url = \"x\"\ntimeout = \n");
        assert!(raw.is_none());
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("line 3"), "{errs:?}");
    }

    #[test]
    fn wrong_types_and_unknown_keys_are_all_reported_and_the_rest_is_kept() {
        let (raw, errs) = parse_main(
            "[hub]\napi_url = \"https://a\"\ntimeout = 30\nretry_attempts = \"5\"\ntimeuot = \"1s\"\n",
        );
        let hub = raw.unwrap().hub.unwrap();
        assert_eq!(hub.api_url.as_deref(), Some("https://a"));
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs
            .iter()
            .any(|e| e.contains("hub.timeout: is an integer")));
        assert!(errs
            .iter()
            .any(|e| e.contains("hub.retry_attempts: is a string")));
        assert!(errs.iter().any(|e| e.contains("did you mean `timeout`?")));
    }

    #[test]
    fn single_bracket_subscription_is_explained() {
        let (_, errs) = parse_main("[subscription]\nname = \"a\"\n");
        assert!(errs[0].contains("[[subscription]]"), "{errs:?}");
    }

    #[test]
    fn include_after_a_table_is_explained() {
        let (_, errs) = parse_main("[hub]\ninclude = [\"a\"]\n");
        assert!(errs[0].contains("above the first table"), "{errs:?}");
    }

    #[test]
    fn key_in_the_wrong_table_is_pointed_to_its_table() {
        let (_, errs) = parse_main("[[subscription]]\nproxy = \"http://p\"\n");
        assert!(errs[0].contains("belongs in [hub]"), "{errs:?}");
    }
}
