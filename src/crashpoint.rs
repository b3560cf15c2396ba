//! Named crash points for the crash campaign (reliability tests): in debug builds only,
//! `HUBEE_SYNC_CRASH_AT=name` (or `name:N` for its N-th passage) kills the process with
//! SIGKILL when it passes that point — as a power cut would. Release builds compile every
//! point to nothing.

#[cfg(debug_assertions)]
static PASSAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Dies here when the test asks for it (debug builds only).
#[inline]
pub fn point(name: &str) {
    #[cfg(debug_assertions)]
    {
        let Ok(want) = std::env::var("HUBEE_SYNC_CRASH_AT") else {
            return;
        };
        let (point, nth) = match want.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse::<u64>().unwrap_or(1)),
            None => (want.clone(), 1),
        };
        if point != name {
            return;
        }
        let seen = PASSAGES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if seen >= nth {
            eprintln!("hubee-sync: crash point {name} reached (passage {seen}): SIGKILL");
            // SAFETY: kill(2) on our own pid with a valid signal.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = name;
}
