//! `[metrics] listen` end to end (issue 20): a running `hubee-sync run` against the fake hub,
//! scraped over real HTTP on 127.0.0.1; the scrape checked by Debian's `promtool`; a real
//! Prometheus server scraping it and queried over its HTTP API; `/healthz` turning 503 when
//! the hub fails; the alert rules proved by `promtool test rules`. The tools come from
//! Debian's `prometheus` package, which scripts/test.sh installs; without it these tests say
//! so and skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{write_mode, World, CLIENT, SECRET};
use fake_hubee::{Fault, Route};

const INFO: &str = "info,sqlx=warn,hyper=warn,reqwest=warn";

fn tool(name: &str) -> Option<PathBuf> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&found.stdout).trim().to_string();
    (!p.is_empty()).then(|| PathBuf::from(p))
}

fn skip(what: &str) {
    eprintln!(
        "SKIPPED: {what} needs Debian's `prometheus` package (promtool, prometheus): apt-get install -y prometheus (scripts/test.sh does)"
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// The world's config with `[metrics] listen` and a schedule of `every 1s`.
fn config_with_metrics(w: &World, listen: &str) {
    let text = std::fs::read_to_string(w.config_path()).expect("read config");
    let text = text.replace("schedule = \"every 5m\"", "schedule = \"every 1s\"");
    write_mode(
        &w.config_path(),
        &format!("{text}\n[metrics]\nlisten = \"{listen}\"\n"),
        0o640,
    );
}

async fn get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// The value of the one sample of `name` whose labels contain `labels`.
fn sample(scrape: &str, name: &str, labels: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split(['{', ' ']).next() == Some(name)
                && l.split_once('}')
                    .map_or(labels.is_empty(), |(ls, _)| ls.contains(labels))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn until<T>(
    bound: Duration,
    what: &str,
    d: &Daemon,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > bound {
            panic!("{what}: not within {bound:?}; log:\n{}", d.log_text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Prometheus server on 127.0.0.1, its storage in a temp dir; killed on drop.
struct PromServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(bin: &Path, target: &str) -> PromServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: hubee-sync\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    PromServer {
        child,
        port,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_is_scraped_by_prometheus_leaks_no_id_and_turns_unhealthy_when_the_hub_fails(
) {
    let (Some(promtool), Some(prometheus)) = (tool("promtool"), tool("prometheus")) else {
        return skip("the metrics scrape test");
    };
    let w = World::new().await;
    let mut case_ids = Vec::new();
    for n in 1..=3 {
        case_ids.push(w.add_case(n, 2, 20_000));
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    config_with_metrics(&w, &listen);
    let d = Daemon::start(&w.config_path(), w.dir.path().join("run.log"), INFO);
    let base = format!("http://{listen}");

    // The three télédossiers are counted once delivered.
    let scrape = until(
        Duration::from_secs(30),
        "3 télédossiers counted",
        &d,
        async || {
            let (s, body) = get(&format!("{base}/metrics")).await?;
            (s == 200
                && sample(
                    &body,
                    "hubee_sync_teledossiers_delivered_total",
                    "subscription=\"certdc\"",
                ) == Some(3.0)
                && sample(&body, "hubee_sync_cycles_total", "outcome=\"ok\"")
                    .is_some_and(|v| v >= 1.0))
            .then_some(body)
        },
    )
    .await;
    let l = "subscription=\"certdc\",process_code=\"CERTDC\"";
    assert_eq!(
        sample(&scrape, "hubee_sync_received_bytes_total", l),
        Some(6.0 * 20_000.0),
        "{scrape}"
    );
    for (name, labels) in [
        (
            "hubee_sync_hub_requests_total",
            "operation=\"list_notifications\",status_class=\"2xx\"",
        ),
        (
            "hubee_sync_hub_requests_total",
            "operation=\"download_attachment\",status_class=\"2xx\"",
        ),
        (
            "hubee_sync_hub_requests_total",
            "operation=\"delete_notification\",status_class=\"2xx\"",
        ),
        (
            "hubee_sync_hub_request_duration_seconds_count",
            "operation=\"get_case\"",
        ),
        ("hubee_sync_token_renewals_total", l),
        ("hubee_sync_cycle_duration_seconds_count", l),
        ("hubee_sync_last_success_timestamp_seconds", l),
        ("hubee_sync_schedule_period_seconds", l),
        ("hubee_sync_build_info", "version=\""),
        ("process_cpu_seconds_total", ""),
        ("process_resident_memory_bytes", ""),
        ("process_open_fds", ""),
        ("process_start_time_seconds", ""),
    ] {
        assert!(
            sample(&scrape, name, labels).is_some_and(|v| v > 0.0),
            "{name}{{{labels}}} should have moved:\n{scrape}"
        );
    }
    assert_eq!(
        sample(&scrape, "hubee_sync_schedule_period_seconds", l),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "hubee_sync_consecutive_failed_cycles", l),
        Some(0.0)
    );
    assert_eq!(
        sample(&scrape, "hubee_sync_parked_items", l),
        Some(0.0),
        "{scrape}"
    );
    // No case id, external id, secret or client id anywhere.
    for id in &case_ids {
        assert!(!scrape.contains(id.as_str()), "case id {id} in the scrape");
    }
    for forbidden in ["DGS-CERTDC", SECRET, CLIENT, "certificat-"] {
        assert!(!scrape.contains(forbidden), "{forbidden:?} in the scrape");
    }

    // promtool check metrics: no error, no lint output.
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write as _;
        let mut stdin = check.stdin.take().expect("stdin");
        stdin.write_all(scrape.as_bytes()).expect("feed promtool");
    }
    let out = check.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );

    // Nothing else is served.
    assert_eq!(get(&format!("{base}/")).await.map(|r| r.0), Some(404));
    assert_eq!(
        get(&format!("{base}/metrics/../state.db"))
            .await
            .map(|r| r.0),
        Some(404)
    );
    let post = reqwest::Client::new()
        .post(format!("{base}/metrics"))
        .send()
        .await
        .expect("POST /metrics");
    assert_eq!(post.status().as_u16(), 405);
    let health = get(&format!("{base}/healthz")).await.expect("GET /healthz");
    assert_eq!(health, (200, "{\"status\":\"ok\"}\n".to_string()));

    // A real Prometheus server scrapes it; its HTTP API sees the counter that moved.
    let prom = start_prometheus(&prometheus, &listen);
    let query = format!(
        "http://127.0.0.1:{}/api/v1/query?query=hubee_sync_teledossiers_delivered_total",
        prom.port
    );
    let seen = until(
        Duration::from_secs(60),
        "Prometheus sees the counter",
        &d,
        async || {
            let (s, body) = get(&query).await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let r = v["data"]["result"].as_array()?.first()?.clone();
            (s == 200 && r["value"][1] == "3").then_some(r)
        },
    )
    .await;
    assert_eq!(seen["metric"]["subscription"], "certdc");
    assert_eq!(seen["metric"]["process_code"], "CERTDC");
    assert_eq!(seen["metric"]["job"], "hubee-sync");
    drop(prom);

    // The hub starts failing: the next cycle fails, /healthz says so.
    w.hub
        .inject(Route::ListNotifications, Fault::Status(503), 100_000);
    let body = until(
        Duration::from_secs(30),
        "/healthz turns 503",
        &d,
        async || {
            let (s, body) = get(&format!("{base}/healthz")).await?;
            (s == 503).then_some(body)
        },
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON reason");
    assert_eq!(v["status"], "unhealthy");
    assert_eq!(v["failing"], serde_json::json!(["certdc"]));
    let scrape = get(&format!("{base}/metrics")).await.expect("scrape").1;
    assert!(
        sample(
            &scrape,
            "hubee_sync_hub_requests_total",
            "operation=\"list_notifications\",status_class=\"5xx\""
        )
        .is_some_and(|v| v >= 1.0),
        "{scrape}"
    );
    assert!(sample(&scrape, "hubee_sync_hub_retries_total", l).is_some_and(|v| v >= 1.0));
    assert!(sample(&scrape, "hubee_sync_consecutive_failed_cycles", l).is_some_and(|v| v >= 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_port_already_taken_stops_run_with_exit_1_naming_the_address() {
    let w = World::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    config_with_metrics(&w, &addr);
    let (code, _, err) = w.run(&["run"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(
        err.contains("[metrics] listen") && err.contains("already in use"),
        "{err}"
    );
    assert!(err.contains("choose another port"), "{err}");
    assert!(w.hub.requests().is_empty(), "nothing was asked of the hub");
    drop(taken);
}

#[test]
fn the_alert_rules_fire_on_the_right_series_and_not_otherwise() {
    let Some(promtool) = tool("promtool") else {
        return skip("the alert rules test");
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("contrib/prometheus/hubee-sync.rules.yml");
    let check = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool check rules");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new(&promtool)
        .current_dir(root.join("contrib/prometheus"))
        .args(["test", "rules", "hubee-sync.rules.test.yml"])
        .output()
        .expect("promtool test rules");
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn the_dashboard_is_json_and_queries_only_metrics_we_export() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("contrib/grafana/hubee-sync.json"))
        .expect("read dashboard");
    let v: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = v["panels"].as_array().expect("panels");
    assert!(panels.len() >= 4);
    let src = std::fs::read_to_string(root.join("src/metrics/text.rs")).expect("read text.rs")
        + &std::fs::read_to_string(root.join("src/metrics/process.rs")).expect("read process.rs");
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word != "process_code"
                    && (word.starts_with("hubee_sync_") || word.starts_with("process_"))
                {
                    let family = word
                        .trim_end_matches("_bucket")
                        .trim_end_matches("_count")
                        .trim_end_matches("_sum");
                    assert!(
                        src.contains(&format!("\"{family}\"")),
                        "{family} in {expr} is not exported"
                    );
                }
            }
        }
    }
}
