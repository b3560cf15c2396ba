//! Pure decisions about a batch of notifications (PROTOCOL §8.1, §8.3, §9). No I/O here.

use crate::hubee::model::Notification;

/// What one notification asks of us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new télédossier (`eventId` null): deliver the case, then acknowledge.
    NewCase { case_id: String },
    /// The counterpart acknowledged one of our events: only delete the notification.
    DeleteOnly,
    /// An event from the OSL to fetch and deliver.
    Event { case_id: String, event_id: String },
    /// Unusable: no case id. Reported, never silently deleted.
    Invalid { reason: String },
}

/// A notification with a usable id, and what it asks.
#[derive(Debug, Clone)]
pub struct Planned {
    pub notification_id: String,
    pub notification: Notification,
    pub action: Action,
}

/// Decides the action for one notification. `None` when it has no id: it cannot even be
/// deleted, so it can only be reported.
pub fn decide(n: &Notification) -> Option<Planned> {
    // Ids are opaque (PROTOCOL §3): used exactly as sent, never trimmed; blank is absent.
    let present = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    let id = present(&n.id)?;
    let case_id = present(&n.case_id);
    let event_id = present(&n.event_id);
    let unusable = |s: &str| s.chars().all(|c| c == '.');
    let action = match (case_id.as_deref(), event_id.as_deref()) {
        (None, _) => Action::Invalid {
            reason: "the notification names no case (caseId is empty)".into(),
        },
        // `.` and `..` would be read as path segments by every URL library on the way.
        (Some(c), e) if unusable(c) || e.is_some_and(unusable) => Action::Invalid {
            reason: format!(
                "the notification names an unusable case or event id ({c:?}, {:?})",
                e.unwrap_or("")
            ),
        },
        (Some(c), None) => Action::NewCase {
            case_id: c.to_string(),
        },
        (Some(_), Some(_)) if n.event_status.as_deref() == Some("RECEIVED") => Action::DeleteOnly,
        (Some(c), Some(e)) => Action::Event {
            case_id: c.to_string(),
            event_id: e.to_string(),
        },
    };
    Some(Planned {
        notification_id: id,
        notification: n.clone(),
        action,
    })
}

/// Orders a batch: order within a batch is not guaranteed (PROTOCOL §9), so group by case
/// (cases in order of their first notification), the new-case notification first, then
/// events by `dateTime`. Duplicated notification ids are kept once.
pub fn order(batch: Vec<Planned>) -> Vec<Planned> {
    let mut seen = std::collections::HashSet::new();
    let mut batch: Vec<Planned> = batch
        .into_iter()
        .filter(|p| seen.insert(p.notification_id.clone()))
        .collect();
    let mut case_order: Vec<String> = Vec::new();
    for p in &batch {
        let c = p.notification.case_id.clone().unwrap_or_default();
        if !case_order.contains(&c) {
            case_order.push(c);
        }
    }
    batch.sort_by_key(|p| {
        let c = p.notification.case_id.clone().unwrap_or_default();
        let case_rank = case_order
            .iter()
            .position(|x| *x == c)
            .unwrap_or(usize::MAX);
        let kind_rank = match p.action {
            Action::NewCase { .. } => 0,
            _ => 1,
        };
        let when = p
            .notification
            .date_time
            .as_deref()
            .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
            .map(|d| d.timestamp_millis())
            .unwrap_or(i64::MAX);
        (case_rank, kind_rank, when)
    });
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(
        id: &str,
        case: &str,
        event: Option<&str>,
        status: Option<&str>,
        at: &str,
    ) -> Notification {
        Notification {
            id: Some(id.into()),
            process_code: Some("CERTDC".into()),
            case_id: Some(case.into()),
            event_id: event.map(Into::into),
            event_action_type: None,
            event_status: status.map(Into::into),
            date_time: Some(at.into()),
        }
    }

    #[test]
    fn new_case_comes_before_its_events_and_events_by_time() {
        let batch = [
            n("3", "A", Some("e2"), Some("SENT"), "2024-01-01T10:00:02Z"),
            n("1", "B", None, None, "2024-01-01T09:00:00Z"),
            n(
                "2",
                "A",
                Some("e1"),
                Some("SENT"),
                "2024-01-01T10:00:01+00:00",
            ),
            n("4", "A", None, None, "2024-01-01T11:00:00.5Z"),
        ];
        let planned: Vec<_> = batch.iter().filter_map(decide).collect();
        let ids: Vec<_> = order(planned)
            .into_iter()
            .map(|p| p.notification_id)
            .collect();
        assert_eq!(ids, vec!["4", "2", "3", "1"]);
    }

    #[test]
    fn acknowledgement_of_our_event_is_delete_only() {
        let p = decide(&n(
            "1",
            "A",
            Some("e"),
            Some("RECEIVED"),
            "2024-01-01T00:00:00Z",
        ))
        .unwrap();
        assert_eq!(p.action, Action::DeleteOnly);
    }

    #[test]
    fn notification_without_id_cannot_be_planned() {
        let mut x = n("1", "A", None, None, "2024-01-01T00:00:00Z");
        x.id = Some("  ".into());
        assert!(decide(&x).is_none());
    }

    #[test]
    fn notification_without_case_is_invalid_not_dropped() {
        let mut x = n("1", "A", None, None, "2024-01-01T00:00:00Z");
        x.case_id = None;
        assert!(matches!(decide(&x).unwrap().action, Action::Invalid { .. }));
    }

    #[test]
    fn duplicate_notifications_are_handled_once() {
        let batch = [
            n("1", "A", None, None, "2024-01-01T00:00:00Z"),
            n("1", "A", None, None, "2024-01-01T00:00:00Z"),
        ];
        let planned: Vec<_> = batch.iter().filter_map(decide).collect();
        assert_eq!(order(planned).len(), 1);
    }
}
