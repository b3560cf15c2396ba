//! Receiving new télédossiers end to end: the real binary against the fake hub on 127.0.0.1.

mod common;

use common::{sha256sum_check, World, CLIENT};
use fake_hubee::{AttachmentSpec, CaseSpec, Content, Fault, Route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_delivers_ten_cases_verified_and_acknowledged_then_changes_nothing() {
    let w = World::new().await;
    let cases: Vec<String> = (0..10).map(|n| w.add_case(n, 3, 1024 * 1024)).collect();

    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 10, "{entries:?}");
    for e in &entries {
        let dir = w.spool().join("new").join(e);
        assert!(sha256sum_check(&dir), "sha256sum -c fails in {e}");
        let files = std::fs::read_dir(dir.join("attachments")).unwrap().count();
        assert_eq!(files, 3);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["subscription"], "certdc");
        assert_eq!(manifest["attachments"].as_array().unwrap().len(), 3);
    }
    for c in &cases {
        assert_eq!(w.hub.case_status(c).as_deref(), Some("IN_PROGRESS"));
        let receipts = w.receipt_events(c);
        assert_eq!(receipts.len(), 1, "one receipt event per case");
        // One step every reading of the table allows, from the status just read.
        assert_eq!(receipts[0]["caseCurrentStatus"], "SI_RECEIVED");
        assert_eq!(receipts[0]["caseNewStatus"], "IN_PROGRESS");
        // Walked one allowed step at a time; the last by the event itself where the hub
        // applies an event's caseNewStatus, by PATCH where only PATCH moves a case.
        let mut want = vec!["SENT", "SI_RECEIVED"];
        if !w.hub.behaviour().events_move_status {
            want.push("IN_PROGRESS");
        }
        assert_eq!(w.hub.status_patches(c), want);
    }
    assert!(w.hub.notifications(CLIENT).is_empty());
    assert!(w.entries("tmp").is_empty(), "nothing left in tmp/");

    // A second run changes nothing.
    let before = w.hub.requests().len();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(w.entries("new"), entries);
    for c in &cases {
        assert_eq!(w.receipt_events(c).len(), 1);
    }
    let after: Vec<_> = w.hub.requests().into_iter().skip(before).collect();
    assert!(
        after
            .iter()
            .all(|r| matches!(r.route, Some(Route::Token) | Some(Route::ListNotifications))),
        "a second once only polls: {:?}",
        after
            .iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_download_is_never_published() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 200_000);
    // Every attempt (download_attempts = 3, each with its own HTTP retries) breaks off.
    w.hub.inject(
        Route::GetAttachment,
        Fault::TruncateBody { after_bytes: 1000 },
        100,
    );
    let (code, out, _) = w.run(&["once"]).await;
    assert_eq!(code, 1, "a failed case makes once exit 1: {out}");
    assert!(w.entries("new").is_empty(), "nothing published");
    assert!(w.entries("tmp").is_empty(), "no half file left in tmp/");
    assert_eq!(w.hub.notifications(CLIENT).len(), 1, "not acknowledged");
    assert!(w.receipt_events(&case).is_empty());
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));

    w.hub.clear_faults();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 1);
    assert!(sha256sum_check(&w.spool().join("new").join(&entries[0])));
    assert_eq!(w.receipt_events(&case).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_is_never_published_and_retried_until_it_matches() {
    let w = World::new().await;
    let case = w.add_case(1, 2, 10_000);
    // Two bad answers, then good ones: the download attempts absorb them in one run.
    w.hub.inject(Route::GetAttachment, Fault::WrongDigest, 2);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 1);
    assert!(sha256sum_check(&w.spool().join("new").join(&entries[0])));
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert!(
        err.contains("does not match"),
        "the mismatch is logged: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_delete_response_does_not_duplicate_entry_or_event() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 1000);
    // The hub deletes, the answer is lost, every retry too (retry_attempts = 3).
    w.hub
        .inject(Route::DeleteNotification, Fault::ResetAfterEffect, 3);
    let (code, _, _) = w.run(&["once"]).await;
    // The first DELETE took effect; its retries found nothing (404 = done) or were lost too.
    let _ = code;
    w.hub.clear_faults();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new").len(), 1);
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_patch_response_does_not_duplicate_entry_or_event() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 1000);
    w.hub.inject(Route::PatchCase, Fault::ResetAfterEffect, 3);
    let (code, _, _) = w.run(&["once"]).await;
    if code == 1 {
        assert_eq!(w.hub.notifications(CLIENT).len(), 1, "not acknowledged yet");
    }
    w.hub.clear_faults();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new").len(), 1);
    let receipts = w.receipt_events(&case);
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        receipts[0]["caseCurrentStatus"], "SI_RECEIVED",
        "where the case really was when the event was posted"
    );
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_event_post_response_does_not_post_twice() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 1000);
    w.hub.inject(Route::PostEvent, Fault::ResetAfterEffect, 1);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(
        code, 0,
        "the lost answer is resolved by looking: {out}{err}"
    );
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert_eq!(
        w.hub.request_count(Route::PostEvent),
        1,
        "never posted blindly again"
    );
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_event_post_across_runs_does_not_post_twice() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 1000);
    // The event is created, its answer lost, and the look-up fails too: the run gives up.
    w.hub.inject(Route::PostEvent, Fault::ResetAfterEffect, 1);
    w.hub.inject(Route::GetCase, Fault::Status(503), 100);
    let (_code, _, _) = w.run(&["once"]).await;
    w.hub.clear_faults();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert_eq!(w.entries("new").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_renewed_once_and_call_replayed() {
    let w = World::new().await;
    w.add_case(1, 1, 1000);
    w.hub.inject(Route::GetCase, Fault::KillToken, 1);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        w.hub.request_count(Route::Token),
        2,
        "one token, one renewal"
    );
    assert_eq!(w.entries("new").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_secret_fails_with_what_to_do_and_never_shows_the_secret() {
    let w = World::new().await;
    w.add_case(1, 1, 1000);
    common::write_mode(&w.dir.path().join("secret"), "wrong-secret\n", 0o600);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    let all = format!("{out}{err}");
    assert!(all.contains("refused client_id certdc-client"), "{all}");
    assert!(
        all.contains("regenerate the secret in the HubEE portal"),
        "{all}"
    );
    assert!(!all.contains("wrong-secret") && !all.contains(common::SECRET));
    assert_eq!(w.hub.request_count(Route::ListNotifications), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_case_does_not_stop_the_others() {
    let w = World::new().await;
    // The bad case's metadata lies about its file's size: every download fails verification.
    let mut lying = AttachmentSpec::new(
        "acte.pdf",
        "DD_Certificatdedeces",
        "application/pdf",
        Content::Bytes(vec![1; 5000]),
    );
    lying.declared_size = Some(4000);
    let mut spec = CaseSpec::new("CERTDC");
    spec.external_id = Some("DGS-CERTDC-BAD-01".into());
    spec.attachments = vec![lying];
    let bad = w.hub.add_case(CLIENT, spec);
    let good: Vec<String> = (1..6).map(|n| w.add_case(n, 1, 5000)).collect();
    let (code, out, _) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(w.entries("new").len(), 5);
    for c in &good {
        assert_eq!(w.receipt_events(c).len(), 1);
    }
    assert_eq!(
        w.hub.notifications(CLIENT).len(),
        1,
        "only the failing case stays"
    );
    assert!(out.contains(&bad), "the report names the case: {out}");
    assert!(w.receipt_events(&bad).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_failing_hub_is_retried_with_backoff() {
    let w = World::new().await;
    w.add_case(1, 1, 1000);
    w.hub.inject(
        Route::ListNotifications,
        Fault::TooManyRequests {
            retry_after_secs: 0,
        },
        1,
    );
    w.hub.inject(Route::GetCase, Fault::Status(502), 1);
    w.hub
        .inject(Route::GetAttachment, Fault::ResetBeforeEffect, 1);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let w = World::new().await;
    w.add_case(1, 1, 1000);
    w.hub.inject(Route::GetCase, Fault::Status(403), 1);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    assert_eq!(
        w.hub.request_count(Route::GetCase),
        1,
        "a 403 is final for this run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifying_headers_are_sent_with_the_editor_name_in_ascii() {
    let w = World::new().await;
    w.add_case(1, 1, 1000);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    let reqs = w.hub.requests();
    let api: Vec<_> = reqs
        .iter()
        .filter(|r| r.route != Some(Route::Token))
        .collect();
    assert!(!api.is_empty());
    for r in api {
        let h = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("editorName").as_deref(), Some("Commune de Saint-Etienne"));
        assert_eq!(h("applicationName").as_deref(), Some("hubee-sync"));
        assert_eq!(
            h("softwareVersion").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_one_batch_is_drained_in_one_run() {
    let w = World::new().await;
    for n in 0..60 {
        w.add_case(n, 0, 0);
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new").len(), 60);
    assert!(
        w.hub.request_count(Route::ListNotifications) >= 3,
        "batches of 25"
    );
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_batches_still_deliver_every_case_once() {
    let w = World::new().await;
    w.hub.set_shuffle(Some(7));
    for n in 0..30 {
        w.add_case(n, 1, 100);
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new").len(), 30);
}

/// Cases whose GET /cases/{id} was answered before the first notification was deleted.
fn cases_started_before_first_delete(w: &World) -> usize {
    let mut started = std::collections::HashSet::new();
    for r in w.hub.requests() {
        match r.route {
            Some(Route::DeleteNotification) => break,
            Some(Route::GetCase) => {
                started.insert(r.path.clone());
            }
            _ => {}
        }
    }
    started.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cases_of_a_batch_are_worked_side_by_side_and_published_in_sequence_order() {
    let w = World::new().await;
    for n in 0..12 {
        w.add_case(n, 2, 256 * 1024);
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        cases_started_before_first_delete(&w) > 1,
        "several cases were under way before the first was acknowledged"
    );
    // Entries appear in new/ in sequence order: one renamed strictly later (its ctime, set
    // by the rename) never holds a smaller sequence number.
    let mut renamed: Vec<(std::time::SystemTime, u64)> = w
        .entries("new")
        .iter()
        .map(|e| {
            let dir = w.spool().join("new").join(e);
            let ctime = {
                use std::os::unix::fs::MetadataExt;
                let m = std::fs::metadata(&dir).unwrap();
                std::time::UNIX_EPOCH
                    + std::time::Duration::new(m.ctime() as u64, m.ctime_nsec() as u32)
            };
            let m = common::read_manifest(&dir).unwrap();
            (ctime, m["sequence"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(renamed.len(), 12);
    renamed.sort();
    for pair in renamed.windows(2) {
        if pair[0].0 < pair[1].0 {
            assert!(pair[0].1 < pair[1].1, "published out of order: {renamed:?}");
        }
    }
    let mut seqs: Vec<u64> = renamed.iter().map(|r| r.1).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=12).collect::<Vec<u64>>(), "dense, one per entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_cases_one_works_one_case_at_a_time() {
    let w = World::new().await;
    w.write_config("max_parallel_cases = 1");
    for n in 0..6 {
        w.add_case(n, 1, 1024);
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(w.entries("new").len(), 6);
    assert_eq!(
        cases_started_before_first_delete(&w),
        1,
        "the first case was acknowledged before the next was fetched"
    );
}

/// A case slower than the others does not hold back the cases listed after it: the queue
/// lists again as slots free up instead of waiting for the whole batch of 25 (issue 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_case_does_not_hold_back_the_cases_listed_after_it() {
    let w = World::new().await;
    for n in 0..40 {
        w.add_case(n, 1, 4096);
    }
    // The first file asked for comes in four pieces a second apart.
    w.hub.inject(
        Route::GetAttachment,
        Fault::SlowBody {
            chunk_delay_ms: 1000,
        },
        1,
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert_eq!(w.entries("new").len(), 40);
    assert!(w.hub.notifications(CLIENT).is_empty());
    let reqs = w.hub.requests();
    let slow_case = common::case_of_faulted_download(&w.hub);
    // The slow case's receipt event, posted once its file was in.
    let receipt = common::first_event_post(&reqs, &slow_case);
    let started: std::collections::HashSet<&str> = reqs[..receipt]
        .iter()
        .filter(|r| r.route == Some(Route::GetCase))
        .map(|r| r.path.as_str())
        .collect();
    assert!(
        started.len() > 25,
        "only {} cases were fetched while the slow one downloaded: the next list waited for it",
        started.len()
    );
    let lists = w.hub.request_count(Route::ListNotifications);
    assert!(
        lists <= 8,
        "{lists} lists for 40 notifications: the queue lists in a loop"
    );
}
