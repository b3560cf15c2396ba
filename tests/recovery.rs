//! Crashes, leftovers, waiting files, hostile names, statuses already past the receipt, and
//! the commands' exit codes.

mod common;

use common::{sha256sum_check, World, CLIENT, SECRET};
use fake_hubee::{AttachmentSpec, CaseSpec, Content, Fault, Route};
use sqlx::Connection;

async fn state_sql(w: &World, sql: &str) {
    let url = format!("sqlite://{}", w.dir.path().join("state.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(sql).execute(&mut c).await.unwrap();
}

/// Delivers one case but leaves its notification on the hub (every DELETE fails).
async fn deliver_but_keep_notification(w: &World) -> String {
    let case = w.add_case(1, 2, 3000);
    w.hub
        .inject(Route::DeleteNotification, Fault::Status(500), 100);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    assert_eq!(w.entries("new").len(), 1);
    assert_eq!(w.hub.notifications(CLIENT).len(), 1);
    w.hub.clear_faults();
    case
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_rename_and_record_does_not_publish_twice() {
    let w = World::new().await;
    let case = deliver_but_keep_notification(&w).await;
    // As if the process died right after the rename: the state still says "intent" and the
    // tmp directory is gone; meanwhile the consumer took the entry into cur/.
    let gone = w.spool().join("tmp/vanished.1.2");
    state_sql(
        &w,
        &format!(
            "UPDATE delivery SET stage = 'intent', tmp_path = '{}'",
            gone.display()
        ),
    )
    .await;
    let entry = w.entries("new").remove(0);
    std::fs::rename(
        w.spool().join("new").join(&entry),
        w.spool().join("cur").join(&entry),
    )
    .unwrap();

    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(w.entries("new").is_empty(), "not published a second time");
    assert_eq!(w.entries("cur"), vec![entry]);
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_rename_publishes_the_sealed_entry_once() {
    let w = World::new().await;
    let case = deliver_but_keep_notification(&w).await;
    // As if the process died between recording the intent and the rename.
    let entry = w.entries("new").remove(0);
    let tmp = w.spool().join("tmp").join(format!("{entry}.999.abc"));
    std::fs::rename(w.spool().join("new").join(&entry), &tmp).unwrap();
    state_sql(
        &w,
        &format!(
            "UPDATE delivery SET stage = 'intent', tmp_path = '{}'",
            tmp.display()
        ),
    )
    .await;

    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new"), vec![entry.clone()]);
    assert!(sha256sum_check(&w.spool().join("new").join(&entry)));
    assert!(w.entries("tmp").is_empty());
    assert_eq!(w.receipt_events(&case).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_state_record_is_recognised_by_the_manifest_not_written_twice() {
    let w = World::new().await;
    let case = deliver_but_keep_notification(&w).await;
    // The state database is lost (restored from an old backup): the entry is still there.
    state_sql(&w, "DELETE FROM delivery").await;
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new").len(), 1);
    assert_eq!(
        w.receipt_events(&case).len(),
        1,
        "the marker prevents a second event"
    );
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_in_tmp_are_removed_at_the_next_run() {
    let w = World::new().await;
    w.add_case(1, 1, 100);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    let junk = w.spool().join("tmp/DGS~half.123.xyz");
    std::fs::create_dir_all(junk.join("attachments")).unwrap();
    std::fs::write(junk.join("attachments/half.pdf"), b"half").unwrap();
    let (code, _, err) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    assert!(w.entries("tmp").is_empty(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_attachment_makes_the_case_wait_then_it_is_delivered() {
    let w = World::new().await;
    let mut spec = CaseSpec::new("CERTDC");
    spec.attachments = vec![
        AttachmentSpec::new(
            "a.pdf",
            "DD_Certificatdedeces",
            "application/pdf",
            Content::Bytes(b"abc".to_vec()),
        ),
        AttachmentSpec::new(
            "b.xml",
            "DD_Certificatdedeces",
            "application/xml",
            Content::Bytes(b"<x/>".to_vec()),
        )
        .with_status("PENDING"),
    ];
    let case = w.hub.add_case(CLIENT, spec);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "waiting is not a failure: {out}{err}");
    assert!(w.entries("new").is_empty());
    assert_eq!(
        w.hub.notifications(CLIENT).len(),
        1,
        "the notification stays"
    );
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("HUBEE_NOTIFIED"));

    let att = w.hub.case_json(&case).unwrap()["attachments"][1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    w.hub.set_attachment_status(&case, &att, "RECEIVED");
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        std::fs::read_dir(w.spool().join("new").join(&entries[0]).join("attachments"))
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_attachments_are_listed_in_the_manifest_not_fetched() {
    let w = World::new().await;
    let mut spec = CaseSpec::new("CERTDC");
    spec.attachments = vec![
        AttachmentSpec::new(
            "ok.pdf",
            "DD_Certificatdedeces",
            "application/pdf",
            Content::Bytes(b"fine".to_vec()),
        ),
        AttachmentSpec::new(
            "virus.pdf",
            "DD_Certificatdedeces",
            "application/pdf",
            Content::Bytes(b"bad".to_vec()),
        )
        .with_status("CORRUPTED"),
        AttachmentSpec::new(
            "gone.pdf",
            "DD_Certificatdedeces",
            "application/pdf",
            Content::Bytes(b"x".to_vec()),
        )
        .with_status("REJECTED"),
    ];
    w.hub.add_case(CLIENT, spec);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.hub.request_count(Route::GetAttachment), 1);
    let entry = w.spool().join("new").join(w.entries("new").remove(0));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("manifest.json")).unwrap()).unwrap();
    let atts = m["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 3);
    let statuses: Vec<_> = atts
        .iter()
        .map(|a| {
            (
                a["file_name"].as_str().unwrap(),
                a["status"].as_str().unwrap(),
                a["path"].is_null(),
            )
        })
        .collect();
    assert!(statuses.contains(&("ok.pdf", "RECEIVED", false)));
    assert!(statuses.contains(&("virus.pdf", "CORRUPTED", true)));
    assert!(statuses.contains(&("gone.pdf", "REJECTED", true)));
    assert!(sha256sum_check(&entry));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_from_the_hub_stay_inside_the_entry() {
    let w = World::new().await;
    let long = "x".repeat(300) + ".pdf";
    let names = [
        "../../../../etc/passwd",
        "/etc/shadow",
        "..",
        "CON",
        "nul.txt",
        "a\u{1}b\nc.pdf",
        "same.pdf",
        "SAME.pdf",
        "",
        long.as_str(),
        "trailing. ",
        "<>:\"|?*.pdf",
        "..\\..\\windows.ini",
    ];
    let mut spec = CaseSpec::new("CERTDC");
    spec.external_id = Some("../../../evil/..".into());
    spec.attachments = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            AttachmentSpec::new(
                n,
                "DD_Certificatdedeces",
                "application/pdf",
                Content::Bytes(vec![i as u8; 10 + i]),
            )
        })
        .collect();
    w.hub.add_case(CLIENT, spec);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 1);
    assert!(
        !entries[0].contains('/') && !entries[0].starts_with('.'),
        "{entries:?}"
    );
    let entry = w.spool().join("new").join(&entries[0]);
    let files: Vec<String> = std::fs::read_dir(entry.join("attachments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.len(),
        names.len(),
        "every file kept, none overwritten: {files:?}"
    );
    let lower: std::collections::HashSet<String> = files.iter().map(|f| f.to_lowercase()).collect();
    assert_eq!(
        lower.len(),
        files.len(),
        "unique even on a case-insensitive share"
    );
    for f in &files {
        assert!(
            f.len() <= 200
                && !f.starts_with('.')
                && !f
                    .chars()
                    .any(|c| c.is_control() || "<>:\"|?*\\/".contains(c)),
            "{f:?}"
        );
        assert!(
            !matches!(f.to_uppercase().split('.').next(), Some("CON" | "NUL")),
            "{f:?}"
        );
    }
    // Nothing was written outside the spool.
    assert!(!w.dir.path().join("evil").exists());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("manifest.json")).unwrap()).unwrap();
    let originals: Vec<&str> = m["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["file_name"].as_str().unwrap())
        .collect();
    assert!(
        originals.contains(&"../../../../etc/passwd"),
        "the manifest keeps the hub's name"
    );
    assert!(sha256sum_check(&entry));
}

/// Moves a case on the hub as another client of the hub would, through its HTTP API.
async fn hub_set_status(w: &World, case: &str, steps: &[&str]) {
    let http = reqwest::Client::new();
    let tok: serde_json::Value = http
        .post(w.hub.token_url())
        .basic_auth(CLIENT, Some(SECRET))
        .form(&[("scope", "SI"), ("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tok["access_token"].as_str().unwrap();
    for s in steps {
        let r = http
            .patch(format!("{}/teledossiers/v1/cases/{case}", w.hub.api_url()))
            .bearer_auth(token)
            .json(&serde_json::json!({ "status": s }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "PATCH {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_already_past_its_receipt_status_is_delivered_and_left_as_it_is() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 100);
    hub_set_status(&w, &case, &["SENT", "SI_RECEIVED", "IN_PROGRESS", "DONE"]).await;
    let patches_before = w.hub.status_patches(&case).len();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.entries("new").len(), 1);
    assert_eq!(w.hub.case_status(&case).as_deref(), Some("DONE"));
    assert_eq!(
        w.hub.status_patches(&case).len(),
        patches_before,
        "not moved back"
    );
    assert!(w.receipt_events(&case).is_empty(), "no receipt event");
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_json_is_the_case_exactly_as_the_hub_returned_it() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 100);
    let expected = w.hub.case_json(&case).unwrap();
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    let entry = w.spool().join("new").join(w.entries("new").remove(0));
    let got: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("case.json")).unwrap()).unwrap();
    assert_eq!(got["id"], expected["id"]);
    assert_eq!(got["externalId"], expected["externalId"]);
    assert_eq!(got["attachments"], expected["attachments"]);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["case_id"], case.as_str());
    assert_eq!(m["external_id"], expected["externalId"]);
    assert!(m["sequence"].as_u64().unwrap() >= 1);
    assert!(chrono::DateTime::parse_from_rfc3339(m["received_at"].as_str().unwrap()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_grows_with_every_entry() {
    let w = World::new().await;
    for n in 0..5 {
        w.add_case(n, 0, 0);
    }
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    let mut seqs: Vec<u64> = w
        .entries("new")
        .iter()
        .map(|e| {
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(w.spool().join("new").join(e).join("manifest.json")).unwrap(),
            )
            .unwrap();
            m["sequence"].as_u64().unwrap()
        })
        .collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_exits_naming_the_holder() {
    let w = World::new().await;
    w.add_case(1, 1, 100);
    let db = hubee_sync::state::StateDb::open(&hubee_sync::state::Location::Sqlite(
        w.dir.path().join("state.db"),
    ))
    .await
    .unwrap();
    let lock = db
        .lock_subscription("certdc", "pid 4242 on testhost (hubee-sync run)")
        .await
        .unwrap();
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    assert!(
        format!("{out}{err}").contains("pid 4242 on testhost"),
        "{out}{err}"
    );
    assert!(w.entries("new").is_empty());
    lock.release().await;
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_every_error_and_exits_78() {
    let w = World::new().await;
    let cfg = std::fs::read_to_string(w.config_path()).unwrap();
    let broken = cfg.replace(
        "schedule = \"every 5m\"",
        "schedule = \"every banana\"\nsurprise = 1",
    );
    common::write_mode(&w.config_path(), &broken, 0o640);
    let (code, _, err) = w.run(&["validate"]).await;
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("every banana") && err.contains("surprise"),
        "both errors at once: {err}"
    );
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 78, "once refuses a bad config too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_counts_and_exits_1_when_failing() {
    let w = World::new().await;
    w.add_case(1, 1, 100);
    w.add_case(2, 1, 100);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    let (code, out, _) = w.run(&["status", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["subscription"], "certdc");
    assert_eq!(v[0]["received"], 2);
    assert_eq!(v[0]["acknowledged"], 2);
    assert_eq!(v[0]["last_outcome"], "ok");
    assert!(!out.contains(SECRET));

    common::write_mode(&w.dir.path().join("secret"), "revoked\n", 0o600);
    let (code, _, _) = w.run(&["once"]).await;
    assert_eq!(code, 1);
    let (code, out, _) = w.run(&["status"]).await;
    assert_eq!(code, 1, "a failing subscription makes status exit 1: {out}");
    assert!(out.contains("regenerate the secret"), "{out}");
    assert!(!out.contains("revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_publishes_a_new_entry_and_touches_nothing_on_the_hub() {
    let w = World::new().await;
    let case = w.add_case(1, 2, 5000);
    let (code, _, err) = w.run(&["once"]).await;
    assert_eq!(code, 0);
    assert!(
        !err.contains("dossier(s) reçu(s)"),
        "no progress line in a pipe: {err}"
    );
    // The consumer lost the entry.
    let first = w.entries("new").remove(0);
    std::fs::remove_dir_all(w.spool().join("new").join(&first)).unwrap();
    let before = w.hub.requests().len();
    let (code, out, err) = w
        .run(&["redeliver", "--subscription", "certdc", "--case", &case])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = w.entries("new");
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0].contains(&case) && entries[0].contains("redelivery"),
        "{entries:?}"
    );
    assert!(sha256sum_check(&w.spool().join("new").join(&entries[0])));
    let after: Vec<_> = w.hub.requests().into_iter().skip(before).collect();
    assert!(
        after
            .iter()
            .all(|r| r.method == "GET" || r.route == Some(Route::Token)),
        "only reads: {:?}",
        after
            .iter()
            .map(|r| (&r.method, &r.path))
            .collect::<Vec<_>>()
    );
    assert_eq!(w.receipt_events(&case).len(), 1);

    let (code, _, err) = w
        .run(&["redeliver", "--subscription", "nope", "--case", &case])
        .await;
    assert_eq!(code, 64, "{err}");
}
