//! An entry being written in tmp/: its files, then sealed with its manifest and SHA256SUMS, or
//! quarantined, or abandoned.

use super::*;

/// An entry being written in `tmp/`. Dropping it without [`PendingEntry::seal`] or
/// [`PendingEntry::abandon`] leaves its directory to [`Spool::clean_tmp`].
#[derive(Debug)]
pub struct PendingEntry {
    /// `tmp/{name}.{pid}.{random}`.
    pub(super) dir: PathBuf,
    /// The spool's `tmp/`, fsynced when the entry is sealed.
    pub(super) tmp: PathBuf,
    pub(super) name: String,
    pub(super) namer: FileNamer,
    pub(super) gid: Option<libc::gid_t>,
    /// What was written, shared with the [`FileWriter`]s that may run at the same time.
    pub(super) files: Arc<Mutex<Registry>>,
}

/// The files of an entry, by path relative to the entry.
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Finished (flushed and fsynced): size and SHA-256 in hex.
    pub(super) finished: BTreeMap<String, (u64, String)>,
    /// Created and not finished: half-written if the writer was dropped.
    pub(super) writing: BTreeSet<String>,
}

/// A poisoned lock only means a writer panicked; the registry itself is still consistent.
pub(super) fn lock(files: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    files
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PendingEntry {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A safe, unique relative path `attachments/{safe}` for a file the hub calls
    /// `hub_file_name`.
    pub fn attachment_path(&mut self, hub_file_name: &str) -> String {
        format!("{ATTACHMENTS}/{}", self.namer.name_for(hub_file_name))
    }

    /// Creates (truncating) a file at `rel_path` inside the entry, mode 0640, for streaming.
    pub async fn create_file(&self, rel_path: &str) -> Result<FileWriter, SpoolError> {
        if rel_path == MANIFEST || rel_path == SHA256SUMS {
            return Err(SpoolError::UnsafePath {
                path: rel_path.to_string(),
                entry: self.dir.clone(),
                reason: "this name is reserved for what seal() writes",
            });
        }
        self.create(rel_path).await
    }

    async fn create(&self, rel_path: &str) -> Result<FileWriter, SpoolError> {
        let path = checked_join(&self.dir, rel_path)?;
        {
            let mut files = lock(&self.files);
            files.finished.remove(rel_path);
            files.writing.insert(rel_path.to_string());
        }
        // The file itself is created when its bytes outgrow the buffer, or when it is
        // finished: a small file (most attachments) costs one trip to a blocking thread
        // (create, write, fsync) instead of two.
        Ok(FileWriter {
            out: None,
            early: Vec::new(),
            gid: self.gid,
            hasher: Sha256::new(),
            written: 0,
            rel_path: rel_path.to_string(),
            path,
            files: Arc::clone(&self.files),
        })
    }

    /// Writes a small whole file (case.json, event.json), fsynced, and records its SHA-256.
    pub async fn write_small(
        &self,
        rel_path: &str,
        bytes: &[u8],
    ) -> Result<WrittenFile, SpoolError> {
        if rel_path == MANIFEST || rel_path == SHA256SUMS {
            return Err(SpoolError::UnsafePath {
                path: rel_path.to_string(),
                entry: self.dir.clone(),
                reason: "this name is reserved for what seal() writes",
            });
        }
        let path = checked_join(&self.dir, rel_path)?;
        {
            let mut files = lock(&self.files);
            files.finished.remove(rel_path);
            files.writing.insert(rel_path.to_string());
        }
        // Create, write and fsync in one trip to a blocking thread.
        let (gid, bytes_owned, at) = (self.gid, bytes.to_vec(), path.clone());
        tokio::task::spawn_blocking(move || write_durably(&at, gid, &bytes_owned))
            .await
            .map_err(|e| io_err("write", &path)(io::Error::other(e)))??;
        let written = WrittenFile {
            rel_path: rel_path.to_string(),
            size: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
        };
        let mut files = lock(&self.files);
        files.writing.remove(rel_path);
        files
            .finished
            .insert(rel_path.to_string(), (written.size, written.sha256_hex()));
        Ok(written)
    }

    /// Writes `manifest.json` and `SHA256SUMS`, fsyncs them, then fsyncs `attachments/`, the
    /// entry directory and `tmp/`. The returned directory is ready for [`Spool::publish`].
    ///
    /// Files created but never finished (a download that failed) are half-written: they are
    /// removed, never published. Every attachment the manifest gives a path must be a finished
    /// file of the same size (and SHA-256, when the manifest has one).
    pub async fn seal(self, manifest: &Manifest) -> Result<PathBuf, SpoolError> {
        let unfinished: Vec<String> = lock(&self.files).writing.iter().cloned().collect();
        for rel_path in unfinished {
            let path = checked_join(&self.dir, &rel_path)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
            lock(&self.files).writing.remove(&rel_path);
            tracing::debug!(file = %path.display(), "removed a file that was never finished");
        }
        self.check_manifest(manifest)?;

        let manifest_path = self.dir.join(MANIFEST);
        let mut json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| io_err("write", &manifest_path)(io::Error::other(e)))?;
        json.push(b'\n');
        // `sha256sum -c` format, sorted by path (the registry is a BTreeMap); manifest.json
        // itself is listed too.
        let sums: String = {
            let mut files = lock(&self.files);
            files.finished.insert(
                MANIFEST.to_string(),
                (json.len() as u64, hex::encode(Sha256::digest(&json))),
            );
            files
                .finished
                .iter()
                .map(|(path, (_, sha))| format!("{sha}  {path}\n"))
                .collect()
        };
        let sums_path = self.dir.join(SHA256SUMS);
        let dirs = [
            self.dir.join(ATTACHMENTS),
            self.dir.clone(),
            self.tmp.clone(),
        ];
        // Both files written and fsynced, then the directories, in one trip to a blocking
        // thread.
        let gid = self.gid;
        tokio::task::spawn_blocking(move || {
            write_durably(&manifest_path, gid, &json)?;
            write_durably(&sums_path, gid, sums.as_bytes())?;
            let skip = crate::crashpoint::mutated("skip_attachments_fsync");
            dirs.iter()
                .skip(usize::from(skip))
                .try_for_each(|d| fsync_dir(d))
        })
        .await
        .map_err(|e| io_err("fsync", &self.dir)(io::Error::other(e)))??;
        Ok(self.dir)
    }

    /// Every attachment the manifest places in the entry was written and finished, as said.
    fn check_manifest(&self, manifest: &Manifest) -> Result<(), SpoolError> {
        let files = lock(&self.files);
        for attachment in &manifest.attachments {
            let Some(rel_path) = &attachment.path else {
                continue;
            };
            let incomplete = |reason: String| SpoolError::Incomplete {
                entry: self.dir.clone(),
                path: rel_path.clone(),
                reason,
            };
            let Some((size, sha)) = files.finished.get(rel_path) else {
                return Err(incomplete(format!(
                    "attachment {} is in the manifest but was not written completely",
                    attachment.attachment_id
                )));
            };
            if *size != attachment.size {
                return Err(incomplete(format!(
                    "the manifest says {} bytes, {size} were written",
                    attachment.size
                )));
            }
            if let Some(expected) = &attachment.sha256 {
                if !expected.eq_ignore_ascii_case(sha) {
                    return Err(incomplete(format!(
                        "the manifest says SHA-256 {expected}, the file written has {sha}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sets an entry aside in quarantine/{entry name} with `reason.txt`: whatever was
    /// written (unverified files included) stays for a person to look at. Never replaces:
    /// when quarantine/{name} exists already (an earlier attempt), the pending entry is
    /// dropped and the existing path returned.
    pub async fn quarantine(self, reason: &str) -> Result<PathBuf, SpoolError> {
        let mut writer = self.create(REASON).await?;
        writer.write(reason.as_bytes()).await?;
        writer.finish().await?;
        let quarantine = self
            .tmp
            .parent()
            .map(|root| root.join(QUARANTINE))
            .ok_or_else(|| SpoolError::UnsafePath {
                path: self.dir.display().to_string(),
                entry: self.tmp.clone(),
                reason: "tmp/ has no parent spool directory",
            })?;
        check_entry_name(&self.name, &quarantine)?;
        let target = quarantine.join(&self.name);
        let (dir, tmp) = (self.dir.clone(), self.tmp.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            fsync_dir(&dir)?;
            match rename_noreplace(&dir, &target) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Ok(target);
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) => {
                    if target.exists() {
                        let _ = fs::remove_dir_all(&dir);
                        return Ok(target);
                    }
                    fs::rename(&dir, &target).map_err(io_err("rename", &target))?;
                }
                Err(e) => return Err(io_err("rename", &target)(e)),
            }
            fsync_dir(&quarantine)?;
            fsync_dir(&tmp)?;
            Ok(target)
        })
        .await
        .map_err(|e| io_err("rename", &self.dir)(io::Error::other(e)))??;
        Ok(outcome)
    }

    /// Removes the tmp directory (after a failed verification).
    pub async fn abandon(self) -> Result<(), SpoolError> {
        tokio::fs::remove_dir_all(&self.dir)
            .await
            .map_err(io_err("remove", &self.dir))
    }
}
