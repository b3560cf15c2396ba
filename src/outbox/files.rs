//! The outbox on disk: `SPOOL/outbox/{tmp,new,sent,failed}/` (CONTRACT "Spool layout"). The
//! legacy software writes a reply folder in `tmp/` and renames it into `new/`; we only ever
//! read `new/`, write one note into a reply folder (`result.json` or `error.txt`, written
//! aside, fsynced, renamed), and move the folder into `sent/` or `failed/` without ever
//! replacing what is there (a name already taken gets a `~2`, `~3`… suffix).

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Notes we write into a reply folder.
pub const RESULT_JSON: &str = "result.json";
pub const ERROR_TXT: &str = "error.txt";

/// Where a finished reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Sent,
    Failed,
}

impl Dest {
    pub fn dir_name(self) -> &'static str {
        match self {
            Dest::Sent => "sent",
            Dest::Failed => "failed",
        }
    }
}

/// One entry of `outbox/new/`.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: OsString,
    pub path: PathBuf,
    pub is_dir: bool,
    /// When it arrived in `new/` (the rename sets ctime), to apply replies in order.
    arrived: (i64, i64),
}

/// A spool's outbox.
#[derive(Debug, Clone)]
pub struct OutboxDirs {
    root: PathBuf,
}

impl OutboxDirs {
    pub fn of(spool_root: &Path) -> OutboxDirs {
        OutboxDirs {
            root: spool_root.join("outbox"),
        }
    }

    pub fn new_dir(&self) -> PathBuf {
        self.root.join("new")
    }

    pub fn dest_dir(&self, dest: Dest) -> PathBuf {
        self.root.join(dest.dir_name())
    }

    /// The entries of `new/` in the order they arrived; names starting with `.` (editors'
    /// and copy tools' temporary files) are not replies.
    pub fn candidates(&self) -> io::Result<Vec<Candidate>> {
        let mut out = Vec::new();
        for item in fs::read_dir(self.new_dir())? {
            let item = item?;
            let name = item.file_name();
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            let path = item.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(Candidate {
                name,
                is_dir: meta.file_type().is_dir(),
                arrived: (meta.ctime(), meta.ctime_nsec()),
                path,
            });
        }
        out.sort_by(|a, b| a.arrived.cmp(&b.arrived).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }

    /// True when `new/` holds something that may be a reply (cheap: for the watcher).
    pub fn has_candidates(&self) -> bool {
        match fs::read_dir(self.new_dir()) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .any(|e| !e.file_name().as_bytes().starts_with(b".")),
            Err(_) => false,
        }
    }

    /// Moves `new/NAME` into `sent/` or `failed/` under the same name, or with a suffix if
    /// that name is taken. Returns where it went. A plain file (not a folder) is wrapped in a
    /// folder of its name, so that `error.txt` can sit beside it.
    pub fn move_out(&self, from: &Path, name: &OsStr, dest: Dest) -> io::Result<PathBuf> {
        let dir = self.dest_dir(dest);
        let is_dir = fs::symlink_metadata(from)?.file_type().is_dir();
        for n in 1..=1000u32 {
            let mut target_name = name.to_os_string();
            if n > 1 {
                target_name.push(format!("~{n}"));
            }
            let target = dir.join(&target_name);
            let result = if is_dir {
                rename_noreplace(from, &target)
            } else {
                match fs::create_dir(&target) {
                    Ok(()) => rename_noreplace(from, &target.join(name)),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(()) => {
                    fsync_dir(&dir)?;
                    fsync_dir(&self.new_dir())?;
                    return Ok(target);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} already holds 1000 folders named {}~N",
                dir.display(),
                name.to_string_lossy()
            ),
        ))
    }

    /// Removes replies in `sent/` and `failed/` older than `retention` (the age of their
    /// `result.json` or `error.txt`, else of the folder). Returns what was removed, and what
    /// could not be.
    pub fn prune(&self, retention: Duration) -> (Vec<PathBuf>, Vec<(PathBuf, io::Error)>) {
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        let Some(limit) = SystemTime::now().checked_sub(retention) else {
            return (removed, failed);
        };
        for dest in [Dest::Sent, Dest::Failed] {
            let Ok(rd) = fs::read_dir(self.dest_dir(dest)) else {
                continue;
            };
            for item in rd.filter_map(Result::ok) {
                let path = item.path();
                let age_of = [RESULT_JSON, ERROR_TXT]
                    .iter()
                    .find_map(|n| fs::symlink_metadata(path.join(n)).ok())
                    .or_else(|| fs::symlink_metadata(&path).ok())
                    .and_then(|m| m.modified().ok());
                if age_of.is_some_and(|t| t < limit) {
                    let r = if item.file_type().is_ok_and(|t| t.is_dir()) {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                    match r {
                        Ok(()) => removed.push(path),
                        Err(e) => failed.push((path, e)),
                    }
                }
            }
        }
        (removed, failed)
    }
}

/// Writes `dir/name` durably: written aside under a dot name, fsynced, renamed over any old
/// one, directory fsynced. Mode 0640, like the spool's files.
pub fn write_note(dir: &Path, name: &str, content: &[u8]) -> io::Result<PathBuf> {
    let target = dir.join(name);
    let aside = dir.join(format!(".{name}.hubee-sync.{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&aside)?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&aside, &target)?;
        fsync_dir(dir)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&aside);
    }
    written.map(|()| target)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// `renameat2(RENAME_NOREPLACE)`; where the filesystem lacks it, check then rename (safe
/// while we hold the subscription's lock, since only we move folders out of `new/`).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c_from = CString::new(from.as_os_str().as_bytes())?;
    let c_to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        if fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        return fs::rename(from, to);
    }
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_taken_in_sent_gets_a_suffix_and_nothing_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let o = OutboxDirs::of(d.path());
        for sub in ["new", "sent", "failed"] {
            fs::create_dir_all(d.path().join("outbox").join(sub)).unwrap();
        }
        fs::create_dir(o.dest_dir(Dest::Sent).join("r1")).unwrap();
        fs::write(o.dest_dir(Dest::Sent).join("r1/old"), b"old").unwrap();
        fs::create_dir(o.new_dir().join("r1")).unwrap();
        let to = o
            .move_out(&o.new_dir().join("r1"), OsStr::new("r1"), Dest::Sent)
            .unwrap();
        assert_eq!(to, o.dest_dir(Dest::Sent).join("r1~2"));
        assert!(o.dest_dir(Dest::Sent).join("r1/old").exists());
    }

    #[test]
    fn a_stray_file_is_wrapped_in_a_folder() {
        let d = tempfile::tempdir().unwrap();
        let o = OutboxDirs::of(d.path());
        for sub in ["new", "sent", "failed"] {
            fs::create_dir_all(d.path().join("outbox").join(sub)).unwrap();
        }
        fs::write(o.new_dir().join("reply.json"), b"{}").unwrap();
        let to = o
            .move_out(
                &o.new_dir().join("reply.json"),
                OsStr::new("reply.json"),
                Dest::Failed,
            )
            .unwrap();
        assert!(to.join("reply.json").is_file());
    }

    #[test]
    fn old_replies_are_pruned_and_recent_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let o = OutboxDirs::of(d.path());
        fs::create_dir_all(o.dest_dir(Dest::Sent).join("old")).unwrap();
        fs::create_dir_all(o.dest_dir(Dest::Failed).join("new")).unwrap();
        write_note(&o.dest_dir(Dest::Sent).join("old"), RESULT_JSON, b"{}").unwrap();
        write_note(&o.dest_dir(Dest::Failed).join("new"), ERROR_TXT, b"x").unwrap();
        let old = SystemTime::now() - Duration::from_secs(100 * 86400);
        let f = fs::File::options()
            .write(true)
            .open(o.dest_dir(Dest::Sent).join("old").join(RESULT_JSON))
            .unwrap();
        f.set_modified(old).unwrap();
        let (removed, failed) = o.prune(Duration::from_secs(90 * 86400));
        assert_eq!(removed, vec![o.dest_dir(Dest::Sent).join("old")]);
        assert!(failed.is_empty());
        assert!(o.dest_dir(Dest::Failed).join("new").exists());
    }
}
