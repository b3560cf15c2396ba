//! One file of an entry, streamed through a buffer, hashed as it is written and fsynced when
//! finished.

use super::*;

/// A file of an entry being written: buffered, hashed as it goes.
#[derive(Debug)]
pub struct FileWriter {
    /// The file, once created (see [`PendingEntry::create_file`]).
    pub(super) out: Option<BufWriter<tokio::fs::File>>,
    /// The bytes received before the file was created (at most [`WRITE_BUFFER`]).
    pub(super) early: Vec<u8>,
    pub(super) gid: Option<libc::gid_t>,
    pub(super) hasher: Sha256,
    pub(super) written: u64,
    pub(super) rel_path: String,
    /// Absolute path, for error messages.
    pub(super) path: PathBuf,
    pub(super) files: Arc<Mutex<Registry>>,
}

impl FileWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), SpoolError> {
        if self.out.is_none() && self.early.len() + chunk.len() <= WRITE_BUFFER {
            if self.early.capacity() == 0 {
                self.early.reserve_exact(WRITE_BUFFER);
            }
            self.early.extend_from_slice(chunk);
        } else {
            let out = match &mut self.out {
                Some(out) => out,
                None => {
                    let (gid, opening) = (self.gid, self.path.clone());
                    let file =
                        tokio::task::spawn_blocking(move || create_private_file(&opening, gid))
                            .await
                            .map_err(|e| io_err("create", &self.path)(io::Error::other(e)))??;
                    let mut out =
                        BufWriter::with_capacity(WRITE_BUFFER, tokio::fs::File::from_std(file));
                    out.write_all(&std::mem::take(&mut self.early))
                        .await
                        .map_err(io_err("write", &self.path))?;
                    self.out.insert(out)
                }
            };
            out.write_all(chunk)
                .await
                .map_err(io_err("write", &self.path))?;
        }
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Flushes and fsyncs the file, records it in the entry, and says what was written.
    pub async fn finish(mut self) -> Result<WrittenFile, SpoolError> {
        let path = self.path.clone();
        match self.out.take() {
            // A small file: created, written and fsynced in one trip to a blocking thread.
            None => {
                let (gid, bytes) = (self.gid, std::mem::take(&mut self.early));
                tokio::task::spawn_blocking(move || write_durably(&path, gid, &bytes))
                    .await
                    .map_err(|e| io_err("fsync", &self.path)(io::Error::other(e)))??;
            }
            Some(mut out) => {
                // The write in flight, if any, completed and its error reported (the file's
                // own flush; what the buffer holds is not written by it)...
                out.get_mut()
                    .flush()
                    .await
                    .map_err(io_err("write", &self.path))?;
                // ...then what is still buffered written, and the file fsynced, in one trip
                // to a blocking thread.
                let rest = out.buffer().to_vec();
                let mut file = out.into_inner().into_std().await;
                tokio::task::spawn_blocking(move || {
                    file.write_all(&rest).map_err(io_err("write", &path))?;
                    file.sync_all().map_err(io_err("fsync", &path))
                })
                .await
                .map_err(|e| io_err("fsync", &self.path)(io::Error::other(e)))??;
            }
        }
        let sha256: [u8; 32] = self.hasher.finalize().into();
        let written = WrittenFile {
            rel_path: self.rel_path,
            size: self.written,
            sha256,
        };
        let mut files = lock(&self.files);
        files.writing.remove(&written.rel_path);
        files.finished.insert(
            written.rel_path.clone(),
            (written.size, written.sha256_hex()),
        );
        Ok(written)
    }
}

/// A finished file of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Relative to the entry, e.g. `attachments/acte.pdf`.
    pub rel_path: String,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl WrittenFile {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}
