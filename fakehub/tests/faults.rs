//! Injected faults: what the client sees on the wire, and what the hub did.

mod common;

use common::*;
use fake_hubee::{Fault, Route};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn first_attachment(si: &Si, case: &str) -> (String, u64) {
    let v = si.hub.case_json(case).unwrap();
    let a = &v["attachments"][1]; // the 200 000-byte generated file
    (
        a["id"].as_str().unwrap().to_string(),
        a["size"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn reset_after_effect_applies_the_delete() {
    let si = Si::start().await;
    si.add_case();
    let id = si.notifications().await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    si.hub
        .inject(Route::DeleteNotification, Fault::ResetAfterEffect, 1);
    let r = si
        .req(reqwest::Method::DELETE, &format!("/notifications/{id}"))
        .send()
        .await;
    assert!(r.is_err(), "no response expected: {r:?}");
    assert!(
        si.hub.notifications(CLIENT).is_empty(),
        "the DELETE took effect"
    );
    let rec = si.hub.requests().into_iter().last().unwrap();
    assert_eq!(rec.route, Some(Route::DeleteNotification));
    assert_eq!(rec.status, None);
    assert_eq!(rec.fault, Some(Fault::ResetAfterEffect));
    // The retry finds it gone.
    assert_eq!(
        si.delete(&format!("/notifications/{id}")).await.status(),
        404
    );
}

#[tokio::test]
async fn reset_after_effect_applies_the_patch_and_creates_the_event() {
    let si = Si::start().await;
    let case = si.add_case();
    si.hub.inject(Route::PatchCase, Fault::ResetAfterEffect, 1);
    si.hub.inject(Route::PostEvent, Fault::ResetAfterEffect, 1);
    let r = si
        .req(reqwest::Method::PATCH, &format!("/cases/{case}"))
        .json(&json!({"status":"SENT"}))
        .send()
        .await;
    assert!(r.is_err());
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("SENT"));
    let r = si
        .req(reqwest::Method::POST, &format!("/cases/{case}/events"))
        .json(&json!({"actionType":"STATUS_UPDATE","notification":true,"caseCurrentStatus":"SENT","caseNewStatus":"SI_RECEIVED"}))
        .send()
        .await;
    assert!(r.is_err());
    let evs = si.hub.events(&case);
    assert_eq!(
        evs.len(),
        1,
        "the event exists although its answer was lost"
    );
    assert_eq!(
        si.hub.case_json(&case).unwrap()["events"][0]["id"],
        evs[0]["id"]
    );
}

#[tokio::test]
async fn reset_before_effect_changes_nothing() {
    let si = Si::start().await;
    let case = si.add_case();
    si.hub.inject(Route::PatchCase, Fault::ResetBeforeEffect, 1);
    let r = si
        .req(reqwest::Method::PATCH, &format!("/cases/{case}"))
        .json(&json!({"status":"SENT"}))
        .send()
        .await;
    assert!(r.is_err());
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));
    assert!(si.hub.status_patches(&case).is_empty());
    // One-shot: the next PATCH goes through.
    assert_eq!(
        si.patch(&format!("/cases/{case}"), json!({"status":"SENT"}))
            .await
            .0,
        204
    );
    let recs = si.hub.requests();
    let patches: Vec<_> = recs
        .iter()
        .filter(|r| r.route == Some(Route::PatchCase))
        .collect();
    assert_eq!(patches.len(), 2);
    assert_eq!(
        (patches[0].status, &patches[0].fault),
        (None, &Some(Fault::ResetBeforeEffect))
    );
    assert_eq!((patches[1].status, &patches[1].fault), (Some(204), &None));
}

#[tokio::test]
async fn resets_are_tcp_resets() {
    let si = Si::start().await;
    let case = si.add_case();
    si.hub.inject(Route::GetCase, Fault::ResetBeforeEffect, 1);
    let raw = raw(&si.hub, "GET", &format!("/cases/{case}"), &si.token).await;
    assert!(
        raw.head.is_empty() && raw.body.is_empty(),
        "not a byte of response"
    );
    assert_eq!(raw.read_error, Some(std::io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn reset_before_effect_on_an_upload_stores_nothing() {
    let si = Si::start().await;
    let case = si.add_case();
    let (_, ev) = si
        .post(&format!("/cases/{case}/events"), Si::deposit_body(300_000))
        .await;
    let eid = ev["id"].as_str().unwrap();
    let aid = ev["attachments"][0]["id"].as_str().unwrap();
    si.hub
        .inject(Route::PutEventAttachment, Fault::ResetBeforeEffect, 1);
    let r = si
        .req(
            reqwest::Method::PUT,
            &format!("/cases/{case}/events/{eid}/attachments/{aid}"),
        )
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 300_000])
        .send()
        .await;
    assert!(r.is_err());
    assert_eq!(
        si.hub.events(&case)[0]["attachments"][0]["status"],
        "PENDING"
    );
    assert!(si.hub.uploaded(&case, eid, aid).is_none());
}

#[tokio::test]
async fn truncated_body_announces_full_length() {
    let si = Si::start().await;
    let case = si.add_case();
    let (aid, size) = first_attachment(&si, &case);
    si.hub.inject(
        Route::GetAttachment,
        Fault::TruncateBody {
            after_bytes: 70_000,
        },
        1,
    );
    let raw = raw(
        &si.hub,
        "GET",
        &format!("/cases/{case}/attachments/{aid}"),
        &si.token,
    )
    .await;
    assert!(raw.head.starts_with("HTTP/1.1 200"), "{}", raw.head);
    assert_eq!(raw.header("content-length"), Some(size.to_string()));
    assert_eq!(raw.body.len(), 70_000, "exactly the bytes before the cut");
    let expected = fake_hubee::Content::Generated {
        size: 200_000,
        seed: 9,
    }
    .bytes_for_test();
    assert_eq!(raw.body, expected[..70_000]);
    // reqwest reports the short body as an error.
    si.hub.inject(
        Route::GetAttachment,
        Fault::TruncateBody { after_bytes: 1000 },
        1,
    );
    let r = si.get(&format!("/cases/{case}/attachments/{aid}")).await;
    assert!(r.bytes().await.is_err());
    let rec = si.hub.requests().into_iter().last().unwrap();
    assert_eq!(rec.status, Some(200));
    assert_eq!(rec.fault, Some(Fault::TruncateBody { after_bytes: 1000 }));
}

#[tokio::test]
async fn truncation_applies_to_json_routes_too() {
    let si = Si::start().await;
    let case = si.add_case();
    si.hub
        .inject(Route::GetCase, Fault::TruncateBody { after_bytes: 10 }, 1);
    let raw = raw(&si.hub, "GET", &format!("/cases/{case}"), &si.token).await;
    let full: usize = raw.header("content-length").unwrap().parse().unwrap();
    assert!(full > 100);
    assert_eq!(raw.body.len(), 10);
    assert_eq!(
        &raw.body,
        &si.hub.case_json(&case).unwrap().to_string().as_bytes()[..10]
    );
}

#[tokio::test]
async fn digest_faults_lie_or_omit() {
    let si = Si::start().await;
    let case = si.add_case();
    let (aid, _) = first_attachment(&si, &case);
    let p = format!("/cases/{case}/attachments/{aid}");
    si.hub.inject(Route::GetAttachment, Fault::WrongDigest, 1);
    si.hub.inject(Route::GetAttachment, Fault::MissingDigest, 1);
    let r = si.get(&p).await;
    let d = r.headers()["digest"].to_str().unwrap().to_string();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 200_000, "the body itself is intact");
    assert_ne!(d, b64_sha256(&body));
    assert_eq!(d.len(), 44, "still a well-formed base64 SHA-256");
    let r = si.get(&p).await;
    assert!(r.headers().get("digest").is_none());
    let r = si.get(&p).await;
    assert_eq!(r.headers()["digest"].to_str().unwrap(), b64_sha256(&body));
}

#[tokio::test]
async fn slow_body_arrives_late_but_whole() {
    let si = Si::start().await;
    let case = si.add_case();
    let (aid, _) = first_attachment(&si, &case);
    si.hub.inject(
        Route::GetAttachment,
        Fault::SlowBody { chunk_delay_ms: 40 },
        1,
    );
    let t = Instant::now();
    let r = si.get(&format!("/cases/{case}/attachments/{aid}")).await;
    let body = r.bytes().await.unwrap();
    // 200 000 bytes = 4 chunks of 64 KiB → 3 delays.
    assert!(
        t.elapsed() >= Duration::from_millis(120),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        body.to_vec(),
        fake_hubee::Content::Generated {
            size: 200_000,
            seed: 9
        }
        .bytes_for_test()
    );
    // A slow JSON body still parses.
    si.hub
        .inject(Route::GetCase, Fault::SlowBody { chunk_delay_ms: 5 }, 1);
    let (s, v) = si.get_json(&format!("/cases/{case}")).await;
    assert_eq!((s, v), (200, si.hub.case_json(&case).unwrap()));
}

#[tokio::test]
async fn status_faults_use_the_envelope_and_do_nothing() {
    let si = Si::start().await;
    let case = si.add_case();
    si.hub.inject(Route::PatchCase, Fault::Status(503), 2);
    for _ in 0..2 {
        let (s, v) = si
            .patch(&format!("/cases/{case}"), json!({"status":"SENT"}))
            .await;
        assert_eq!(s, 503);
        assert_eq!(
            v,
            json!({"errors":[{"code":503,"message":"Service Unavailable"}]})
        );
    }
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));
    assert_eq!(
        si.patch(&format!("/cases/{case}"), json!({"status":"SENT"}))
            .await
            .0,
        204
    );
}

#[tokio::test]
async fn too_many_requests_carries_retry_after() {
    let si = Si::start().await;
    si.hub.inject(
        Route::ListNotifications,
        Fault::TooManyRequests {
            retry_after_secs: 7,
        },
        1,
    );
    let r = si.get("/notifications").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["errors"][0]["code"], "900800",
        "a string code, as raw WSO2 faults have"
    );
}

#[tokio::test]
async fn killed_token_stays_dead() {
    let si = Si::start().await;
    si.hub.inject(Route::ListNotifications, Fault::KillToken, 1);
    for _ in 0..2 {
        let (s, v) = si.get_json("/notifications").await;
        assert_eq!((s, v["errors"][0]["code"].as_u64()), (401, Some(900901)));
    }
    let fresh = Si::login(si.hub.clone(), CLIENT, SECRET).await;
    assert_eq!(fresh.get_json("/notifications").await.0, 200);
}

#[tokio::test]
async fn token_route_can_fail_too() {
    let si = Si::start().await;
    si.hub.inject(Route::Token, Fault::Status(500), 1);
    assert_eq!(token(&si.hub, CLIENT, SECRET).await.status(), 500);
    si.hub.inject(Route::Token, Fault::ResetAfterEffect, 1);
    let r = reqwest::Client::new()
        .post(si.hub.token_url())
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("scope", "SI"), ("grant_type", "client_credentials")])
        .send()
        .await;
    assert!(r.is_err());
    assert_eq!(token(&si.hub, CLIENT, SECRET).await.status(), 200);
}

async fn campaign(seed: u64) -> Vec<Option<u16>> {
    let si = Si::start().await;
    si.hub.inject_random(
        Some(vec![Route::ListNotifications]),
        0.5,
        vec![
            Fault::Status(500),
            Fault::Status(502),
            Fault::TooManyRequests {
                retry_after_secs: 1,
            },
        ],
        seed,
    );
    for _ in 0..30 {
        let _ = si.get("/notifications").await;
        // Other routes are untouched by this campaign.
        assert_eq!(
            si.get_json("/cases/94b1b09d-b47f-4480-9b48-93b8b36108f2")
                .await
                .0,
            404
        );
    }
    si.hub
        .requests()
        .iter()
        .filter(|r| r.route == Some(Route::ListNotifications))
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn random_faults_are_reproducible_by_seed() {
    let a = campaign(11).await;
    let b = campaign(11).await;
    let c = campaign(12).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    let failed = a.iter().filter(|s| **s != Some(200)).count();
    assert!(
        (5..=25).contains(&failed),
        "about half of 30 fail: {failed}"
    );
}

#[tokio::test]
async fn one_shot_faults_come_before_random_ones_and_clear_faults_stops_both() {
    let si = Si::start().await;
    si.hub.inject_random(None, 1.0, vec![Fault::Status(500)], 1);
    si.hub
        .inject(Route::ListNotifications, Fault::Status(503), 1);
    assert_eq!(si.get("/notifications").await.status(), 503);
    assert_eq!(si.get("/notifications").await.status(), 500);
    si.hub
        .inject(Route::ListNotifications, Fault::Status(503), 5);
    si.hub.clear_faults();
    assert_eq!(si.get("/notifications").await.status(), 200);
}
