//! What a digest says (pure): from the activity journal since the list's cursor, the
//! subscriptions' health and the work they still owe, in French.
//!
//! Per subscription: the télédossiers received (external id, démarche, received at, number of
//! files, where they are), the OSL's messages and status changes, the replies sent from the
//! outbox, and first of all what needs a person: subscriptions in error, quarantined
//! télédossiers (set to `SI_INTG_ERROR` on the hub), parked ones, files the hub marked
//! `CORRUPTED`/`REJECTED`/`DELETED`, outbox failures. A kind of activity this version does not
//! know is listed as it is, never dropped.
//!
//! No applicant name, file name or message text unless `include_personal_data`: télédossiers
//! carry health and civil-status data. Ids, counts, statuses and our own error messages are
//! shown.

use std::collections::HashMap;

use serde_json::Value;

use super::lists::RecipientList;
use super::render::{clean, count, fr_date, fr_time, Block, Doc, Section};
use crate::state::{Activity, OpenWork, SubscriptionHealth};

/// Longest piece of outside text (an id, an error) shown.
const MAX_TEXT: usize = 300;

/// What the digest needs to know of a subscription from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    pub name: String,
    pub process_code: String,
    /// Delivered to a business database rather than a spool.
    pub database: bool,
}

/// Everything one digest is made from.
#[derive(Debug, Clone)]
pub struct DigestInput<'a> {
    /// The organisation (`[hub] editor_name`).
    pub organisation: &'a str,
    pub list: &'a RecipientList,
    /// The subscriptions the list covers, in configuration order.
    pub subscriptions: &'a [SubscriptionInfo],
    /// Activity after the cursor, oldest first.
    pub activity: &'a [Activity],
    pub health: &'a [SubscriptionHealth],
    pub open_work: &'a HashMap<String, OpenWork>,
    /// When the previous digest of this list was sent.
    pub since_ms: Option<i64>,
    pub now_ms: i64,
    /// `Some` when personal data may be shown: applicant names by activity `seq`.
    pub personal: Option<&'a HashMap<i64, String>>,
    /// The journal held more than one digest reads at once: the rest comes next time.
    pub more_follows: bool,
}

/// A digest ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub subject: String,
    pub doc: Doc,
    /// The highest activity `seq` included: where the cursor moves once it is sent.
    pub last_seq: Option<i64>,
    /// Nothing happened and nothing needs a person.
    pub nothing_to_say: bool,
}

/// Démarche names for the process codes the contract lists.
pub fn demarche(process_code: &str) -> String {
    let label = match process_code {
        "CERTDC" => "certificat de décès",
        "EtatCivil" => "demande d'acte d'état civil",
        "depotDossierPACS" => "PACS",
        "recensementCitoyen" => "recensement citoyen",
        "JeChangeDeCoordonnees" => "changement de coordonnées",
        "HebergementTourisme" => "hébergement touristique",
        _ => return clean(process_code, 60),
    };
    format!("{} ({label})", clean(process_code, 60))
}

fn text(detail: &Value, key: &str) -> Option<String> {
    match detail.get(key)? {
        Value::String(s) if !s.is_empty() => Some(clean(s, MAX_TEXT)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(detail: &Value, key: &str) -> Option<i64> {
    detail.get(key).and_then(Value::as_i64)
}

/// `N° {external id}`, or the case id when the hub sent none.
fn case_label(a: &Activity) -> String {
    match (a.external_id.as_deref(), a.case_id.as_deref()) {
        (Some(e), _) if !e.is_empty() => format!("N° {}", clean(e, MAX_TEXT)),
        (_, Some(c)) if !c.is_empty() => format!("dossier {}", clean(c, MAX_TEXT)),
        _ => "dossier ?".into(),
    }
}

/// Keys of an unknown kind's detail that may hold personal data.
fn looks_personal(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "name",
        "nom",
        "applicant",
        "email",
        "mail",
        "message",
        "phone",
        "address",
        "adresse",
        "comment",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// The scalar fields of a detail, `key : value`, for kinds listed generically.
fn generic_detail(detail: &Value, personal: bool) -> String {
    let Some(map) = detail.as_object() else {
        return String::new();
    };
    map.iter()
        .filter(|(k, _)| personal || !looks_personal(k))
        .filter_map(|(k, v)| {
            let v = match v {
                Value::String(s) => clean(s, MAX_TEXT),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if *b { "oui" } else { "non" }.to_string(),
                _ => return None,
            };
            Some(format!("{} : {v}", clean(k, 60)))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn where_is(a: &Activity, info: &SubscriptionInfo) -> String {
    if info.database {
        return "base de données".into();
    }
    match text(&a.detail, "entry") {
        Some(e) => e,
        None => "spool".into(),
    }
}

/// Every line of one subscription's part.
#[derive(Default)]
struct Part {
    received: Vec<Vec<String>>,
    events: Vec<Vec<String>>,
    replies: Vec<Vec<String>>,
    attention: Vec<String>,
    other: Vec<String>,
}

impl Part {
    fn add(
        &mut self,
        a: &Activity,
        info: &SubscriptionInfo,
        personal: Option<&HashMap<i64, String>>,
    ) {
        let d = &a.detail;
        let label = case_label(a);
        let at = fr_time(a.at);
        match a.kind.as_str() {
            "received" | "reopened" | "redelivered" => {
                let mut what = label.clone();
                match a.kind.as_str() {
                    "reopened" => what.push_str(&format!(
                        " (réouvert, tour {})",
                        number(d, "round").unwrap_or(1)
                    )),
                    "redelivered" => what.push_str(" (livré à nouveau à la demande)"),
                    _ => {}
                }
                let applicant = personal
                    .and_then(|p| p.get(&a.seq))
                    .cloned()
                    .unwrap_or_default();
                let mut row = vec![
                    what,
                    demarche(&info.process_code),
                    at,
                    number(d, "files").unwrap_or(0).to_string(),
                    where_is(a, info),
                ];
                if personal.is_some() {
                    row.push(applicant);
                }
                self.received.push(row);
                if let Some(unusable) = d.get("unusable").and_then(Value::as_array) {
                    for u in unusable {
                        let status = text(u, "status").unwrap_or_else(|| "?".into());
                        let id = text(u, "attachment_id").unwrap_or_else(|| "?".into());
                        let name = match (personal, text(u, "file_name")) {
                            (Some(_), Some(n)) => format!(" « {n} »"),
                            _ => String::new(),
                        };
                        self.attention.push(format!(
                            "{label} : la pièce {id}{name} est marquée {status} par HubEE ; le télédossier a été livré sans elle. Demandez-la de nouveau à l'usager (ou au service en ligne) si elle est nécessaire."
                        ));
                    }
                }
            }
            "event" => {
                let action = text(d, "action_type").unwrap_or_default();
                let new_status = text(d, "case_new_status");
                let mut what = match action.as_str() {
                    "SENDING_MESSAGE" => "message de l'usager".to_string(),
                    "STATUS_UPDATE" => "changement de statut".to_string(),
                    "ATTACH_DEPOSIT" => "dépôt de pièces".to_string(),
                    other => clean(other, 60),
                };
                if let Some(s) = &new_status {
                    what.push_str(&format!(" → {s}"));
                }
                if d.get("has_message").and_then(Value::as_bool) == Some(true)
                    && action != "SENDING_MESSAGE"
                {
                    what.push_str(" (avec un message)");
                }
                self.events.push(vec![
                    label.clone(),
                    what,
                    at,
                    number(d, "files").unwrap_or(0).to_string(),
                    where_is(a, info),
                ]);
                if new_status.as_deref() == Some("SI_INTG_ERROR") {
                    self.attention
                        .push(format!("{label} : passé au statut SI_INTG_ERROR"));
                }
            }
            "quarantined" => {
                let mut line = format!(
                    "{label} : mis en quarantaine après {} (statut SI_INTG_ERROR sur HubEE)",
                    count(
                        number(d, "attempts").unwrap_or(0).max(0) as usize,
                        "passage en échec",
                        "passages en échec"
                    )
                );
                if let Some(p) = text(d, "path") {
                    line.push_str(&format!(" ; ce qui a pu être reçu est dans {p}"));
                }
                if let Some(e) = text(d, "error") {
                    line.push_str(&format!(" ; dernière erreur : {e}"));
                }
                line.push_str(" ; voir reason.txt dans ce dossier.");
                self.attention.push(line);
            }
            "parked" => {
                let mut line = format!(
                    "{label} : mis de côté après {}, réessayé à chaque passage",
                    count(
                        number(d, "attempts").unwrap_or(0).max(0) as usize,
                        "passage en échec",
                        "passages en échec"
                    )
                );
                if let Some(e) = text(d, "error") {
                    line.push_str(&format!(" ; erreur : {e}"));
                }
                self.attention.push(line);
            }
            "outbox_sent" => {
                let status = text(d, "status").unwrap_or_else(|| "-".into());
                let result = generic_detail(d, personal.is_some());
                self.replies
                    .push(vec![label.clone(), status.clone(), at, result]);
                let step = d.get("status_step");
                let outcome = step.and_then(|x| text(x, "outcome"));
                match outcome.as_deref() {
                    Some("found") => self.other.push(format!(
                        "{label} : réponse envoyée ; le dossier était déjà au statut {} (posé par quelqu'un d'autre, par exemple dans le portail)",
                        step.and_then(|x| text(x, "status")).unwrap_or_else(|| "?".into())
                    )),
                    Some("event_refused") if step.and_then(|x| x.get("cap")).and_then(Value::as_bool) == Some(true) => self.attention.push(format!(
                        "{label} : réponse et pièces envoyées, mais le dossier a atteint la limite d'événements de HubEE : le changement de statut n'a pas pu être annoncé ; vérifiez le statut dans le portail HubEE."
                    )),
                    Some("event_refused" | "refused" | "impossible" | "gave_up") => self.attention.push(format!(
                        "{label} : réponse et pièces envoyées, mais le statut demandé ({status}) n'a pas pu être posé ; posez-le dans le portail HubEE."
                    )),
                    _ => {}
                }
                if status == "SI_INTG_ERROR" {
                    self.attention.push(format!(
                        "{label} : passé au statut SI_INTG_ERROR par une réponse"
                    ));
                }
            }
            "hub_event_refused" => {
                let cap = d.get("cap").and_then(Value::as_bool) == Some(true);
                let what = match text(d, "what").as_deref() {
                    Some("quarantine") => "l'événement de mise en erreur d'intégration",
                    _ => "l'accusé de réception",
                };
                self.attention.push(if cap {
                    format!("{label} : le dossier a atteint la limite d'événements de HubEE ; {what} n'a pas pu être envoyé (le télédossier est bien livré) ; si l'usager doit être informé, faites-le par le portail HubEE.")
                } else {
                    format!("{label} : HubEE a refusé {what} ({}) ; le télédossier est bien livré ; vérifiez le dossier dans le portail HubEE.", text(d, "error").unwrap_or_default())
                });
            }
            "outbox_failed" => {
                let why = text(d, "error").unwrap_or_else(|| generic_detail(d, personal.is_some()));
                self.attention.push(format!(
                    "{label} : réponse de l'outbox non appliquée ({at}) : {why} ; voir error.txt dans outbox/failed/."
                ));
            }
            other => {
                let detail = generic_detail(d, personal.is_some());
                let mut line = format!("{} · {label} · {at}", clean(other, 60));
                if !detail.is_empty() {
                    line.push_str(&format!(" · {detail}"));
                }
                if text(d, "status").as_deref() == Some("SI_INTG_ERROR") {
                    self.attention.push(format!(
                        "{label} : passé au statut SI_INTG_ERROR ({})",
                        clean(other, 60)
                    ));
                }
                self.other.push(line);
            }
        }
    }
}

/// Builds the digest. Pure: the caller read the state database.
pub fn build(input: &DigestInput<'_>) -> Digest {
    let personal = input.personal;
    let mut parts: HashMap<&str, Part> = HashMap::new();
    let infos: HashMap<&str, &SubscriptionInfo> = input
        .subscriptions
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    for a in input.activity {
        if let Some(info) = infos.get(a.subscription.as_str()) {
            parts
                .entry(info.name.as_str())
                .or_default()
                .add(a, info, personal);
        }
    }
    let failing: Vec<&SubscriptionHealth> = input
        .health
        .iter()
        .filter(|h| h.failing() && infos.contains_key(h.subscription.as_str()))
        .collect();

    let received: usize = parts.values().map(|p| p.received.len()).sum();
    let events: usize = parts.values().map(|p| p.events.len()).sum();
    let attention: usize = parts.values().map(|p| p.attention.len()).sum::<usize>() + failing.len();
    let nothing_to_say = input.activity.is_empty() && failing.is_empty();

    let mut doc = Doc {
        title: format!("Synthèse hubee-sync — {}", clean(input.organisation, 100)),
        ..Default::default()
    };
    doc.intro.push(match input.since_ms {
        Some(since) => format!(
            "Du {} au {} (heure de Paris).",
            fr_time(since),
            fr_time(input.now_ms)
        ),
        None => format!(
            "Premier message de synthèse pour ces destinataires : ce qui est arrivé jusqu'au {} (heure de Paris), sur les 7 derniers jours au plus.",
            fr_time(input.now_ms)
        ),
    });
    if nothing_to_say {
        doc.intro
            .push("Rien de nouveau : aucun télédossier reçu, rien à traiter.".into());
    } else {
        doc.intro.push(format!(
            "{}, {}, {}.",
            count(received, "télédossier reçu", "télédossiers reçus"),
            count(
                events,
                "message ou changement de statut",
                "messages ou changements de statut"
            ),
            count(attention, "point à traiter", "points à traiter"),
        ));
    }
    if !input.list.all {
        doc.intro.push(format!(
            "Ce message ne concerne que {} : {}.",
            if input.list.subscriptions.len() == 1 {
                "l'abonnement"
            } else {
                "les abonnements"
            },
            input.list.subscriptions.join(", ")
        ));
    }

    if !failing.is_empty() {
        let items = failing
            .iter()
            .map(|h| {
                let mut line = format!(
                    "abonnement {} : en échec ({})",
                    h.subscription,
                    count(
                        h.consecutive_failures.max(0) as usize,
                        "passage",
                        "passages"
                    )
                );
                if let Some(ok) = h.last_success_at_ms {
                    line.push_str(&format!(", dernier passage réussi le {}", fr_time(ok)));
                }
                if let Some(e) = &h.last_error {
                    line.push_str(&format!(" ; dernière erreur : {}", clean(e, MAX_TEXT)));
                }
                line
            })
            .collect();
        doc.sections.push(Section {
            heading: "Abonnements en erreur".into(),
            level: 1,
            blocks: vec![
                Block::Para("Aucun télédossier n'est reçu pour ces abonnements tant que l'erreur dure ; rien n'est perdu, ils restent sur HubEE.".into()),
                Block::Items(items),
            ],
        });
    }

    for info in input.subscriptions {
        let part = parts.remove(info.name.as_str()).unwrap_or_default();
        let work = input.open_work.get(&info.name).copied().unwrap_or_default();
        let mut blocks_sections = Vec::new();
        if !part.attention.is_empty() {
            blocks_sections.push(Section {
                heading: format!("À traiter ({})", part.attention.len()),
                level: 2,
                blocks: vec![Block::Items(part.attention)],
            });
        }
        if !part.received.is_empty() {
            let mut head = vec![
                "Télédossier".to_string(),
                "Démarche".into(),
                "Reçu le".into(),
                "Pièces".into(),
                "Emplacement".into(),
            ];
            if personal.is_some() {
                head.push("Demandeur".into());
            }
            blocks_sections.push(Section {
                heading: format!("Télédossiers reçus ({})", part.received.len()),
                level: 2,
                blocks: vec![Block::Table {
                    head,
                    rows: part.received,
                }],
            });
        }
        if !part.events.is_empty() {
            blocks_sections.push(Section {
                heading: format!(
                    "Messages et changements de statut venus du service en ligne ({})",
                    part.events.len()
                ),
                level: 2,
                blocks: vec![Block::Table {
                    head: vec![
                        "Télédossier".into(),
                        "Quoi".into(),
                        "Reçu le".into(),
                        "Pièces".into(),
                        "Emplacement".into(),
                    ],
                    rows: part.events,
                }],
            });
        }
        if !part.replies.is_empty() {
            blocks_sections.push(Section {
                heading: format!("Réponses envoyées depuis l'outbox ({})", part.replies.len()),
                level: 2,
                blocks: vec![Block::Table {
                    head: vec![
                        "Télédossier".into(),
                        "Statut".into(),
                        "Envoyée le".into(),
                        "Détail".into(),
                    ],
                    rows: part.replies,
                }],
            });
        }
        if !part.other.is_empty() {
            blocks_sections.push(Section {
                heading: format!("Autres évènements ({})", part.other.len()),
                level: 2,
                blocks: vec![Block::Items(part.other)],
            });
        }
        if work.parked > 0 || work.quarantined > 0 {
            blocks_sections.push(Section {
                heading: "En ce moment".into(),
                level: 2,
                blocks: vec![Block::Para(format!(
                    "{} (réessayés à chaque passage), {} (à examiner dans quarantine/).",
                    count(
                        work.parked as usize,
                        "télédossier mis de côté",
                        "télédossiers mis de côté"
                    ),
                    count(
                        work.quarantined as usize,
                        "en quarantaine",
                        "en quarantaine"
                    ),
                ))],
            });
        }
        if blocks_sections.is_empty() {
            continue;
        }
        doc.sections.push(Section {
            heading: format!(
                "Abonnement {} — {}",
                info.name,
                demarche(&info.process_code)
            ),
            level: 1,
            blocks: Vec::new(),
        });
        doc.sections.extend(blocks_sections);
    }
    if input.more_follows {
        doc.intro.push(
            "Il y a davantage d'évènements que ce message ne peut en montrer : la suite viendra dans le prochain message de synthèse.".into(),
        );
    }
    doc.footer = format!(
        "Envoyé par hubee-sync {} pour {}. Heures de Paris. {}",
        env!("CARGO_PKG_VERSION"),
        input.list.to.join(", "),
        if personal.is_some() {
            "Ce message contient des données personnelles (include_personal_data = true)."
        } else {
            "Sans données personnelles : les noms sont dans les télédossiers eux-mêmes."
        }
    );

    let subject = if nothing_to_say {
        format!("hubee-sync : rien de nouveau — {}", fr_date(input.now_ms))
    } else if attention > 0 {
        format!(
            "hubee-sync : {}, {} — {}",
            count(received, "télédossier reçu", "télédossiers reçus"),
            count(attention, "point à traiter", "points à traiter"),
            fr_date(input.now_ms)
        )
    } else {
        format!(
            "hubee-sync : {} — {}",
            count(received, "télédossier reçu", "télédossiers reçus"),
            fr_date(input.now_ms)
        )
    };
    Digest {
        subject,
        doc,
        last_seq: input.activity.iter().map(|a| a.seq).max(),
        nothing_to_say,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::render::{to_html, to_text};
    use serde_json::json;

    fn activity(seq: i64, sub: &str, kind: &str, detail: Value) -> Activity {
        Activity {
            seq,
            subscription: sub.into(),
            at: 1_764_054_000_000, // 25/11/2025 08:00 Paris
            kind: kind.into(),
            case_id: Some(format!("case-{seq}")),
            external_id: Some(format!("EXT-{seq}")),
            event_id: None,
            detail,
        }
    }

    fn list() -> RecipientList {
        RecipientList {
            key: "k".into(),
            to: vec!["dsi@mairie.example".into()],
            subscriptions: vec!["certdc".into()],
            all: true,
        }
    }

    fn info() -> Vec<SubscriptionInfo> {
        vec![SubscriptionInfo {
            name: "certdc".into(),
            process_code: "CERTDC".into(),
            database: false,
        }]
    }

    fn build_with(activity: &[Activity], health: &[SubscriptionHealth]) -> Digest {
        let l = list();
        let i = info();
        let work = HashMap::new();
        build(&DigestInput {
            organisation: "Commune de Saint-Exemple",
            list: &l,
            subscriptions: &i,
            activity,
            health,
            open_work: &work,
            since_ms: Some(1_763_967_600_000),
            now_ms: 1_764_054_000_000,
            personal: None,
            more_follows: false,
        })
    }

    #[test]
    fn every_kind_is_shown_and_unknown_ones_generically() {
        let acts = [
            activity(
                1,
                "certdc",
                "received",
                json!({"entry": "/spool/new/EXT-1~case-1", "files": 3, "round": 0,
                "unusable": [{"file_name": "acte DUPONT.pdf", "status": "CORRUPTED", "attachment_id": "att-9"}]}),
            ),
            activity(
                2,
                "certdc",
                "event",
                json!({"action_type": "SENDING_MESSAGE", "has_message": true, "files": 0, "entry": "/spool/new/e"}),
            ),
            activity(
                3,
                "certdc",
                "quarantined",
                json!({"path": "/spool/quarantine/q", "attempts": 4, "error": "boom"}),
            ),
            activity(4, "certdc", "outbox_failed", json!({"error": "refusé"})),
            activity(
                5,
                "certdc",
                "brand_new_kind",
                json!({"applicant_name": "DUPONT", "status": "SI_INTG_ERROR"}),
            ),
        ];
        let d = build_with(&acts, &[]);
        let text = to_text(&d.doc);
        let html = to_html(&d.doc);
        for needle in [
            "EXT-1",
            "CERTDC (certificat de décès)",
            "25/11/2025 08:00",
            "att-9",
            "CORRUPTED",
            "message de l'usager",
            "SI_INTG_ERROR",
            "refusé",
            "brand_new_kind",
            "/spool/new/EXT-1~case-1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
            assert!(
                html.contains(&needle.replace('\'', "&#39;")),
                "{needle} missing from html"
            );
        }
        assert!(
            !text.contains("DUPONT") && !html.contains("DUPONT"),
            "{text}"
        );
        assert_eq!(d.last_seq, Some(5));
        assert!(!d.nothing_to_say);
        assert!(d.subject.contains("1 télédossier reçu"), "{}", d.subject);
    }

    #[test]
    fn events_the_hub_refused_and_status_steps_found_done_are_told_in_french() {
        let acts = [
            activity(
                1,
                "certdc",
                "hub_event_refused",
                json!({"what": "receipt", "cap": true, "status": "IN_PROGRESS", "error": "HTTP 400"}),
            ),
            activity(
                2,
                "certdc",
                "outbox_sent",
                json!({"folder": "acte", "status": "REFUSED", "status_step": {"outcome": "found", "status": "DONE"}}),
            ),
            activity(
                3,
                "certdc",
                "outbox_sent",
                json!({"folder": "acte2", "status": "DONE", "status_step": {"outcome": "event_refused", "cap": true}}),
            ),
        ];
        let d = build_with(&acts, &[]);
        let text = to_text(&d.doc);
        for needle in [
            "EXT-1 : le dossier a atteint la limite d'événements de HubEE ; l'accusé de réception n'a pas pu être envoyé (le télédossier est bien livré)",
            "EXT-2 : réponse envoyée ; le dossier était déjà au statut DONE",
            "EXT-3 : réponse et pièces envoyées, mais le dossier a atteint la limite d'événements de HubEE",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(d.subject.contains("2 points à traiter"), "{}", d.subject);
    }

    #[test]
    fn failing_subscriptions_need_a_person_even_without_activity() {
        let health = [SubscriptionHealth {
            subscription: "certdc".into(),
            last_poll_at_ms: Some(1),
            last_outcome: Some("failed".into()),
            last_error: Some("the hub refused client_id x".into()),
            last_success_at_ms: None,
            consecutive_failures: 3,
        }];
        let d = build_with(&[], &health);
        assert!(!d.nothing_to_say);
        assert_eq!(d.last_seq, None);
        assert!(to_text(&d.doc).contains("Abonnements en erreur"));
        assert!(build_with(&[], &[]).nothing_to_say);
    }
}
