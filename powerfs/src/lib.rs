//! powerfs: a FUSE filesystem that passes everything through to a backing directory and keeps
//! the model of what would survive a power cut under the weakest rules POSIX allows (see
//! [`model`]). [`Control::cut`] (or the `cut` command of the `powerfs` binary's control
//! socket) cuts the power: every call fails with EIO from then on, and the backing directory
//! holds only what was durable, ready for the next mount. Dev-only (hubee-sync's power-cut
//! campaign, tests/powercut.rs); never linked into the product.

pub mod fs;
pub mod model;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use model::{CutReport, Stats};

/// A mounted powerfs.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    control: Control,
}

/// The control side: cut, arm a cut at the k-th sync, read the counters.
#[derive(Clone)]
pub struct Control(Arc<Mutex<fs::Shared>>);

impl Control {
    /// Cuts the power now. Returns what was thrown away.
    pub fn cut(&self) -> io::Result<CutReport> {
        let mut g = fs::lock(&self.0);
        g.cut_now();
        if let Some(e) = &g.cut_error {
            return Err(io::Error::other(e.clone()));
        }
        Ok(g.last_cut.clone().unwrap_or_default())
    }

    /// The power goes at the `k`-th sync call since the mount (1-based): that call fails, and
    /// nothing of it is durable.
    pub fn cut_at_sync(&self, k: u64) {
        fs::lock(&self.0).cut_at_sync = Some(k);
    }

    /// At the cut, keep a prefix (length drawn from `seed`) of the last unsynced write.
    pub fn torn_last_write(&self, seed: Option<u64>) {
        fs::lock(&self.0).state.torn_seed = seed;
    }

    /// Sync calls (fsync, fdatasync, directory fsync) since the mount.
    pub fn syncs(&self) -> u64 {
        fs::lock(&self.0).syncs
    }

    pub fn is_cut(&self) -> bool {
        fs::lock(&self.0).state.cut
    }

    /// The last cut's report (after a cut at a sync) and any error met while cutting.
    pub fn last_cut(&self) -> io::Result<Option<CutReport>> {
        let g = fs::lock(&self.0);
        if let Some(e) = &g.cut_error {
            return Err(io::Error::other(e.clone()));
        }
        Ok(g.last_cut.clone())
    }

    pub fn stats(&self) -> Stats {
        fs::lock(&self.0).state.stats
    }
}

/// Mounts powerfs at `mountpoint`, over `backing` (taken as wholly durable).
pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Mounted> {
    raise_fd_limit();
    let state = model::State::open(backing).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "powerfs: cannot read the backing directory {}: {e}",
                backing.display()
            ),
        )
    })?;
    let shared = Arc::new(Mutex::new(fs::Shared {
        state,
        syncs: 0,
        cut_at_sync: None,
        last_cut: None,
        cut_error: None,
    }));
    let options = [
        fuser::MountOption::FSName("powerfs".into()),
        fuser::MountOption::AllowOther,
        fuser::MountOption::DefaultPermissions,
    ];
    let session = fuser::spawn_mount2(fs::PowerFs::new(Arc::clone(&shared)), mountpoint, &options)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "powerfs: cannot mount on {} (needs /dev/fuse and root): {e}",
                    mountpoint.display()
                ),
            )
        })?;
    Ok(Mounted {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        control: Control(shared),
    })
}

impl Mounted {
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Unmounts (lazily: a process still holding a file there keeps the dead mount alive, not
    /// the mountpoint).
    pub fn unmount(mut self) {
        self.detach();
    }

    fn detach(&mut self) {
        if let Some(session) = self.session.take() {
            if let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
                self.mountpoint.as_os_str(),
            )) {
                // SAFETY: a valid NUL-terminated path.
                unsafe {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
            // The session thread ends by itself once the kernel lets the connection go. Never
            // drop the session: its unmount-on-drop would find the mountpoint taken by the
            // next mount and unmount that one instead (one file descriptor is kept per mount).
            std::mem::forget(session);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Each mount keeps one descriptor of /dev/fuse (see [`Mounted::unmount`]): a campaign mounts
/// hundreds of times, so the soft limit goes up to the hard one.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
