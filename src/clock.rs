//! Waiting on the wall clock (the cron schedules and the digest fire at a Paris time, and
//! the wall clock can jump while a task sleeps on the monotonic one).

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Longest single sleep while waiting for a cron tick: the wall clock is read again after
/// it, so a clock step or a suspended machine delays a tick by at most this much.
pub const MAX_NAP: Duration = Duration::from_secs(30);

/// Sleeps until the wall clock reaches `at`, reading it again at least every [`MAX_NAP`].
pub async fn sleep_until_wall(at: DateTime<Utc>) {
    while let Ok(left) = (at - Utc::now()).to_std() {
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_NAP)).await;
    }
}
