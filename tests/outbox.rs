//! The outbox: replies written by the legacy software into `outbox/new/`, applied on the
//! (fake) hub by the real binary, then moved to `outbox/sent/` or `outbox/failed/`.

mod common;

use std::path::Path;

use common::{hubs, World, CLIENT, SECRET};
use fake_hubee::{AttachmentSpec, Content, Fault, OslEvent, Route};
use serde_json::{json, Value};

/// A received CERTDC case (walked to IN_PROGRESS by the receipt), with its external id.
async fn received_case(w: &World, n: usize) -> (String, String) {
    let case = w.add_case(n, 1, 2_000);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    (case, format!("DGS-CERTDC-{n:013}-01"))
}

/// Writes a reply as the legacy software must: in outbox/tmp/, then one rename into new/.
fn write_reply(w: &World, name: &str, reply: &Value, files: &[(&str, Vec<u8>)]) {
    let tmp = w.spool().join("outbox/tmp").join(name);
    std::fs::create_dir(&tmp).unwrap();
    for (f, data) in files {
        std::fs::write(tmp.join(f), data).unwrap();
    }
    std::fs::write(
        tmp.join("reply.json"),
        serde_json::to_vec_pretty(reply).unwrap(),
    )
    .unwrap();
    std::fs::rename(&tmp, w.spool().join("outbox/new").join(name)).unwrap();
}

/// A PDF-looking file of `size` bytes.
fn pdf(size: usize, seed: u8) -> Vec<u8> {
    let mut v = b"%PDF-1.4\n".to_vec();
    let mut x = u32::from(seed) | 1;
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    v
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

fn outbox(w: &World, sub: &str) -> Vec<String> {
    w.entries(&format!("outbox/{sub}"))
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Our reply events on a case (marker in the comment).
fn reply_events(w: &World, case: &str) -> Vec<Value> {
    w.hub
        .events(case)
        .into_iter()
        .filter(|e| {
            e["comment"]
                .as_str()
                .is_some_and(|c| c.starts_with("hubee-sync:reply:"))
        })
        .collect()
}

/// Our reply events of one type on a case.
fn reply_events_of(w: &World, case: &str, action_type: &str) -> Vec<Value> {
    reply_events(w, case)
        .into_iter()
        .filter(|e| e["actionType"] == action_type)
        .collect()
}

async fn activity_kinds(w: &World) -> Vec<String> {
    let db = hubee_sync::state::StateDb::open(&hubee_sync::state::Location::Sqlite(
        w.dir.path().join("state.db"),
    ))
    .await
    .unwrap();
    let kinds = db
        .activity_since(0, &[], 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.kind)
        .collect();
    db.close().await;
    kinds
}

fn error_txt(w: &World, name: &str) -> String {
    std::fs::read_to_string(w.spool().join("outbox/failed").join(name).join("error.txt"))
        .unwrap_or_else(|e| panic!("no error.txt for {name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn done_reply_with_a_pdf_is_deposited_uploaded_and_sent() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 1).await;
    let acte = pdf(150_000, 1);
    write_reply(
        &w,
        "acte-0001",
        &json!({"external_id": ext, "status": "DONE", "message": "Votre acte est disponible",
                "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
        &[("acte.pdf", acte.clone())],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 envoyée(s)"), "{out}");

    // On the hub: one deposit event without a status change, SENT, its file uploaded whole;
    // then one status event; the case DONE.
    let events = reply_events(&w, &case);
    assert_eq!(events.len(), 2, "{events:#?}");
    let ev = &events[0];
    assert_eq!(ev["actionType"], "ATTACH_DEPOSIT");
    assert_eq!(ev["status"], "SENT");
    assert_eq!(ev["caseCurrentStatus"], "IN_PROGRESS");
    assert_eq!(ev["caseNewStatus"], "IN_PROGRESS");
    assert_eq!(ev["message"], "Votre acte est disponible");
    assert_eq!(events[1]["actionType"], "STATUS_UPDATE");
    assert_eq!(events[1]["caseCurrentStatus"], "IN_PROGRESS");
    assert_eq!(events[1]["caseNewStatus"], "DONE");
    let att = &ev["attachments"][0];
    assert_eq!(att["fileName"], "acte.pdf");
    assert_eq!(att["status"], "RECEIVED");
    assert_eq!(att["size"], acte.len() as u64);
    let event_id = ev["id"].as_str().unwrap();
    let (bytes, sha) = w
        .hub
        .uploaded(&case, event_id, att["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes.unwrap(), acte);
    assert_eq!(sha, sha256_hex(&acte));
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("DONE"));
    // The PUT carried the digest and the exact size.
    let put = w
        .hub
        .requests()
        .into_iter()
        .find(|r| r.route == Some(Route::PutEventAttachment))
        .unwrap();
    use base64::Engine as _;
    let digest = base64::engine::general_purpose::STANDARD.encode(hex::decode(&sha).unwrap());
    assert_eq!(put.header("digest"), Some(digest.as_str()));
    assert_eq!(
        put.header("content-length"),
        Some(acte.len().to_string().as_str())
    );
    // The OSL was told once the deposit was complete.
    assert!(!w.hub.osl_notifications(&case).is_empty());

    // On disk: sent/acte-0001 with result.json; nothing left in new/.
    assert!(outbox(&w, "new").is_empty());
    assert_eq!(outbox(&w, "sent"), vec!["acte-0001"]);
    let result = read_json(&w.spool().join("outbox/sent/acte-0001/result.json"));
    assert_eq!(result["case_id"], case.as_str());
    assert_eq!(result["external_id"], ext.as_str());
    assert_eq!(result["event_id"], event_id);
    assert_eq!(result["status"], "DONE");
    assert_eq!(result["files"][0]["file"], "acte.pdf");
    assert_eq!(result["files"][0]["sha256"], sha.as_str());
    assert!(result["sent_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(activity_kinds(&w)
        .await
        .contains(&"outbox_sent".to_string()));

    // A second run does nothing more.
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(reply_events(&w, &case).len(), 2);

    // `status` counts it.
    let (_, st, _) = w.run(&["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(
        (
            st[0]["outbox_sent"].as_i64(),
            st[0]["outbox_pending"].as_i64(),
            st[0]["outbox_failed"].as_i64()
        ),
        (Some(1), Some(0), Some(0)),
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reply_with_a_message_patches_then_posts_one_status_update() {
    let w = World::new().await;
    let (case, _) = received_case(&w, 2).await;
    write_reply(
        &w,
        "refus",
        &json!({"case_id": case, "status": "REFUSED", "message": "Pièce justificative illisible", "comment": "dossier 42"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("REFUSED"));
    let events = reply_events(&w, &case);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["actionType"], "STATUS_UPDATE");
    assert_eq!(events[0]["status"], "SENT");
    assert_eq!(events[0]["caseCurrentStatus"], "IN_PROGRESS");
    assert_eq!(events[0]["caseNewStatus"], "REFUSED");
    assert_eq!(events[0]["message"], "Pièce justificative illisible");
    assert!(events[0]["comment"]
        .as_str()
        .unwrap()
        .ends_with("\ndossier 42"));
    let result = read_json(&w.spool().join("outbox/sent/refus/result.json"));
    assert_eq!(result["status"], "REFUSED");
    assert_eq!(result["action_type"], "STATUS_UPDATE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_awaiting_then_the_osl_answer_is_received_as_an_event_entry() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 3).await;
    write_reply(
        &w,
        "complement",
        &json!({"external_id": ext, "status": "ADD_AWAITING", "message": "Merci d'envoyer un justificatif de domicile"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("ADD_AWAITING"));
    assert_eq!(reply_events(&w, &case)[0]["caseNewStatus"], "ADD_AWAITING");

    // The applicant answers through the OSL: a deposit, the case back to HUBEE_NOTIFIED.
    let answer = w.hub.osl_post_event(
        &case,
        OslEvent {
            action_type: "ATTACH_DEPOSIT".into(),
            message: Some("Voici le justificatif".into()),
            case_new_status: Some("HUBEE_NOTIFIED".into()),
            attachments: vec![AttachmentSpec::new(
                "justificatif.pdf",
                "DD_Certificatdedeces",
                "application/pdf",
                Content::Generated {
                    size: 3_000,
                    seed: 7,
                },
            )],
        },
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entry = w
        .entries("new")
        .into_iter()
        .find(|e| e.ends_with(&format!("~{answer}")))
        .unwrap_or_else(|| panic!("no event entry for {answer}: {:?}", w.entries("new")));
    let m = common::check_entry(&w.spool().join("new").join(&entry)).unwrap();
    assert_eq!(m["event_id"], answer.as_str());
    assert_eq!(m["attachments"][0]["file_name"], "justificatif.pdf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_whose_connection_resets_mid_file_is_sent_again_and_stored_once() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 4).await;
    let acte = pdf(400_000, 4);
    w.hub.inject(
        Route::PutEventAttachment,
        Fault::ResetMidBody {
            after_bytes: 100_000,
        },
        1,
    );
    write_reply(
        &w,
        "acte",
        &json!({"external_id": ext, "status": "DONE",
                "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
        &[("acte.pdf", acte.clone())],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.request_count(Route::PutEventAttachment), 2);
    let events = reply_events_of(&w, &case, "ATTACH_DEPOSIT");
    assert_eq!(events.len(), 1);
    let att = &events[0]["attachments"][0];
    let (_, sha) = w
        .hub
        .uploaded(
            &case,
            events[0]["id"].as_str().unwrap(),
            att["id"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(sha, sha256_hex(&acte));
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("DONE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_that_keeps_failing_deletes_the_event_and_leaves_the_status_untouched() {
    let w = World::new().await;
    w.write_config_with("", "quarantine_after = \"1s\"");
    let (case, ext) = received_case(&w, 5).await;
    w.hub.inject(
        Route::PutEventAttachment,
        Fault::ResetMidBody {
            after_bytes: 50_000,
        },
        1000,
    );
    write_reply(
        &w,
        "acte",
        &json!({"external_id": ext, "status": "DONE",
                "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
        &[("acte.pdf", pdf(200_000, 5))],
    );
    // First pass: the upload fails after every retry; the reply waits in new/.
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("réponse en attente: acte"), "{out}");
    assert_eq!(outbox(&w, "new"), vec!["acte"]);
    let events = reply_events(&w, &case);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["status"], "IN_PROGRESS",
        "the OSL sees nothing yet"
    );
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));

    // Later, still failing past quarantine_after: given up, event deleted, status untouched.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        reply_events(&w, &case).is_empty(),
        "the deposit event is deleted"
    );
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    assert!(!w.hub.status_patches(&case).contains(&"DONE".to_string()));
    assert_eq!(outbox(&w, "failed"), vec!["acte"]);
    let e = error_txt(&w, "acte");
    assert!(
        e.contains("Ce qui ne va pas") && e.contains("What is wrong"),
        "{e}"
    );
    assert!(
        e.contains("a été supprimé") && e.contains("was deleted"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_refused_by_the_hub_deletes_the_event_at_once() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 6).await;
    w.hub
        .inject(Route::PutEventAttachment, Fault::Status(400), 1);
    write_reply(
        &w,
        "acte",
        &json!({"external_id": ext, "status": "DONE",
                "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
        &[("acte.pdf", pdf(10_000, 6))],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(reply_events(&w, &case).is_empty());
    assert_eq!(w.hub.request_count(Route::DeleteEvent), 1);
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    assert!(error_txt(&w, "acte").contains("acte.pdf"));
}

/// Every step boundary of a reply with files (see src/outbox/apply.rs and mod.rs).
const CRASH_POINTS: &[&str] = &[
    "outbox_after_event_post:1",
    "outbox_after_put:1",
    "outbox_after_put:2",
    "outbox_after_received_check:1",
    "outbox_after_status_patch:1",
    "outbox_before_sent:1",
    "outbox_after_sent:1",
    "outbox_before_move:1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_after_the_event_post_or_any_put_resumes_without_a_second_event() {
    for point in CRASH_POINTS {
        let w = World::new().await;
        let (case, ext) = received_case(&w, 7).await;
        let (a, b) = (pdf(30_000, 71), pdf(20_000, 72));
        write_reply(
            &w,
            "r",
            &json!({"external_id": ext, "status": "DONE", "message": "Voici vos actes",
                    "attachments": [
                        {"file": "a.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"},
                        {"file": "b.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
            &[("a.pdf", a.clone()), ("b.pdf", b.clone())],
        );
        let mut cmd = std::process::Command::new(common::bin());
        cmd.arg("--config")
            .arg(w.config_path())
            .arg("once")
            .env("HUBEE_SYNC_CRASH_AT", point);
        let killed = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(killed.status.code(), None, "{point}: killed at the point");

        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{point}: {out}{err}");
        let events = reply_events_of(&w, &case, "ATTACH_DEPOSIT");
        assert_eq!(events.len(), 1, "{point}: one deposit event: {events:#?}");
        assert_eq!(events[0]["status"], "SENT", "{point}");
        let status = reply_events_of(&w, &case, "STATUS_UPDATE");
        assert_eq!(status.len(), 1, "{point}: one status event: {status:#?}");
        assert_eq!(
            w.hub.request_count(Route::PostEvent),
            3,
            "{point}: the receipt, one deposit, one status event, never a second POST"
        );
        assert_eq!(
            w.hub.request_count(Route::PutEventAttachment),
            2,
            "{point}: no file uploaded twice"
        );
        for att in events[0]["attachments"].as_array().unwrap() {
            let (_, sha) = w
                .hub
                .uploaded(
                    &case,
                    events[0]["id"].as_str().unwrap(),
                    att["id"].as_str().unwrap(),
                )
                .unwrap();
            let want = if att["fileName"] == "a.pdf" { &a } else { &b };
            assert_eq!(sha, sha256_hex(want), "{point}");
        }
        assert_eq!(w.hub.case_status(&case).as_deref(), Some("DONE"), "{point}");
        assert!(outbox(&w, "new").is_empty(), "{point}");
        assert_eq!(outbox(&w, "sent"), vec!["r"], "{point}");
        let result = read_json(&w.spool().join("outbox/sent/r/result.json"));
        assert_eq!(result["event_id"], events[0]["id"], "{point}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_the_event_post_is_found_on_the_case_not_posted_again() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 8).await;
    w.hub.inject(Route::PostEvent, Fault::ResetAfterEffect, 1);
    write_reply(
        &w,
        "msg",
        &json!({"external_id": ext, "message": "Votre demande est bien reçue"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let events = reply_events(&w, &case);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["actionType"], "SENDING_MESSAGE");
    assert_eq!(outbox(&w, "sent"), vec!["msg"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_for_a_case_of_another_subscription_is_refused_and_the_hub_untouched() {
    let w = World::new().await;
    w.hub.add_client("etatcivil-client", SECRET, "EtatCivil");
    let d = w.dir.path().display().to_string();
    w.write_config_with(
        "",
        &format!(
            "\n[[subscription]]\nname = \"etatcivil\"\nprocess_code = \"EtatCivil\"\n\
             client_id = \"etatcivil-client\"\nclient_secret_file = \"{d}/secret\"\n\
             schedule = \"every 5m\"\nspool = \"{d}/spool/etatcivil\"\n"
        ),
    );
    let mut spec = fake_hubee::CaseSpec::new("EtatCivil");
    spec.external_id = Some("DILA-AEC-0000000000009-01".into());
    let theirs = w.hub.add_case("etatcivil-client", spec);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let patches_before = w.hub.status_patches(&theirs);
    let events_before = w.hub.events(&theirs).len();

    write_reply(
        &w,
        "wrong-outbox",
        &json!({"external_id": "DILA-AEC-0000000000009-01", "status": "DONE"}),
        &[],
    );
    let (code, out, err) = w.run(&["once", "--subscription", "certdc"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(outbox(&w, "failed"), vec!["wrong-outbox"]);
    let e = error_txt(&w, "wrong-outbox");
    assert!(e.contains("etatcivil"), "{e}");
    assert!(e.contains("Sur le hub : rien n'a été modifié."), "{e}");
    assert_eq!(w.hub.status_patches(&theirs), patches_before);
    assert_eq!(w.hub.events(&theirs).len(), events_before);
    let _ = CLIENT;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_naming_a_missing_file_goes_to_failed_with_error_txt() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 9).await;
    let requests_before = w.hub.requests().len();
    write_reply(
        &w,
        "sans-fichier",
        &json!({"external_id": ext, "status": "DONE",
                "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("réponse refusée: sans-fichier"), "{out}");
    assert_eq!(outbox(&w, "failed"), vec!["sans-fichier"]);
    let e = error_txt(&w, "sans-fichier");
    assert!(
        e.contains("\"acte.pdf\" nommé dans reply.json est absent du dossier"),
        "{e}"
    );
    assert!(
        e.contains("file \"acte.pdf\" named in reply.json is not in the folder"),
        "{e}"
    );
    assert!(
        e.find("Ce qui ne va pas") < e.find("What is wrong"),
        "French first: {e}"
    );
    assert!(reply_events(&w, &case).is_empty());
    // Only the cycle's own calls (token, notifications): no case or event call for the reply.
    let touched: Vec<_> = w.hub.requests()[requests_before..]
        .iter()
        .filter(|r| r.path.contains("/cases/"))
        .map(|r| r.path.clone())
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    assert!(activity_kinds(&w)
        .await
        .contains(&"outbox_failed".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_file_names_in_reply_json_are_refused_before_the_hub_is_touched() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 10).await;
    write_reply(
        &w,
        "passwd",
        &json!({"external_id": ext, "status": "DONE",
                "attachments": [{"file": "../../etc/passwd", "type": "DD_Certificatdedeces", "mime_type": "text/plain"}]}),
        &[],
    );
    // A link that points out of the folder, under an innocent name.
    let tmp = w.spool().join("outbox/tmp/lien");
    std::fs::create_dir(&tmp).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", tmp.join("acte.pdf")).unwrap();
    std::fs::write(
        tmp.join("reply.json"),
        json!({"external_id": ext, "status": "DONE",
               "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]})
        .to_string(),
    )
    .unwrap();
    std::fs::rename(&tmp, w.spool().join("outbox/new/lien")).unwrap();

    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(outbox(&w, "failed"), vec!["lien", "passwd"]);
    assert!(error_txt(&w, "passwd").contains("../../etc/passwd"));
    assert!(error_txt(&w, "lien").contains("lien symbolique"));
    assert!(reply_events(&w, &case).is_empty());
    assert_eq!(w.hub.request_count(Route::PutEventAttachment), 0);
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_the_case_cannot_reach_is_a_clear_failure() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 11).await;
    // The hub supervises cases in SI_INTG_ERROR: no way leads from there to DONE.
    w.hub.osl_post_event(
        &case,
        OslEvent {
            action_type: "STATUS_UPDATE".into(),
            message: Some("Erreur d'intégration".into()),
            case_new_status: Some("SI_INTG_ERROR".into()),
            attachments: vec![],
        },
    );
    write_reply(
        &w,
        "trop-tard",
        &json!({"external_id": ext, "status": "DONE"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("SI_INTG_ERROR"));
    assert!(reply_events(&w, &case).is_empty());
    let e = error_txt(&w, "trop-tard");
    assert!(
        e.contains("au statut SI_INTG_ERROR ; il ne peut pas passer à DONE"),
        "{e}"
    );
    assert!(e.contains("Sur le hub : rien n'a été modifié."), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_case_already_past_its_status_changes_nothing_and_says_what_it_found() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 12).await;
    w.hub.osl_post_event(
        &case,
        OslEvent {
            action_type: "STATUS_UPDATE".into(),
            message: Some("Dossier clos".into()),
            case_new_status: Some("CLOSED".into()),
            attachments: vec![],
        },
    );
    write_reply(
        &w,
        "trop-tard",
        &json!({"external_id": ext, "status": "DONE"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("CLOSED"));
    assert!(reply_events(&w, &case).is_empty(), "never moved back");
    assert!(w.hub.status_patches(&case).iter().all(|p| p != "DONE"));
    let result = read_json(&w.spool().join("outbox/sent/trop-tard/result.json"));
    assert_eq!(result["status_step"]["outcome"], "found", "{result:#}");
    assert_eq!(result["status_step"]["status"], "CLOSED", "{result:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_name_reused_with_another_reply_json_is_a_new_reply() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 12).await;
    write_reply(
        &w,
        "r",
        &json!({"external_id": ext, "message": "Premier message"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    write_reply(
        &w,
        "r",
        &json!({"external_id": ext, "message": "Second message"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let messages: Vec<Value> = reply_events(&w, &case)
        .into_iter()
        .map(|e| e["message"].clone())
        .collect();
    assert_eq!(
        messages,
        vec![json!("Premier message"), json!("Second message")]
    );
    assert_eq!(outbox(&w, "sent"), vec!["r", "r~2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_and_failed_replies_are_pruned_after_outbox_retention() {
    let w = World::new().await;
    w.write_config_with("", "outbox_retention = \"1m\"");
    let (_case, ext) = received_case(&w, 13).await;
    write_reply(
        &w,
        "vieux",
        &json!({"external_id": ext, "message": "x"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let result = w.spool().join("outbox/sent/vieux/result.json");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&result)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(outbox(&w, "sent").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_withdrawn_after_its_event_was_created_has_the_event_deleted() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 14).await;
    write_reply(
        &w,
        "retire",
        &json!({"external_id": ext, "status": "DONE",
                "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
        &[("acte.pdf", pdf(5_000, 14))],
    );
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("--config")
        .arg(w.config_path())
        .arg("once")
        .env("HUBEE_SYNC_CRASH_AT", "outbox_after_put:1");
    let killed = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(killed.status.code(), None);
    assert_eq!(reply_events(&w, &case)[0]["status"], "IN_PROGRESS");
    // The legacy software takes its reply back before it was sent.
    std::fs::remove_dir_all(w.spool().join("outbox/new/retire")).unwrap();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        reply_events(&w, &case).is_empty(),
        "the deposit event is deleted"
    );
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    assert!(activity_kinds(&w)
        .await
        .contains(&"outbox_failed".to_string()));
}

// ------------------------------------------------------------------ the real hub (issue 16)

/// The index in the request log of the request that set the deposit SENT, and of the first
/// one after which the case was DONE (its status change).
fn sent_before_done(w: &World, case: &str, deposit: &str) -> (usize, usize) {
    let reqs = w.hub.requests();
    let sent = reqs
        .iter()
        .position(|r| {
            r.route == Some(Route::PatchEvent)
                && r.path.ends_with(deposit)
                && r.body.as_ref().is_some_and(|b| b["status"] == "SENT")
                && r.status == Some(204)
        })
        .expect("the deposit was set SENT");
    let done = reqs
        .iter()
        .position(|r| {
            r.path.contains(case)
                && r.status.is_some_and(|s| s < 300)
                && r.body.as_ref().is_some_and(|b| {
                    b["status"] == "DONE" && r.route == Some(Route::PatchCase)
                        || b["caseNewStatus"] == "DONE" && b["actionType"] == "STATUS_UPDATE"
                })
        })
        .expect("the case was moved to DONE");
    (sent, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_a_file_never_leaves_the_case_done_without_its_document_on_both_kinds_of_hub()
{
    for (hub, b) in hubs() {
        let w = World::new().await;
        w.hub.set_behaviour(b.clone());
        let (case, ext) = received_case(&w, 1).await;
        let acte = pdf(20_000, 3);
        write_reply(
            &w,
            "acte",
            &json!({"external_id": ext, "status": "DONE", "message": "Votre acte est disponible",
                    "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
            &[("acte.pdf", acte.clone())],
        );
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{hub}: {out}{err}");
        assert_eq!(outbox(&w, "sent"), vec!["acte"], "{hub}");
        assert_eq!(w.hub.case_status(&case).as_deref(), Some("DONE"), "{hub}");
        let events = reply_events(&w, &case);
        assert_eq!(events.len(), 2, "{hub}: {events:#?}");
        // The deposit changes no status; the status follows as its own event.
        let deposit = &events[0];
        assert_eq!(deposit["actionType"], "ATTACH_DEPOSIT", "{hub}");
        assert_eq!(deposit["status"], "SENT", "{hub}");
        assert_eq!(deposit["caseCurrentStatus"], "IN_PROGRESS", "{hub}");
        assert_eq!(deposit["caseNewStatus"], "IN_PROGRESS", "{hub}");
        assert_eq!(deposit["message"], "Votre acte est disponible", "{hub}");
        let status = &events[1];
        assert_eq!(status["actionType"], "STATUS_UPDATE", "{hub}");
        assert_eq!(status["caseCurrentStatus"], "IN_PROGRESS", "{hub}");
        assert_eq!(status["caseNewStatus"], "DONE", "{hub}");
        let deposit_id = deposit["id"].as_str().unwrap();
        let (sent, done) = sent_before_done(&w, &case, deposit_id);
        assert!(sent < done, "{hub}: the case reached DONE (request {done}) before its document was SENT (request {sent})");
        let att = deposit["attachments"][0]["id"].as_str().unwrap();
        let (bytes, _) = w.hub.uploaded(&case, deposit_id, att).unwrap();
        assert_eq!(bytes.unwrap(), acte, "{hub}");
        let result = read_json(&w.spool().join("outbox/sent/acte/result.json"));
        assert_eq!(result["event_id"], deposit_id, "{hub}");
        assert_eq!(result["status_event_id"], status["id"], "{hub}");
        assert_eq!(result["status_step"]["outcome"], "set", "{hub}");
        common::assert_traffic_follows_the_schema(&w.hub, hub);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_the_demarche_refuses_keeps_the_document_delivered_and_says_so() {
    for (hub, b) in hubs() {
        let w = World::new().await;
        w.hub.set_behaviour(b.clone());
        w.hub.update_behaviour(|b| {
            b.forbidden_statuses
                .insert("CERTDC".into(), vec!["REFUSED".into()]);
        });
        let (case, ext) = received_case(&w, 1).await;
        write_reply(
            &w,
            "refus",
            &json!({"external_id": ext, "status": "REFUSED",
                    "attachments": [{"file": "motif.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
            &[("motif.pdf", pdf(5_000, 4))],
        );
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{hub}: {out}{err}");
        // The document is delivered and stays so; the status step says what it met.
        assert_eq!(outbox(&w, "sent"), vec!["refus"], "{hub}: {out}{err}");
        let events = reply_events(&w, &case);
        let deposit = events
            .iter()
            .find(|e| e["actionType"] == "ATTACH_DEPOSIT")
            .expect("the deposit is still on the hub");
        assert_eq!(deposit["status"], "SENT", "{hub}");
        assert_eq!(
            w.hub.case_status(&case).as_deref(),
            Some("IN_PROGRESS"),
            "{hub}"
        );
        let result = read_json(&w.spool().join("outbox/sent/refus/result.json"));
        let outcome = result["status_step"]["outcome"].as_str().unwrap_or("");
        assert!(
            matches!(outcome, "event_refused" | "refused"),
            "{hub}: {result:#}"
        );
        assert_eq!(w.hub.request_count(Route::DeleteEvent), 0, "{hub}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_status_an_agent_already_set_still_delivers_its_document() {
    for (hub, b) in hubs() {
        let w = World::new().await;
        w.hub.set_behaviour(b.clone());
        let (case, ext) = received_case(&w, 1).await;
        // In the portal, a colleague already decided: DONE.
        w.hub
            .agent_act(&case, fake_hubee::AgentAction::AttachDl)
            .unwrap();
        w.hub
            .agent_act(&case, fake_hubee::AgentAction::SetStatus("DONE".into()))
            .unwrap();
        write_reply(
            &w,
            "refus",
            &json!({"external_id": ext, "status": "REFUSED",
                    "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
            &[("acte.pdf", pdf(5_000, 5))],
        );
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{hub}: {out}{err}");
        assert_eq!(outbox(&w, "sent"), vec!["refus"], "{hub}");
        // The agent's decision stands: no status event, no PATCH backwards.
        assert_eq!(w.hub.case_status(&case).as_deref(), Some("DONE"), "{hub}");
        let events = reply_events(&w, &case);
        assert_eq!(events.len(), 1, "{hub}: {events:#?}");
        assert_eq!(events[0]["actionType"], "ATTACH_DEPOSIT");
        assert_eq!(events[0]["status"], "SENT");
        assert_eq!(events[0]["caseCurrentStatus"], "DONE");
        assert_eq!(events[0]["caseNewStatus"], "DONE");
        let result = read_json(&w.spool().join("outbox/sent/refus/result.json"));
        assert_eq!(
            result["status_step"]["outcome"], "found",
            "{hub}: {result:#}"
        );
        assert_eq!(result["status_step"]["status"], "DONE", "{hub}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reply_whose_status_an_agent_already_set_still_sends_its_message() {
    let w = World::new().await;
    let (case, ext) = received_case(&w, 1).await;
    w.hub
        .agent_act(&case, fake_hubee::AgentAction::AttachDl)
        .unwrap();
    w.hub
        .agent_act(&case, fake_hubee::AgentAction::SetStatus("DONE".into()))
        .unwrap();
    write_reply(
        &w,
        "fin",
        &json!({"external_id": ext, "status": "DONE", "message": "Votre acte est envoyé par courrier"}),
        &[],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(outbox(&w, "sent"), vec!["fin"]);
    let events = reply_events(&w, &case);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["actionType"], "SENDING_MESSAGE");
    assert_eq!(events[0]["message"], "Votre acte est envoyé par courrier");
    let result = read_json(&w.spool().join("outbox/sent/fin/result.json"));
    assert_eq!(result["status_step"]["outcome"], "found", "{result:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_refused_by_the_event_cap_goes_to_failed_saying_what_to_do() {
    for (hub, b) in hubs() {
        let w = World::new().await;
        w.hub.set_behaviour(b.clone());
        let (case, ext) = received_case(&w, 1).await;
        let used = w.hub.events(&case).len();
        w.hub
            .update_behaviour(|b| b.max_events_per_case = Some(used));
        write_reply(
            &w,
            "acte",
            &json!({"external_id": ext, "status": "DONE",
                    "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]}),
            &[("acte.pdf", pdf(5_000, 6))],
        );
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(
            outbox(&w, "failed"),
            vec!["acte"],
            "{hub}: {code} {out}{err}"
        );
        let text = error_txt(&w, "acte");
        assert!(text.contains("limite d'événements"), "{hub}: {text}");
        assert!(text.contains("limit of events"), "{hub}: {text}");
        assert!(text.contains("support"), "{hub}: {text}");
        assert!(text.contains("portail"), "{hub}: {text}");
        assert_eq!(
            w.hub.case_status(&case).as_deref(),
            Some("IN_PROGRESS"),
            "{hub}"
        );
        // Final: never posted again.
        let posts = w.hub.request_count(Route::PostEvent);
        let _ = w.run(&["once"]).await;
        assert_eq!(w.hub.request_count(Route::PostEvent), posts, "{hub}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposit_pieces_returned_without_type_are_matched_by_name_and_size() {
    let w = World::new().await;
    w.hub.update_behaviour(|b| b.si_attachment_type_null = true);
    let (case, ext) = received_case(&w, 1).await;
    let a = pdf(4_000, 7);
    let b = pdf(6_000, 8);
    write_reply(
        &w,
        "deux",
        &json!({"external_id": ext, "status": "DONE",
                "attachments": [{"file": "a.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"},
                                {"file": "b.pdf", "type": "VA_CertificatdeDeces", "mime_type": "application/pdf"}]}),
        &[("a.pdf", a.clone()), ("b.pdf", b.clone())],
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(outbox(&w, "sent"), vec!["deux"]);
    let deposit = reply_events(&w, &case)
        .into_iter()
        .find(|e| e["actionType"] == "ATTACH_DEPOSIT")
        .unwrap();
    let eid = deposit["id"].as_str().unwrap();
    for att in deposit["attachments"].as_array().unwrap() {
        assert_eq!(att["type"], Value::Null);
        let (bytes, _) = w
            .hub
            .uploaded(&case, eid, att["id"].as_str().unwrap())
            .unwrap();
        let want = if att["fileName"] == "a.pdf" { &a } else { &b };
        assert_eq!(bytes.as_ref(), Some(want), "{}", att["fileName"]);
    }
}
