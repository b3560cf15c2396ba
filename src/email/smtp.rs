//! Sending one message through the SMTP server `[email] smtp_url` names, with lettre.
//!
//! Three forms, and nothing weaker is ever chosen silently:
//! - `smtp://host:25`: plain SMTP, no TLS (only sensible to a relay on the same machine);
//! - `smtp://host:587?tls=required`: STARTTLS, and the send fails if the server does not
//!   offer it;
//! - `smtps://host:465`: implicit TLS.
//!
//! `user:password@` in the URL (percent-encoded) authenticates. TLS always verifies the
//! server's certificate against the system's trust store, plus `[email] ca_file` if given.
//! The password never reaches a log or an error message: errors name the server with
//! [`Secret::redacted_url`].

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{EmailSettings, Secret};

/// Timeout of the connection and of each SMTP command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one whole send (connect, TLS, authentication, data).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// No TLS at all.
    Plain,
    /// STARTTLS, required.
    StartTls,
    /// TLS from the first byte (`smtps://`).
    Tls,
}

/// The SMTP server, as read from `smtp_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// User name and password, percent-decoded.
    pub credentials: Option<(String, Secret)>,
}

impl SmtpTarget {
    /// Reads `smtp_url`. Errors say what is wrong without the password.
    pub fn parse(url: &Secret) -> Result<SmtpTarget, String> {
        let shown = url.redacted_url();
        let u = url::Url::parse(url.expose())
            .map_err(|e| format!("[email] smtp_url {shown} is not a URL ({e})"))?;
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("[email] smtp_url {shown} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = u
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let security = match (u.scheme(), tls.as_deref()) {
            ("smtp", None) => Security::Plain,
            ("smtp", Some("required")) => Security::StartTls,
            ("smtps", None | Some("required")) => Security::Tls,
            (_, Some(other)) => {
                return Err(format!(
                    "[email] smtp_url {shown}: tls={other:?} is not supported; write ?tls=required (STARTTLS) or use smtps://"
                ))
            }
            (scheme, None) => {
                return Err(format!(
                    "[email] smtp_url {shown}: scheme {scheme:?} is not smtp:// or smtps://"
                ))
            }
        };
        let port = u.port().unwrap_or(match security {
            Security::Plain => 25,
            Security::StartTls => 587,
            Security::Tls => 465,
        });
        let credentials = if u.username().is_empty() {
            None
        } else {
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    format!("[email] smtp_url {shown}: the user or password is not valid percent-encoded UTF-8")
                })
            };
            Some((
                decode(u.username())?,
                Secret::new(decode(u.password().unwrap_or(""))?),
            ))
        };
        Ok(SmtpTarget {
            host,
            port,
            security,
            credentials,
        })
    }

    /// Whether the host is this machine (plain SMTP is only sensible there).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One message: plain text and HTML alternatives of the same content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a message was not sent. The text names the server (password hidden) and says what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot set up mail to {server}: {detail}; {fix}")]
    Setup {
        server: String,
        detail: String,
        fix: String,
    },
    #[error("the SMTP server {server} did not take the message: {detail}; {fix}")]
    Send {
        server: String,
        detail: String,
        fix: &'static str,
    },
}

/// Sends mail through the configured server. Cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `smtp_url` with its password hidden, for messages.
    server: String,
    /// The domain of `from`, for Message-IDs.
    domain: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl Mailer {
    /// Builds the transport; connects only when sending.
    pub fn new(settings: &EmailSettings) -> Result<Mailer, MailError> {
        let server = settings.smtp_url.redacted_url();
        let setup = |detail: String, fix: &str| MailError::Setup {
            server: server.clone(),
            detail,
            fix: fix.to_string(),
        };
        let target = SmtpTarget::parse(&settings.smtp_url)
            .map_err(|d| setup(d, "fix [email] smtp_url and run `hubee-sync validate`"))?;
        let from: Mailbox = settings.from.parse().map_err(|e| {
            setup(
                format!("[email] from {:?} is not a mailbox ({e})", settings.from),
                "write from = \"hubee-sync <hubee@mairie.example>\"",
            )
        })?;
        let domain = from.email.domain().to_string();
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&target.host)
            .port(target.port)
            .timeout(Some(COMMAND_TIMEOUT))
            .hello_name(ClientId::Domain(domain.clone()));
        if target.security != Security::Plain {
            let mut tls = TlsParameters::builder(target.host.clone());
            if let Some(path) = &settings.ca_file {
                let pem = std::fs::read(path).map_err(|e| {
                    setup(
                        format!("[email] ca_file {} cannot be read: {e}", path.display()),
                        "make it readable by the service, or remove ca_file",
                    )
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    setup(
                        format!(
                            "[email] ca_file {} is not PEM certificates: {e}",
                            path.display()
                        ),
                        "put the SMTP server's CA certificate(s) in it in PEM form",
                    )
                })?;
                tls = tls.add_root_certificate(cert);
            }
            let tls = tls.build_rustls().map_err(|e| {
                setup(
                    format!("TLS set-up failed: {}", error_chain(&e)),
                    "check [email] ca_file",
                )
            })?;
            builder = builder.tls(match target.security {
                Security::StartTls => Tls::Required(tls),
                _ => Tls::Wrapper(tls),
            });
        }
        if let Some((user, password)) = &target.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        if target.security == Security::Plain && !target.is_loopback() {
            tracing::warn!(server = %server,
                "[email] smtp_url sends mail without TLS to another machine; use ?tls=required or smtps:// unless this relay is on a trusted network");
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            server,
            domain,
        })
    }

    /// The server, password hidden.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one message, once. `Ok` means the server accepted it.
    pub async fn send(&self, mail: &Mail) -> Result<(), MailError> {
        let message = self.message(mail)?;
        let sent = tokio::time::timeout(SEND_TIMEOUT, self.transport.send(message)).await;
        match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(MailError::Send {
                server: self.server.clone(),
                detail: error_chain(&e),
                fix: if e.is_permanent() {
                    "the server refused it: check [email] from, to and the credentials in smtp_url"
                } else if e.is_tls() {
                    "check that the server offers TLS (STARTTLS for ?tls=required) with a certificate for this host name, trusted by the system or [email] ca_file"
                } else {
                    "check that the server is reachable and accepts mail from this machine; it is tried again"
                },
            }),
            Err(_) => Err(MailError::Send {
                server: self.server.clone(),
                detail: format!("no complete answer within {}s", SEND_TIMEOUT.as_secs()),
                fix: "check that the server is reachable; it is tried again",
            }),
        }
    }

    /// Sends with retries: `attempts` tries in all, waiting `first_delay`, then twice as
    /// long each time (at most `max_delay`). Each failure is logged. Gives up early (with the
    /// last error) when `stop` resolves.
    pub async fn send_with_retry(
        &self,
        mail: &Mail,
        attempts: u32,
        first_delay: Duration,
        max_delay: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), MailError> {
        tokio::pin!(stop);
        let mut delay = first_delay;
        let mut tries = 0;
        loop {
            tries += 1;
            match self.send(mail).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= attempts.max(1) => return Err(e),
                Err(e) => {
                    tracing::warn!(server = %self.server, subject = %mail.subject, attempt = tries,
                        retry_in = ?delay, error = %e, "cannot send mail; trying again");
                    tokio::select! {
                        _ = &mut stop => return Err(e),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(max_delay);
                }
            }
        }
    }

    fn message(&self, mail: &Mail) -> Result<Message, MailError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(mail.subject.clone())
            .message_id(Some(format!(
                "<hubee-sync.{}.{:016x}@{}>",
                chrono::Utc::now().timestamp_millis(),
                fastrand::u64(..),
                self.domain
            )));
        for to in &mail.to {
            let mbox: Mailbox = to.parse().map_err(|e| MailError::Setup {
                server: self.server.clone(),
                detail: format!("recipient {to:?} is not an address ({e})"),
                fix: "fix [email] to or the subscription's email_to".into(),
            })?;
            b = b.to(mbox);
        }
        b.multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(mail.text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(mail.html.clone()),
                ),
        )
        .map_err(|e| MailError::Setup {
            server: self.server.clone(),
            detail: format!("cannot build the message: {e}"),
            fix: "check [email] from and to".into(),
        })
    }
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<SmtpTarget, String> {
        SmtpTarget::parse(&Secret::new(url))
    }

    #[test]
    fn the_three_forms_of_smtp_url() {
        let plain = parse("smtp://127.0.0.1").unwrap();
        assert_eq!((plain.port, plain.security), (25, Security::Plain));
        assert!(plain.credentials.is_none() && plain.is_loopback());
        let starttls = parse("smtp://mx.example?tls=required").unwrap();
        assert_eq!(
            (starttls.port, starttls.security),
            (587, Security::StartTls)
        );
        let tls = parse("smtps://hubee%40mairie.example:p%C3%A0ss%3Aw@mx.example:2465").unwrap();
        assert_eq!((tls.port, tls.security), (2465, Security::Tls));
        let (user, pass) = tls.credentials.unwrap();
        assert_eq!(user, "hubee@mairie.example");
        assert_eq!(pass.expose(), "pàss:w");
        assert!(!starttls.is_loopback());
    }

    #[test]
    fn unsupported_tls_modes_are_refused_without_the_password() {
        let e = parse("smtp://u:hunter2@mx.example?tls=opportunistic").unwrap_err();
        assert!(e.contains("tls=\"opportunistic\""), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse("http://mx.example").is_err());
    }
}
