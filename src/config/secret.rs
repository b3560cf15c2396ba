//! Secrets: a string that never prints, and where a subscription's client secret comes from.
//!
//! Every error here says what went wrong, with which file, and what to do; none of them holds
//! the secret itself.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A secret value (client secret, URL with a password). `Debug` and `Display` print
/// `[redacted]`; [`Secret::expose`] is the one way to the value, for the code that sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself. Call it only where it is sent, never where it could be logged.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// For a URL-like secret (`postgres://user:pass@host/db`, `smtps://…`): the URL with its
    /// password (and any password-like query parameter) replaced by `***`, fit for logs and
    /// `status`. A value that is not a URL gives `[redacted]`.
    pub fn redacted_url(&self) -> String {
        redact_url_str(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL with its password and password-like query parameters replaced by `***`.
pub(crate) fn redact_url_str(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return "[redacted]".into();
    };
    redact_url(&mut url);
    url.to_string()
}

pub(crate) fn redact_url(url: &mut url::Url) {
    if url.password().is_some() {
        // Fails only for URLs that cannot have a password, which this one has.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                if lower.contains("pass") || lower.contains("secret") || lower.contains("token") {
                    (k.into_owned(), "***".to_string())
                } else {
                    (k.into_owned(), v.into_owned())
                }
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

/// Whether a URL-like string carries a password (in its user info or its query).
pub(crate) fn url_has_password(text: &str) -> bool {
    match url::Url::parse(text) {
        Ok(url) => {
            url.password().is_some()
                || url.query_pairs().any(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    k.contains("pass") || k.contains("secret")
                })
        }
        Err(_) => false,
    }
}

/// Where a subscription's client secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `client_secret_file`: a file holding the secret (trailing newline ignored).
    File(PathBuf),
    /// `client_secret`: written in the configuration file itself.
    Inline(Secret),
    /// `client_secret_credential`: a systemd credential, `$CREDENTIALS_DIRECTORY/{name}`
    /// (`LoadCredential=` / `LoadCredentialEncrypted=` in the unit).
    Credential { name: String },
}

/// Why a secret could not be loaded. The messages never hold the secret: each says what is
/// wrong ([`SecretError::problem`]), with which file, and what to do ([`SecretError::fix`]).
#[derive(Debug)]
pub enum SecretError {
    Missing { path: PathBuf },
    Unreadable { path: PathBuf, source: io::Error },
    NotAFile { path: PathBuf },
    ExposedToOthers { path: PathBuf, mode: u32 },
    Empty { path: PathBuf },
    NotText { path: PathBuf },
    NoCredentialsDirectory { name: String },
}

impl SecretError {
    /// What is wrong, naming the file.
    pub fn problem(&self) -> String {
        match self {
            SecretError::Missing { path } => {
                format!("secret file {} does not exist", path.display())
            }
            SecretError::Unreadable { path, source } => {
                format!("secret file {} cannot be read ({source})", path.display())
            }
            SecretError::NotAFile { path } => format!("{} is not a file", path.display()),
            SecretError::ExposedToOthers { path, mode } => format!(
                "secret file {} is {} by others (mode {mode:04o})",
                path.display(),
                others_kind(*mode)
            ),
            SecretError::Empty { path } => format!("secret file {} is empty", path.display()),
            SecretError::NotText { path } => {
                format!("secret file {} is not UTF-8 text", path.display())
            }
            SecretError::NoCredentialsDirectory { name } => {
                format!("credential {name:?} cannot be found: CREDENTIALS_DIRECTORY is not set")
            }
        }
    }

    /// What to do about it.
    pub fn fix(&self) -> String {
        match self {
            SecretError::Missing { .. } => "create it with the secret from the HubEE portal (Gestion des abonnements), chmod 0640, owner root:hubee-sync".into(),
            SecretError::Unreadable { path, .. } => format!(
                "let the service read it: chown root:hubee-sync {p}; chmod 0640 {p}",
                p = path.display()
            ),
            SecretError::NotAFile { .. } => {
                "client_secret_file must name a file holding only the secret".into()
            }
            SecretError::ExposedToOthers { path, .. } => format!(
                "run `chmod 0640 {p}` (and `chown root:hubee-sync {p}`)",
                p = path.display()
            ),
            SecretError::Empty { .. } => {
                "put the client secret from the HubEE portal (Gestion des abonnements) in it".into()
            }
            SecretError::NotText { .. } => "it must hold the client secret as text".into(),
            SecretError::NoCredentialsDirectory { name } => format!(
                "run under systemd with LoadCredential={name}:/path/to/secret (or LoadCredentialEncrypted=) in the unit, or use client_secret_file"
            ),
        }
    }
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — {}", self.problem(), self.fix())
    }
}

impl std::error::Error for SecretError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SecretError::Unreadable { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn others_kind(mode: u32) -> &'static str {
    match (mode & 0o004 != 0, mode & 0o002 != 0) {
        (true, true) => "readable and writable",
        (false, true) => "writable",
        _ => "readable",
    }
}

impl SecretSource {
    /// The secret, read now. A file is read whole, trailing whitespace (the newline an editor
    /// adds) is dropped, and an empty secret is an error; a file that others may read or write
    /// is refused.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|v| !v.is_empty());
        self.load_with(dir.as_deref().map(Path::new))
    }

    /// [`SecretSource::load`] with the credentials directory given (for tests and callers
    /// that already looked at the environment).
    pub fn load_with(&self, credentials_directory: Option<&Path>) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Inline(secret) => Ok(secret.clone()),
            SecretSource::File(path) => read_secret_file(path, true),
            SecretSource::Credential { name } => {
                let dir = credentials_directory
                    .ok_or_else(|| SecretError::NoCredentialsDirectory { name: name.clone() })?;
                // systemd makes the credentials directory private to the service: no mode check.
                read_secret_file(&dir.join(name), false)
            }
        }
    }
}

fn read_secret_file(path: &Path, check_mode: bool) -> Result<Secret, SecretError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SecretError::Missing {
            path: path.to_path_buf(),
        },
        _ => SecretError::Unreadable {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if check_mode && mode & 0o007 != 0 {
        return Err(SecretError::ExposedToOthers {
            path: path.to_path_buf(),
            mode,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| SecretError::Unreadable {
        path: path.to_path_buf(),
        source: e,
    })?;
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
        path: path.to_path_buf(),
    })?;
    let trimmed = text.trim_end();
    if trimmed.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret(trimmed.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn secret_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn secret_prints_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn redacted_url_hides_the_password() {
        let s =
            Secret::new("postgres://hubee:hunter2@db.example/hubee?sslpassword=p2&sslmode=require");
        let shown = s.redacted_url();
        assert!(
            !shown.contains("hunter2") && !shown.contains("p2&"),
            "{shown}"
        );
        assert!(shown.contains("hubee:***@db.example"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
        assert_eq!(Secret::new("not a url").redacted_url(), "[redacted]");
    }

    #[test]
    fn secret_file_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), "s", "hunter2\n", 0o640);
        let got = SecretSource::File(path).load_with(None).unwrap();
        assert_eq!(got.expose(), "hunter2");
    }

    #[test]
    fn empty_secret_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), "s", " \n", 0o600);
        let err = SecretSource::File(path).load_with(None).unwrap_err();
        assert!(matches!(err, SecretError::Empty { .. }), "{err}");
    }

    #[test]
    fn secret_file_readable_by_others_is_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), "s", "hunter2", 0o644);
        let err = SecretSource::File(path.clone())
            .load_with(None)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("chmod 0640 {}", path.display())),
            "{text}"
        );
        assert!(!text.contains("hunter2"));
    }

    #[test]
    fn credential_needs_the_credentials_directory() {
        let source = SecretSource::Credential {
            name: "certdc".into(),
        };
        let err = source.load_with(None).unwrap_err();
        assert!(err.to_string().contains("CREDENTIALS_DIRECTORY"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        secret_file(dir.path(), "certdc", "hunter2\n", 0o400);
        assert_eq!(
            source.load_with(Some(dir.path())).unwrap().expose(),
            "hunter2"
        );
    }
}
