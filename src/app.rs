//! The commands, on top of the rooms: building each subscription's context from validated
//! settings, and the `once`, `validate` and `status` commands. `main.rs` only parses the
//! command line and maps outcomes to exit codes.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use crate::config::{hub_config, Delivery, Schedule, Settings, StateUrl, Subscription};
use crate::deliver::Spool;
use crate::hubee::HubClient;
use crate::outbox::{outbox_options, OutboxReport};
use crate::shutdown::Shutdown;
use crate::state::{holder_description, state_location, StateDb};
use crate::sync::{run_cycle, subscription_ctx, CycleReport, Progress};
use std::sync::Arc;

/// Exit codes (CONTRACT, "Exit codes and errors"), kept here too for `main.rs`.
pub use crate::exit::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};

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

/// The state database and the hub client, or the exit code after saying why.
async fn open_state_and_client(settings: &Settings) -> Result<(StateDb, HubClient), ExitCode> {
    let state = StateDb::open(&state_location(settings))
        .await
        .map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_FAILURE)
        })?;
    match HubClient::new(hub_config(settings)) {
        Ok(c) => Ok((state, c)),
        Err(e) => {
            eprintln!("{e}");
            state.close().await;
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// `once`: one complete cycle of every (or the named) subscription.
pub async fn once(settings: Settings, only: &[String]) -> ExitCode {
    if let Err(e) = refuse_root_on_service_state(&settings) {
        eprintln!("{e}");
        return ExitCode::from(EXIT_FAILURE);
    }
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
    let (state, client) = match open_state_and_client(&settings).await {
        Ok(both) => both,
        Err(code) => return code,
    };
    // Several nodes on PostgreSQL: `once` works a subscription only under its lease, taken
    // here if free (a running node's are refused, naming the node), renewed while it runs.
    let (lease_stop, lease_shutdown) = Shutdown::new();
    let mut lease_task = None;
    let state = if state.is_postgres() {
        let cluster = crate::cluster::Cluster::new(
            &settings.state.node_name,
            settings.state.lease_ttl,
            false,
        );
        let state = state.with_cluster(cluster.clone());
        let names: Vec<String> = chosen.iter().map(|s| s.name.clone()).collect();
        if let Err(e) = cluster.round(&state, &names).await {
            eprintln!("{e}");
            state.close().await;
            return ExitCode::from(EXIT_FAILURE);
        }
        lease_task = Some(crate::cluster::spawn_manager(
            cluster,
            state.clone(),
            move || names.clone(),
            || {},
            lease_shutdown,
        ));
        state
    } else {
        state
    };
    let holder = holder_description("once");
    let mut all_ok = true;
    let mut ctxs = Vec::new();
    let progress = Arc::new(Progress::default());
    for sub in chosen {
        match subscription_ctx(
            &settings,
            sub,
            &client,
            &state,
            Shutdown::never(),
            progress.clone(),
        ) {
            Ok(c) => ctxs.push(c),
            Err(e) => {
                tracing::error!(subscription = %sub.name, error = %e, "subscription cannot run");
                eprintln!("{e}");
                let _ = state.record_poll(&sub.name, false, Some(&e)).await;
                all_ok = false;
            }
        }
    }
    let display = show_progress().then(|| tokio::spawn(render_progress(progress.clone())));
    // Each subscription: its cycle, then its outbox (CONTRACT: "drain the notification
    // queue, send the outbox").
    let settings_ref = &settings;
    let holder_ref = &holder;
    // The futures are made first: a stream mapped through a closure over borrowed contexts
    // is not `Send` for every lifetime, and `main` runs this command as a spawned task.
    let passes: Vec<_> = ctxs
        .iter()
        .map(|ctx| async move {
            let cycle = run_cycle(ctx, holder_ref).await;
            let outbox =
                crate::outbox::run_pass(ctx, holder_ref, outbox_options(settings_ref, &ctx.name))
                    .await;
            (cycle, outbox)
        })
        .collect();
    let reports: Vec<(CycleReport, OutboxReport)> = stream::iter(passes)
        .buffer_unordered(settings.hub.max_parallel_subscriptions)
        .collect()
        .await;
    if let Some(d) = display {
        d.abort();
        eprint!("\r\x1b[2K");
    }
    for (r, o) in &reports {
        print_report(r);
        print_outbox_report(o);
        all_ok &= r.ok() && o.ok();
    }
    lease_stop.send_replace(true);
    if let Some(t) = lease_task {
        let _ = t.await;
    }
    if let Some(cluster) = crate::cluster::Cluster::of(&state) {
        cluster.leave(&state).await;
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
    if r.parked > 0 {
        line.push_str(&format!(
            ", {} mis de côté (réessayés à chaque passage)",
            r.parked
        ));
    }
    if r.quarantined > 0 {
        line.push_str(&format!(", {} en quarantaine", r.quarantined));
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

fn print_outbox_report(o: &OutboxReport) {
    if o.is_empty() || (o.busy && o.sent.is_empty()) {
        // Nothing to say, or the lock: the cycle's line already said who holds it.
        return;
    }
    println!(
        "{}: réponses : {} envoyée(s), {} refusée(s) (outbox/failed/), {} en attente",
        o.subscription,
        o.sent.len(),
        o.failed.len(),
        o.pending.len()
    );
    if let Some(f) = &o.fatal {
        println!("  erreur (outbox): {f}");
    }
    for (folder, why) in &o.failed {
        println!("  réponse refusée: {folder}: {why}");
    }
    for (folder, why) in &o.pending {
        println!("  réponse en attente: {folder}: {why}");
    }
}

/// `status [--json]`: 0 healthy, 1 failing or overdue.
pub async fn status(settings: Settings, json: bool) -> ExitCode {
    if let Err(e) = refuse_root_on_service_state(&settings) {
        eprintln!("{e}");
        return ExitCode::from(EXIT_FAILURE);
    }
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
    let view = state.cluster_view().await.unwrap_or_default();
    state.close().await;
    let ttl_ms = i64::try_from(settings.state.lease_ttl.as_millis()).unwrap_or(i64::MAX);
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
        if !view.nodes.is_empty() {
            let nodes: Vec<String> = view
                .nodes
                .iter()
                .map(|n| {
                    let age = view.now_ms - n.heartbeat_at_ms;
                    let held = rows
                        .iter()
                        .filter(|r| r.node.as_deref() == Some(n.node.as_str()))
                        .count();
                    format!(
                        "{} (pid {}, {} abonnement(s), {})",
                        n.node,
                        n.pid,
                        held,
                        if age < ttl_ms {
                            format!("vivant, signe de vie il y a {} s", age / 1000)
                        } else {
                            format!("muet depuis {} s", age / 1000)
                        }
                    )
                })
                .collect();
            println!("nœuds: {}", nodes.join("; "));
        }
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
            println!(
                "  réponses (outbox): en cours: {}, envoyées: {}, en échec: {}",
                row.outbox_pending, row.outbox_sent, row.outbox_failed
            );
            if let Some(e) = &row.last_error {
                println!("  dernière erreur: {e}");
            }
            if let Some(last) = &row.last_event_refused {
                println!(
                    "  événements refusés par le hub (télédossiers livrés quand même): {}, dernier: {last}",
                    row.events_refused
                );
            }
            if let Some(n) = &row.node {
                println!(
                    "  nœud: {n} depuis {} (bail n°{}, jusqu'à {} sauf renouvellement)",
                    row.node_since.as_deref().unwrap_or("?"),
                    row.lease_epoch.unwrap_or(0),
                    row.lease_expires_at.as_deref().unwrap_or("?")
                );
            }
            if let Some(h) = &row.holder {
                println!("  tenu par: {h}");
            }
        }
    }
    ExitCode::from(if healthy { EXIT_OK } else { EXIT_FAILURE })
}

/// Progress only for a person at a terminal: not under systemd (journald), not in a pipe.
fn show_progress() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("JOURNAL_STREAM").is_none()
}

/// One status line, rewritten in place on stderr: entries received and bytes so far.
async fn render_progress(p: Arc<Progress>) {
    use std::sync::atomic::Ordering;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let entries = p.entries.load(Ordering::Relaxed);
        let mb = p.bytes.load(Ordering::Relaxed) as f64 / 1_048_576.0;
        eprint!("\r\x1b[2K{entries} dossier(s) reçu(s), {mb:.1} Mo téléchargés");
    }
}

/// `redeliver --subscription NAME --case ID`: a new entry for a case, nothing on the hub.
pub async fn redeliver(settings: Settings, subscription: &str, case_id: &str) -> ExitCode {
    if let Err(e) = refuse_root_on_service_state(&settings) {
        eprintln!("{e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let Some(sub) = settings
        .subscriptions
        .iter()
        .find(|s| s.name == subscription)
    else {
        eprintln!(
            "no subscription named {subscription:?} in {}",
            settings.source.display()
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let (state, client) = match open_state_and_client(&settings).await {
        Ok(both) => both,
        Err(code) => return code,
    };
    let ctx = match subscription_ctx(
        &settings,
        sub,
        &client,
        &state,
        Shutdown::never(),
        Arc::default(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let lock = match state
        .lock_subscription(&sub.name, &holder_description("redeliver"))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let outcome = crate::sync::redeliver::redeliver(&ctx, case_id).await;
    state.clear_holder(&sub.name).await;
    lock.release().await;
    state.close().await;
    match outcome {
        Ok(entry) => {
            println!("{subscription}: case {case_id} published again as {entry} (nothing changed on the hub)");
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("{subscription}: cannot redeliver case {case_id}: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `digest [--send]`: the next digest of each recipient list, printed or sent now (the email
/// room does the work).
pub async fn digest(settings: Settings, send: bool, html: bool) -> ExitCode {
    if let Err(e) = refuse_root_on_service_state(&settings) {
        eprintln!("{e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    crate::email::digest_command(&settings, send, html).await
}

/// One line of `check`.
struct CheckLine {
    ok: bool,
    what: String,
    detail: String,
}

impl CheckLine {
    fn print(&self) {
        let mark = if self.ok { "✓" } else { "✗" };
        if self.detail.is_empty() {
            println!("{mark} {}", self.what);
        } else {
            println!("{mark} {}: {}", self.what, self.detail);
        }
    }
}

/// `check`: `validate`, then every subscription's credentials, state database, delivery
/// target and spool, and the SMTP server; one line per check; 0 when all pass, else 1.
pub async fn check(path: &std::path::Path) -> ExitCode {
    let settings = match crate::config::load(path) {
        Ok(s) => {
            println!("✓ configuration {}: valid", path.display());
            s
        }
        Err(errors) => {
            println!("✗ configuration {}: invalid", path.display());
            for e in &errors.0 {
                println!("    {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut lines = Vec::new();
    if let Err(e) = refuse_root_on_service_state(&settings) {
        lines.push(CheckLine {
            ok: false,
            what: "user".into(),
            detail: e,
        });
    }
    let state = match StateDb::open(&state_location(&settings)).await {
        Ok(s) => {
            lines.push(CheckLine {
                ok: true,
                what: format!("state database {}", s.place()),
                detail: "opened, schema up to date".into(),
            });
            Some(s)
        }
        Err(e) => {
            lines.push(CheckLine {
                ok: false,
                what: "state database".into(),
                detail: e.to_string(),
            });
            None
        }
    };
    let client = match HubClient::new(hub_config(&settings)) {
        Ok(c) => Some(c),
        Err(e) => {
            lines.push(CheckLine {
                ok: false,
                what: "HTTP client".into(),
                detail: e.to_string(),
            });
            None
        }
    };
    if settings.subscriptions.is_empty() {
        lines.push(CheckLine {
            ok: true,
            what: "subscriptions".into(),
            detail: format!("none configured; add a [[subscription]] to {} (or a file in its include directory)", path.display()),
        });
    }
    for sub in &settings.subscriptions {
        let who = format!("subscription {}", sub.name);
        let secret = match sub.secret.load() {
            Ok(s) => Some(s),
            Err(e) => {
                lines.push(CheckLine {
                    ok: false,
                    what: format!("{who}: secret"),
                    detail: e.to_string(),
                });
                None
            }
        };
        if let (Some(secret), Some(client)) = (&secret, &client) {
            let session = client.session(&sub.client_id, secret.expose());
            match session.authenticate().await {
                Ok(()) => lines.push(CheckLine { ok: true, what: format!("{who}: token"), detail: format!("the hub accepts client_id {}", sub.client_id) }),
                Err(e) if e.is_auth() => lines.push(CheckLine {
                    ok: false,
                    what: format!("{who}: token"),
                    detail: format!(
                        "the hub refused client_id {}; regenerate the secret in the HubEE portal (Gestion des abonnements) and update {}",
                        sub.client_id,
                        secret_place(&sub.secret)
                    ),
                }),
                Err(e) => lines.push(CheckLine { ok: false, what: format!("{who}: token"), detail: e.to_string() }),
            }
        }
        match &sub.delivery {
            Delivery::Spool { path, group } => match Spool::open(path, group.as_deref()) {
                Ok(_) => lines.push(CheckLine {
                    ok: true,
                    what: format!("{who}: spool {}", path.display()),
                    detail: "writable".into(),
                }),
                Err(e) => lines.push(CheckLine {
                    ok: false,
                    what: format!("{who}: spool {}", path.display()),
                    detail: e.to_string(),
                }),
            },
            Delivery::Database { url, spool, group } => {
                match Spool::open(spool, group.as_deref()) {
                    Ok(_) => lines.push(CheckLine {
                        ok: true,
                        what: format!("{who}: spool {} (quarantine, outbox)", spool.display()),
                        detail: "writable".into(),
                    }),
                    Err(e) => lines.push(CheckLine {
                        ok: false,
                        what: format!("{who}: spool {}", spool.display()),
                        detail: e.to_string(),
                    }),
                }
                match crate::deliver::database::BusinessDb::open(url.expose()).await {
                    Ok(db) => {
                        lines.push(CheckLine {
                            ok: true,
                            what: format!("{who}: delivery database {}", db.place()),
                            detail: "opened, tables up to date".into(),
                        });
                        db.close().await;
                    }
                    Err(e) => lines.push(CheckLine {
                        ok: false,
                        what: format!("{who}: delivery database"),
                        detail: e.to_string(),
                    }),
                }
            }
        }
    }
    if let Some(email) = &settings.email {
        lines.push(check_smtp(email.smtp_url.expose()).await);
    }
    if let Some(s) = state {
        s.close().await;
    }
    let mut ok = true;
    for l in &lines {
        l.print();
        ok &= l.ok;
    }
    ExitCode::from(if ok { EXIT_OK } else { EXIT_FAILURE })
}

fn secret_place(s: &crate::config::SecretSource) -> String {
    match s {
        crate::config::SecretSource::File(p) => p.display().to_string(),
        crate::config::SecretSource::Inline(_) => "client_secret in the configuration".into(),
        crate::config::SecretSource::Credential { name } => {
            format!("the systemd credential {name} (LoadCredential=), then restart the service")
        }
    }
}

/// Reaches the SMTP server: a TCP connection and its 220 greeting.
async fn check_smtp(url: &str) -> CheckLine {
    use tokio::io::AsyncReadExt;
    let what = format!("SMTP server {}", crate::state::redact(url));
    let Ok(u) = url::Url::parse(url) else {
        return CheckLine {
            ok: false,
            what,
            detail: "smtp_url is not a URL; fix [email] smtp_url".into(),
        };
    };
    let host = u.host_str().unwrap_or("localhost").to_string();
    let port = u
        .port()
        .unwrap_or(if u.scheme() == "smtps" { 465 } else { 25 });
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await;
    match connect {
        Ok(Ok(mut stream)) => {
            if u.scheme() == "smtps" {
                return CheckLine {
                    ok: true,
                    what,
                    detail: format!("{host}:{port} accepts connections (TLS)"),
                };
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
                Ok(Ok(n)) if buf[..n].starts_with(b"220") => CheckLine { ok: true, what, detail: format!("{host}:{port} greets with 220") },
                _ => CheckLine { ok: false, what, detail: format!("{host}:{port} accepted the connection but did not greet as an SMTP server; check [email] smtp_url") },
            }
        }
        Ok(Err(e)) => CheckLine {
            ok: false,
            what,
            detail: format!(
                "cannot connect to {host}:{port}: {e}; check [email] smtp_url and the firewall"
            ),
        },
        Err(_) => CheckLine {
            ok: false,
            what,
            detail: format!(
                "no answer from {host}:{port} within 10 s; check [email] smtp_url and the firewall"
            ),
        },
    }
}

/// Run by hand as root on a state directory owned by the service user, we would leave
/// root-owned files behind that the service then cannot write: refuse and say what to do.
pub fn refuse_root_on_service_state(settings: &Settings) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let StateUrl::Sqlite(db) = &settings.state.url else {
        return Ok(());
    };
    let Some(dir) = db.parent() else {
        return Ok(());
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.uid() != 0 => {
            let owner = user_name(m.uid()).unwrap_or_else(|| m.uid().to_string());
            Err(format!(
                "the state directory {} belongs to {owner}, and you are root: run the command as that user (sudo -u {owner} hubee-sync …) so that no root-owned file is left behind",
                dir.display()
            ))
        }
        _ => Ok(()),
    }
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}
