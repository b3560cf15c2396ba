//! What can go wrong in the spool, each error with its path, its operation and what to do.

use super::*;

/// What went wrong in the spool. Each error says which path, which operation, the OS error,
/// and what an operator should do.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot {op} {}: {source}; {}", path.display(), advice(source, path))]
    Io {
        /// What we were doing: create, write, fsync, rename, chmod, chown, read, remove, list.
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "spool group {group:?} for {} does not exist: create it (groupadd {group}) or fix \
         spool_group in the configuration",
        root.display()
    )]
    UnknownGroup { group: String, root: PathBuf },
    #[error(
        "cannot look up spool group {group:?} for {}: {source}; check /etc/group and \
         /etc/nsswitch.conf, or fix spool_group in the configuration",
        root.display()
    )]
    GroupLookup {
        group: String,
        root: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot chmod {} to {wanted:o}: it stays {got:o}; the service user must belong to the \
         directory's group for the setgid bit to stick: add it to the spool group, or set the \
         mode by hand (chmod 2770)",
        path.display()
    )]
    ModeNotApplied {
        path: PathBuf,
        wanted: u32,
        got: u32,
    },
    #[error(
        "refusing to write {path:?} under {}: {reason}; this is a bug in hubee-sync, please \
         report it",
        entry.display()
    )]
    UnsafePath {
        path: String,
        entry: PathBuf,
        reason: &'static str,
    },
    #[error(
        "cannot seal {}: {path}: {reason}; abandon this entry and download the case again",
        entry.display()
    )]
    Incomplete {
        entry: PathBuf,
        path: String,
        reason: String,
    },
    #[error(
        "cannot read {}: {source}; the entry was altered or not written by hubee-sync: inspect \
         it and move it aside if it is not a delivery",
        path.display()
    )]
    BadManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// What to do about an I/O error on `path`, for the end of the message.
pub(super) fn advice(err: &io::Error, path: &Path) -> String {
    let p = path.display();
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            format!("free space (or raise the quota) on the filesystem holding {p}")
        }
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "check owner, group and mode (2770) of {p} and its parent, and that the service user \
             is in the spool group"
        ),
        Some(libc::EROFS) => {
            format!("the filesystem holding {p} is read-only: remount it read-write")
        }
        Some(libc::EIO) => format!("the disk reported an I/O error on {p}: check the system logs"),
        _ => format!("check free space and permissions on {p}"),
    }
}

/// Builds the `map_err` closure for an operation on a path.
pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { op, path, source }
}
