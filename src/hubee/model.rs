//! Wire types of the HubEE Folder API v1 (PROTOCOL §5), as the hub sends them.
//!
//! Nothing here is trusted: every field the hub may omit or send as `null` is an `Option` or
//! defaults, unknown fields are ignored, numbers may arrive as strings, and ids are opaque
//! strings (PROTOCOL §3: examples contain non-hex pseudo-UUIDs). Validation of what matters to
//! us (ids present, sizes sane) happens in `sync`, where the error can name the case.

use serde::{Deserialize, Deserializer};

/// `GET /notifications` item (PROTOCOL §5 Notification, with `eventDetails=true`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(default, deserialize_with = "opt_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub process_code: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub case_id: Option<String>,
    /// `null` for a new télédossier.
    #[serde(default, deserialize_with = "opt_string")]
    pub event_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub event_action_type: Option<String>,
    /// `SENT` or `RECEIVED` (PROTOCOL §7).
    #[serde(default, deserialize_with = "opt_string")]
    pub event_status: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub date_time: Option<String>,
}

/// `GET /cases/{id}` (PROTOCOL §5 Case). The raw JSON is kept beside it for `case.json`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Case {
    #[serde(default, deserialize_with = "opt_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub external_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub process_code: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub create_date_time: Option<String>,
    #[serde(default, deserialize_with = "vec_or_null")]
    pub attachments: Vec<Attachment>,
    #[serde(default, deserialize_with = "vec_or_null")]
    pub events: Vec<Event>,
}

/// A file's metadata (PROTOCOL §5 Attachment).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(default, deserialize_with = "opt_string")]
    pub id: Option<String>,
    /// `PENDING`, `RECEIVED`, `CORRUPTED`, `REJECTED`, `DELETED`.
    #[serde(default, deserialize_with = "opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub file_name: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "opt_string")]
    pub type_: Option<String>,
    /// Bytes; may arrive as a string. `None` when absent, null, negative or not a number.
    #[serde(default, deserialize_with = "opt_size")]
    pub size: Option<u64>,
    #[serde(default, deserialize_with = "opt_string")]
    pub mime_type: Option<String>,
}

/// An event (PROTOCOL §5 Event).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(default, deserialize_with = "opt_string")]
    pub id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub action_type: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub message: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub comment: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub case_current_status: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub case_new_status: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub create_date_time: Option<String>,
    #[serde(default, deserialize_with = "vec_or_null")]
    pub attachments: Vec<Attachment>,
    /// Who sent it (`type` `SI` or `OSL`, SIRET, branch code); kept loose.
    #[serde(default)]
    pub transmitter: Option<serde_json::Value>,
}

impl Event {
    /// True when the event was sent by an SI (one of ours, for this credential pair).
    pub fn from_si(&self) -> bool {
        self.transmitter
            .as_ref()
            .and_then(|t| t.get("type"))
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.eq_ignore_ascii_case("SI"))
    }
}

/// The body of `POST /cases/{id}/events` (PROTOCOL §4 E1).
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    pub action_type: String,
    pub notification: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Carries our idempotency key: a POST whose answer was lost is found again by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_current_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_new_status: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<NewEventAttachment>,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewEventAttachment {
    pub file_name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub size: u64,
    pub mime_type: String,
}

/// The error envelope `{"errors":[{"code":…,"message":"…"}]}` (PROTOCOL §3), or a WSO2/OAuth
/// error `{"error":"…","error_description":"…"}`. `code` is a number or a string.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ErrorBody {
    #[serde(default, deserialize_with = "vec_or_null")]
    pub errors: Vec<ErrorItem>,
    #[serde(default, deserialize_with = "opt_string")]
    pub error: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub error_description: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ErrorItem {
    #[serde(default, deserialize_with = "opt_string")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub message: Option<String>,
}

impl ErrorBody {
    /// A short human summary, e.g. `404 Case is not found`, bounded in length: the body is
    /// the hub's and may be anything.
    pub fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        for item in &self.errors {
            match (&item.code, &item.message) {
                (Some(c), Some(m)) => parts.push(format!("{c} {m}")),
                (None, Some(m)) => parts.push(m.clone()),
                (Some(c), None) => parts.push(c.clone()),
                (None, None) => {}
            }
        }
        if let Some(e) = &self.error {
            match &self.error_description {
                Some(d) => parts.push(format!("{e}: {d}")),
                None => parts.push(e.clone()),
            }
        }
        if parts.is_empty() {
            return None;
        }
        let mut s = parts.join("; ");
        truncate_chars(&mut s, 300);
        Some(s)
    }

    /// True for the WSO2 gateway's token errors (900901 and kin): the token is dead.
    pub fn is_token_error(&self) -> bool {
        self.errors
            .iter()
            .any(|e| e.code.as_deref().is_some_and(|c| c.starts_with("90090")))
    }
}

/// Cuts a string to at most `max` characters, marking the cut.
pub fn truncate_chars(s: &mut String, max: usize) {
    if let Some((idx, _)) = s.char_indices().nth(max) {
        s.truncate(idx);
        s.push('…');
    }
}

/// A string, a number or a bool as a string; `null` or anything else as `None`.
fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

/// A non-negative integer, as a number or a string; anything else as `None`.
fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    })
}

/// A list, or `null` as an empty list. Items that do not parse fail the whole document.
fn vec_or_null<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_tolerates_nulls_and_unknown_fields() {
        let json = r#"[{"id":"n1","processCode":"CERTDC","caseId":"c1","eventId":null,
            "eventActionType":null,"eventStatus":null,"dateTime":"2022-03-01T16:24:44.521Z",
            "recipient":null,"somethingNew":{"x":1}}]"#;
        let n: Vec<Notification> = serde_json::from_str(json).unwrap();
        assert_eq!(n[0].case_id.as_deref(), Some("c1"));
        assert_eq!(n[0].event_id, None);
    }

    #[test]
    fn attachment_size_may_be_a_string_and_bad_sizes_are_none() {
        let a: Attachment =
            serde_json::from_str(r#"{"id":"a","size":"1024","fileName":null}"#).unwrap();
        assert_eq!(a.size, Some(1024));
        assert_eq!(a.file_name, None);
        let b: Attachment = serde_json::from_str(r#"{"id":"a","size":-3}"#).unwrap();
        assert_eq!(b.size, None);
        let c: Attachment = serde_json::from_str(r#"{"id":"a","size":"lots"}"#).unwrap();
        assert_eq!(c.size, None);
    }

    #[test]
    fn case_with_null_lists_parses_as_empty() {
        let c: Case =
            serde_json::from_str(r#"{"id":"c","status":"SENT","attachments":null,"events":null}"#)
                .unwrap();
        assert!(c.attachments.is_empty() && c.events.is_empty());
    }

    #[test]
    fn error_code_may_be_number_or_string() {
        let a: ErrorBody =
            serde_json::from_str(r#"{"errors":[{"code":900901,"message":"Invalid Credentials"}]}"#)
                .unwrap();
        assert!(a.is_token_error());
        let b: ErrorBody =
            serde_json::from_str(r#"{"errors":[{"code":"404","message":"Case is not found"}]}"#)
                .unwrap();
        assert_eq!(b.summary().as_deref(), Some("404 Case is not found"));
        assert!(!b.is_token_error());
    }
}
