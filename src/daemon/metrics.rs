//! The daemon's side of `[metrics]`: the listener started with `run` (before READY, so a
//! port taken stops the start with a clear error), the registry told of the subscriptions at
//! start and at each reload, and the gauges read from the state database after each cycle.
//! The counting itself is in `crate::metrics`.

use std::time::Duration;

use chrono::Utc;

use crate::config::Settings;
use crate::state::StateDb;

use crate::config::cron::Timing;

/// This build's version, for `hubee_sync_build_info`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Tells the registry the subscriptions and, when `[metrics] listen` is set, opens the
/// listener. `Err`: the message to print (the daemon then exits 1, nothing received).
pub async fn start(settings: &Settings, timings: &[Timing], state: &StateDb) -> Result<(), String> {
    let Some(m) = &settings.metrics else {
        return Ok(());
    };
    configure(settings, timings, state);
    let (bound, _task) = crate::metrics::http::serve(m.listen, VERSION)
        .await
        .map_err(|e| {
            format!("{e}\nhubee-sync run: not started; nothing was received or acknowledged")
        })?;
    tracing::info!(listen = %bound, "metrics: serving GET /metrics and GET /healthz");
    // The gauges kept in the state database (parked, quarantined, outbox, last success),
    // across restarts; read aside so that READY does not wait for it.
    let (state, names) = (state.clone(), names(settings));
    tokio::spawn(async move {
        for name in names {
            refresh(&state, &name, true).await;
        }
    });
    Ok(())
}

/// At start and after each reload (the subscriptions, their process codes and schedules).
pub fn configure(settings: &Settings, timings: &[Timing], state: &StateDb) {
    if settings.metrics.is_none() {
        return;
    }
    let subs: Vec<crate::metrics::SubscriptionInfo> = settings
        .subscriptions
        .iter()
        .zip(timings)
        .map(|(s, t)| crate::metrics::SubscriptionInfo {
            name: s.name.clone(),
            process_code: s.process_code.clone(),
            client_id: s.client_id.clone(),
            period: period(t),
        })
        .collect();
    crate::metrics::configure(&subs, crate::cluster::Cluster::of(state).is_some());
}

/// After a subscription's cycle and its outbox pass: the gauges the state database holds.
pub async fn after_cycle(state: &StateDb, name: &str) {
    if crate::metrics::enabled() {
        refresh(state, name, false).await;
    }
}

async fn refresh(state: &StateDb, name: &str, at_start: bool) {
    match state.status(&[name.to_string()]).await {
        Ok(rows) => {
            if let Some(r) = rows.first() {
                let last_success_at = r
                    .last_success_at
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp_millis() as f64 / 1000.0);
                crate::metrics::backlog(
                    name,
                    crate::metrics::Backlog {
                        parked: r.parked,
                        quarantined: r.quarantined,
                        outbox_pending: r.outbox_pending,
                        last_success_at,
                        consecutive_failures: r.consecutive_failures,
                    },
                    at_start,
                );
            }
        }
        Err(e) => {
            tracing::warn!(subscription = %name, error = %e, "metrics: cannot read the counts of the state database; the gauges keep their last values")
        }
    }
}

fn names(settings: &Settings) -> Vec<String> {
    settings
        .subscriptions
        .iter()
        .map(|s| s.name.clone())
        .collect()
}

/// The longest gap the schedule leaves between two cycles: the interval of `every`; for a
/// cron, the largest gap among its next 64 fire times (a weekday schedule's weekend).
pub fn period(t: &Timing) -> Duration {
    match t {
        Timing::Every(d) => *d,
        Timing::Cron(_) => {
            let mut longest = Duration::ZERO;
            let mut at = t.next_after(Utc::now());
            for _ in 0..64 {
                let Some(a) = at else { break };
                let next = t.next_after(a);
                if let Some(n) = next {
                    longest = longest.max((n - a).to_std().unwrap_or_default());
                }
                at = next;
            }
            if longest.is_zero() {
                Duration::from_secs(86400)
            } else {
                longest
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Schedule;

    #[test]
    fn a_weekday_cron_is_judged_by_its_weekend_gap() {
        let every = Timing::from_schedule(&Schedule::Every(Duration::from_secs(300))).unwrap();
        assert_eq!(period(&every), Duration::from_secs(300));
        let five = Timing::from_schedule(&Schedule::Cron("0 */5 * * * *".into())).unwrap();
        assert_eq!(period(&five), Duration::from_secs(300));
        let weekdays = Timing::from_schedule(&Schedule::Cron("0 0 8 * * Mon-Fri".into())).unwrap();
        let p = period(&weekdays).as_secs();
        // Friday 08:00 → Monday 08:00, give or take a daylight-saving hour.
        assert!((3 * 86400 - 3600..=3 * 86400 + 3600).contains(&p), "{p}");
    }
}
