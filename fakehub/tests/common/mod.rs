//! A small SI client for the tests: reqwest for ordinary calls, raw TCP to see exactly what
//! went over the wire when a fault cuts a response.
#![allow(dead_code)]

use fake_hubee::{AttachmentSpec, CaseSpec, Content, FakeHub};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const CLIENT: &str = "si-certdc";
pub const SECRET: &str = "s3cret";

pub struct Si {
    pub http: reqwest::Client,
    pub hub: FakeHub,
    pub token: String,
}

pub fn url(hub: &FakeHub, path: &str) -> String {
    format!("{}/teledossiers/v1{path}", hub.api_url())
}

pub async fn token(hub: &FakeHub, id: &str, secret: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(hub.token_url())
        .basic_auth(id, Some(secret))
        .form(&[("scope", "SI"), ("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
}

impl Si {
    /// A hub with one CERTDC client, and a logged-in SI.
    pub async fn start() -> Si {
        let hub = FakeHub::start().await;
        hub.add_client(CLIENT, SECRET, "CERTDC");
        Si::login(hub, CLIENT, SECRET).await
    }

    pub async fn login(hub: FakeHub, id: &str, secret: &str) -> Si {
        let v: Value = token(&hub, id, secret).await.json().await.unwrap();
        Si {
            http: reqwest::Client::new(),
            token: v["access_token"].as_str().unwrap().to_string(),
            hub,
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, url(&self.hub, path))
            .bearer_auth(&self.token)
            .header("editorName", "Commune de Test")
            .header("applicationName", "hubee-sync")
            .header("softwareVersion", "0.1.0")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::GET, path).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await;
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.req(reqwest::Method::DELETE, path)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::PATCH, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_bytes(
        &self,
        path: &str,
        bytes: Vec<u8>,
        digest: Option<&str>,
    ) -> (u16, Value) {
        let mut rb = self
            .req(reqwest::Method::PUT, path)
            .header("content-type", "application/octet-stream")
            .body(bytes);
        if let Some(d) = digest {
            rb = rb.header("digest", d);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn notifications(&self) -> Vec<Value> {
        let (s, v) = self
            .get_json("/notifications?eventDetails=true&maxResult=25")
            .await;
        assert_eq!(s, 200, "{v}");
        v.as_array().unwrap().clone()
    }

    /// A case with two small received files.
    pub fn add_case(&self) -> String {
        let mut spec = CaseSpec::new("CERTDC");
        spec.attachments.push(AttachmentSpec::new(
            "certificat.xml",
            "DD_Certificatdedeces",
            "application/xml",
            Content::Bytes(b"<certificat/>".to_vec()),
        ));
        spec.attachments.push(AttachmentSpec::new(
            "volet.pdf",
            "VA_CertificatdeDeces",
            "application/pdf",
            Content::Generated {
                size: 200_000,
                seed: 9,
            },
        ));
        self.hub.add_case(CLIENT, spec)
    }

    pub fn deposit_body(size: u64) -> Value {
        json!({
            "actionType": "ATTACH_DEPOSIT", "author": "Service instructeur X", "notification": true,
            "caseCurrentStatus": "HUBEE_NOTIFIED", "caseNewStatus": "HUBEE_NOTIFIED", "message": "voici l'attestation",
            "attachments": [{"fileName": "attestation.xml", "type": "DD_Certificatdedeces", "size": size, "mimeType": "application/xml"}]
        })
    }
}

pub fn b64_sha256(bytes: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
}

/// What a raw HTTP/1.1 exchange produced.
pub struct Raw {
    pub head: String,
    pub body: Vec<u8>,
    /// The read ended with an error (e.g. connection reset) rather than EOF.
    pub read_error: Option<std::io::ErrorKind>,
}

impl Raw {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Sends one request over a fresh TCP connection and reads until the server closes it.
pub async fn raw(hub: &FakeHub, method: &str, path: &str, token: &str) -> Raw {
    let mut s = tokio::net::TcpStream::connect(hub.addr()).await.unwrap();
    let req = format!(
        "{method} /teledossiers/v1{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        hub.addr()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut read_error = None;
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                read_error = Some(e.kind());
                break;
            }
        }
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(buf.len());
    Raw {
        head: String::from_utf8_lossy(&buf[..split]).into_owned(),
        body: buf[split..].to_vec(),
        read_error,
    }
}
