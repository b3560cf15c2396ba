//! Items that keep failing (CONTRACT, "The rule of acknowledgement"; issue: parking and
//! quarantine). The hub returns the oldest notifications first and has no offset, so a
//! télédossier that fails every cycle would hide everything behind it. Such an item is
//! *parked*: recorded in the state database as work owed, then its notification deleted;
//! parked work is retried every cycle. After `quarantine_after` (and at least
//! [`QUARANTINE_MIN_CYCLES`] failed cycles) it is *quarantined*: whatever could be fetched goes
//! to quarantine/ with reason.txt, the case is set to SI_INTG_ERROR with an event saying why,
//! and `status` and the logs say so. Nothing is dropped silently.

use std::time::Duration;

use crate::deliver::names;
use crate::hubee::status::{strict_path, CaseStatus};
use crate::state::{Failure, WorkItem};

use super::context::{ItemError, SubscriptionCtx};
use super::transition::{change_status, status_event, Change, ChangeError, Moved};

/// Failed cycles after which an item is parked (its notification deleted).
pub const PARK_AFTER: i64 = 2;
/// Failed cycles an item needs, besides `quarantine_after`, before quarantine.
pub const QUARANTINE_MIN_CYCLES: i64 = 3;

/// What to do with an item after one more failed cycle. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the notification; try again next cycle.
    Retry,
    /// Record the work as owed and delete the notification.
    Park,
    /// Give up and report it to a person.
    Quarantine,
}

pub fn verdict(f: &Failure, now_ms: i64, quarantine_after: Duration) -> Verdict {
    let age = Duration::from_millis(now_ms.saturating_sub(f.first_at_ms).max(0) as u64);
    if f.attempts >= QUARANTINE_MIN_CYCLES && age >= quarantine_after {
        Verdict::Quarantine
    } else if f.attempts >= PARK_AFTER {
        Verdict::Park
    } else {
        Verdict::Retry
    }
}

/// The marker of our quarantine event on a case.
pub fn quarantine_key(item: &WorkItem) -> String {
    format!("hubee-sync:quarantine:{}:r{}", item.key(), item.round)
}

/// Sets an item aside: quarantine/ENTRY with reason.txt, SI_INTG_ERROR and an event on the
/// hub, then the state. Each step is idempotent, so a failure part-way is retried later.
pub async fn quarantine(
    ctx: &SubscriptionCtx,
    item: &WorkItem,
    failure: &Failure,
) -> Result<String, ItemError> {
    // An item failing in the queue may not know its case's external id yet: ask the hub
    // (best effort), so that reason.txt, the entry name and the digest can show it.
    let external_id = match &item.external_id {
        Some(e) => e.clone(),
        None if item.kind != "invalid" => ctx
            .session
            .get_case(&item.case_id)
            .await
            .ok()
            .and_then(|(c, _)| c.external_id)
            .unwrap_or_default(),
        None => String::new(),
    };
    let entry_name = if item.kind == "invalid" {
        names::entry_name("notification", &item.case_id, None, 0)
    } else {
        let event = (!item.event_id.is_empty()).then_some(item.event_id.as_str());
        names::entry_name(&external_id, &item.case_id, event, item.round.max(0) as u32)
    };
    let since = chrono::DateTime::from_timestamp_millis(failure.first_at_ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let path = match ctx.spool.quarantined(&entry_name) {
        Some(p) => p,
        None => {
            let reason = format!(
                "hubee-sync n'a pas pu intégrer ce télédossier / could not deliver this télédossier\n\n\
                 abonnement / subscription: {sub}\n\
                 dossier / case: {case} (numéro {ext})\n\
                 événement / event: {event}\n\
                 échecs / failed cycles: {n} depuis / since {since}\n\
                 dernière erreur / last error: {err}\n\n\
                 Le dossier est passé au statut SI_INTG_ERROR sur HubEE, avec un événement, sauf s'il\n\
                 porte déjà une décision (DONE, REFUSED, CLOSED), qui n'est jamais défaite.\n\
                 The case is set to SI_INTG_ERROR on HubEE, with an event, unless it already carries\n\
                 a decision (DONE, REFUSED, CLOSED), which is never undone.\n\
                 Que faire / what to do: examine the files here; the online service (OSL) may resend or\n\
                 reopen the case, which hubee-sync then delivers as a new round. This folder is not\n\
                 read by hubee-sync again; move or delete it when done.\n",
                sub = ctx.name,
                case = item.case_id,
                ext = if external_id.is_empty() { "?" } else { &external_id },
                event = if item.event_id.is_empty() { "-" } else { &item.event_id },
                n = failure.attempts,
                err = failure.last_error,
            );
            let pending = ctx.spool.begin(&entry_name).map_err(ItemError::spool)?;
            if item.kind != "invalid" {
                collect_what_we_can(ctx, item, &pending).await;
            }
            pending
                .quarantine(&reason)
                .await
                .map_err(ItemError::spool)?
        }
    };
    if item.kind != "invalid" {
        mark_integration_error(ctx, item, &failure.last_error).await?;
    }
    let path_s = path.display().to_string();
    ctx.state.quarantine(&ctx.name, item, Some(&path_s)).await?;
    super::context::note(
        ctx,
        "quarantined",
        &item.case_id,
        Some(&external_id),
        (!item.event_id.is_empty()).then_some(item.event_id.as_str()),
        serde_json::json!({"path": path_s, "attempts": failure.attempts, "error": failure.last_error, "since_ms": failure.first_at_ms}),
    )
    .await;
    crate::events::quarantined(
        &ctx.name,
        &item.case_id,
        &external_id,
        &item.event_id,
        failure.attempts,
        &path_s,
        &failure.last_error,
    );
    Ok(path_s)
}

/// Best effort: the case (and event) JSON and whatever bytes each file gives, unverified.
async fn collect_what_we_can(
    ctx: &SubscriptionCtx,
    item: &WorkItem,
    pending: &crate::deliver::PendingEntry,
) {
    let attachments = if item.event_id.is_empty() {
        match ctx.session.get_case(&item.case_id).await {
            Ok((case, raw)) => {
                let _ = pending.write_small("case.json", &raw).await;
                case.attachments
            }
            Err(_) => return,
        }
    } else {
        match ctx.session.get_event(&item.case_id, &item.event_id).await {
            Ok((ev, raw)) => {
                let _ = pending.write_small("event.json", &raw).await;
                ev.attachments
            }
            Err(_) => return,
        }
    };
    let mut namer = crate::deliver::names::FileNamer::new();
    for a in attachments
        .iter()
        .filter(|a| a.status.as_deref() == Some("RECEIVED"))
    {
        let Some(aid) = a.id.as_deref() else { continue };
        let rel = format!(
            "attachments/{}",
            namer.name_for(a.file_name.as_deref().unwrap_or(""))
        );
        let dl = if item.event_id.is_empty() {
            ctx.session
                .download_case_attachment(&item.case_id, aid)
                .await
        } else {
            ctx.session
                .download_event_attachment(&item.case_id, &item.event_id, aid)
                .await
        };
        let (Ok(mut dl), Ok(mut w)) = (dl, pending.create_file(&rel).await) else {
            continue;
        };
        // Bounded: a quarantined file is kept for a person, not trusted.
        let limit = a.size.unwrap_or(0).saturating_add(1 << 20);
        while let Ok(Some(chunk)) = dl.chunk().await {
            if w.bytes_written() + chunk.len() as u64 > limit || w.write(&chunk).await.is_err() {
                break;
            }
        }
        let _ = w.finish().await;
    }
}

/// SI_INTG_ERROR on the case, with one STATUS_UPDATE event saying why (PROTOCOL §8.2,
/// "If integration fails"), on any kind of hub ([`super::transition`]). A case that already
/// has a decision (`DONE`, `REFUSED`, closed) is left as it is: an integration error never
/// undoes someone's decision. A status the hub cannot reach from where the case is (the path
/// of the strict table) is not forced, and no event then claims it.
async fn mark_integration_error(
    ctx: &SubscriptionCtx,
    item: &WorkItem,
    error: &str,
) -> Result<(), ItemError> {
    let marker = quarantine_key(item);
    let mut short = error.to_string();
    crate::hubee::model::truncate_chars(&mut short, 400);
    let author = ctx.author.clone();
    let target = CaseStatus::SiIntgError;
    let path = |from: CaseStatus| strict_path(from, target);
    let message =
        format!("Intégration impossible dans le logiciel du service instructeur : {short}");
    let event =
        |from: CaseStatus| status_event(&author, Some(message.clone()), &marker, from, target);
    let change = Change {
        case_id: &item.case_id,
        target,
        marker: &marker,
        path: &path,
        event: &event,
        owe_event_at_target: false,
    };
    match change_status(&ctx.session, &change, None).await {
        Ok(Moved::Done { .. }) => Ok(()),
        Ok(Moved::AlreadyThere { status }) => {
            tracing::info!(subscription = %ctx.name, case_id = %item.case_id, status = %status,
                "quarantined case left at its status (already an integration error or a decision); no event");
            Ok(())
        }
        Ok(Moved::EventRefused {
            error,
            cap,
            status,
            reached,
        }) => {
            let detail = serde_json::json!({"what": "quarantine"});
            super::case::note_event_refused(
                ctx,
                &item.case_id,
                item.external_id.as_deref(),
                detail,
                &error,
                cap,
                status,
                reached,
                target,
            )
            .await?;
            Ok(())
        }
        Err(ChangeError::Impossible { from, to }) => {
            tracing::warn!(subscription = %ctx.name, case_id = %item.case_id, status = %from,
                "the hub allows no way from {from} to {to} for this case; quarantined without changing its status");
            Ok(())
        }
        Err(ChangeError::UnknownStatus(s)) => Err(ItemError::Refused(format!(
            "the hub reports an unknown case status {s:?} for case {}",
            item.case_id
        ))),
        Err(ChangeError::Refused { doing, error }) if error.status() == Some(400) => {
            // The hub refuses the status for this case (a rule of the démarche): quarantine
            // still happens, the case keeps its status, and nothing claims otherwise.
            tracing::warn!(subscription = %ctx.name, case_id = %item.case_id, error = %error,
                "the hub refuses SI_INTG_ERROR for this case ({doing}); quarantined without changing its status");
            Ok(())
        }
        Err(ChangeError::Refused { doing, error } | ChangeError::Transient { doing, error }) => {
            Err(ItemError::hub(error, doing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(attempts: i64, age_s: i64) -> (Failure, i64) {
        let now = 1_000_000_000;
        (
            Failure {
                attempts,
                first_at_ms: now - age_s * 1000,
                last_error: "x".into(),
            },
            now,
        )
    }

    #[test]
    fn first_failure_is_retried_with_its_notification() {
        let (x, now) = f(1, 0);
        assert_eq!(verdict(&x, now, Duration::from_secs(60)), Verdict::Retry);
    }

    #[test]
    fn repeated_failure_is_parked() {
        let (x, now) = f(2, 10);
        assert_eq!(verdict(&x, now, Duration::from_secs(60)), Verdict::Park);
    }

    #[test]
    fn quarantine_needs_both_the_delay_and_three_cycles() {
        let (x, now) = f(2, 3600);
        assert_eq!(verdict(&x, now, Duration::from_secs(60)), Verdict::Park);
        let (x, now) = f(10, 30);
        assert_eq!(verdict(&x, now, Duration::from_secs(60)), Verdict::Park);
        let (x, now) = f(3, 60);
        assert_eq!(
            verdict(&x, now, Duration::from_secs(60)),
            Verdict::Quarantine
        );
    }
}
