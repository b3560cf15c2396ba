//! Case statuses and the receipt walk: pure decisions, no I/O.
//!
//! PROTOCOL §6 and §10.3: the hub's transition table is ambiguous, so we walk a chain that is
//! valid under both the strict and the permissive reading: `HUBEE_NOTIFIED → SENT →
//! SI_RECEIVED → IN_PROGRESS`, one step at a time, skipping steps already reached.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

/// A case status as the hub spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaseStatus {
    HubeeReceived,
    HubeeCompleted,
    HubeeNotified,
    Sent,
    SiReceived,
    InProgress,
    AddAwaiting,
    Refused,
    Done,
    SiIntgError,
    Closed,
    Archived,
}

impl CaseStatus {
    pub const ALL: [CaseStatus; 12] = [
        CaseStatus::HubeeReceived,
        CaseStatus::HubeeCompleted,
        CaseStatus::HubeeNotified,
        CaseStatus::Sent,
        CaseStatus::SiReceived,
        CaseStatus::InProgress,
        CaseStatus::AddAwaiting,
        CaseStatus::Refused,
        CaseStatus::Done,
        CaseStatus::SiIntgError,
        CaseStatus::Closed,
        CaseStatus::Archived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::HubeeReceived => "HUBEE_RECEIVED",
            CaseStatus::HubeeCompleted => "HUBEE_COMPLETED",
            CaseStatus::HubeeNotified => "HUBEE_NOTIFIED",
            CaseStatus::Sent => "SENT",
            CaseStatus::SiReceived => "SI_RECEIVED",
            CaseStatus::InProgress => "IN_PROGRESS",
            CaseStatus::AddAwaiting => "ADD_AWAITING",
            CaseStatus::Refused => "REFUSED",
            CaseStatus::Done => "DONE",
            CaseStatus::SiIntgError => "SI_INTG_ERROR",
            CaseStatus::Closed => "CLOSED",
            CaseStatus::Archived => "ARCHIVED",
        }
    }

    /// Position on the receipt chain. Statuses after `IN_PROGRESS` (business decisions,
    /// closing, errors) all rank past every receipt status: we never move a case back.
    fn receipt_rank(self) -> u8 {
        match self {
            CaseStatus::HubeeReceived | CaseStatus::HubeeCompleted => 0,
            CaseStatus::HubeeNotified => 1,
            CaseStatus::Sent => 2,
            CaseStatus::SiReceived => 3,
            CaseStatus::InProgress => 4,
            _ => 5,
        }
    }

    /// Statuses an SI may set with `PATCH /cases/{id}` (PROTOCOL §4 C2).
    pub fn settable_by_si(self) -> bool {
        matches!(
            self,
            CaseStatus::Sent
                | CaseStatus::SiReceived
                | CaseStatus::InProgress
                | CaseStatus::AddAwaiting
                | CaseStatus::Refused
                | CaseStatus::Done
                | CaseStatus::SiIntgError
        )
    }

    /// Statuses allowed as a subscription's `receipt_status`.
    pub fn is_receipt_status(self) -> bool {
        matches!(
            self,
            CaseStatus::Sent | CaseStatus::SiReceived | CaseStatus::InProgress
        )
    }

    /// The default receipt status for a démarche (CONTRACT, `receipt_status`).
    pub fn default_receipt_for(process_code: &str) -> CaseStatus {
        const IN_PROGRESS_CODES: &[&str] = &[
            "CERTDC",
            "SNATED",
            "RSABEI-RSABAI",
            "RSABEX-RSABAX",
            "RSABEM-RSABAM",
            "RSAFIM",
            "RSAFIX",
            "RSACTM",
            "IRSACG-IRSDCG",
            "MSABEI",
            "MSABEM",
            "MSABEX",
            "MSAFIM",
            "GRO",
            "SGR",
            "DSG",
            "ContactsAllocataires-BRSA",
        ];
        if IN_PROGRESS_CODES.contains(&process_code) {
            CaseStatus::InProgress
        } else {
            CaseStatus::SiReceived
        }
    }
}

impl fmt::Display for CaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string the hub sent that we do not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownStatus(pub String);

impl fmt::Display for UnknownStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown case status {:?}", self.0)
    }
}

impl std::error::Error for UnknownStatus {}

impl FromStr for CaseStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CaseStatus::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s.trim())
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// Is a case at `current` at or past `target`, so that moving it there would be moving it
/// back or doing again what someone did (PROTOCOL §10.18: never move a case backwards)?
///
/// The order is the portal's (§10.19): received → `SENT` → `SI_RECEIVED` → `IN_PROGRESS` →
/// `ADD_AWAITING` → `REFUSED` → `DONE` → `CLOSED` → `ARCHIVED` (so `REFUSED → DONE` still
/// goes forward). `SI_INTG_ERROR` stands aside: past the receipt statuses, reached for a
/// target of `SI_INTG_ERROR` by any final decision (never undone by an integration error).
pub fn at_or_past(current: CaseStatus, target: CaseStatus) -> bool {
    use CaseStatus::*;
    fn rank(s: CaseStatus) -> u8 {
        match s {
            HubeeReceived | HubeeCompleted => 0,
            HubeeNotified => 1,
            Sent => 2,
            SiReceived => 3,
            InProgress => 4,
            AddAwaiting => 5,
            Refused => 6,
            Done => 7,
            Closed => 8,
            Archived => 9,
            // Handled below.
            SiIntgError => 0,
        }
    }
    if current == target {
        return true;
    }
    match (current, target) {
        (_, SiIntgError) => matches!(current, Refused | Done | Closed | Archived),
        (SiIntgError, t) => matches!(
            t,
            HubeeReceived | HubeeCompleted | HubeeNotified | Sent | SiReceived | InProgress
        ),
        (c, t) => rank(c) >= rank(t),
    }
}

/// Predecessors of a status an SI sets, in the strict reading (PROTOCOL §6, [CI] column),
/// plus the portal's `REFUSED → DONE`.
pub fn strict_predecessors(to: CaseStatus) -> &'static [CaseStatus] {
    use CaseStatus::*;
    match to {
        Sent => &[HubeeNotified],
        SiReceived => &[Sent],
        InProgress => &[SiReceived],
        AddAwaiting => &[InProgress],
        Refused => &[SiReceived, InProgress, AddAwaiting],
        // [PV2]: the portal offers REFUSED → DONE (PROTOCOL §10.19).
        Done => &[SiReceived, InProgress, AddAwaiting, Refused],
        SiIntgError => &[SiReceived, InProgress, AddAwaiting, Done],
        _ => &[],
    }
}

/// The shortest chain of strictly allowed PATCHes from `from` to `to` (empty when equal).
pub fn strict_path(from: CaseStatus, to: CaseStatus) -> Option<Vec<CaseStatus>> {
    if from == to {
        return Some(Vec::new());
    }
    let mut queue = VecDeque::from([vec![from]]);
    let mut seen = vec![from];
    while let Some(path) = queue.pop_front() {
        let last = *path.last()?;
        for next in CaseStatus::ALL {
            if seen.contains(&next) || !strict_predecessors(next).contains(&last) {
                continue;
            }
            let mut p = path.clone();
            p.push(next);
            if next == to {
                return Some(p.into_iter().skip(1).collect());
            }
            seen.push(next);
            queue.push_back(p);
        }
    }
    None
}

/// What the receipt of a delivered case asks of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptPlan {
    /// The case is at or past the receipt status: leave it as it is, post no event.
    LeaveAsIs,
    /// PATCH the case through these statuses, in order (possibly none when a previous run
    /// already walked it), then post one STATUS_UPDATE event `from → target`.
    Walk { steps: Vec<CaseStatus> },
}

/// The steps from `current` to `target` along the receipt chain.
pub fn receipt_plan(current: CaseStatus, target: CaseStatus) -> ReceiptPlan {
    const CHAIN: [CaseStatus; 3] = [
        CaseStatus::Sent,
        CaseStatus::SiReceived,
        CaseStatus::InProgress,
    ];
    if current.receipt_rank() >= target.receipt_rank() {
        return ReceiptPlan::LeaveAsIs;
    }
    let steps = CHAIN
        .iter()
        .copied()
        .filter(|s| {
            s.receipt_rank() > current.receipt_rank() && s.receipt_rank() <= target.receipt_rank()
        })
        .collect();
    ReceiptPlan::Walk { steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_from_notified_to_in_progress_passes_every_step() {
        assert_eq!(
            receipt_plan(CaseStatus::HubeeNotified, CaseStatus::InProgress),
            ReceiptPlan::Walk {
                steps: vec![
                    CaseStatus::Sent,
                    CaseStatus::SiReceived,
                    CaseStatus::InProgress
                ]
            }
        );
    }

    #[test]
    fn walk_skips_steps_already_reached() {
        assert_eq!(
            receipt_plan(CaseStatus::Sent, CaseStatus::SiReceived),
            ReceiptPlan::Walk {
                steps: vec![CaseStatus::SiReceived]
            }
        );
    }

    #[test]
    fn case_past_receipt_status_is_not_moved_back() {
        for past in [
            CaseStatus::Done,
            CaseStatus::AddAwaiting,
            CaseStatus::Closed,
            CaseStatus::Refused,
        ] {
            assert_eq!(
                receipt_plan(past, CaseStatus::InProgress),
                ReceiptPlan::LeaveAsIs
            );
        }
        assert_eq!(
            receipt_plan(CaseStatus::InProgress, CaseStatus::SiReceived),
            ReceiptPlan::LeaveAsIs
        );
    }

    #[test]
    fn a_case_is_never_moved_back_and_refused_can_still_become_done() {
        use CaseStatus::*;
        assert!(at_or_past(Done, Refused));
        assert!(!at_or_past(Refused, Done));
        assert!(at_or_past(Done, InProgress));
        assert!(at_or_past(AddAwaiting, InProgress));
        assert!(!at_or_past(HubeeNotified, Sent));
        assert!(at_or_past(Closed, Done));
        // An integration error never undoes a decision, and stands past the receipt.
        assert!(at_or_past(Done, SiIntgError));
        assert!(!at_or_past(InProgress, SiIntgError));
        assert!(at_or_past(SiIntgError, InProgress));
        assert!(!at_or_past(SiIntgError, Done));
        for s in CaseStatus::ALL {
            assert!(at_or_past(s, s));
        }
    }

    #[test]
    fn default_receipt_status_follows_the_contract() {
        assert_eq!(
            CaseStatus::default_receipt_for("CERTDC"),
            CaseStatus::InProgress
        );
        assert_eq!(
            CaseStatus::default_receipt_for("SNATED"),
            CaseStatus::InProgress
        );
        assert_eq!(
            CaseStatus::default_receipt_for("EtatCivil"),
            CaseStatus::SiReceived
        );
        assert_eq!(
            CaseStatus::default_receipt_for("Unknown"),
            CaseStatus::SiReceived
        );
    }

    #[test]
    fn status_parses_its_own_spelling_only() {
        assert_eq!(
            "SI_RECEIVED".parse::<CaseStatus>(),
            Ok(CaseStatus::SiReceived)
        );
        assert!("SENDED".parse::<CaseStatus>().is_err());
    }
}
