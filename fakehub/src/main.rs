//! `fake-hubee`: serves a fake HubEE for the demo and benchmarks.
//!
//! ```text
//! fake-hubee [--listen 127.0.0.1:8080] [--client-id demo] [--client-secret demo-secret]
//!            [--process-code CERTDC] [--cases 10] [--files 3] [--file-size 1M] [--seed N]
//!            [--lazy-digests] [--extra-clients N] [--spread N]
//! ```
//! Prints `fake-hubee listening api_url=… token_url=…` once ready, then serves until SIGTERM
//! or SIGINT. `GET /_fake/state` shows cases, remaining notifications and request counts.

use fake_hubee::FakeHub;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

struct Args {
    listen: SocketAddr,
    client_id: String,
    client_secret: String,
    process_code: String,
    cases: u64,
    files: u64,
    file_size: u64,
    seed: Option<u64>,
    lazy_digests: bool,
    /// More clients with empty queues, `{client_id}-0` … (editor-scale benchmarks).
    clients: u64,
    /// The `--cases` dealt to this many clients, `{client_id}-s0` …, instead of `{client_id}`
    /// (one day's cases over an editor's subscriptions).
    spread: u64,
    /// The hub's behaviour (PROTOCOL §10): the default, or changed by `--patch-only` and
    /// `--behaviour JSON` (camelCase fields of `HubBehaviour`, merged).
    behaviour: fake_hubee::HubBehaviour,
    /// A portal agent acting every N ms (§10.18).
    agent_every_ms: Option<u64>,
}

const USAGE: &str = "usage: fake-hubee [--listen ADDR] [--client-id ID] [--client-secret SECRET] \
[--process-code CODE] [--cases N] [--files N] [--file-size BYTES[K|M|G]] [--seed N] [--lazy-digests] \
[--extra-clients N] [--spread N] [--patch-only] [--behaviour JSON] [--agent-every-ms N]";

/// `1048576`, `512K`, `1M`, `1G` (powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        client_id: "demo".into(),
        client_secret: "demo-secret".into(),
        process_code: "CERTDC".into(),
        cases: 10,
        files: 3,
        file_size: 1 << 20,
        seed: None,
        lazy_digests: false,
        clients: 0,
        spread: 0,
        behaviour: fake_hubee::HubBehaviour::default(),
        agent_every_ms: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        if flag == "--lazy-digests" {
            a.lazy_digests = true;
            continue;
        }
        if flag == "--patch-only" {
            a.behaviour = fake_hubee::HubBehaviour::patch_only();
            continue;
        }
        let (flag, value) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), v.to_string()),
            None => {
                let v = it
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
                (flag, v)
            }
        };
        let bad = |what: &str| format!("{flag}: {value:?} is not {what}\n{USAGE}");
        match flag.as_str() {
            "--listen" => {
                a.listen = value
                    .parse()
                    .map_err(|_| bad("an address like 127.0.0.1:8080"))?
            }
            "--client-id" => a.client_id = value,
            "--client-secret" => a.client_secret = value,
            "--process-code" => a.process_code = value,
            "--cases" => a.cases = value.parse().map_err(|_| bad("a number"))?,
            "--files" => a.files = value.parse().map_err(|_| bad("a number"))?,
            "--file-size" => {
                a.file_size =
                    parse_size(&value).ok_or_else(|| bad("a size like 1048576, 64K, 1M, 1G"))?
            }
            "--seed" => a.seed = Some(value.parse().map_err(|_| bad("a number"))?),
            "--extra-clients" => a.clients = value.parse().map_err(|_| bad("a number"))?,
            "--spread" => a.spread = value.parse().map_err(|_| bad("a number"))?,
            "--agent-every-ms" => {
                a.agent_every_ms = Some(value.parse().map_err(|_| bad("a number"))?)
            }
            "--behaviour" => {
                let mut current = serde_json::to_value(&a.behaviour).map_err(|e| e.to_string())?;
                let changes: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&value).map_err(|_| bad("a JSON object"))?;
                for (k, x) in changes {
                    current[k] = x;
                }
                a.behaviour = serde_json::from_value(current)
                    .map_err(|e| format!("--behaviour: {e}\n{USAGE}"))?;
            }
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    Ok(a)
}

async fn run(a: Args) -> Result<(), String> {
    let hub = FakeHub::start_on(a.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    let seed = a.seed.unwrap_or_else(|| fastrand_seed(&a));
    hub.reseed(seed);
    hub.set_behaviour(a.behaviour.clone());
    hub.add_client(&a.client_id, &a.client_secret, &a.process_code);
    if a.spread > 1 {
        for i in 0..a.spread {
            let id = format!("{}-s{i}", a.client_id);
            hub.add_client(&id, &a.client_secret, &a.process_code);
            let share = a.cases / a.spread + u64::from(i < a.cases % a.spread);
            hub.add_generated_cases(&id, share, a.files, a.file_size, seed.wrapping_add(i));
        }
    } else {
        hub.add_generated_cases(&a.client_id, a.cases, a.files, a.file_size, seed);
    }
    for i in 0..a.clients {
        hub.add_client(
            &format!("{}-{i}", a.client_id),
            &a.client_secret,
            &a.process_code,
        );
    }
    if !a.lazy_digests {
        // Hash now so that a benchmark does not time the fake's hashing on first download.
        hub.precompute_digests().await;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "fake-hubee listening api_url={} token_url={}",
        hub.api_url(),
        hub.token_url()
    );
    let _ = out.flush();
    drop(out);
    let _agent = a
        .agent_every_ms
        .map(|ms| hub.start_agent(seed, std::time::Duration::from_millis(ms)));
    wait_for_signal().await
}

/// Without `--seed`, derive one from the clock (ids differ between runs, as on a real hub).
fn fastrand_seed(_a: &Args) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn wait_for_signal() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-hubee: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-hubee: {e}");
            ExitCode::from(1)
        }
    }
}
