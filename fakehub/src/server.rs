//! HTTP side: accept loop, one hyper `serve_connection` per TCP stream, routing, request
//! validation, fault injection and response streaming.

use crate::content::{Content, CHUNK};
use crate::state::{ApiErr, Download, NewEvent, Payload, Res};
use crate::util::{envelope, parse_urlencoded, validation_message};
use crate::{Fault, Inner, RequestRecord, Route};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OnceCell};

const API_PREFIX: &str = "/teledossiers/v1";
/// JSON request bodies are small (an Event is a few KiB at most).
const JSON_LIMIT: usize = 1024 * 1024;
/// §3: editorName, applicationName, softwareVersion are at most 50 characters.
const PARTNER_HEADERS: [&str; 3] = ["editorName", "applicationName", "softwareVersion"];

pub(crate) type RespBody = BoxBody<Bytes, io::Error>;

// ------------------------------------------------------------------------ connections

/// Lets a request handler end its connection: at once with an RST (reset faults), or with a
/// FIN once what hyper has buffered reaches the socket (truncated bodies).
#[derive(Default)]
struct ConnCtl {
    kill: Notify,
    /// Close with SO_LINGER 0, so the peer sees a reset rather than an orderly close.
    reset: AtomicBool,
    /// Set by a truncated body; the next flush of the socket ends the connection.
    close_after_flush: AtomicBool,
}

impl ConnCtl {
    fn reset_now(&self) {
        self.reset.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }
}

/// The TCP stream as hyper sees it, with a hook on flush and on drop.
struct ConnIo {
    stream: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.ctl.reset.load(Ordering::SeqCst) {
            // SO_LINGER 0: the close sends RST and discards unsent data (Fault::Reset*).
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        // hyper calls this only after handing every buffered byte to the socket, so the
        // truncated body has been sent in full up to the cut: now close.
        if this.ctl.close_after_flush.swap(false, Ordering::SeqCst) {
            this.ctl.kill.notify_one();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(Arc::clone(&inner), stream));
            }
            // E.g. too many open files: wait a little rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn serve_connection(inner: Arc<Inner>, stream: TcpStream) {
    let ctl = Arc::new(ConnCtl::default());
    let io = TokioIo::new(ConnIo {
        stream,
        ctl: Arc::clone(&ctl),
    });
    let svc_ctl = Arc::clone(&ctl);
    let svc = hyper::service::service_fn(move |req| {
        handle(Arc::clone(&inner), Arc::clone(&svc_ctl), req)
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, svc);
    // Dropping `conn` drops the socket: with a reset flag set, as an RST.
    tokio::select! {
        _ = conn => {}
        _ = ctl.kill.notified() => {}
    }
}

// ------------------------------------------------------------------------ responses

enum Body {
    Empty,
    Bytes(Bytes),
    Content(Arc<Content>),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::Content(c) => c.len(),
        }
    }
}

struct Resp {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

impl Resp {
    fn json(status: u16, v: &Value) -> Resp {
        Resp {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: Body::Bytes(Bytes::from(v.to_string())),
        }
    }

    fn err(e: ApiErr) -> Resp {
        Resp::json(e.status, &e.body)
    }

    fn no_content() -> Resp {
        Resp {
            status: 204,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    fn header_mut(&mut self, name: &str) -> Option<&mut String> {
        self.headers
            .iter_mut()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// How the body goes out (faults).
#[derive(Default)]
struct Delivery {
    truncate_after: Option<u64>,
    chunk_delay: Option<Duration>,
    /// No `Content-Length`: the body goes out chunked (§10.10).
    chunked: bool,
    /// Chunked, and the body ends cleanly after this many bytes (`Fault::CutShort`).
    cut_short: Option<u64>,
}

struct Streamer {
    body: Body,
    offset: u64,
    end: u64,
    chunk: u64,
    delay: Option<Duration>,
    truncate: bool,
    ctl: Arc<ConnCtl>,
}

fn into_hyper(resp: Resp, delivery: Delivery, ctl: &Arc<ConnCtl>) -> Response<RespBody> {
    let len = resp.body.len();
    let mut builder = Response::builder().status(resp.status);
    for (k, v) in &resp.headers {
        builder = builder.header(*k, v.as_str());
    }
    if resp.status != 204 && !delivery.chunked {
        // Announced in full even when the body will be cut short (Fault::TruncateBody).
        builder = builder.header("content-length", len.to_string());
    }
    if delivery.truncate_after.is_some() {
        builder = builder.header("connection", "close");
    }
    let plain =
        delivery.truncate_after.is_none() && delivery.chunk_delay.is_none() && !delivery.chunked;
    let body: RespBody = match resp.body {
        Body::Empty if resp.status == 204 => Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
        Body::Bytes(b) if plain => Full::new(b).map_err(|never| match never {}).boxed(),
        body => {
            // Small bodies sent slowly still come in several pieces.
            let chunk = if delivery.chunk_delay.is_some() && len <= CHUNK as u64 {
                len.div_ceil(4).max(1)
            } else {
                CHUNK as u64
            };
            let st = Streamer {
                body,
                offset: 0,
                end: delivery
                    .truncate_after
                    .or(delivery.cut_short)
                    .map_or(len, |n| n.min(len)),
                chunk,
                delay: delivery.chunk_delay,
                truncate: delivery.truncate_after.is_some(),
                ctl: Arc::clone(ctl),
            };
            stream_body(st)
        }
    };
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(
            Full::new(Bytes::from_static(b"invalid response header"))
                .map_err(|never| match never {})
                .boxed(),
        );
        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// Streams a body in chunks, produced on demand: a 1 GiB generated file is never in memory.
fn stream_body(st: Streamer) -> RespBody {
    let s = futures_util::stream::unfold(st, |mut st| async move {
        if st.offset >= st.end {
            if st.truncate {
                // Let hyper flush what it holds; ConnIo::poll_flush then closes the
                // connection. The timer is a safety net should no flush come.
                st.ctl.close_after_flush.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                st.ctl.kill.notify_one();
                std::future::pending::<()>().await;
            }
            return None;
        }
        if let (Some(d), true) = (st.delay, st.offset > 0) {
            tokio::time::sleep(d).await;
        }
        let n = st.chunk.min(st.end - st.offset);
        let data = match &st.body {
            Body::Empty => Bytes::new(),
            Body::Bytes(b) => b.slice(st.offset as usize..(st.offset + n) as usize),
            Body::Content(c) => {
                let mut v = vec![0u8; n as usize];
                c.read_at(st.offset, &mut v);
                Bytes::from(v)
            }
        };
        st.offset += n;
        Some((Ok::<_, io::Error>(Frame::data(data)), st))
    });
    StreamBody::new(s).boxed()
}

/// The base64 digest of a file, computed once (off the async threads for big files).
pub(crate) async fn digest_of(content: &Arc<Content>, cell: &OnceCell<String>) -> String {
    cell.get_or_init(|| async {
        let c = Arc::clone(content);
        tokio::task::spawn_blocking(move || c.digest_b64())
            .await
            .unwrap_or_default()
    })
    .await
    .clone()
}

async fn download_resp(d: Download) -> Resp {
    let (body, digest) = match d.payload {
        Payload::Content(c) => {
            let digest = digest_of(&c, &d.digest).await;
            (Body::Content(c), digest)
        }
        Payload::Bytes(b) => {
            let digest = match d.digest.get() {
                Some(s) => s.clone(),
                None => base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&b)),
            };
            (Body::Bytes(b), digest)
        }
    };
    Resp {
        status: 200,
        headers: vec![
            ("content-type", "application/octet-stream".to_string()),
            // [OAS 1.2.7] plain base64 in a header named `digest` (§10.8).
            ("digest", digest),
        ],
        body,
    }
}

// ------------------------------------------------------------------------ routing

#[derive(Default, Clone)]
struct Ids {
    notification: Option<String>,
    case: Option<String>,
    event: Option<String>,
    attachment: Option<String>,
}

enum Target {
    Token,
    Api(Route, Ids),
    /// `/folders*` is OSL/ADMIN only (§2): 403 for an SI token.
    Folders,
    MethodNotAllowed,
    NotFound,
}

fn classify(method: &str, path: &str) -> Target {
    if path == "/oauth2/token" || path == "/token" {
        return if method == "POST" {
            Target::Token
        } else {
            Target::MethodNotAllowed
        };
    }
    let Some(rest) = path.strip_prefix(API_PREFIX) else {
        return Target::NotFound;
    };
    let segs: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let s = |i: usize| segs.get(i).map(|x| x.to_string());
    use Route::*;
    let (route, ids) = match (segs.as_slice(), method) {
        (["notifications"], "GET") => (ListNotifications, Ids::default()),
        (["notifications", _], "DELETE") => (
            DeleteNotification,
            Ids {
                notification: s(1),
                ..Ids::default()
            },
        ),
        (["cases", _], m) => {
            let ids = Ids {
                case: s(1),
                ..Ids::default()
            };
            match m {
                "GET" => (GetCase, ids),
                "PATCH" | "POST" => (PatchCase, ids),
                _ => return Target::MethodNotAllowed,
            }
        }
        (["cases", _, "attachments", _], m) => {
            if m != "GET" {
                return Target::MethodNotAllowed;
            }
            (
                GetAttachment,
                Ids {
                    case: s(1),
                    attachment: s(3),
                    ..Ids::default()
                },
            )
        }
        (["cases", _, "events"], m) => {
            if m != "POST" {
                return Target::MethodNotAllowed;
            }
            (
                PostEvent,
                Ids {
                    case: s(1),
                    ..Ids::default()
                },
            )
        }
        (["cases", _, "events", _], m) => {
            let ids = Ids {
                case: s(1),
                event: s(3),
                ..Ids::default()
            };
            match m {
                "GET" => (GetEvent, ids),
                "PATCH" | "POST" => (PatchEvent, ids),
                "DELETE" => (DeleteEvent, ids),
                _ => return Target::MethodNotAllowed,
            }
        }
        (["cases", _, "events", _, "attachments", _], m) => {
            let ids = Ids {
                case: s(1),
                event: s(3),
                attachment: s(5),
                ..Ids::default()
            };
            match m {
                "PUT" => (PutEventAttachment, ids),
                "GET" => (GetEventAttachment, ids),
                _ => return Target::MethodNotAllowed,
            }
        }
        (["folders", ..], _) => return Target::Folders,
        (["notifications"] | ["notifications", _], _) => return Target::MethodNotAllowed,
        _ => return Target::NotFound,
    };
    Target::Api(route, ids)
}

// ------------------------------------------------------------------------ request handling

/// What a handler needs to know about the request (headers are lower-cased by hyper).
struct Ctx {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    /// The JSON body once read, for the request record.
    body: std::sync::Mutex<Option<Value>>,
}

impl Ctx {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn invalid(&self, location: &str, detail: &str) -> ApiErr {
        ApiErr::bad(&validation_message(
            &self.method,
            &self.path,
            location,
            detail,
        ))
    }

    fn bearer(&self) -> Option<&str> {
        let v = self.header("authorization")?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    }
}

async fn handle(
    inner: Arc<Inner>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<RespBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let ctx = Ctx {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parse_urlencoded(parts.uri.query().unwrap_or("")),
        headers: parts.headers,
        body: std::sync::Mutex::new(None),
    };
    if let Some(sub) = ctx.path.strip_prefix("/_fake/") {
        let sub = sub.to_string();
        let resp = match admin(&inner, &ctx, &sub, body).await {
            Ok(r) => r,
            Err(e) => Resp::err(e),
        };
        return Ok(into_hyper(resp, Delivery::default(), &ctl));
    }

    let target = classify(&ctx.method, &ctx.path);
    let route = match &target {
        Target::Token => Some(Route::Token),
        Target::Api(r, _) => Some(*r),
        _ => None,
    };
    let record = RequestRecord {
        method: ctx.method.clone(),
        route,
        path: ctx.path.clone(),
        query: parts.uri.query().unwrap_or("").to_string(),
        status: None,
        fault: None,
        headers: ctx
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: None,
        at: std::time::Instant::now(),
        client_id: inner.state().token_client(ctx.bearer()),
    };
    // Faults are drawn when the request arrives, before anything else happens.
    let (idx, fault) = {
        let mut st = inner.state();
        let fault = route.and_then(|r| st.take_fault(r));
        let idx = st.record(RequestRecord {
            fault: fault.clone(),
            ..record
        });
        (idx, fault)
    };

    let mut resp = match &fault {
        Some(Fault::ResetBeforeEffect) => {
            inner.state().finish_record(idx, None);
            return drop_connection(&ctl).await;
        }
        Some(Fault::ResetMidBody { after_bytes }) => {
            let mut body = body;
            let mut seen = 0u64;
            while seen < *after_bytes {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            seen += data.len() as u64;
                        }
                    }
                    _ => break,
                }
            }
            inner.state().finish_record(idx, None);
            return drop_connection(&ctl).await;
        }
        Some(Fault::Status(code)) => {
            let reason = hyper::StatusCode::from_u16(*code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            Resp::json(*code, &envelope(json!(code), reason))
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            // WSO2 throttling (900800, [WSO2]). Its code is a string here on purpose: raw WSO2
            // faults carry string codes, and clients must accept both (§10.14).
            let mut r = Resp::json(429, &envelope(json!("900800"), "Message throttled out"));
            r.headers
                .push(("retry-after", retry_after_secs.to_string()));
            r
        }
        Some(Fault::KillToken) => {
            if route == Some(Route::Token) {
                Resp::err(invalid_client(""))
            } else {
                if let Some(t) = ctx.bearer() {
                    inner.state().kill_token(t);
                }
                Resp::err(ApiErr::invalid_credentials())
            }
        }
        _ => match target {
            Target::Token => token(&inner, &ctx, body).await,
            Target::Api(route, ids) => {
                // Someone else's write, hooked on this request, lands just before it.
                inner.state().run_agent_hooks(route, ids.case.as_deref());
                api(&inner, &ctx, route, &ids, body).await
            }
            Target::Folders => match inner.state().authenticate(ctx.bearer()) {
                Ok(_) => Resp::err(ApiErr::forbidden()),
                Err(e) => Resp::err(e),
            },
            Target::MethodNotAllowed => Resp::err(ApiErr::new(405, "Method not allowed")),
            Target::NotFound => Resp::err(ApiErr::new(
                404,
                "No matching resource found for given API Request",
            )),
        },
    };

    if let Some(v) = ctx.body.lock().ok().and_then(|mut b| b.take()) {
        inner.state().set_record_body(idx, v);
    }
    let mut delivery = Delivery::default();
    let download = matches!(
        route,
        Some(Route::GetAttachment | Route::GetEventAttachment)
    );
    if download && resp.status == 200 && inner.state().behaviour.chunked_downloads {
        delivery.chunked = true;
    }
    match &fault {
        Some(Fault::ResetAfterEffect) => {
            inner.state().finish_record(idx, None);
            return drop_connection(&ctl).await;
        }
        Some(Fault::TruncateBody { after_bytes }) => {
            // Announces the full length whatever the behaviour: that is the fault.
            delivery.truncate_after = Some(*after_bytes);
            delivery.chunked = false;
        }
        Some(Fault::CutShort { after_bytes }) if download && resp.status == 200 => {
            delivery.chunked = true;
            delivery.cut_short = Some(*after_bytes);
        }
        Some(Fault::SlowBody { chunk_delay_ms }) => {
            delivery.chunk_delay = Some(Duration::from_millis(*chunk_delay_ms))
        }
        Some(Fault::WrongDigest) => {
            if let Some(d) = resp.header_mut("digest") {
                *d = base64::engine::general_purpose::STANDARD
                    .encode(Sha256::digest(b"not the file you asked for"));
            }
        }
        Some(Fault::MissingDigest) => resp.headers.retain(|(k, _)| *k != "digest"),
        _ => {}
    }
    if let Some(prefix) = inner.state().digest_prefix.clone() {
        if let Some(d) = resp.header_mut("digest") {
            d.insert_str(0, &prefix);
        }
    }
    inner.state().finish_record(idx, Some(resp.status));
    Ok(into_hyper(resp, delivery, &ctl))
}

/// Admin routes for shell scripts (demo, benchmarks); not part of HubEE and not recorded.
async fn admin(inner: &Arc<Inner>, ctx: &Ctx, sub: &str, body: Incoming) -> Res<Resp> {
    let hub = crate::FakeHub {
        inner: Arc::clone(inner),
    };
    if ctx.method == "GET" && sub == "state" {
        return Ok(Resp::json(200, &hub.state_json()));
    }
    if ctx.method != "POST" {
        return Err(ApiErr::new(404, "No such admin route"));
    }
    let raw = read_limited(body, JSON_LIMIT).await?;
    let v: Value = if raw.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&raw).map_err(|e| ApiErr::bad(&format!("admin: bad JSON: {e}")))?
    };
    fn field<T: serde::de::DeserializeOwned>(v: &Value, name: &str) -> Res<Option<T>> {
        match v.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => serde_json::from_value(x.clone())
                .map(Some)
                .map_err(|e| ApiErr::bad(&format!("admin: bad {name}: {e}"))),
        }
    }
    fn need<T: serde::de::DeserializeOwned>(v: &Value, name: &str) -> Res<T> {
        field(v, name)?.ok_or_else(|| ApiErr::bad(&format!("admin: {name} is required")))
    }
    let case_exists = |id: &str| -> Res<()> {
        hub.case_status(id)
            .map(|_| ())
            .ok_or_else(|| ApiErr::new(404, "Case is not found"))
    };
    match sub {
        // {"route":"GetAttachment","fault":{"Status":503},"times":2}
        "inject" => hub.inject(
            need(&v, "route")?,
            need(&v, "fault")?,
            field(&v, "times")?.unwrap_or(1),
        ),
        // {"routes":["GetAttachment"]|null,"rate":0.1,"kinds":["ResetAfterEffect"],"seed":1}
        "inject_random" => hub.inject_random(
            field(&v, "routes")?,
            need(&v, "rate")?,
            need(&v, "kinds")?,
            field(&v, "seed")?.unwrap_or(0),
        ),
        "clear_faults" => hub.clear_faults(),
        "expire_tokens" => hub.expire_all_tokens(),
        // {"secs":60}
        "token_lifetime" => hub.set_token_lifetime(need(&v, "secs")?),
        // {"strict":true}
        "strict_transitions" => hub.set_strict_transitions(need(&v, "strict")?),
        // Part of HubBehaviour, camelCase: {"eventsMoveStatus":false,"maxEventsPerCase":20}
        "behaviour" => {
            let mut current = serde_json::to_value(hub.behaviour())
                .map_err(|e| ApiErr::bad(&format!("admin: {e}")))?;
            let Value::Object(changes) = v else {
                return Err(ApiErr::bad("admin: behaviour takes a JSON object"));
            };
            for (k, x) in changes {
                current[k] = x;
            }
            let b: crate::HubBehaviour = serde_json::from_value(current)
                .map_err(|e| ApiErr::bad(&format!("admin: bad behaviour: {e}")))?;
            hub.set_behaviour(b);
            return Ok(Resp::json(
                200,
                &serde_json::to_value(hub.behaviour()).unwrap_or(Value::Null),
            ));
        }
        // {"caseId":"…","action":{"SetStatus":"DONE"}}
        "agent/act" => {
            let id: String = need(&v, "caseId")?;
            case_exists(&id)?;
            if let Err(e) = hub.agent_act(&id, need(&v, "action")?) {
                return Err(ApiErr::new(409, &format!("admin: the portal refuses: {e}")));
            }
        }
        // {"everyMs":200,"seed":1} starts the background agent; {"stop":true} stops it.
        "agent" => {
            let stop: bool = field(&v, "stop")?.unwrap_or(false);
            let handle = if stop {
                None
            } else {
                let every: u64 = field(&v, "everyMs")?.unwrap_or(200);
                let seed: u64 = field(&v, "seed")?.unwrap_or(0);
                Some(hub.start_agent(seed, Duration::from_millis(every)))
            };
            if let Ok(mut slot) = inner.agent.lock() {
                *slot = handle;
            }
        }
        // {"seed":7} or {"seed":null}
        "shuffle" => hub.set_shuffle(field(&v, "seed")?),
        // {"clientId":"demo","count":5,"files":2,"fileSize":1048576,"seed":1}
        "cases" => {
            let client = match field::<String>(&v, "clientId")? {
                Some(c) => c,
                None => inner
                    .state()
                    .only_client()
                    .ok_or_else(|| ApiErr::bad("admin: clientId is required"))?,
            };
            if inner.state().process_code_of(&client).is_none() {
                return Err(ApiErr::bad(&format!("admin: unknown client {client}")));
            }
            let ids = hub.add_generated_cases(
                &client,
                field(&v, "count")?.unwrap_or(1),
                field(&v, "files")?.unwrap_or(1),
                field(&v, "fileSize")?.unwrap_or(1024),
                field(&v, "seed")?.unwrap_or_else(|| fastrand::u64(..)),
            );
            return Ok(Resp::json(201, &json!({"caseIds": ids})));
        }
        // {"caseId":"…"}
        "osl/reopen" => {
            let id: String = need(&v, "caseId")?;
            case_exists(&id)?;
            hub.osl_reopen(&id);
        }
        // {"caseId":"…","actionType":"SENDING_MESSAGE","message":"…","caseNewStatus":null}
        "osl/event" => {
            let id: String = need(&v, "caseId")?;
            case_exists(&id)?;
            let ev = crate::OslEvent {
                action_type: need(&v, "actionType")?,
                message: field(&v, "message")?,
                case_new_status: field(&v, "caseNewStatus")?,
                attachments: Vec::new(),
            };
            let eid = hub.osl_post_event(&id, ev);
            return Ok(Resp::json(201, &json!({"eventId": eid})));
        }
        _ => return Err(ApiErr::new(404, "No such admin route")),
    }
    Ok(Resp::no_content())
}

/// Ends the connection with an RST and never answers.
async fn drop_connection(ctl: &ConnCtl) -> Result<Response<RespBody>, Infallible> {
    ctl.reset_now();
    std::future::pending().await
}

fn invalid_client(client_id: &str) -> ApiErr {
    ApiErr {
        status: 401,
        body: json!({
            "error": "invalid_client",
            "error_description": format!("A valid OAuth client could not be found for client_id: {client_id}"),
        }),
    }
}

/// `POST /oauth2/token` (§2): Basic client credentials, form body.
async fn token(inner: &Inner, ctx: &Ctx, body: Incoming) -> Resp {
    let raw = match read_limited(body, 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return Resp::err(e),
    };
    let form = parse_urlencoded(&String::from_utf8_lossy(&raw));
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    // RFC 6749 §2.3.1: Basic is what HubEE's clients use; WSO2 also takes the pair in the body.
    let basic = ctx
        .header("authorization")
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        });
    let creds = basic.or_else(|| Some((field("client_id")?, field("client_secret")?)));
    let Some((id, secret)) = creds else {
        return Resp::json(
            401,
            &json!({"error": "invalid_client", "error_description": "Client credentials are invalid."}),
        );
    };
    if field("grant_type").as_deref() != Some("client_credentials") {
        return Resp::json(
            400,
            &json!({"error": "unsupported_grant_type", "error_description": "Unsupported grant_type value"}),
        );
    }
    // WSO2 grants the "default" scope when none is asked for; such a token cannot call the
    // SI API (see `State::authenticate`).
    let scope = field("scope").unwrap_or_else(|| "default".to_string());
    match inner.state().issue_token(&id, &secret, &scope) {
        Ok(v) => Resp::json(200, &v),
        Err(e) => Resp::err(e),
    }
}

async fn read_limited(mut body: Incoming, limit: usize) -> Res<Bytes> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| ApiErr::bad("Bad Request : the request body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ApiErr::new(413, "Request Entity Too Large"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// The shared checks of every SI API call, in the gateway's order: token (WSO2, 401), then the
/// request validator (headers, path ids, 400), then the handler.
async fn api(inner: &Inner, ctx: &Ctx, route: Route, ids: &Ids, body: Incoming) -> Resp {
    match api_inner(inner, ctx, route, ids, body).await {
        Ok(r) => r,
        Err(e) => Resp::err(e),
    }
}

async fn api_inner(inner: &Inner, ctx: &Ctx, route: Route, ids: &Ids, body: Incoming) -> Res<Resp> {
    let client = inner.state().authenticate(ctx.bearer())?;
    for name in PARTNER_HEADERS {
        for v in ctx.headers.get_all(name.to_ascii_lowercase()) {
            let v = String::from_utf8_lossy(v.as_bytes());
            let n = v.chars().count();
            if n > 50 {
                return Err(ctx.invalid(
                    &format!("header.{name}"),
                    &format!("String \"{v}\" is too long (length: {n}, maximum allowed: 50)"),
                ));
            }
        }
    }
    let lenient = inner.state().lenient_ids;
    let decoded;
    let ids = if lenient {
        let d = |v: &Option<String>| v.as_deref().map(crate::util::percent_decode_path);
        decoded = Ids {
            notification: d(&ids.notification),
            case: d(&ids.case),
            event: d(&ids.event),
            attachment: d(&ids.attachment),
        };
        &decoded
    } else {
        ids
    };
    let checks = [
        ("notificationId", &ids.notification),
        ("caseId", &ids.case),
        ("eventId", &ids.event),
        ("attachmentId", &ids.attachment),
    ];
    for (name, value) in checks {
        if let Some(v) = value {
            if !lenient && !crate::util::is_uuid(v) {
                return Err(ctx.invalid(
                    &format!("path.{name}"),
                    &format!("Input string \"{v}\" is not a valid UUID"),
                ));
            }
        }
    }
    let case = ids.case.as_deref().unwrap_or_default();
    let event = ids.event.as_deref().unwrap_or_default();
    let att = ids.attachment.as_deref().unwrap_or_default();
    match route {
        Route::ListNotifications => {
            let max = match ctx.query("maxResult") {
                None => 25,
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(n) if n.is_finite() => n.clamp(0.0, 25.0) as usize,
                    // The [ERR] message, verbatim (its closing parenthesis is missing there too).
                    _ => {
                        return Err(ctx.invalid(
                            "query.maxResult",
                            "Instance type (string) does not match any allowed primitive type (allowed: [\"integer\",\"number\"]",
                        ))
                    }
                },
            };
            // §4 N1: `maxResult` defaults to 25 ([SFD] RC001) and the fake caps it there
            // ([CI] "par lot de 25 max"), so a client asking for more still gets 25.
            let details = ctx
                .query("eventDetails")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let codes: Vec<String> = ctx
                .query
                .iter()
                .filter(|(k, _)| k == "processCode" || k == "processCode[]")
                .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
                .filter(|s| !s.is_empty())
                .collect();
            let v = inner
                .state()
                .list_notifications(&client, max, details, &codes);
            Ok(Resp::json(200, &v))
        }
        Route::DeleteNotification => {
            let id = ids.notification.as_deref().unwrap_or_default();
            inner.state().delete_notification(&client, id)?;
            Ok(Resp::no_content())
        }
        Route::GetCase => {
            // `lite` is undocumented (§4 C1); the fake drops `events`.
            let lite = ctx
                .query("lite")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"));
            Ok(Resp::json(
                200,
                &inner.state().get_case(&client, case, lite)?,
            ))
        }
        Route::PatchCase => {
            check_override(ctx, "/cases/{caseId}")?;
            let v = read_json(ctx, body).await?;
            let status =
                string_field(ctx, &v, "status", 50)?.ok_or_else(|| ApiErr::bad("Bad request"))?;
            inner.state().patch_case(&client, case, &status)?;
            Ok(Resp::no_content())
        }
        Route::GetAttachment => {
            let d = inner.state().case_attachment(&client, case, att)?;
            Ok(download_resp(d).await)
        }
        Route::PostEvent => {
            let v = read_json(ctx, body).await?;
            let new = parse_event(ctx, &v)?;
            let info = partner_info(ctx);
            let ev = inner.state().post_event(&client, case, new, info)?;
            Ok(Resp::json(201, &ev))
        }
        Route::GetEvent => Ok(Resp::json(
            200,
            &inner.state().get_event(&client, case, event)?,
        )),
        Route::PatchEvent => {
            check_override(ctx, "/cases/{caseId}/events/{eventId}")?;
            let v = read_json(ctx, body).await?;
            let status =
                string_field(ctx, &v, "status", 12)?.ok_or_else(|| ApiErr::bad("Bad request"))?;
            inner.state().patch_event(&client, case, event, &status)?;
            Ok(Resp::no_content())
        }
        Route::DeleteEvent => {
            inner.state().delete_event(&client, case, event)?;
            Ok(Resp::no_content())
        }
        Route::PutEventAttachment => {
            check_content_type(ctx, "application/octet-stream")?;
            let declared = inner.state().upload_target(&client, case, event, att)?;
            let (len, sha, bytes) = read_upload(body).await?;
            // [ERR p.15] (seen on folder uploads; §10.10).
            if len != declared {
                return Err(ApiErr::bad("Size does not match with attachment meta-data"));
            }
            if let Some(d) = ctx.header("digest") {
                // §10.8: plain base64, or the older RFC 3230 `sha-256=<b64>`.
                let d = d.trim();
                let d = match d.get(..8) {
                    Some(p) if p.eq_ignore_ascii_case("sha-256=") => &d[8..],
                    _ => d,
                };
                let ours = base64::engine::general_purpose::STANDARD.encode(sha);
                if d != ours {
                    // The reaction to a wrong digest is undocumented (§10.8); 400 is the guess.
                    return Err(ApiErr::bad(
                        "Bad Request : digest does not match the uploaded file",
                    ));
                }
            }
            inner
                .state()
                .store_upload(&client, case, event, att, len, sha, bytes)?;
            Ok(Resp::no_content())
        }
        Route::GetEventAttachment => {
            let d = inner.state().event_attachment(&client, case, event, att)?;
            Ok(download_resp(d).await)
        }
        Route::Token => Err(ApiErr::new(
            404,
            "No matching resource found for given API Request",
        )),
    }
}

/// Hashes an upload as it streams in; keeps the bytes only while under 1 MiB.
async fn read_upload(mut body: Incoming) -> Res<(u64, [u8; 32], Option<Bytes>)> {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut kept: Option<Vec<u8>> = Some(Vec::new());
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|_| ApiErr::bad("Bad Request : the request body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            len += data.len() as u64;
            if len >= crate::state::KEEP_UPLOAD_BELOW {
                kept = None;
            } else if let Some(k) = kept.as_mut() {
                k.extend_from_slice(&data);
            }
        }
    }
    Ok((len, hasher.finalize().into(), kept.map(Bytes::from)))
}

/// The `X-HTTP-Method-Override: PATCH` variants (§4 C2′, E3′): the header is required and its
/// enum is `[PATCH]`, so the request validator rejects a POST without it.
fn check_override(ctx: &Ctx, template: &str) -> Res<()> {
    if ctx.method != "POST" {
        return Ok(());
    }
    match ctx.header("x-http-method-override") {
        None => Err(ctx.invalid(
            "header.X-HTTP-Method-Override",
            &format!("Header parameter 'X-HTTP-Method-Override' is required on path '{template}' but not found in request."),
        )),
        Some("PATCH") => Ok(()),
        Some(other) => Err(ctx.invalid(
            "header.X-HTTP-Method-Override",
            &format!("Instance value (\"{other}\") not found in enum (possible values: [\"PATCH\"])"),
        )),
    }
}

/// The validator rejects a body whose declared Content-Type the operation does not accept
/// ([CI] "Attention au type de body"). A missing Content-Type is let through.
fn check_content_type(ctx: &Ctx, expected: &str) -> Res<()> {
    match ctx.header("content-type") {
        Some(ct) => {
            let base = ct.split(';').next().unwrap_or("").trim();
            if base.eq_ignore_ascii_case(expected) {
                Ok(())
            } else {
                Err(ctx.invalid(
                    "body",
                    &format!("Request Content-Type header '{ct}' does not match any allowed types. Must be one of: [{expected}]."),
                ))
            }
        }
        None => Ok(()),
    }
}

async fn read_json(ctx: &Ctx, body: Incoming) -> Res<Value> {
    check_content_type(ctx, "application/json")?;
    let raw = read_limited(body, JSON_LIMIT).await?;
    let v: Value = serde_json::from_slice(&raw)
        .map_err(|e| ctx.invalid("body", &format!("Unable to parse JSON - {e}")))?;
    if let Ok(mut b) = ctx.body.lock() {
        *b = Some(v.clone());
    }
    Ok(v)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_error(ctx: &Ctx, pointer: &str, v: &Value, allowed: &str) -> ApiErr {
    ctx.invalid(
        "body",
        &format!(
            "[Path '{pointer}'] Instance type ({}) does not match any allowed primitive type (allowed: [\"{allowed}\"])",
            json_type(v)
        ),
    )
}

/// A nullable string property with a maxLength, at `/name` or inside an item (`prefix`).
fn string_at(
    ctx: &Ctx,
    obj: &serde_json::Map<String, Value>,
    prefix: &str,
    name: &str,
    max: usize,
) -> Res<Option<String>> {
    let pointer = format!("{prefix}/{name}");
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n > max {
                Err(ctx.invalid(
                    "body",
                    &format!("[Path '{pointer}'] String \"{s}\" is too long (length: {n}, maximum allowed: {max})"),
                ))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(other) => Err(type_error(ctx, &pointer, other, "string")),
    }
}

fn as_object<'a>(
    ctx: &Ctx,
    v: &'a Value,
    pointer: &str,
) -> Res<&'a serde_json::Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| type_error(ctx, pointer, v, "object"))
}

fn string_field(ctx: &Ctx, v: &Value, name: &str, max: usize) -> Res<Option<String>> {
    string_at(ctx, as_object(ctx, v, "")?, "", name, max)
}

fn missing(
    ctx: &Ctx,
    pointer: &str,
    obj: &serde_json::Map<String, Value>,
    required: &[&str],
) -> Res<()> {
    let absent: Vec<String> = required
        .iter()
        .filter(|k| !obj.contains_key(**k))
        .map(|k| format!("\"{k}\""))
        .collect();
    if absent.is_empty() {
        return Ok(());
    }
    let at = if pointer.is_empty() {
        String::new()
    } else {
        format!("[Path '{pointer}'] ")
    };
    Err(ctx.invalid(
        "body",
        &format!(
            "{at}Object has missing required properties ([{}])",
            absent.join(",")
        ),
    ))
}

/// The Event schema as the request validator sees it (§5; readOnly properties are not
/// required in requests). The business rules (RC002) are in `State::post_event`.
fn parse_event(ctx: &Ctx, v: &Value) -> Res<NewEvent> {
    let obj = as_object(ctx, v, "")?;
    missing(ctx, "", obj, &["actionType", "notification"])?;
    let notification = match obj.get("notification") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(type_error(ctx, "/notification", other, "boolean")),
    };
    let mut attachments = Vec::new();
    match obj.get("attachments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("/attachments/{i}");
                let a = as_object(ctx, item, &p)?;
                missing(ctx, &p, a, &["fileName", "type", "size", "mimeType"])?;
                let size = match a.get("size") {
                    Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap_or(0),
                    Some(other) => {
                        return Err(type_error(ctx, &format!("{p}/size"), other, "integer"))
                    }
                    None => 0,
                };
                attachments.push((
                    string_at(ctx, a, &p, "fileName", 255)?.unwrap_or_default(),
                    string_at(ctx, a, &p, "type", 100)?.unwrap_or_default(),
                    size,
                    string_at(ctx, a, &p, "mimeType", 255)?.unwrap_or_default(),
                ));
            }
        }
        Some(other) => return Err(type_error(ctx, "/attachments", other, "array")),
    }
    Ok(NewEvent {
        action_type: string_at(ctx, obj, "", "actionType", 100)?.unwrap_or_default(),
        notification,
        message: string_at(ctx, obj, "", "message", 1000)?,
        comment: string_at(ctx, obj, "", "comment", 1000)?,
        author: string_at(ctx, obj, "", "author", 255)?,
        case_current_status: string_at(ctx, obj, "", "caseCurrentStatus", 15)?,
        case_new_status: string_at(ctx, obj, "", "caseNewStatus", 15)?,
        partner_attributes: string_at(ctx, obj, "", "partnerAttributes", 1024)?,
        attachments,
    })
}

/// `partnerInfo` of created objects comes from the identifying headers (§3).
fn partner_info(ctx: &Ctx) -> Value {
    let mut m = serde_json::Map::new();
    let mut any = false;
    for name in PARTNER_HEADERS {
        let v = ctx.header(&name.to_ascii_lowercase()).map(str::to_string);
        any |= v.is_some();
        m.insert(name.to_string(), json!(v));
    }
    if any {
        Value::Object(m)
    } else {
        Value::Null
    }
}
