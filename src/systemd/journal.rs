//! Logging to journald with structured fields, in the journal's native protocol: one
//! datagram per record, `KEY=value` lines (or `KEY\n<u64 le length><bytes>\n` for values
//! with newlines) sent to `/run/systemd/journal/socket`.
//!
//! Field names are our tracing field names upper-cased (`case_id` → `CASE_ID`), with no
//! prefix, so `journalctl SUBSCRIPTION=certdc` and `journalctl MESSAGE_ID=…` work. (The
//! tracing-journald crate prefixes them with `F_` by default and cannot be pointed at another
//! socket, which our tests need; this is its ~100 lines, our way.)

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// journald's socket.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// True when stderr is connected to the journal (`$JOURNAL_STREAM` names stderr's device
/// and inode), i.e. we run under systemd with its output going to journald.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat on fd 2 into a stat we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(2, &mut st) };
    rc == 0 && st.st_dev == dev && st.st_ino == ino
}

/// A tracing layer that writes every event to journald.
pub struct JournalLayer {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournalLayer {
    /// Connects to journald's socket (or `$HUBEE_SYNC_JOURNAL_SOCKET`, used by tests).
    pub fn new() -> std::io::Result<JournalLayer> {
        let path = std::env::var_os("HUBEE_SYNC_JOURNAL_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        JournalLayer::at(&path)
    }

    pub fn at(path: &Path) -> std::io::Result<JournalLayer> {
        let socket = UnixDatagram::unbound()?;
        // Fails early when nothing listens there.
        socket.connect(path)?;
        Ok(JournalLayer {
            socket,
            path: path.to_path_buf(),
        })
    }
}

/// syslog priorities (journald's PRIORITY).
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "3",
        Level::WARN => "4",
        Level::INFO => "6",
        Level::DEBUG | Level::TRACE => "7",
    }
}

/// Journal field names: upper case ASCII letters, digits and `_`, not starting with `_` or a
/// digit (journald drops other names).
pub fn field_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    while out.starts_with(|c: char| c == '_' || c.is_ascii_digit()) {
        out.remove(0);
    }
    out
}

/// Appends one field in the native protocol.
pub fn put(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

struct Fields<'a> {
    buf: &'a mut Vec<u8>,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, &format!("{value:?}"));
    }
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: &str) {
        let name = if field.name() == "message" {
            "MESSAGE".to_string()
        } else {
            field_name(field.name())
        };
        // Fields journald owns or that we set ourselves are not overridden.
        if name.is_empty() || matches!(name.as_str(), "PRIORITY" | "SYSLOG_IDENTIFIER") {
            return;
        }
        put(self.buf, &name, value.as_bytes());
    }
}

impl<S: Subscriber> Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut buf = Vec::with_capacity(512);
        put(&mut buf, "PRIORITY", priority(meta.level()).as_bytes());
        put(&mut buf, "SYSLOG_IDENTIFIER", b"hubee-sync");
        put(&mut buf, "TARGET", meta.target().as_bytes());
        event.record(&mut Fields { buf: &mut buf });
        if let Err(e) = self.socket.send(&buf) {
            // Nowhere better to say it: stderr goes to the journal too, as plain text.
            eprintln!(
                "hubee-sync: cannot write to the journal at {}: {e}",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_journal_names_without_prefix() {
        assert_eq!(field_name("case_id"), "CASE_ID");
        assert_eq!(field_name("message_id"), "MESSAGE_ID");
        assert_eq!(field_name("_x.y"), "X_Y");
        assert_eq!(field_name("1abc"), "ABC");
    }

    #[test]
    fn values_with_newlines_use_the_length_prefixed_form() {
        let mut b = Vec::new();
        put(&mut b, "A", b"one");
        put(&mut b, "B", b"two\nlines");
        let mut expected = b"A=one\nB\n".to_vec();
        expected.extend_from_slice(&9u64.to_le_bytes());
        expected.extend_from_slice(b"two\nlines\n");
        assert_eq!(b, expected);
    }

    #[test]
    fn events_reach_a_journal_socket_with_their_fields() {
        use tracing_subscriber::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let server = UnixDatagram::bind(&path).unwrap();
        let layer = JournalLayer::at(&path).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                subscription = "certdc",
                case_id = "c-1",
                "télédossier parked"
            );
        });
        let mut buf = vec![0u8; 4096];
        let len = server.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..len]);
        assert!(text.contains("PRIORITY=4\n"), "{text}");
        assert!(text.contains("SUBSCRIPTION=certdc\n"), "{text}");
        assert!(text.contains("CASE_ID=c-1\n"), "{text}");
        assert!(text.contains("MESSAGE=télédossier parked\n"), "{text}");
        assert!(!text.contains("F_"), "no prefix: {text}");
    }
}
