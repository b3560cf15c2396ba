//! The email room: a daily digest for the people who read what arrived, and alerts for the
//! operators when a subscription stops working (issue 7).
//!
//! - [`lists`]: who gets which digest (the global `to`, each subscription's `email_to`), and
//!   the key of each list's cursor (pure).
//! - [`digest`]: what a digest says, from the activity journal, subscription health and open
//!   work (pure, French).
//! - [`alert`]: when to send an alert or a recovery mail, and what they say (pure).
//! - [`render`]: one content, two renderings: plain text and HTML (pure).
//! - [`smtp`]: sending through `smtp_url` with lettre (plain, STARTTLS required, implicit
//!   TLS; authentication; timeouts; retries with backoff).
//! - here: the I/O between them: [`prepare_digests`], [`send_digest`], [`evaluate_alerts`],
//!   the `digest` command ([`digest_command`]) and the daemon's mail tasks ([`spawn`]).
//!
//! A digest's cursor moves only after the SMTP server accepted it: a failed send leaves
//! everything for the next one; a crash between acceptance and the cursor's move repeats
//! items, never skips them. Mail never blocks receiving: in `run` it lives in its own tasks,
//! and every send is bounded in time.

pub mod alert;
pub mod digest;
pub mod lists;
pub mod render;
pub mod smtp;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::cron::Cron;
use crate::config::{Delivery, EmailSettings, Settings};
use crate::state::{now_ms, Activity, StateDb, StateError};
use digest::{Digest, DigestInput, SubscriptionInfo};
use lists::RecipientList;
use smtp::{Mail, MailError, Mailer};

/// A new recipient list's first digest looks back this far in the journal at most.
pub const FIRST_DIGEST_LOOKBACK: Duration = Duration::from_secs(7 * 86400);
/// Activity records one digest reads at most; the rest goes in the next one.
pub const MAX_ITEMS: i64 = 2000;
/// How often the daemon looks at subscription health besides after each cycle.
pub const ALERT_CHECK_EVERY: Duration = Duration::from_secs(60);
/// Retries of a scheduled digest in `run`: tries in all, first wait, longest wait.
pub const DIGEST_ATTEMPTS: u32 = 5;
pub const DIGEST_FIRST_RETRY: Duration = Duration::from_secs(60);
pub const DIGEST_MAX_RETRY: Duration = Duration::from_secs(15 * 60);

/// One recipient list's next digest, rendered.
#[derive(Debug, Clone)]
pub struct PreparedDigest {
    pub list: RecipientList,
    pub digest: Digest,
    pub mail: Mail,
    /// Where the cursor moves once sent: the last item included, or where it started when
    /// there was none (an empty digest still records when it was sent).
    pub cursor_to: i64,
}

/// What became of one list's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Nothing to say and `send_empty = false`.
    NothingToSay,
}

/// Why a digest could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Mail(#[from] MailError),
    #[error("the digest to {to} was accepted by the SMTP server, but its cursor could not be recorded ({source}); the next digest will repeat its items")]
    CursorNotMoved {
        to: String,
        #[source]
        source: StateError,
    },
}

/// The next digest of the subscriptions of `settings`, for a given set of them.
fn infos(settings: &Settings, names: &[String]) -> Vec<SubscriptionInfo> {
    names
        .iter()
        .filter_map(|n| settings.subscription(n))
        .map(|s| SubscriptionInfo {
            name: s.name.clone(),
            process_code: s.process_code.clone(),
            database: matches!(s.delivery, Delivery::Database { .. }),
        })
        .collect()
}

/// Applicant names, read from the delivered entries' `case.json` (only when
/// `include_personal_data`): in `new/`, or in `cur/` if the consumer took it.
async fn applicants(activity: &[Activity]) -> HashMap<i64, String> {
    let mut out = HashMap::new();
    for a in activity {
        if !matches!(a.kind.as_str(), "received" | "reopened" | "redelivered") {
            continue;
        }
        let Some(entry) = a.detail.get("entry").and_then(|e| e.as_str()) else {
            continue;
        };
        let entry = std::path::Path::new(entry);
        let mut candidates = vec![entry.join("case.json")];
        if let (Some(parent), Some(name)) = (entry.parent(), entry.file_name()) {
            if let Some(spool) = parent.parent() {
                candidates.push(spool.join("cur").join(name).join("case.json"));
            }
        }
        for c in candidates {
            let Ok(bytes) = tokio::fs::read(&c).await else {
                continue;
            };
            let Ok(case) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                break;
            };
            let ap = &case["applicant"];
            let name: Vec<&str> = ["firstName", "lastName", "name", "companyName"]
                .iter()
                .filter_map(|k| ap.get(*k).and_then(|v| v.as_str()))
                .filter(|s| !s.is_empty())
                .collect();
            if !name.is_empty() {
                out.insert(a.seq, render::clean(&name.join(" "), 120));
            }
            break;
        }
    }
    out
}

/// Renders the next digest of every recipient list (nothing is sent or moved).
pub async fn prepare_digests(
    settings: &Settings,
    email: &EmailSettings,
    state: &StateDb,
) -> Result<Vec<PreparedDigest>, StateError> {
    let now = now_ms();
    let mut out = Vec::new();
    for list in lists::recipient_lists(email, &settings.subscriptions) {
        let cursor = state.digest_cursor(&list.key).await?;
        let start = match cursor {
            Some(c) => c.last_seq,
            None => {
                let lookback = i64::try_from(FIRST_DIGEST_LOOKBACK.as_millis()).unwrap_or(0);
                state.activity_seq_before(now - lookback).await?
            }
        };
        let activity = state
            .activity_of(start, &list.subscriptions, MAX_ITEMS)
            .await?;
        let health = state.subscription_health(&list.subscriptions).await?;
        let mut open_work = HashMap::new();
        for name in &list.subscriptions {
            open_work.insert(name.clone(), state.open_work(name).await?);
        }
        let personal = if email.include_personal_data {
            Some(applicants(&activity).await)
        } else {
            None
        };
        let subs = infos(settings, &list.subscriptions);
        let digest = digest::build(&DigestInput {
            organisation: &settings.hub.editor_name,
            list: &list,
            subscriptions: &subs,
            activity: &activity,
            health: &health,
            open_work: &open_work,
            since_ms: cursor.map(|c| c.sent_at_ms),
            now_ms: now,
            personal: personal.as_ref(),
            more_follows: activity.len() as i64 >= MAX_ITEMS,
        });
        let mail = Mail {
            to: list.to.clone(),
            subject: digest.subject.clone(),
            text: render::to_text(&digest.doc),
            html: render::to_html(&digest.doc),
        };
        out.push(PreparedDigest {
            cursor_to: digest.last_seq.unwrap_or(start),
            list,
            digest,
            mail,
        });
    }
    Ok(out)
}

/// Sends one prepared digest (unless there is nothing to say and `send_empty` is off), then
/// moves its cursor.
pub async fn send_digest(
    email: &EmailSettings,
    state: &StateDb,
    mailer: &Mailer,
    prepared: &PreparedDigest,
    attempts: u32,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, DigestError> {
    if prepared.digest.nothing_to_say && !email.send_empty {
        return Ok(Outcome::NothingToSay);
    }
    mailer
        .send_with_retry(
            &prepared.mail,
            attempts,
            DIGEST_FIRST_RETRY,
            DIGEST_MAX_RETRY,
            stop,
        )
        .await?;
    let to = prepared.list.to.join(", ");
    state
        .move_digest_cursor(&prepared.list.key, &to, prepared.cursor_to, now_ms())
        .await
        .map_err(|source| DigestError::CursorNotMoved {
            to: to.clone(),
            source,
        })?;
    tracing::info!(to = %to, subject = %prepared.mail.subject, cursor = prepared.cursor_to, "digest sent");
    Ok(Outcome::Sent)
}

/// Prepares and sends every list's digest. Returns false if any failed (logged).
pub async fn send_all_digests(
    settings: &Settings,
    email: &EmailSettings,
    state: &StateDb,
    mailer: &Mailer,
    attempts: u32,
    stop: &Stop,
) -> bool {
    let prepared = match prepare_digests(settings, email, state).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot prepare the digests; they are tried again at the next digest time");
            return false;
        }
    };
    let mut all_ok = true;
    for p in &prepared {
        match send_digest(email, state, mailer, p, attempts, stop.requested()).await {
            Ok(Outcome::Sent) => {}
            Ok(Outcome::NothingToSay) => tracing::info!(to = %p.list.to.join(", "),
                "nothing to say since the last digest: none sent (send_empty = false)"),
            Err(e) => {
                all_ok = false;
                tracing::error!(to = %p.list.to.join(", "), error = %e,
                    "digest not sent; everything it held goes in the next one");
            }
        }
    }
    all_ok
}

/// Looks at every subscription's health and sends the alerts and recovery mails due.
pub async fn evaluate_alerts(
    settings: &Settings,
    email: &EmailSettings,
    state: &StateDb,
    mailer: &Mailer,
) -> Result<(), StateError> {
    let names: Vec<String> = settings
        .subscriptions
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let now = now_ms();
    for health in state.subscription_health(&names).await? {
        let record = state.alert_record(&health.subscription).await?;
        let d = alert::decide(&health, &record, now, email.alert_after, email.alert_every);
        let process_code = settings
            .subscription(&health.subscription)
            .map(|s| s.process_code.as_str())
            .unwrap_or("");
        let (subject, doc) = match &d.action {
            alert::AlertAction::Nothing => {
                if d.if_sent != record {
                    state
                        .save_alert_record(&health.subscription, &d.if_sent)
                        .await?;
                }
                continue;
            }
            alert::AlertAction::Alert {
                auth,
                failing_since_ms,
            } => alert::alert_message(
                &settings.hub.editor_name,
                &health,
                process_code,
                *auth,
                *failing_since_ms,
                email.alert_every,
            ),
            alert::AlertAction::Recovery { failing_since_ms } => {
                alert::recovery_message(&settings.hub.editor_name, &health, *failing_since_ms)
            }
        };
        let mail = Mail {
            to: email.to.clone(),
            subject,
            text: render::to_text(&doc),
            html: render::to_html(&doc),
        };
        match mailer.send(&mail).await {
            Ok(()) => {
                state
                    .save_alert_record(&health.subscription, &d.if_sent)
                    .await?;
                tracing::info!(subscription = %health.subscription, to = %mail.to.join(", "), subject = %mail.subject, "alert mail sent");
            }
            Err(e) => {
                state
                    .save_alert_record(&health.subscription, &d.if_not_sent)
                    .await?;
                tracing::error!(subscription = %health.subscription, subject = %mail.subject, error = %e,
                    "cannot send the alert mail; it is tried again at the next check");
            }
        }
    }
    Ok(())
}

/// `hubee-sync digest [--send]`: prints each list's next digest (text part); with `send`,
/// sends them now and moves their cursors. 0, or 1 if a digest could not be sent; 78
/// without an `[email]` section.
pub async fn digest_command(settings: &Settings, send: bool, html: bool) -> ExitCode {
    use crate::exit::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
    let Some(email) = &settings.email else {
        eprintln!(
            "{}: there is no [email] section, so there is no digest; add one with smtp_url, from and to (see README \"Email digests and alerts\")",
            settings.source.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let mailer = if send {
        match Mailer::new(email) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    } else {
        None
    };
    let state = match StateDb::open(&crate::state::state_location(settings)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let prepared = match prepare_digests(settings, email, &state).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot prepare the digest: {e}");
            state.close().await;
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut ok = true;
    for p in &prepared {
        let to = p.list.to.join(", ");
        let scope = if p.list.all {
            "tous les abonnements".to_string()
        } else {
            p.list.subscriptions.join(", ")
        };
        let Some(mailer) = &mailer else {
            if html {
                println!("{}", p.mail.html);
                continue;
            }
            println!("=== Synthèse pour {to} ({scope}) ===");
            println!("Objet : {}", p.mail.subject);
            if p.digest.nothing_to_say && !email.send_empty {
                println!("(rien à signaler : aucun message ne serait envoyé, send_empty = false)");
            }
            println!();
            println!("{}", p.mail.text);
            continue;
        };
        match send_digest(email, &state, mailer, p, 1, std::future::pending()).await {
            Ok(Outcome::Sent) => println!("{to} ({scope}) : synthèse envoyée — {}", p.mail.subject),
            Ok(Outcome::NothingToSay) => println!(
                "{to} ({scope}) : rien à signaler, aucun message envoyé (send_empty = false)"
            ),
            Err(e) => {
                ok = false;
                eprintln!("{to} ({scope}) : synthèse non envoyée : {e}; what it holds stays for the next digest");
            }
        }
    }
    state.close().await;
    ExitCode::from(if ok { EXIT_OK } else { EXIT_FAILURE })
}

/// When the next digest goes out after `after`: `[email] digest_schedule` read in
/// Europe/Paris wall-clock time by the daemon's own cron (08:00 stays 08:00 in Paris across
/// the daylight-saving changes). `Err` if the schedule cannot be read; `Ok(None)` if it
/// never fires again.
pub fn next_digest_after(
    email: &EmailSettings,
    after: chrono::DateTime<Utc>,
) -> Result<Option<chrono::DateTime<Utc>>, String> {
    Ok(Cron::parse(&email.digest_schedule)?.next_after(after))
}

/// A stop signal for the mail tasks.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once a stop is requested (never if the sender is gone without one).
    pub async fn requested(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The daemon's mail: the digest at its schedule, alerts after each cycle and every
/// [`ALERT_CHECK_EVERY`]. Two tasks, apart from the subscriptions' tasks.
pub struct MailTasks {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl MailTasks {
    /// Stops both tasks, waiting at most `bound` for a send in progress (a digest accepted
    /// but not yet recorded is repeated next time, never lost).
    pub async fn stop(mut self, bound: Duration) {
        self.stop.send_replace(true);
        let all = async {
            for h in &mut self.handles {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(bound, all).await.is_err() {
            tracing::warn!(
                "a mail was still being sent at stop; it is cut (a digest is repeated next time)"
            );
        }
        for h in &self.handles {
            h.abort();
        }
    }
}

/// Starts the mail tasks of `run`. `cycle_done` is notified by the subscriptions' tasks
/// after each cycle. Errors (a bad smtp_url, a digest schedule this version cannot read)
/// are logged and mean no mail, never a stopped daemon.
pub fn spawn(
    settings: Arc<Settings>,
    state: StateDb,
    cycle_done: Arc<Notify>,
) -> Option<MailTasks> {
    let email = settings.email.clone()?;
    let mailer = match Mailer::new(&email) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "no digest or alert mail will be sent");
            return None;
        }
    };
    let schedule = match next_digest_after(&email, Utc::now()) {
        Ok(_) => Some(email.clone()),
        Err(e) => {
            tracing::error!(error = %e, "[email] digest_schedule cannot be read: no digest will be sent (alerts still are)");
            None
        }
    };
    let (tx, rx) = watch::channel(false);
    let stop = Stop(rx);
    let mut handles = Vec::new();
    if let Some(email) = schedule {
        handles.push(tokio::spawn(digest_loop(
            settings.clone(),
            email,
            state.clone(),
            mailer.clone(),
            stop.clone(),
        )));
    }
    handles.push(tokio::spawn(alert_loop(
        settings, email, state, mailer, cycle_done, stop,
    )));
    Some(MailTasks { stop: tx, handles })
}

/// Several nodes: one of them, the holder of the mail lease, sends digests and alerts.
fn sends_mail(state: &StateDb) -> bool {
    crate::cluster::Cluster::of(state).is_none_or(|c| c.holds(crate::cluster::MAIL_UNIT))
}

async fn digest_loop(
    settings: Arc<Settings>,
    email: EmailSettings,
    state: StateDb,
    mailer: Mailer,
    stop: Stop,
) {
    loop {
        let Ok(Some(at)) = next_digest_after(&email, Utc::now()) else {
            tracing::warn!(schedule = %email.digest_schedule, "the digest schedule never fires again: no more digests until the configuration changes");
            return;
        };
        tracing::info!(next = %at.with_timezone(&crate::config::cron::ZONE), server = %mailer.server(), "next digest");
        tokio::select! {
            _ = stop.requested() => return,
            _ = crate::clock::sleep_until_wall(at) => {}
        }
        if !sends_mail(&state) {
            tracing::info!("digest time: another node holds the mail and sends the digests");
            continue;
        }
        send_all_digests(&settings, &email, &state, &mailer, DIGEST_ATTEMPTS, &stop).await;
    }
}

async fn alert_loop(
    settings: Arc<Settings>,
    email: EmailSettings,
    state: StateDb,
    mailer: Mailer,
    cycle_done: Arc<Notify>,
    stop: Stop,
) {
    loop {
        tokio::select! {
            _ = stop.requested() => return,
            _ = cycle_done.notified() => {}
            _ = tokio::time::sleep(ALERT_CHECK_EVERY) => {}
        }
        if !sends_mail(&state) {
            continue; // another node evaluates and sends the alerts
        }
        if let Err(e) = evaluate_alerts(&settings, &email, &state, &mailer).await {
            tracing::error!(error = %e, "cannot evaluate subscription alerts; tried again at the next check");
        }
    }
}
