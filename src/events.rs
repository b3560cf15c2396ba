//! Typed log events (vector's `internal_events` habit): each notable thing that happens is
//! logged in exactly one place, with its structured fields and a stable `MESSAGE_ID`, so
//! that `journalctl MESSAGE_ID=…` finds every occurrence. Field names become journal fields:
//! SUBSCRIPTION, CASE_ID, EXTERNAL_ID, NOTIFICATION_ID, EVENT_ID, ATTACHMENT_ID.

/// Stable identifiers of each kind of event (128-bit, as journald wants them).
pub mod id {
    /// A télédossier (or an event, or a reopened round) was published in the spool.
    pub const PUBLISHED: &str = "ae312785c5c84cf7847bc3e825b62a19";
    /// A notification was deleted on the hub after its work was durably done.
    pub const ACKNOWLEDGED: &str = "5fa4ee0bfd414fe885bf56a408223cdb";
    /// An OSL event (message, status change, deposit) was delivered and acknowledged.
    pub const EVENT_RECEIVED: &str = "6ce3e1b949a84011bef51fe7b696adf8";
    /// An item failed this cycle and will be retried.
    pub const ITEM_FAILED: &str = "9e041376b1ab49efb2c2b639093e8bdb";
    /// An item was parked: owed in the state database, its notification deleted.
    pub const PARKED: &str = "288bbb34b6ff4658a68dc353eac28841";
    /// An item was quarantined: a person must look at it.
    pub const QUARANTINED: &str = "025460f694604647af7f154283717a4f";
    /// The hub refused a subscription's credentials.
    pub const AUTH_FAILED: &str = "6d40f8a9b83342238c5b556b8e6fee72";
    /// A whole cycle failed (hub unreachable, spool or state database unusable).
    pub const CYCLE_FAILED: &str = "34dc9522fb814e3cac86670a402d1311";
    /// A case was reopened by the OSL and is delivered again as a new round.
    pub const REOPENED: &str = "43c17cf18a9d4791ae60ac8da0df150a";
    /// The hub refused one of our status events for good (cap on events, a démarche rule).
    pub const EVENT_REFUSED: &str = "0b6f3c1e9a2d4e57b8c41f2a7d9e6053";
    /// A case waits for an attachment still PENDING on the hub.
    pub const WAITING: &str = "fe6c8edc0c9a4c40883f32d73180d1cb";
    /// A parked item was finally delivered.
    pub const UNPARKED: &str = "16c57a9ad1114e2d95800a80f981d4b2";
    /// A cycle ended (counts).
    pub const CYCLE_DONE: &str = "dd54c50d635f4aa7acb0dded189c24e6";
    /// This node took a subscription's lease (several nodes on one PostgreSQL).
    pub const LEASE_TAKEN: &str = "0b7d1f0c7e2a4a4f9d1f3c55a8e2b611";
    /// This node lost a subscription's lease (taken over by another node after it expired).
    pub const LEASE_LOST: &str = "8f1e6c4a2d9b47e3a5c0b7d2e9f4a312";
    /// This node gave a lease back (fair share, or a clean stop).
    pub const LEASE_RELEASED: &str = "c3a9e5d1b7f24c68a0e4d2b6f8a1c935";
}

/// `waited_ms`: how long the lease had been expired when it was taken over (`None`: it
/// was free or given back).
pub fn lease_taken(sub: &str, node: &str, epoch: i64, from: Option<&str>, waited_ms: Option<i64>) {
    crate::metrics::lease_moved(
        sub,
        if from.is_some() {
            crate::metrics::LeaseMove::TakenOver
        } else {
            crate::metrics::LeaseMove::Taken
        },
    );
    match (from, waited_ms) {
        (Some(from), Some(waited)) => tracing::warn!(
            message_id = %id::LEASE_TAKEN,
            subscription = %sub,
            node = %node,
            epoch,
            previous_node = %from,
            expired_for_ms = waited,
            "this node took over the subscription: the previous holder's lease had expired"
        ),
        _ => tracing::info!(
            message_id = %id::LEASE_TAKEN,
            subscription = %sub,
            node = %node,
            epoch,
            "this node now holds the subscription"
        ),
    }
}

pub fn lease_lost(sub: &str, node: &str, epoch: i64, why: &str) {
    crate::metrics::lease_moved(sub, crate::metrics::LeaseMove::Lost);
    tracing::warn!(
        message_id = %id::LEASE_LOST,
        subscription = %sub,
        node = %node,
        epoch,
        why = %why,
        "this node lost the subscription's lease: it changes nothing more on the hub for it"
    );
}

pub fn lease_released(sub: &str, node: &str, epoch: i64) {
    crate::metrics::lease_moved(sub, crate::metrics::LeaseMove::Released);
    tracing::info!(
        message_id = %id::LEASE_RELEASED,
        subscription = %sub,
        node = %node,
        epoch,
        "this node gave the subscription back (another node takes it)"
    );
}

pub fn published(sub: &str, case_id: &str, external_id: &str, event_id: &str, entry: &str) {
    crate::metrics::delivered(sub, !event_id.is_empty());
    tracing::info!(
        message_id = %id::PUBLISHED,
        subscription = %sub,
        case_id = %case_id,
        external_id = %external_id,
        event_id = %event_id,
        entry = %entry,
        "télédossier published in the spool"
    );
}

pub fn acknowledged(sub: &str, case_id: &str, external_id: &str, notification_id: &str) {
    tracing::info!(
        message_id = %id::ACKNOWLEDGED,
        subscription = %sub,
        case_id = %case_id,
        external_id = %external_id,
        notification_id = %notification_id,
        "notification acknowledged (deleted) on the hub"
    );
}

pub fn event_received(
    sub: &str,
    case_id: &str,
    event_id: &str,
    action_type: &str,
    with_entry: bool,
) {
    tracing::info!(
        message_id = %id::EVENT_RECEIVED,
        subscription = %sub,
        case_id = %case_id,
        event_id = %event_id,
        action_type = %action_type,
        with_entry,
        "event from the online service acknowledged RECEIVED"
    );
}

pub fn item_failed(sub: &str, case_id: &str, event_id: &str, notification_id: &str, error: &str) {
    tracing::error!(
        message_id = %id::ITEM_FAILED,
        subscription = %sub,
        case_id = %case_id,
        event_id = %event_id,
        notification_id = %notification_id,
        error = %error,
        "télédossier not delivered this cycle; it will be retried"
    );
}

pub fn parked(sub: &str, case_id: &str, event_id: &str, attempts: i64, error: &str) {
    crate::metrics::parked(sub);
    tracing::warn!(message_id = %id::PARKED, subscription = %sub, case_id = %case_id, event_id = %event_id, attempts, error = %error,
        "télédossier parked: recorded as owed and retried every cycle; its notification is deleted so the queue behind it moves");
}

pub fn unparked(sub: &str, case_id: &str, event_id: &str, attempts: i64) {
    tracing::info!(
        message_id = %id::UNPARKED,
        subscription = %sub,
        case_id = %case_id,
        event_id = %event_id,
        attempts,
        "parked télédossier delivered"
    );
}

pub fn quarantined(
    sub: &str,
    case_id: &str,
    external_id: &str,
    event_id: &str,
    attempts: i64,
    path: &str,
    error: &str,
) {
    crate::metrics::quarantined(sub);
    tracing::error!(
        message_id = %id::QUARANTINED,
        subscription = %sub,
        case_id = %case_id,
        external_id = %external_id,
        event_id = %event_id,
        attempts,
        path = %path,
        error = %error,
        "télédossier quarantined: set to SI_INTG_ERROR on the hub; a person must look at it"
    );
}

pub fn auth_failed(sub: &str, error: &str) {
    crate::metrics::credentials_refused(sub);
    tracing::error!(
        message_id = %id::AUTH_FAILED,
        subscription = %sub,
        error = %error,
        "the hub refused this subscription's credentials"
    );
}

pub fn cycle_failed(sub: &str, error: &str) {
    tracing::error!(
        message_id = %id::CYCLE_FAILED,
        subscription = %sub,
        error = %error,
        "cycle stopped; the subscription is retried at its next cycle"
    );
}

/// The hub refused a status event of ours for good (its cap on events per case, a rule of
/// the démarche): the delivery stands, the event is not retried.
pub fn receipt_event_refused(
    sub: &str,
    case_id: &str,
    cap: bool,
    error: &dyn std::fmt::Display,
    status: &dyn std::fmt::Display,
) {
    crate::metrics::receipt_event_refused(sub);
    let what = if cap {
        "the case has reached HubEE's limit of events: the receipt event could not be posted; the télédossier is delivered and its notification deleted; tell the online service through the HubEE portal if needed"
    } else {
        "the hub refused the receipt event for good: the télédossier is delivered and its notification deleted; check the case in the HubEE portal"
    };
    tracing::warn!(
        message_id = %id::EVENT_REFUSED,
        subscription = %sub,
        case_id = %case_id,
        status = %status,
        error = %error,
        "{what}"
    );
}

pub fn reopened(sub: &str, case_id: &str, round: i64) {
    tracing::info!(
        message_id = %id::REOPENED,
        subscription = %sub,
        case_id = %case_id,
        round,
        "case reopened by the online service: delivering it again as a new round"
    );
}

pub fn waiting(sub: &str, case_id: &str, external_id: &str, attachment_id: &str) {
    tracing::info!(
        message_id = %id::WAITING,
        subscription = %sub,
        case_id = %case_id,
        external_id = %external_id,
        attachment_id = %attachment_id,
        "an attachment is still PENDING on the hub; the case waits for it"
    );
}

/// What a cycle did, for its one line (from the cycle's report).
pub struct CycleSummary<'a> {
    pub subscription: &'a str,
    pub received: usize,
    pub acknowledged: usize,
    pub failed: usize,
    pub waiting: usize,
    pub parked: usize,
    pub quarantined: usize,
    /// The failure that stopped the cycle.
    pub fatal: Option<&'a str>,
    /// The first item's failure.
    pub first_error: Option<&'a str>,
}

/// One line per cycle: counts, and what to do when it failed.
pub fn cycle_done(r: &CycleSummary<'_>, took: std::time::Duration, stopping: bool) {
    crate::metrics::cycle_done(r.subscription, r.fatal.is_none() && r.failed == 0, took);
    let took = format!("{:.1}s", took.as_secs_f64());
    let (sub, received, acknowledged, failed) =
        (r.subscription, r.received, r.acknowledged, r.failed);
    let (waiting, parked, quarantined) = (r.waiting, r.parked, r.quarantined);
    if stopping && r.fatal.is_none() {
        tracing::info!(message_id = %id::CYCLE_DONE, subscription = %sub, received, acknowledged,
            failed, took = %took,
            "cycle interrupted by the stop; what it had not acknowledged stays on the hub for the next start");
    } else if let Some(fatal) = r.fatal {
        tracing::error!(message_id = %id::CYCLE_DONE, subscription = %sub, received, acknowledged,
            failed, took = %took, error = %fatal,
            "cycle stopped early; nothing unacknowledged is lost, it is tried again at the next cycle");
    } else if let Some(first) = r.first_error {
        tracing::warn!(message_id = %id::CYCLE_DONE, subscription = %sub, received, acknowledged,
            failed, waiting, parked, quarantined, took = %took, first_error = %first,
            "cycle done with failures; failed télédossiers are tried again at the next cycle (`hubee-sync status` lists them)");
    } else {
        tracing::info!(message_id = %id::CYCLE_DONE, subscription = %sub, received, acknowledged,
            waiting, parked, quarantined, took = %took, "cycle done");
    }
}
