//! Which case statuses a reply may ask for, and the steps that take a case there: pure
//! decisions, no I/O.
//!
//! PROTOCOL §6 and §10.3: the hub's transition table has a strict reading ([CI]) and a
//! permissive one ([PM], [WF], [SFD]). Every step we take is allowed under the strict one, so
//! it is allowed under both. On the way, the case passes the subscription's receipt status
//! (the démarche's mandatory intermediate status, e.g. `IN_PROGRESS` for CERTDC) when it has
//! not reached it yet.

#[cfg(test)]
use crate::hubee::status::strict_predecessors;
use crate::hubee::status::{strict_path as shortest, CaseStatus};

/// The statuses a reply may ask for (CONTRACT "Outbox").
pub const REPLY_STATUSES: [CaseStatus; 5] = [
    CaseStatus::Done,
    CaseStatus::Refused,
    CaseStatus::InProgress,
    CaseStatus::AddAwaiting,
    CaseStatus::SiIntgError,
];

/// The reply's status cannot be reached from where the case is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impossible {
    pub from: CaseStatus,
    pub to: CaseStatus,
}

/// Position on the receipt chain, `None` off it.
fn receipt_position(s: CaseStatus) -> Option<usize> {
    [
        CaseStatus::HubeeNotified,
        CaseStatus::Sent,
        CaseStatus::SiReceived,
        CaseStatus::InProgress,
    ]
    .iter()
    .position(|c| *c == s)
}

/// The PATCHes that take a case from `current` to `target`, in order; empty when it is
/// there already. The path passes `receipt` when the case has not reached it yet.
pub fn status_walk(
    current: CaseStatus,
    target: CaseStatus,
    receipt: CaseStatus,
) -> Result<Vec<CaseStatus>, Impossible> {
    if current == target {
        return Ok(Vec::new());
    }
    let below_receipt = matches!(
        (receipt_position(current), receipt_position(receipt)),
        (Some(c), Some(r)) if c < r
    );
    if below_receipt && receipt != target {
        if let (Some(mut first), Some(rest)) =
            (shortest(current, receipt), shortest(receipt, target))
        {
            first.extend(rest);
            return Ok(first);
        }
    }
    shortest(current, target).ok_or(Impossible {
        from: current,
        to: target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaseStatus::*;

    #[test]
    fn done_from_notified_passes_the_receipt_status() {
        assert_eq!(
            status_walk(HubeeNotified, Done, InProgress),
            Ok(vec![Sent, SiReceived, InProgress, Done])
        );
        assert_eq!(
            status_walk(HubeeNotified, Done, SiReceived),
            Ok(vec![Sent, SiReceived, Done])
        );
    }

    #[test]
    fn status_already_reached_needs_no_patch() {
        assert_eq!(status_walk(Done, Done, InProgress), Ok(vec![]));
        assert_eq!(status_walk(InProgress, InProgress, InProgress), Ok(vec![]));
    }

    #[test]
    fn common_replies_take_one_step() {
        assert_eq!(status_walk(InProgress, Done, InProgress), Ok(vec![Done]));
        assert_eq!(
            status_walk(InProgress, Refused, InProgress),
            Ok(vec![Refused])
        );
        assert_eq!(
            status_walk(InProgress, AddAwaiting, InProgress),
            Ok(vec![AddAwaiting])
        );
        assert_eq!(status_walk(AddAwaiting, Done, InProgress), Ok(vec![Done]));
        assert_eq!(
            status_walk(SiReceived, AddAwaiting, SiReceived),
            Ok(vec![InProgress, AddAwaiting])
        );
    }

    #[test]
    fn impossible_transitions_are_refused_not_forced() {
        for from in [Closed, Archived, SiIntgError, HubeeCompleted] {
            assert_eq!(
                status_walk(from, Done, InProgress),
                Err(Impossible { from, to: Done })
            );
        }
        assert!(status_walk(Done, InProgress, InProgress).is_err());
        assert!(status_walk(Done, Refused, InProgress).is_err());
    }

    #[test]
    fn refused_can_still_become_done_as_the_portal_allows() {
        assert_eq!(status_walk(Refused, Done, InProgress), Ok(vec![Done]));
    }

    #[test]
    fn every_step_is_allowed_under_the_strict_reading() {
        for from in CaseStatus::ALL {
            for to in REPLY_STATUSES {
                if let Ok(steps) = status_walk(from, to, InProgress) {
                    let mut cur = from;
                    for s in steps {
                        assert!(strict_predecessors(s).contains(&cur), "{cur} → {s}");
                        cur = s;
                    }
                    assert_eq!(cur, to);
                }
            }
        }
    }
}
