//! Prometheus metrics and the health endpoint (`[metrics] listen`, README "Metrics").
//!
//! A neutral room at the bottom, like `events`: the rooms that do things call one function
//! here when something worth counting happens, and this room knows nothing of them. Every
//! function is a no-op until [`configure`] is called with the subscriptions (so `once`,
//! `status` and the tests that do not listen pay nothing but one atomic load).
//!
//! - here: the registry (one per process) and the hooks that move it;
//! - [`text`]: the Prometheus text exposition (version 0.0.4), written by hand;
//! - [`process`]: CPU, memory, file descriptors and start time from `/proc/self`;
//! - [`http`]: the listener: `GET /metrics`, `GET /healthz`, nothing else.
//!
//! Labels are `subscription` and `process_code` only, plus a few closed sets (`kind`,
//! `operation`, `status_class`, `outcome`, `move`): cardinality is bounded by the config. No
//! case id, external id, person's name or secret is ever a label or a value.

pub mod http;
pub mod process;
pub mod text;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds of the cycle duration histogram, in seconds.
pub const CYCLE_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Upper bounds of the hub request latency histogram, in seconds.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why an item failed, for `hubee_sync_items_failed_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The hub: unreachable, an error status, a refusal.
    Hub,
    /// This machine: the spool, the state or business database, a stop.
    Local,
    /// What the hub sent did not verify: size, digest, a case we refuse as it is.
    Verify,
}

impl FailureKind {
    const ALL: [FailureKind; 3] = [FailureKind::Hub, FailureKind::Local, FailureKind::Verify];

    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Hub => "hub",
            FailureKind::Local => "local",
            FailureKind::Verify => "verify",
        }
    }
}

/// How a lease moved, for `hubee_sync_lease_moves_total{move}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseMove {
    /// This node took a free (or given back) lease.
    Taken,
    /// This node took over a lease another node let expire.
    TakenOver,
    /// Another node took this node's lease after it expired.
    Lost,
    /// This node gave the lease back.
    Released,
}

impl LeaseMove {
    const ALL: [LeaseMove; 4] = [
        LeaseMove::Taken,
        LeaseMove::TakenOver,
        LeaseMove::Lost,
        LeaseMove::Released,
    ];

    pub fn label(self) -> &'static str {
        match self {
            LeaseMove::Taken => "taken",
            LeaseMove::TakenOver => "taken_over",
            LeaseMove::Lost => "lost",
            LeaseMove::Released => "released",
        }
    }
}

/// One subscription as the registry needs it (from the validated settings).
#[derive(Debug, Clone)]
pub struct SubscriptionInfo {
    pub name: String,
    pub process_code: String,
    /// Hub requests are counted by credential pair: the client room knows no subscription.
    pub client_id: String,
    /// The longest gap between two cycles the schedule allows (the interval of `every`, the
    /// largest gap between the next fire times of a cron).
    pub period: Duration,
}

/// A histogram with fixed buckets: counts per bucket (not cumulative), sum, count.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// The hub's answer to one request, for `hubee_sync_hub_requests_total{status_class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusClass {
    Success,
    ClientError,
    ServerError,
    /// No answer: connection refused, reset, timed out.
    Network,
    /// Any other status (1xx, 3xx).
    Other,
}

impl StatusClass {
    pub fn of(status: u16) -> StatusClass {
        match status {
            200..=299 => StatusClass::Success,
            400..=499 => StatusClass::ClientError,
            500..=599 => StatusClass::ServerError,
            _ => StatusClass::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
            StatusClass::Network => "network",
            StatusClass::Other => "other",
        }
    }
}

/// What the registry holds for one subscription.
#[derive(Debug, Clone)]
pub struct SubMetrics {
    pub process_code: String,
    pub period: Duration,
    pub delivered_cases: u64,
    pub delivered_events: u64,
    pub received_bytes: u64,
    pub failed: [u64; 3],
    pub parked_total: u64,
    pub quarantined_total: u64,
    pub receipt_events_refused: u64,
    pub credentials_refused: u64,
    /// Gauges read from the state database after each cycle (`None`: not read yet).
    pub parked: Option<i64>,
    pub quarantined: Option<i64>,
    pub outbox_sent: u64,
    pub outbox_failed: u64,
    pub outbox_pending: Option<i64>,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub cycle_duration: Histogram,
    pub consecutive_failures: u64,
    /// Unix seconds.
    pub last_cycle_at: Option<f64>,
    pub last_success_at: Option<f64>,
    /// (operation, status class) → requests.
    pub requests: BTreeMap<(&'static str, StatusClass), u64>,
    pub request_duration: BTreeMap<&'static str, Histogram>,
    pub token_renewals: u64,
    pub retries: u64,
    pub lease_held: bool,
    pub lease_moves: [u64; 4],
}

impl SubMetrics {
    fn new(info: &SubscriptionInfo) -> SubMetrics {
        SubMetrics {
            process_code: info.process_code.clone(),
            period: info.period,
            delivered_cases: 0,
            delivered_events: 0,
            received_bytes: 0,
            failed: [0; 3],
            parked_total: 0,
            quarantined_total: 0,
            receipt_events_refused: 0,
            credentials_refused: 0,
            parked: None,
            quarantined: None,
            outbox_sent: 0,
            outbox_failed: 0,
            outbox_pending: None,
            cycles_ok: 0,
            cycles_failed: 0,
            cycle_duration: Histogram::new(CYCLE_BUCKETS),
            consecutive_failures: 0,
            last_cycle_at: None,
            last_success_at: None,
            requests: BTreeMap::new(),
            request_duration: BTreeMap::new(),
            token_renewals: 0,
            retries: 0,
            lease_held: false,
            lease_moves: [0; 4],
        }
    }
}

/// Everything counted, behind one lock (a few thousand updates per cycle: no contention
/// worth a finer design).
#[derive(Debug, Default)]
pub struct Inner {
    pub subs: BTreeMap<String, SubMetrics>,
    /// client_id → subscription name (the first configured, if two share one).
    clients: HashMap<String, String>,
    /// Several nodes: only the subscriptions this node holds are judged by `/healthz`.
    pub cluster: bool,
    /// When [`configure`] was first called (Unix seconds): the reference for "overdue"
    /// before a subscription's first cycle.
    pub started_at: f64,
}

struct Registry {
    enabled: AtomicBool,
    inner: Mutex<Inner>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    enabled: AtomicBool::new(false),
    inner: Mutex::new(Inner::default()),
});

pub fn enabled() -> bool {
    REGISTRY.enabled.load(Ordering::Relaxed)
}

/// The registry, locked (a panic while it was held leaves counters that are still usable).
pub fn lock() -> MutexGuard<'static, Inner> {
    REGISTRY.inner.lock().unwrap_or_else(|p| p.into_inner())
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Turns counting on, with these subscriptions (start, and each reload: a subscription kept
/// keeps its counts, a removed one disappears, an added one starts at zero).
pub fn configure(subs: &[SubscriptionInfo], cluster: bool) {
    let mut r = lock();
    if r.started_at == 0.0 {
        r.started_at = unix_now();
    }
    r.cluster = cluster;
    let mut kept = BTreeMap::new();
    for info in subs {
        let mut m = r
            .subs
            .remove(&info.name)
            .unwrap_or_else(|| SubMetrics::new(info));
        m.process_code = info.process_code.clone();
        m.period = info.period;
        kept.insert(info.name.clone(), m);
    }
    r.subs = kept;
    r.clients.clear();
    for info in subs {
        r.clients
            .entry(info.client_id.clone())
            .or_insert_with(|| info.name.clone());
    }
    drop(r);
    REGISTRY.enabled.store(true, Ordering::Relaxed);
}

/// Runs `f` on a subscription's metrics, if counting is on and the subscription configured.
fn with_sub(sub: &str, f: impl FnOnce(&mut SubMetrics)) {
    if !enabled() {
        return;
    }
    if let Some(m) = lock().subs.get_mut(sub) {
        f(m);
    }
}

/// Same, by the client_id of the subscription's credentials.
fn with_client(client_id: &str, f: impl FnOnce(&mut SubMetrics)) {
    if !enabled() {
        return;
    }
    let mut r = lock();
    let Some(name) = r.clients.get(client_id).cloned() else {
        return;
    };
    if let Some(m) = r.subs.get_mut(&name) {
        f(m);
    }
}

// ---- Hooks: one call from where the thing happens. ----

/// An entry (a case, a reopened round, or an event that carries something) was delivered.
pub fn delivered(sub: &str, is_event: bool) {
    with_sub(sub, |m| {
        if is_event {
            m.delivered_events += 1
        } else {
            m.delivered_cases += 1
        }
    });
}

/// A file's body was received from the hub (`bytes`, whether it then verified or not).
pub fn received_bytes(client_id: &str, bytes: u64) {
    with_client(client_id, |m| m.received_bytes += bytes);
}

pub fn item_failed(sub: &str, kind: FailureKind) {
    with_sub(sub, |m| m.failed[kind as usize] += 1);
}

pub fn parked(sub: &str) {
    with_sub(sub, |m| m.parked_total += 1);
}

pub fn quarantined(sub: &str) {
    with_sub(sub, |m| m.quarantined_total += 1);
}

pub fn receipt_event_refused(sub: &str) {
    with_sub(sub, |m| m.receipt_events_refused += 1);
}

pub fn credentials_refused(sub: &str) {
    with_sub(sub, |m| m.credentials_refused += 1);
}

/// A cycle ended (`ok`: nothing failed), after `took`.
pub fn cycle_done(sub: &str, ok: bool, took: Duration) {
    with_sub(sub, |m| {
        let now = unix_now();
        m.cycle_duration.observe(took.as_secs_f64());
        m.last_cycle_at = Some(now);
        if ok {
            m.cycles_ok += 1;
            m.consecutive_failures = 0;
            m.last_success_at = Some(now);
        } else {
            m.cycles_failed += 1;
            m.consecutive_failures += 1;
        }
    });
}

/// What the state database says after a cycle (and at start).
#[derive(Debug, Clone, Copy, Default)]
pub struct Backlog {
    pub parked: i64,
    pub quarantined: i64,
    pub outbox_pending: i64,
    /// The last successful cycle (Unix seconds), across restarts.
    pub last_success_at: Option<f64>,
    /// Failed cycles in a row, across restarts.
    pub consecutive_failures: i64,
}

pub fn backlog(sub: &str, b: Backlog, at_start: bool) {
    with_sub(sub, |m| {
        m.parked = Some(b.parked);
        m.quarantined = Some(b.quarantined);
        m.outbox_pending = Some(b.outbox_pending);
        if at_start || m.last_success_at.is_none() {
            if m.last_success_at.is_none() {
                m.last_success_at = b.last_success_at;
            }
            if at_start && m.last_cycle_at.is_none() {
                m.consecutive_failures = u64::try_from(b.consecutive_failures).unwrap_or(0);
            }
        }
    });
}

/// An outbox pass ended: replies sent, failed (moved to `failed/`), still pending.
pub fn outbox_pass(sub: &str, sent: usize, failed: usize, pending: Option<usize>) {
    with_sub(sub, |m| {
        m.outbox_sent += sent as u64;
        m.outbox_failed += failed as u64;
        if let Some(p) = pending {
            m.outbox_pending = Some(i64::try_from(p).unwrap_or(i64::MAX));
        }
    });
}

/// One request to the hub: its method and path (ids are folded into `{id}`), the answer's
/// status (`None`: no answer), and how long it took to the answer's headers.
pub fn hub_request(client_id: &str, method: &str, path: &str, status: Option<u16>, took: Duration) {
    if !enabled() {
        return;
    }
    let op = operation(method, path);
    let class = status.map_or(StatusClass::Network, StatusClass::of);
    with_client(client_id, |m| {
        *m.requests.entry((op, class)).or_insert(0) += 1;
        m.request_duration
            .entry(op)
            .or_insert_with(|| Histogram::new(REQUEST_BUCKETS))
            .observe(took.as_secs_f64());
    });
}

/// A token was obtained from the hub (the first one and each renewal).
pub fn token_renewed(client_id: &str) {
    with_client(client_id, |m| m.token_renewals += 1);
}

/// A request (or a download) is tried again after a transient failure.
pub fn hub_retry(client_id: &str) {
    with_client(client_id, |m| m.retries += 1);
}

pub fn lease_moved(sub: &str, how: LeaseMove) {
    with_sub(sub, |m| {
        m.lease_moves[how as usize] += 1;
        m.lease_held = matches!(how, LeaseMove::Taken | LeaseMove::TakenOver);
    });
}

/// The closed set of operations: every path segment that is not one of the API's words is
/// an id and becomes `{id}`, so no id ever reaches a label.
pub fn operation(method: &str, path: &str) -> &'static str {
    const WORDS: &[&str] = &["notifications", "cases", "events", "attachments"];
    let mut shape: Vec<&str> = Vec::new();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if seg == "teledossiers" || seg == "v1" {
            continue;
        }
        if seg == "token" || seg.ends_with("token") {
            shape.clear();
            shape.push("token");
            break;
        }
        shape.push(if WORDS.contains(&seg) { seg } else { "{id}" });
    }
    let shape = shape.join("/");
    OPERATIONS
        .iter()
        .find(|(m, s, _)| m.eq_ignore_ascii_case(method) && *s == shape)
        .map_or("other", |(_, _, name)| name)
}

/// (method, path shape, label).
const OPERATIONS: &[(&str, &str, &str)] = &[
    ("POST", "token", "token"),
    ("GET", "notifications", "list_notifications"),
    ("DELETE", "notifications/{id}", "delete_notification"),
    ("GET", "cases/{id}", "get_case"),
    ("PATCH", "cases/{id}", "patch_case"),
    ("GET", "cases/{id}/attachments/{id}", "download_attachment"),
    ("GET", "cases/{id}/events", "list_events"),
    ("POST", "cases/{id}/events", "post_event"),
    ("GET", "cases/{id}/events/{id}", "get_event"),
    ("PATCH", "cases/{id}/events/{id}", "patch_event"),
    ("DELETE", "cases/{id}/events/{id}", "delete_event"),
    (
        "GET",
        "cases/{id}/events/{id}/attachments/{id}",
        "download_event_attachment",
    ),
    (
        "PUT",
        "cases/{id}/events/{id}/attachments/{id}",
        "upload_attachment",
    ),
];

/// Every operation label, for the dashboard and the tests.
pub fn operation_labels() -> impl Iterator<Item = &'static str> {
    OPERATIONS
        .iter()
        .map(|(_, _, l)| *l)
        .chain(std::iter::once("other"))
}

/// What `/healthz` says: `None` when healthy, else the subscriptions failing and overdue.
pub fn health() -> Option<(Vec<String>, Vec<String>)> {
    let r = lock();
    let now = unix_now();
    let (mut failing, mut overdue) = (Vec::new(), Vec::new());
    for (name, m) in &r.subs {
        if r.cluster && !m.lease_held {
            continue; // another node's to run
        }
        if m.consecutive_failures > 0 {
            failing.push(name.clone());
        }
        // As `status` judges it: three periods and a minute without a cycle.
        let late = (m.period * 3 + Duration::from_secs(60)).as_secs_f64();
        if now - m.last_cycle_at.unwrap_or(r.started_at) > late {
            overdue.push(name.clone());
        }
    }
    (!failing.is_empty() || !overdue.is_empty()).then_some((failing, overdue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_reach_the_operation_label() {
        let cases = [
            (
                "GET",
                "/teledossiers/v1/notifications",
                "list_notifications",
            ),
            (
                "DELETE",
                "/teledossiers/v1/notifications/3f1e-aa",
                "delete_notification",
            ),
            (
                "GET",
                "/teledossiers/v1/cases/6b53fd54-c342/attachments/cc0f",
                "download_attachment",
            ),
            (
                "PUT",
                "/teledossiers/v1/cases/x/events/y/attachments/z",
                "upload_attachment",
            ),
            ("POST", "/oauth2/token", "token"),
            ("GET", "/teledossiers/v1/cases/x/secret-thing/y", "other"),
        ];
        for (m, p, want) in cases {
            assert_eq!(operation(m, p), want, "{m} {p}");
        }
    }

    #[test]
    fn histogram_buckets_hold_what_is_at_or_below_their_bound() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, vec![2, 1]);
        assert_eq!(h.count, 4);
        assert!((h.sum - 6.0).abs() < 1e-9);
    }
}
