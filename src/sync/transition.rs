//! Moves a case to a status on any kind of hub (PROTOCOL §10.1, §10.9, §10.17-10.19): one where
//! an event's `caseNewStatus` moves the case and one where only PATCH does, strict or lenient
//! about events, answering a PATCH to the current status with 400 or with a 204 no-op, and with
//! portal agents writing to the same case at the same time.
//!
//! One status change posts at most one event, and that event always tells the truth about
//! the case: it is posted from the status just read, for one step that every reading of the
//! status table allows. So:
//!
//! 1. read the case; our event already there (a lost answer, a crash) → finish the PATCHes;
//! 2. at or past the target → nothing to do (someone else did it; never move a case back);
//! 3. PATCH the intermediate steps of the path, reading after each (so before the next);
//! 4. post the event (status just read → target): on the first kind of hub it moves the case;
//! 5. read again and PATCH the target only if it is still missing.
//!
//! A PATCH answered 400 is followed by a read: a case at or past that step counts as done (a
//! retried PATCH whose first answer was lost, a same-status PATCH, someone else's move). An
//! event refused with 400 is followed by a read too: if the case moved meanwhile the change
//! starts again from what it now is (a few times at most); otherwise the refusal is final
//! (the hub's cap on events, a rule of the démarche), the status is still set by PATCH where
//! the hub allows it, and the caller reports what could not be posted.

use crate::hubee::model::{Case, Event, NewEvent};
use crate::hubee::status::{at_or_past, CaseStatus};
use crate::hubee::{HubError, HubSession};

/// Times a change starts again because someone else moved the case under it.
const RESTARTS: usize = 3;

/// One status change to make.
pub struct Change<'a> {
    pub case_id: &'a str,
    pub target: CaseStatus,
    /// The first line of our event's `comment`: finds a POST whose answer was lost.
    pub marker: &'a str,
    /// The PATCH steps from a status to the target, the target last (empty when there).
    pub path: &'a (dyn Fn(CaseStatus) -> Option<Vec<CaseStatus>> + Sync),
    /// Our event for `from → target`.
    pub event: &'a (dyn Fn(CaseStatus) -> NewEvent + Sync),
    /// Post the event even when the case already is at the target (a reopened round still
    /// owes the OSL its receipt); never when it is past it.
    pub owe_event_at_target: bool,
}

/// Our `STATUS_UPDATE` event for `from → target`, notified to the online service: signed
/// by `author`, saying `message`, its `comment` opening with our marker.
pub fn status_event(
    author: &str,
    message: Option<String>,
    comment: &str,
    from: CaseStatus,
    target: CaseStatus,
) -> NewEvent {
    NewEvent {
        action_type: "STATUS_UPDATE".into(),
        notification: true,
        author: Some(author.to_string()),
        message,
        comment: Some(comment.to_string()),
        case_current_status: Some(from.as_str().to_string()),
        case_new_status: Some(target.as_str().to_string()),
        attachments: Vec::new(),
    }
}

/// What the change did.
#[derive(Debug)]
pub enum Moved {
    /// Nothing posted: the case was (or, while we walked it, got) at or past the target.
    AlreadyThere { status: CaseStatus },
    /// Our event is on the hub (posted now, or found from an earlier attempt) and the case is
    /// at or past the target.
    Done {
        event_id: Option<String>,
        from: CaseStatus,
    },
    /// The hub refused our event for good; the status was set by PATCH alone when `reached`.
    EventRefused {
        error: HubError,
        /// The refusal is HubEE's cap on events per case (§10.17).
        cap: bool,
        status: CaseStatus,
        reached: bool,
    },
}

/// Why the change could not be made.
#[derive(Debug)]
pub enum ChangeError {
    /// The target cannot be reached from where the case is.
    Impossible { from: CaseStatus, to: CaseStatus },
    /// The hub reports a status we do not know.
    UnknownStatus(String),
    /// Refused for good (a 4xx that a read does not explain).
    Refused {
        doing: &'static str,
        error: HubError,
    },
    /// Not finished; try again later (network, 5xx, credentials, fence).
    Transient {
        doing: &'static str,
        error: HubError,
    },
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Impossible { from, to } => {
                write!(f, "the case is at {from} and cannot move to {to}")
            }
            ChangeError::UnknownStatus(s) => {
                write!(f, "the hub reports an unknown case status {s:?}")
            }
            ChangeError::Refused { doing, error } | ChangeError::Transient { doing, error } => {
                write!(f, "{doing}: {error}")
            }
        }
    }
}

/// A 4xx that no retry fixes (401 is the credentials, 408 and 429 are transient).
pub fn is_final(e: &HubError) -> bool {
    matches!(e.status(), Some(s) if (400..500).contains(&s) && !matches!(s, 401 | 408 | 429))
}

fn parse(case: &Case) -> Result<CaseStatus, ChangeError> {
    let raw = case.status.clone().unwrap_or_default();
    raw.parse().map_err(|_| ChangeError::UnknownStatus(raw))
}

/// Our event on the case: a `STATUS_UPDATE` whose comment starts with the marker.
pub fn find_marked<'c>(case: &'c Case, marker: &str, action_type: &str) -> Option<&'c Event> {
    case.events.iter().find(|e| {
        e.action_type.as_deref() == Some(action_type)
            && e.comment
                .as_deref()
                .is_some_and(|c| c.lines().next().map(str::trim) == Some(marker))
    })
}

async fn read(session: &HubSession, case_id: &str) -> Result<Case, ChangeError> {
    match session.get_case(case_id).await {
        Ok((c, _)) => Ok(c),
        Err(e) if is_final(&e) => Err(ChangeError::Refused {
            doing: "reading the case",
            error: e,
        }),
        Err(e) => Err(ChangeError::Transient {
            doing: "reading the case",
            error: e,
        }),
    }
}

/// PATCHes one step; a 400 is followed by a read, and a case at or past the step counts as
/// done. Returns the case as read afterwards.
async fn patch_step(
    session: &HubSession,
    case_id: &str,
    step: CaseStatus,
) -> Result<Case, ChangeError> {
    match session.patch_case_status(case_id, step.as_str()).await {
        Ok(()) => {
            crate::crashpoint::point("after_patch");
            read(session, case_id).await
        }
        Err(e) if is_final(&e) => {
            let case = read(session, case_id).await?;
            if at_or_past(parse(&case)?, step) {
                Ok(case)
            } else {
                Err(ChangeError::Refused {
                    doing: "changing the case's status",
                    error: e,
                })
            }
        }
        Err(e) => Err(ChangeError::Transient {
            doing: "changing the case's status",
            error: e,
        }),
    }
}

/// Makes the change. `fresh` is the case when the caller read it just now (no long step
/// since); otherwise it is read first.
pub async fn change_status(
    session: &HubSession,
    c: &Change<'_>,
    fresh: Option<Case>,
) -> Result<Moved, ChangeError> {
    let mut case = match fresh {
        Some(case) => case,
        None => read(session, c.case_id).await?,
    };
    let mut restarts = 0;
    'again: loop {
        let mut current = parse(&case)?;
        if let Some(ev) = find_marked(&case, c.marker, "STATUS_UPDATE") {
            let from = ev
                .case_current_status
                .as_deref()
                .and_then(|s| s.parse().ok())
                .unwrap_or(current);
            let event_id = ev.id.clone();
            return finish(session, c, case, from, event_id).await;
        }
        let owed = c.owe_event_at_target && current == c.target;
        if at_or_past(current, c.target) && !owed {
            return Ok(Moved::AlreadyThere { status: current });
        }
        let steps = (c.path)(current).ok_or(ChangeError::Impossible {
            from: current,
            to: c.target,
        })?;
        // Intermediate steps by PATCH, each from the status just read.
        for &step in steps.iter().take(steps.len().saturating_sub(1)) {
            if at_or_past(current, step) {
                continue;
            }
            let before = current;
            case = patch_step(session, c.case_id, step).await?;
            current = parse(&case)?;
            if at_or_past(current, c.target) && current != c.target {
                return Ok(Moved::AlreadyThere { status: current });
            }
            if current != step && current != before && restarts < RESTARTS {
                // Someone else moved the case elsewhere: decide again from there.
                restarts += 1;
                continue 'again;
            }
        }
        // The one event, for one step from the status just read.
        let from = current;
        let body = (c.event)(from);
        let unclear = match session.post_event(c.case_id, &body).await {
            Ok(ev) if ev.id.is_some() => {
                crate::crashpoint::point("after_event_post");
                let case = read(session, c.case_id).await?;
                return finish(session, c, case, from, ev.id).await;
            }
            // An answer without an id.
            Ok(_) => HubError::Decode {
                op: crate::hubee::error::Op {
                    method: "POST",
                    path: format!("/cases/{}/events", c.case_id),
                },
                detail: "the hub answered without an event id".into(),
            },
            // The answer was lost.
            Err(e) if e.maybe_applied() || matches!(e, HubError::Decode { .. }) => e,
            Err(e) if is_final(&e) => {
                let again = read(session, c.case_id).await?;
                let now = parse(&again)?;
                if now != from && restarts < RESTARTS {
                    // Someone else moved the case between our read and our POST.
                    restarts += 1;
                    case = again;
                    continue 'again;
                }
                if at_or_past(now, c.target) && now != from {
                    return Ok(Moved::AlreadyThere { status: now });
                }
                // Final: the status still goes by PATCH where the hub allows it.
                let cap = e.is_event_cap();
                let (status, reached) = if now == c.target {
                    (now, true)
                } else {
                    match patch_step(session, c.case_id, c.target).await {
                        Ok(after) => {
                            let s = parse(&after)?;
                            (s, at_or_past(s, c.target))
                        }
                        Err(_) => (now, false),
                    }
                };
                return Ok(Moved::EventRefused {
                    error: e,
                    cap,
                    status,
                    reached,
                });
            }
            Err(e) => {
                return Err(ChangeError::Transient {
                    doing: "posting the status event",
                    error: e,
                })
            }
        };
        // An unclear answer: the event may be there (PROTOCOL §9); look for it before
        // anything else.
        case = read(session, c.case_id).await?;
        if find_marked(&case, c.marker, "STATUS_UPDATE").is_some() {
            continue 'again;
        }
        return Err(ChangeError::Transient {
            doing: "posting the status event",
            error: unclear,
        });
    }
}

/// After our event: PATCH the target only if it is still missing (a hub where only PATCH
/// moves a case, or one that did not apply the event), and only if the case is still where
/// the event said it was: a case someone else moved since is theirs (never undo a decision).
async fn finish(
    session: &HubSession,
    c: &Change<'_>,
    case: Case,
    from: CaseStatus,
    event_id: Option<String>,
) -> Result<Moved, ChangeError> {
    let current = parse(&case)?;
    if current == from && current != c.target {
        patch_step(session, c.case_id, c.target).await?;
    }
    Ok(Moved::Done { event_id, from })
}
