//! The process metrics every Prometheus exporter shows (`process_*`), read from
//! `/proc/self` only: the unit's `ProcSubset=pid` hides the rest of `/proc`, so the start
//! time comes from the clock since boot (`CLOCK_BOOTTIME`) rather than `/proc/stat`.

use std::fmt::Write as _;

use super::text::{family, num};

/// What one read found; a field that could not be read is left out of the scrape.
#[derive(Debug, Default, Clone)]
pub struct Process {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub start_time: Option<f64>,
}

/// Reads `/proc/self/stat`, `/proc/self/fd` and the file limit.
pub fn read() -> Process {
    let mut p = Process::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The command name (2nd field) is in parentheses and may hold spaces: fields are
        // counted from the last ')'.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // rest[0] is field 3 (state): field n is f[n - 3].
            let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
            let ticks = clock_ticks();
            if let (Some(u), Some(s), Some(t)) = (field(14), field(15), ticks) {
                p.cpu_seconds = Some((u + s) / t);
            }
            p.virtual_bytes = field(23);
            if let (Some(rss), Some(page)) = (field(24), page_size()) {
                p.resident_bytes = Some(rss * page);
            }
            if let (Some(start), Some(t), Some(up)) = (field(22), ticks, since_boot()) {
                p.start_time = Some(super::unix_now() - (up - start / t));
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        // The directory handle itself is one of them.
        p.open_fds = Some(dir.count().saturating_sub(1) as f64);
    }
    p.max_fds = max_fds();
    p
}

impl Process {
    pub fn write(&self, out: &mut String) {
        let one = |out: &mut String, name: &str, kind: &str, help: &str, v: Option<f64>| {
            if let Some(v) = v {
                family(out, name, kind, help);
                let _ = writeln!(out, "{name} {}", num(v));
            }
        };
        one(
            out,
            "process_cpu_seconds_total",
            "counter",
            "CPU time used by the process (user and system), in seconds.",
            self.cpu_seconds,
        );
        one(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Memory the process holds in RAM (resident set size).",
            self.resident_bytes,
        );
        one(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size of the process.",
            self.virtual_bytes,
        );
        one(
            out,
            "process_open_fds",
            "gauge",
            "File descriptors the process has open.",
            self.open_fds,
        );
        one(
            out,
            "process_max_fds",
            "gauge",
            "Most file descriptors the process may open (its soft limit).",
            self.max_fds,
        );
        one(
            out,
            "process_start_time_seconds",
            "gauge",
            "When the process started (Unix time).",
            self.start_time,
        );
    }
}

fn clock_ticks() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

fn page_size() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (p > 0).then_some(p as f64)
}

/// Seconds since boot, suspend included (what `/proc/self/stat`'s start time counts from).
fn since_boot() -> Option<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

fn max_fds() -> Option<f64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_cpu_memory_fds_and_a_start_time_in_the_past() {
        let p = super::read();
        assert!(p.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(p.resident_bytes.is_some_and(|r| r > 1e5));
        assert!(p.open_fds.is_some_and(|n| n >= 3.0));
        let now = crate::metrics::unix_now();
        assert!(
            p.start_time
                .is_some_and(|s| s <= now + 1.0 && s > now - 86400.0 * 365.0),
            "{:?}",
            p.start_time
        );
    }
}
