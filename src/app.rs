//! The commands, on top of the rooms: building each subscription's context from validated
//! settings, and the `once`, `validate` and `status` commands. `main.rs` only parses the
//! command line and maps outcomes to exit codes.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use crate::config::{Delivery, Schedule, Settings, StateUrl, Subscription};
use crate::deliver::Spool;
use crate::hubee::{HubClient, HubConfig, RetryPolicy};
use crate::state::{Location, StateDb};
use crate::sync::{run_cycle, CycleReport, Shutdown, SubscriptionCtx};

/// Exit codes (CONTRACT, "Exit codes and errors").
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 64;
pub const EXIT_CONFIG: u8 = 78;

pub fn hub_config(settings: &Settings) -> HubConfig {
    let h = &settings.hub;
    HubConfig {
        api_url: h.api_url.clone(),
        token_url: h.token_url.clone(),
        editor_name: h.editor_name_header.clone(),
        application_name: h.application_name.clone(),
        software_version: env!("CARGO_PKG_VERSION").to_string(),
        proxy: h.proxy.clone(),
        ca_file: h.ca_file.clone(),
        timeout: h.timeout,
        retry: RetryPolicy {
            attempts: h.retry_attempts,
            base_delay: h.retry_base_delay,
            max_delay: h.retry_max_delay,
        },
    }
}

pub fn state_location(settings: &Settings) -> Location {
    match &settings.state.url {
        StateUrl::Sqlite(p) => Location::Sqlite(p.clone()),
        StateUrl::Postgres(s) => Location::Postgres(s.expose().to_string()),
    }
}

/// Who holds a subscription's lock, for `status` and for a second process.
pub fn holder_description(command: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "pid {} on {host} (hubee-sync {command})",
        std::process::id()
    )
}

/// Builds what a cycle needs. Errors name the subscription and what to do.
pub fn subscription_ctx(
    settings: &Settings,
    sub: &Subscription,
    client: &HubClient,
    state: &StateDb,
    shutdown: Shutdown,
) -> Result<SubscriptionCtx, String> {
    let secret = sub
        .secret
        .load()
        .map_err(|e| format!("subscription {}: {e}", sub.name))?;
    let spool = match &sub.delivery {
        Delivery::Spool { path, group } => Spool::open(path, group.as_deref())
            .map_err(|e| format!("subscription {}: {e}", sub.name))?,
        Delivery::Database { .. } => {
            return Err(format!(
                "subscription {}: delivery = \"database\" is not available in this version; use delivery = \"spool\"",
                sub.name
            ))
        }
    };
    Ok(SubscriptionCtx {
        name: sub.name.clone(),
        process_code: sub.process_code.clone(),
        receipt_status: sub.receipt_status,
        session: client.session(&sub.client_id, secret.expose()),
        spool,
        state: state.clone(),
        max_parallel_downloads: settings.hub.max_parallel_downloads,
        download_attempts: settings.hub.download_attempts,
        retry_base_delay: settings.hub.retry_base_delay,
        author: settings.hub.editor_name.clone(),
        shutdown,
    })
}

/// `validate`: every error at once; 0 or 78.
pub fn validate(path: &std::path::Path) -> ExitCode {
    match crate::config::load(path) {
        Ok(s) => {
            println!(
                "{}: valid ({} subscription{})",
                path.display(),
                s.subscriptions.len(),
                if s.subscriptions.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(EXIT_OK)
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error{}; nothing was changed",
                path.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Loads the config or reports every error (exit 78).
pub fn load_or_report(path: &std::path::Path) -> Result<Settings, ExitCode> {
    crate::config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!(
            "{}: invalid configuration; run `hubee-sync validate` after fixing it",
            path.display()
        );
        ExitCode::from(EXIT_CONFIG)
    })
}

/// `once`: one complete cycle of every (or the named) subscription.
pub async fn once(settings: Settings, only: &[String]) -> ExitCode {
    for name in only {
        if !settings.subscriptions.iter().any(|s| &s.name == name) {
            eprintln!(
                "no subscription named {name:?} in {}; known: {}",
                settings.source.display(),
                settings
                    .subscriptions
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let chosen: Vec<&Subscription> = settings
        .subscriptions
        .iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .collect();
    if chosen.is_empty() {
        println!(
            "no subscription configured in {}; nothing to do",
            settings.source.display()
        );
        return ExitCode::from(EXIT_OK);
    }
    let state = match StateDb::open(&state_location(&settings)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let client = match HubClient::new(hub_config(&settings)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let holder = holder_description("once");
    let mut all_ok = true;
    let mut ctxs = Vec::new();
    for sub in chosen {
        match subscription_ctx(&settings, sub, &client, &state, Shutdown::never()) {
            Ok(c) => ctxs.push(c),
            Err(e) => {
                tracing::error!(subscription = %sub.name, error = %e, "subscription cannot run");
                eprintln!("{e}");
                let _ = state.record_poll(&sub.name, false, Some(&e)).await;
                all_ok = false;
            }
        }
    }
    let reports: Vec<CycleReport> = stream::iter(ctxs.iter())
        .map(|ctx| run_cycle(ctx, &holder))
        .buffer_unordered(settings.hub.max_parallel_subscriptions)
        .collect()
        .await;
    for r in &reports {
        print_report(r);
        all_ok &= r.ok();
    }
    state.close().await;
    ExitCode::from(if all_ok { EXIT_OK } else { EXIT_FAILURE })
}

fn print_report(r: &CycleReport) {
    let mut line = format!(
        "{}: {} reçu(s), {} acquitté(s), {} en échec",
        r.subscription,
        r.received,
        r.acknowledged,
        r.failures.len()
    );
    if r.waiting > 0 {
        line.push_str(&format!(", {} en attente d'une pièce", r.waiting));
    }
    if r.skipped > 0 {
        line.push_str(&format!(", {} laissé(s) sur le hub", r.skipped));
    }
    println!("{line}");
    if let Some(f) = &r.fatal {
        println!("  erreur: {f}");
    }
    for f in &r.failures {
        println!(
            "  échec: dossier {} (notification {}): {}",
            f.case_id.as_deref().unwrap_or("?"),
            f.notification_id,
            f.error
        );
    }
}

/// `status [--json]`: 0 healthy, 1 failing or overdue.
pub async fn status(settings: Settings, json: bool) -> ExitCode {
    let state = match StateDb::open(&state_location(&settings)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let names: Vec<String> = settings
        .subscriptions
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let rows = match state.status(&names).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    state.close().await;
    let now = chrono::Utc::now();
    let mut healthy = true;
    let mut out = Vec::new();
    for (row, sub) in rows.iter().zip(&settings.subscriptions) {
        let overdue = match (&sub.schedule, &row.last_poll_at) {
            (Schedule::Every(d), Some(last)) => chrono::DateTime::parse_from_rfc3339(last)
                .map(|t| {
                    let late = *d * 3 + Duration::from_secs(60);
                    (now - t.with_timezone(&chrono::Utc))
                        .to_std()
                        .map(|age| age > late)
                        .unwrap_or(false)
                })
                .unwrap_or(false),
            _ => false,
        };
        let failing = row.consecutive_failures > 0;
        if failing || overdue {
            healthy = false;
        }
        out.push((row, overdue, failing));
    }
    if json {
        let v: Vec<serde_json::Value> = out
            .iter()
            .map(|(row, overdue, failing)| {
                let mut v = serde_json::to_value(row).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("overdue".into(), (*overdue).into());
                    o.insert("healthy".into(), (!*overdue && !*failing).into());
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| "[]".into())
        );
    } else if out.is_empty() {
        println!("aucun abonnement configuré ({})", settings.source.display());
    } else {
        for (row, overdue, failing) in &out {
            let health = if *failing {
                "EN ÉCHEC"
            } else if *overdue {
                "EN RETARD"
            } else {
                "ok"
            };
            println!("{} [{}]", row.subscription, health);
            println!(
                "  dernier passage: {} ({})",
                row.last_poll_at.as_deref().unwrap_or("jamais"),
                row.last_outcome.as_deref().unwrap_or("-")
            );
            println!(
                "  reçus: {}, acquittés: {}, en cours: {}, en échec: {}, parqués: {}, en quarantaine: {}",
                row.received, row.acknowledged, row.in_progress, row.failing, row.parked, row.quarantined
            );
            if let Some(e) = &row.last_error {
                println!("  dernière erreur: {e}");
            }
            if let Some(h) = &row.holder {
                println!("  tenu par: {h}");
            }
        }
    }
    ExitCode::from(if healthy { EXIT_OK } else { EXIT_FAILURE })
}
