//! The outbox campaign (issue 9 §1 and §2, for replies): `hubee-sync run` against the fake
//! hub while the legacy software keeps dropping replies into `outbox/new/` of two
//! subscriptions — replies with 1–3 files, status changes, messages, reused folder names and
//! broken replies — killed over and over, by SIGKILL at seeded random instants and at every
//! named step boundary of the outbox (src/outbox/apply.rs, mod.rs), with a fifth of all
//! requests failing on every route (outbox routes included) while it is being killed.
//!
//! After every kill: every folder in `sent/` has `result.json`, every folder in `failed/` has
//! `error.txt`. At the end, after clean `once` runs without faults, for every reply: exactly
//! one event on the hub carrying its marker, of the right type, `SENT`; each of its files
//! declared once, stored with the reply's bytes and answered 2xx exactly once; the case at the
//! status the reply asked; the folder in `sent/` with `result.json` naming that event. Every
//! broken reply is in `failed/` with `error.txt` and touched nothing on the hub. Nothing is
//! left in `new/` or `tmp/`, nothing else is in `sent/` or `failed/`, and one more `once`
//! changes nothing on the hub.
//!
//! Reproduce: `cargo test --test reliability_outbox -- --nocapture`; another seed or more
//! lives: `HUBEE_OUTBOX_SEED=7 HUBEE_OUTBOX_LIVES=120 cargo test --test reliability_outbox -- --nocapture`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::campaign::{live_one_life, Campaign, LifeEnd, PointPicker, SUBS};
use common::daemon::dir_entries;
use fake_hubee::{Fault, Route};
use serde_json::{json, Value};
use sha2::Digest;

/// Every step boundary a reply passes (see src/outbox/apply.rs and src/outbox/mod.rs).
const POINTS: &[&str] = &[
    "outbox_after_event_post",
    "outbox_after_put",
    "outbox_after_received_check",
    "outbox_after_status_patch",
    "outbox_before_sent",
    "outbox_after_sent",
    "outbox_before_move",
];

/// A crash-point life that has not reached its point after this long is SIGKILLed instead.
const POINT_BOUND: Duration = Duration::from_millis(3000);

/// Share of requests that fail during the kill phase.
const RATE: f64 = 0.2;

/// File sizes mixed in the replies.
const SIZES: [usize; 4] = [7, 20_000, 200_000, 1024 * 1024];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// The transient fault kinds that mean something on the outbox's routes (no digest faults:
/// the outbox downloads nothing). Never a random 4xx: the protocol makes it final.
fn kinds() -> Vec<Fault> {
    vec![
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::TooManyRequests {
            retry_after_secs: 0,
        },
        Fault::ResetBeforeEffect,
        Fault::ResetAfterEffect,
        Fault::ResetMidBody { after_bytes: 5_000 },
        Fault::TruncateBody { after_bytes: 40 },
        Fault::SlowBody { chunk_delay_ms: 3 },
        Fault::KillToken,
    ]
}

/// What one reply asks, and what must become of it.
#[derive(Debug, Clone)]
struct Reply {
    sub: usize,
    folder: String,
    case_id: String,
    /// SHA-256 of its reply.json: with the folder name, what the reply is known by.
    sha: String,
    status: Option<&'static str>,
    message: Option<String>,
    /// (file name, bytes) as written next to reply.json.
    files: Vec<(String, Vec<u8>)>,
    /// A broken reply: it must end in failed/ and touch nothing on the hub.
    broken: bool,
}

impl Reply {
    fn marker(&self) -> String {
        format!(
            "hubee-sync:reply:{}:{}",
            &self.sha[..16],
            self.folder
                .chars()
                .map(
                    |c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '_'
                    }
                )
                .collect::<String>()
        )
    }
}

struct Outbox {
    c: Campaign,
    rng: fastrand::Rng,
    replies: Vec<Reply>,
    /// Cases already given a final status (DONE or REFUSED) by a reply.
    decided: BTreeMap<String, &'static str>,
    next: usize,
    /// Folder names reused for a new reply once the first was in sent/.
    reused: usize,
    /// Files stored a second time (same bytes) because the answer to the first PUT was lost.
    resent: std::cell::Cell<usize>,
    /// Status events left stale by a portal agent's move in the round trip between our read
    /// and our POST, on a hub that accepts any event.
    raced: std::cell::Cell<usize>,
}

impl Outbox {
    fn dir(&self, sub: usize, which: &str) -> PathBuf {
        self.c.spool(sub).join("outbox").join(which)
    }

    /// Writes a reply as the legacy software must: in tmp/, then one rename into new/.
    fn drop_reply(&mut self, r: Reply, reply_json: &[u8]) {
        let tmp = self.dir(r.sub, "tmp").join(&r.folder);
        std::fs::create_dir_all(&tmp).expect("outbox/tmp");
        for (f, data) in &r.files {
            std::fs::write(tmp.join(f), data).expect("write a reply file");
        }
        std::fs::write(tmp.join("reply.json"), reply_json).expect("write reply.json");
        std::fs::rename(&tmp, self.dir(r.sub, "new").join(&r.folder)).expect("rename into new/");
        self.replies.push(r);
    }

    /// One more reply: with files (and a final status or none), a status change with a
    /// message, a message alone, or (one in eight) a broken one. A folder name already in
    /// sent/ is reused now and then: a new reply.
    fn add(&mut self) {
        self.add_as(false);
    }

    /// `full`: files and a final status on a case that has none yet (when one is left), so
    /// that the reply passes every step boundary.
    fn add_as(&mut self, full: bool) {
        let uid = self.next;
        let mut n = uid;
        self.next += 1;
        let ids: Vec<String> = self.c.cases.keys().cloned().collect();
        let undecided: Vec<&String> = ids
            .iter()
            .filter(|i| !self.decided.contains_key(*i))
            .collect();
        let case_id = match (full, undecided.is_empty()) {
            (true, false) => undecided[self.rng.usize(..undecided.len())].clone(),
            _ => ids[self.rng.usize(..ids.len())].clone(),
        };
        if full {
            // A kind with files (n % 8 < 4) that never reuses a folder name (n % 9 != 5).
            n = n - n % 8;
        }
        let sub = self.c.cases[&case_id].sub;
        let ext = self
            .c
            .world
            .hub
            .case_json(&case_id)
            .and_then(|v| v["externalId"].as_str().map(str::to_string))
            .expect("the case's external id");
        let mut folder = format!("reponse-{uid:04}");
        if !full && n % 9 == 5 {
            let sent = dir_entries(&self.dir(sub, "sent"));
            let taken = sent
                .iter()
                .find(|f| !f.contains('~') && !self.dir(sub, "new").join(f.as_str()).exists());
            if let Some(f) = taken {
                folder = f.clone();
                self.reused += 1;
            }
        }
        let kind = n % 8;
        // Undecided cases are kept for the replies that must pass the status walk: the
        // others ask a final status one time in two.
        let final_status = match (self.decided.contains_key(&case_id), full, self.rng.u8(..4)) {
            (true, _, _) => None,
            (false, true, _) | (false, false, 0) => Some("DONE"),
            (false, false, 1) => Some("REFUSED"),
            _ => None,
        };
        let type_ = if SUBS[sub].process_code == "CERTDC" {
            "DD_Certificatdedeces"
        } else {
            "ActeEtatCivil-PDF"
        };
        let mut files = Vec::new();
        let (status, message, broken) = match kind {
            // Files: 1–3, with a final status when the case has none yet.
            0..=3 => {
                for i in 0..1 + self.rng.usize(..3) {
                    let size = if self.rng.u8(..8) == 0 {
                        SIZES[3]
                    } else {
                        SIZES[self.rng.usize(..3)]
                    };
                    let mut data = b"%PDF-1.4\n".to_vec();
                    data.resize(size.max(9), 0);
                    let mut x = (uid * 31 + i + 1) as u32 | 1;
                    for b in data.iter_mut().skip(9) {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        *b = x as u8;
                    }
                    data.truncate(size);
                    files.push((format!("acte-{i}.pdf"), data));
                }
                (final_status, Some(format!("Votre acte ({uid})")), false)
            }
            4 | 5 => (
                final_status,
                Some(format!("Décision sur votre demande ({uid})")),
                false,
            ),
            6 => (None, Some(format!("Un message du service ({uid})")), false),
            _ => (None, None, true),
        };
        let mut body = json!({"message": message});
        if n % 2 == 0 {
            body["case_id"] = json!(case_id);
        } else {
            body["external_id"] = json!(ext);
        }
        if let Some(s) = status {
            body["status"] = json!(s);
        }
        if broken {
            // Names a file that is not in the folder, or asks a status that does not exist.
            if n % 16 == 7 {
                body["attachments"] = json!([{"file": "absent.pdf", "type": type_,
                    "mime_type": "application/pdf"}]);
            } else {
                body["status"] = json!("FINISHED");
            }
            body["message"] = json!(format!("cassé ({uid})"));
        } else if !files.is_empty() {
            body["attachments"] = Value::Array(
                files
                    .iter()
                    .map(|(f, _)| json!({"file": f, "type": type_, "mime_type": "application/pdf"}))
                    .collect(),
            );
        }
        if let (Some(s), false) = (status, broken) {
            self.decided.insert(case_id.clone(), s);
        }
        let reply_json = serde_json::to_vec_pretty(&body).expect("json");
        let r = Reply {
            sub,
            folder,
            case_id,
            sha: sha256_hex(&reply_json),
            status: if broken { None } else { status },
            message: if broken { None } else { message },
            files,
            broken,
        };
        self.drop_reply(r, &reply_json);
    }

    /// Right after a kill: a folder is in sent/ only with result.json, in failed/ only with
    /// error.txt (each is written before the folder moves).
    fn check_moved_so_far(&self) -> Result<(), String> {
        for sub in 0..SUBS.len() {
            for (which, note) in [("sent", "result.json"), ("failed", "error.txt")] {
                for f in dir_entries(&self.dir(sub, which)) {
                    let p = self.dir(sub, which).join(&f);
                    if !p.join(note).is_file() {
                        return Err(format!("{} has no {note}", p.display()));
                    }
                    if !p.join("reply.json").is_file() {
                        return Err(format!("{} lost its reply.json", p.display()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Folders of `which` (sent/failed) by the SHA-256 of their reply.json.
    fn moved_by_sha(&self, sub: usize, which: &str) -> BTreeMap<String, Vec<PathBuf>> {
        let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for f in dir_entries(&self.dir(sub, which)) {
            let p = self.dir(sub, which).join(&f);
            let sha = std::fs::read(p.join("reply.json"))
                .map(|b| sha256_hex(&b))
                .unwrap_or_default();
            out.entry(sha).or_default().push(p);
        }
        out
    }

    /// The end state: see the module's documentation.
    fn assert_end_state(&self, what: &str) {
        let hub = &self.c.world.hub;
        let requests = hub.requests();
        let mut sent_total = 0;
        let mut failed_total = 0;
        for (sub, s) in SUBS.iter().enumerate() {
            for which in ["new", "tmp"] {
                let left = dir_entries(&self.dir(sub, which));
                assert!(
                    left.is_empty(),
                    "{what}: outbox/{which} not empty: {left:?}"
                );
            }
            let sent = self.moved_by_sha(sub, "sent");
            let failed = self.moved_by_sha(sub, "failed");
            let mine: Vec<&Reply> = self.replies.iter().filter(|r| r.sub == sub).collect();
            for r in &mine {
                let id = format!("{what}: reply {} ({})", r.folder, &r.sha[..8]);
                let on_hub: Vec<Value> = hub
                    .events(&r.case_id)
                    .into_iter()
                    .filter(|e| {
                        e["comment"]
                            .as_str()
                            .and_then(|c| c.lines().next())
                            .map(str::trim)
                            == Some(r.marker().as_str())
                    })
                    .collect();
                if r.broken {
                    assert!(
                        on_hub.is_empty(),
                        "{id}: broken, yet on the hub: {on_hub:?}"
                    );
                    let f = failed.get(&r.sha).cloned().unwrap_or_default();
                    assert_eq!(f.len(), 1, "{id}: in failed/ exactly once: {f:?}");
                    assert!(
                        !sent.contains_key(&r.sha),
                        "{id}: a broken reply must not be in sent/"
                    );
                    continue;
                }
                let s = sent.get(&r.sha).cloned().unwrap_or_default();
                if s.is_empty() {
                    // Where it went instead, and why (a rare interleaving to diagnose).
                    let why: Vec<String> = failed
                        .get(&r.sha)
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            let e =
                                std::fs::read_to_string(p.join("error.txt")).unwrap_or_default();
                            format!("{}: {e}", p.display())
                        })
                        .collect();
                    panic!(
                        "{what}: {id}: not in sent/; in failed/: {why:?}; its case's status history: {:?}",
                        hub.status_history(&r.case_id)
                    );
                }
                assert_eq!(s.len(), 1, "{id}: in sent/ exactly once: {s:?}");
                let result: Value = serde_json::from_slice(
                    &std::fs::read(s[0].join("result.json")).expect("result.json"),
                )
                .expect("result.json is JSON");
                let outcome = result["status_step"]["outcome"].as_str().unwrap_or("");
                let of = |t: &str| -> Vec<&Value> {
                    on_hub.iter().filter(|e| e["actionType"] == t).collect()
                };
                let (deposits, statuses, messages) = (
                    of("ATTACH_DEPOSIT"),
                    of("STATUS_UPDATE"),
                    of("SENDING_MESSAGE"),
                );
                // Exactly once: one deposit per reply with files; one status event unless the
                // case already was there (found); one message event for a message alone, or
                // for a message whose status someone else had set.
                let ev = if !r.files.is_empty() {
                    assert_eq!(deposits.len(), 1, "{id}: one deposit: {on_hub:#?}");
                    assert!(messages.is_empty(), "{id}: {on_hub:#?}");
                    let d = deposits[0];
                    assert_eq!(
                        d["caseCurrentStatus"], d["caseNewStatus"],
                        "{id}: a deposit changes no status"
                    );
                    match r.status {
                        Some(_) if outcome == "found" => {
                            assert!(statuses.is_empty(), "{id}: found, yet {statuses:#?}")
                        }
                        Some(st) => {
                            assert_eq!(statuses.len(), 1, "{id}: one status event: {on_hub:#?}");
                            assert_eq!(statuses[0]["caseNewStatus"], st, "{id}");
                            // The documents went first: the deposit was SENT before anything of
                            // ours moved the case to the reply's status.
                            let deposit_id = d["id"].as_str().unwrap_or_default();
                            let sent_at = requests.iter().position(|q| {
                                q.route == Some(Route::PatchEvent)
                                    && q.path.ends_with(deposit_id)
                                    && effective(q)
                            });
                            let moved_at = requests.iter().position(|q| {
                                q.path.contains(&r.case_id)
                                    && effective(q)
                                    && q.body.as_ref().is_some_and(|b| {
                                        (q.route == Some(Route::PatchCase) && b["status"] == st)
                                            || (q.route == Some(Route::PostEvent)
                                                && b["caseNewStatus"] == st
                                                && b["comment"]
                                                    .as_str()
                                                    .is_some_and(|c| c.starts_with(&r.marker())))
                                    })
                            });
                            assert!(
                                sent_at.is_some() && moved_at.is_some() && sent_at < moved_at,
                                "{id}: the case reached {st} (request {moved_at:?}) before its document was SENT (request {sent_at:?})"
                            );
                        }
                        None => assert!(statuses.is_empty(), "{id}: {statuses:#?}"),
                    }
                    d
                } else {
                    assert_eq!(on_hub.len(), 1, "{id}: exactly one event: {on_hub:#?}");
                    let e = &on_hub[0];
                    match (r.status, outcome) {
                        (Some(_), "found") => {
                            assert_eq!(e["actionType"], "SENDING_MESSAGE", "{id}");
                        }
                        (Some(st), _) => {
                            assert_eq!(e["actionType"], "STATUS_UPDATE", "{id}");
                            assert_eq!(e["caseNewStatus"], st, "{id}");
                        }
                        (None, _) => assert_eq!(e["actionType"], "SENDING_MESSAGE", "{id}"),
                    }
                    e
                };
                let ev_id = ev["id"].as_str().unwrap_or_default();
                assert_eq!(ev["status"], "SENT", "{id}: the OSL was told");
                if let Some(m) = &r.message {
                    assert_eq!(ev["message"], m.as_str(), "{id}");
                }
                assert_eq!(
                    result["event_id"], ev_id,
                    "{id}: result.json names its event"
                );
                let atts = ev["attachments"].as_array().cloned().unwrap_or_default();
                assert_eq!(atts.len(), r.files.len(), "{id}: each file declared once");
                for (name, data) in &r.files {
                    let att = atts
                        .iter()
                        .find(|a| a["fileName"] == name.as_str())
                        .unwrap_or_else(|| panic!("{id}: {name} declared"));
                    let att_id = att["id"].as_str().unwrap_or_default();
                    assert_eq!(att["status"], "RECEIVED", "{id}: {name}");
                    assert_eq!(att["size"], data.len() as u64, "{id}: {name}");
                    let (_, sha) = hub
                        .uploaded(&r.case_id, ev_id, att_id)
                        .unwrap_or_else(|| panic!("{id}: {name} uploaded"));
                    assert_eq!(sha, sha256_hex(data), "{id}: {name}: the reply's bytes");
                    let path = format!("/cases/{}/events/{ev_id}/attachments/{att_id}", r.case_id);
                    // A PUT took effect when the hub answered 2xx, or stored the file and
                    // then dropped the connection (ResetAfterEffect).
                    let puts: Vec<(Option<u16>, Option<Fault>)> = requests
                        .iter()
                        .filter(|q| {
                            q.route == Some(Route::PutEventAttachment) && q.path.ends_with(&path)
                        })
                        .map(|q| (q.status, q.fault.clone()))
                        .collect();
                    let took_effect = |p: &(Option<u16>, Option<Fault>)| {
                        p.0.is_some_and(|s| (200..300).contains(&s))
                            || p.1 == Some(Fault::ResetAfterEffect)
                    };
                    let effective = puts.iter().filter(|p| took_effect(p)).count();
                    // What the client saw succeed: a 2xx with nothing done to the answer.
                    let seen_ok = |p: &(Option<u16>, Option<Fault>)| {
                        p.0.is_some_and(|s| (200..300).contains(&s))
                            && matches!(p.1, None | Some(Fault::SlowBody { .. }))
                    };
                    // The same bytes go again only when the answer to a PUT was lost (HTTP PUT
                    // is idempotent); never once the client saw the hub say 2xx.
                    assert!(
                        effective >= 1
                            && puts
                                .iter()
                                .position(seen_ok)
                                .is_none_or(|i| i + 1 == puts.len()),
                        "{id}: {name}: stored, and no PUT after a 2xx: {puts:?}"
                    );
                    self.resent.set(self.resent.get() + effective - 1);
                }
                assert!(!failed.contains_key(&r.sha), "{id}: not also in failed/");
            }
            let want_sent = mine.iter().filter(|r| !r.broken).count();
            let want_failed = mine.len() - want_sent;
            let n_sent: usize = sent.values().map(Vec::len).sum();
            let n_failed: usize = failed.values().map(Vec::len).sum();
            assert_eq!(
                n_sent, want_sent,
                "{what}: {}: nothing else in sent/",
                s.name
            );
            assert_eq!(
                n_failed, want_failed,
                "{what}: {}: nothing else in failed/",
                s.name
            );
            sent_total += n_sent;
            failed_total += n_failed;
        }
        assert_eq!(sent_total + failed_total, self.replies.len(), "{what}");
        let mut raced_here = 0;
        // Every reply event on a case is one of that case's replies': no stray event.
        let touched: std::collections::BTreeSet<String> = hub
            .agent_log()
            .iter()
            .filter(|a| a["ok"] == true)
            .filter_map(|a| a["caseId"].as_str().map(str::to_string))
            .collect();
        for (id, c) in &self.c.cases {
            let markers: Vec<String> = self
                .replies
                .iter()
                .filter(|r| &r.case_id == id && !r.broken)
                .map(Reply::marker)
                .collect();
            for e in hub.events(id) {
                let Some(first) = e["comment"].as_str().and_then(|c| c.lines().next()) else {
                    continue;
                };
                if first.starts_with("hubee-sync:reply:") {
                    assert!(
                        markers.iter().any(|m| m == first.trim()),
                        "{what}: case {id}: an event of no reply: {e}"
                    );
                }
            }
            // Never moved back by us; never a status event that lies.
            for h in hub.status_history(id) {
                let by = h["by"].as_str().unwrap_or("");
                if by == "patch" || by.starts_with("event:") {
                    assert!(
                        rank(h["to"].as_str().unwrap_or(""))
                            > rank(h["from"].as_str().unwrap_or("")),
                        "{what}: case {id}: moved back by hubee-sync: {h}"
                    );
                }
            }
            let (wrong, raced) = common::untruthful_status_events(hub, id);
            assert!(
                wrong.is_empty(),
                "{what}: case {id}: untruthful status events: {wrong:#?}"
            );
            raced_here += raced.len();
            if touched.contains(id) {
                continue;
            }
            let want = self
                .decided
                .get(id)
                .copied()
                .unwrap_or(SUBS[c.sub].receipt_status);
            assert_eq!(
                hub.case_status(id).as_deref(),
                Some(want),
                "{what}: case {id} at the status its reply asked"
            );
        }
        self.raced.set(raced_here);
    }
}

/// A request that took effect on the hub: answered 2xx, or done and then cut
/// (ResetAfterEffect).
fn effective(q: &fake_hubee::RequestRecord) -> bool {
    q.status.is_some_and(|s| (200..300).contains(&s)) || q.fault == Some(Fault::ResetAfterEffect)
}

/// The portal's forward order (PROTOCOL §10.19), for "never moved back".
fn rank(status: &str) -> u8 {
    match status {
        "HUBEE_NOTIFIED" => 1,
        "SENT" => 2,
        "SI_RECEIVED" => 3,
        "IN_PROGRESS" => 4,
        "ADD_AWAITING" => 5,
        "REFUSED" => 6,
        "DONE" => 7,
        "SI_INTG_ERROR" => 5,
        "CLOSED" => 8,
        _ => 0,
    }
}

fn mutating(c: &Campaign) -> usize {
    c.world
        .hub
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.route != Some(Route::Token))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_under_sigkills_crash_points_and_hub_faults_are_sent_exactly_once() {
    let seed = env_u64("HUBEE_OUTBOX_SEED", 1);
    let lives = env_u64("HUBEE_OUTBOX_LIVES", 64) as usize;
    let started = Instant::now();
    let mut c = Campaign::new("every 1s", "").await;
    for n in 0..60 {
        c.add_case(usize::from(n % 3 == 2));
    }
    // The cases are received first, fault-free: replies answer received cases.
    let (code, out, err) = c.world.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let before_replies = c.world.hub.requests().len();
    let mut o = Outbox {
        c,
        rng: fastrand::Rng::with_seed(seed),
        replies: Vec::new(),
        decided: BTreeMap::new(),
        next: 0,
        reused: 0,
        resent: std::cell::Cell::new(0),
        raced: std::cell::Cell::new(0),
    };
    for _ in 0..10 {
        o.add();
    }
    o.c.world.hub.inject_random(None, RATE, kinds(), seed);
    // A portal agent works the same cases all along the kill phase (PROTOCOL §10.18): it
    // opens them, moves them forward (SI_RECEIVED, IN_PROGRESS, REFUSED, DONE), posts
    // messages and records downloads.
    let agent = o.c.world.hub.start_agent(seed, Duration::from_millis(250));

    let config = o.c.world.config_path();
    let (mut random_kills, mut point_kills, mut point_missed) = (0, 0, 0);
    let mut points = PointPicker::new(POINTS);
    let mut missed: Vec<&str> = Vec::new();
    for life in 0..lives {
        // Both kinds of hub (PROTOCOL §10.1), eight lives each in turn: where an event moves
        // the status, and where only PATCH does; a reply begun on one is finished on the other.
        o.c.world
            .hub
            .set_behaviour(common::hubs()[life / 8 % 2].1.clone());
        let crash_point = (life % 4 == 3).then(|| {
            // Fresh replies with files before each crash-point life, so every point is passed.
            o.add_as(true);
            o.add_as(true);
            o.add();
            // The 2nd passage only where one reply passes the point several times (a PUT
            // per file); elsewhere the 1st, so that the life reaches its point in time.
            let point = points.next();
            let nth = if point == "outbox_after_put" {
                o.rng.u32(1..=2)
            } else {
                1
            };
            (point, nth)
        });
        if life % 4 == 1 {
            for _ in 0..4 {
                o.add();
            }
        }
        let log = o.c.world.dir.path().join("life.log");
        // Mostly short lives; one in six lives longer so cycles also complete (drawn only
        // for a life without a crash point, as the seeds' figures were).
        let random_ms = if crash_point.is_some() {
            0
        } else if o.rng.u8(0..6) == 0 {
            o.rng.u64(500..=1500)
        } else {
            o.rng.u64(50..=500)
        };
        let (d, end) = live_one_life(&config, log, life, crash_point, POINT_BOUND, random_ms).await;
        match end {
            LifeEnd::AtPoint(point) => {
                point_kills += 1;
                points.hit(point);
            }
            LifeEnd::PointMissed(_point) => {
                point_missed += 1;
                missed.push(_point);
            }
            LifeEnd::Random => random_kills += 1,
        }
        let log = d.log_text();
        assert!(!log.contains("panicked"), "life {life}: {log}");
        if let Err(why) = o.check_moved_so_far() {
            panic!("life {life} (seed {seed}): {why}\nlog of the life:\n{log}");
        }
    }
    let kill_phase = started.elapsed();
    let moved_under_kills: usize = (0..SUBS.len())
        .map(|s| dir_entries(&o.dir(s, "sent")).len() + dir_entries(&o.dir(s, "failed")).len())
        .sum();
    let faulted: Vec<(Route, Fault)> =
        o.c.world
            .hub
            .requests()
            .iter()
            .filter_map(|r| Some((r.route?, r.fault.clone()?)))
            .collect();
    let mut by_route = BTreeMap::<String, usize>::new();
    for (route, _) in &faulted {
        *by_route.entry(format!("{route:?}")).or_default() += 1;
    }
    let requests_under_kills = o.c.world.hub.requests().len() - before_replies;

    // Faults and the agent off; clean runs until one has nothing left to retry.
    drop(agent);
    let agent_acts =
        o.c.world
            .hub
            .agent_log()
            .iter()
            .filter(|a| a["ok"] == true)
            .count();
    o.c.world.hub.clear_faults();
    let mut clean_runs = 0;
    loop {
        clean_runs += 1;
        let (code, out, err) = o.c.world.run(&["once"]).await;
        assert!(!err.contains("panicked"), "{err}");
        if code == 0 {
            break;
        }
        assert!(clean_runs < 6, "no clean run in 6: exit {code}\n{out}{err}");
    }
    o.assert_end_state(&format!("seed {seed}"));
    let resent = o.resent.get();
    let before = mutating(&o.c);
    let (code, out, err) = o.c.world.run(&["once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        mutating(&o.c),
        before,
        "a converged outbox makes no change on the hub"
    );
    o.assert_end_state(&format!("seed {seed}, once more"));

    let files: usize = o.replies.iter().map(|r| r.files.len()).sum();
    let bytes: usize = o
        .replies
        .iter()
        .flat_map(|r| r.files.iter().map(|f| f.1.len()))
        .sum();
    let broken = o.replies.iter().filter(|r| r.broken).count();
    // Replies whose status someone else (the agent) had already set: documents and messages
    // still delivered, no status event.
    let found = (0..SUBS.len())
        .flat_map(|s| {
            dir_entries(&o.dir(s, "sent"))
                .into_iter()
                .map(move |f| (s, f))
        })
        .filter(|(s, f)| {
            std::fs::read(o.dir(*s, "sent").join(f).join("result.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .is_some_and(|r| r["status_step"]["outcome"] == "found")
        })
        .count();
    let with_files = o.replies.iter().filter(|r| !r.files.is_empty()).count();
    let points_hit = points.hits();
    println!(
        "outbox campaign seed {seed}: {lives} lives of `run`: {random_kills} random SIGKILLs \
         (50-1500 ms) + {point_kills} at outbox crash points {points_hit:?} ({point_missed} not \
         reached in {POINT_BOUND:?}, killed instead: {missed:?}); {} replies over 2 subscriptions \
         ({with_files} with files: {files} files, {:.1} MB; {} status changes; {broken} broken; \
         {} reused folder names); {} faults injected in {requests_under_kills} requests during \
         the kill phase ({:.0} %), by route {by_route:?}; {moved_under_kills} of {} replies \
         moved to sent/ or failed/ during the kill phase ({:.1} s), the rest by {clean_runs} \
         clean `once`; lost 0, sent twice 0; every file stored with its bytes, {resent} of them \
         PUT again after the answer to a PUT that took effect was lost, none after a 2xx; \
         a portal agent acted {agent_acts} times on the same cases ({found} replies found \
         their status already set, and still delivered their documents and messages); no case at a reply's status \
         before its documents, no case moved back, no untruthful status event ({} left stale \
         by an agent's move within the POST's round trip on the accepting hub); total {:.1} s",
        o.replies.len(),
        bytes as f64 / 1e6,
        o.decided.len(),
        o.reused,
        faulted.len(),
        100.0 * faulted.len() as f64 / requests_under_kills.max(1) as f64,
        o.replies.len(),
        kill_phase.as_secs_f64(),
        o.raced.get(),
        started.elapsed().as_secs_f64(),
    );
    assert!(random_kills >= 40, "at least 40 random kills per run");
    assert_eq!(
        points_hit.len(),
        POINTS.len(),
        "every outbox crash point was hit at least once: {points_hit:?}"
    );
}
