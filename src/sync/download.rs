//! Fetching one file into a pending entry: streamed, hashed while written, verified against
//! the announced size and digest. Nothing unverified is ever kept.

use std::time::Duration;

use crate::deliver::{PendingEntry, WrittenFile};
use crate::hubee::{Download, HubError, HubSession};

use super::context::Progress;
use crate::shutdown::Shutdown;

/// Which file to fetch.
pub struct FileRef<'a> {
    pub case_id: &'a str,
    /// `Some` for a file attached to an event.
    pub event_id: Option<&'a str>,
    pub attachment_id: &'a str,
    pub expected_size: u64,
    /// Where in the entry (from `PendingEntry::attachment_path`).
    pub rel_path: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("download abandoned: the process is stopping")]
    Cancelled,
    #[error("{0}")]
    Hub(#[from] HubError),
    #[error("attachment {attachment_id}: the hub sent {got} bytes, {more} than the {expected} bytes its metadata announces")]
    SizeMismatch {
        attachment_id: String,
        expected: u64,
        got: u64,
        more: &'static str,
    },
    #[error("attachment {attachment_id}: SHA-256 {got} does not match the digest the hub announced ({expected})")]
    DigestMismatch {
        attachment_id: String,
        expected: String,
        got: String,
    },
    #[error("attachment {attachment_id}: unreadable digest header: {detail}")]
    BadDigest {
        attachment_id: String,
        detail: String,
    },
    #[error("{0}")]
    Database(crate::deliver::database::DbError),
    #[error("attachment {attachment_id}: cannot write into the spool: {source}")]
    Spool {
        attachment_id: String,
        #[source]
        source: crate::deliver::SpoolError,
    },
}

impl DownloadError {
    /// For `hubee_sync_items_failed_total{kind}`.
    pub fn failure_kind(&self) -> crate::metrics::FailureKind {
        match self {
            DownloadError::Hub(_) => crate::metrics::FailureKind::Hub,
            DownloadError::SizeMismatch { .. }
            | DownloadError::DigestMismatch { .. }
            | DownloadError::BadDigest { .. } => crate::metrics::FailureKind::Verify,
            _ => crate::metrics::FailureKind::Local,
        }
    }

    /// Local failures (disk full, permissions) are not the hub's: retrying now won't help.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            DownloadError::Spool { .. } | DownloadError::Cancelled | DownloadError::Database(_)
        )
    }
}

/// Fetches a file with up to `attempts` tries, backing off between them.
pub async fn fetch_verified(
    session: &HubSession,
    entry: &PendingEntry,
    file: &FileRef<'_>,
    attempts: u32,
    base_delay: Duration,
    shutdown: &Shutdown,
    progress: &Progress,
) -> Result<WrittenFile, DownloadError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt = tokio::select! {
            r = fetch_once(session, entry, file, progress) => r,
            _ = shutdown.requested() => Err(DownloadError::Cancelled),
        };
        match attempt {
            Ok(w) => return Ok(w),
            Err(e) if e.is_local() || tries >= attempts.max(1) || shutdown.is_requested() => {
                return Err(e)
            }
            Err(e) => {
                let delay = base_delay
                    .saturating_mul(1 << (tries - 1).min(10))
                    .mul_f64(0.5 + fastrand::f64() * 0.5);
                tracing::warn!(
                    case_id = file.case_id,
                    attachment_id = file.attachment_id,
                    attempt = tries,
                    error = %e,
                    "download failed verification or broke off, retrying"
                );
                crate::metrics::hub_retry(session.client_id());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.requested() => return Err(DownloadError::Cancelled),
                }
            }
        }
    }
}

/// Where a downloaded file goes: a spool file or database chunks. It hashes what it stores.
pub trait Sink {
    fn write(
        &mut self,
        chunk: &[u8],
    ) -> impl std::future::Future<Output = Result<(), DownloadError>> + Send;
    /// Makes it durable as far as the sink goes; the size and SHA-256 of what was stored.
    fn finish(
        self,
    ) -> impl std::future::Future<Output = Result<(u64, [u8; 32]), DownloadError>> + Send;
}

struct SpoolSink {
    writer: crate::deliver::FileWriter,
    attachment_id: String,
}

impl Sink for SpoolSink {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), DownloadError> {
        self.writer
            .write(chunk)
            .await
            .map_err(|source| DownloadError::Spool {
                attachment_id: self.attachment_id.clone(),
                source,
            })
    }
    async fn finish(self) -> Result<(u64, [u8; 32]), DownloadError> {
        let aid = self.attachment_id;
        let w = self
            .writer
            .finish()
            .await
            .map_err(|source| DownloadError::Spool {
                attachment_id: aid,
                source,
            })?;
        Ok((w.size, w.sha256))
    }
}

impl Sink for crate::deliver::database::ChunkWriter<'_> {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), DownloadError> {
        crate::deliver::database::ChunkWriter::write(self, chunk)
            .await
            .map_err(DownloadError::Database)
    }
    async fn finish(self) -> Result<(u64, [u8; 32]), DownloadError> {
        crate::deliver::database::ChunkWriter::finish(self)
            .await
            .map_err(DownloadError::Database)
    }
}

async fn fetch_once(
    session: &HubSession,
    entry: &PendingEntry,
    file: &FileRef<'_>,
    progress: &Progress,
) -> Result<WrittenFile, DownloadError> {
    let (size, sha256) = fetch_into(session, file, progress, || async {
        let writer =
            entry
                .create_file(file.rel_path)
                .await
                .map_err(|source| DownloadError::Spool {
                    attachment_id: file.attachment_id.to_string(),
                    source,
                })?;
        Ok(SpoolSink {
            writer,
            attachment_id: file.attachment_id.to_string(),
        })
    })
    .await?;
    Ok(WrittenFile {
        rel_path: file.rel_path.to_string(),
        size,
        sha256,
    })
}

/// One download into a sink opened once the hub has answered: streamed, counted, hashed,
/// and checked against the announced size and digest.
pub async fn fetch_into<S: Sink, F: std::future::Future<Output = Result<S, DownloadError>>>(
    session: &HubSession,
    file: &FileRef<'_>,
    progress: &Progress,
    open: impl FnOnce() -> F,
) -> Result<(u64, [u8; 32]), DownloadError> {
    let aid = file.attachment_id.to_string();
    let mut dl: Download = match file.event_id {
        None => {
            session
                .download_case_attachment(file.case_id, file.attachment_id)
                .await?
        }
        Some(e) => {
            session
                .download_event_attachment(file.case_id, e, file.attachment_id)
                .await?
        }
    };
    let expected_digest = match dl.digest.take() {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(detail)) => {
            return Err(DownloadError::BadDigest {
                attachment_id: aid,
                detail,
            })
        }
    };
    // A Content-Length that disagrees with the metadata is caught before any byte is written.
    if let Some(len) = dl.content_length {
        if len != file.expected_size {
            return Err(DownloadError::SizeMismatch {
                attachment_id: aid,
                expected: file.expected_size,
                got: len,
                more: if len > file.expected_size {
                    "more"
                } else {
                    "fewer"
                },
            });
        }
    }
    let mut sink = open().await?;
    let mut got: u64 = 0;
    while let Some(chunk) = dl.chunk().await? {
        got += chunk.len() as u64;
        if got > file.expected_size {
            return Err(DownloadError::SizeMismatch {
                attachment_id: aid,
                expected: file.expected_size,
                got,
                more: "more",
            });
        }
        sink.write(&chunk).await?;
        crate::crashpoint::point("during_download");
        progress.add_bytes(chunk.len() as u64);
    }
    crate::metrics::received_bytes(session.client_id(), got);
    if got != file.expected_size {
        return Err(DownloadError::SizeMismatch {
            attachment_id: aid,
            expected: file.expected_size,
            got,
            more: "fewer",
        });
    }
    // The sink hashed exactly the bytes it stored.
    let (size, sha256) = sink.finish().await?;
    if let Some(expected) = expected_digest {
        if expected != sha256 {
            return Err(DownloadError::DigestMismatch {
                attachment_id: aid,
                expected: crate::hubee::client::digest_header(&expected),
                got: crate::hubee::client::digest_header(&sha256),
            });
        }
    }
    Ok((size, sha256))
}
