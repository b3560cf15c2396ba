//! The hub's data and rules: clients, tokens, cases, events, notifications, faults, records.
//!
//! All of it sits behind one mutex (`Inner::state`), never held across an await.

use crate::content::{hex, Content};
use crate::util::{envelope, now_rfc3339, uuid_v4, TimeStyle};
use crate::{
    AgentAction, AttachmentSpec, CaseSpec, Fault, HubBehaviour, OslEvent, RequestRecord, Route,
};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// Uploads under this size are kept whole so tests can compare them; bigger ones only leave
/// their size and SHA-256 (benchmarks upload big files).
pub(crate) const KEEP_UPLOAD_BELOW: u64 = 1024 * 1024;

/// An error answer: HTTP status and JSON body.
#[derive(Debug)]
pub(crate) struct ApiErr {
    pub status: u16,
    pub body: Value,
}

impl ApiErr {
    /// The HubEE envelope with the HTTP status as `code` (§3).
    pub fn new(status: u16, message: &str) -> Self {
        ApiErr {
            status,
            body: envelope(json!(status), message),
        }
    }
    pub fn bad(message: &str) -> Self {
        Self::new(400, message)
    }
    /// §3: "403 Unauthorized user = valid token without rights on this object".
    pub fn forbidden() -> Self {
        Self::new(403, "Unauthorized user")
    }
    /// The WSO2 gateway's answer to a missing, unknown or expired token (§2, [ERR p.23]).
    pub fn invalid_credentials() -> Self {
        ApiErr {
            status: 401,
            body: envelope(
                json!(900901),
                "Invalid Credentials : Invalid Credentials. Make sure you have given the correct access token",
            ),
        }
    }
}

pub(crate) type Res<T> = Result<T, ApiErr>;

/// OrganizationIdentifier (§5).
#[derive(Clone, Debug)]
pub(crate) struct Org {
    kind: &'static str,
    company_register: String,
    branch_code: String,
}

impl Org {
    fn json(&self) -> Value {
        json!({"type": self.kind, "companyRegister": self.company_register, "branchCode": self.branch_code})
    }
    /// The OSL behind every case (DGS for CertDC; one made-up OSL is enough for an SI).
    fn osl() -> Org {
        Org {
            kind: "OSL",
            company_register: "13001727000013".to_string(),
            branch_code: "75107".to_string(),
        }
    }
}

pub(crate) struct Client {
    secret: String,
    process_code: String,
    org: Org,
}

pub(crate) struct Token {
    client_id: String,
    expires_at: Instant,
    dead: bool,
    scope: String,
}

/// Where a file's bytes come from.
pub(crate) enum Blob {
    /// Deposited by the OSL (or by a test).
    Content(Arc<Content>),
    /// Uploaded by the SI: only its size and hash, plus the bytes when small.
    Uploaded {
        len: u64,
        sha256_hex: String,
        bytes: Option<Bytes>,
    },
    /// Declared but not uploaded yet.
    Missing,
}

pub(crate) struct Att {
    id: String,
    status: String,
    file_name: String,
    type_: String,
    mime_type: String,
    /// Declared size (metadata), which may differ from the bytes served (`declared_size`).
    size: u64,
    blob: Blob,
    /// base64 SHA-256 of the bytes served, computed lazily for big generated files.
    digest: Arc<OnceCell<String>>,
    /// §10.22: an SI's piece may come back without its `type` (`HubBehaviour`).
    hide_type: bool,
}

impl Att {
    fn from_spec(spec: AttachmentSpec, rng: &mut fastrand::Rng) -> Att {
        let content = Arc::new(spec.content);
        // Small files are hashed now; big generated ones on their first download (or
        // `precompute_digests`), since hashing 1 GiB takes seconds.
        let digest = if content.len() <= KEEP_UPLOAD_BELOW {
            Arc::new(OnceCell::new_with(Some(content.digest_b64())))
        } else {
            Arc::new(OnceCell::new())
        };
        Att {
            id: uuid_v4(rng),
            status: spec.status,
            file_name: spec.file_name,
            type_: spec.type_,
            mime_type: spec.mime_type,
            size: spec.declared_size.unwrap_or_else(|| content.len()),
            blob: Blob::Content(content),
            digest,
            hide_type: false,
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "status": self.status,
            "fileName": self.file_name,
            "type": if self.hide_type { Value::Null } else { Value::from(self.type_.as_str()) },
            "size": self.size,
            "mimeType": self.mime_type,
        })
    }

    /// What a download serves; only `RECEIVED` files are served (§9 "Downloads").
    fn download(&self, not_found: &str) -> Res<Download> {
        if self.status != "RECEIVED" {
            return Err(ApiErr::new(404, not_found));
        }
        let payload = match &self.blob {
            Blob::Content(c) => Payload::Content(Arc::clone(c)),
            Blob::Uploaded { bytes: Some(b), .. } => Payload::Bytes(b.clone()),
            Blob::Uploaded { bytes: None, .. } => {
                return Err(ApiErr::new(
                    500,
                    "fake-hubee keeps only the hash of uploads of 1 MiB or more",
                ))
            }
            Blob::Missing => return Err(ApiErr::new(404, not_found)),
        };
        Ok(Download {
            payload,
            digest: Arc::clone(&self.digest),
        })
    }
}

pub(crate) enum Payload {
    Content(Arc<Content>),
    Bytes(Bytes),
}

pub(crate) struct Download {
    pub payload: Payload,
    pub digest: Arc<OnceCell<String>>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Side {
    Si(String),
    Osl,
    /// An agent of the same organisation working the case in the portal (§10.18).
    Portal,
}

pub(crate) struct Event {
    id: String,
    side: Side,
    transmitter: Value,
    action_type: String,
    notification: bool,
    message: Option<String>,
    comment: Option<String>,
    author: Option<String>,
    case_current_status: Option<String>,
    case_new_status: Option<String>,
    partner_attributes: Option<String>,
    partner_info: Value,
    status: String,
    create: String,
    update: Option<String>,
    attachments: Vec<Att>,
    /// The case's real status when the event was posted (for checkers; not served).
    actual_at_post: String,
}

impl Event {
    /// Keys as in the [FQF] stub of §5 (serde_json sorts them, which matches it).
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "actionType": self.action_type,
            "attachments": self.attachments.iter().map(Att::json).collect::<Vec<_>>(),
            "author": self.author,
            "caseCurrentStatus": self.case_current_status,
            "caseNewStatus": self.case_new_status,
            "comment": self.comment,
            "createDateTime": self.create,
            "message": self.message,
            "notification": self.notification,
            "partnerAttributes": self.partner_attributes,
            "partnerInfo": self.partner_info,
            "status": self.status,
            "transmitter": self.transmitter,
            "updateDateTime": self.update,
        })
    }
}

pub(crate) struct Case {
    id: String,
    client_id: String,
    process_code: String,
    external_id: String,
    folder_id: String,
    status: String,
    create: String,
    update: Option<String>,
    applicant: Value,
    attachments: Vec<Att>,
    /// Event ids, oldest first (events live in `State::events`).
    events: Vec<String>,
    patches: Vec<String>,
    /// Every status change, oldest first: (from, to, cause) with cause `patch`,
    /// `event:{id}`, `agent`, `osl` (for checkers; not served).
    history: Vec<(String, String, String)>,
    /// The portal agent downloaded a piece (it withholds final statuses before, §10.19).
    agent_downloaded: bool,
}

pub(crate) struct Notification {
    id: String,
    client_id: String,
    process_code: String,
    case_id: String,
    event_id: Option<String>,
    date_time: String,
}

struct RandomFaults {
    routes: Option<Vec<Route>>,
    rate: f64,
    kinds: Vec<Fault>,
    rng: fastrand::Rng,
}

/// The SI-settable statuses (§4 C2, §6).
pub(crate) const SI_SETTABLE: [&str; 7] = [
    "SENT",
    "SI_RECEIVED",
    "IN_PROGRESS",
    "ADD_AWAITING",
    "REFUSED",
    "DONE",
    "SI_INTG_ERROR",
];

/// §6: may an SI move a case from `from` to `to`? `strict` = the [CI] column only; otherwise
/// the union with the predecessors also seen in [PM], [WF], [SFD] (§10.3).
pub(crate) fn transition_allowed(from: &str, to: &str, strict: bool) -> bool {
    let (ci, seen): (&[&str], &[&str]) = match to {
        "SENT" => (&["HUBEE_NOTIFIED"], &[]),
        "SI_RECEIVED" => (&["SENT"], &["HUBEE_NOTIFIED"]),
        "IN_PROGRESS" => (&["SI_RECEIVED"], &["HUBEE_NOTIFIED", "SENT"]),
        "ADD_AWAITING" => (&["IN_PROGRESS"], &["HUBEE_NOTIFIED", "SENT", "SI_RECEIVED"]),
        "REFUSED" => (
            &["SI_RECEIVED", "IN_PROGRESS", "ADD_AWAITING"],
            &["HUBEE_NOTIFIED", "SENT"],
        ),
        "DONE" => (
            &["SI_RECEIVED", "IN_PROGRESS", "ADD_AWAITING"],
            // [PV2]: the portal offers REFUSED → DONE (§10.19).
            &["SENT", "REFUSED"],
        ),
        "SI_INTG_ERROR" => (
            &["SI_RECEIVED", "IN_PROGRESS", "ADD_AWAITING", "DONE"],
            &["HUBEE_NOTIFIED", "SENT"],
        ),
        _ => (&[], &[]),
    };
    ci.contains(&from) || (!strict && seen.contains(&from))
}

/// The portal's forward order (§10.19): received → SI_RECEIVED → IN_PROGRESS → ADD_AWAITING →
/// REFUSED → DONE; `None` for statuses the portal neither starts from nor sets.
fn portal_rank(status: &str) -> Option<u8> {
    Some(match status {
        "HUBEE_NOTIFIED" | "SENT" => 0,
        "SI_RECEIVED" => 1,
        "IN_PROGRESS" => 2,
        "ADD_AWAITING" => 3,
        "REFUSED" => 4,
        "DONE" => 5,
        _ => return None,
    })
}

/// §4 E1 RC002.
pub(crate) const ACTION_TYPES: [&str; 6] = [
    "STATUS_UPDATE",
    "ATTACH_DEPOSIT",
    "ATTACH_DL",
    "ATTACH_DL_ALL",
    "COM_ADD",
    "SENDING_MESSAGE",
];

/// What the SI posted, already validated against the schema (`server::parse_event_body`).
pub(crate) struct NewEvent {
    pub action_type: String,
    pub notification: bool,
    pub message: Option<String>,
    pub comment: Option<String>,
    pub author: Option<String>,
    pub case_current_status: Option<String>,
    pub case_new_status: Option<String>,
    pub partner_attributes: Option<String>,
    /// (fileName, type, size, mimeType)
    pub attachments: Vec<(String, String, u64, String)>,
}

pub(crate) struct State {
    rng: fastrand::Rng,
    clients: HashMap<String, Client>,
    tokens: HashMap<String, Token>,
    pub token_lifetime: u64,
    cases: HashMap<String, Case>,
    case_order: Vec<String>,
    events: HashMap<String, Event>,
    notifications: Vec<Notification>,
    osl_notifications: Vec<(String, Value)>,
    pub records: Vec<RequestRecord>,
    faults: HashMap<Route, VecDeque<Fault>>,
    random: Option<RandomFaults>,
    pub shuffle: Option<fastrand::Rng>,
    pub strict: bool,
    external_counter: u64,
    /// Test hooks (hostile hub): rewrites applied to `GET /cases/{id}` answers.
    pub case_rewrites: HashMap<String, CaseRewrite>,
    /// Test hooks: notifications served verbatim after the real ones, per client.
    raw_notifications: Vec<(String, Value)>,
    /// Test hooks: path ids are not validated as UUIDs, and are percent-decoded.
    pub lenient_ids: bool,
    /// Test hooks: prefix of the `digest` header on downloads (e.g. `sha-256=`).
    pub digest_prefix: Option<String>,
    /// How the hub behaves where the evidence allows several readings (§10).
    pub behaviour: HubBehaviour,
    /// Portal-agent actions to perform when a request of that route (on that case, or any)
    /// arrives, before it is handled.
    agent_hooks: Vec<(Route, Option<String>, AgentAction)>,
    /// What the portal agent did: `{caseId, action, from, to, ok}`.
    agent_log: Vec<Value>,
    agent_rng: fastrand::Rng,
}

/// A rewrite of the case JSON served by `GET /cases/{id}` (see `FakeHub::rewrite_case_json`).
pub(crate) type CaseRewrite = Arc<dyn Fn(&mut Value) + Send + Sync>;

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl State {
    pub fn new(seed: u64) -> State {
        State {
            rng: fastrand::Rng::with_seed(seed),
            clients: HashMap::new(),
            tokens: HashMap::new(),
            token_lifetime: 3600,
            cases: HashMap::new(),
            case_order: Vec::new(),
            events: HashMap::new(),
            notifications: Vec::new(),
            osl_notifications: Vec::new(),
            records: Vec::new(),
            faults: HashMap::new(),
            random: None,
            shuffle: None,
            strict: false,
            external_counter: 0,
            case_rewrites: HashMap::new(),
            raw_notifications: Vec::new(),
            lenient_ids: false,
            digest_prefix: None,
            behaviour: HubBehaviour::default(),
            agent_hooks: Vec::new(),
            agent_log: Vec::new(),
            agent_rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
        }
    }

    pub fn reseed(&mut self, seed: u64) {
        self.rng = fastrand::Rng::with_seed(seed);
    }

    pub fn reseed_agent(&mut self, seed: u64) {
        self.agent_rng = fastrand::Rng::with_seed(seed);
    }

    // ---------------------------------------------------------------- setup (library API)

    pub fn add_client(&mut self, client_id: &str, secret: &str, process_code: &str) {
        let h = fnv(client_id);
        // A commune's SIRET starts with 21 (public body); the branch code is a COG-like number.
        let org = Org {
            kind: "SI",
            company_register: format!("21{:012}", h % 1_000_000_000_000),
            branch_code: format!("{:05}", (h >> 40) % 100_000),
        };
        self.clients.insert(
            client_id.to_string(),
            Client {
                secret: secret.to_string(),
                process_code: process_code.to_string(),
                org,
            },
        );
    }

    pub fn add_case(&mut self, client_id: &str, spec: CaseSpec) -> String {
        self.add_case_with_id(client_id, None, spec)
    }

    /// `add_case` with a chosen case id (any string: hostile-hub tests); a UUID when `None`.
    pub fn add_case_with_id(
        &mut self,
        client_id: &str,
        case_id: Option<String>,
        spec: CaseSpec,
    ) -> String {
        assert!(
            self.clients.contains_key(client_id),
            "fake-hubee: add_case for unknown client {client_id:?}; call add_client first"
        );
        self.external_counter += 1;
        let external_id = spec.external_id.unwrap_or_else(|| {
            let code: String = spec
                .process_code
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(6)
                .collect::<String>()
                .to_uppercase();
            format!("DGS-{code}-{:013}-01", self.external_counter)
        });
        let id = uuid_v4(&mut self.rng);
        let id = case_id.unwrap_or(id);
        let folder_id = uuid_v4(&mut self.rng);
        let mut attachments = Vec::new();
        for a in spec.attachments {
            attachments.push(Att::from_spec(a, &mut self.rng));
        }
        let case = Case {
            id: id.clone(),
            client_id: client_id.to_string(),
            process_code: spec.process_code.clone(),
            external_id,
            folder_id,
            status: "HUBEE_NOTIFIED".to_string(),
            create: now_rfc3339(TimeStyle::Zulu),
            update: None,
            applicant: spec.applicant.unwrap_or_else(
                || json!({"firstName": "Jean", "lastName": "DUPONT", "email": null}),
            ),
            attachments,
            events: Vec::new(),
            patches: Vec::new(),
            history: Vec::new(),
            agent_downloaded: false,
        };
        self.cases.insert(id.clone(), case);
        self.case_order.push(id.clone());
        // §7.1: one notification per case, eventId null, for the recipient SI.
        self.notify_si(&id, None);
        id
    }

    fn notify_si(&mut self, case_id: &str, event_id: Option<String>) {
        let Some(case) = self.cases.get(case_id) else {
            return;
        };
        let n = Notification {
            id: uuid_v4(&mut self.rng),
            client_id: case.client_id.clone(),
            process_code: case.process_code.clone(),
            case_id: case_id.to_string(),
            event_id,
            date_time: now_rfc3339(TimeStyle::Zulu),
        };
        self.notifications.push(n);
    }

    /// SI actions notify the OSL, never the SI (§7.4). The OSL side is not served over HTTP;
    /// these are kept for inspection.
    fn notify_osl(&mut self, case_id: &str, event_id: &str) {
        let Some(ev) = self.events.get(event_id) else {
            return;
        };
        let n = json!({
            "id": uuid_v4(&mut self.rng),
            "caseId": case_id,
            "eventId": event_id,
            "eventActionType": ev.action_type,
            "eventStatus": ev.status,
            "dateTime": now_rfc3339(TimeStyle::Zulu),
        });
        self.osl_notifications.push((case_id.to_string(), n));
    }

    pub fn osl_post_event(&mut self, case_id: &str, spec: OslEvent) -> String {
        let Some(case) = self.cases.get_mut(case_id) else {
            panic!("fake-hubee: osl_post_event on unknown case {case_id}");
        };
        let current = case.status.clone();
        if let Some(new) = &spec.case_new_status {
            // The OSL's own status change (folder PATCH, §8.6), which it reports in the event.
            case.history
                .push((current.clone(), new.clone(), "osl".to_string()));
            case.status = new.clone();
            case.update = Some(now_rfc3339(TimeStyle::Zulu));
        }
        let mut attachments = Vec::new();
        for a in spec.attachments {
            attachments.push(Att::from_spec(a, &mut self.rng));
        }
        let id = uuid_v4(&mut self.rng);
        let ev = Event {
            id: id.clone(),
            side: Side::Osl,
            transmitter: Org::osl().json(),
            action_type: spec.action_type,
            notification: true,
            message: spec.message,
            comment: None,
            author: Some("Opérateur de service en ligne".to_string()),
            case_current_status: spec.case_new_status.as_ref().map(|_| current.clone()),
            case_new_status: spec.case_new_status,
            partner_attributes: None,
            partner_info: json!({"editorName": "DGS", "applicationName": "Portail", "softwareVersion": "2.2.2"}),
            status: "SENT".to_string(),
            create: now_rfc3339(TimeStyle::Offset),
            update: None,
            attachments,
            actual_at_post: current.clone(),
        };
        case.events.push(id.clone());
        self.events.insert(id.clone(), ev);
        // §7.2: an OSL event reaching SENT with notification: true notifies the SI.
        self.notify_si(case_id, Some(id.clone()));
        id
    }

    pub fn osl_ack_event(&mut self, case_id: &str, event_id: &str) {
        let in_case = self
            .cases
            .get(case_id)
            .is_some_and(|c| c.events.iter().any(|e| e == event_id));
        assert!(
            in_case,
            "fake-hubee: osl_ack_event: no event {event_id} on case {case_id}"
        );
        let Some(ev) = self.events.get_mut(event_id) else {
            panic!("fake-hubee: osl_ack_event: unknown event {event_id}");
        };
        assert!(
            ev.status == "SENT" || ev.status == "RECEIVED",
            "fake-hubee: osl_ack_event: event {event_id} is {}, not SENT",
            ev.status
        );
        if ev.status == "RECEIVED" {
            return;
        }
        ev.status = "RECEIVED".to_string();
        ev.update = Some(now_rfc3339(TimeStyle::Offset));
        // §7.3: the OSL acknowledging an SI event notifies the SI (if it asked for it).
        if ev.notification {
            self.notify_si(case_id, Some(event_id.to_string()));
        }
    }

    pub fn set_attachment_status(&mut self, case_id: &str, att_id: &str, status: &str) {
        let Some(case) = self.cases.get_mut(case_id) else {
            panic!("fake-hubee: set_attachment_status on unknown case {case_id}");
        };
        if let Some(a) = case.attachments.iter_mut().find(|a| a.id == att_id) {
            a.status = status.to_string();
            return;
        }
        for eid in &case.events {
            if let Some(ev) = self.events.get_mut(eid) {
                if let Some(a) = ev.attachments.iter_mut().find(|a| a.id == att_id) {
                    a.status = status.to_string();
                    return;
                }
            }
        }
        panic!("fake-hubee: set_attachment_status: no attachment {att_id} on case {case_id}");
    }

    // ---------------------------------------------------------------- inspection

    pub fn case_status(&self, case_id: &str) -> Option<String> {
        self.cases.get(case_id).map(|c| c.status.clone())
    }

    pub fn case_json_by_id(&self, case_id: &str) -> Option<Value> {
        self.cases.get(case_id).map(|c| self.case_json(c, false))
    }

    pub fn events_of(&self, case_id: &str) -> Vec<Value> {
        self.cases
            .get(case_id)
            .map(|c| {
                c.events
                    .iter()
                    .filter_map(|e| self.events.get(e))
                    .map(Event::json)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn notifications_of(&self, client_id: &str) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .notifications
            .iter()
            .filter(|n| n.client_id == client_id)
            .map(|n| self.notification_json(n, true))
            .collect();
        v.extend(self.raw_notifications_of(client_id));
        v
    }

    fn raw_notifications_of(&self, client_id: &str) -> impl Iterator<Item = Value> + '_ {
        let client_id = client_id.to_string();
        self.raw_notifications
            .iter()
            .filter(move |(c, _)| *c == client_id)
            .map(|(_, n)| n.clone())
    }

    /// Test hook: a notification served verbatim (after the real ones) until a DELETE names
    /// its `id`.
    pub fn push_raw_notification(&mut self, client_id: &str, n: Value) {
        self.raw_notifications.push((client_id.to_string(), n));
    }

    pub fn osl_notifications_of(&self, case_id: &str) -> Vec<Value> {
        self.osl_notifications
            .iter()
            .filter(|(c, _)| c == case_id)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn status_patches(&self, case_id: &str) -> Vec<String> {
        self.cases
            .get(case_id)
            .map(|c| c.patches.clone())
            .unwrap_or_default()
    }

    pub fn uploaded(
        &self,
        case_id: &str,
        event_id: &str,
        att_id: &str,
    ) -> Option<(Option<Vec<u8>>, String)> {
        let case = self.cases.get(case_id)?;
        if !case.events.iter().any(|e| e == event_id) {
            return None;
        }
        let att = self
            .events
            .get(event_id)?
            .attachments
            .iter()
            .find(|a| a.id == att_id)?;
        match &att.blob {
            Blob::Uploaded {
                sha256_hex, bytes, ..
            } => Some((bytes.as_ref().map(|b| b.to_vec()), sha256_hex.clone())),
            _ => None,
        }
    }

    /// Generated files whose digest is not computed yet.
    /// The content served for a case's (or its events') attachment.
    pub fn attachment_content(&self, case_id: &str, att_id: &str) -> Option<Arc<Content>> {
        let case = self.cases.get(case_id)?;
        let from_events = case
            .events
            .iter()
            .filter_map(|e| self.events.get(e))
            .flat_map(|e| e.attachments.iter());
        case.attachments
            .iter()
            .chain(from_events)
            .find(|a| a.id == att_id)
            .and_then(|a| match &a.blob {
                Blob::Content(c) => Some(Arc::clone(c)),
                _ => None,
            })
    }

    pub fn digest_jobs(&self) -> Vec<(Arc<Content>, Arc<OnceCell<String>>)> {
        let case_atts = self.cases.values().flat_map(|c| c.attachments.iter());
        let event_atts = self.events.values().flat_map(|e| e.attachments.iter());
        case_atts
            .chain(event_atts)
            .filter(|a| !a.digest.initialized())
            .filter_map(|a| match &a.blob {
                Blob::Content(c) => Some((Arc::clone(c), Arc::clone(&a.digest))),
                _ => None,
            })
            .collect()
    }

    pub fn admin_json(&self) -> Value {
        let cases: Vec<Value> = self
            .case_order
            .iter()
            .filter_map(|id| self.cases.get(id))
            .map(|c| {
                json!({
                    "id": c.id,
                    "externalId": c.external_id,
                    "processCode": c.process_code,
                    "clientId": c.client_id,
                    "status": c.status,
                    "statusPatches": c.patches,
                    "attachments": c.attachments.iter().map(Att::json).collect::<Vec<_>>(),
                    "events": self.events_of(&c.id),
                    "oslNotifications": self.osl_notifications_of(&c.id),
                    "uploads": self.uploads_json(c),
                })
            })
            .collect();
        let mut notifications = Map::new();
        let mut client_ids: Vec<&String> = self.clients.keys().collect();
        client_ids.sort();
        for cid in client_ids {
            notifications.insert(cid.clone(), Value::from(self.notifications_of(cid)));
        }
        let mut clients = Map::new();
        for (id, c) in &self.clients {
            clients.insert(
                id.clone(),
                json!({"processCode": c.process_code, "organization": c.org.json()}),
            );
        }
        let mut counts = Map::new();
        for r in crate::Route::ALL {
            let n = self.records.iter().filter(|x| x.route == Some(r)).count();
            counts.insert(format!("{r:?}"), json!(n));
        }
        json!({"clients": clients, "cases": cases, "notifications": notifications, "requestCounts": counts, "requestTotal": self.records.len()})
    }

    /// Files the SI uploaded on this case's events: size and SHA-256 only.
    fn uploads_json(&self, c: &Case) -> Vec<Value> {
        let mut out = Vec::new();
        for eid in &c.events {
            let Some(ev) = self.events.get(eid) else {
                continue;
            };
            for a in &ev.attachments {
                if let Blob::Uploaded {
                    len, sha256_hex, ..
                } = &a.blob
                {
                    out.push(json!({"eventId": eid, "attachmentId": a.id, "fileName": a.file_name, "size": len, "sha256": sha256_hex}));
                }
            }
        }
        out
    }

    // ---------------------------------------------------------------- faults and records

    pub fn inject(&mut self, route: Route, fault: Fault, times: usize) {
        let q = self.faults.entry(route).or_default();
        for _ in 0..times {
            q.push_back(fault.clone());
        }
    }

    pub fn inject_random(
        &mut self,
        routes: Option<Vec<Route>>,
        rate: f64,
        kinds: Vec<Fault>,
        seed: u64,
    ) {
        self.random = Some(RandomFaults {
            routes,
            rate,
            kinds,
            rng: fastrand::Rng::with_seed(seed),
        });
    }

    pub fn clear_faults(&mut self) {
        self.faults.clear();
        self.random = None;
    }

    /// The fault for this request, if any: one-shot faults first, then the random campaign.
    pub fn take_fault(&mut self, route: Route) -> Option<Fault> {
        if let Some(f) = self.faults.get_mut(&route).and_then(VecDeque::pop_front) {
            return Some(f);
        }
        let r = self.random.as_mut()?;
        if r.kinds.is_empty() || r.routes.as_ref().is_some_and(|v| !v.contains(&route)) {
            return None;
        }
        if r.rng.f64() < r.rate {
            let i = r.rng.usize(..r.kinds.len());
            return Some(r.kinds[i].clone());
        }
        None
    }

    pub fn record(&mut self, rec: RequestRecord) -> usize {
        self.records.push(rec);
        self.records.len() - 1
    }

    pub fn set_record_body(&mut self, idx: usize, body: Value) {
        if let Some(r) = self.records.get_mut(idx) {
            r.body = Some(body);
        }
    }

    pub fn finish_record(&mut self, idx: usize, status: Option<u16>) {
        if let Some(r) = self.records.get_mut(idx) {
            r.status = status;
        }
    }

    // ---------------------------------------------------------------- tokens (§2)

    /// `Ok(token JSON)`, or `Err` with the OAuth2 `invalid_client` body.
    pub fn issue_token(&mut self, client_id: &str, secret: &str, scope: &str) -> Res<Value> {
        match self.clients.get(client_id) {
            Some(c) if c.secret == secret => {}
            _ => {
                return Err(ApiErr {
                    status: 401,
                    body: json!({
                        "error": "invalid_client",
                        "error_description": format!("A valid OAuth client could not be found for client_id: {client_id}"),
                    }),
                })
            }
        }
        let mut raw = [0u8; 16];
        for b in raw.iter_mut() {
            *b = self.rng.u8(..);
        }
        let token = hex(&raw);
        let lifetime = self.token_lifetime;
        self.tokens.insert(
            token.clone(),
            Token {
                client_id: client_id.to_string(),
                expires_at: Instant::now() + Duration::from_secs(lifetime),
                dead: false,
                scope: scope.to_string(),
            },
        );
        Ok(
            json!({"access_token": token, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}),
        )
    }

    /// The client behind a bearer token.
    /// The client a token was issued to, valid or not (for the request log).
    pub fn token_client(&self, token: Option<&str>) -> Option<String> {
        token
            .and_then(|t| self.tokens.get(t))
            .map(|t| t.client_id.clone())
    }

    pub fn authenticate(&self, token: Option<&str>) -> Res<String> {
        let t = token
            .and_then(|t| self.tokens.get(t))
            .ok_or_else(ApiErr::invalid_credentials)?;
        if t.dead || Instant::now() >= t.expires_at {
            return Err(ApiErr::invalid_credentials());
        }
        if !t.scope.split(' ').any(|s| s == "SI") {
            // A token without the SI scope (no `scope=SI` in the token request): WSO2's
            // "resource forbidden" (900910, [WSO2]); inferred, not seen in HubEE documents.
            return Err(ApiErr {
                status: 403,
                body: envelope(
                    json!(900910),
                    "The access token does not allow you to access the requested resource",
                ),
            });
        }
        Ok(t.client_id.clone())
    }

    pub fn kill_token(&mut self, token: &str) {
        if let Some(t) = self.tokens.get_mut(token) {
            t.dead = true;
        }
    }

    pub fn expire_all_tokens(&mut self) {
        for t in self.tokens.values_mut() {
            t.dead = true;
        }
    }

    /// The client id when there is exactly one (the binary's case).
    pub fn only_client(&self) -> Option<String> {
        let mut ids = self.clients.keys();
        match (ids.next(), ids.next()) {
            (Some(id), None) => Some(id.clone()),
            _ => None,
        }
    }

    pub fn process_code_of(&self, client_id: &str) -> Option<String> {
        self.clients.get(client_id).map(|c| c.process_code.clone())
    }

    pub fn client_org(&self, client_id: &str) -> Option<Value> {
        self.clients.get(client_id).map(|c| c.org.json())
    }

    // ---------------------------------------------------------------- notifications (§4 N1, N2)

    fn notification_json(&self, n: &Notification, details: bool) -> Value {
        let recipient = self
            .clients
            .get(&n.client_id)
            .map(|c| c.org.json())
            .unwrap_or(Value::Null);
        let mut v = json!({
            "id": n.id,
            "recipient": recipient,
            "transmitter": Org::osl().json(),
            "processCode": n.process_code,
            "caseId": n.case_id,
            "eventId": n.event_id,
            "dateTime": n.date_time,
        });
        if details {
            // [CI] `eventDetails=true`; read live from the event (§7, inferred).
            let ev = n.event_id.as_ref().and_then(|e| self.events.get(e));
            v["eventActionType"] = ev.map(|e| json!(e.action_type)).unwrap_or(Value::Null);
            v["eventStatus"] = ev.map(|e| json!(e.status)).unwrap_or(Value::Null);
        }
        v
    }

    pub fn list_notifications(
        &mut self,
        client_id: &str,
        max: usize,
        details: bool,
        process_codes: &[String],
    ) -> Value {
        let mut batch: Vec<Value> = self
            .notifications
            .iter()
            .filter(|n| n.client_id == client_id)
            .filter(|n| process_codes.is_empty() || process_codes.contains(&n.process_code))
            .map(|n| self.notification_json(n, details))
            .chain(self.raw_notifications_of(client_id))
            .take(max)
            .collect();
        if let Some(rng) = self.shuffle.as_mut() {
            rng.shuffle(&mut batch);
        }
        Value::from(batch)
    }

    pub fn delete_notification(&mut self, client_id: &str, id: &str) -> Res<()> {
        let raw_before = self.raw_notifications.len();
        self.raw_notifications
            .retain(|(c, n)| !(c == client_id && n["id"].as_str() == Some(id)));
        let raw_deleted = self.raw_notifications.len() != raw_before;
        let Some(pos) = self.notifications.iter().position(|n| n.id == id) else {
            if raw_deleted {
                return Ok(());
            }
            return Err(ApiErr::new(404, "Notification is not found"));
        };
        if self.notifications[pos].client_id != client_id {
            return Err(ApiErr::forbidden());
        }
        self.notifications.remove(pos);
        Ok(())
    }

    // ---------------------------------------------------------------- cases (§4 C1–C3)

    fn case_json(&self, c: &Case, lite: bool) -> Value {
        let recipient = self
            .clients
            .get(&c.client_id)
            .map(|cl| cl.org.json())
            .unwrap_or(Value::Null);
        let mut v = json!({
            "id": c.id,
            "status": c.status,
            "externalId": c.external_id,
            "processCode": c.process_code,
            "createDateTime": c.create,
            "updateDateTime": c.update,
            "transmissionDateTime": null,
            "closeDateTime": null,
            "recipient": recipient,
            "applicant": c.applicant,
            "partnerAttributes": null,
            "attachments": c.attachments.iter().map(Att::json).collect::<Vec<_>>(),
            // Not in the Case schema: clients must tolerate unknown fields (§3).
            "folderId": c.folder_id,
            "transmitter": Org::osl().json(),
        });
        if !lite {
            v["events"] = Value::from(self.events_of(&c.id));
        }
        v
    }

    /// The case if it exists (404) and belongs to this client (403).
    fn owned_case(&self, client_id: &str, case_id: &str) -> Res<&Case> {
        let c = self
            .cases
            .get(case_id)
            .ok_or_else(|| ApiErr::new(404, "Case is not found"))?;
        if c.client_id != client_id {
            return Err(ApiErr::forbidden());
        }
        Ok(c)
    }

    pub fn get_case(&self, client_id: &str, case_id: &str, lite: bool) -> Res<Value> {
        let c = self.owned_case(client_id, case_id)?;
        let mut v = self.case_json(c, lite);
        if let Some(f) = self.case_rewrites.get(case_id) {
            f(&mut v);
        }
        Ok(v)
    }

    pub fn patch_case(&mut self, client_id: &str, case_id: &str, status: &str) -> Res<()> {
        let strict = self.strict;
        self.owned_case(client_id, case_id)?;
        if !SI_SETTABLE.contains(&status) {
            return Err(ApiErr::bad(&format!(
                "Bad request : status {status} cannot be set by a service instructeur (allowed: {})",
                SI_SETTABLE.join(", ")
            )));
        }
        let same_refused = self.behaviour.same_status_patch_refused;
        let forbidden = self.forbidden(case_id, status);
        let Some(c) = self.cases.get_mut(case_id) else {
            return Err(ApiErr::new(404, "Case is not found"));
        };
        if let Some(e) = forbidden {
            return Err(e);
        }
        if c.status == status {
            // §10.9: whether a PATCH to the current status errors is undocumented; the
            // behaviour chooses (400 as seen from the real hub, or a 204 no-op). The no-op is
            // still listed in `patches`.
            if same_refused {
                return Err(ApiErr::bad(&format!(
                    "Case status cannot change from {} to {status}",
                    c.status
                )));
            }
        } else if !transition_allowed(&c.status, status, strict) {
            return Err(ApiErr::bad(&format!(
                "Bad request : transition from {} to {status} is not allowed",
                c.status
            )));
        } else {
            c.history
                .push((c.status.clone(), status.to_string(), "patch".to_string()));
        }
        c.status = status.to_string();
        c.update = Some(now_rfc3339(TimeStyle::Zulu));
        c.patches.push(status.to_string());
        // §4 C2: "a PATCH alone notifies nobody".
        Ok(())
    }

    /// §10.19: the démarche of this case does not allow `status`.
    fn forbidden(&self, case_id: &str, status: &str) -> Option<ApiErr> {
        let code = &self.cases.get(case_id)?.process_code;
        let list = self.behaviour.forbidden_statuses.get(code)?;
        list.iter().any(|s| s == status).then(|| {
            ApiErr::bad(&format!(
                "Bad Request : this flow does not allow the status {status}"
            ))
        })
    }

    /// §10.17: the case has taken all the events it may.
    fn capped(&self, case_id: &str) -> bool {
        match (self.behaviour.max_events_per_case, self.cases.get(case_id)) {
            (Some(max), Some(c)) => c.events.len() >= max,
            _ => false,
        }
    }

    pub fn case_attachment(&self, client_id: &str, case_id: &str, att_id: &str) -> Res<Download> {
        let c = self.owned_case(client_id, case_id)?;
        c.attachments
            .iter()
            .find(|a| a.id == att_id)
            .ok_or_else(|| ApiErr::new(404, "File is not found"))?
            .download("File is not found")
    }

    // ---------------------------------------------------------------- events (§4 E1–E4, A1, A2)

    /// The event, if it belongs to this client's case.
    fn case_event(&self, client_id: &str, case_id: &str, event_id: &str, nf: &str) -> Res<&Event> {
        let c = self.owned_case(client_id, case_id)?;
        if !c.events.iter().any(|e| e == event_id) {
            return Err(ApiErr::new(404, nf));
        }
        self.events
            .get(event_id)
            .ok_or_else(|| ApiErr::new(404, nf))
    }

    pub fn post_event(
        &mut self,
        client_id: &str,
        case_id: &str,
        new: NewEvent,
        partner_info: Value,
    ) -> Res<Value> {
        // §10.15: POST on an unknown case → 404 "Case is not found".
        self.owned_case(client_id, case_id)?;
        // RC002 (§4 E1).
        if !ACTION_TYPES.contains(&new.action_type.as_str()) {
            return Err(ApiErr::bad(&format!(
                "Bad Request : actionType {} is not one of {}",
                new.action_type,
                ACTION_TYPES.join(", ")
            )));
        }
        let deposit = new.action_type == "ATTACH_DEPOSIT";
        if deposit && new.attachments.is_empty() {
            return Err(ApiErr::bad(
                "Bad Request : an ATTACH_DEPOSIT event needs at least one attachment",
            ));
        }
        if !deposit && !new.attachments.is_empty() {
            return Err(ApiErr::bad(&format!(
                "Bad Request : an event of type {} cannot have attachments",
                new.action_type
            )));
        }
        // §10.17: past the cap, every event is refused, for good.
        if self.capped(case_id) {
            return Err(ApiErr::bad(
                "Bad Request : the maximum number of events for this case has been reached",
            ));
        }
        let actual = self.case_status(case_id).unwrap_or_default();
        let moves_to = self.event_move(case_id, &actual, &new)?;
        // RC003/RC005/RC006 (formats, sizes, messages allowed per démarche) are not modelled:
        // every démarche of the fake accepts everything.
        let transmitter = self.client_org(client_id).unwrap_or(Value::Null);
        let hide_type = self.behaviour.si_attachment_type_null;
        let mut attachments = Vec::new();
        for (file_name, type_, size, mime_type) in new.attachments {
            attachments.push(Att {
                id: uuid_v4(&mut self.rng),
                status: "PENDING".to_string(),
                file_name,
                type_,
                mime_type,
                size,
                blob: Blob::Missing,
                digest: Arc::new(OnceCell::new()),
                hide_type,
            });
        }
        let id = uuid_v4(&mut self.rng);
        let ev = Event {
            id: id.clone(),
            side: Side::Si(client_id.to_string()),
            transmitter,
            action_type: new.action_type,
            notification: new.notification,
            message: new.message,
            comment: new.comment,
            author: new.author,
            case_current_status: new.case_current_status,
            case_new_status: new.case_new_status,
            partner_attributes: new.partner_attributes,
            partner_info,
            // §7: ATTACH_DEPOSIT starts IN_PROGRESS (no notification yet), others SENT.
            status: if deposit { "IN_PROGRESS" } else { "SENT" }.to_string(),
            create: now_rfc3339(TimeStyle::Offset),
            update: None,
            attachments,
            actual_at_post: actual.clone(),
        };
        let body = ev.json();
        let notify = !deposit && ev.notification;
        self.events.insert(id.clone(), ev);
        if let Some(c) = self.cases.get_mut(case_id) {
            c.events.push(id.clone());
            // §10.1: on a hub where events move the status, `caseNewStatus` is applied now.
            if let Some(to) = moves_to {
                c.history.push((actual, to.clone(), format!("event:{id}")));
                c.status = to;
                c.update = Some(now_rfc3339(TimeStyle::Zulu));
            }
        }
        if notify {
            self.notify_osl(case_id, &id);
        }
        Ok(body)
    }

    /// What an SI event does to the case's status (§10.1): `Some(new)` when it moves it.
    /// With `strict_events`, an event whose `caseCurrentStatus` is not the case's status, or
    /// whose change breaks the status table or the démarche's rules, is refused (400).
    fn event_move(&self, case_id: &str, actual: &str, new: &NewEvent) -> Res<Option<String>> {
        let Some(to) = new.case_new_status.as_deref() else {
            return Ok(None);
        };
        let from = new.case_current_status.as_deref().unwrap_or(actual);
        let strict = self.behaviour.strict_events;
        if strict && from != actual {
            return Err(ApiErr::bad(&format!(
                "Bad Request : caseCurrentStatus {from} is not the case's status {actual}"
            )));
        }
        if to == actual || from == to {
            return Ok(None);
        }
        let allowed = SI_SETTABLE.contains(&to) && transition_allowed(actual, to, self.strict);
        let forbidden = self.forbidden(case_id, to);
        if strict {
            if let Some(e) = forbidden {
                return Err(e);
            }
            if !allowed {
                return Err(ApiErr::bad(&format!(
                    "Bad Request : case status cannot change from {actual} to {to}"
                )));
            }
        }
        Ok(
            (self.behaviour.events_move_status && allowed && forbidden.is_none())
                .then(|| to.to_string()),
        )
    }

    // ---------------------------------------------------------------- the portal agent (§10.18)

    /// Queues an agent action to run when the next request of `route` (on `case_id`, or on
    /// any case) arrives, before the request is handled.
    pub fn agent_before(&mut self, route: Route, case_id: Option<String>, action: AgentAction) {
        self.agent_hooks.push((route, case_id, action));
    }

    /// Runs the agent actions hooked on this request.
    pub fn run_agent_hooks(&mut self, route: Route, case_id: Option<&str>) {
        let mut i = 0;
        while i < self.agent_hooks.len() {
            let (r, c, _) = &self.agent_hooks[i];
            let hit = *r == route
                && match (c, case_id) {
                    (None, _) => true,
                    (Some(c), Some(id)) => c == id,
                    (Some(_), None) => false,
                };
            if hit {
                let (_, c, action) = self.agent_hooks.remove(i);
                if let Some(id) = c.or_else(|| case_id.map(str::to_string)) {
                    let _ = self.agent_act(&id, action);
                }
            } else {
                i += 1;
            }
        }
    }

    /// What the agent did so far.
    pub fn agent_log(&self) -> Vec<Value> {
        self.agent_log.clone()
    }

    /// The agent acts on a case as the portal would: it reads the state right before its
    /// write and refuses what the portal would not offer (§10.19: forward only, never the
    /// current status, never `CLOSED`/`SI_INTG_ERROR`, the démarche's forbidden statuses,
    /// `IN_PROGRESS`/`REFUSED`/`DONE` only once a piece was downloaded when the case has
    /// pieces). Each action is an event of the case (counted by the cap), notifying the OSL
    /// when it changes the status or carries a message.
    pub fn agent_act(&mut self, case_id: &str, action: AgentAction) -> Result<(), String> {
        let result = self.agent_act_inner(case_id, &action);
        let after = self.case_status(case_id).unwrap_or_default();
        self.agent_log.push(json!({
            "caseId": case_id,
            "action": serde_json::to_value(&action).unwrap_or(Value::Null),
            "statusAfter": after,
            "ok": result.is_ok(),
            "error": result.as_ref().err(),
        }));
        result
    }

    fn agent_act_inner(&mut self, case_id: &str, action: &AgentAction) -> Result<(), String> {
        let Some(case) = self.cases.get(case_id) else {
            return Err(format!("no case {case_id}"));
        };
        if self.capped(case_id) {
            return Err("the case has reached the maximum number of events".into());
        }
        let current = case.status.clone();
        let client_id = case.client_id.clone();
        let has_pieces = !case.attachments.is_empty();
        let downloaded = case.agent_downloaded;
        let (action_type, message, new_status, notification) = match action {
            AgentAction::SetStatus(to) => {
                let rank = portal_rank(&current)
                    .ok_or_else(|| format!("the portal offers no change from {current}"))?;
                let to_rank =
                    portal_rank(to).ok_or_else(|| format!("the portal never sets {to}"))?;
                if to_rank <= rank || to_rank == 0 {
                    return Err(format!("the portal does not offer {current} → {to}"));
                }
                if self.forbidden(case_id, to).is_some() {
                    return Err(format!("the démarche does not allow {to}"));
                }
                if has_pieces
                    && !downloaded
                    && matches!(to.as_str(), "IN_PROGRESS" | "REFUSED" | "DONE")
                {
                    return Err(format!(
                        "the portal withholds {to} until a piece is downloaded"
                    ));
                }
                (
                    "STATUS_UPDATE",
                    Some(format!("Statut passé à {to} depuis le portail")),
                    Some(to.clone()),
                    true,
                )
            }
            AgentAction::Message(text) => ("SENDING_MESSAGE", Some(text.clone()), None, true),
            AgentAction::AttachDl => ("ATTACH_DL", None, None, false),
        };
        let transmitter = self.client_org(&client_id).unwrap_or(Value::Null);
        let id = uuid_v4(&mut self.rng);
        let ev = Event {
            id: id.clone(),
            side: Side::Portal,
            transmitter,
            action_type: action_type.to_string(),
            notification,
            message,
            comment: None,
            author: Some("Agent du portail".to_string()),
            case_current_status: new_status.as_ref().map(|_| current.clone()),
            case_new_status: new_status.clone(),
            partner_attributes: None,
            partner_info: json!({"editorName": "DINUM", "applicationName": "Portail HubEE", "softwareVersion": "2"}),
            status: "SENT".to_string(),
            create: now_rfc3339(TimeStyle::Offset),
            update: None,
            attachments: Vec::new(),
            actual_at_post: current.clone(),
        };
        self.events.insert(id.clone(), ev);
        if let Some(c) = self.cases.get_mut(case_id) {
            c.events.push(id.clone());
            if matches!(action, AgentAction::AttachDl) {
                c.agent_downloaded = true;
            }
            if let Some(to) = new_status {
                c.history.push((current, to.clone(), "agent".to_string()));
                c.status = to;
                c.update = Some(now_rfc3339(TimeStyle::Zulu));
            }
        }
        if notification {
            self.notify_osl(case_id, &id);
        }
        Ok(())
    }

    /// One random agent action on a random case of an SI (the background agent).
    pub fn agent_random_step(&mut self) {
        let open: Vec<String> = self
            .case_order
            .iter()
            .filter(|id| {
                self.cases
                    .get(*id)
                    .is_some_and(|c| portal_rank(&c.status).is_some_and(|r| r < 5))
            })
            .cloned()
            .collect();
        if open.is_empty() {
            return;
        }
        let id = open[self.agent_rng.usize(..open.len())].clone();
        let action = match self.agent_rng.u8(..10) {
            0..=2 => AgentAction::AttachDl,
            3 => AgentAction::Message("Message de l'agent depuis le portail".to_string()),
            4..=5 => AgentAction::SetStatus("SI_RECEIVED".to_string()),
            6..=7 => AgentAction::SetStatus("IN_PROGRESS".to_string()),
            8 => AgentAction::SetStatus("REFUSED".to_string()),
            _ => AgentAction::SetStatus("DONE".to_string()),
        };
        let _ = self.agent_act(&id, action);
    }

    /// Every status change of a case: `{from, to, by}` (`patch`, `event:{id}`, `agent`, `osl`).
    pub fn status_history(&self, case_id: &str) -> Vec<Value> {
        self.cases
            .get(case_id)
            .map(|c| {
                c.history
                    .iter()
                    .map(|(f, t, by)| json!({"from": f, "to": t, "by": by}))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The SI's own events on a case, each with the case's real status when it was posted.
    pub fn si_event_audit(&self, case_id: &str) -> Vec<(Value, String)> {
        self.cases
            .get(case_id)
            .map(|c| {
                c.events
                    .iter()
                    .filter_map(|e| self.events.get(e))
                    .filter(|e| matches!(e.side, Side::Si(_)))
                    .map(|e| (e.json(), e.actual_at_post.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get_event(&self, client_id: &str, case_id: &str, event_id: &str) -> Res<Value> {
        Ok(self
            .case_event(client_id, case_id, event_id, "event is not found")?
            .json())
    }

    pub fn patch_event(
        &mut self,
        client_id: &str,
        case_id: &str,
        event_id: &str,
        status: &str,
    ) -> Res<()> {
        let ev = self.case_event(client_id, case_id, event_id, "event is not found")?;
        let creator = ev.side == Side::Si(client_id.to_string());
        let current = ev.status.clone();
        let all_received = ev.attachments.iter().all(|a| a.status == "RECEIVED");
        let notification = ev.notification;
        // Re-PATCHing to the status the event already has is accepted (204) for the same
        // reason as for cases (§10.9: undocumented; [PM] D-MSG skips it, retries may not).
        let next = match (status, creator, current.as_str()) {
            ("SENT", true, "SENT") | ("RECEIVED", false, "RECEIVED") => return Ok(()),
            ("SENT", true, "IN_PROGRESS") if !all_received => return Err(ApiErr::bad(
                "Bad Request : every attachment must be RECEIVED before the event is SENT (RC007)",
            )),
            ("SENT", true, "IN_PROGRESS") => "SENT",
            ("RECEIVED", false, "SENT") => "RECEIVED",
            ("SENT", false, _) => {
                return Err(ApiErr::bad(
                    "Bad Request : only the transmitter of an event can set it SENT",
                ))
            }
            ("RECEIVED", true, _) => {
                return Err(ApiErr::bad(
                    "Bad Request : only the recipient of an event can set it RECEIVED",
                ))
            }
            ("SENT" | "RECEIVED", _, cur) => {
                return Err(ApiErr::bad(&format!(
                    "Bad Request : event status cannot go from {cur} to {status}"
                )))
            }
            _ => {
                return Err(ApiErr::bad(&format!(
                    "Bad Request : status {status} is not one of SENT, RECEIVED"
                )))
            }
        };
        if let Some(ev) = self.events.get_mut(event_id) {
            ev.status = next.to_string();
            ev.update = Some(now_rfc3339(TimeStyle::Offset));
        }
        // §4 E3 / SFD 4.1: the caller's counterpart (the OSL) is notified, never the SI.
        if notification {
            self.notify_osl(case_id, event_id);
        }
        Ok(())
    }

    pub fn delete_event(&mut self, client_id: &str, case_id: &str, event_id: &str) -> Res<()> {
        // §4 E4 spells this 404 with a capital E.
        let ev = self.case_event(client_id, case_id, event_id, "Event is not found")?;
        // RC008: only an ATTACH_DEPOSIT still IN_PROGRESS, and only by its creator.
        if ev.action_type != "ATTACH_DEPOSIT"
            || ev.status != "IN_PROGRESS"
            || ev.side != Side::Si(client_id.to_string())
        {
            return Err(ApiErr::bad("Bad Request"));
        }
        self.events.remove(event_id);
        if let Some(c) = self.cases.get_mut(case_id) {
            c.events.retain(|e| e != event_id);
        }
        Ok(())
    }

    /// Checks an upload may start; returns the declared size.
    pub fn upload_target(
        &self,
        client_id: &str,
        case_id: &str,
        event_id: &str,
        att_id: &str,
    ) -> Res<u64> {
        let ev = self.case_event(client_id, case_id, event_id, "event is not found")?;
        if ev.side != Side::Si(client_id.to_string()) {
            return Err(ApiErr::forbidden());
        }
        let att = ev
            .attachments
            .iter()
            .find(|a| a.id == att_id)
            .ok_or_else(|| ApiErr::new(404, "Binary meta-data is not found"))?;
        if ev.status != "IN_PROGRESS" {
            return Err(ApiErr::bad(
                "Bad Request : files can only be uploaded while the event is IN_PROGRESS",
            ));
        }
        Ok(att.size)
    }

    /// Stores a completed upload (re-checking the target: the state may have changed while
    /// the body streamed in).
    #[allow(clippy::too_many_arguments)]
    pub fn store_upload(
        &mut self,
        client_id: &str,
        case_id: &str,
        event_id: &str,
        att_id: &str,
        len: u64,
        sha: [u8; 32],
        bytes: Option<Bytes>,
    ) -> Res<()> {
        self.upload_target(client_id, case_id, event_id, att_id)?;
        let Some(att) = self
            .events
            .get_mut(event_id)
            .and_then(|e| e.attachments.iter_mut().find(|a| a.id == att_id))
        else {
            return Err(ApiErr::new(404, "Binary meta-data is not found"));
        };
        use base64::Engine as _;
        att.status = "RECEIVED".to_string();
        att.blob = Blob::Uploaded {
            len,
            sha256_hex: hex(&sha),
            bytes,
        };
        att.digest = Arc::new(OnceCell::new_with(Some(
            base64::engine::general_purpose::STANDARD.encode(sha),
        )));
        Ok(())
    }

    pub fn event_attachment(
        &self,
        client_id: &str,
        case_id: &str,
        event_id: &str,
        att_id: &str,
    ) -> Res<Download> {
        // §4 A2 spells this 404 in lower case.
        let ev = self.case_event(client_id, case_id, event_id, "event is not found")?;
        ev.attachments
            .iter()
            .find(|a| a.id == att_id)
            .ok_or_else(|| ApiErr::new(404, "file is not found"))?
            .download("file is not found")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_section_6() {
        assert!(transition_allowed("HUBEE_NOTIFIED", "SENT", true));
        assert!(!transition_allowed("HUBEE_NOTIFIED", "IN_PROGRESS", true));
        assert!(transition_allowed("HUBEE_NOTIFIED", "IN_PROGRESS", false));
        assert!(transition_allowed("SENT", "DONE", false));
        assert!(!transition_allowed("SENT", "DONE", true));
        assert!(!transition_allowed("HUBEE_NOTIFIED", "DONE", false));
        assert!(transition_allowed("DONE", "SI_INTG_ERROR", true));
        assert!(!transition_allowed("CLOSED", "DONE", false));
    }
}
