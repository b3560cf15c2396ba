//! Partitions, Jepsen-style (issue 19): three `hubee-sync run` nodes on hosts of their own
//! (network namespaces, tests/common/netlab.rs), the state on a PostgreSQL of the `pg` host,
//! fake-hubee on the `hub` host, the spools shared (one directory, as on NFS). A seeded nemesis
//! cuts a node from PostgreSQL, cuts a node from the hub, isolates a node, pauses one
//! (SIGSTOP … SIGCONT) and kills one (SIGKILL, restarted), healing between faults, while cases,
//! OSL events and replies keep arriving. Then the checker, from the hub's request log, a
//! sampler of the lease table (on the `pg` host, never cut) and the spools:
//!
//! - every case delivered exactly once, one receipt event each; every OSL event once;
//! - no hub write for a subscription by a node while another node held its lease (the sampler
//!   saw the other node holding one epoch both before and after the write), and a node cut from
//!   PostgreSQL sends no write more than `lease_ttl` after the cut;
//! - no reply applied twice (one deposit event per reply);
//! - every subscription worked again (a successful request of its client) within two
//!   `lease_ttl` of each heal.
//!
//! CI runs a short schedule (`HUBEE_NETLAB_SECONDS`, default 60 s of nemesis); by hand:
//! `HUBEE_NETLAB_SECONDS=600 HUBEE_NETLAB_SEED=7 cargo test --test netlab_partitions -- --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netlab::{enter_ns, LabNode, Netlab};
use common::{check_new, write_mode, SECRET};
use fake_hubee::{AttachmentSpec, CaseSpec, Content, FakeHub, OslEvent, Route};

const SUBS: usize = 6;
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ttl() -> Duration {
    Duration::from_secs(env_u64("HUBEE_NETLAB_LEASE_TTL_SECS", 3))
}

fn sub_name(i: usize) -> String {
    format!("sub{i}")
}

fn client_of(i: usize) -> String {
    format!("{}-client", sub_name(i))
}

/// One look at the lease table: subscription → (holder, epoch), unexpired leases only.
type LeaseSample = (Instant, BTreeMap<String, (String, i64)>);

/// Samples the lease table every 50 ms from a thread on the `pg` host until `stop`.
fn lease_sampler(
    ns: String,
    url: String,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<LeaseSample>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        enter_ns(&format!("/run/netns/{ns}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("sampler runtime");
        rt.block_on(async move {
            use sqlx::{Connection, Row};
            let mut conn: Option<sqlx::PgConnection> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = sqlx::PgConnection::connect(&url).await.ok();
                }
                if let Some(c) = conn.as_mut() {
                    let rows = sqlx::query(
                        "SELECT subscription, holder, epoch FROM hubee_sync_lease
                         WHERE holder IS NOT NULL
                           AND expires_at > CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
                    )
                    .fetch_all(&mut *c)
                    .await;
                    let at = Instant::now();
                    match rows {
                        Ok(rows) => {
                            let m = rows
                                .iter()
                                .map(|r| {
                                    (
                                        r.get::<String, _>(0),
                                        (r.get::<String, _>(1), r.get::<i64, _>(2)),
                                    )
                                })
                                .collect();
                            out.lock().expect("samples").push((at, m));
                        }
                        // The table does not exist before the first node migrates.
                        Err(_) => conn = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    })
}

/// What the workload put on the hub and in the outboxes.
#[derive(Default)]
struct Work {
    /// case id → subscription index.
    cases: BTreeMap<String, usize>,
    /// OSL event id → case id.
    osl_events: BTreeMap<String, String>,
    /// case id → reply name.
    replies: BTreeMap<String, String>,
}

struct Lab {
    net: Netlab,
    hub: FakeHub,
    hub_url: String,
    ca_file: PathBuf,
    spools: PathBuf,
}

impl Lab {
    fn spool(&self, sub: usize) -> PathBuf {
        self.spools.join(sub_name(sub))
    }

    fn config(&self, node: &str, pg_url: &str) -> PathBuf {
        let d = self.net.dir.path().display();
        let hub = &self.hub_url;
        let ca = self.ca_file.display();
        let mut toml = format!(
            r#"[hub]
api_url = "{hub}"
token_url = "{hub}/oauth2/token"
ca_file = "{ca}"
editor_name = "Commune de Saint-Étienne"
application_name = "hubee-sync-{node}"
retry_attempts = 3
retry_base_delay = "50ms"
retry_max_delay = "300ms"
timeout = "2s"
max_parallel_subscriptions = {SUBS}

[state]
url = "{pg_url}"
node_name = "{node}"
lease_ttl = "{ttl}s"
"#,
            ttl = ttl().as_secs(),
        );
        for s in 0..SUBS {
            toml.push_str(&format!(
                "\n[[subscription]]\nname = \"{n}\"\nprocess_code = \"CERTDC\"\nclient_id = \"{c}\"\nclient_secret_file = \"{d}/secret\"\nschedule = \"every 1s\"\nspool = \"{d}/spool/{n}\"\n",
                n = sub_name(s),
                c = client_of(s),
            ));
        }
        let path = self.net.dir.path().join(format!("{node}.toml"));
        write_mode(&path, &toml, 0o640);
        path
    }
}

/// Adds cases, OSL events and replies until `stop`, every 150 ms.
fn workload(
    hub: FakeHub,
    spools: PathBuf,
    seed: u64,
    stop: Arc<AtomicBool>,
    work: Arc<Mutex<Work>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
        let mut k = 0usize;
        while !stop.load(Ordering::Relaxed) {
            // A case, one in two with a file.
            let sub = k % SUBS;
            let mut spec = CaseSpec::new("CERTDC");
            spec.external_id = Some(format!("NET-{k:05}"));
            if k % 2 == 1 {
                spec.attachments.push(AttachmentSpec::new(
                    &format!("piece-{k}.pdf"),
                    "DD_Certificatdedeces",
                    "application/pdf",
                    Content::Generated {
                        size: 20_000 + k as u64,
                        seed: k as u64,
                    },
                ));
            }
            let id = hub.add_case(&client_of(sub), spec);
            work.lock().expect("work").cases.insert(id, sub);
            k += 1;
            // Now and then an OSL message on a delivered case, or a reply to one.
            let delivered: Vec<(String, usize)> = {
                let w = work.lock().expect("work");
                w.cases
                    .iter()
                    .filter(|(c, s)| {
                        !w.replies.contains_key(*c)
                            && std::fs::read_dir(spools.join(sub_name(**s)).join("new"))
                                .map(|rd| {
                                    rd.filter_map(|e| e.ok()).any(|e| {
                                        e.file_name().to_string_lossy().ends_with(c.as_str())
                                    })
                                })
                                .unwrap_or(false)
                    })
                    .map(|(c, s)| (c.clone(), *s))
                    .collect()
            };
            if !delivered.is_empty() && rng.u8(..3) == 0 {
                let (case, _) = &delivered[rng.usize(..delivered.len())];
                let ev = hub.osl_post_event(
                    case,
                    OslEvent {
                        action_type: "SENDING_MESSAGE".into(),
                        message: Some(format!("message {k}")),
                        ..OslEvent::default()
                    },
                );
                work.lock()
                    .expect("work")
                    .osl_events
                    .insert(ev, case.clone());
            }
            if !delivered.is_empty() && rng.u8(..4) == 0 {
                let (case, sub) = &delivered[rng.usize(..delivered.len())];
                let name = format!("reply-{k}");
                let outbox = spools.join(sub_name(*sub)).join("outbox");
                let tmp = outbox.join("tmp").join(&name);
                std::fs::create_dir_all(&tmp).expect("outbox/tmp");
                std::fs::write(tmp.join("acte.pdf"), format!("%PDF-1.4\nacte {k}\n"))
                    .expect("reply file");
                std::fs::write(
                    tmp.join("reply.json"),
                    serde_json::json!({"case_id": case, "status": "DONE", "message": "Votre acte est disponible",
                        "attachments": [{"file": "acte.pdf", "type": "DD_Certificatdedeces", "mime_type": "application/pdf"}]})
                    .to_string(),
                )
                .expect("reply.json");
                std::fs::create_dir_all(outbox.join("new")).expect("outbox/new");
                std::fs::rename(&tmp, outbox.join("new").join(&name)).expect("publish reply");
                work.lock()
                    .expect("work")
                    .replies
                    .insert(case.clone(), name);
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    })
}

#[derive(Clone, Debug)]
enum Fault {
    CutPg(usize),
    CutHub(usize),
    Isolate(usize),
    Pause(usize),
    KillRestart(usize),
}

/// One fault of the schedule: what, on which node, from when to when (the heal).
#[derive(Clone, Debug)]
struct Episode {
    fault: Fault,
    start: Instant,
    heal: Instant,
}

fn is_write(method: &str, route: Option<Route>) -> bool {
    route != Some(Route::Token) && matches!(method, "PATCH" | "POST" | "DELETE" | "PUT")
}

fn node_of(app: Option<&str>) -> Option<usize> {
    let app = app?.strip_prefix("hubee-sync-")?;
    NODES.iter().position(|n| *n == app)
}

#[test]
fn partitions_pauses_and_kills_lose_nothing_double_nothing_and_fence_the_cut_node() {
    let Some(net) = Netlab::or_skip("netlab_partitions") else {
        return;
    };
    let pg = net.start_pg().expect("the lab's PostgreSQL on the pg host");
    let lab_hub = net.start_hub(8080);
    let hub = lab_hub.hub.clone();
    for s in 0..SUBS {
        hub.add_client(&client_of(s), SECRET, "CERTDC");
    }
    let spools = net.dir.path().join("spool");
    let mut lab = Lab {
        net,
        hub,
        hub_url: lab_hub.https_url.clone(),
        ca_file: lab_hub.ca_file.clone(),
        spools,
    };
    write_mode(
        &lab.net.dir.path().join("secret"),
        &format!("{SECRET}\n"),
        0o600,
    );
    let seed = env_u64("HUBEE_NETLAB_SEED", 1);
    let nemesis = Duration::from_secs(env_u64("HUBEE_NETLAB_SECONDS", 60));
    let ttl = ttl();
    println!(
        "netlab: seed {seed}, {nemesis:?} of nemesis, lease_ttl {ttl:?}, dir {}",
        lab.net.dir.path().display()
    );

    let stop_sampler = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<LeaseSample>>> = Arc::default();
    let sampler = lease_sampler(
        lab.net.ns("pg"),
        pg.url.clone(),
        Arc::clone(&stop_sampler),
        Arc::clone(&samples),
    );

    let mut nodes: Vec<LabNode> = NODES
        .iter()
        .map(|n| {
            let cfg = lab.config(n, &pg.url);
            lab.net.start_node(n, &cfg)
        })
        .collect();

    let work: Arc<Mutex<Work>> = Arc::default();
    let stop_work = Arc::new(AtomicBool::new(false));
    let worker = workload(
        lab.hub.clone(),
        lab.spools.clone(),
        seed,
        Arc::clone(&stop_work),
        Arc::clone(&work),
    );

    // Let the three nodes share the subscriptions before the first fault.
    std::thread::sleep(ttl * 2);

    let mut rng = fastrand::Rng::with_seed(seed);
    let mut episodes: Vec<Episode> = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < nemesis {
        let n = rng.usize(..NODES.len());
        // The first five faults are one of each kind (so that even the short CI schedule has
        // them all), in an order the seed picks; then any.
        let kind = if episodes.len() < 5 {
            ((episodes.len() as u64 + seed) % 5) as u8
        } else {
            rng.u8(..5)
        };
        let fault = match kind {
            0 => Fault::CutPg(n),
            1 => Fault::CutHub(n),
            2 => Fault::Isolate(n),
            3 => Fault::Pause(n),
            _ => Fault::KillRestart(n),
        };
        // Long enough for the lease to move (> lease_ttl + a round) half of the time.
        let hold = Duration::from_millis(rng.u64(500..=(ttl.as_millis() as u64 * 2 + 500)));
        let start = Instant::now();
        match &fault {
            Fault::CutPg(n) => lab.net.cut(NODES[*n], "pg"),
            Fault::CutHub(n) => lab.net.cut(NODES[*n], "hub"),
            Fault::Isolate(n) => lab.net.set_isolated(NODES[*n], true),
            Fault::Pause(n) => nodes[*n].signal(libc::SIGSTOP),
            Fault::KillRestart(n) => nodes[*n].kill(),
        }
        std::thread::sleep(hold);
        match &fault {
            Fault::CutPg(n) => lab.net.heal(NODES[*n], "pg"),
            Fault::CutHub(n) => lab.net.heal(NODES[*n], "hub"),
            Fault::Isolate(n) => lab.net.set_isolated(NODES[*n], false),
            Fault::Pause(n) => nodes[*n].signal(libc::SIGCONT),
            Fault::KillRestart(n) => nodes[*n].restart(),
        }
        let heal = Instant::now();
        println!(
            "netlab: {:>6.1}s {fault:?} for {hold:?}",
            (start - t0).as_secs_f64()
        );
        episodes.push(Episode { fault, start, heal });
        // Time to recover before the next fault.
        std::thread::sleep(Duration::from_millis(
            rng.u64(ttl.as_millis() as u64..=ttl.as_millis() as u64 * 2 + 1000),
        ));
    }
    stop_work.store(true, Ordering::Relaxed);
    worker.join().expect("workload thread");

    // Drain: every notification consumed, every reply sent.
    let drained = |lab: &Lab, work: &Work| {
        let notes: usize = (0..SUBS)
            .map(|s| lab.hub.notifications(&client_of(s)).len())
            .sum();
        let sent: usize = (0..SUBS)
            .map(|s| {
                common::daemon::dir_entries(&lab.spool(s).join("outbox/sent")).len()
                    + common::daemon::dir_entries(&lab.spool(s).join("outbox/failed")).len()
            })
            .sum();
        notes == 0 && sent == work.replies.len()
    };
    let start_drain = Instant::now();
    while !drained(&lab, &work.lock().expect("work")) {
        if start_drain.elapsed() > Duration::from_secs(90) {
            let tail: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let t = n.log_text();
                    let lines: Vec<&str> = t.lines().rev().take(30).collect();
                    format!(
                        "--- {} ---\n{}",
                        n.name,
                        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!(
                "not drained within 90 s after the nemesis; logs:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // One more round everywhere, so that a tmp/ left by a killed node is cleaned.
    std::thread::sleep(Duration::from_secs(3));
    stop_sampler.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler thread");
    for n in nodes.iter_mut() {
        n.signal(libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(500));
    let logs: Vec<String> = nodes.iter().map(|n| n.log_text()).collect();
    drop(nodes);

    let work = work.lock().expect("work");
    let samples = samples.lock().expect("samples");
    let requests = lab.hub.requests();
    let mut failures: Vec<String> = Vec::new();

    // 1. Every case exactly once, one receipt each; every OSL event once.
    let mut seen_cases: BTreeMap<String, usize> = BTreeMap::new();
    let mut seen_events: BTreeMap<String, usize> = BTreeMap::new();
    for s in 0..SUBS {
        match check_new(&lab.spool(s)) {
            Ok(entries) => {
                for (name, m) in entries {
                    let parts: Vec<&str> = name.split('~').collect();
                    match parts.len() {
                        2 => {
                            let case = m["case_id"].as_str().unwrap_or("").to_string();
                            if work.cases.get(&case) != Some(&s) {
                                failures.push(format!("{name}: not a case of {}", sub_name(s)));
                            }
                            *seen_cases.entry(case).or_default() += 1;
                        }
                        3 => *seen_events.entry(parts[2].to_string()).or_default() += 1,
                        _ => failures.push(format!("{name}: unexpected entry")),
                    }
                }
            }
            Err(e) => failures.push(format!("{}: an entry does not verify: {e}", sub_name(s))),
        }
        for d in ["tmp", "quarantine", "outbox/failed"] {
            let left = common::daemon::dir_entries(&lab.spool(s).join(d));
            if !left.is_empty() {
                failures.push(format!("{}: {d}/ holds {left:?}", sub_name(s)));
            }
        }
    }
    for case in work.cases.keys() {
        match seen_cases.get(case) {
            None => failures.push(format!("case {case} lost")),
            Some(1) => {}
            Some(n) => failures.push(format!("case {case} delivered {n} times")),
        }
        let receipts = lab
            .hub
            .events(case)
            .into_iter()
            .filter(|e| {
                e["comment"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("hubee-sync:receipt:"))
            })
            .count();
        if receipts != 1 {
            failures.push(format!("case {case}: {receipts} receipt events"));
        }
    }
    for ev in work.osl_events.keys() {
        match seen_events.get(ev) {
            None => failures.push(format!("OSL event {ev} lost")),
            Some(1) => {}
            Some(n) => failures.push(format!("OSL event {ev} delivered {n} times")),
        }
    }

    // 3. No reply applied twice.
    for case in work.replies.keys() {
        let deposits = lab
            .hub
            .events(case)
            .into_iter()
            .filter(|e| e["actionType"] == "ATTACH_DEPOSIT")
            .count();
        if deposits != 1 {
            failures.push(format!(
                "case {case}: {deposits} deposit events for one reply"
            ));
        }
    }

    // 2. Fencing. A write of subscription S by node X at t is a violation when the samples just
    // before and just after t both show another node holding S with the same epoch.
    let sub_of_client: BTreeMap<String, usize> = (0..SUBS).map(|s| (client_of(s), s)).collect();
    let resumed: Vec<(usize, Instant)> = episodes
        .iter()
        .filter_map(|e| match e.fault {
            Fault::Pause(n) => Some((n, e.heal)),
            _ => None,
        })
        .collect();
    let mut late_after_pause = 0usize;
    for r in &requests {
        if !is_write(&r.method, r.route) {
            continue;
        }
        let (Some(x), Some(s)) = (
            node_of(r.header("applicationName")),
            r.client_id.as_ref().and_then(|c| sub_of_client.get(c)),
        ) else {
            continue;
        };
        let sub = sub_name(*s);
        let i = samples.partition_point(|(at, _)| *at <= r.at);
        if i == 0 || i >= samples.len() {
            continue;
        }
        let (before, after) = (&samples[i - 1].1, &samples[i].1);
        if let (Some((hb, eb)), Some((ha, ea))) = (before.get(&sub), after.get(&sub)) {
            if hb == ha && eb == ea && hb != NODES[x] {
                // The documented window (README "Fencing"): a request between its check and
                // its send when the process was frozen goes out when it resumes.
                let just_resumed = resumed.iter().any(|(n, at)| {
                    *n == x && r.at >= *at && r.at < *at + Duration::from_millis(500)
                });
                let what = format!(
                    "{} {} by {} while {hb} held {sub} (epoch {eb})",
                    r.method, r.path, NODES[x]
                );
                if just_resumed {
                    late_after_pause += 1;
                    println!("netlab: late request right after SIGCONT (documented): {what}");
                } else {
                    failures.push(format!("fence: {what}"));
                }
            }
        }
    }
    for e in &episodes {
        if let Fault::CutPg(n) | Fault::Isolate(n) = e.fault {
            let bound = e.start + ttl;
            let late: Vec<String> = requests
                .iter()
                .filter(|r| {
                    is_write(&r.method, r.route)
                        && node_of(r.header("applicationName")) == Some(n)
                        && r.at > bound
                        && r.at < e.heal
                })
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            if !late.is_empty() {
                failures.push(format!(
                    "{}: cut from PostgreSQL, still wrote to the hub more than lease_ttl after the cut: {late:?}",
                    NODES[n]
                ));
            }
        }
    }

    // 4. Every subscription worked again within two lease_ttl of each heal.
    let mut recoveries: Vec<Duration> = Vec::new();
    for e in &episodes {
        for s in 0..SUBS {
            let c = client_of(s);
            let first = requests.iter().find(|r| {
                r.at >= e.heal
                    && r.client_id.as_deref() == Some(c.as_str())
                    && r.route == Some(Route::ListNotifications)
                    && r.status.is_some_and(|st| (200..300).contains(&st))
            });
            match first {
                Some(r) => {
                    let waited = r.at - e.heal;
                    if waited > ttl * 2 {
                        failures.push(format!(
                            "{} not worked again until {waited:?} after healing {:?}",
                            sub_name(s),
                            e.fault
                        ));
                    }
                    recoveries.push(waited);
                }
                None => failures.push(format!(
                    "{} never worked again after healing {:?}",
                    sub_name(s),
                    e.fault
                )),
            }
        }
    }

    // Figures.
    let mut handovers = 0usize;
    let mut last: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for (_, m) in samples.iter() {
        for (s, h) in m {
            if let Some(prev) = last.get(s) {
                if prev.1 != h.1 {
                    handovers += 1;
                }
            }
            last.insert(s.clone(), h.clone());
        }
    }
    let count = |f: fn(&Fault) -> bool| episodes.iter().filter(|e| f(&e.fault)).count();
    let max_rec = recoveries.iter().max().copied().unwrap_or_default();
    let min_rec = recoveries.iter().min().copied().unwrap_or_default();
    println!(
        "netlab: {} faults ({} cut from pg, {} cut from hub, {} isolated, {} paused, {} killed), \
         {} lease handovers seen, {} cases, {} OSL events, {} replies, {} hub requests, \
         recovery after heal {:.2}–{:.2} s, {} late request(s) right after SIGCONT",
        episodes.len(),
        count(|f| matches!(f, Fault::CutPg(_))),
        count(|f| matches!(f, Fault::CutHub(_))),
        count(|f| matches!(f, Fault::Isolate(_))),
        count(|f| matches!(f, Fault::Pause(_))),
        count(|f| matches!(f, Fault::KillRestart(_))),
        handovers,
        work.cases.len(),
        work.osl_events.len(),
        work.replies.len(),
        requests.len(),
        min_rec.as_secs_f64(),
        max_rec.as_secs_f64(),
        late_after_pause,
    );
    let taken: BTreeSet<&str> = logs
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("took over"))
        .take(1)
        .collect();
    if episodes.len() >= 5 && taken.is_empty() {
        failures.push("no takeover in any log: the nemesis did not move a lease".into());
    }
    if !failures.is_empty() {
        for (n, l) in NODES.iter().zip(&logs) {
            let tail: Vec<&str> = l.lines().rev().take(40).collect();
            eprintln!(
                "--- {n} (last lines) ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        panic!(
            "{} failure(s):\n{}",
            failures.len(),
            failures
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    drop(lab_hub);
    drop(pg);
}
