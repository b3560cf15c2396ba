//! The proxy path through a real forward proxy on a host of its own (issue 19): Debian's
//! tinyproxy on the `proxy` host, fake-hubee behind HTTPS on the `hub` host, hubee-sync on
//! `node-a`, which has no route to the hub: only the proxy reaches it. `[hub] proxy` makes
//! hubee-sync tunnel HTTPS through CONNECT; a télédossier arrives end to end. Without the
//! setting the same node cannot reach the hub at all (the route is really missing).

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::netlab::{addr_of, wait_port, Netlab};
use common::{check_new, write_mode, SECRET};
use fake_hubee::{AttachmentSpec, CaseSpec, Content};

const TINYPROXY: &str = "/usr/bin/tinyproxy";

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tinyproxy(net: &Netlab, dir: &Path, connect_port: u16) -> Proxy {
    // tinyproxy drops to `nobody`, which must be able to write its log.
    let logdir = dir.join("tinyproxy");
    std::fs::create_dir_all(&logdir).expect("tinyproxy dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&logdir, std::fs::Permissions::from_mode(0o777))
            .expect("chmod the tinyproxy dir");
    }
    let conf = logdir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "User nobody\nGroup nogroup\nPort 8888\nListen {proxy}\nTimeout 60\nMaxClients 20\n\
             Allow 10.77.0.0/24\nConnectPort {connect_port}\nLogLevel Connect\nLogFile \"{log}\"\n",
            proxy = addr_of("proxy"),
            log = logdir.join("tinyproxy.log").display(),
        ),
    )
    .expect("write tinyproxy.conf");
    let child = net
        .command("proxy", TINYPROXY)
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tinyproxy");
    Proxy(child)
}

fn once(net: &Netlab, config: &Path) -> (bool, String) {
    let out = net
        .command("node-a", &common::bin().display().to_string())
        .arg("--config")
        .arg(config)
        .arg("once")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("HUBEE_SYNC_LOG", "info")
        .output()
        .expect("run hubee-sync once on node-a");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_teledossier_arrives_through_a_forward_proxy_when_only_the_proxy_reaches_the_hub() {
    if !Path::new(TINYPROXY).exists() {
        eprintln!(
            "netlab_proxy: SKIPPED: no {TINYPROXY} (apt-get install tinyproxy; scripts/test.sh does)"
        );
        return;
    }
    let Some(net) = Netlab::or_skip("netlab_proxy") else {
        return;
    };
    let lab_hub = net.start_hub(8080);
    let hub = lab_hub.hub.clone();
    hub.add_client("certdc-client", SECRET, "CERTDC");
    let mut spec = CaseSpec::new("CERTDC");
    spec.attachments.push(AttachmentSpec::new(
        "acte.pdf",
        "DD_Certificatdedeces",
        "application/pdf",
        Content::Generated {
            size: 300_000,
            seed: 19,
        },
    ));
    let case = hub.add_case("certdc-client", spec);
    // node-a has no route to the hub, and the hub none back: only the proxy reaches it.
    net.no_route("node-a", "hub");
    net.no_route("hub", "node-a");

    let d = net.dir.path();
    write_mode(&d.join("secret"), &format!("{SECRET}\n"), 0o600);
    let config = |proxy: &str| {
        let toml = format!(
            r#"[hub]
api_url = "{api}"
token_url = "{api}/oauth2/token"
ca_file = "{ca}"
editor_name = "Commune de Saint-Étienne"
timeout = "5s"
retry_attempts = 2
retry_base_delay = "50ms"
retry_max_delay = "100ms"
{proxy}

[state]
url = "sqlite://{d}/state.db"

[[subscription]]
name = "certdc"
process_code = "CERTDC"
client_id = "certdc-client"
client_secret_file = "{d}/secret"
schedule = "every 5m"
spool = "{d}/spool/certdc"
"#,
            api = lab_hub.https_url,
            ca = lab_hub.ca_file.display(),
            d = d.display(),
        );
        let path = d.join("hubee-sync.toml");
        write_mode(&path, &toml, 0o640);
        path
    };

    // Without the proxy: no way to the hub.
    let (ok, err) = once(&net, &config(""));
    assert!(!ok, "reached the hub without the proxy:\n{err}");
    assert_eq!(hub.requests().len(), 0, "the hub saw a request: {err}");

    let _proxy = start_tinyproxy(&net, d, 8081);
    let proxy_addr = std::net::SocketAddr::from((addr_of("proxy"), 8888));
    assert!(
        wait_port(&net.ns("node-a"), proxy_addr, Duration::from_secs(10)),
        "tinyproxy does not listen on {proxy_addr}"
    );
    let (ok, err) = once(
        &net,
        &config(&format!("proxy = \"http://{}:8888\"", addr_of("proxy"))),
    );
    assert!(ok, "once through the proxy failed:\n{err}");

    let entries = check_new(&d.join("spool/certdc")).expect("the entry verifies");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].1["case_id"].as_str(), Some(case.as_str()));
    assert_eq!(hub.case_status(&case).as_deref(), Some("IN_PROGRESS"));
    assert!(hub.notifications("certdc-client").is_empty());
    // Every request came through the tunnel: tinyproxy logged the CONNECTs to the hub.
    let log = std::fs::read_to_string(d.join("tinyproxy/tinyproxy.log")).unwrap_or_default();
    let hub_at = format!("{}:8081", addr_of("hub"));
    assert!(
        log.lines()
            .any(|l| l.contains("CONNECT") && l.contains(&hub_at)),
        "tinyproxy logged no CONNECT {hub_at}:\n{log}"
    );
}
