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

/// Debug builds only: `HUBEE_SYNC_MUTATE=name` removes one fsync (`skip_new_fsync`: of `new/`
/// after an entry's rename; `skip_attachments_fsync`: of an entry's `attachments/` at its
/// seal), so that the power-cut campaign shows it finds what that fsync prevents
/// (tests/powercut.rs). Release builds never read it.
#[inline]
pub fn mutated(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        std::env::var("HUBEE_SYNC_MUTATE").is_ok_and(|v| v == name)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}
