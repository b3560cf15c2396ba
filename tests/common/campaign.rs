//! The reliability campaigns' world: two subscriptions (CERTDC, received at `IN_PROGRESS`;
//! EtatCivil, received at `SI_RECEIVED`), cases of mixed sizes with 0–3 files, OSL events
//! (messages, deposits with files, reopenings), what the end state must be, and the checks.
//!
//! The model of the expected end state is kept here as the test adds work to the fake hub;
//! [`Campaign::assert_end_state`] compares the spools and the hub against it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use fake_hubee::{AttachmentSpec, CaseSpec, Content, OslEvent};

use super::{check_entry, check_new, write_mode, World, CLIENT, SECRET};

/// Sizes mixed in the campaigns: empty, a few bytes, 100 KB, 1 MiB.
pub const SIZES: [u64; 4] = [0, 7, 100_000, 1024 * 1024];

/// One subscription of the campaign world.
pub struct Sub {
    pub name: &'static str,
    pub client: &'static str,
    pub process_code: &'static str,
    /// Where hubee-sync walks a new case (CONTRACT "receipt_status" defaults).
    pub receipt_status: &'static str,
}

pub const SUBS: [Sub; 2] = [
    Sub {
        name: "certdc",
        client: CLIENT,
        process_code: "CERTDC",
        receipt_status: "IN_PROGRESS",
    },
    Sub {
        name: "etatcivil",
        client: "etatcivil-client",
        process_code: "EtatCivil",
        receipt_status: "SI_RECEIVED",
    },
];

/// What one case must look like at the end.
#[derive(Debug, Clone)]
pub struct ExpectedCase {
    pub sub: usize,
    pub files: Vec<(String, Content)>,
    /// Reopenings posted: the case is delivered `reopenings + 1` times (rounds 0..=N).
    pub reopenings: u32,
}

/// An OSL event that carries something: one entry each, PATCHed `RECEIVED`.
#[derive(Debug, Clone)]
pub struct ExpectedEvent {
    pub case_id: String,
    pub action_type: String,
    pub files: Vec<(String, Content)>,
}

/// Counts of what the campaign put on the hub (for the figures).
#[derive(Debug, Default, Clone, Copy)]
pub struct Load {
    pub cases: usize,
    pub files: usize,
    pub bytes: u64,
    pub messages: usize,
    pub deposits: usize,
    pub reopenings: usize,
    /// Reopenings posted while an earlier reopening of the same case was still unread (its
    /// notification still on the hub).
    pub reopenings_unread: usize,
}

pub struct Campaign {
    pub world: World,
    pub cases: BTreeMap<String, ExpectedCase>,
    pub events: BTreeMap<String, ExpectedEvent>,
    pub load: Load,
    /// Entries already checked after a kill (entries are immutable once published), with
    /// their `(case_id, event_id, round)` key.
    checked: BTreeMap<(usize, String), (String, String, u64)>,
    next_case: usize,
    /// Where the state database and the spools live (the world's directory unless moved, e.g.
    /// onto the power-cut filesystem); config and secret stay in the world's directory.
    pub data: PathBuf,
    /// Lines added to every `[[subscription]]` (e.g. `delivery = "database"`).
    pub extra_sub: String,
}

/// `(case_id, event_id or "", round)`: what an entry is a delivery of.
pub type EntryKey = (String, String, u64);

pub fn key_of(manifest: &serde_json::Value) -> Result<EntryKey, String> {
    let case = manifest["case_id"]
        .as_str()
        .ok_or_else(|| format!("manifest without case_id: {manifest}"))?;
    let event = manifest["event_id"].as_str().unwrap_or("");
    let round = manifest["round"].as_u64().unwrap_or(0);
    Ok((case.to_string(), event.to_string(), round))
}

impl Campaign {
    /// A world with both subscriptions polling `schedule` (e.g. `"every 1s"`); `extra_hub`
    /// adds lines to `[hub]`.
    pub async fn new(schedule: &str, extra_hub: &str) -> Campaign {
        let world = World::new().await;
        world
            .hub
            .add_client(SUBS[1].client, SECRET, SUBS[1].process_code);
        let data = world.dir.path().to_path_buf();
        let c = Campaign {
            data,
            extra_sub: String::new(),
            world,
            cases: BTreeMap::new(),
            events: BTreeMap::new(),
            load: Load::default(),
            checked: BTreeMap::new(),
            next_case: 0,
        };
        c.write_config(schedule, extra_hub);
        c
    }

    pub fn write_config(&self, schedule: &str, extra_hub: &str) {
        let w = &self.world;
        let d = w.dir.path().display();
        let data = self.data.display();
        let mut toml = format!(
            r#"[hub]
api_url = "{api}"
token_url = "{token}"
editor_name = "Commune de Saint-Étienne"
retry_attempts = 3
retry_base_delay = "10ms"
retry_max_delay = "100ms"
timeout = "5s"
{extra_hub}

[state]
url = "sqlite://{data}/state.db"
"#,
            api = w.hub.api_url(),
            token = w.hub.token_url(),
        );
        for s in &SUBS {
            toml.push_str(&format!(
                r#"
[[subscription]]
name = "{name}"
process_code = "{code}"
client_id = "{client}"
client_secret_file = "{d}/secret"
schedule = "{schedule}"
spool = "{data}/spool/{name}"
{extra_sub}
"#,
                name = s.name,
                code = s.process_code,
                client = s.client,
                extra_sub = self.extra_sub,
            ));
        }
        write_mode(&w.config_path(), &toml, 0o640);
    }

    pub fn spool(&self, sub: usize) -> PathBuf {
        self.data.join("spool").join(SUBS[sub].name)
    }

    /// The files of the `n`-th case: 0–3, sizes mixed within and across cases.
    pub fn files_for(n: usize) -> Vec<(String, Content)> {
        (0..n % 4)
            .map(|i| {
                (
                    format!("piece-{n}-{i}.pdf"),
                    Content::Generated {
                        size: SIZES[(n / 4 + i) % 4],
                        seed: (n * 10 + i) as u64,
                    },
                )
            })
            .collect()
    }

    /// Adds the next case on subscription `sub`; returns its id.
    pub fn add_case(&mut self, sub: usize) -> String {
        let n = self.next_case;
        self.next_case += 1;
        let files = Self::files_for(n);
        let s = &SUBS[sub];
        let mut spec = CaseSpec::new(s.process_code);
        spec.external_id = Some(format!("CAMPAIGN-{}-{n:06}", s.process_code));
        spec.attachments = files
            .iter()
            .map(|(name, content)| {
                AttachmentSpec::new(name, "piece", "application/pdf", content.clone())
            })
            .collect();
        let id = self.world.hub.add_case(s.client, spec);
        self.load.cases += 1;
        self.load.files += files.len();
        self.load.bytes += files.iter().map(|f| f.1.len()).sum::<u64>();
        self.cases.insert(
            id.clone(),
            ExpectedCase {
                sub,
                files,
                reopenings: 0,
            },
        );
        id
    }

    /// The OSL sends a message on the case.
    pub fn post_message(&mut self, case_id: &str) -> String {
        let ev = self.world.hub.osl_post_event(
            case_id,
            OslEvent {
                action_type: "SENDING_MESSAGE".into(),
                message: Some("Merci de fournir une pièce d'identité".into()),
                ..Default::default()
            },
        );
        self.load.messages += 1;
        self.events.insert(
            ev.clone(),
            ExpectedEvent {
                case_id: case_id.to_string(),
                action_type: "SENDING_MESSAGE".into(),
                files: Vec::new(),
            },
        );
        ev
    }

    /// The OSL deposits 1–2 files (two of them may share a name) on the case.
    pub fn post_deposit(&mut self, case_id: &str, n: usize) -> String {
        let files: Vec<(String, Content)> = (0..1 + n % 2)
            .map(|i| {
                (
                    // Same name twice: the entry must keep both, under distinct safe names.
                    "pièce complémentaire.pdf".to_string(),
                    Content::Generated {
                        size: SIZES[(n + i + 1) % 4],
                        seed: 1_000_000 + (n * 10 + i) as u64,
                    },
                )
            })
            .collect();
        let ev = self.world.hub.osl_post_event(
            case_id,
            OslEvent {
                action_type: "ATTACH_DEPOSIT".into(),
                message: Some("Pièces complémentaires".into()),
                attachments: files
                    .iter()
                    .map(|(name, c)| {
                        AttachmentSpec::new(name, "piece", "application/pdf", c.clone())
                    })
                    .collect(),
                ..Default::default()
            },
        );
        self.load.deposits += 1;
        self.load.files += files.len();
        self.load.bytes += files.iter().map(|f| f.1.len()).sum::<u64>();
        self.events.insert(
            ev.clone(),
            ExpectedEvent {
                case_id: case_id.to_string(),
                action_type: "ATTACH_DEPOSIT".into(),
                files,
            },
        );
        ev
    }

    /// True once the case's own notification is gone (delivered and acknowledged).
    pub fn acknowledged(&self, case_id: &str) -> bool {
        let sub = &SUBS[self.cases[case_id].sub];
        !self
            .world
            .hub
            .notifications(sub.client)
            .iter()
            .any(|n| n["caseId"] == case_id && n["eventId"].is_null())
    }

    /// The OSL reopens the case (only after its delivery was acknowledged, as a real OSL
    /// would: it reopens a case the service already answered): a `STATUS_UPDATE` event
    /// entry, then the case again as round N.
    pub fn reopen(&mut self, case_id: &str) {
        let before: BTreeSet<String> = self
            .world
            .hub
            .events(case_id)
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect();
        let sub = &SUBS[self.cases[case_id].sub];
        let unread = self
            .world
            .hub
            .notifications(sub.client)
            .iter()
            .filter_map(|n| n["eventId"].as_str().map(str::to_string))
            .any(|e| {
                self.events
                    .get(&e)
                    .is_some_and(|x| x.case_id == case_id && x.action_type == "STATUS_UPDATE")
            });
        if unread {
            self.load.reopenings_unread += 1;
        }
        self.world.hub.osl_reopen(case_id);
        let ev = self
            .world
            .hub
            .events(case_id)
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .find(|id| !before.contains(id))
            .expect("the reopening event");
        self.load.reopenings += 1;
        if let Some(c) = self.cases.get_mut(case_id) {
            c.reopenings += 1;
        }
        self.events.insert(
            ev,
            ExpectedEvent {
                case_id: case_id.to_string(),
                action_type: "STATUS_UPDATE".into(),
                files: Vec::new(),
            },
        );
    }

    /// Notifications left on the hub, both subscriptions.
    pub fn notifications_left(&self) -> usize {
        SUBS.iter()
            .map(|s| self.world.hub.notifications(s.client).len())
            .sum()
    }

    /// Checks every entry of `new/` not checked before (entries are immutable once
    /// published) and that no delivery key appears twice. Returns how many were new.
    pub fn check_published_so_far(&mut self) -> Result<usize, String> {
        let mut fresh = 0;
        for sub in 0..SUBS.len() {
            let new = self.spool(sub).join("new");
            let Ok(rd) = std::fs::read_dir(&new) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name().to_string_lossy().into_owned();
                if self.checked.contains_key(&(sub, name.clone())) {
                    continue;
                }
                let m = check_entry(&e.path())?;
                self.checked.insert((sub, name), key_of(&m)?);
                fresh += 1;
            }
        }
        let mut keys = BTreeMap::new();
        for ((sub, name), key) in &self.checked {
            if let Some(other) = keys.insert(key.clone(), (sub, name)) {
                return Err(format!(
                    "{key:?} delivered twice: {other:?} and {:?}",
                    (sub, name)
                ));
            }
        }
        Ok(fresh)
    }

    /// Entries published so far (checked by [`Campaign::check_published_so_far`]).
    pub fn published(&self) -> usize {
        self.checked.len()
    }

    /// Every delivery the hub's work calls for.
    pub fn expected_keys(&self) -> BTreeSet<(usize, EntryKey)> {
        let mut keys = BTreeSet::new();
        for (id, c) in &self.cases {
            for round in 0..=u64::from(c.reopenings) {
                keys.insert((c.sub, (id.clone(), String::new(), round)));
            }
        }
        for (ev, e) in &self.events {
            let sub = self.cases[&e.case_id].sub;
            keys.insert((sub, (e.case_id.clone(), ev.clone(), 0)));
        }
        keys
    }

    /// The end state of the rule of acknowledgement, against the model:
    /// - every case round and every event exactly once in `new/`, nothing else there, each
    ///   entry verified (`sha256sum -c`, sizes and digests), with the hub's files;
    /// - one receipt event per case round (marker `:rN`), the case at its receipt status;
    /// - every OSL event `RECEIVED` on the hub;
    /// - no notification left; `tmp/` and `quarantine/` empty.
    pub fn assert_end_state(&self, what: &str) {
        let hub = &self.world.hub;
        let mut found: BTreeMap<(usize, EntryKey), Vec<(String, serde_json::Value)>> =
            BTreeMap::new();
        for sub in 0..SUBS.len() {
            // Entries a consumer moved to cur/ count as delivered (`cur/NAME` listed as such).
            let entries = check_new(&self.spool(sub))
                .and_then(|mut v| {
                    let cur = super::check_entries_in(&self.spool(sub).join("cur"))?;
                    v.extend(cur.into_iter().map(|(n, m)| (format!("../cur/{n}"), m)));
                    Ok(v)
                })
                .unwrap_or_else(|e| panic!("{what}: corrupt entry: {e}"));
            for (name, m) in entries {
                let key = key_of(&m).unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
                found.entry((sub, key)).or_default().push((name, m));
            }
        }
        let expected = self.expected_keys();
        let missing: Vec<_> = expected.iter().filter(|k| !found.contains_key(k)).collect();
        assert!(missing.is_empty(), "{what}: deliveries lost: {missing:?}");
        let extra: Vec<_> = found.keys().filter(|k| !expected.contains(k)).collect();
        assert!(extra.is_empty(), "{what}: unexpected entries: {extra:?}");
        let dups: Vec<_> = found
            .iter()
            .filter(|(_, v)| v.len() != 1)
            .map(|(k, v)| (k, v.iter().map(|e| &e.0).collect::<Vec<_>>()))
            .collect();
        assert!(dups.is_empty(), "{what}: delivered twice: {dups:?}");

        let check_files = |name: &str, m: &serde_json::Value, files: &[(String, Content)]| {
            let atts = m["attachments"].as_array().expect("attachments");
            assert_eq!(atts.len(), files.len(), "{what}: {name}: every file listed");
            let mut digests: Vec<String> = atts
                .iter()
                .map(|a| a["sha256"].as_str().unwrap_or("").to_string())
                .collect();
            let mut want: Vec<String> = files.iter().map(|f| f.1.sha256_hex()).collect();
            digests.sort();
            want.sort();
            assert_eq!(digests, want, "{what}: {name}: the hub's bytes");
            for (file_name, _) in files {
                assert!(
                    atts.iter().any(|a| a["file_name"] == file_name.as_str()),
                    "{what}: {name}: {file_name} keeps its original name in the manifest"
                );
            }
        };
        for ((sub, (case, event, _round)), v) in &found {
            let (name, m) = &v[0];
            if event.is_empty() {
                check_files(name, m, &self.cases[case].files);
            } else {
                check_files(name, m, &self.events[event].files);
                assert!(
                    self.spool(*sub)
                        .join("new")
                        .join(name)
                        .join("event.json")
                        .is_file(),
                    "{what}: {name}: event.json"
                );
            }
        }

        for (id, c) in &self.cases {
            let sub = &SUBS[c.sub];
            let receipts = self.world.receipt_events(id);
            let mut markers: Vec<String> = receipts
                .iter()
                .map(|e| e["comment"].as_str().unwrap_or("").to_string())
                .collect();
            markers.sort();
            let want: Vec<String> = (0..=c.reopenings)
                .map(|r| format!("hubee-sync:receipt:{id}:r{r}"))
                .collect();
            assert_eq!(
                markers, want,
                "{what}: case {id}: exactly one receipt event per round"
            );
            for r in &receipts {
                assert_eq!(
                    r["caseNewStatus"], sub.receipt_status,
                    "{what}: case {id}: receipt says where it went"
                );
            }
            assert_eq!(
                hub.case_status(id).as_deref(),
                Some(sub.receipt_status),
                "{what}: case {id} at its receipt status"
            );
            super::assert_status_events_truthful(hub, id, what);
        }
        for (ev, e) in &self.events {
            let status = hub
                .events(&e.case_id)
                .into_iter()
                .find(|x| x["id"] == ev.as_str())
                .map(|x| x["status"].as_str().unwrap_or("").to_string());
            assert_eq!(
                status.as_deref(),
                Some("RECEIVED"),
                "{what}: OSL event {ev} ({}) acknowledged RECEIVED",
                e.action_type
            );
        }
        for (i, s) in SUBS.iter().enumerate() {
            let left = hub.notifications(s.client);
            assert!(
                left.is_empty(),
                "{what}: {}: notifications left: {left:?}",
                s.name
            );
            let tmp = super::daemon::dir_entries(&self.spool(i).join("tmp"));
            assert!(
                tmp.is_empty(),
                "{what}: {}: tmp/ not empty: {tmp:?}",
                s.name
            );
            let q = super::daemon::dir_entries(&self.spool(i).join("quarantine"));
            assert!(q.is_empty(), "{what}: {}: quarantined: {q:?}", s.name);
        }
        super::assert_traffic_follows_the_schema(hub, what);
    }
}

/// Which named crash point the next crash-point life aims at: the one hit least so far, then
/// tried least. A point missed in one life (nothing passed it within the bound) is tried again
/// in the next, so "every point hit at least once" does not hang on one unlucky life.
pub struct PointPicker {
    points: &'static [&'static str],
    hit: BTreeMap<&'static str, usize>,
    tried: BTreeMap<&'static str, usize>,
}

impl PointPicker {
    pub fn new(points: &'static [&'static str]) -> Self {
        assert!(
            !points.is_empty(),
            "a campaign names at least one crash point"
        );
        Self {
            points,
            hit: BTreeMap::new(),
            tried: BTreeMap::new(),
        }
    }

    /// The point for the next crash-point life (counted as tried).
    pub fn next(&mut self) -> &'static str {
        let count = |m: &BTreeMap<&str, usize>, p: &str| m.get(p).copied().unwrap_or(0);
        let point = self
            .points
            .iter()
            .copied()
            .min_by_key(|p| (count(&self.hit, p), count(&self.tried, p)))
            .unwrap_or(self.points[0]);
        *self.tried.entry(point).or_default() += 1;
        point
    }

    /// The life aimed at `point` was killed there.
    pub fn hit(&mut self, point: &'static str) {
        *self.hit.entry(point).or_default() += 1;
    }

    /// Kills per point hit so far.
    pub fn hits(&self) -> &BTreeMap<&'static str, usize> {
        &self.hit
    }
}

/// How one life of a kill campaign ended (see [`live_one_life`]).
pub enum LifeEnd {
    /// The run died by its crash point.
    AtPoint(&'static str),
    /// The crash point was not reached in time (nothing left that passes it): killed.
    PointMissed(&'static str),
    /// No crash point: killed at a random instant.
    Random,
}

/// Waits for the child's exit (it was killed, or is dying at a crash point), at most `bound`.
pub async fn wait_exit(
    d: &mut super::daemon::Daemon,
    bound: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = d.child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > bound {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// One life of `run` under `config`, logging to `log`: with a crash point (`HUBEE_SYNC_CRASH_AT`
/// point:n), it must die there by SIGKILL within `point_bound`, else it is killed; without
/// one, it is killed with SIGKILL after `random_ms`, and must not have exited on its own
/// before. Either way the run ends killed, and the daemon is returned for its log.
pub async fn live_one_life(
    config: &std::path::Path,
    log: PathBuf,
    life: usize,
    crash_point: Option<(&'static str, u32)>,
    point_bound: std::time::Duration,
    random_ms: u64,
) -> (super::daemon::Daemon, LifeEnd) {
    use std::os::unix::process::ExitStatusExt;
    let killed = std::time::Duration::from_secs(10);
    let env = crash_point.map(|(p, n)| format!("{p}:{n}"));
    let envs: Vec<(&str, &str)> = env
        .as_deref()
        .map(|v| vec![("HUBEE_SYNC_CRASH_AT", v)])
        .unwrap_or_default();
    let mut d = super::daemon::Daemon::start_with(config, log, "info", &envs);
    let (status, end) = match crash_point {
        Some((point, _)) => match wait_exit(&mut d, point_bound).await {
            Some(status) => {
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGKILL),
                    "life {life}: run exited at {point} other than by its crash point: \
                     {status:?}\n{}",
                    d.log_text()
                );
                (status, LifeEnd::AtPoint(point))
            }
            None => {
                d.signal(libc::SIGKILL);
                let status = wait_exit(&mut d, killed).await.expect("killed");
                (status, LifeEnd::PointMissed(point))
            }
        },
        None => {
            tokio::time::sleep(std::time::Duration::from_millis(random_ms)).await;
            assert!(
                d.child.try_wait().expect("try_wait").is_none(),
                "life {life}: run exited on its own before the kill:\n{}",
                d.log_text()
            );
            d.signal(libc::SIGKILL);
            let status = wait_exit(&mut d, killed).await.expect("killed");
            (status, LifeEnd::Random)
        }
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL), "life {life}");
    (d, end)
}

/// Every fault kind the fake knows that a flaky network or hub can cause, transient ones
/// only: a 4xx is the hub's final word by the protocol (never retried, PROTOCOL §9), so a
/// random 403 or 404 would test a hub that lies about a case, not a flaky network;
/// `client_errors_are_not_retried` (tests/receive.rs) covers those.
pub fn transient_faults() -> Vec<fake_hubee::Fault> {
    use fake_hubee::Fault;
    vec![
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::TooManyRequests {
            retry_after_secs: 0,
        },
        Fault::ResetBeforeEffect,
        Fault::ResetAfterEffect,
        Fault::TruncateBody { after_bytes: 100 },
        Fault::WrongDigest,
        Fault::MissingDigest,
        Fault::SlowBody { chunk_delay_ms: 3 },
        Fault::KillToken,
    ]
}
