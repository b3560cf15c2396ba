//! A `reply.json` from the legacy software, as raw bytes: `reply::parse` never panics; it
//! accepts the reply, keeping CONTRACT "Outbox"'s promises (a case named, an allowed status,
//! something to send, lengths, plain distinct file names that stay in the reply's folder),
//! or refuses it with a reason in both languages that names the file at fault.
//! The same inputs as tests/reliability_props.rs (`reply_json_…`), for longer runs.
#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path};

use hubee_sync::outbox::refusal::Refusal;
use hubee_sync::outbox::reply::{self, MAX_COMMENT_CHARS, MAX_MESSAGE_CHARS, REPLY_JSON};
use hubee_sync::outbox::walk::REPLY_STATUSES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match reply::parse(data) {
        Err(r) => {
            let (what_fr, what_en) = r.what();
            let (fix_fr, fix_en) = r.fix();
            assert!(!what_fr.trim().is_empty() && !what_en.trim().is_empty());
            assert!(!fix_fr.trim().is_empty() && !fix_en.trim().is_empty());
            let file = match &r {
                Refusal::BadFileName { file, .. }
                | Refusal::DuplicateFile { file }
                | Refusal::MissingField { file, .. }
                | Refusal::BadMimeType { file, .. } => Some(file),
                _ => None,
            };
            if let Some(file) = file {
                let shown = format!("{file:?}");
                assert!(what_fr.contains(&shown) && what_en.contains(&shown));
            }
        }
        Ok(reply) => {
            let named = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
            assert!(named(&reply.case_id) || named(&reply.external_id));
            if let Some(st) = reply.status {
                assert!(REPLY_STATUSES.contains(&st));
            }
            assert!(
                reply.status.is_some() || reply.message.is_some() || !reply.attachments.is_empty()
            );
            assert!(reply
                .message
                .as_deref()
                .is_none_or(|m| m.chars().count() <= MAX_MESSAGE_CHARS));
            assert!(reply
                .comment
                .as_deref()
                .is_none_or(|m| m.chars().count() <= MAX_COMMENT_CHARS));
            let dir = Path::new("/srv/spool/outbox/new/r");
            let mut seen = HashSet::new();
            for a in &reply.attachments {
                let f = a.file.as_str();
                let comps: Vec<Component> = Path::new(f).components().collect();
                assert!(matches!(comps.as_slice(), [Component::Normal(c)] if *c == std::ffi::OsStr::new(f)));
                assert_eq!(dir.join(f).parent(), Some(dir));
                assert!(!f.chars().any(char::is_control) && f.len() <= 255 && f != REPLY_JSON);
                assert!(seen.insert(f.to_string()));
                assert!(!a.type_.trim().is_empty() && !a.mime_type.trim().is_empty());
            }
        }
    }
});
