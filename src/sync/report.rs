//! What a cycle did: its counts and its failures, for the journal, `status` and the digest.

use super::context::ItemError;

/// One failed item, for the report.
#[derive(Debug, Clone)]
pub struct ItemFailure {
    pub notification_id: String,
    pub case_id: Option<String>,
    pub error: String,
}

/// What a cycle did.
#[derive(Debug, Default, Clone)]
pub struct CycleReport {
    pub subscription: String,
    /// Entries published this cycle.
    pub received: usize,
    /// Notifications deleted this cycle.
    pub acknowledged: usize,
    /// Cases waiting for a PENDING file.
    pub waiting: usize,
    /// Items parked this cycle (notification deleted, work owed).
    pub parked: usize,
    /// Items quarantined this cycle.
    pub quarantined: usize,
    pub failures: Vec<ItemFailure>,
    /// A failure that stopped the whole cycle (lock, credentials, hub unreachable, spool).
    pub fatal: Option<String>,
}

impl CycleReport {
    /// What the cycle's journal line says.
    pub fn summary(&self) -> crate::events::CycleSummary<'_> {
        crate::events::CycleSummary {
            subscription: &self.subscription,
            received: self.received,
            acknowledged: self.acknowledged,
            failed: self.failures.len(),
            waiting: self.waiting,
            parked: self.parked,
            quarantined: self.quarantined,
            fatal: self.fatal.as_deref(),
            first_error: self.failures.first().map(|f| f.error.as_str()),
        }
    }

    pub fn ok(&self) -> bool {
        self.fatal.is_none() && self.failures.is_empty()
    }

    /// Adds what one part of the cycle (one case's notifications) did.
    pub(super) fn add(&mut self, part: CycleReport) {
        self.received += part.received;
        self.acknowledged += part.acknowledged;
        self.waiting += part.waiting;
        self.parked += part.parked;
        self.quarantined += part.quarantined;
        self.failures.extend(part.failures);
    }
}

/// Counts and records one failed item.
pub(super) fn fail(report: &mut CycleReport, nid: &str, case_id: Option<&str>, e: &ItemError) {
    crate::metrics::item_failed(&report.subscription, e.failure_kind());
    report.failures.push(ItemFailure {
        notification_id: nid.to_string(),
        case_id: case_id.map(str::to_string),
        error: e.to_string(),
    });
}
