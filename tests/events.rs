//! Everything else the hub sends: OSL messages, deposits and status changes, reopenings,
//! acknowledgements of our own events; and items that keep failing: parked, quarantined.

mod common;

use common::{sha256sum_check, World, CLIENT};
use fake_hubee::{AttachmentSpec, CaseSpec, Content, OslEvent, Route};

fn manifest(w: &World, entry: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(w.spool().join("new").join(entry).join("manifest.json")).unwrap(),
    )
    .unwrap()
}

/// Delivers one case first, so that events come after it.
async fn delivered_case(w: &World) -> String {
    let case = w.add_case(1, 1, 100);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    case
}

fn event_status(w: &World, case: &str, event: &str) -> String {
    w.hub
        .events(case)
        .into_iter()
        .find(|e| e["id"] == event)
        .map(|e| e["status"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn osl_message_arrives_as_an_event_entry_and_is_acknowledged_received() {
    let w = World::new().await;
    let case = delivered_case(&w).await;
    let ev = w.hub.osl_post_event(
        &case,
        OslEvent {
            action_type: "SENDING_MESSAGE".into(),
            message: Some("Merci de fournir une pièce d'identité".into()),
            ..Default::default()
        },
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    let ev_entry = entries
        .iter()
        .find(|e| e.ends_with(&ev))
        .expect("an entry for the event");
    assert!(ev_entry.contains(&case));
    let dir = w.spool().join("new").join(ev_entry);
    let event_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("event.json")).unwrap()).unwrap();
    assert_eq!(
        event_json["message"],
        "Merci de fournir une pièce d'identité"
    );
    assert!(dir.join("case.json").exists());
    assert_eq!(manifest(&w, ev_entry)["event_id"], ev.as_str());
    assert!(sha256sum_check(&dir));
    assert_eq!(event_status(&w, &case, &ev), "RECEIVED");
    assert!(w.hub.notifications(CLIENT).is_empty());

    // Again: nothing new, the event is not PATCHed twice.
    let patches = w.hub.request_count(Route::PatchEvent);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    assert_eq!(w.entries("new").len(), entries.len());
    assert_eq!(w.hub.request_count(Route::PatchEvent), patches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposited_files_arrive_verified_in_the_event_entry() {
    let w = World::new().await;
    let case = delivered_case(&w).await;
    let ev = w.hub.osl_post_event(
        &case,
        OslEvent {
            action_type: "ATTACH_DEPOSIT".into(),
            message: Some("Pièces complémentaires".into()),
            attachments: vec![
                AttachmentSpec::new(
                    "piece.pdf",
                    "jf",
                    "application/pdf",
                    Content::Generated {
                        size: 300_000,
                        seed: 5,
                    },
                ),
                AttachmentSpec::new(
                    "piece.pdf",
                    "ji",
                    "application/pdf",
                    Content::Bytes(b"second".to_vec()),
                ),
            ],
            ..Default::default()
        },
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entry = w
        .entries("new")
        .into_iter()
        .find(|e| e.ends_with(&ev))
        .expect("event entry");
    let dir = w.spool().join("new").join(&entry);
    assert_eq!(
        std::fs::read_dir(dir.join("attachments")).unwrap().count(),
        2
    );
    assert!(sha256sum_check(&dir));
    assert_eq!(w.hub.request_count(Route::GetEventAttachment), 2);
    assert_eq!(event_status(&w, &case, &ev), "RECEIVED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_status_change_arrives_as_an_event_entry() {
    let w = World::new().await;
    let case = delivered_case(&w).await;
    let ev = w.hub.osl_post_event(
        &case,
        OslEvent {
            action_type: "STATUS_UPDATE".into(),
            case_new_status: Some("CLOSED".into()),
            ..Default::default()
        },
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entry = w
        .entries("new")
        .into_iter()
        .find(|e| e.ends_with(&ev))
        .expect("event entry");
    let event_json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.spool().join("new").join(&entry).join("event.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(event_json["caseNewStatus"], "CLOSED");
    assert_eq!(w.entries("new").len(), 2, "the case is not delivered again");
    assert_eq!(event_status(&w, &case, &ev), "RECEIVED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopened_case_arrives_again_as_r1_with_its_own_receipt() {
    let w = World::new().await;
    let case = delivered_case(&w).await;
    w.hub.osl_reopen(&case);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    let r1 = entries
        .iter()
        .find(|e| e.ends_with("~r1"))
        .expect("a ~r1 entry");
    assert!(r1.contains(&case));
    assert_eq!(manifest(&w, r1)["round"], 1);
    assert!(sha256sum_check(&w.spool().join("new").join(r1)));
    assert_eq!(
        entries.len(),
        3,
        "round 0, the reopening event, round 1: {entries:?}"
    );
    let receipts = w.receipt_events(&case);
    assert_eq!(receipts.len(), 2, "one receipt per round");
    assert!(receipts
        .iter()
        .any(|e| e["comment"].as_str().unwrap().ends_with(":r1")));
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    assert!(w.hub.notifications(CLIENT).is_empty());

    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    assert_eq!(w.entries("new").len(), 3, "nothing twice");
    assert_eq!(w.receipt_events(&case).len(), 2);
}

/// `hubee-sync once` killed at `point` (its `nth` passage); the exit code.
async fn once_crashing_at(w: &World, point: &str, nth: u32) -> Option<i32> {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("--config")
        .arg(w.config_path())
        .arg("once")
        .env("HUBEE_SYNC_CRASH_AT", format!("{point}:{nth}"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    out.status.code()
}

/// The rounds (`manifest.round`) of the case's own entries in new/, sorted.
fn rounds_of(w: &World, case: &str) -> Vec<u64> {
    let mut rounds: Vec<u64> = w
        .entries("new")
        .iter()
        .map(|e| manifest(w, e))
        .filter(|m| m["case_id"] == case && m["event_id"].is_null())
        .map(|m| m["round"].as_u64().unwrap_or(0))
        .collect();
    rounds.sort();
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_reopened_twice_before_a_cycle_arrives_as_r1_and_r2_each_with_its_receipt() {
    let w = World::new().await;
    let case = delivered_case(&w).await;
    w.hub.osl_reopen(&case);
    w.hub.osl_reopen(&case);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        rounds_of(&w, &case),
        vec![0, 1, 2],
        "{:?}",
        w.entries("new")
    );
    assert_eq!(
        w.entries("new").len(),
        5,
        "round 0, two reopening events, rounds 1 and 2"
    );
    for e in w.entries("new") {
        assert!(sha256sum_check(&w.spool().join("new").join(&e)), "{e}");
    }
    let mut markers: Vec<String> = w
        .receipt_events(&case)
        .iter()
        .map(|e| e["comment"].as_str().unwrap_or("").to_string())
        .collect();
    markers.sort();
    assert_eq!(
        markers,
        (0..3)
            .map(|r| format!("hubee-sync:receipt:{case}:r{r}"))
            .collect::<Vec<_>>(),
        "one receipt per round"
    );
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    assert!(w.hub.notifications(CLIENT).is_empty());

    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    assert_eq!(w.entries("new").len(), 5, "nothing twice");
    assert_eq!(w.receipt_events(&case).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_seen_again_after_a_crash_never_opens_a_second_round() {
    // Killed at each boundary of the second reopening's round (and before its DELETE),
    // then run again: it keeps the round it opened, and each round keeps one receipt.
    for (point, nth) in [
        ("after_rename", 4),
        ("after_intent", 4),
        ("after_event_post", 2),
        ("before_delete", 2),
    ] {
        let w = World::new().await;
        let case = delivered_case(&w).await;
        w.hub.osl_reopen(&case);
        w.hub.osl_reopen(&case);
        let code = once_crashing_at(&w, point, nth).await;
        assert_eq!(code, None, "{point}:{nth} killed the run");
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{point}:{nth}: {out}{err}");
        assert_eq!(rounds_of(&w, &case), vec![0, 1, 2], "{point}:{nth}");
        assert_eq!(w.entries("new").len(), 5, "{point}:{nth}");
        assert_eq!(w.receipt_events(&case).len(), 3, "{point}:{nth}");
        assert!(w.hub.notifications(CLIENT).is_empty(), "{point}:{nth}");
        assert!(w.entries("tmp").is_empty(), "{point}:{nth}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_of_our_own_event_is_only_deleted() {
    let w = World::new().await;
    let case = delivered_case(&w).await;
    let ours = w.receipt_events(&case)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.hub.osl_ack_event(&case, &ours);
    assert_eq!(w.hub.notifications(CLIENT).len(), 1);
    let gets = w.hub.request_count(Route::GetEvent);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(w.hub.notifications(CLIENT).is_empty());
    assert_eq!(w.entries("new").len(), 1, "no entry for an acknowledgement");
    assert_eq!(
        w.hub.request_count(Route::GetEvent),
        gets,
        "eventStatus RECEIVED needs no GET"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_case_and_its_message_in_one_batch_arrive_in_order() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 100);
    let ev = w.hub.osl_post_event(
        &case,
        OslEvent {
            action_type: "SENDING_MESSAGE".into(),
            message: Some("Précision".into()),
            ..Default::default()
        },
    );
    w.hub.set_shuffle(Some(3));
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 2);
    let case_entry = entries.iter().find(|e| !e.ends_with(&ev)).unwrap();
    let ev_entry = entries.iter().find(|e| e.ends_with(&ev)).unwrap();
    let (a, b) = (
        manifest(&w, case_entry)["sequence"].as_u64().unwrap(),
        manifest(&w, ev_entry)["sequence"].as_u64().unwrap(),
    );
    assert!(a < b, "the case before its event (sequence {a} < {b})");
}

fn lying_case(w: &World, n: usize) -> String {
    let mut lying = AttachmentSpec::new(
        "acte.pdf",
        "DD_Certificatdedeces",
        "application/pdf",
        Content::Bytes(vec![7; 3000]),
    );
    lying.declared_size = Some(2000);
    let mut spec = CaseSpec::new("CERTDC");
    spec.external_id = Some(format!("DGS-CERTDC-BAD-{n:04}"));
    spec.attachments = vec![lying];
    w.hub.add_case(CLIENT, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_case_is_parked_then_quarantined_with_si_intg_error_and_reason() {
    let w = World::new().await;
    w.write_config_with("", "quarantine_after = \"2s\"");
    let bad = lying_case(&w, 0);
    let good: Vec<String> = (1..=30).map(|n| w.add_case(n, 1, 100)).collect();

    // Cycle 1: the bad case fails; the 30 behind it are delivered.
    let (code, out, _) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}");
    assert_eq!(w.entries("new").len(), 30);
    for g in &good {
        assert_eq!(w.receipt_events(g).len(), 1);
    }
    assert_eq!(w.hub.notifications(CLIENT).len(), 1);

    // Cycle 2: parked: owed in the state database, its notification deleted.
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    assert!(w.hub.notifications(CLIENT).is_empty(), "the queue is free");
    let (_, st, _) = w.run(&["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st[0]["parked"], 1, "{st}");

    // Cycle 3, after quarantine_after: quarantined, reported, on the hub too.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let q = w.entries("quarantine");
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0].contains(&bad));
    assert!(
        q[0].starts_with("DGS-CERTDC-BAD-0000~"),
        "named with its external id: {q:?}"
    );
    let reason =
        std::fs::read_to_string(w.spool().join("quarantine").join(&q[0]).join("reason.txt"))
            .unwrap();
    assert!(
        reason.contains(&bad) && reason.contains("SI_INTG_ERROR"),
        "{reason}"
    );
    assert!(reason.contains("bytes"), "names what failed: {reason}");
    assert_eq!(w.hub.case_status(&bad).as_deref(), Some("SI_INTG_ERROR"));
    let why: Vec<_> = w
        .hub
        .events(&bad)
        .into_iter()
        .filter(|e| e["caseNewStatus"] == "SI_INTG_ERROR")
        .collect();
    assert_eq!(why.len(), 1);
    assert!(why[0]["message"]
        .as_str()
        .unwrap()
        .contains("Intégration impossible"));
    assert!(err.contains("quarantined"), "the log says so: {err}");
    let (_, st, _) = w.run(&["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(
        (st[0]["parked"].as_i64(), st[0]["quarantined"].as_i64()),
        (Some(0), Some(1)),
        "{st}"
    );
    assert!(
        w.entries("new").iter().all(|e| !e.contains(&bad)),
        "never published"
    );

    // Later cycles leave it alone.
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        w.hub
            .events(&bad)
            .iter()
            .filter(|e| e["caseNewStatus"] == "SI_INTG_ERROR")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_of_failing_cases_is_parked_and_the_queue_moves() {
    let w = World::new().await;
    for n in 0..26 {
        lying_case(&w, n);
    }
    let good: Vec<String> = (100..105).map(|n| w.add_case(n, 1, 100)).collect();
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    for g in &good {
        assert_eq!(
            w.receipt_events(g).len(),
            1,
            "delivered despite 26 broken cases ahead"
        );
    }
    assert_eq!(w.entries("new").len(), 5);
    // The first batch (25 broken) failed twice and was parked; the 26th failed once, in the
    // second cycle, and keeps its notification until it fails again.
    assert_eq!(w.hub.notifications(CLIENT).len(), 1);
    let (_, st, _) = w.run(&["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st[0]["parked"], 25, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_case_is_delivered_once_the_hub_serves_it_right() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 50_000);
    w.hub.inject(
        Route::GetAttachment,
        fake_hubee::Fault::TruncateBody { after_bytes: 10 },
        18,
    );
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    assert!(w.hub.notifications(CLIENT).is_empty(), "parked");
    w.hub.clear_faults();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 1);
    assert!(sha256sum_check(&w.spool().join("new").join(&entries[0])));
    assert_eq!(w.receipt_events(&case).len(), 1);
    let (code, st, _) = w.run(&["status", "--json"]).await;
    assert_eq!(code, 0, "{st}");
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st[0]["parked"], 0);
}

/// An event listed while its case is still under way (its file slow to come) waits for the
/// case: it is never worked beside it, and its entry comes after the case's (issue 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_listed_while_its_case_is_under_way_waits_for_the_case() {
    let w = World::new().await;
    let cases: Vec<String> = (0..30).map(|n| w.add_case(n, 1, 2048)).collect();
    // Their events come after all the cases: in the second list, while the first cases run.
    let events: Vec<(String, String)> = cases
        .iter()
        .take(16)
        .map(|c| {
            let ev = w.hub.osl_post_event(
                c,
                OslEvent {
                    action_type: "SENDING_MESSAGE".into(),
                    message: Some("Précision".into()),
                    ..Default::default()
                },
            );
            (c.clone(), ev)
        })
        .collect();
    w.hub.inject(
        Route::GetAttachment,
        fake_hubee::Fault::SlowBody {
            chunk_delay_ms: 1000,
        },
        1,
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 46, "{entries:?}");
    let reqs = w.hub.requests();
    let slow_case = common::case_of_faulted_download(&w.hub);
    let (_, slow_event) = events
        .iter()
        .find(|(c, _)| *c == slow_case)
        .expect("the slow case is one of the first 16, which have an event");
    let receipt = common::first_event_post(&reqs, &slow_case);
    let event_read = reqs
        .iter()
        .position(|r| r.route == Some(Route::GetEvent) && r.path.ends_with(slow_event.as_str()))
        .expect("the slow case's event was read");
    assert!(
        event_read > receipt,
        "the event of case {slow_case} was read (request {event_read}) before its case was received (request {receipt})"
    );
    for (case, ev) in &events {
        let ev_entry = entries.iter().find(|e| e.ends_with(ev.as_str())).unwrap();
        let case_entry = entries
            .iter()
            .find(|e| !e.ends_with(ev.as_str()) && manifest(&w, e)["case_id"] == *case.as_str())
            .unwrap();
        let (a, b) = (
            manifest(&w, case_entry)["sequence"].as_u64().unwrap(),
            manifest(&w, ev_entry)["sequence"].as_u64().unwrap(),
        );
        assert!(a < b, "case {case} before its event (sequence {a} < {b})");
    }
}
