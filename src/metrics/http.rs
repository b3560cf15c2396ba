//! The metrics listener: a tiny HTTP/1.1 server on tokio's `TcpListener` (no new crate),
//! serving `GET /metrics` and `GET /healthz` and nothing else (404 for another path, 405
//! for another method). One request per connection (`Connection: close`), a request head
//! of at most 8 KiB read within 10 s, at most 32 connections at once: a scraper or a stray
//! client can cost little. No capability is needed (a port ≥ 1024).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 32;

/// The listener could not be opened; the message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr} ([metrics] listen): {why}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub why: String,
}

/// Binds `addr` (now, so that a port taken is an error at start) and serves in a task until
/// the process ends. Returns the address bound (the port chosen when it was 0).
pub async fn serve(
    addr: SocketAddr,
    version: &'static str,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ListenError> {
    let listener = TcpListener::bind(addr).await.map_err(|e| ListenError {
        addr,
        why: match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "the address is already in use ({e}); stop what listens there (`ss -ltnp 'sport = :{}'` shows it) or choose another port in [metrics] listen",
                addr.port()
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied ({e}); the service has no capability: choose a port of 1024 or more"
            ),
            std::io::ErrorKind::AddrNotAvailable => format!(
                "this machine has no such address ({e}); write one of its own addresses, or only a port for 127.0.0.1"
            ),
            _ => format!("{e}; check the address in [metrics] listen"),
        },
    })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, go on.
                    tracing::warn!(error = %e, "metrics: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                drop(stream); // too many at once: the scraper tries again
                continue;
            };
            tokio::spawn(async move {
                let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, version)).await;
                drop(permit);
            });
        }
    });
    Ok((bound, task))
}

async fn answer(mut stream: TcpStream, version: &'static str) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break false,
            Ok(Ok(n)) => n,
        };
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
    };
    let response = if complete {
        respond(&head, version)
    } else if head.len() > MAX_HEAD {
        reply(431, "text/plain; charset=utf-8", "request head too large\n")
    } else {
        return;
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// The answer to one request head (pure, for the tests).
pub fn respond(head: &[u8], version: &'static str) -> Vec<u8> {
    let line = head
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" | "/healthz" if method != "GET" => reply_with(
            405,
            "text/plain; charset=utf-8",
            "Allow: GET\r\n",
            "only GET is served\n",
        ),
        "/metrics" => reply(
            200,
            super::text::CONTENT_TYPE,
            &super::text::render(version),
        ),
        "/healthz" => match super::health() {
            None => reply(200, "application/json", "{\"status\":\"ok\"}\n"),
            Some((failing, overdue)) => {
                let body = serde_json::json!({
                    "status": "unhealthy",
                    "failing": failing,
                    "overdue": overdue,
                });
                reply(503, "application/json", &format!("{body}\n"))
            }
        },
        _ => reply(
            404,
            "text/plain; charset=utf-8",
            "not found: only /metrics and /healthz are served\n",
        ),
    }
}

fn reply(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    reply_with(status, content_type, "", body)
}

/// `extra`: more header lines, each ending in CRLF.
fn reply_with(status: u16, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut r = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::respond;

    fn status(r: &[u8]) -> String {
        String::from_utf8_lossy(r)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn only_get_metrics_and_healthz_are_served() {
        assert!(status(&respond(b"GET /metrics HTTP/1.1\r\n\r\n", "0")).contains("200"));
        assert!(status(&respond(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", "0")).contains("200"));
        assert!(status(&respond(b"GET / HTTP/1.1\r\n\r\n", "0")).contains("404"));
        assert!(status(&respond(b"GET /../etc/passwd HTTP/1.1\r\n\r\n", "0")).contains("404"));
        let post = respond(b"POST /metrics HTTP/1.1\r\n\r\n", "0");
        assert!(status(&post).contains("405"));
        assert!(String::from_utf8_lossy(&post).contains("\r\nAllow: GET\r\n"));
        assert!(status(&respond(b"garbage", "0")).contains("404"));
    }
}
