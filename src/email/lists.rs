//! Who gets which digest (pure). The global `[email] to` gets one digest of every
//! subscription; each subscription's `email_to` gets one of its own. Subscriptions whose
//! `email_to` name the same addresses share one digest; an `email_to` equal to `to` adds
//! nothing (those people already get everything).
//!
//! Each list has a stable key, under which the state database keeps its digest cursor: the
//! normalized, sorted addresses, and which subscriptions it covers (`*` for all).

use crate::config::{EmailSettings, Subscription};

/// One digest's recipients and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientList {
    /// The cursor's key in the state database.
    pub key: String,
    /// Addresses as written in the configuration (first spelling of each).
    pub to: Vec<String>,
    /// The subscriptions the digest covers, in configuration order.
    pub subscriptions: Vec<String>,
    /// The global list: every subscription.
    pub all: bool,
}

/// Lower-case, trimmed, sorted, without duplicates.
fn normalized(addresses: &[String]) -> Vec<String> {
    let mut v: Vec<String> = addresses.iter().map(|a| a.trim().to_lowercase()).collect();
    v.sort();
    v.dedup();
    v
}

fn first_spellings(addresses: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    addresses
        .iter()
        .filter(|a| seen.insert(a.trim().to_lowercase()))
        .map(|a| a.trim().to_string())
        .collect()
}

/// The digests to prepare, the global one first.
pub fn recipient_lists(
    email: &EmailSettings,
    subscriptions: &[Subscription],
) -> Vec<RecipientList> {
    let global = normalized(&email.to);
    let mut lists = vec![RecipientList {
        key: format!("to={};subscriptions=*", global.join(",")),
        to: first_spellings(&email.to),
        subscriptions: subscriptions.iter().map(|s| s.name.clone()).collect(),
        all: true,
    }];
    // Group subscriptions by their normalized email_to.
    let mut groups: Vec<(Vec<String>, Vec<String>, Vec<String>)> = Vec::new();
    for sub in subscriptions {
        let addrs = normalized(&sub.email_to);
        if addrs.is_empty() || addrs == global {
            continue;
        }
        match groups.iter_mut().find(|(a, _, _)| *a == addrs) {
            Some((_, subs, _)) => subs.push(sub.name.clone()),
            None => groups.push((
                addrs,
                vec![sub.name.clone()],
                first_spellings(&sub.email_to),
            )),
        }
    }
    for (addrs, subs, to) in groups {
        lists.push(RecipientList {
            key: format!("to={};subscriptions={}", addrs.join(","), subs.join(",")),
            to,
            subscriptions: subs,
            all: false,
        });
    }
    lists
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Delivery, Schedule, SecretSource};
    use crate::hubee::status::CaseStatus;
    use std::time::Duration;

    fn sub(name: &str, email_to: &[&str]) -> Subscription {
        Subscription {
            name: name.into(),
            process_code: "CERTDC".into(),
            client_id: "c".into(),
            secret: SecretSource::Inline(crate::config::Secret::new("s")),
            schedule: Schedule::Every(Duration::from_secs(60)),
            receipt_status: CaseStatus::InProgress,
            delivery: Delivery::Spool {
                path: format!("/spool/{name}").into(),
                group: None,
            },
            email_to: email_to.iter().map(|s| s.to_string()).collect(),
            quarantine_after: Duration::from_secs(3600),
            outbox_retention: Duration::from_secs(90 * 86400),
            source: "/etc/hubee-sync/hubee-sync.toml".into(),
        }
    }

    pub(crate) fn email(to: &[&str]) -> EmailSettings {
        EmailSettings {
            smtp_url: crate::config::Secret::new("smtp://127.0.0.1:25"),
            from: "hubee@mairie.example".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            digest_schedule: "0 0 8 * * Mon-Fri".into(),
            send_empty: false,
            include_personal_data: false,
            alert_after: Duration::from_secs(3600),
            alert_every: Duration::from_secs(6 * 3600),
            ca_file: None,
        }
    }

    #[test]
    fn global_list_then_one_per_distinct_email_to() {
        let subs = [
            sub("certdc", &["Etat-Civil@mairie.example"]),
            sub("pacs", &["etat-civil@mairie.example "]),
            sub("recensement", &[]),
            sub("etatcivil", &["dsi@mairie.example"]),
            sub("jcc", &["accueil@mairie.example"]),
        ];
        let lists = recipient_lists(&email(&["DSI@mairie.example"]), &subs);
        assert_eq!(lists.len(), 3, "{lists:#?}");
        assert!(lists[0].all);
        assert_eq!(lists[0].key, "to=dsi@mairie.example;subscriptions=*");
        assert_eq!(lists[0].subscriptions.len(), 5);
        assert_eq!(lists[1].subscriptions, ["certdc", "pacs"]);
        assert_eq!(lists[1].to, ["Etat-Civil@mairie.example"]);
        assert_eq!(
            lists[1].key,
            "to=etat-civil@mairie.example;subscriptions=certdc,pacs"
        );
        assert_eq!(lists[2].subscriptions, ["jcc"]);
    }
}
