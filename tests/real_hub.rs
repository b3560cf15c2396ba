//! Robust to the real hub (PROTOCOL §10.1, §10.9, §10.10, §10.17-10.19): the receipt on a hub
//! where an event's `caseNewStatus` moves the case and on one where only PATCH does, with a
//! portal agent writing to the same cases, the cap on events per case, and downloads that
//! come without `Content-Length`. Every test runs the real binary against fake-hubee.

mod common;

use common::{
    assert_status_events_truthful, assert_traffic_follows_the_schema, hubs, traffic_violations,
    World, CLIENT,
};
use fake_hubee::{AgentAction, Fault, HubBehaviour, Route};
use serde_json::Value;

async fn world(b: &HubBehaviour) -> World {
    let w = World::new().await;
    w.hub.set_behaviour(b.clone());
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_posts_one_truthful_event_and_reaches_its_status_on_both_kinds_of_hub() {
    for (hub, b) in hubs() {
        let w = world(&b).await;
        let case = w.add_case(1, 2, 3_000);
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{hub}: {out}{err}");
        assert_eq!(
            w.hub.case_status(&case).as_deref(),
            Some("IN_PROGRESS"),
            "{hub}"
        );
        let receipts = w.receipt_events(&case);
        assert_eq!(receipts.len(), 1, "{hub}: {receipts:#?}");
        // One step that every reading of the status table allows.
        assert_eq!(receipts[0]["caseCurrentStatus"], "SI_RECEIVED", "{hub}");
        assert_eq!(receipts[0]["caseNewStatus"], "IN_PROGRESS", "{hub}");
        assert_status_events_truthful(&w.hub, &case, hub);
        assert!(w.hub.notifications(CLIENT).is_empty(), "{hub}");
        // Where the event moves the case, no PATCH repeats it.
        let patches = w.hub.status_patches(&case);
        if b.events_move_status {
            assert_eq!(patches, ["SENT", "SI_RECEIVED"], "{hub}");
        } else {
            assert_eq!(patches, ["SENT", "SI_RECEIVED", "IN_PROGRESS"], "{hub}");
        }
        assert_traffic_follows_the_schema(&w.hub, hub);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_whose_answer_was_lost_and_is_refused_on_retry_counts_as_done_after_a_read() {
    // The PATCH is applied, its answer lost; the retry finds the status already there and the
    // hub answers 400 "Case status cannot change from SENT to SENT".
    let w = world(&HubBehaviour::default()).await;
    let case = w.add_case(1, 1, 1_000);
    w.hub.inject(Route::PatchCase, Fault::ResetAfterEffect, 1);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    assert_eq!(w.receipt_events(&case).len(), 1);
    let refused = w
        .hub
        .requests()
        .iter()
        .filter(|r| r.route == Some(Route::PatchCase) && r.status == Some(400))
        .count();
    assert_eq!(refused, 1, "the retried PATCH met the same-status refusal");
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_an_agent_moved_past_the_receipt_gets_no_receipt_event_and_is_acknowledged() {
    for (hub, b) in hubs() {
        let w = world(&b).await;
        let case = w.add_case(1, 1, 1_000);
        // The agent opens the case in the portal while hubee-sync downloads its file, and
        // decides it: DONE.
        w.hub
            .agent_before(Route::GetAttachment, Some(&case), AgentAction::AttachDl);
        w.hub.agent_before(
            Route::GetAttachment,
            Some(&case),
            AgentAction::SetStatus("DONE".into()),
        );
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{hub}: {out}{err}");
        assert_eq!(w.hub.case_status(&case).as_deref(), Some("DONE"), "{hub}");
        assert!(w.receipt_events(&case).is_empty(), "{hub}");
        assert!(
            w.hub.status_patches(&case).is_empty(),
            "{hub}: never moved back"
        );
        assert!(w.hub.notifications(CLIENT).is_empty(), "{hub}");
        assert_eq!(w.entries("new").len(), 1, "{hub}: delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_move_between_our_read_and_our_event_makes_no_contradictory_event() {
    // A strict hub refuses our event (its current status is stale now); hubee-sync reads
    // again, finds the case past the receipt, and stops there: no second try, no loop.
    let w = world(&HubBehaviour::default()).await;
    let case = w.add_case(1, 1, 1_000);
    w.hub
        .agent_before(Route::PostEvent, Some(&case), AgentAction::AttachDl);
    w.hub.agent_before(
        Route::PostEvent,
        Some(&case),
        AgentAction::SetStatus("REFUSED".into()),
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("REFUSED"));
    assert!(w.receipt_events(&case).is_empty());
    assert_status_events_truthful(&w.hub, &case, "strict hub");
    assert!(w.hub.notifications(CLIENT).is_empty());
    let posts = w.hub.request_count(Route::PostEvent);
    assert_eq!(posts, 1, "one refused POST, not a loop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_refused_by_the_event_cap_keeps_the_delivery_and_says_so() {
    for (hub, b) in hubs() {
        let w = world(&b).await;
        w.hub.update_behaviour(|b| b.max_events_per_case = Some(0));
        let case = w.add_case(1, 1, 1_000);
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{hub}: {out}{err}");
        // Delivered, acknowledged, the status still set by PATCH; the journal says why there
        // is no receipt event.
        assert_eq!(w.entries("new").len(), 1, "{hub}");
        assert!(w.hub.notifications(CLIENT).is_empty(), "{hub}");
        assert!(w.hub.events(&case).is_empty(), "{hub}");
        assert_eq!(
            w.hub.case_status(&case).as_deref(),
            Some("IN_PROGRESS"),
            "{hub}"
        );
        assert!(err.contains("limit of events"), "{hub}: {err}");
        let posts = w.hub.request_count(Route::PostEvent);
        assert_eq!(posts, 1, "{hub}: the refusal is final, never retried");
        let (code, out, _) = w.run(&["status"]).await;
        assert_eq!(code, 0, "{hub}: {out}");
        assert!(
            out.contains("événements refusés par le hub"),
            "{hub}: {out}"
        );
        assert!(out.contains(&case), "{hub}: {out}");
        // A second cycle posts nothing more.
        let (code, _, _) = w.run(&["once"]).await;
        assert_eq!(code, 0);
        assert_eq!(w.hub.request_count(Route::PostEvent), 1, "{hub}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_short_without_content_length_is_never_published() {
    let w = world(&HubBehaviour::default()).await;
    w.write_config("download_attempts = 2");
    let case = w.add_case(1, 1, 200_000);
    // Every attempt this cycle ends cleanly, 1,000 bytes short of the declared size.
    w.hub.inject(
        Route::GetAttachment,
        Fault::CutShort {
            after_bytes: 199_000,
        },
        2,
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(w.entries("new").is_empty(), "nothing short is published");
    assert_eq!(w.hub.notifications(CLIENT).len(), 1, "not acknowledged");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));
    assert!(
        w.hub
            .requests()
            .iter()
            .filter(|r| r.route == Some(Route::GetAttachment))
            .all(|r| r.status == Some(200)),
        "the hub answered 200 each time: only the byte count told"
    );
    // The next cycle gets the whole file.
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let new = w.entries("new");
    assert_eq!(new.len(), 1);
    assert!(common::sha256sum_check(
        &w.spool().join("new").join(&new[0])
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_case_goes_to_si_intg_error_with_one_truthful_event_on_both_kinds_of_hub() {
    for (hub, b) in hubs() {
        let w = world(&b).await;
        w.write_config_with("download_attempts = 1", "quarantine_after = \"1s\"");
        let case = w.add_case(1, 1, 1_000);
        w.hub.inject(Route::GetAttachment, Fault::Status(503), 100);
        for _ in 0..3 {
            let _ = w.run(&["once"]).await;
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        }
        let _ = w.run(&["once"]).await;
        assert_eq!(
            w.hub.case_status(&case).as_deref(),
            Some("SI_INTG_ERROR"),
            "{hub}"
        );
        let ours: Vec<Value> = w
            .hub
            .events(&case)
            .into_iter()
            .filter(|e| {
                e["comment"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("hubee-sync:quarantine:"))
            })
            .collect();
        assert_eq!(ours.len(), 1, "{hub}: {ours:#?}");
        assert_status_events_truthful(&w.hub, &case, hub);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_check_finds_a_request_that_breaks_the_official_spec() {
    // A check that cannot fail proves nothing: requests as a careless client would send them.
    let w = World::new().await;
    let case = w.add_case(1, 1, 1_000);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    assert!(
        traffic_violations(&w.hub).is_ok(),
        "hubee-sync's own traffic passes"
    );
    let token: Value = reqwest::Client::new()
        .post(w.hub.token_url())
        .basic_auth(CLIENT, Some(common::SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "SI")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    // caseCurrentStatus longer than its 15 characters, and a read-only field sent.
    let _ = http
        .post(format!(
            "{}/teledossiers/v1/cases/{case}/events",
            w.hub.api_url()
        ))
        .bearer_auth(&bearer)
        .json(
            &serde_json::json!({"actionType": "SENDING_MESSAGE", "notification": true,
            "message": "m", "caseCurrentStatus": "A_STATUS_FAR_TOO_LONG", "status": "SENT"}),
        )
        .send()
        .await
        .unwrap();
    // A query parameter the spec does not know.
    let _ = http
        .get(format!(
            "{}/teledossiers/v1/notifications?pageSize=10",
            w.hub.api_url()
        ))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    let v = traffic_violations(&w.hub).expect_err("the careless requests are found");
    assert!(v.contains("caseCurrentStatus"), "{v}");
    assert!(v.contains("body status"), "{v}");
    assert!(
        v.contains("query parameter pageSize is not in the spec"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_an_agent_took_exactly_to_the_receipt_status_costs_no_event() {
    // Every event counts against the hub's cap: none is posted that says nothing new.
    for (hub, b) in hubs() {
        let w = world(&b).await;
        let case = w.add_case(1, 1, 1_000);
        w.hub
            .agent_before(Route::GetAttachment, Some(&case), AgentAction::AttachDl);
        w.hub.agent_before(
            Route::GetAttachment,
            Some(&case),
            AgentAction::SetStatus("IN_PROGRESS".into()),
        );
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{hub}: {out}{err}");
        assert_eq!(
            w.hub.case_status(&case).as_deref(),
            Some("IN_PROGRESS"),
            "{hub}"
        );
        assert!(w.receipt_events(&case).is_empty(), "{hub}");
        assert!(w.hub.status_patches(&case).is_empty(), "{hub}");
        assert!(w.hub.notifications(CLIENT).is_empty(), "{hub}");
    }
}
