//! What the hub sends, as raw bytes: a notification batch, a case, an event, an error body.
//! Nothing may panic; a batch that parses is planned with every notification id kept once.
//! The same inputs as tests/reliability_props.rs, for longer runs.
#![no_main]

use std::collections::HashSet;

use hubee_sync::hubee::model::{Case, ErrorBody, Event, Notification};
use hubee_sync::sync::plan::{decide, order};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = serde_json::from_slice::<Vec<Notification>>(data) {
        let planned: Vec<_> = batch.iter().filter_map(decide).collect();
        let want: HashSet<String> = planned.iter().map(|p| p.notification_id.clone()).collect();
        let ordered = order(planned);
        assert_eq!(
            ordered.len(),
            want.len(),
            "every notification id exactly once"
        );
        let got: HashSet<String> = ordered.into_iter().map(|p| p.notification_id).collect();
        assert_eq!(got, want);
    }
    if let Ok(case) = serde_json::from_slice::<Case>(data) {
        for ev in &case.events {
            let _ = ev.from_si();
        }
    }
    if let Ok(ev) = serde_json::from_slice::<Event>(data) {
        let _ = ev.from_si();
    }
    if let Ok(e) = serde_json::from_slice::<ErrorBody>(data) {
        if let Some(s) = e.summary() {
            assert!(
                s.chars().count() <= 301,
                "summary of {} chars",
                s.chars().count()
            );
        }
        let _ = e.is_token_error();
    }
});
