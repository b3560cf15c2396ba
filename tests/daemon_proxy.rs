//! Reaching the hub through an HTTP proxy: `[hub] proxy`, or HTTP_PROXY/HTTPS_PROXY/NO_PROXY
//! from the environment. A tiny forwarding proxy on 127.0.0.1 records what passes through it.

mod common;

use std::sync::{Arc, Mutex};

use common::{bin, sha256sum_check, World, CLIENT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A forwarding HTTP/1.1 proxy: absolute-form requests are sent on to their origin (one
/// request per connection, `Connection: close` both ways); CONNECT is recorded and tunnelled.
struct Proxy {
    port: u16,
    /// Request lines as the client sent them (`GET http://127.0.0.1:…/… HTTP/1.1`).
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(forward(conn, log.clone()));
            }
        });
        Proxy { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("proxy log").clone()
    }
}

/// Reads up to the end of an HTTP head; returns (head, bytes read past it).
async fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with hop-by-hop headers replaced by `Connection: close`.
fn close_head(first_line: &str, head: &str) -> String {
    let mut out = format!("{first_line}\r\n");
    for line in head.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !matches!(
            name.as_str(),
            "connection" | "proxy-connection" | "keep-alive" | "proxy-authorization"
        ) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("connection: close\r\n\r\n");
    out
}

async fn forward(mut client: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let Some((head, rest)) = read_head(&mut client).await else {
        return;
    };
    let request_line = head.lines().next().unwrap_or("").to_string();
    seen.lock().expect("proxy log").push(request_line.clone());
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));

    if method == "CONNECT" {
        // Tunnel to the origin as asked (the test only checks that the proxy was asked).
        let Ok(mut upstream) = TcpStream::connect(target).await else {
            let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
            return;
        };
        let _ = client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await;
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }

    // Absolute form: http://host:port/path?query
    let Some(after_scheme) = target.strip_prefix("http://") else {
        let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        return;
    };
    let (authority, path) = match after_scheme.find('/') {
        Some(i) => (&after_scheme[..i], &after_scheme[i..]),
        None => (after_scheme, "/"),
    };
    let Ok(mut upstream) = TcpStream::connect(authority).await else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        return;
    };
    let content_length: u64 = head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let first = format!("{method} {path} HTTP/1.1");
    if upstream
        .write_all(close_head(&first, &head).as_bytes())
        .await
        .is_err()
        || upstream.write_all(&rest).await.is_err()
    {
        return;
    }
    let left = content_length.saturating_sub(rest.len() as u64);
    if left > 0 {
        let mut body = (&mut client).take(left);
        if tokio::io::copy(&mut body, &mut upstream).await.is_err() {
            return;
        }
    }
    // The answer, with `Connection: close` so that the client does not reuse this socket.
    let Some((resp_head, resp_rest)) = read_head(&mut upstream).await else {
        return;
    };
    let status_line = resp_head.lines().next().unwrap_or("").to_string();
    if client
        .write_all(close_head(&status_line, &resp_head).as_bytes())
        .await
        .is_err()
        || client.write_all(&resp_rest).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy(&mut upstream, &mut client).await;
    let _ = client.shutdown().await;
}

/// Runs `hubee-sync once` with exactly the proxy variables given (the others removed).
async fn once_with_env(w: &World, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--config").arg(w.config_path()).arg("once");
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "REQUEST_METHOD",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run hubee-sync once");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn hub_requests_through(proxy: &Proxy, w: &World) -> Vec<String> {
    let hub = format!("http://{}/", w.hub.addr());
    proxy
        .seen()
        .into_iter()
        .filter(|l| l.contains(&hub))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_proxy_setting_carries_every_request() {
    let w = World::new().await;
    let proxy = Proxy::start().await;
    w.write_config(&format!("proxy = \"{}\"", proxy.url()));
    let case = w.add_case(1, 1, 100_000);

    // NO_PROXY does not apply to a proxy set in the configuration.
    let (code, out) = once_with_env(&w, &[("NO_PROXY", "127.0.0.1")]).await;
    assert_eq!(code, 0, "{out}");
    let seen = hub_requests_through(&proxy, &w);
    assert!(
        seen.iter()
            .any(|l| l.starts_with("POST ") && l.contains("/token")),
        "the token request went through the proxy: {seen:?}"
    );
    for route in ["/notifications", "/cases/", "/attachments/", "/events"] {
        assert!(
            seen.iter().any(|l| l.contains(route)),
            "{route} went through the proxy: {seen:?}"
        );
    }
    assert!(
        seen.iter().any(|l| l.starts_with("DELETE ")),
        "the acknowledgement went through the proxy: {seen:?}"
    );
    let entries = w.entries("new");
    assert_eq!(entries.len(), 1);
    assert!(sha256sum_check(&w.spool().join("new").join(&entries[0])));
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_from_the_environment_is_used_unless_no_proxy_names_the_hub() {
    let w = World::new().await;
    let proxy = Proxy::start().await;

    // NO_PROXY naming the hub's address: straight to the hub, even for loopback only because
    // NO_PROXY says so (reqwest does not skip the proxy for 127.0.0.1 by itself).
    w.add_case(1, 1, 10_000);
    let (code, out) = once_with_env(
        &w,
        &[("HTTP_PROXY", &proxy.url()), ("NO_PROXY", "127.0.0.1")],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
    assert_eq!(w.entries("new").len(), 1);

    // Without NO_PROXY, every request to the http:// hub goes through HTTP_PROXY (the
    // lower-case spelling works too).
    let case = w.add_case(2, 1, 10_000);
    let (code, out) = once_with_env(&w, &[("http_proxy", &proxy.url())]).await;
    assert_eq!(code, 0, "{out}");
    let seen = hub_requests_through(&proxy, &w);
    assert!(
        seen.iter().any(|l| l.contains("/notifications")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|l| l.contains("/attachments/")), "{seen:?}");
    assert_eq!(w.entries("new").len(), 2);
    assert_eq!(w.receipt_events(&case).len(), 1);
    assert!(w.hub.notifications(CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_is_asked_to_tunnel_to_an_https_hub() {
    // The real hub is https: HTTPS_PROXY is the variable that matters in production. The fake
    // hub speaks plain HTTP, so the TLS handshake through the tunnel fails (exit 1), but the
    // proxy was asked for a CONNECT to the hub — and nothing went around it.
    let w = World::new().await;
    let proxy = Proxy::start().await;
    let text = std::fs::read_to_string(w.config_path()).expect("read config");
    let text = text.replace("http://127.0.0.1", "https://127.0.0.1");
    common::write_mode(&w.config_path(), &text, 0o640);
    w.add_case(1, 1, 1000);
    let (code, out) = once_with_env(
        &w,
        &[
            ("HTTPS_PROXY", &proxy.url()),
            ("HTTP_PROXY", "http://127.0.0.1:9"),
        ],
    )
    .await;
    assert_eq!(code, 1, "{out}");
    let connect = format!("CONNECT {} ", w.hub.addr());
    assert!(
        proxy.seen().iter().any(|l| l.starts_with(&connect)),
        "{:?}",
        proxy.seen()
    );
    assert!(
        w.hub.requests().is_empty(),
        "nothing reached the hub directly"
    );
    assert!(w.entries("new").is_empty());
}
