//! The crash campaign, part one: the process is killed (SIGKILL, as by a power cut) at each
//! named step boundary, then started again; the end state is always the fault-free one.

mod common;

use common::{sha256sum_check, World, CLIENT};

/// Every step boundary a télédossier passes (see src/crashpoint.rs and its callers).
const POINTS: &[&str] = &[
    "during_download",
    "after_seal",
    "after_intent",
    "after_rename",
    "after_patch",
    "after_event_post",
    "before_delete",
];

async fn run_with_crash(w: &World, point: &str, nth: u32) -> Option<i32> {
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

/// Every case exactly once in new/ (by manifest), verified; one receipt event each; no
/// notification left; nothing in tmp/.
fn assert_fault_free_result(w: &World, cases: &[String], what: &str) {
    let mut seen = std::collections::HashMap::new();
    for e in w.entries("new") {
        let dir = w.spool().join("new").join(&e);
        assert!(sha256sum_check(&dir), "{what}: {e} fails sha256sum -c");
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        *seen
            .entry(m["case_id"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    for c in cases {
        assert_eq!(
            seen.get(c),
            Some(&1),
            "{what}: case {c} exactly once: {seen:?}"
        );
        assert_eq!(
            w.receipt_events(c).len(),
            1,
            "{what}: one receipt event for {c}"
        );
        assert_eq!(
            w.hub.case_status(c).as_deref(),
            Some("IN_PROGRESS"),
            "{what}"
        );
    }
    assert!(
        w.hub.notifications(CLIENT).is_empty(),
        "{what}: notifications left"
    );
    assert!(
        w.entries("tmp").is_empty(),
        "{what}: tmp/ not empty: {:?}",
        w.entries("tmp")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_step_boundary_never_loses_or_duplicates() {
    let mut kills = 0;
    for point in POINTS {
        for nth in [1, 2] {
            let w = World::new().await;
            let cases: Vec<String> = (0..3).map(|n| w.add_case(n, 2, 40_000)).collect();
            let code = run_with_crash(&w, point, nth).await;
            assert_eq!(
                code, None,
                "{point}:{nth}: the process was killed by the crash point"
            );
            kills += 1;
            // Never a partial entry in new/, even right after the kill.
            for e in w.entries("new") {
                assert!(
                    sha256sum_check(&w.spool().join("new").join(&e)),
                    "{point}:{nth}: partial entry {e}"
                );
            }
            let (code, out, err) = w.run(&["once"]).await;
            assert_eq!(code, 0, "{point}:{nth}: {out}{err}");
            assert_fault_free_result(&w, &cases, &format!("{point}:{nth}"));
        }
    }
    println!(
        "crash points: {} kills survived, 0 lost, 0 duplicated",
        kills
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_at_the_same_point_still_converge() {
    let w = World::new().await;
    let cases: Vec<String> = (0..6).map(|n| w.add_case(n, 1, 20_000)).collect();
    // Each run dies at its 2nd passage of a point, making some progress each time.
    let mut runs = 0;
    for point in POINTS.iter().cycle().take(14) {
        let _ = run_with_crash(&w, point, 2).await;
        runs += 1;
    }
    let (code, out, err) = w.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_fault_free_result(&w, &cases, "after 14 killed runs");
    println!("{runs} killed runs, then one clean run: fault-free result");
}
