//! The spool on disk, with Maildir rules (CONTRACT "Spool layout").
//!
//! An entry is written privately in `tmp/{name}.{pid}.{random}/` ([`Spool::begin`]), every file
//! fsynced as it is finished; [`PendingEntry::seal`] adds `manifest.json` and `SHA256SUMS` and
//! fsyncs the directories; [`Spool::publish`] moves it into `new/{name}` with one
//! `renameat2(RENAME_NOREPLACE)`, which never replaces an entry already there, then fsyncs
//! `new/`. Only after `publish` returns may the notification be acknowledged (CONTRACT "The
//! rule of acknowledgement"). A crash before that leaves a directory in `tmp/`, which readers
//! never look at and [`Spool::clean_tmp`] removes at the next start.
//!
//! Modes are set explicitly (directories `2770`, files `0640`) so the umask never matters, and
//! the spool directories belong to `spool_group` when one is configured, so the legacy
//! software in that group can read entries and move them to `cur/`.
//!
//! This file: the layout and the [`Spool`] handle (open, begin, publish, find, clean).
//! [`entry`]: an entry being written and sealed; [`file`]: one streamed file; [`manifest`]:
//! `manifest.json`; [`cur`]: the listing of `cur/`; [`paths`]: safe names and paths;
//! [`durable`]: fsyncs, the no-replace rename, modes and group; [`error`]: [`SpoolError`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsString};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::names::{FileNamer, MAX_NAME_BYTES};

mod cur;
mod durable;
mod entry;
mod error;
mod file;
mod manifest;
mod paths;

pub use entry::PendingEntry;
pub use error::SpoolError;
pub use file::{FileWriter, WrittenFile};
pub use manifest::{Manifest, ManifestAttachment};

use cur::*;
use durable::*;
use entry::*;
use error::*;
use paths::*;

/// Directories of the spool and of its entries: setgid, so what is created inside inherits the
/// spool group; no access for others.
const DIR_MODE: u32 = 0o2770;
/// Files of an entry: the spool group may read, nobody may change a delivered file.
const FILE_MODE: u32 = 0o640;
/// Buffer of a streamed attachment.
const WRITE_BUFFER: usize = 256 * 1024;
/// Written by [`PendingEntry::seal`] only.
const MANIFEST: &str = "manifest.json";
const SHA256SUMS: &str = "SHA256SUMS";
const ATTACHMENTS: &str = "attachments";
/// Why an entry was set aside (in a quarantined entry only).
const REASON: &str = "reason.txt";
const QUARANTINE: &str = "quarantine";
/// The directories [`Spool::open`] creates under the root, parents first.
const SPOOL_DIRS: [&str; 9] = [
    "tmp",
    "new",
    "cur",
    "quarantine",
    "outbox",
    "outbox/tmp",
    "outbox/new",
    "outbox/sent",
    "outbox/failed",
];

/// A spool directory, opened and checked.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// The spool group (`spool_group`), when configured; else directories keep the group they
    /// get from the service user or from a setgid parent.
    gid: Option<libc::gid_t>,
    /// What `cur/` held at its last listing, shared by the clones of this spool.
    cur_index: Arc<Mutex<CurIndex>>,
}

/// What [`Spool::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// The entry is now at this path in `new/`, durably.
    Published(PathBuf),
    /// An entry of that name was already delivered (in `new/`, or taken by the consumer into
    /// `cur/`): nothing was replaced and the tmp directory is left as it was.
    AlreadyExists(PathBuf),
}

/// Where an entry of a given name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryLocation {
    New(PathBuf),
    Cur(PathBuf),
    Absent,
}

impl Spool {
    /// Creates (if missing) ROOT and tmp/, new/, cur/, quarantine/, outbox/{tmp,new,sent,failed},
    /// all mode 2770 and group `group` when given, then checks it can write in tmp/.
    pub fn open(root: &Path, group: Option<&str>) -> Result<Spool, SpoolError> {
        let gid = match group {
            Some(group) => Some(resolve_group(group, root)?),
            None => None,
        };
        create_dirs_durably(root)?;
        set_dir_mode(root, gid)?;
        for sub in SPOOL_DIRS {
            let dir = root.join(sub);
            match DirBuilder::new().mode(DIR_MODE).create(&dir) {
                // Durable only once its parent is fsynced: a power cut would otherwise take
                // new/ away with every entry published in it.
                Ok(()) => fsync_parent(&dir)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(io_err("create", &dir)(e)),
            }
            set_dir_mode(&dir, gid)?;
        }
        let spool = Spool {
            root: root.to_path_buf(),
            gid,
            cur_index: Arc::default(),
        };
        spool.probe()?;
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn new_dir(&self) -> PathBuf {
        self.root.join("new")
    }

    fn cur(&self) -> PathBuf {
        self.root.join("cur")
    }

    /// Creates and removes a file in tmp/, so an unwritable spool is reported at start.
    fn probe(&self) -> Result<(), SpoolError> {
        let probe = self.tmp().join(format!(
            ".probe.{}.{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&probe)
            .map_err(io_err("create", &probe))?;
        file.write_all(b"hubee-sync probe\n")
            .map_err(io_err("write", &probe))?;
        drop(file);
        fs::remove_file(&probe).map_err(io_err("remove", &probe))
    }

    /// Starts an entry: a private directory `tmp/{entry_name}.{pid}.{random}/` with
    /// `attachments/` inside, both 2770.
    pub fn begin(&self, entry_name: &str) -> Result<PendingEntry, SpoolError> {
        check_entry_name(entry_name, &self.tmp())?;
        let tmp = self.tmp();
        let mut attempt = 0;
        let dir = loop {
            let dir = tmp.join(format!(
                "{entry_name}.{}.{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            match DirBuilder::new().mode(DIR_MODE).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
                Err(e) => return Err(io_err("create", &dir)(e)),
            }
        };
        let prepared = set_dir_mode(&dir, self.gid).and_then(|()| {
            let attachments = dir.join(ATTACHMENTS);
            DirBuilder::new()
                .mode(DIR_MODE)
                .create(&attachments)
                .map_err(io_err("create", &attachments))?;
            set_dir_mode(&attachments, self.gid)
        });
        if let Err(e) = prepared {
            // Best effort: clean_tmp removes it at the next start otherwise.
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(PendingEntry {
            dir,
            tmp,
            name: entry_name.to_string(),
            namer: FileNamer::new(),
            gid: self.gid,
            files: Arc::default(),
        })
    }

    /// Publishes a sealed tmp directory as `new/{entry_name}` with one
    /// `renameat2(RENAME_NOREPLACE)`, then fsyncs `new/`. Never replaces: if the entry is
    /// already in `new/` (or in `cur/`), answers `AlreadyExists` and leaves `tmp_dir` as it is.
    pub fn publish(&self, tmp_dir: &Path, entry_name: &str) -> Result<PublishOutcome, SpoolError> {
        self.publish_with(tmp_dir, entry_name, rename_noreplace)
    }

    /// [`Spool::publish`] with the no-replace rename given, so tests can play a filesystem
    /// that does not know RENAME_NOREPLACE.
    fn publish_with(
        &self,
        tmp_dir: &Path,
        entry_name: &str,
        noreplace: impl Fn(&Path, &Path) -> io::Result<()>,
    ) -> Result<PublishOutcome, SpoolError> {
        check_entry_name(entry_name, &self.new_dir())?;
        if tmp_dir.parent() != Some(self.tmp().as_path()) {
            return Err(SpoolError::UnsafePath {
                path: tmp_dir.display().to_string(),
                entry: self.tmp(),
                reason: "only a directory directly in the spool's tmp/ can be published",
            });
        }
        // The consumer moves entries new/ → cur/: one found there was delivered already, and
        // publishing again would hand it over twice.
        if let EntryLocation::Cur(taken) = self.find_in_cur(entry_name) {
            return Ok(PublishOutcome::AlreadyExists(taken));
        }
        let target = self.new_dir().join(entry_name);
        match noreplace(tmp_dir, &target) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Ok(PublishOutcome::AlreadyExists(target));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                if !NOREPLACE_FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        spool = %self.root.display(),
                        error = %e,
                        "the spool's filesystem does not support renameat2(RENAME_NOREPLACE): \
                         publishing with check-then-rename, safe while one hubee-sync process \
                         works this spool"
                    );
                }
                match fs::symlink_metadata(&target) {
                    Ok(_) => return Ok(PublishOutcome::AlreadyExists(target)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("check", &target)(e)),
                }
                match fs::rename(tmp_dir, &target) {
                    Ok(()) => {}
                    // A directory target that exists (non-empty) refuses the rename.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EEXIST) | Some(libc::ENOTEMPTY)
                        ) =>
                    {
                        return Ok(PublishOutcome::AlreadyExists(target));
                    }
                    Err(e) => return Err(io_err("rename", tmp_dir)(e)),
                }
            }
            Err(e) => return Err(io_err("rename", tmp_dir)(e)),
        }
        if !crate::crashpoint::mutated("skip_new_fsync") {
            fsync_dir(&self.new_dir())?;
        }
        fsync_dir(&self.tmp())?;
        Ok(PublishOutcome::Published(target))
    }

    /// Where an entry of that name is now: `new/name`, `cur/name` or `cur/name:2,FLAGS`
    /// (the consumer's Maildir flags), or nowhere.
    pub fn find_entry(&self, entry_name: &str) -> EntryLocation {
        if check_entry_name(entry_name, &self.new_dir()).is_err() {
            return EntryLocation::Absent;
        }
        let in_new = self.new_dir().join(entry_name);
        if fs::symlink_metadata(&in_new).is_ok() {
            return EntryLocation::New(in_new);
        }
        self.find_in_cur(entry_name)
    }

    /// Reads `manifest.json` of the entry of that name in `new/` or `cur/`, if there is one.
    /// Where quarantine/{entry_name} is, when it exists.
    pub fn quarantined(&self, entry_name: &str) -> Option<PathBuf> {
        let p = self.root.join(QUARANTINE).join(entry_name);
        p.is_dir().then_some(p)
    }

    pub fn read_manifest(&self, entry_name: &str) -> Result<Option<Manifest>, SpoolError> {
        let dir = match self.find_entry(entry_name) {
            EntryLocation::New(dir) | EntryLocation::Cur(dir) => dir,
            EntryLocation::Absent => return Ok(None),
        };
        let path = dir.join(MANIFEST);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| SpoolError::BadManifest { path, source })
    }

    /// Removes what a crashed run left in `tmp/`, except the paths in `keep`. Returns what it
    /// removed.
    pub fn clean_tmp(&self, keep: &[PathBuf]) -> Result<Vec<PathBuf>, SpoolError> {
        let tmp = self.tmp();
        let keep: BTreeSet<_> = keep.iter().filter_map(|p| p.file_name()).collect();
        let mut removed = Vec::new();
        for item in fs::read_dir(&tmp).map_err(io_err("list", &tmp))? {
            let item = item.map_err(io_err("list", &tmp))?;
            if keep.contains(item.file_name().as_os_str()) {
                continue;
            }
            let path = item.path();
            let is_dir = item.file_type().map_err(io_err("list", &path))?.is_dir();
            if is_dir {
                fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
            } else {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
            removed.push(path);
        }
        removed.sort();
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::names::entry_name;

    fn manifest(attachments: Vec<ManifestAttachment>) -> Manifest {
        Manifest {
            subscription: "certdc".into(),
            process_code: "CERTDC".into(),
            case_id: "c1".into(),
            external_id: "EXT-1".into(),
            event_id: None,
            round: 0,
            received_at: "2026-01-02T03:04:05Z".into(),
            sequence: 1,
            attachments,
        }
    }

    fn attachment(id: &str, written: &WrittenFile) -> ManifestAttachment {
        ManifestAttachment {
            attachment_id: id.into(),
            file_name: id.into(),
            path: Some(written.rel_path.clone()),
            type_: "Piece".into(),
            mime_type: "application/pdf".into(),
            size: written.size,
            sha256: Some(written.sha256_hex()),
            status: "RECEIVED".into(),
        }
    }

    /// Writes, seals and publishes an entry with a case.json, one streamed attachment under a
    /// hostile name, and one small one.
    async fn deliver(spool: &Spool, name: &str, body: &[u8]) -> (PathBuf, PublishOutcome) {
        let mut entry = spool.begin(name).unwrap();
        entry
            .write_small("case.json", b"{\"id\":\"c1\"}")
            .await
            .unwrap();
        let path = entry.attachment_path("Acte de naissance n°1 (copie).pdf");
        let mut writer = entry.create_file(&path).await.unwrap();
        for chunk in body.chunks(7) {
            writer.write(chunk).await.unwrap();
        }
        assert_eq!(writer.bytes_written(), body.len() as u64);
        let acte = writer.finish().await.unwrap();
        let path = entry.attachment_path("../../etc/passwd");
        let other = entry.write_small(&path, b"x").await.unwrap();
        let m = manifest(vec![attachment("a1", &acte), attachment("a2", &other)]);
        let sealed = entry.seal(&m).await.unwrap();
        let outcome = spool.publish(&sealed, name).unwrap();
        (sealed, outcome)
    }

    #[tokio::test]
    async fn sealed_entry_passes_sha256sum_check() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(&root.path().join("spool"), None).unwrap();
        let name = entry_name("EXT-1", "c1", None, 0);
        let (_, outcome) = deliver(&spool, &name, &vec![42u8; 1000]).await;
        let PublishOutcome::Published(dir) = outcome else {
            panic!("not published: {outcome:?}");
        };
        assert_eq!(dir, spool.root().join("new").join(&name));

        let check = std::process::Command::new("sha256sum")
            .args(["-c", "--strict", "SHA256SUMS"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
        let sums = fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
        let paths: Vec<&str> = sums.lines().map(|l| &l[66..]).collect();
        assert_eq!(
            paths,
            [
                "attachments/Acte de naissance n_1 (copie).pdf",
                "attachments/_.__.__etc_passwd",
                "case.json",
                "manifest.json"
            ]
        );
        let read = spool.read_manifest(&name).unwrap().unwrap();
        assert_eq!(read.attachments.len(), 2);
        assert_eq!(read.attachments[0].size, 1000);
        // Nothing left behind in tmp/.
        assert_eq!(fs::read_dir(spool.root().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_small_file_is_created_only_when_finished_and_then_whole() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let mut entry = spool.begin("E~small").unwrap();
        let rel = entry.attachment_path("acte.pdf");
        let mut w = entry.create_file(&rel).await.unwrap();
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in bytes.chunks(16 * 1024) {
            w.write(chunk).await.unwrap();
        }
        let path = entry.dir().join(&rel);
        assert!(
            !path.exists(),
            "a small file was created before it was finished"
        );
        let written = w.finish().await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), bytes);
        assert_eq!(written.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE, "{mode:o}");
    }

    #[tokio::test]
    async fn a_file_larger_than_the_buffer_is_written_while_it_streams() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let mut entry = spool.begin("E~large").unwrap();
        let rel = entry.attachment_path("scan.pdf");
        let mut w = entry.create_file(&rel).await.unwrap();
        let bytes: Vec<u8> = (0..3 * WRITE_BUFFER as u32)
            .map(|i| (i % 253) as u8)
            .collect();
        for chunk in bytes.chunks(60 * 1024) {
            w.write(chunk).await.unwrap();
        }
        let path = entry.dir().join(&rel);
        assert!(
            path.exists(),
            "a file larger than the buffer waited for its end"
        );
        assert!(
            fs::metadata(&path).unwrap().len() > 0,
            "nothing written while streaming"
        );
        let written = w.finish().await.unwrap();
        assert_eq!(written.size, bytes.len() as u64);
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[tokio::test]
    async fn hostile_attachment_names_land_inside_attachments() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let mut entry = spool.begin("E~c12").unwrap();
        let long = "x".repeat(300);
        let hostile = [
            "../../etc/passwd",
            "/abs",
            "a/b",
            "..",
            ".",
            "\\..\\x",
            "a\u{1}b\n",
            long.as_str(),
            "",
            "CON",
            "nul.txt",
            "trailing. ",
            "<>:\"|?*",
            "acte.pdf",
            "ACTE.pdf",
        ];
        for name in hostile {
            let path = entry.attachment_path(name);
            entry.write_small(&path, name.as_bytes()).await.unwrap();
        }
        let sealed = entry.seal(&manifest(vec![])).await.unwrap();
        let written = fs::read_dir(sealed.join("attachments")).unwrap().count();
        assert_eq!(written, hostile.len(), "one distinct file per attachment");
        let top: BTreeSet<_> = fs::read_dir(&sealed)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            top,
            BTreeSet::from(["SHA256SUMS", "attachments", "manifest.json"].map(String::from))
        );
        let check = std::process::Command::new("sha256sum")
            .args(["-c", "--strict", "--quiet", "SHA256SUMS"])
            .current_dir(&sealed)
            .output()
            .unwrap();
        assert!(check.status.success(), "{check:?}");
    }

    #[tokio::test]
    async fn publish_never_replaces_an_existing_entry() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let (_, first) = deliver(&spool, "E~c1", b"first").await;
        let PublishOutcome::Published(published) = first else {
            panic!("{first:?}");
        };
        let (second_tmp, second) = deliver(&spool, "E~c1", b"second!").await;
        assert_eq!(second, PublishOutcome::AlreadyExists(published.clone()));
        assert!(
            second_tmp.join("manifest.json").is_file(),
            "tmp dir left as it was"
        );
        let acte = published.join("attachments/Acte de naissance n_1 (copie).pdf");
        assert_eq!(fs::read(&acte).unwrap(), b"first");

        // Once the consumer took it into cur/, it is still delivered.
        let taken = spool.root().join("cur/E~c1:2,S");
        fs::rename(&published, &taken).unwrap();
        let (_, third) = deliver(&spool, "E~c1", b"third").await;
        assert_eq!(third, PublishOutcome::AlreadyExists(taken));
        assert!(!published.exists());
    }

    #[tokio::test]
    async fn publish_falls_back_when_the_filesystem_lacks_noreplace() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let no_flag = |_: &Path, _: &Path| Err(io::Error::from_raw_os_error(libc::EINVAL));
        let mut sealed = Vec::new();
        for body in [&b"one"[..], b"two"] {
            let entry = spool.begin("E~c2").unwrap();
            entry.write_small("case.json", body).await.unwrap();
            sealed.push(entry.seal(&manifest(vec![])).await.unwrap());
        }
        let target = spool.root().join("new/E~c2");
        let first = spool.publish_with(&sealed[0], "E~c2", no_flag).unwrap();
        assert_eq!(first, PublishOutcome::Published(target.clone()));
        let second = spool.publish_with(&sealed[1], "E~c2", no_flag).unwrap();
        assert_eq!(second, PublishOutcome::AlreadyExists(target.clone()));
        assert_eq!(fs::read(target.join("case.json")).unwrap(), b"one");
        assert!(sealed[1].is_dir());
    }

    #[tokio::test]
    async fn hostile_relative_paths_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let entry = spool.begin("E~c3").unwrap();
        for bad in [
            "",
            "../x",
            "/abs",
            "/etc/passwd",
            "attachments/../../x",
            "attachments/../case.json",
            "./x",
            "a//b",
            "attachments/",
            "a\\..\\b",
            "a\0b",
            "manifest.json",
            "SHA256SUMS",
        ] {
            let err = entry.create_file(bad).await.unwrap_err();
            assert!(
                matches!(err, SpoolError::UnsafePath { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("bug in hubee-sync"), "{err}");
        }
        for bad in ["", "..", ".", ".hidden", "a/b", "a:2,S", &"x".repeat(201)] {
            assert!(spool.begin(bad).is_err(), "{bad:?}");
        }
        let elsewhere = root.path().join("new");
        assert!(spool.publish(&elsewhere, "E~c3").is_err());
        assert!(spool.publish(Path::new("/tmp"), "E~c3").is_err());
        // Nothing was created outside the entry.
        let names: Vec<_> = fs::read_dir(entry.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["attachments"]);
    }

    #[tokio::test]
    async fn half_written_files_are_never_published() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let mut entry = spool.begin("E~c4").unwrap();
        let path = entry.attachment_path("gros.pdf");
        let mut writer = entry.create_file(&path).await.unwrap();
        writer.write(b"half of it").await.unwrap();
        drop(writer); // the download failed
        entry.write_small("case.json", b"{}").await.unwrap();
        // A manifest that points at it is refused...
        let missing = ManifestAttachment {
            attachment_id: "a1".into(),
            file_name: "gros.pdf".into(),
            path: Some(path.clone()),
            type_: "Piece".into(),
            mime_type: "application/pdf".into(),
            size: 10,
            sha256: None,
            status: "RECEIVED".into(),
        };
        let err = entry.seal(&manifest(vec![missing])).await.unwrap_err();
        assert!(matches!(err, SpoolError::Incomplete { .. }), "{err}");

        // ...and one that does not gets an entry without the half-written file.
        let mut entry = spool.begin("E~c4").unwrap();
        let path = entry.attachment_path("gros.pdf");
        let mut writer = entry.create_file(&path).await.unwrap();
        writer.write(b"half").await.unwrap();
        drop(writer);
        let sealed = entry.seal(&manifest(vec![])).await.unwrap();
        assert!(!sealed.join(&path).exists());
        let sums = fs::read_to_string(sealed.join("SHA256SUMS")).unwrap();
        assert!(!sums.contains("gros"), "{sums}");
    }

    #[tokio::test]
    async fn seal_refuses_a_manifest_that_disagrees_with_the_file() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let mut entry = spool.begin("E~c5").unwrap();
        let path = entry.attachment_path("acte.pdf");
        let written = entry.write_small(&path, b"pdf").await.unwrap();
        let mut wrong = attachment("a1", &written);
        wrong.sha256 = Some("00".repeat(32));
        let err = entry.seal(&manifest(vec![wrong])).await.unwrap_err();
        assert!(err.to_string().contains("SHA-256"), "{err}");
    }

    /// Sets the modification time of directory `dir`.
    fn set_dir_mtime(dir: &Path, when: SystemTime) {
        fs::File::open(dir).unwrap().set_modified(when).unwrap();
    }

    #[tokio::test]
    async fn listing_of_cur_is_kept_while_its_settled_mtime_stays_and_renewed_when_it_moves() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let cur = root.path().join("cur");
        fs::create_dir(cur.join("A~c1:2,S")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        set_dir_mtime(&cur, old);
        assert_eq!(
            spool.find_entry("A~c1"),
            EntryLocation::Cur(cur.join("A~c1:2,S"))
        );
        // Something appears in cur/ but its mtime says nothing changed: the kept listing
        // answers (it is not listed again for every new entry).
        fs::create_dir(cur.join("B~c2:2,S")).unwrap();
        set_dir_mtime(&cur, old);
        assert_eq!(spool.find_entry("B~c2"), EntryLocation::Absent);
        // The consumer takes an entry from new/ into cur/: cur/'s mtime moves, cur/ is
        // listed again and both are found.
        let entry = spool.begin("C~c3").unwrap();
        let sealed = entry.seal(&manifest(vec![])).await.unwrap();
        spool.publish(&sealed, "C~c3").unwrap();
        fs::rename(root.path().join("new/C~c3"), cur.join("C~c3:2,RS")).unwrap();
        assert_eq!(
            spool.find_entry("C~c3"),
            EntryLocation::Cur(cur.join("C~c3:2,RS"))
        );
        assert_eq!(
            spool.find_entry("B~c2"),
            EntryLocation::Cur(cur.join("B~c2:2,S"))
        );
        // Clones share what was listed.
        assert_eq!(
            spool.clone().find_entry("A~c1"),
            EntryLocation::Cur(cur.join("A~c1:2,S"))
        );
    }

    #[test]
    fn listing_of_cur_with_a_recent_mtime_is_not_kept() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let cur = root.path().join("cur");
        let recent = SystemTime::now();
        set_dir_mtime(&cur, recent);
        assert_eq!(spool.find_entry("D~c4"), EntryLocation::Absent);
        // A change within the same clock tick can leave the mtime as it was: a listing taken
        // while the mtime was that recent is listed again.
        fs::create_dir(cur.join("D~c4:2,")).unwrap();
        set_dir_mtime(&cur, recent);
        assert_eq!(
            spool.find_entry("D~c4"),
            EntryLocation::Cur(cur.join("D~c4:2,"))
        );
    }

    #[tokio::test]
    async fn find_entry_sees_entries_moved_to_cur() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        assert_eq!(spool.find_entry("E~c6"), EntryLocation::Absent);
        assert_eq!(spool.read_manifest("E~c6").unwrap(), None);
        let entry = spool.begin("E~c6").unwrap();
        let sealed = entry.seal(&manifest(vec![])).await.unwrap();
        spool.publish(&sealed, "E~c6").unwrap();
        let in_new = root.path().join("new/E~c6");
        assert_eq!(spool.find_entry("E~c6"), EntryLocation::New(in_new.clone()));

        let in_cur = root.path().join("cur/E~c6:2,RS");
        fs::rename(&in_new, &in_cur).unwrap();
        assert_eq!(spool.find_entry("E~c6"), EntryLocation::Cur(in_cur.clone()));
        assert_eq!(spool.read_manifest("E~c6").unwrap(), Some(manifest(vec![])));
        // A longer name sharing the prefix is another entry.
        assert_eq!(spool.find_entry("E~c"), EntryLocation::Absent);
        let plain = root.path().join("cur/E~c6");
        fs::rename(&in_cur, &plain).unwrap();
        assert_eq!(spool.find_entry("E~c6"), EntryLocation::Cur(plain));
        assert_eq!(spool.find_entry("../cur"), EntryLocation::Absent);
    }

    #[tokio::test]
    async fn clean_tmp_removes_leftovers_but_keeps_the_listed() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let crashed = spool.begin("E~c7").unwrap();
        crashed.write_small("case.json", b"{}").await.unwrap();
        let live = spool.begin("E~c8").unwrap();
        let stray = root.path().join("tmp/.probe.1.2");
        fs::write(&stray, b"").unwrap();

        let removed = spool.clean_tmp(&[live.dir().to_path_buf()]).unwrap();
        assert_eq!(removed, [stray, crashed.dir().to_path_buf()]);
        assert!(!crashed.dir().exists());
        assert!(live.dir().join("attachments").is_dir());
        assert_eq!(
            spool.clean_tmp(&[live.dir().to_path_buf()]).unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[tokio::test]
    async fn abandon_removes_the_tmp_directory() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), None).unwrap();
        let entry = spool.begin("E~c9").unwrap();
        entry.write_small("case.json", b"{}").await.unwrap();
        let dir = entry.dir().to_path_buf();
        entry.abandon().await.unwrap();
        assert!(!dir.exists());
        assert_eq!(spool.find_entry("E~c9"), EntryLocation::Absent);
    }

    #[test]
    fn unknown_group_is_named_with_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let err = Spool::open(root.path(), Some("hubee-no-such-group")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("hubee-no-such-group"), "{text}");
        assert!(text.contains("spool_group"), "{text}");
        assert!(!root.path().join("tmp").exists(), "nothing created");
    }

    /// The name of our effective group, from /etc/group.
    fn own_group() -> Option<(String, u32)> {
        // SAFETY: getegid cannot fail.
        let gid = unsafe { libc::getegid() };
        fs::read_to_string("/etc/group")
            .ok()?
            .lines()
            .find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)?.parse::<u32>().ok()? == gid).then(|| (name.to_string(), gid))
            })
    }

    #[test]
    fn spool_dirs_get_the_spool_group() {
        let Some((name, gid)) = own_group() else {
            return;
        };
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(&root.path().join("s"), Some(&name)).unwrap();
        for sub in SPOOL_DIRS {
            assert_eq!(fs::metadata(spool.root().join(sub)).unwrap().gid(), gid);
        }
        // A numeric gid works too.
        Spool::open(&root.path().join("s"), Some(&gid.to_string())).unwrap();
    }

    #[test]
    fn io_errors_say_what_to_do() {
        let err =
            io_err("fsync", Path::new("/var/spool/x"))(io::Error::from_raw_os_error(libc::ENOSPC));
        let text = err.to_string();
        assert!(text.starts_with("cannot fsync /var/spool/x: "), "{text}");
        assert!(text
            .ends_with("free space (or raise the quota) on the filesystem holding /var/spool/x"));
        let err =
            io_err("rename", Path::new("/s/tmp/e"))(io::Error::from_raw_os_error(libc::EXDEV));
        assert!(err
            .to_string()
            .ends_with("check free space and permissions on /s/tmp/e"));
    }

    /// Every directory under `root` is 2770 and every file 0640.
    fn assert_modes(root: &Path) {
        let mode = fs::metadata(root).unwrap().mode() & 0o7777;
        assert_eq!(mode, DIR_MODE, "{}", root.display());
        for item in fs::read_dir(root).unwrap() {
            let path = item.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                assert_modes(&path);
            } else {
                assert_eq!(meta.mode() & 0o7777, FILE_MODE, "{}", path.display());
            }
        }
    }

    #[test]
    fn spool_dirs_are_2770_and_files_0640_whatever_the_umask() {
        // The umask is per process: change it only in a child running this very test, so
        // the other tests of this binary never see it.
        const CHILD: &str = "HUBEE_SYNC_TEST_UMASK";
        if let Ok(mask) = std::env::var(CHILD) {
            let mask = libc::mode_t::from_str_radix(&mask, 8).unwrap();
            let root = tempfile::tempdir().unwrap();
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(mask) };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let spool = Spool::open(&root.path().join("spool"), None).unwrap();
                let (_, outcome) = deliver(&spool, "E~c10", b"body").await;
                assert!(matches!(outcome, PublishOutcome::Published(_)));
                let pending = spool.begin("E~c11").unwrap();
                pending.write_small("case.json", b"{}").await.unwrap();
                assert_modes(spool.root());
            });
            return;
        }
        let test = format!(
            "{}::spool_dirs_are_2770_and_files_0640_whatever_the_umask",
            module_path!().split_once("::").unwrap().1
        );
        for mask in ["777", "077", "000", "022"] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([test.as_str(), "--exact", "--test-threads=1"])
                .env(CHILD, mask)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "umask {mask}: {stdout}");
            assert!(
                stdout.contains("1 passed"),
                "the child ran the test: {stdout}"
            );
        }
    }
}
