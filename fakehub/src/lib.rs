//! `fake-hubee`: a faithful stand-in for the HubEE "Folder" API v1 (as seen by a Service
//! Instructeur), for hubee-sync's tests, demo and benchmarks.
//!
//! It follows `/work/shared/hubee/PROTOCOL.md` (cited as §n below), including the awkward parts
//! clients must survive: WSO2-shaped 401s, validator-style 400 messages, nulls and unknown
//! fields, two date-time styles, notifications that stay until deleted, and injectable faults
//! (5xx, 429, connection resets before or after the effect, truncated or slow bodies, wrong or
//! missing digests, dead tokens).
//!
//! Everything is real HTTP/1.1 on a TCP socket (hyper, one `serve_connection` per accepted
//! stream) so that a fault can drop the connection without a response.

mod content;
mod server;
mod state;
pub mod tls;
mod util;

pub use content::Content;

use serde_json::Value;
use state::State;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The HubEE operations an SI can call (PROTOCOL §4), plus the token endpoint (§2).
/// Serialized by name (`"GetAttachment"`) for the `/_fake/` admin routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Route {
    Token,
    ListNotifications,
    DeleteNotification,
    GetCase,
    PatchCase,
    GetAttachment,
    PostEvent,
    GetEvent,
    PatchEvent,
    DeleteEvent,
    PutEventAttachment,
    GetEventAttachment,
}

impl Route {
    pub const ALL: [Route; 12] = [
        Route::Token,
        Route::ListNotifications,
        Route::DeleteNotification,
        Route::GetCase,
        Route::PatchCase,
        Route::GetAttachment,
        Route::PostEvent,
        Route::GetEvent,
        Route::PatchEvent,
        Route::DeleteEvent,
        Route::PutEventAttachment,
        Route::GetEventAttachment,
    ];
}

/// A fault injected into one request. Faults that make no sense on a route (a digest fault on
/// a JSON route) leave the response unchanged; the request still records the fault.
/// In JSON (admin routes): `"ResetAfterEffect"`, `{"Status":503}`,
/// `{"TooManyRequests":{"retry_after_secs":2}}`, `{"TruncateBody":{"after_bytes":100}}`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fault {
    /// Respond with this status and the HubEE error envelope, without doing anything.
    Status(u16),
    /// 429 with `Retry-After`, without doing anything.
    TooManyRequests { retry_after_secs: u64 },
    /// Drop the connection (RST, SO_LINGER 0) before reading the request or doing anything.
    ResetBeforeEffect,
    /// Do the request's effect (DELETE, PATCH, event created, upload stored…), then drop the
    /// connection (RST) without sending a single response byte.
    ResetAfterEffect,
    /// Uploads: read `after_bytes` bytes of the request body, then drop the connection (RST):
    /// the connection breaks in the middle of the file, and nothing is stored.
    ResetMidBody { after_bytes: u64 },
    /// Announce the full `Content-Length`, send `after_bytes` bytes of body, then close.
    TruncateBody { after_bytes: u64 },
    /// Downloads: a `digest` header that belongs to other content.
    WrongDigest,
    /// Downloads: no `digest` header at all.
    MissingDigest,
    /// Send the body in chunks with a delay between them.
    SlowBody { chunk_delay_ms: u64 },
    /// The request's bearer token dies: 401 with the WSO2 900901 body, now and afterwards.
    KillToken,
    /// Downloads: send `after_bytes` bytes chunked (no `Content-Length`), then end the body
    /// cleanly with a success status: the hub's real behaviour when a body is cut short
    /// (§10.10). Only a client that counts bytes against `size` notices.
    CutShort { after_bytes: u64 },
}

/// How the hub behaves where the evidence allows several readings (PROTOCOL §10). Each test
/// says which hub it runs against; `Default` is the hub the evidence points to.
/// In JSON (`POST /_fake/behaviour`, partial objects merge): camelCase field names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct HubBehaviour {
    /// An SI event's `caseNewStatus` moves the case (§10.1, [PY25]); `false`: only PATCH does.
    pub events_move_status: bool,
    /// An SI event whose `caseCurrentStatus` is not the case's status, or whose change breaks
    /// the status table (or the démarche's forbidden statuses), is refused with 400; `false`:
    /// accepted (and the status moves only along the table).
    pub strict_events: bool,
    /// A PATCH to the status the case already has: 400 "Case status cannot change from X to
    /// X" (`true`), or a 204 no-op (§10.9).
    pub same_status_patch_refused: bool,
    /// Downloads are sent chunked, without `Content-Length` (§10.10, [PV2]).
    pub chunked_downloads: bool,
    /// Events a case may hold; past it every event POST is refused, for good (§10.17).
    pub max_events_per_case: Option<usize>,
    /// The SI's own pieces come back with `type: null` (§10.22).
    pub si_attachment_type_null: bool,
    /// Per processCode, the statuses the démarche forbids (§10.19, e.g. `REFUSED`).
    pub forbidden_statuses: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for HubBehaviour {
    fn default() -> Self {
        HubBehaviour {
            events_move_status: true,
            strict_events: true,
            same_status_patch_refused: true,
            chunked_downloads: true,
            max_events_per_case: None,
            si_attachment_type_null: false,
            forbidden_statuses: Default::default(),
        }
    }
}

impl HubBehaviour {
    /// The hub of the documents before §10.1 was revised: only PATCH moves a case, events are
    /// not checked, a PATCH to the current status is a no-op, downloads carry
    /// `Content-Length`.
    pub fn patch_only() -> Self {
        HubBehaviour {
            events_move_status: false,
            strict_events: false,
            same_status_patch_refused: false,
            chunked_downloads: false,
            ..HubBehaviour::default()
        }
    }
}

/// What a portal agent does to a case (§10.18). JSON: `{"SetStatus":"DONE"}`,
/// `{"Message":"…"}`, `"AttachDl"`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AgentAction {
    /// Moves the case forward as the portal offers it (§10.19).
    SetStatus(String),
    /// Posts a `SENDING_MESSAGE` event.
    Message(String),
    /// Records a download of the case's pieces (`ATTACH_DL`, `notification: false`).
    AttachDl,
}

/// The background portal agent; it stops when dropped.
pub struct AgentHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request received by the fake (admin routes under `/_fake/` are not recorded).
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    pub route: Option<Route>,
    /// Path without the query string.
    pub path: String,
    pub query: String,
    /// Status sent; `None` when the connection was dropped without a response.
    pub status: Option<u16>,
    pub fault: Option<Fault>,
    /// Every request header. Names are lower-case (HTTP header names are case-insensitive and
    /// hyper normalises them): use [`RequestRecord::header`] to look one up.
    pub headers: Vec<(String, String)>,
    /// The JSON body, for requests that carry one (PATCH, POST event).
    pub body: Option<Value>,
    /// When it arrived (the fake's monotonic clock: compare with `Instant`s of the same process).
    pub at: std::time::Instant,
    /// The client its bearer token was issued to (even an expired token), if any.
    pub client_id: Option<String>,
}

impl RequestRecord {
    /// A header's value, name matched case-insensitively (`header("editorName")`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A case to create, as the OSL would have deposited it (PROTOCOL §7.1).
#[derive(Clone, Debug)]
pub struct CaseSpec {
    pub process_code: String,
    /// Generated like `DGS-CERTDC-0000000000001-01` when `None` (§5 numbering rule).
    pub external_id: Option<String>,
    pub attachments: Vec<AttachmentSpec>,
    /// `applicant` JSON; a made-up one when `None`.
    pub applicant: Option<Value>,
}

impl CaseSpec {
    /// A case of `process_code` with no attachments and generated identity.
    pub fn new(process_code: &str) -> Self {
        CaseSpec {
            process_code: process_code.to_string(),
            external_id: None,
            attachments: Vec::new(),
            applicant: None,
        }
    }
}

/// A file attached by the OSL to a case or to one of its events.
#[derive(Clone, Debug)]
pub struct AttachmentSpec {
    pub file_name: String,
    pub type_: String,
    pub mime_type: String,
    pub content: Content,
    /// `PENDING`, `RECEIVED`, `CORRUPTED`, `REJECTED`, `DELETED` (§5). Only `RECEIVED` files
    /// can be downloaded.
    pub status: String,
    /// Lie about the size: metadata says this, the body served is `content`.
    pub declared_size: Option<u64>,
}

impl AttachmentSpec {
    /// A `RECEIVED` file whose metadata tells the truth.
    pub fn new(file_name: &str, type_: &str, mime_type: &str, content: Content) -> Self {
        AttachmentSpec {
            file_name: file_name.to_string(),
            type_: type_.to_string(),
            mime_type: mime_type.to_string(),
            content,
            status: "RECEIVED".to_string(),
            declared_size: None,
        }
    }

    /// Same file with another status (e.g. `PENDING`, `CORRUPTED`).
    pub fn with_status(mut self, status: &str) -> Self {
        self.status = status.to_string();
        self
    }
}

/// An event the OSL posts on a case (PROTOCOL §7.2, §8.3).
#[derive(Clone, Debug, Default)]
pub struct OslEvent {
    /// `STATUS_UPDATE`, `SENDING_MESSAGE`, `ATTACH_DEPOSIT`, …
    pub action_type: String,
    pub message: Option<String>,
    /// When set, the case moves to this status (the OSL's own PATCH, §8.6) and the event
    /// carries `caseCurrentStatus`/`caseNewStatus`.
    pub case_new_status: Option<String>,
    pub attachments: Vec<AttachmentSpec>,
}

/// A running fake HubEE. Cheap to clone; all clones share the same hub.
#[derive(Clone)]
pub struct FakeHub {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    addr: SocketAddr,
    state: Mutex<State>,
    /// The background agent started by the admin route `/_fake/agent`.
    pub(crate) agent: Mutex<Option<AgentHandle>>,
}

impl Inner {
    /// The state lock. A panic while holding it (a bug in the fake) must not wedge every
    /// later request, so poisoning is ignored.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FakeHub {
    /// Binds 127.0.0.1 on a free port and serves on the current tokio runtime.
    ///
    /// # Panics
    /// If no loopback port can be bound.
    pub async fn start() -> FakeHub {
        match Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await {
            Ok(hub) => hub,
            Err(e) => panic!("fake-hubee: cannot bind 127.0.0.1:0: {e}"),
        }
    }

    /// Binds `addr` and serves on the current tokio runtime.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<FakeHub> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            addr,
            state: Mutex::new(State::new(fastrand::u64(..))),
            agent: Mutex::new(None),
        });
        tokio::spawn(server::accept_loop(listener, Arc::clone(&inner)));
        Ok(FakeHub { inner })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// API base (the client appends `/teledossiers/v1`).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth2/token", self.inner.addr)
    }

    /// Re-seeds the generator of ids and tokens (the binary's `--seed`).
    pub fn reseed(&self, seed: u64) {
        self.inner.state().reseed(seed);
    }

    /// One SI credential pair for one démarche (§2 "one credential pair per démarche"); the SI
    /// gets a made-up SIRET and branch code, derived from `client_id`.
    pub fn add_client(&self, client_id: &str, client_secret: &str, process_code: &str) {
        self.inner
            .state()
            .add_client(client_id, client_secret, process_code);
    }

    /// A new case addressed to `client_id`'s SI, at `HUBEE_NOTIFIED`, with its `eventId: null`
    /// notification (§7.1). Returns the case id.
    ///
    /// # Panics
    /// If `client_id` was not added.
    pub fn add_case(&self, client_id: &str, spec: CaseSpec) -> String {
        self.inner.state().add_case(client_id, spec)
    }

    pub fn case_status(&self, case_id: &str) -> Option<String> {
        self.inner.state().case_status(case_id)
    }

    /// The case as `GET /cases/{id}` returns it (with events).
    pub fn case_json(&self, case_id: &str) -> Option<Value> {
        self.inner.state().case_json_by_id(case_id)
    }

    /// Every event of the case, as `GET …/events/{id}` returns them, oldest first.
    pub fn events(&self, case_id: &str) -> Vec<Value> {
        self.inner.state().events_of(case_id)
    }

    /// The client's notifications not yet deleted, oldest first, with `eventActionType` and
    /// `eventStatus` (as with `eventDetails=true`).
    pub fn notifications(&self, client_id: &str) -> Vec<Value> {
        self.inner.state().notifications_of(client_id)
    }

    /// Notifications the OSL received about this case (SI events reaching `SENT` or
    /// `RECEIVED` with `notification: true`, §7.4). Not part of the brief's API; for tests
    /// that check the counterpart was told.
    pub fn osl_notifications(&self, case_id: &str) -> Vec<Value> {
        self.inner.state().osl_notifications_of(case_id)
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.state().records.clone()
    }

    pub fn request_count(&self, route: Route) -> usize {
        self.inner
            .state()
            .records
            .iter()
            .filter(|r| r.route == Some(route))
            .count()
    }

    /// Statuses accepted by `PATCH /cases/{id}` (204), in order. A PATCH to the status the
    /// case already has is accepted and listed too, so redundant PATCHes are visible.
    pub fn status_patches(&self, case_id: &str) -> Vec<String> {
        self.inner.state().status_patches(case_id)
    }

    /// The next `times` requests on `route` get `fault` (one-shot faults run before random ones).
    pub fn inject(&self, route: Route, fault: Fault, times: usize) {
        self.inner.state().inject(route, fault, times);
    }

    /// Every request on `routes` (all routes when `None`) fails with probability `rate`, with a
    /// fault drawn from `kinds`; the draw sequence is reproducible from `seed`.
    pub fn inject_random(
        &self,
        routes: Option<Vec<Route>>,
        rate: f64,
        kinds: Vec<Fault>,
        seed: u64,
    ) {
        self.inner.state().inject_random(routes, rate, kinds, seed);
    }

    pub fn clear_faults(&self) {
        self.inner.state().clear_faults();
    }

    /// `expires_in` of tokens issued from now on (default 3600, §2); they really expire then.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.inner.state().token_lifetime = secs;
    }

    /// Every token issued so far now gets 401 900901.
    pub fn expire_all_tokens(&self) {
        self.inner.state().expire_all_tokens();
    }

    /// Shuffle each notification batch ("l'ordre des notifications n'est pas garanti", §4 N1).
    pub fn set_shuffle(&self, seed: Option<u64>) {
        self.inner.state().shuffle = seed.map(fastrand::Rng::with_seed);
    }

    /// `false` (default): the permissive union of both §6 predecessor columns; `true`: the
    /// [CI] column only.
    pub fn set_strict_transitions(&self, strict: bool) {
        self.inner.state().strict = strict;
    }

    /// The hub's behaviour where the evidence allows several (see [`HubBehaviour`]).
    pub fn set_behaviour(&self, b: HubBehaviour) {
        self.inner.state().behaviour = b;
    }

    pub fn behaviour(&self) -> HubBehaviour {
        self.inner.state().behaviour.clone()
    }

    /// Changes part of the behaviour.
    pub fn update_behaviour(&self, f: impl FnOnce(&mut HubBehaviour)) {
        f(&mut self.inner.state().behaviour);
    }

    /// A portal agent acts on the case now (§10.18); `Err` says why the portal would not.
    pub fn agent_act(&self, case_id: &str, action: AgentAction) -> Result<(), String> {
        self.inner.state().agent_act(case_id, action)
    }

    /// A portal agent acts on the case when the next request of `route` on that case (any
    /// case when `None`) arrives, before it is handled: someone else's write between a
    /// client's read and its write.
    pub fn agent_before(&self, route: Route, case_id: Option<&str>, action: AgentAction) {
        self.inner
            .state()
            .agent_before(route, case_id.map(str::to_string), action);
    }

    /// Starts a portal agent that acts on a random open case every `every` (seeded): moves it
    /// forward, posts a message, or records a download. Stops when the handle is dropped.
    pub fn start_agent(&self, seed: u64, every: std::time::Duration) -> AgentHandle {
        let inner = Arc::clone(&self.inner);
        inner.state().reseed_agent(seed);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(1)));
            tick.tick().await;
            loop {
                tick.tick().await;
                inner.state().agent_random_step();
            }
        });
        AgentHandle { task }
    }

    /// What the portal agent did: `{caseId, action, statusAfter, ok, error}` each.
    pub fn agent_log(&self) -> Vec<Value> {
        self.inner.state().agent_log()
    }

    /// Every status change of the case: `{from, to, by}`, `by` = `patch`, `event:{id}`,
    /// `agent` or `osl`.
    pub fn status_history(&self, case_id: &str) -> Vec<Value> {
        self.inner.state().status_history(case_id)
    }

    /// The SI's own events on the case, each with the case's real status when it was posted.
    pub fn si_event_audit(&self, case_id: &str) -> Vec<(Value, String)> {
        self.inner.state().si_event_audit(case_id)
    }

    /// Changes the status of a case attachment (or, failing that, of an event attachment of
    /// that case), e.g. a `PENDING` file becoming `RECEIVED` later.
    ///
    /// # Panics
    /// If the case or attachment does not exist.
    pub fn set_attachment_status(&self, case_id: &str, attachment_id: &str, status: &str) {
        self.inner
            .state()
            .set_attachment_status(case_id, attachment_id, status);
    }

    /// The OSL posts an event on the case (status `SENT`); the SI gets a notification with
    /// `eventId`. Returns the event id.
    ///
    /// # Panics
    /// If the case does not exist.
    pub fn osl_post_event(&self, case_id: &str, ev: OslEvent) -> String {
        self.inner.state().osl_post_event(case_id, ev)
    }

    /// The OSL reopens the case: back to `HUBEE_NOTIFIED`, with a `STATUS_UPDATE` event and an
    /// SI notification (§9 "Reopening").
    ///
    /// # Panics
    /// If the case does not exist.
    pub fn osl_reopen(&self, case_id: &str) {
        let ev = OslEvent {
            action_type: "STATUS_UPDATE".to_string(),
            message: Some("Réouverture du télédossier".to_string()),
            case_new_status: Some("HUBEE_NOTIFIED".to_string()),
            attachments: Vec::new(),
        };
        self.inner.state().osl_post_event(case_id, ev);
    }

    /// The OSL acknowledges an SI event (PATCH to `RECEIVED`); if the event asked for a
    /// notification, the SI gets one with `eventStatus: RECEIVED` (§7.3).
    ///
    /// # Panics
    /// If the case or event does not exist, or the event is not `SENT`/`RECEIVED`.
    pub fn osl_ack_event(&self, case_id: &str, event_id: &str) {
        self.inner.state().osl_ack_event(case_id, event_id);
    }

    /// The bytes and SHA-256 (hex) of a file the SI uploaded to one of its events. The bytes
    /// are kept only for files under 1 MiB.
    pub fn uploaded(
        &self,
        case_id: &str,
        event_id: &str,
        attachment_id: &str,
    ) -> Option<(Option<Vec<u8>>, String)> {
        self.inner
            .state()
            .uploaded(case_id, event_id, attachment_id)
    }

    /// SHA-256 (hex) of the bytes served for an attachment of a case or of one of its events.
    pub fn attachment_sha256(&self, case_id: &str, attachment_id: &str) -> Option<String> {
        let content = self
            .inner
            .state()
            .attachment_content(case_id, attachment_id)?;
        Some(content.sha256_hex())
    }

    /// Computes the digest of every generated file now rather than on its first download
    /// (so a benchmark does not time the fake's hashing).
    pub async fn precompute_digests(&self) {
        let cells = self.inner.state().digest_jobs();
        for (content, cell) in cells {
            server::digest_of(&content, &cell).await;
        }
    }

    /// Adds `count` cases to `client_id`, each with `files` generated attachments of
    /// `file_size` bytes (types and MIME types of the Valise test data for CERTDC and
    /// EtatCivil, §9), contents derived from `seed`. Returns the case ids. Used by the binary
    /// and by `POST /_fake/cases`.
    ///
    /// # Panics
    /// If `client_id` was not added.
    pub fn add_generated_cases(
        &self,
        client_id: &str,
        count: u64,
        files: u64,
        file_size: u64,
        seed: u64,
    ) -> Vec<String> {
        let Some(process_code) = self.inner.state().process_code_of(client_id) else {
            panic!("fake-hubee: add_generated_cases for unknown client {client_id:?}");
        };
        let mut ids = Vec::new();
        for i in 0..count {
            let mut spec = CaseSpec::new(&process_code);
            for j in 0..files {
                let xml = j.is_multiple_of(2);
                let (ext, mime) = if xml {
                    ("xml", "application/xml")
                } else {
                    ("pdf", "application/pdf")
                };
                let ty = match (process_code.as_str(), xml) {
                    ("CERTDC", true) => "DD_Certificatdedeces",
                    ("CERTDC", false) => "VA_CertificatdeDeces",
                    ("EtatCivil", true) => "ActeEtatCivil-XML",
                    ("EtatCivil", false) => "ActeEtatCivil-PDF",
                    (_, true) => "document-xml",
                    (_, false) => "document-pdf",
                };
                let content = Content::Generated {
                    size: file_size,
                    seed: seed
                        .wrapping_mul(1_000_003)
                        .wrapping_add(i.wrapping_mul(1000))
                        .wrapping_add(j),
                };
                spec.attachments.push(AttachmentSpec::new(
                    &format!("piece-{j}.{ext}"),
                    ty,
                    mime,
                    content,
                ));
            }
            ids.push(self.add_case(client_id, spec));
        }
        ids
    }

    // ------------------------------------------------------------ hostile-hub test hooks

    /// `add_case` with a chosen case id, which may be anything (`../x`, control characters,
    /// 300 bytes…). Requests can reach such a case only with [`FakeHub::set_lenient_ids`].
    ///
    /// # Panics
    /// If `client_id` was not added.
    pub fn add_case_with_id(&self, client_id: &str, case_id: &str, spec: CaseSpec) -> String {
        self.inner
            .state()
            .add_case_with_id(client_id, Some(case_id.to_string()), spec)
    }

    /// `true`: ids in request paths are percent-decoded and not validated as UUIDs (the real
    /// hub validates them, §3, but its answers' ids are opaque strings). Default `false`.
    pub fn set_lenient_ids(&self, lenient: bool) {
        self.inner.state().lenient_ids = lenient;
    }

    /// Every `GET /cases/{case_id}` answer is passed through `f` before it is sent (unknown
    /// fields, nulls, numbers as strings…). The hub's own state is unchanged.
    pub fn rewrite_case_json(&self, case_id: &str, f: impl Fn(&mut Value) + Send + Sync + 'static) {
        self.inner
            .state()
            .case_rewrites
            .insert(case_id.to_string(), Arc::new(f));
    }

    /// A notification served verbatim to `client_id` (after the real ones, within the batch
    /// size) until a DELETE names its `id`; a DELETE of an id shared with a real notification
    /// removes both. Also listed by [`FakeHub::notifications`].
    pub fn push_raw_notification(&self, client_id: &str, notification: Value) {
        self.inner
            .state()
            .push_raw_notification(client_id, notification);
    }

    /// Prefix of the `digest` header on downloads: `Some("sha-256=")` gives the RFC 3230
    /// style of [OAS-1.2.0] (§10.8). Default `None` (plain base64).
    pub fn set_digest_prefix(&self, prefix: Option<&str>) {
        self.inner.state().digest_prefix = prefix.map(str::to_string);
    }

    /// The admin view served at `GET /_fake/state`.
    pub fn state_json(&self) -> Value {
        self.inner.state().admin_json()
    }
}
