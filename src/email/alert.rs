//! When to tell the operators that a subscription stopped working, and that it works again
//! (pure). Alerts go to the global `[email] to`.
//!
//! - A cycle refused for its credentials (a secret regenerated in the portal, a client
//!   removed) alerts at once: waiting will not fix it.
//! - Any other failure alerts once the subscription has failed every cycle for
//!   `alert_after` (a hub outage that lasts, a spool that is full).
//! - At most one alert per subscription per `alert_every`, repeated that often while it
//!   keeps failing; one recovery mail after the first cycle that succeeds, if an alert went
//!   out.

use std::time::Duration;

use super::render::{clean, count, fr_time, Block, Doc, Section};
use crate::state::{AlertRecord, SubscriptionHealth};

/// What to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertAction {
    Nothing,
    /// The subscription needs a person.
    Alert {
        auth: bool,
        failing_since_ms: i64,
    },
    /// It works again after an alert.
    Recovery {
        failing_since_ms: Option<i64>,
    },
}

/// The decision, and the record to keep depending on whether the mail went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: AlertAction,
    /// To save once the mail was accepted (or at once when there is nothing to send).
    pub if_sent: AlertRecord,
    /// To save when the mail could not be sent (it is decided again next time).
    pub if_not_sent: AlertRecord,
}

/// Whether a recorded cycle error means the hub refused the subscription's credentials.
/// Coupled to the messages of `hubee::HubError` (`AuthRefused`, and the hint of a 401 that
/// renewing the token did not cure): the tests below pin both.
pub fn is_auth_failure(error: &str) -> bool {
    error.contains("the hub refused client_id")
        || error.contains("token refused even after renewal")
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn decide(
    health: &SubscriptionHealth,
    record: &AlertRecord,
    now_ms: i64,
    alert_after: Duration,
    alert_every: Duration,
) -> Decision {
    if health.failing() {
        // The same run of failures, unless a success came after it began.
        let since = match record.failing_since_ms {
            Some(s) if health.last_success_at_ms.is_none_or(|ok| ok < s) => s,
            _ => health.last_poll_at_ms.unwrap_or(now_ms),
        };
        let auth = health.last_error.as_deref().is_some_and(is_auth_failure);
        let due = auth || now_ms.saturating_sub(since) >= ms(alert_after);
        let allowed = record
            .alerted_at_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= ms(alert_every));
        let waiting = AlertRecord {
            failing_since_ms: Some(since),
            ..*record
        };
        if due && allowed {
            Decision {
                action: AlertAction::Alert {
                    auth,
                    failing_since_ms: since,
                },
                if_sent: AlertRecord {
                    failing_since_ms: Some(since),
                    alerted_at_ms: Some(now_ms),
                    open: true,
                },
                if_not_sent: waiting,
            }
        } else {
            Decision {
                action: AlertAction::Nothing,
                if_sent: waiting,
                if_not_sent: waiting,
            }
        }
    } else if health.last_outcome.as_deref() == Some("ok") {
        let healthy = AlertRecord {
            failing_since_ms: None,
            open: false,
            ..*record
        };
        if record.open {
            Decision {
                action: AlertAction::Recovery {
                    failing_since_ms: record.failing_since_ms,
                },
                if_sent: healthy,
                if_not_sent: *record,
            }
        } else {
            Decision {
                action: AlertAction::Nothing,
                if_sent: healthy,
                if_not_sent: healthy,
            }
        }
    } else {
        // Never ran: nothing to say yet.
        Decision {
            action: AlertAction::Nothing,
            if_sent: *record,
            if_not_sent: *record,
        }
    }
}

/// Human form of a duration in French (`6 h`, `1 h 30 min`, `45 min`).
fn fr_duration(d: Duration) -> String {
    let mins = d.as_secs() / 60;
    match (mins / 60, mins % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// The alert mail: subject and content.
pub fn alert_message(
    organisation: &str,
    health: &SubscriptionHealth,
    process_code: &str,
    auth: bool,
    failing_since_ms: i64,
    alert_every: Duration,
) -> (String, Doc) {
    let name = &health.subscription;
    let subject = if auth {
        format!("hubee-sync : ALERTE — HubEE refuse les identifiants de l'abonnement {name}")
    } else {
        format!(
            "hubee-sync : ALERTE — l'abonnement {name} est en échec depuis le {}",
            fr_time(failing_since_ms)
        )
    };
    let mut facts = vec![
        format!("Abonnement : {name} ({})", clean(process_code, 60)),
        format!(
            "En échec depuis : {} (heure de Paris), {}",
            fr_time(failing_since_ms),
            count(
                health.consecutive_failures.max(0) as usize,
                "passage en échec",
                "passages en échec"
            )
        ),
        match health.last_success_at_ms {
            Some(t) => format!("Dernier passage réussi : {}", fr_time(t)),
            None => "Dernier passage réussi : aucun".into(),
        },
    ];
    if let Some(e) = &health.last_error {
        facts.push(format!("Dernière erreur : {}", clean(e, 600)));
    }
    let todo = if auth {
        "Que faire : le secret de l'abonnement a sans doute été régénéré, ou l'abonnement retiré. Dans le portail HubEE (Gestion des abonnements), régénérez le secret de cet abonnement, mettez-le dans le fichier que nomme client_secret_file (ou la credential systemd), redémarrez le service, puis vérifiez avec « hubee-sync check »."
    } else {
        "Que faire : « hubee-sync status » et le journal du service (journalctl -u hubee-sync) disent ce qui échoue ; si HubEE est en panne, rien à faire, l'abonnement reprendra seul."
    };
    let doc = Doc {
        title: format!("Abonnement {name} : rien n'est reçu"),
        intro: vec![
            "hubee-sync ne reçoit plus les télédossiers de cet abonnement. Rien n'est perdu : ils restent sur HubEE et seront reçus dès que l'abonnement fonctionnera de nouveau.".into(),
        ],
        sections: vec![Section {
            heading: "Détails".into(),
            level: 1,
            blocks: vec![Block::Items(facts), Block::Para(todo.into())],
        }],
        footer: format!(
            "Envoyé par hubee-sync {} pour {}. Si l'erreur dure, un rappel au plus toutes les {} ; un message dira quand l'abonnement fonctionnera de nouveau.",
            env!("CARGO_PKG_VERSION"),
            clean(organisation, 100),
            fr_duration(alert_every)
        ),
    };
    (subject, doc)
}

/// The recovery mail.
pub fn recovery_message(
    organisation: &str,
    health: &SubscriptionHealth,
    failing_since_ms: Option<i64>,
) -> (String, Doc) {
    let name = &health.subscription;
    let subject = format!("hubee-sync : l'abonnement {name} fonctionne de nouveau");
    let mut facts = Vec::new();
    if let Some(s) = failing_since_ms {
        facts.push(format!("En échec depuis : {}", fr_time(s)));
    }
    if let Some(t) = health.last_success_at_ms {
        facts.push(format!("Passage réussi : {}", fr_time(t)));
    }
    let doc = Doc {
        title: format!("Abonnement {name} : de nouveau en service"),
        intro: vec!["Les télédossiers en attente sur HubEE sont reçus ; le prochain message de synthèse les listera.".into()],
        sections: vec![Section {
            heading: "Détails".into(),
            level: 1,
            blocks: vec![Block::Items(facts)],
        }],
        footer: format!(
            "Envoyé par hubee-sync {} pour {}.",
            env!("CARGO_PKG_VERSION"),
            clean(organisation, 100)
        ),
    };
    (subject, doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hubee::HubError;

    const H: i64 = 3_600_000;
    const AFTER: Duration = Duration::from_secs(3600);
    const EVERY: Duration = Duration::from_secs(6 * 3600);

    fn failing(error: &str, last_poll: i64, last_success: Option<i64>) -> SubscriptionHealth {
        SubscriptionHealth {
            subscription: "certdc".into(),
            last_poll_at_ms: Some(last_poll),
            last_outcome: Some("failed".into()),
            last_error: Some(error.into()),
            last_success_at_ms: last_success,
            consecutive_failures: 2,
        }
    }

    fn ok(at: i64) -> SubscriptionHealth {
        SubscriptionHealth {
            subscription: "certdc".into(),
            last_poll_at_ms: Some(at),
            last_outcome: Some("ok".into()),
            last_error: None,
            last_success_at_ms: Some(at),
            consecutive_failures: 0,
        }
    }

    #[test]
    fn auth_errors_of_the_hub_client_are_recognised() {
        let refused = HubError::AuthRefused {
            client_id: "c".into(),
            detail: "invalid_client".into(),
        };
        assert!(is_auth_failure(&format!(
            "listing notifications: {refused}"
        )));
        let expired = HubError::Status {
            op: crate::hubee::error::Op {
                method: "GET",
                path: "/notifications".into(),
            },
            status: 401,
            summary: None,
        };
        assert!(is_auth_failure(&expired.to_string()));
        assert!(!is_auth_failure("GET /notifications answered HTTP 503"));
    }

    #[test]
    fn auth_failure_alerts_at_once_then_is_rate_limited() {
        let rec = AlertRecord::default();
        let h = failing("the hub refused client_id c (x)", 10 * H, Some(H));
        let d = decide(&h, &rec, 10 * H, AFTER, EVERY);
        assert!(matches!(d.action, AlertAction::Alert { auth: true, .. }));
        let rec = d.if_sent;
        // Still failing an hour later: no second alert before alert_every.
        let d = decide(&h, &rec, 11 * H, AFTER, EVERY);
        assert_eq!(d.action, AlertAction::Nothing);
        // Six hours after the alert: a reminder.
        let d = decide(&h, &rec, 16 * H, AFTER, EVERY);
        assert!(matches!(d.action, AlertAction::Alert { .. }));
    }

    #[test]
    fn other_failures_wait_for_alert_after() {
        let h = failing("GET /notifications answered HTTP 503", 10 * H, Some(H));
        let d = decide(&h, &AlertRecord::default(), 10 * H, AFTER, EVERY);
        assert_eq!(d.action, AlertAction::Nothing);
        assert_eq!(d.if_sent.failing_since_ms, Some(10 * H));
        let d2 = decide(&h, &d.if_sent, 10 * H + H / 2, AFTER, EVERY);
        assert_eq!(d2.action, AlertAction::Nothing);
        let d3 = decide(&h, &d2.if_sent, 11 * H, AFTER, EVERY);
        assert_eq!(
            d3.action,
            AlertAction::Alert {
                auth: false,
                failing_since_ms: 10 * H
            }
        );
    }

    #[test]
    fn recovery_only_after_an_alert_and_once() {
        let h = failing("the hub refused client_id c", 10 * H, None);
        let rec = decide(&h, &AlertRecord::default(), 10 * H, AFTER, EVERY).if_sent;
        let d = decide(&ok(12 * H), &rec, 12 * H, AFTER, EVERY);
        assert!(matches!(d.action, AlertAction::Recovery { .. }));
        // Not sent: decided again next time.
        assert!(d.if_not_sent.open);
        let rec = d.if_sent;
        assert!(!rec.open && rec.failing_since_ms.is_none());
        assert_eq!(
            decide(&ok(13 * H), &rec, 13 * H, AFTER, EVERY).action,
            AlertAction::Nothing
        );
        // Failing again within alert_every of the first alert: rate-limited.
        let h2 = failing("the hub refused client_id c", 14 * H, Some(12 * H));
        assert_eq!(
            decide(&h2, &rec, 14 * H, AFTER, EVERY).action,
            AlertAction::Nothing
        );
    }

    #[test]
    fn a_success_between_failures_starts_a_new_run() {
        let rec = AlertRecord {
            failing_since_ms: Some(H),
            alerted_at_ms: None,
            open: false,
        };
        let h = failing("HTTP 503", 10 * H, Some(9 * H));
        let d = decide(&h, &rec, 10 * H, AFTER, EVERY);
        assert_eq!(d.action, AlertAction::Nothing);
        assert_eq!(d.if_sent.failing_since_ms, Some(10 * H));
    }
}
