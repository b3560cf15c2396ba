//! The HubEE behaviour an SI sees (PROTOCOL §2–§7), over real HTTP.

mod common;

use common::*;
use fake_hubee::{
    AgentAction, AttachmentSpec, CaseSpec, Content, FakeHub, Fault, HubBehaviour, OslEvent, Route,
};
use serde_json::{json, Value};

// ------------------------------------------------------------------ §2 tokens

#[tokio::test]
async fn token_is_issued_for_basic_client_credentials() {
    let hub = FakeHub::start().await;
    hub.add_client("a", "b", "CERTDC");
    let r = token(&hub, "a", "b").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["scope"], "SI");
    assert!(v["access_token"].as_str().unwrap().len() >= 16);
}

#[tokio::test]
async fn bad_credentials_get_invalid_client() {
    let hub = FakeHub::start().await;
    hub.add_client("a", "b", "CERTDC");
    let r = token(&hub, "a", "wrong").await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"], "invalid_client");
    assert_eq!(
        v["error_description"],
        "A valid OAuth client could not be found for client_id: a"
    );
}

#[tokio::test]
async fn expired_token_gets_wso2_401() {
    let hub = FakeHub::start().await;
    hub.add_client(CLIENT, SECRET, "CERTDC");
    hub.set_token_lifetime(0);
    let si = Si::login(hub.clone(), CLIENT, SECRET).await;
    let (s, v) = si.get_json("/notifications").await;
    assert_eq!(s, 401);
    assert_eq!(
        v,
        json!({"errors":[{"code":900901,"message":"Invalid Credentials : Invalid Credentials. Make sure you have given the correct access token"}]})
    );
    // A fresh token with a normal lifetime works.
    hub.set_token_lifetime(3600);
    let si = Si::login(hub, CLIENT, SECRET).await;
    assert_eq!(si.get_json("/notifications").await.0, 200);
}

#[tokio::test]
async fn expire_all_tokens_kills_issued_tokens_only() {
    let si = Si::start().await;
    assert_eq!(si.get_json("/notifications").await.0, 200);
    si.hub.expire_all_tokens();
    assert_eq!(si.get_json("/notifications").await.0, 401);
    let again = Si::login(si.hub.clone(), CLIENT, SECRET).await;
    assert_eq!(again.get_json("/notifications").await.0, 200);
}

#[tokio::test]
async fn missing_token_gets_wso2_401() {
    let si = Si::start().await;
    let r = reqwest::get(url(&si.hub, "/notifications")).await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], 900901);
}

// ------------------------------------------------------------------ §3 conventions

#[tokio::test]
async fn identifying_headers_longer_than_50_chars_are_rejected() {
    let si = Si::start().await;
    let r = si
        .http
        .get(url(&si.hub, "/notifications"))
        .bearer_auth(&si.token)
        .header("editorName", "x".repeat(51))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("@header.editorName"), "{msg}");
    let rec = si.hub.requests();
    assert_eq!(rec.last().unwrap().header("editorName").unwrap().len(), 51);
}

#[tokio::test]
async fn path_ids_are_validated_as_uuids() {
    let si = Si::start().await;
    let r = si.delete("/notifications/dddddd").await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["errors"][0]["message"],
        "Bad Request : Validation failed.\n[ERROR][REQUEST][DELETE /teledossiers/v1/notifications/dddddd @path.notificationId] Input string \"dddddd\" is not a valid UUID"
    );
    assert_eq!(v["errors"][0]["code"], 400);
}

#[tokio::test]
async fn requests_are_recorded_with_their_headers() {
    let si = Si::start().await;
    si.notifications().await;
    let recs = si.hub.requests();
    assert_eq!(recs.len(), 2); // token + list
    assert_eq!(recs[0].route, Some(Route::Token));
    let r = &recs[1];
    assert_eq!(r.route, Some(Route::ListNotifications));
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/teledossiers/v1/notifications");
    assert_eq!(r.status, Some(200));
    assert_eq!(r.header("editorName"), Some("Commune de Test"));
    assert_eq!(r.header("applicationName"), Some("hubee-sync"));
    assert_eq!(r.header("softwareVersion"), Some("0.1.0"));
    assert_eq!(si.hub.request_count(Route::ListNotifications), 1);
}

// ------------------------------------------------------------------ §4 N1/N2 notifications

#[tokio::test]
async fn notifications_stay_until_deleted() {
    let si = Si::start().await;
    let case = si.add_case();
    for _ in 0..2 {
        let n = si.notifications().await;
        assert_eq!(n.len(), 1);
        assert_eq!(n[0]["caseId"], case.as_str());
        assert_eq!(n[0]["eventId"], Value::Null);
        assert_eq!(n[0]["processCode"], "CERTDC");
    }
    let id = si.notifications().await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        si.delete(&format!("/notifications/{id}")).await.status(),
        204
    );
    assert!(si.notifications().await.is_empty());
    assert!(si.hub.notifications(CLIENT).is_empty());
    // Deleting again: 404 with the §4 message.
    let r = si.delete(&format!("/notifications/{id}")).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["message"], "Notification is not found");
}

#[tokio::test]
async fn batch_is_capped_at_25() {
    let si = Si::start().await;
    let cases: Vec<String> = (0..30).map(|_| si.add_case()).collect();
    let (_, v) = si.get_json("/notifications?maxResult=100").await;
    let batch = v.as_array().unwrap();
    assert_eq!(batch.len(), 25);
    // Oldest first.
    for (n, c) in batch.iter().zip(&cases) {
        assert_eq!(n["caseId"], c.as_str());
    }
    let (_, v) = si.get_json("/notifications").await;
    assert_eq!(v.as_array().unwrap().len(), 25, "default maxResult is 25");
    let (_, v) = si.get_json("/notifications?maxResult=10").await;
    assert_eq!(v.as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn max_result_must_be_a_number() {
    let si = Si::start().await;
    let (s, v) = si.get_json("/notifications?maxResult=abc").await;
    assert_eq!(s, 400);
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("@query.maxResult] Instance type (string)"));
}

#[tokio::test]
async fn event_details_only_when_asked() {
    let si = Si::start().await;
    si.add_case();
    let (_, v) = si.get_json("/notifications").await;
    assert!(v[0].get("eventStatus").is_none());
    assert!(v[0].get("eventActionType").is_none());
    let (_, v) = si.get_json("/notifications?eventDetails=true").await;
    assert_eq!(v[0]["eventStatus"], Value::Null);
    assert!(v[0].as_object().unwrap().contains_key("eventActionType"));
}

#[tokio::test]
async fn notifications_belong_to_their_client() {
    let si = Si::start().await;
    si.hub.add_client("other", "pw", "EtatCivil");
    let case = si.add_case();
    let other = Si::login(si.hub.clone(), "other", "pw").await;
    assert!(other.notifications().await.is_empty());
    let n = si.notifications().await;
    // Another SI can neither read the case nor delete the notification: 403.
    let (s, v) = other.get_json(&format!("/cases/{case}")).await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (403, Some("Unauthorized user"))
    );
    let id = n[0]["id"].as_str().unwrap();
    assert_eq!(
        other.delete(&format!("/notifications/{id}")).await.status(),
        403
    );
}

#[tokio::test]
async fn shuffled_batches_are_reproducible() {
    let si = Si::start().await;
    let cases: Vec<String> = (0..10).map(|_| si.add_case()).collect();
    si.hub.set_shuffle(Some(42));
    let order = |v: &Vec<Value>| -> Vec<String> {
        v.iter()
            .map(|n| n["caseId"].as_str().unwrap().to_string())
            .collect()
    };
    let a = order(&si.notifications().await);
    assert_ne!(a, cases);
    let mut sorted = a.clone();
    sorted.sort();
    let mut expected = cases.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    si.hub.set_shuffle(Some(42));
    assert_eq!(order(&si.notifications().await), a);
    si.hub.set_shuffle(None);
    assert_eq!(order(&si.notifications().await), cases);
}

// ------------------------------------------------------------------ §4 C1–C3 cases

#[tokio::test]
async fn case_json_has_the_documented_fields_and_tolerable_extras() {
    let si = Si::start().await;
    let case = si.add_case();
    let (s, v) = si.get_json(&format!("/cases/{case}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["id"], case.as_str());
    assert_eq!(v["status"], "HUBEE_NOTIFIED");
    assert_eq!(v["processCode"], "CERTDC");
    assert!(v["externalId"].as_str().unwrap().starts_with("DGS-CERTDC-"));
    assert!(v["externalId"].as_str().unwrap().len() <= 30);
    assert_eq!(v["transmissionDateTime"], Value::Null);
    assert_eq!(v["partnerAttributes"], Value::Null);
    assert_eq!(v["recipient"]["type"], "SI");
    assert_eq!(
        v["recipient"]["companyRegister"].as_str().unwrap().len(),
        14
    );
    assert!(v["applicant"]["lastName"].is_string());
    assert!(
        v["folderId"].is_string(),
        "an unknown field for clients to ignore"
    );
    assert_eq!(v["events"], json!([]));
    let atts = v["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2);
    assert_eq!(atts[0]["fileName"], "certificat.xml");
    assert_eq!(atts[0]["status"], "RECEIVED");
    assert_eq!(atts[0]["size"], 13);
    assert_eq!(atts[1]["size"], 200_000);
    assert_eq!(si.hub.case_json(&case).unwrap(), v);
    let (_, lite) = si.get_json(&format!("/cases/{case}?lite=true")).await;
    assert!(lite.get("events").is_none());
}

#[tokio::test]
async fn unknown_case_is_404() {
    let si = Si::start().await;
    let (s, v) = si
        .get_json("/cases/94b1b09d-b47f-4480-9b48-93b8b36108f2")
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        v,
        json!({"errors":[{"code":404,"message":"Case is not found"}]})
    );
}

#[tokio::test]
async fn case_walk_is_permissive_by_default() {
    let si = Si::start().await;
    let case = si.add_case();
    let p = format!("/cases/{case}");
    // [PM] B: HUBEE_NOTIFIED → IN_PROGRESS directly.
    assert_eq!(si.patch(&p, json!({"status": "IN_PROGRESS"})).await.0, 204);
    assert_eq!(si.patch(&p, json!({"status": "DONE"})).await.0, 204);
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("DONE"));
    assert_eq!(si.hub.status_patches(&case), vec!["IN_PROGRESS", "DONE"]);
    // A PATCH notifies nobody.
    assert_eq!(si.hub.notifications(CLIENT).len(), 1);
    assert!(si.hub.osl_notifications(&case).is_empty());
}

#[tokio::test]
async fn strict_mode_follows_the_ci_column_only() {
    let si = Si::start().await;
    si.hub.set_strict_transitions(true);
    let case = si.add_case();
    let p = format!("/cases/{case}");
    let (s, v) = si.patch(&p, json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(s, 400);
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("HUBEE_NOTIFIED") && msg.contains("IN_PROGRESS"),
        "{msg}"
    );
    for st in ["SENT", "SI_RECEIVED", "IN_PROGRESS", "DONE"] {
        assert_eq!(si.patch(&p, json!({"status": st})).await.0, 204, "{st}");
    }
    assert_eq!(
        si.hub.status_patches(&case),
        vec!["SENT", "SI_RECEIVED", "IN_PROGRESS", "DONE"]
    );
}

#[tokio::test]
async fn patch_to_the_current_status_is_refused_by_default() {
    let si = Si::start().await;
    let case = si.add_case();
    let p = format!("/cases/{case}");
    assert_eq!(si.patch(&p, json!({"status": "SENT"})).await.0, 204);
    let (s, v) = si.patch(&p, json!({"status": "SENT"})).await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (400, Some("Case status cannot change from SENT to SENT"))
    );
    assert_eq!(si.hub.status_patches(&case), vec!["SENT"]);
}

#[tokio::test]
async fn patch_to_the_current_status_is_a_no_op_when_the_behaviour_says_so() {
    let si = Si::start().await;
    si.hub.set_behaviour(HubBehaviour::patch_only());
    let case = si.add_case();
    let p = format!("/cases/{case}");
    assert_eq!(si.patch(&p, json!({"status": "SENT"})).await.0, 204);
    assert_eq!(si.patch(&p, json!({"status": "SENT"})).await.0, 204);
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("SENT"));
}

#[tokio::test]
async fn invalid_or_osl_statuses_are_rejected() {
    let si = Si::start().await;
    let case = si.add_case();
    let p = format!("/cases/{case}");
    assert_eq!(
        si.patch(&p, json!({"status": "DONE"})).await.0,
        400,
        "HUBEE_NOTIFIED → DONE"
    );
    assert_eq!(si.patch(&p, json!({"status": "CLOSED"})).await.0, 400);
    assert_eq!(si.patch(&p, json!({"status": "SENDED"})).await.0, 400);
    assert_eq!(si.patch(&p, json!({"status": 3})).await.0, 400);
    assert_eq!(si.patch(&p, json!({"status": "X".repeat(51)})).await.0, 400);
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));
    assert!(si.hub.status_patches(&case).is_empty());
}

#[tokio::test]
async fn post_with_method_override_patches_the_case() {
    let si = Si::start().await;
    let case = si.add_case();
    let p = format!("/cases/{case}");
    let r = si
        .req(reqwest::Method::POST, &p)
        .header("X-HTTP-Method-Override", "PATCH")
        .json(&json!({"status": "SI_RECEIVED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("SI_RECEIVED"));
    // Without the header the request validator refuses it.
    let (s, v) = si.post(&p, json!({"status": "IN_PROGRESS"})).await;
    assert_eq!(s, 400);
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("X-HTTP-Method-Override"));
    assert_eq!(si.hub.request_count(Route::PatchCase), 2);
}

#[tokio::test]
async fn case_attachment_is_served_with_length_and_digest() {
    let si = Si::start().await;
    si.hub.set_behaviour(HubBehaviour::patch_only());
    let case = si.add_case();
    let (_, v) = si.get_json(&format!("/cases/{case}")).await;
    for att in v["attachments"].as_array().unwrap() {
        let r = si
            .get(&format!(
                "/cases/{case}/attachments/{}",
                att["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        assert_eq!(
            r.headers()["content-length"].to_str().unwrap(),
            att["size"].to_string()
        );
        let digest = r.headers()["digest"].to_str().unwrap().to_string();
        let body = r.bytes().await.unwrap();
        assert_eq!(body.len() as u64, att["size"].as_u64().unwrap());
        assert_eq!(digest, b64_sha256(&body));
    }
    let big = Content::Generated {
        size: 200_000,
        seed: 9,
    };
    let r = si
        .get(&format!(
            "/cases/{case}/attachments/{}",
            v["attachments"][1]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.bytes().await.unwrap().to_vec(), big.bytes_for_test());
}

#[tokio::test]
async fn only_received_files_are_served() {
    let si = Si::start().await;
    let mut spec = CaseSpec::new("CERTDC");
    spec.attachments.push(
        AttachmentSpec::new(
            "a.pdf",
            "VA_CertificatdeDeces",
            "application/pdf",
            Content::Bytes(b"%PDF".to_vec()),
        )
        .with_status("PENDING"),
    );
    let case = si.hub.add_case(CLIENT, spec);
    let (_, v) = si.get_json(&format!("/cases/{case}")).await;
    let att = v["attachments"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(v["attachments"][0]["status"], "PENDING");
    let p = format!("/cases/{case}/attachments/{att}");
    let (s, v) = si.get_json(&p).await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (404, Some("File is not found"))
    );
    si.hub.set_attachment_status(&case, &att, "RECEIVED");
    assert_eq!(si.get(&p).await.bytes().await.unwrap().as_ref(), b"%PDF");
}

#[tokio::test]
async fn declared_size_can_lie() {
    let si = Si::start().await;
    let mut spec = CaseSpec::new("CERTDC");
    let mut a = AttachmentSpec::new(
        "a.xml",
        "DD_Certificatdedeces",
        "application/xml",
        Content::Bytes(vec![b'x'; 100]),
    );
    a.declared_size = Some(120);
    spec.attachments.push(a);
    let case = si.hub.add_case(CLIENT, spec);
    let v = si.hub.case_json(&case).unwrap();
    assert_eq!(v["attachments"][0]["size"], 120);
    let r = si
        .get(&format!(
            "/cases/{case}/attachments/{}",
            v["attachments"][0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.bytes().await.unwrap().len(), 100);
}

// ------------------------------------------------------------------ §4 E1–E4, A1, A2 events

#[tokio::test]
async fn status_update_event_is_sent_and_does_not_move_the_case_on_a_patch_only_hub() {
    let si = Si::start().await;
    si.hub.set_behaviour(HubBehaviour::patch_only());
    let case = si.add_case();
    let (s, ev) = si
        .post(
            &format!("/cases/{case}/events"),
            json!({"actionType":"STATUS_UPDATE","author":"Service instructeur X","notification":true,
                   "caseCurrentStatus":"HUBEE_NOTIFIED","caseNewStatus":"SENT","message":"Changement de statut à SENT"}),
        )
        .await;
    assert_eq!(s, 201, "{ev}");
    assert_eq!(ev["status"], "SENT");
    assert_eq!(ev["actionType"], "STATUS_UPDATE");
    assert_eq!(ev["transmitter"]["type"], "SI");
    assert_eq!(ev["partnerInfo"]["editorName"], "Commune de Test");
    assert_eq!(ev["updateDateTime"], Value::Null);
    assert!(ev["createDateTime"].as_str().unwrap().ends_with("+00:00"));
    // §10.1: the case status is not changed by an event.
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));
    let id = ev["id"].as_str().unwrap();
    let (s, got) = si.get_json(&format!("/cases/{case}/events/{id}")).await;
    assert_eq!((s, &got), (200, &ev));
    assert_eq!(si.hub.events(&case), vec![ev.clone()]);
    assert_eq!(si.hub.case_json(&case).unwrap()["events"], json!([ev]));
    // The OSL is told; the SI is not.
    assert_eq!(si.hub.osl_notifications(&case).len(), 1);
    assert_eq!(si.hub.notifications(CLIENT).len(), 1);
}

#[tokio::test]
async fn rc002_rules_on_action_types_and_attachments() {
    let si = Si::start().await;
    let case = si.add_case();
    let p = format!("/cases/{case}/events");
    let bad = [
        json!({"actionType":"ATTACH_DEPOSIT","notification":true}),
        json!({"actionType":"ATTACH_DEPOSIT","notification":true,"attachments":[]}),
        json!({"actionType":"SENDING_MESSAGE","notification":true,"message":"m",
               "attachments":[{"fileName":"a","type":"t","size":1,"mimeType":"application/pdf"}]}),
        json!({"actionType":"ADD_AWAITING","notification":true}),
        json!({"actionType":"STATUS_UPDATE"}),
        json!({"actionType":"STATUS_UPDATE","notification":"yes"}),
        json!({"actionType":"ATTACH_DEPOSIT","notification":true,"attachments":[{"fileName":"a","type":"t","mimeType":"x"}]}),
        json!({"actionType":"STATUS_UPDATE","notification":true,"message":"m".repeat(1001)}),
    ];
    for body in bad {
        let (s, v) = si.post(&p, body.clone()).await;
        assert_eq!(s, 400, "{body} → {v}");
        assert_eq!(v["errors"][0]["code"], 400);
    }
    assert!(si.hub.events(&case).is_empty());
    let r = si
        .req(reqwest::Method::POST, &p)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn posting_an_event_on_an_unknown_case_is_404() {
    let si = Si::start().await;
    let (s, v) = si
        .post(
            "/cases/94b1b09d-b47f-4480-9b48-93b8b36108f2/events",
            json!({"actionType":"STATUS_UPDATE","notification":true}),
        )
        .await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (404, Some("Case is not found"))
    );
}

#[tokio::test]
async fn attach_deposit_cannot_be_sent_before_uploads() {
    let si = Si::start().await;
    let case = si.add_case();
    let file = b"<attestation/>".to_vec();
    let (s, ev) = si
        .post(
            &format!("/cases/{case}/events"),
            Si::deposit_body(file.len() as u64),
        )
        .await;
    assert_eq!(s, 201, "{ev}");
    assert_eq!(ev["status"], "IN_PROGRESS");
    assert_eq!(ev["attachments"][0]["status"], "PENDING");
    let eid = ev["id"].as_str().unwrap();
    let aid = ev["attachments"][0]["id"].as_str().unwrap();
    let ev_path = format!("/cases/{case}/events/{eid}");
    // No notification for anyone while IN_PROGRESS.
    assert!(si.hub.osl_notifications(&case).is_empty());
    let (s, v) = si.patch(&ev_path, json!({"status":"SENT"})).await;
    assert_eq!(s, 400, "{v}");
    // Wrong size, wrong digest: refused, file still PENDING.
    let put = format!("{ev_path}/attachments/{aid}");
    let (s, v) = si.put_bytes(&put, b"short".to_vec(), None).await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (400, Some("Size does not match with attachment meta-data"))
    );
    let (s, _) = si
        .put_bytes(&put, file.clone(), Some(&b64_sha256(b"other")))
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        si.hub.events(&case)[0]["attachments"][0]["status"],
        "PENDING"
    );
    // Right size and digest (RFC 3230 prefix tolerated).
    let (s, v) = si
        .put_bytes(
            &put,
            file.clone(),
            Some(&format!("sha-256={}", b64_sha256(&file))),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(
        si.hub.events(&case)[0]["attachments"][0]["status"],
        "RECEIVED"
    );
    let (bytes, sha) = si.hub.uploaded(&case, eid, aid).unwrap();
    assert_eq!(bytes.unwrap(), file);
    assert_eq!(sha, Content::Bytes(file.clone()).sha256_hex());
    // The SI can read its own file back.
    let r = si.get(&put).await;
    assert_eq!(r.headers()["digest"].to_str().unwrap(), b64_sha256(&file));
    assert_eq!(r.bytes().await.unwrap().to_vec(), file);
    // Now SENT; the OSL is notified; SENT again is a no-op; DELETE is no longer possible.
    assert_eq!(si.patch(&ev_path, json!({"status":"SENT"})).await.0, 204);
    assert_eq!(si.hub.events(&case)[0]["status"], "SENT");
    assert_eq!(si.hub.osl_notifications(&case).len(), 1);
    assert_eq!(si.patch(&ev_path, json!({"status":"SENT"})).await.0, 204);
    let r = si.delete(&ev_path).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["message"], "Bad Request");
    // Uploading after SENT is refused.
    assert_eq!(si.put_bytes(&put, file, None).await.0, 400);
    // The SI cannot acknowledge its own event.
    assert_eq!(
        si.patch(&ev_path, json!({"status":"RECEIVED"})).await.0,
        400
    );
}

#[tokio::test]
async fn an_abandoned_deposit_can_be_deleted() {
    let si = Si::start().await;
    let case = si.add_case();
    let (_, ev) = si
        .post(&format!("/cases/{case}/events"), Si::deposit_body(10))
        .await;
    let ev_path = format!("/cases/{case}/events/{}", ev["id"].as_str().unwrap());
    assert_eq!(si.delete(&ev_path).await.status(), 204);
    assert!(si.hub.events(&case).is_empty());
    let (s, v) = si.get_json(&ev_path).await;
    assert_eq!(
        (s, v["errors"][0]["message"].as_str()),
        (404, Some("event is not found"))
    );
    let r = si.delete(&ev_path).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["message"], "Event is not found");
}

#[tokio::test]
async fn big_uploads_keep_only_their_hash() {
    let si = Si::start().await;
    let case = si.add_case();
    let content = Content::Generated {
        size: 1_500_000,
        seed: 3,
    };
    let (_, ev) = si
        .post(
            &format!("/cases/{case}/events"),
            Si::deposit_body(content.len()),
        )
        .await;
    let eid = ev["id"].as_str().unwrap();
    let aid = ev["attachments"][0]["id"].as_str().unwrap();
    let bytes = content.bytes_for_test();
    let (s, _) = si
        .put_bytes(
            &format!("/cases/{case}/events/{eid}/attachments/{aid}"),
            bytes.clone(),
            Some(&b64_sha256(&bytes)),
        )
        .await;
    assert_eq!(s, 204);
    let (kept, sha) = si.hub.uploaded(&case, eid, aid).unwrap();
    assert!(kept.is_none());
    assert_eq!(sha, content.sha256_hex());
}

#[tokio::test]
async fn osl_events_notify_the_si_and_are_acknowledged() {
    let si = Si::start().await;
    let case = si.add_case();
    let first = si.notifications().await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    si.delete(&format!("/notifications/{first}")).await;
    let eid = si.hub.osl_post_event(
        &case,
        OslEvent {
            action_type: "ATTACH_DEPOSIT".into(),
            message: Some("complément".into()),
            case_new_status: None,
            attachments: vec![AttachmentSpec::new(
                "pj.pdf",
                "VA_CertificatdeDeces",
                "application/pdf",
                Content::Bytes(b"pj".to_vec()),
            )],
        },
    );
    let n = si.notifications().await;
    assert_eq!(n.len(), 1);
    assert_eq!(n[0]["eventId"], eid.as_str());
    assert_eq!(n[0]["eventActionType"], "ATTACH_DEPOSIT");
    assert_eq!(n[0]["eventStatus"], "SENT");
    let ev_path = format!("/cases/{case}/events/{eid}");
    let (_, ev) = si.get_json(&ev_path).await;
    assert_eq!(ev["transmitter"]["type"], "OSL");
    let aid = ev["attachments"][0]["id"].as_str().unwrap();
    let r = si.get(&format!("{ev_path}/attachments/{aid}")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"pj");
    // The SI acknowledges: eventStatus is read live.
    assert_eq!(
        si.patch(&ev_path, json!({"status":"RECEIVED"})).await.0,
        204
    );
    assert_eq!(
        si.patch(&ev_path, json!({"status":"RECEIVED"})).await.0,
        204
    );
    assert_eq!(si.notifications().await[0]["eventStatus"], "RECEIVED");
    // It cannot set an OSL event SENT.
    assert_eq!(si.patch(&ev_path, json!({"status":"SENT"})).await.0, 400);
}

#[tokio::test]
async fn osl_ack_of_an_si_event_notifies_the_si() {
    let si = Si::start().await;
    let case = si.add_case();
    let (_, ev) = si
        .post(
            &format!("/cases/{case}/events"),
            json!({"actionType":"SENDING_MESSAGE","notification":true,"message":"m"}),
        )
        .await;
    let eid = ev["id"].as_str().unwrap();
    si.hub.osl_ack_event(&case, eid);
    let n = si.hub.notifications(CLIENT);
    assert_eq!(n.len(), 2);
    assert_eq!(n[1]["eventId"], eid);
    assert_eq!(n[1]["eventStatus"], "RECEIVED");
    assert_eq!(n[1]["eventActionType"], "SENDING_MESSAGE");
}

#[tokio::test]
async fn osl_reopen_puts_the_case_back_to_hubee_notified() {
    let si = Si::start().await;
    let case = si.add_case();
    let p = format!("/cases/{case}");
    si.patch(&p, json!({"status":"IN_PROGRESS"})).await;
    si.patch(&p, json!({"status":"ADD_AWAITING"})).await;
    si.hub.osl_reopen(&case);
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));
    let evs = si.hub.events(&case);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["caseCurrentStatus"], "ADD_AWAITING");
    assert_eq!(evs[0]["caseNewStatus"], "HUBEE_NOTIFIED");
    assert_eq!(evs[0]["actionType"], "STATUS_UPDATE");
    let n = si.notifications().await;
    assert_eq!(n.len(), 2);
    assert_eq!(n[1]["eventId"], evs[0]["id"]);
}

// ------------------------------------------------------------------ admin, runtimes, big files

#[tokio::test]
async fn admin_state_summarises_the_hub() {
    let si = Si::start().await;
    let case = si.add_case();
    si.notifications().await;
    let v: Value = reqwest::get(format!("{}/_fake/state", si.hub.api_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["cases"][0]["id"], case.as_str());
    assert_eq!(v["cases"][0]["status"], "HUBEE_NOTIFIED");
    assert_eq!(v["notifications"][CLIENT].as_array().unwrap().len(), 1);
    assert_eq!(v["requestCounts"]["ListNotifications"], 1);
    assert_eq!(v["requestCounts"]["Token"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_files_stream_in_parallel_on_a_multi_thread_runtime() {
    let si = Si::start().await;
    let content = Content::Generated {
        size: 3 * 1024 * 1024 + 17,
        seed: 5,
    };
    let mut spec = CaseSpec::new("CERTDC");
    for i in 0..3 {
        spec.attachments.push(AttachmentSpec::new(
            &format!("f{i}.bin"),
            "t",
            "application/octet-stream",
            content.clone(),
        ));
    }
    let case = si.hub.add_case(CLIENT, spec);
    let v = si.hub.case_json(&case).unwrap();
    let mut tasks = Vec::new();
    for att in v["attachments"].as_array().unwrap() {
        let req = si.req(
            reqwest::Method::GET,
            &format!("/cases/{case}/attachments/{}", att["id"].as_str().unwrap()),
        );
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            let d = r.headers()["digest"].to_str().unwrap().to_string();
            (d, r.bytes().await.unwrap())
        }));
    }
    for t in tasks {
        let (digest, body) = t.await.unwrap();
        assert_eq!(body.len() as u64, content.len());
        assert_eq!(digest, b64_sha256(&body));
        assert_eq!(digest, content.digest_b64());
    }
}

#[tokio::test]
async fn admin_routes_drive_faults_cases_and_the_osl() {
    let si = Si::start().await;
    let http = reqwest::Client::new();
    let admin = |p: &str| format!("{}/_fake/{p}", si.hub.api_url());
    let r = http
        .post(admin("cases"))
        .json(&json!({"count": 2, "files": 1, "fileSize": 2048, "seed": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let ids = v["caseIds"].as_array().unwrap();
    assert_eq!(ids.len(), 2);
    let case = ids[0].as_str().unwrap();
    assert_eq!(
        si.hub.case_json(case).unwrap()["attachments"][0]["size"],
        2048
    );

    let r = http
        .post(admin("inject"))
        .json(&json!({"route": "GetCase", "fault": {"Status": 502}, "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(si.get_json(&format!("/cases/{case}")).await.0, 502);
    assert_eq!(si.get_json(&format!("/cases/{case}")).await.0, 200);

    let r = http
        .post(admin("osl/event"))
        .json(&json!({"caseId": case, "actionType": "SENDING_MESSAGE", "message": "bonjour"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(si.hub.events(case)[0]["message"], "bonjour");
    let r = http
        .post(admin("osl/reopen"))
        .json(&json!({"caseId": "94b1b09d-b47f-4480-9b48-93b8b36108f2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(admin("inject"))
        .json(&json!({"route": "Nope", "fault": "ResetAfterEffect"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    http.post(admin("expire_tokens")).send().await.unwrap();
    assert_eq!(si.get_json("/notifications").await.0, 401);
    // Admin calls are not HubEE requests.
    assert!(si
        .hub
        .requests()
        .iter()
        .all(|r| !r.path.starts_with("/_fake")));
}

// ------------------------------------------------------------------ §10 hub behaviours

async fn post_status(si: &Si, case: &str, from: &str, to: &str) -> (u16, Value) {
    si.post(
        &format!("/cases/{case}/events"),
        json!({"actionType":"STATUS_UPDATE","notification":true,
               "caseCurrentStatus":from,"caseNewStatus":to,"message":"m"}),
    )
    .await
}

#[tokio::test]
async fn an_events_case_new_status_moves_the_case_by_default() {
    let si = Si::start().await;
    let case = si.add_case();
    let (s, ev) = post_status(&si, &case, "HUBEE_NOTIFIED", "SENT").await;
    assert_eq!(s, 201, "{ev}");
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("SENT"));
    assert!(si.hub.status_patches(&case).is_empty());
    let by = format!("event:{}", ev["id"].as_str().unwrap());
    assert_eq!(
        si.hub.status_history(&case),
        vec![json!({"from":"HUBEE_NOTIFIED","to":"SENT","by":by})]
    );
}

#[tokio::test]
async fn a_strict_hub_refuses_an_event_whose_current_status_is_stale_or_whose_move_breaks_the_table(
) {
    let si = Si::start().await;
    si.hub.set_strict_transitions(true);
    let case = si.add_case();
    let (s, v) = post_status(&si, &case, "SENT", "SI_RECEIVED").await;
    assert_eq!(s, 400, "{v}");
    assert!(v["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("is not the case's status HUBEE_NOTIFIED"));
    let (s, _) = post_status(&si, &case, "HUBEE_NOTIFIED", "IN_PROGRESS").await;
    assert_eq!(
        s, 400,
        "HUBEE_NOTIFIED → IN_PROGRESS is not in the [CI] column"
    );
    assert!(si.hub.events(&case).is_empty());
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));
    // Without a status change, an event is always accepted.
    let (s, _) = post_status(&si, &case, "HUBEE_NOTIFIED", "HUBEE_NOTIFIED").await;
    assert_eq!(s, 201);
}

#[tokio::test]
async fn a_lenient_hub_accepts_any_event_but_moves_the_case_only_along_the_table() {
    let si = Si::start().await;
    si.hub.update_behaviour(|b| b.strict_events = false);
    let case = si.add_case();
    let (s, _) = post_status(&si, &case, "IN_PROGRESS", "DONE").await;
    assert_eq!(s, 201);
    assert_eq!(
        si.hub.case_status(&case).as_deref(),
        Some("HUBEE_NOTIFIED"),
        "HUBEE_NOTIFIED → DONE is not a transition"
    );
    let (s, _) = post_status(&si, &case, "SENT", "SI_RECEIVED").await;
    assert_eq!(s, 201);
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("SI_RECEIVED"));
}

#[tokio::test]
async fn past_the_event_cap_every_event_is_refused_for_good() {
    let si = Si::start().await;
    si.hub.update_behaviour(|b| b.max_events_per_case = Some(2));
    let case = si.add_case();
    let msg = json!({"actionType":"SENDING_MESSAGE","notification":true,"message":"m"});
    for _ in 0..2 {
        assert_eq!(
            si.post(&format!("/cases/{case}/events"), msg.clone())
                .await
                .0,
            201
        );
    }
    for _ in 0..2 {
        let (s, v) = si.post(&format!("/cases/{case}/events"), msg.clone()).await;
        assert_eq!(s, 400);
        assert!(v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("maximum number of events"));
    }
    // PATCH still works: the cap is on events.
    let p = format!("/cases/{case}");
    assert_eq!(si.patch(&p, json!({"status": "SENT"})).await.0, 204);
    assert_eq!(si.hub.events(&case).len(), 2);
}

#[tokio::test]
async fn a_demarche_that_forbids_a_status_refuses_it_by_patch_and_by_event() {
    let si = Si::start().await;
    si.hub.update_behaviour(|b| {
        b.forbidden_statuses
            .insert("CERTDC".into(), vec!["REFUSED".into()]);
    });
    let case = si.add_case();
    let p = format!("/cases/{case}");
    for st in ["SENT", "SI_RECEIVED"] {
        assert_eq!(si.patch(&p, json!({"status": st})).await.0, 204);
    }
    let (s, v) = si.patch(&p, json!({"status": "REFUSED"})).await;
    assert_eq!(s, 400);
    assert_eq!(
        v["errors"][0]["message"],
        "Bad Request : this flow does not allow the status REFUSED"
    );
    assert_eq!(
        post_status(&si, &case, "SI_RECEIVED", "REFUSED").await.0,
        400
    );
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("SI_RECEIVED"));
}

#[tokio::test]
async fn si_pieces_come_back_without_type_when_the_behaviour_says_so() {
    let si = Si::start().await;
    si.hub
        .update_behaviour(|b| b.si_attachment_type_null = true);
    let case = si.add_case();
    let (s, ev) = si
        .post(&format!("/cases/{case}/events"), Si::deposit_body(10))
        .await;
    assert_eq!(s, 201);
    assert_eq!(ev["attachments"][0]["type"], Value::Null);
    assert_eq!(ev["attachments"][0]["fileName"], "attestation.xml");
    assert_eq!(ev["attachments"][0]["size"], 10);
}

#[tokio::test]
async fn downloads_come_chunked_without_content_length_and_may_end_short_cleanly() {
    let si = Si::start().await;
    let case = si.add_case();
    let (_, v) = si.get_json(&format!("/cases/{case}")).await;
    let att = &v["attachments"][0];
    let path = format!("/cases/{case}/attachments/{}", att["id"].as_str().unwrap());
    let size = att["size"].as_u64().unwrap();
    let r = si.get(&path).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    assert_eq!(r.bytes().await.unwrap().len() as u64, size);
    si.hub
        .inject(Route::GetAttachment, Fault::CutShort { after_bytes: 5 }, 1);
    let r = si.get(&path).await;
    assert_eq!(r.status(), 200);
    // The body ends without any transport error: only the count tells.
    assert_eq!(r.bytes().await.unwrap().len(), 5);
}

#[tokio::test]
async fn the_portal_agent_moves_cases_forward_only_and_as_the_portal_offers() {
    let si = Si::start().await;
    let case = si.add_case();
    // Final statuses wait for a download when the case has pieces.
    assert!(si
        .hub
        .agent_act(&case, AgentAction::SetStatus("DONE".into()))
        .is_err());
    si.hub.agent_act(&case, AgentAction::AttachDl).unwrap();
    si.hub
        .agent_act(&case, AgentAction::SetStatus("IN_PROGRESS".into()))
        .unwrap();
    assert!(si
        .hub
        .agent_act(&case, AgentAction::SetStatus("SI_RECEIVED".into()))
        .is_err());
    si.hub
        .agent_act(&case, AgentAction::SetStatus("REFUSED".into()))
        .unwrap();
    si.hub
        .agent_act(&case, AgentAction::SetStatus("DONE".into()))
        .unwrap();
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("DONE"));
    let types: Vec<String> = si
        .hub
        .events(&case)
        .iter()
        .map(|e| e["actionType"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "ATTACH_DL",
            "STATUS_UPDATE",
            "STATUS_UPDATE",
            "STATUS_UPDATE"
        ]
    );
    // Its events are not ours: the SI gets no notification for them.
    assert_eq!(si.hub.notifications(CLIENT).len(), 1);
}

#[tokio::test]
async fn an_agent_hooked_on_a_request_acts_just_before_it() {
    let si = Si::start().await;
    let case = si.add_case();
    let p = format!("/cases/{case}");
    si.hub.agent_before(
        Route::PatchCase,
        Some(&case),
        AgentAction::SetStatus("SI_RECEIVED".into()),
    );
    // Our PATCH to SENT now finds SI_RECEIVED: SI_RECEIVED → SENT is not a transition.
    assert_eq!(si.patch(&p, json!({"status": "SENT"})).await.0, 400);
    assert_eq!(si.hub.case_status(&case).as_deref(), Some("SI_RECEIVED"));
    assert_eq!(si.hub.agent_log().len(), 1);
}
