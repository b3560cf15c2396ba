//! HTTP client for the HubEE Folder API v1 (PROTOCOL §2–§4).
//!
//! One [`HubClient`] per process (connection reuse across subscriptions); one [`HubSession`]
//! per subscription, holding that credential pair's cached token. Every call carries the
//! identifying headers. Idempotent calls (GET, PUT, PATCH, DELETE) are retried with
//! exponential backoff and jitter on network errors, 429 (honouring `Retry-After`) and 5xx;
//! other 4xx are never retried; POST is never retried here (the caller resolves a lost answer
//! by looking for its event). A 401 renews the token once and replays the call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::sync::Mutex;
use url::Url;

use super::error::{HubError, Op};
use super::model::{Case, ErrorBody, Event, NewEvent, Notification};

/// Base path appended to `[hub] api_url` (PROTOCOL §1).
pub const BASE_PATH: &str = "/teledossiers/v1";

/// When the hub gives no `expires_in`, PROTOCOL §2 says one hour.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// How the client reaches the hub. Built from validated settings by the caller.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub api_url: Url,
    pub token_url: Url,
    /// Already ASCII and at most 50 characters (PROTOCOL §3).
    pub editor_name: String,
    pub application_name: String,
    pub software_version: String,
    pub proxy: Option<Url>,
    pub ca_file: Option<PathBuf>,
    /// Connect timeout, and idle timeout between two reads of a body.
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total tries of an idempotent call, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with jitter: a random delay in [d/2, d], d = base·2^n capped.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX));
        let capped = exp.min(self.max_delay);
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// The shared HTTP side: reqwest client and configuration.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    cfg: Arc<HubConfig>,
}

impl HubClient {
    pub fn new(cfg: HubConfig) -> Result<Self, HubError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .read_timeout(cfg.timeout)
            .user_agent(format!("hubee-sync/{}", cfg.software_version))
            .pool_idle_timeout(Duration::from_secs(50));
        if let Some(proxy) = &cfg.proxy {
            let p = reqwest::Proxy::all(proxy.as_str()).map_err(|e| {
                HubError::Setup(format!(
                    "[hub] proxy {}: {e}; fix the URL",
                    redact_url(proxy)
                ))
            })?;
            builder = builder.proxy(p);
        }
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                HubError::Setup(format!(
                    "cannot read [hub] ca_file {}: {e}; check the path and its permissions",
                    ca.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                HubError::Setup(format!(
                    "[hub] ca_file {} holds no usable PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| HubError::Setup(format!("{e}")))?;
        Ok(HubClient {
            http,
            cfg: Arc::new(cfg),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// A session for one subscription's credential pair.
    pub fn session(&self, client_id: &str, client_secret: &str) -> HubSession {
        HubSession {
            client: self.clone(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            token: Arc::new(Mutex::new(None)),
            fence: None,
        }
    }
}

/// Says whether this process may still change something on the hub for a subscription
/// (several nodes, issue 11: the hub has no lease, so we fence ourselves). `Err` says why
/// not. Called right before every request that changes something (PATCH, POST, PUT,
/// DELETE), each retry included.
pub type Fence = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

struct Token {
    value: String,
    renew_at: Instant,
}

/// One subscription's view of the hub: its credentials and cached token.
#[derive(Clone)]
pub struct HubSession {
    client: HubClient,
    client_id: String,
    /// Never logged, never in an error.
    client_secret: String,
    token: Arc<Mutex<Option<Token>>>,
    /// Checked before every request that changes something on the hub.
    fence: Option<Fence>,
}

impl std::fmt::Debug for HubSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSession")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A download in progress: the response whose body is read chunk by chunk, and the
/// digest the hub announced (PROTOCOL §4 C3, §10.8).
pub struct Download {
    pub response: Response,
    /// `None` when the header is absent. `Some(Err)` when present but unreadable.
    pub digest: Option<Result<[u8; 32], String>>,
    pub content_length: Option<u64>,
    pub op: Op,
}

impl Download {
    /// The next piece of the body, `None` at the end. A broken connection is an error.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, HubError> {
        self.response.chunk().await.map_err(|e| HubError::Network {
            op: self.op.clone(),
            detail: format!("body broke off: {}", error_chain(&e)),
            maybe_applied: false,
        })
    }
}

/// Parses a `digest` header: base64 SHA-256, with or without a `sha-256=` prefix (PROTOCOL
/// §10.8; RFC 3230 may list several, comma-separated).
pub fn parse_digest(value: &str) -> Result<[u8; 32], String> {
    for part in value.split(',') {
        let part = part.trim();
        let b64 = match part.split_once('=') {
            Some((alg, rest)) if alg.eq_ignore_ascii_case("sha-256") => rest,
            Some((alg, _))
                if !alg.is_empty()
                    && !alg.contains(['+', '/'])
                    && alg.len() < 12
                    && part.len() != 44 =>
            {
                continue
            }
            _ => part,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("digest {value:?} is not base64: {e}"))?;
        return <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| format!("digest {value:?} is not a SHA-256 ({} bytes)", bytes.len()));
    }
    Err(format!("digest {value:?} has no sha-256 value"))
}

/// Base64 of a SHA-256, as we send it on uploads.
pub fn digest_header(sha256: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(sha256)
}

fn redact_url(u: &Url) -> String {
    let mut u = u.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// The error and its causes on one line (reqwest hides the useful part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    let secs: u64 = v.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

impl HubSession {
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// This session, whose changing requests are first checked by `fence`.
    pub fn with_fence(mut self, fence: Fence) -> HubSession {
        self.fence = Some(fence);
        self
    }

    fn url(&self, path: &str) -> Url {
        let mut u = self.client.cfg.api_url.clone();
        let base = u.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{base}{BASE_PATH}{path}"));
        u
    }

    /// A valid token, from the cache or freshly obtained.
    async fn token(&self, force_new: bool) -> Result<String, HubError> {
        let mut guard = self.token.lock().await;
        if !force_new {
            if let Some(t) = guard.as_ref() {
                if Instant::now() < t.renew_at {
                    return Ok(t.value.clone());
                }
            }
        }
        let t = self.fetch_token().await?;
        let value = t.value.clone();
        *guard = Some(t);
        Ok(value)
    }

    /// A new token after `refused` was refused (401). Calls in flight at the same time all
    /// see their 401: the first renews, the others take the token it obtained. `true` when
    /// this call asked the hub for it.
    async fn renew_token(&self, refused: &str) -> Result<bool, HubError> {
        let mut guard = self.token.lock().await;
        if let Some(t) = guard.as_ref() {
            if t.value != refused && Instant::now() < t.renew_at {
                return Ok(false);
            }
        }
        *guard = Some(self.fetch_token().await?);
        Ok(true)
    }

    /// Forgets the cached token (used by tests and after a refused one).
    pub async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// Checks the credentials now: obtains a fresh token.
    pub async fn authenticate(&self) -> Result<(), HubError> {
        self.token(true).await.map(|_| ())
    }

    async fn fetch_token(&self) -> Result<Token, HubError> {
        let cfg = &self.client.cfg;
        let op = Op {
            method: "POST",
            path: cfg.token_url.path().to_string(),
        };
        let mut retry = 0;
        loop {
            let req = self
                .client
                .http
                .post(cfg.token_url.clone())
                .basic_auth(&self.client_id, Some(&self.client_secret))
                .form(&[("scope", "SI"), ("grant_type", "client_credentials")]);
            let req = self.identify(req);
            let sent_at = Instant::now();
            let outcome = req.send().await;
            crate::metrics::hub_request(
                &self.client_id,
                "POST",
                "/token",
                outcome.as_ref().ok().map(|r| r.status().as_u16()),
                sent_at.elapsed(),
            );
            let transient = match outcome {
                Ok(resp) if resp.status().is_success() => {
                    let body = resp.bytes().await.map_err(|e| HubError::Network {
                        op: op.clone(),
                        detail: error_chain(&e),
                        maybe_applied: false,
                    })?;
                    #[derive(serde::Deserialize)]
                    struct TokenBody {
                        access_token: Option<String>,
                        expires_in: Option<serde_json::Value>,
                    }
                    let tb: TokenBody =
                        serde_json::from_slice(&body).map_err(|e| HubError::Decode {
                            op: op.clone(),
                            detail: e.to_string(),
                        })?;
                    let value = tb.access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
                        HubError::Decode {
                            op: op.clone(),
                            detail: "no access_token".into(),
                        }
                    })?;
                    let lifetime = tb
                        .expires_in
                        .and_then(|v| match v {
                            serde_json::Value::Number(n) => n.as_u64(),
                            serde_json::Value::String(s) => s.trim().parse().ok(),
                            _ => None,
                        })
                        .map(Duration::from_secs)
                        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
                    // Renew before it runs out: a tenth of its life, at least 30 s, early; but
                    // never more than half of it, or a short-lived token would be renewed
                    // before every call.
                    let margin = (lifetime / 10)
                        .max(Duration::from_secs(30))
                        .min(lifetime / 2);
                    crate::metrics::token_renewed(&self.client_id);
                    return Ok(Token {
                        value,
                        renew_at: Instant::now() + lifetime.saturating_sub(margin),
                    });
                }
                Ok(resp) => {
                    let status = resp.status();
                    let wait = retry_after(&resp);
                    let body: ErrorBody = resp
                        .bytes()
                        .await
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or_default();
                    if status == StatusCode::UNAUTHORIZED
                        || status == StatusCode::BAD_REQUEST
                        || status == StatusCode::FORBIDDEN
                    {
                        return Err(HubError::AuthRefused {
                            client_id: self.client_id.clone(),
                            detail: body
                                .summary()
                                .unwrap_or_else(|| format!("HTTP {}", status.as_u16())),
                        });
                    }
                    let err = HubError::Status {
                        op: op.clone(),
                        status: status.as_u16(),
                        summary: body.summary(),
                    };
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        (err, wait)
                    } else {
                        return Err(err);
                    }
                }
                Err(e) => (
                    HubError::Network {
                        op: op.clone(),
                        detail: error_chain(&e),
                        maybe_applied: false,
                    },
                    None,
                ),
            };
            retry += 1;
            if retry >= cfg.retry.attempts {
                return Err(transient.0);
            }
            let delay = transient
                .1
                .map(|d| d.min(cfg.retry.max_delay))
                .unwrap_or_else(|| cfg.retry.delay(retry - 1));
            tracing::debug!(client_id = %self.client_id, error = %transient.0, ?delay, "token request failed, retrying");
            crate::metrics::hub_retry(&self.client_id);
            tokio::time::sleep(delay).await;
        }
    }

    fn identify(&self, req: RequestBuilder) -> RequestBuilder {
        let cfg = &self.client.cfg;
        req.header("editorName", &cfg.editor_name)
            .header("applicationName", &cfg.application_name)
            .header("softwareVersion", &cfg.software_version)
    }

    /// Sends one API call with token, headers, 401 renewal and (for idempotent methods)
    /// retries. Returns the response when its status is 2xx.
    async fn call(
        &self,
        method: Method,
        path: &str,
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Send + Sync),
    ) -> Result<Response, HubError> {
        let idempotent = method != Method::POST;
        let op = Op {
            method: method_name(&method),
            path: format!("{BASE_PATH}{path}"),
        };
        let url = self.url(path);
        let policy = self.client.cfg.retry;
        // On a 401 the call is replayed with a renewed token (PROTOCOL §9), the one another
        // call may have just obtained (calls in flight all see their 401 together): at most
        // two renewals of its own and four replays, then the refusal is the answer.
        let (mut replays, mut renewals) = (0u8, 0u8);
        let mut retry = 0u32;
        loop {
            let token = self.token(false).await?;
            let req = self
                .client
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&token);
            let req = build(self.identify(req));
            if method != Method::GET {
                // As late as possible: nothing but the send comes after the check.
                if let Some(fence) = &self.fence {
                    fence().map_err(|why| HubError::Fenced {
                        op: op.clone(),
                        detail: why,
                    })?;
                }
            }
            let sent_at = Instant::now();
            let outcome = req.send().await;
            crate::metrics::hub_request(
                &self.client_id,
                op.method,
                &op.path,
                outcome.as_ref().ok().map(|r| r.status().as_u16()),
                sent_at.elapsed(),
            );
            let (err, wait) = match outcome {
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let status = resp.status();
                    let wait = retry_after(&resp);
                    let body: ErrorBody = match resp.bytes().await {
                        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
                        Err(_) => ErrorBody::default(),
                    };
                    if status == StatusCode::UNAUTHORIZED && replays < 4 && renewals < 2 {
                        // PROTOCOL §9: on any 401 (above all 900901) renew and replay.
                        replays += 1;
                        tracing::debug!(client_id = %self.client_id, %op, "token refused, renewing it");
                        if self.renew_token(&token).await? {
                            renewals += 1;
                        }
                        continue;
                    }
                    let err = HubError::Status {
                        op: op.clone(),
                        status: status.as_u16(),
                        summary: body.summary(),
                    };
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Err(err);
                    }
                    (err, wait)
                }
                Err(e) => {
                    // Whether the hub saw the request is unknown unless we never connected.
                    let maybe_applied = !e.is_connect();
                    (
                        HubError::Network {
                            op: op.clone(),
                            detail: error_chain(&e),
                            maybe_applied,
                        },
                        None,
                    )
                }
            };
            retry += 1;
            if !idempotent || retry >= policy.attempts {
                return Err(err);
            }
            let delay = wait
                .map(|d| d.min(policy.max_delay))
                .unwrap_or_else(|| policy.delay(retry - 1));
            tracing::debug!(client_id = %self.client_id, error = %err, ?delay, "retrying");
            crate::metrics::hub_retry(&self.client_id);
            tokio::time::sleep(delay).await;
        }
    }

    async fn json_body(resp: Response, op: Op) -> Result<bytes::Bytes, HubError> {
        resp.bytes().await.map_err(|e| HubError::Network {
            op,
            detail: format!("body broke off: {}", error_chain(&e)),
            maybe_applied: false,
        })
    }

    /// `GET /notifications?eventDetails=true&maxResult=N` (PROTOCOL §4 N1).
    pub async fn list_notifications(&self, max: u32) -> Result<Vec<Notification>, HubError> {
        let op = op("GET", "/notifications");
        let max_s = max.to_string();
        let resp = self
            .call(Method::GET, "/notifications", &|r| {
                r.query(&[("eventDetails", "true"), ("maxResult", max_s.as_str())])
            })
            .await?;
        let body = Self::json_body(resp, op.clone()).await?;
        serde_json::from_slice(&body).map_err(|e| HubError::Decode {
            op,
            detail: e.to_string(),
        })
    }

    /// `DELETE /notifications/{id}`; 404 means already gone, which is success (PROTOCOL §9).
    pub async fn delete_notification(&self, id: &str) -> Result<(), HubError> {
        let path = format!("/notifications/{}", seg(id));
        match self.call(Method::DELETE, &path, &|r| r).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /cases/{id}`: the parsed case and the exact bytes the hub sent.
    pub async fn get_case(&self, case_id: &str) -> Result<(Case, bytes::Bytes), HubError> {
        let path = format!("/cases/{}", seg(case_id));
        let resp = self.call(Method::GET, &path, &|r| r).await?;
        let op = op("GET", &path);
        let body = Self::json_body(resp, op.clone()).await?;
        let case = serde_json::from_slice(&body).map_err(|e| HubError::Decode {
            op,
            detail: e.to_string(),
        })?;
        Ok((case, body))
    }

    /// `PATCH /cases/{id}` with `{"status":…}`.
    pub async fn patch_case_status(&self, case_id: &str, status: &str) -> Result<(), HubError> {
        let path = format!("/cases/{}", seg(case_id));
        let body = serde_json::json!({ "status": status });
        self.call(Method::PATCH, &path, &|r| r.json(&body)).await?;
        Ok(())
    }

    /// `GET /cases/{id}/attachments/{aid}` as a stream.
    pub async fn download_case_attachment(
        &self,
        case_id: &str,
        attachment_id: &str,
    ) -> Result<Download, HubError> {
        let path = format!("/cases/{}/attachments/{}", seg(case_id), seg(attachment_id));
        self.download(&path).await
    }

    /// `GET /cases/{id}/events/{eid}/attachments/{aid}` as a stream.
    pub async fn download_event_attachment(
        &self,
        case_id: &str,
        event_id: &str,
        attachment_id: &str,
    ) -> Result<Download, HubError> {
        let path = format!(
            "/cases/{}/events/{}/attachments/{}",
            seg(case_id),
            seg(event_id),
            seg(attachment_id)
        );
        self.download(&path).await
    }

    async fn download(&self, path: &str) -> Result<Download, HubError> {
        let resp = self.call(Method::GET, path, &|r| r).await?;
        let digest = resp.headers().get("digest").map(|v| match v.to_str() {
            Ok(s) => parse_digest(s),
            Err(_) => Err("digest header is not ASCII".to_string()),
        });
        let content_length = resp.content_length();
        Ok(Download {
            response: resp,
            digest,
            content_length,
            op: op("GET", path),
        })
    }

    /// `POST /cases/{id}/events`. Never retried: on an error whose
    /// [`HubError::maybe_applied`] is true the caller must look for the event first.
    pub async fn post_event(&self, case_id: &str, event: &NewEvent) -> Result<Event, HubError> {
        let path = format!("/cases/{}/events", seg(case_id));
        let resp = self.call(Method::POST, &path, &|r| r.json(event)).await?;
        let op = op("POST", &path);
        let body = Self::json_body(resp, op.clone())
            .await
            .map_err(|e| match e {
                HubError::Network { op, detail, .. } => HubError::Network {
                    op,
                    detail,
                    maybe_applied: true,
                },
                other => other,
            })?;
        serde_json::from_slice(&body).map_err(|e| HubError::Decode {
            op,
            detail: e.to_string(),
        })
    }

    /// `GET /cases/{id}/events/{eid}`: the event and the exact bytes.
    pub async fn get_event(
        &self,
        case_id: &str,
        event_id: &str,
    ) -> Result<(Event, bytes::Bytes), HubError> {
        let path = format!("/cases/{}/events/{}", seg(case_id), seg(event_id));
        let resp = self.call(Method::GET, &path, &|r| r).await?;
        let op = op("GET", &path);
        let body = Self::json_body(resp, op.clone()).await?;
        let ev = serde_json::from_slice(&body).map_err(|e| HubError::Decode {
            op,
            detail: e.to_string(),
        })?;
        Ok((ev, body))
    }

    /// `PATCH /cases/{id}/events/{eid}` with `{"status":"SENT"|"RECEIVED"}`.
    pub async fn patch_event_status(
        &self,
        case_id: &str,
        event_id: &str,
        status: &str,
    ) -> Result<(), HubError> {
        let path = format!("/cases/{}/events/{}", seg(case_id), seg(event_id));
        let body = serde_json::json!({ "status": status });
        self.call(Method::PATCH, &path, &|r| r.json(&body)).await?;
        Ok(())
    }

    /// `DELETE /cases/{id}/events/{eid}` (an ATTACH_DEPOSIT still IN_PROGRESS).
    pub async fn delete_event(&self, case_id: &str, event_id: &str) -> Result<(), HubError> {
        let path = format!("/cases/{}/events/{}", seg(case_id), seg(event_id));
        match self.call(Method::DELETE, &path, &|r| r).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `PUT /cases/{id}/events/{eid}/attachments/{aid}` with the whole file in memory.
    /// (Replies are documents of a few MB; the démarche's limit is checked before.)
    pub async fn upload_event_attachment(
        &self,
        case_id: &str,
        event_id: &str,
        attachment_id: &str,
        data: bytes::Bytes,
        sha256: &[u8; 32],
    ) -> Result<(), HubError> {
        let path = format!(
            "/cases/{}/events/{}/attachments/{}",
            seg(case_id),
            seg(event_id),
            seg(attachment_id)
        );
        let digest = digest_header(sha256);
        self.call(Method::PUT, &path, &|r| {
            r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .header("digest", digest.as_str())
                .body(data.clone())
        })
        .await?;
        Ok(())
    }
}

fn op(method: &'static str, path: &str) -> Op {
    Op {
        method,
        path: format!("{BASE_PATH}{path}"),
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "HTTP",
    }
}

/// A path segment from the hub: ids are opaque (PROTOCOL §3), so percent-encode anything
/// that could change the path (`/`, `..`, `?`, `#`, spaces, controls).
fn seg(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() || out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_read_with_or_without_prefix() {
        let raw = [7u8; 32];
        let b64 = digest_header(&raw);
        assert_eq!(parse_digest(&b64), Ok(raw));
        assert_eq!(parse_digest(&format!("sha-256={b64}")), Ok(raw));
        assert_eq!(parse_digest(&format!("SHA-256={b64}")), Ok(raw));
        assert_eq!(parse_digest(&format!("md5=abc, sha-256={b64}")), Ok(raw));
        assert!(parse_digest("not base64!").is_err());
        assert!(parse_digest("AAAA").is_err());
    }

    #[test]
    fn hostile_ids_cannot_change_the_path() {
        assert_eq!(seg("../../admin"), "%2E%2E%2F%2E%2E%2Fadmin");
        assert_eq!(seg("a?b#c d"), "a%3Fb%23c%20d");
        assert_eq!(seg(".."), "%2E%2E");
        assert_eq!(
            seg("3fa85f64-5717-4562-b3fc-2c963f66afa6"),
            "3fa85f64-5717-4562-b3fc-2c963f66afa6"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let d0 = p.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d10 = p.delay(10);
            assert!(d10 >= Duration::from_millis(500) && d10 <= Duration::from_millis(1000));
        }
    }
}
