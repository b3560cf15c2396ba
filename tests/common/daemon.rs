//! A `hubee-sync run` child process for the daemon tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::bin;

/// A `hubee-sync run` child whose stderr goes to a file (read after it exits).
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(config: &std::path::Path, log: PathBuf, log_filter: &str) -> Daemon {
        Daemon::start_with(config, log, log_filter, &[])
    }

    /// Starts it with more environment variables (NOTIFY_SOCKET, WATCHDOG_USEC, …).
    pub fn start_with(
        config: &std::path::Path,
        log: PathBuf,
        log_filter: &str,
        envs: &[(&str, &str)],
    ) -> Daemon {
        let err = std::fs::File::create(&log).expect("create log file");
        let child = super::without_proxies(
            Command::new(bin())
                .envs(envs.iter().copied())
                .arg("--config")
                .arg(config)
                .arg("run")
                .env("HUBEE_SYNC_LOG", log_filter),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start hubee-sync run");
        Daemon { child, log }
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Waits for the exit, at most `bound`; returns the exit code and how long it took.
    pub async fn wait(&mut self, bound: Duration) -> (i32, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status.code().unwrap_or(-1), start.elapsed());
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "hubee-sync run did not exit within {bound:?}; its log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` every 20 ms for at most `bound`; panics with `what` and the log otherwise.
pub async fn eventually(bound: Duration, what: &str, d: &Daemon, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > bound {
            panic!("{what}: not within {bound:?}; log:\n{}", d.log_text());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
