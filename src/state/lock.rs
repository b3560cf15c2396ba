//! One process works a subscription at a time (PROTOCOL §9: the hub has no lease, so two
//! pollers on one credential pair would see the same notifications).
//!
//! SQLite state: an `flock` on `locks/NAME.lock` beside the database; the kernel drops it
//! when the process dies, and the file says who holds it. PostgreSQL state: a session
//! advisory lock held on a dedicated connection for as long as the guard lives.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use sha2::Digest;
use sqlx::{AnyPool, Row};

/// Who holds a subscription's lock, for `status` and for a second process.
pub fn holder_description(command: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "pid {} on {host} (hubee-sync {command})",
        std::process::id()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("subscription {subscription} is being worked by another process ({holder}); wait for it to finish, or stop it (systemctl stop hubee-sync) before running this command")]
    Held {
        subscription: String,
        holder: String,
    },
    #[error("cannot take the lock of subscription {subscription} ({path}): {detail}; check permissions of the state directory")]
    Io {
        subscription: String,
        path: String,
        detail: String,
    },
}

/// Held while a subscription is being worked; released on drop.
pub struct SubscriptionLock {
    inner: Inner,
}

enum Inner {
    File(#[allow(dead_code)] File),
    /// Under a cluster: the lease's working guard (the cycle's epoch; dropped at the end).
    Lease(#[allow(dead_code)] Box<dyn std::any::Any + Send + Sync>),
    Advisory(Option<sqlx::pool::PoolConnection<sqlx::Any>>, i64),
}

impl SubscriptionLock {
    pub(super) fn file(dir: &Path, subscription: &str, holder: &str) -> Result<Self, LockError> {
        let path = dir.join(format!("{subscription}.lock"));
        let io = |e: std::io::Error| LockError::Io {
            subscription: subscription.to_string(),
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut who = String::new();
                let _ = file.read_to_string(&mut who);
                let who = who.trim();
                return Err(LockError::Held {
                    subscription: subscription.to_string(),
                    holder: if who.is_empty() {
                        "unknown process".into()
                    } else {
                        who.to_string()
                    },
                });
            }
            return Err(io(err));
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        writeln!(file, "{holder} since {since}").map_err(io)?;
        Ok(SubscriptionLock {
            inner: Inner::File(file),
        })
    }

    pub(super) fn lease(
        cluster: &std::sync::Arc<dyn super::Leases>,
        subscription: &str,
    ) -> Result<Self, LockError> {
        match cluster.clone().work_guard(subscription) {
            Ok(guard) => Ok(SubscriptionLock {
                inner: Inner::Lease(guard),
            }),
            Err(holder) => Err(LockError::Held {
                subscription: subscription.to_string(),
                holder,
            }),
        }
    }

    pub(super) async fn advisory(
        pool: &AnyPool,
        subscription: &str,
        _holder: &str,
    ) -> Result<Self, LockError> {
        let io = |e: sqlx::Error| LockError::Io {
            subscription: subscription.to_string(),
            path: "PostgreSQL advisory lock".into(),
            detail: e.to_string(),
        };
        let key = advisory_key(subscription);
        let mut conn = pool.acquire().await.map_err(io)?;
        let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .and_then(|r| r.try_get::<bool, _>(0))
            .map_err(io)?;
        if !got {
            let holder: Option<String> =
                sqlx::query("SELECT holder FROM subscription_state WHERE subscription = $1")
                    .bind(subscription)
                    .fetch_optional(pool)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten());
            return Err(LockError::Held {
                subscription: subscription.to_string(),
                holder: holder.unwrap_or_else(|| "another process".into()),
            });
        }
        Ok(SubscriptionLock {
            inner: Inner::Advisory(Some(conn), key),
        })
    }

    /// Releases the lock now (drop also releases it).
    pub async fn release(mut self) {
        if let Inner::Advisory(conn, key) = &mut self.inner {
            if let Some(mut c) = conn.take() {
                let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(*key)
                    .execute(&mut *c)
                    .await;
            }
        }
    }
}

impl Drop for SubscriptionLock {
    fn drop(&mut self) {
        if let Inner::Advisory(conn, _) = &mut self.inner {
            // Not released explicitly: close the session so the lock cannot outlive us
            // in the pool.
            if let Some(c) = conn.take() {
                drop(c.detach());
            }
        }
    }
}

fn advisory_key(subscription: &str) -> i64 {
    let h = sha2::Sha256::digest(format!("hubee-sync:{subscription}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    i64::from_be_bytes(b)
}
impl super::StateDb {
    /// Takes the subscription's lock: one process works a subscription at a time.
    pub async fn lock_subscription(
        &self,
        subscription: &str,
        holder: &str,
    ) -> Result<SubscriptionLock, LockError> {
        let guard = match (&self.lock_dir, &self.cluster) {
            (Some(dir), _) => SubscriptionLock::file(dir, subscription, holder)?,
            // Under a cluster the lease replaces the advisory lock: a session lock would
            // outlive a paused process and block the takeover.
            (None, Some(cluster)) => SubscriptionLock::lease(cluster, subscription)?,
            (None, None) => SubscriptionLock::advisory(&self.pool, subscription, holder).await?,
        };
        let _ = sqlx::query(
            "INSERT INTO subscription_state (subscription, holder, held_since) VALUES ($1, $2, $3)
             ON CONFLICT (subscription) DO UPDATE SET holder = $2, held_since = $3",
        )
        .bind(subscription)
        .bind(holder)
        .bind(super::now_ms())
        .execute(&self.pool)
        .await;
        Ok(guard)
    }

    /// Clears the holder shown by `status` after a lock is released.
    pub async fn clear_holder(&self, subscription: &str) {
        let _ = sqlx::query(
            "UPDATE subscription_state SET holder = NULL, held_since = NULL WHERE subscription = $1",
        )
        .bind(subscription)
        .execute(&self.pool)
        .await;
    }
}
