//! Hostile input from the hub: names and ids that try to escape or clash, zero-byte files,
//! sizes that lie, digest styles, odd JSON and odd notifications. Each either works or fails
//! with a clear error naming the case, and nothing escapes the spool.

mod common;

use common::{check_new, World, CLIENT};
use fake_hubee::{AttachmentSpec, CaseSpec, Content, Fault, Route};
use serde_json::{json, Value};

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// CONTRACT "Spool layout": safe names, also on a Windows share (characters, trailing dot or
/// space; reserved device names are checked by [`assert_not_a_windows_device`]).
fn assert_safe_name(n: &str) {
    assert!(!n.is_empty() && n.len() <= 200, "{n:?}: length");
    assert!(!n.starts_with('.'), "{n:?}: hidden, `.` or `..`");
    assert!(
        !n.chars()
            .any(|c| c.is_control() || "<>:\"|?*\\/".contains(c)),
        "{n:?}: forbidden character"
    );
    assert!(
        !n.ends_with('.') && !n.ends_with(' '),
        "{n:?}: trailing dot or space"
    );
}

/// Windows: a reserved device name, alone or followed by an extension (`NUL.txt`,
/// `aux.tar.gz`), is the device (CONTRACT: "not a reserved name").
fn assert_not_a_windows_device(n: &str) {
    let stem = n.split('.').next().unwrap_or("").trim_end().to_uppercase();
    let reserved = ["CON", "PRN", "AUX", "NUL"]
        .iter()
        .map(|s| s.to_string())
        .chain((1..=9).flat_map(|i| [format!("COM{i}"), format!("LPT{i}")]))
        .any(|r| r == stem);
    assert!(!reserved, "{n:?}: a reserved Windows device name");
}

/// Nothing outside the spool but the world's own files, and nothing in the spool outside
/// its known directories.
fn assert_nothing_escaped(w: &World) {
    let outside = w.files_outside_spool();
    assert!(outside.is_empty(), "written outside the spool: {outside:?}");
    let known = [
        "tmp",
        "new",
        "cur",
        "quarantine",
        "outbox",
        // The spool's own lock or bookkeeping files, if any, sit at its root.
    ];
    for p in common::walk(&w.spool()) {
        let rel = p.strip_prefix(w.spool()).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        assert!(
            known.contains(&top.as_ref()) || p.is_file(),
            "unexpected directory in the spool: {rel:?}"
        );
    }
}

fn manifest_of_case(w: &World, case: &str) -> (String, Value) {
    let entries = check_new(&w.spool()).unwrap_or_else(|e| panic!("{e}"));
    let mut found: Vec<_> = entries
        .into_iter()
        .filter(|(_, m)| m["case_id"] == case)
        .collect();
    assert_eq!(found.len(), 1, "case {case:?} exactly once in new/");
    found.remove(0)
}

fn file_spec(name: &str, content: Content) -> AttachmentSpec {
    AttachmentSpec::new(name, "DD_Certificatdedeces", "application/pdf", content)
}

fn case_spec(external_id: Option<&str>, files: Vec<AttachmentSpec>) -> CaseSpec {
    let mut spec = CaseSpec::new("CERTDC");
    spec.external_id = external_id.map(str::to_string);
    spec.attachments = files;
    spec
}

fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

// ------------------------------------------------------------------ files and sizes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_byte_files_are_delivered() {
    let w = World::new().await;
    let only_empty = w.hub.add_case(
        CLIENT,
        case_spec(
            Some("DGS-CERTDC-EMPTY-01"),
            vec![file_spec("vide.pdf", Content::Bytes(Vec::new()))],
        ),
    );
    let mixed = w.hub.add_case(
        CLIENT,
        case_spec(
            Some("DGS-CERTDC-EMPTY-02"),
            vec![
                file_spec("vide.xml", Content::Bytes(Vec::new())),
                file_spec("plein.pdf", Content::Bytes(b"%PDF-1.4".to_vec())),
                file_spec("vide2.xml", Content::Bytes(Vec::new())),
            ],
        ),
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for (case, empties) in [(&only_empty, 1), (&mixed, 2)] {
        let (name, m) = manifest_of_case(&w, case);
        let entry = w.spool().join("new").join(&name);
        let zero: Vec<&Value> = m["attachments"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["size"] == 0)
            .collect();
        assert_eq!(zero.len(), empties, "{name}: {m}");
        for a in zero {
            assert_eq!(a["sha256"], EMPTY_SHA256, "the digest of empty input");
            let p = entry.join(a["path"].as_str().expect("a zero-byte file has a path"));
            assert_eq!(
                std::fs::metadata(&p).unwrap().len(),
                0,
                "{p:?} exists, empty"
            );
        }
        assert_eq!(w.receipt_events(case).len(), 1);
    }
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_that_lies_is_refused_naming_the_case() {
    let w = World::new().await;
    let lying = |declared: u64, ext: &str| {
        let mut a = file_spec("acte.pdf", Content::Bytes(vec![7; 5000]));
        a.declared_size = Some(declared);
        w.hub.add_case(
            CLIENT,
            case_spec(Some(&format!("DGS-CERTDC-LIE-{ext}")), vec![a]),
        )
    };
    let bigger = lying(6000, "BIG");
    let smaller = lying(4000, "SMALL");
    let zero = lying(0, "ZERO");
    let good = w.hub.add_case(
        CLIENT,
        case_spec(
            Some("DGS-CERTDC-GOOD-01"),
            vec![file_spec("acte.pdf", Content::Bytes(vec![7; 5000]))],
        ),
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    for case in [&bigger, &smaller, &zero] {
        assert!(
            out.contains(case.as_str()),
            "the report names {case}: {out}"
        );
        assert!(w.receipt_events(case).is_empty());
        assert_eq!(w.hub.case_status(case).as_deref(), Some("HUBEE_NOTIFIED"));
    }
    assert!(
        err.contains("bytes") && err.contains("metadata"),
        "the error says what lied: {err}"
    );
    let entries = check_new(&w.spool()).unwrap();
    assert_eq!(entries.len(), 1, "only the honest case: {entries:?}");
    assert_eq!(entries[0].1["case_id"], good.as_str());
    assert!(w.entries("tmp").is_empty(), "no partial file left");
    assert_eq!(
        w.hub.notifications(CLIENT).len(),
        3,
        "the liars stay on the hub"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_with_sha256_prefix_is_accepted() {
    for prefix in ["sha-256=", "SHA-256="] {
        let w = World::new().await;
        w.hub.set_digest_prefix(Some(prefix));
        let content = Content::Generated {
            size: 50_000,
            seed: 4,
        };
        let case = w.hub.add_case(
            CLIENT,
            case_spec(None, vec![file_spec("acte.pdf", content.clone())]),
        );
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{prefix}: {out}{err}");
        let (_, m) = manifest_of_case(&w, &case);
        assert_eq!(m["attachments"][0]["sha256"], content.sha256_hex());
        let sent = w
            .hub
            .requests()
            .into_iter()
            .filter(|r| r.route == Some(Route::GetAttachment))
            .count();
        assert_eq!(sent, 1, "{prefix}: accepted on the first download");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_with_sha256_prefix_is_still_refused() {
    let w = World::new().await;
    w.hub.set_digest_prefix(Some("sha-256="));
    w.hub.inject(Route::GetAttachment, Fault::WrongDigest, 100);
    let case = w.hub.add_case(
        CLIENT,
        case_spec(
            None,
            vec![file_spec("acte.pdf", Content::Bytes(vec![1; 1000]))],
        ),
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(
        code, 1,
        "the prefix is parsed, not a reason to skip the check: {out}{err}"
    );
    assert!(out.contains(&case), "{out}");
    assert!(check_new(&w.spool()).unwrap().is_empty());
    assert!(w.entries("tmp").is_empty());
}

// ------------------------------------------------------------------ names and ids

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_external_and_case_ids_stay_inside_the_spool() {
    let w = World::new().await;
    // The real hub validates path ids as UUIDs, but its answers' ids are opaque strings (§3):
    // let any id through.
    w.hub.set_lenient_ids(true);
    let long_a = "x".repeat(299) + "a";
    let long_b = "x".repeat(299) + "b";
    let cases: Vec<(&str, &str)> = vec![
        // (case id, external id)
        ("../../../../escape-case", "../../../../escape-ext"),
        ("/etc/passwd", "/etc/shadow"),
        ("a/b/c", "d/e/f"),
        ("ctl\u{1}\n\t\u{7f}", "ext\r\n\u{1b}[31m"),
        (&long_a, &long_a),
        (&long_b, &long_a),
        ("CON", "CON"),
        ("aux.txt", "aux"),
        ("nul.tar.gz", "COM1"),
        ("~", "~"),
        ("trailing..", "trailing. "),
        ("<>:\"|?*", "..\\..\\windows"),
        ("same-ext-1", ""),
        ("same-ext-2", ""),
        ("héhé-ünïcode", "Ωmega-💥"),
        // No URL can name these as a path segment (`.`/`..` are dot segments even escaped,
        // and the client trims ids): they may fail, if the report names them.
        (".", "."),
        ("..", ".."),
        (" spaced ", "spaced"),
    ];
    for (i, (case_id, ext)) in cases.iter().enumerate() {
        let spec = case_spec(
            Some(ext),
            vec![file_spec("acte.pdf", Content::Bytes(vec![i as u8; 10 + i]))],
        );
        w.hub.add_case_with_id(CLIENT, case_id, spec);
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert!(code == 0 || code == 1, "{out}{err}");
    assert_nothing_escaped(&w);
    let entries = check_new(&w.spool()).unwrap_or_else(|e| panic!("{e}"));
    let mut lower = std::collections::HashSet::new();
    for (name, _) in &entries {
        assert_safe_name(name);
        assert_not_a_windows_device(name);
        assert!(lower.insert(name.to_lowercase()), "{name}: not unique");
    }
    let mut failed = Vec::new();
    for (case_id, ext) in &cases {
        let mine: Vec<_> = entries
            .iter()
            .filter(|(_, m)| m["case_id"] == *case_id)
            .collect();
        if mine.is_empty() {
            assert!(
                out.contains(&format!("dossier {case_id} ")),
                "{case_id:?} neither delivered nor named in the report: {out}"
            );
            assert!(w.receipt_events(case_id).is_empty());
            failed.push(*case_id);
            continue;
        }
        assert_eq!(mine.len(), 1, "{case_id:?} once");
        assert_eq!(
            mine[0].1["external_id"], *ext,
            "the manifest keeps the hub's id"
        );
        assert_eq!(w.receipt_events(case_id).len(), 1, "{case_id:?}");
    }
    assert!(
        failed.iter().all(|c| [".", "..", " spaced "].contains(c)),
        "only the ids no URL can carry may fail: {failed:?}"
    );
    assert_eq!(
        code == 0,
        failed.is_empty(),
        "exit status reflects failures"
    );
    assert_eq!(w.hub.notifications(CLIENT).len(), failed.len());
    println!("ids no URL can carry, refused by name: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn windows_reserved_external_ids_give_safe_entry_names() {
    let w = World::new().await;
    let externals = [
        "aux.txt",
        "COM1.pdf",
        "nul.tar.gz",
        "Lpt9.x",
        "con .x",
        "PRN",
    ];
    for (i, ext) in externals.iter().enumerate() {
        w.hub.add_case(
            CLIENT,
            case_spec(
                Some(ext),
                vec![file_spec("acte.pdf", Content::Bytes(vec![i as u8; 5]))],
            ),
        );
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let entries = check_new(&w.spool()).unwrap();
    assert_eq!(entries.len(), externals.len());
    for (name, _) in &entries {
        assert_safe_name(name);
        assert_not_a_windows_device(name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn case_ids_that_sanitize_alike_get_distinct_entries() {
    let w = World::new().await;
    w.hub.set_lenient_ids(true);
    // Same external id; case ids that differ only in characters a safe name replaces.
    let ids = ["dossier/1", "dossier_1", "dossier?1", "dossier 1"];
    for (i, id) in ids.iter().enumerate() {
        let spec = case_spec(
            Some("DGS-CERTDC-SAME-01"),
            vec![file_spec("acte.pdf", Content::Bytes(vec![i as u8; 100]))],
        );
        w.hub.add_case_with_id(CLIENT, id, spec);
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_nothing_escaped(&w);
    let entries = check_new(&w.spool()).unwrap_or_else(|e| panic!("{e}"));
    // Never one case's files under another case's entry.
    for (name, m) in &entries {
        let entry = w.spool().join("new").join(name);
        let case_json: Value =
            serde_json::from_slice(&std::fs::read(entry.join("case.json")).unwrap()).unwrap();
        assert_eq!(
            case_json["id"], m["case_id"],
            "{name}: case.json and manifest agree"
        );
    }
    assert_eq!(code, 0, "every case delivered: {out}{err}");
    assert_eq!(entries.len(), ids.len(), "{entries:?}");
    for id in ids {
        assert_eq!(w.receipt_events(id).len(), 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_case_id_refused_by_the_hub_fails_naming_it() {
    let w = World::new().await;
    // The real hub answers 400 to a path id that is not a UUID (§3).
    let bad = "../../../../tmp/escape";
    w.hub.push_raw_notification(
        CLIENT,
        json!({"id": uuid(1), "processCode": "CERTDC", "caseId": bad, "eventId": null,
               "dateTime": "2024-07-04T08:54:15.438+00:00"}),
    );
    let good = w.add_case(1, 1, 100);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(bad), "the report names the case: {out}");
    assert_nothing_escaped(&w);
    let (_, m) = manifest_of_case(&w, &good);
    assert_eq!(m["case_id"], good.as_str());
    assert_eq!(check_new(&w.spool()).unwrap().len(), 1);
    assert_eq!(
        w.hub.notifications(CLIENT).len(),
        1,
        "the unusable notification stays (never silently deleted)"
    );
}

// ------------------------------------------------------------------ odd JSON

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_json_with_unknown_fields_nulls_and_string_numbers_is_delivered() {
    let w = World::new().await;
    let a = Content::Generated {
        size: 1024,
        seed: 1,
    };
    let b = Content::Generated {
        size: 3000,
        seed: 2,
    };
    let case = w.hub.add_case(
        CLIENT,
        case_spec(
            Some("DGS-CERTDC-ODD-01"),
            vec![file_spec("a.pdf", a.clone()), file_spec("b.xml", b.clone())],
        ),
    );
    w.hub.rewrite_case_json(&case, |v| {
        let o = v.as_object_mut().unwrap();
        o.insert(
            "somethingNew".into(),
            json!({"deep": [1, null, {"x": "y"}]}),
        );
        o.insert("priority".into(), json!(3.5));
        o.insert("applicant".into(), Value::Null);
        o.insert("recipient".into(), Value::Null);
        o.insert("partnerAttributes".into(), json!(42));
        o.remove("createDateTime");
        o.remove("folderId");
        o.remove("transmitter");
        let atts = v["attachments"].as_array_mut().unwrap();
        atts[0]["size"] = json!("1024");
        atts[0]["checksum"] = json!({"alg": "md5"});
        atts[1]["mimeType"] = Value::Null;
        atts[1].as_object_mut().unwrap().remove("type");
    });
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (name, m) = manifest_of_case(&w, &case);
    let atts = m["attachments"].as_array().unwrap();
    assert_eq!(atts[0]["size"], 1024, "a size given as a string");
    assert_eq!(atts[0]["sha256"], a.sha256_hex());
    assert_eq!(atts[1]["sha256"], b.sha256_hex());
    let entry = w.spool().join("new").join(&name);
    let kept: Value =
        serde_json::from_slice(&std::fs::read(entry.join("case.json")).unwrap()).unwrap();
    assert_eq!(
        kept["somethingNew"],
        json!({"deep": [1, null, {"x": "y"}]}),
        "case.json is the case exactly as the hub returned it"
    );
    assert_eq!(kept["attachments"][0]["size"], "1024");
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_or_missing_external_id_and_null_lists_still_deliver() {
    let w = World::new().await;
    let no_ext = w.add_case(1, 1, 500);
    let null_lists = w.add_case(2, 0, 0);
    w.hub.rewrite_case_json(&no_ext, |v| {
        v.as_object_mut().unwrap().remove("externalId");
        v["events"] = Value::Null;
    });
    w.hub.rewrite_case_json(&null_lists, |v| {
        v["externalId"] = Value::Null;
        v["attachments"] = Value::Null;
        v["events"] = Value::Null;
    });
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    for case in [&no_ext, &null_lists] {
        let (name, _) = manifest_of_case(&w, case);
        assert_safe_name(&name);
        assert!(name.contains(case.as_str()), "{name}");
        assert_eq!(w.receipt_events(case).len(), 1);
    }
    assert_eq!(check_new(&w.spool()).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_sizes_are_refused_naming_the_case() {
    let w = World::new().await;
    let odd_sizes = [
        Value::Null,
        json!(-5),
        json!("lots"),
        json!(1.5),
        json!([1]),
    ];
    let mut bad = Vec::new();
    for (i, size) in odd_sizes.iter().enumerate() {
        let case = w.add_case(i, 1, 100);
        let size = size.clone();
        w.hub.rewrite_case_json(&case, move |v| {
            v["attachments"][0]["size"] = size.clone();
        });
        bad.push(case);
    }
    let missing = w.add_case(10, 1, 100);
    w.hub.rewrite_case_json(&missing, |v| {
        v["attachments"][0].as_object_mut().unwrap().remove("size");
    });
    bad.push(missing);
    let good = w.add_case(20, 1, 100);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    for case in &bad {
        assert!(
            out.contains(case.as_str()),
            "the report names {case}: {out}"
        );
        assert!(w.receipt_events(case).is_empty());
    }
    let entries = check_new(&w.spool()).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1["case_id"], good.as_str());
    assert_eq!(w.hub.notifications(CLIENT).len(), bad.len());
    assert_eq!(
        w.hub.request_count(Route::GetAttachment),
        1,
        "nothing fetched for a file of unknown size"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_json_that_is_not_a_case_is_refused_naming_the_case() {
    let w = World::new().await;
    type Rewrite = Box<dyn Fn(&mut Value) + Send + Sync>;
    let rewrites: Vec<Rewrite> = vec![
        Box::new(|v| *v = json!("a string")),
        Box::new(|v| *v = Value::Null),
        Box::new(|v| v["attachments"] = json!("oops")),
        Box::new(|v| v["attachments"] = json!([17])),
        Box::new(|v| v["id"] = json!("00000000-0000-4000-8000-00000000beef")),
    ];
    let mut cases = Vec::new();
    for (i, f) in rewrites.into_iter().enumerate() {
        let case = w.add_case(i, 1, 100);
        w.hub.rewrite_case_json(&case, f);
        cases.push(case);
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    for case in &cases {
        assert!(
            out.contains(case.as_str()),
            "the report names {case}: {out}"
        );
    }
    let published = check_new(&w.spool()).unwrap();
    assert!(published.is_empty(), "{published:?}");
    assert!(w.entries("tmp").is_empty());
    assert_eq!(w.hub.notifications(CLIENT).len(), cases.len());
    assert_eq!(w.hub.request_count(Route::PatchCase), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_case_answer_is_not_taken_for_a_case_without_files() {
    for body in [json!({}), json!([])] {
        let w = World::new().await;
        let content = Content::Bytes(b"the certificate".to_vec());
        let case = w.hub.add_case(
            CLIENT,
            case_spec(
                Some("DGS-CERTDC-EMPTY-ANSWER"),
                vec![file_spec("acte.pdf", content.clone())],
            ),
        );
        // A gateway or a broken hub answers 200 with an empty document, once.
        let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = std::sync::Arc::clone(&broken);
        let b = body.clone();
        w.hub.rewrite_case_json(&case, move |v| {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                *v = b.clone();
            }
        });
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 1, "{body}: {out}{err}");
        assert!(out.contains(&case), "{body}: names the case: {out}");
        let published = check_new(&w.spool()).unwrap();
        assert!(
            published.is_empty(),
            "{body}: nothing published from an empty answer: {published:?}"
        );
        // The hub recovers: the case arrives with its file.
        broken.store(false, std::sync::atomic::Ordering::SeqCst);
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 0, "{body}: {out}{err}");
        let (_, m) = manifest_of_case(&w, &case);
        assert_eq!(
            m["attachments"].as_array().map(Vec::len),
            Some(1),
            "{body}: the file is delivered: {m}"
        );
        assert_eq!(m["attachments"][0]["sha256"], content.sha256_hex());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_case_status_is_reported_and_never_delivered_twice() {
    let w = World::new().await;
    let case = w.add_case(1, 1, 100);
    w.hub
        .rewrite_case_json(&case, |v| v["status"] = json!("HUBEE_ENRICHMENT"));
    for run in 1..=2 {
        let (code, out, err) = w.run(&["once"]).await;
        assert_eq!(code, 1, "run {run}: {out}{err}");
        assert!(out.contains(&case), "run {run}: names the case: {out}");
        assert!(
            format!("{out}{err}").contains("HUBEE_ENRICHMENT"),
            "run {run}: names the status"
        );
        assert!(check_new(&w.spool()).unwrap().len() <= 1, "run {run}");
    }
    assert!(w.receipt_events(&case).is_empty());
    assert_eq!(w.hub.request_count(Route::PatchCase), 0);
    // Failing two cycles, it is parked: owed in the state database (its notification
    // deleted so that the queue moves), never acknowledged as received on the hub.
    let (_, st, _) = w.run(&["status", "--json"]).await;
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st[0]["parked"], 1, "{st}");
}

// ------------------------------------------------------------------ odd notifications

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_notifications_deliver_the_case_once() {
    let w = World::new().await;
    w.hub.set_shuffle(Some(3));
    let case = w.add_case(1, 2, 2000);
    let real = w.hub.notifications(CLIENT).remove(0);
    // The same notification twice in the batch, and a second notification id for the case.
    w.hub.push_raw_notification(CLIENT, real.clone());
    let mut other = real.clone();
    other["id"] = json!(uuid(77));
    other["unexpected"] = json!({"x": [1, 2]});
    w.hub.push_raw_notification(CLIENT, other);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(check_new(&w.spool()).unwrap().len(), 1);
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert_eq!(
        w.hub.request_count(Route::GetAttachment),
        2,
        "files fetched once"
    );
    assert!(w.hub.notifications(CLIENT).is_empty(), "all three deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_without_a_case_id_are_reported_not_deleted() {
    let w = World::new().await;
    let nulls = [
        json!({"id": uuid(1), "processCode": "CERTDC", "caseId": null, "eventId": null}),
        json!({"id": uuid(2), "processCode": "CERTDC", "eventId": null}),
        json!({"id": uuid(3), "processCode": "CERTDC", "caseId": "", "eventId": null}),
        json!({"id": uuid(4), "caseId": "   "}),
    ];
    for n in &nulls {
        w.hub.push_raw_notification(CLIENT, n.clone());
    }
    let good = w.add_case(1, 1, 100);
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 1, "{out}{err}");
    for i in 1..=4 {
        assert!(
            out.contains(&uuid(i)),
            "names notification {}: {out}",
            uuid(i)
        );
    }
    assert_eq!(
        w.receipt_events(&good).len(),
        1,
        "the rest of the batch goes on"
    );
    assert_eq!(
        w.hub.notifications(CLIENT).len(),
        4,
        "never silently deleted"
    );
    assert_eq!(w.hub.request_count(Route::DeleteNotification), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn notification_without_an_id_is_reported_with_its_case() {
    let w = World::new().await;
    let good = w.add_case(1, 1, 100);
    // It cannot be deleted, so it can never be acknowledged: that must not look like success.
    let orphan_case = uuid(99);
    w.hub.push_raw_notification(
        CLIENT,
        json!({"processCode": "CERTDC", "caseId": orphan_case, "eventId": null}),
    );
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(w.receipt_events(&good).len(), 1);
    assert!(
        format!("{out}{err}").contains(&orphan_case),
        "the log names its case: {out}{err}"
    );
    assert_eq!(code, 1, "a notification left unhandled is a failure: {out}");
}
