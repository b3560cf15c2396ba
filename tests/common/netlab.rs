//! A test network (issue 19): hosts as network namespaces on one bridge, each with its own
//! address, a PostgreSQL of the test's own on the `pg` host, fake-hubee on the `hub` host and
//! hubee-sync nodes on theirs.
//!
//! ```text
//!   netns <tag>-br:  br0 ──┬── v0 ═══ eth0 <tag>-hub    10.77.0.10  fake-hubee (a thread of the test)
//!                          ├── v1 ═══ eth0 <tag>-pg     10.77.0.11  postgres (initdb in a temp dir)
//!                          ├── v2 ═══ eth0 <tag>-proxy  10.77.0.12  (a forward proxy, when asked)
//!                          ├── v3 ═══ eth0 <tag>-node-a 10.77.0.21  hubee-sync run
//!                          └── …
//! ```
//!
//! Everything lives in namespaces named after the test's pid (`hs<pid>-…`): the machine's own
//! interfaces, routes and addresses are never touched, and parallel tests do not collide. The
//! faults are routes and links inside them: [`Netlab::cut`] adds a blackhole route on both
//! sides (packets silently dropped, as on a split LAN: TCP connections hang, they do not fail
//! fast), [`Netlab::isolate`] sets the host's bridge port down. [`Drop`] kills what runs there,
//! stops PostgreSQL and deletes the namespaces, also when the test panics.
//!
//! The fake hub and the test's own database connections run on threads that entered the
//! host's namespace (`setns(2)` is per thread for network namespaces): sockets they create
//! belong to that host.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fake_hubee::FakeHub;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The hosts every lab has, and their addresses.
pub const HOSTS: &[(&str, u8)] = &[
    ("hub", 10),
    ("pg", 11),
    ("proxy", 12),
    ("node-a", 21),
    ("node-b", 22),
    ("node-c", 23),
];

pub fn addr_of(host: &str) -> Ipv4Addr {
    let last = HOSTS
        .iter()
        .find(|(h, _)| *h == host)
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("netlab: no host {host}"));
    Ipv4Addr::new(10, 77, 0, last)
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `f` on a new thread inside network namespace `ns`; returns its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter_ns(&path);
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("netlab: a thread in {ns} panicked"))
}

/// Moves the calling thread into the network namespace at `path` (`/run/netns/NAME`).
pub fn enter_ns(path: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("netlab: open {path}: {e}"));
    // SAFETY: setns(2) on a valid namespace file descriptor; it only changes this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "netlab: setns({path}): {}",
        std::io::Error::last_os_error()
    );
}

/// The fake hub served from the `hub` host by a runtime of its own.
pub struct LabHub {
    pub hub: FakeHub,
    /// `https://10.77.0.10:PORT+1`: `[hub] api_url` (and `…/oauth2/token`) for the nodes.
    pub https_url: String,
    /// The CA that signed the hub's certificate: `[hub] ca_file`.
    pub ca_file: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LabHub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A hubee-sync process on one host.
pub struct LabNode {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub config: PathBuf,
    ns: String,
    log_filter: String,
}

impl LabNode {
    pub fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.child.id()).expect("pid fits")
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, reaped.
    pub fn kill(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same node again (same name, config and log, appended).
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn_node(&self.ns, &self.config, &self.log, &self.log_filter);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_node(ns: &str, config: &Path, log: &Path, log_filter: &str) -> Child {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the node's log");
    // `ip netns exec` execs the program: the child's pid is hubee-sync's.
    super::without_proxies(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(super::bin())
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("HUBEE_SYNC_LOG", log_filter),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(err)
    .spawn()
    .expect("start hubee-sync run in its namespace")
}

/// The PostgreSQL server of the `pg` host.
pub struct LabPg {
    data: tempfile::TempDir,
    ns: String,
    pub url: String,
}

impl LabPg {
    fn start(ns: &str) -> Result<LabPg, String> {
        let data = tempfile::Builder::new()
            .prefix("hubee-netlab-pg-")
            .tempdir()
            .map_err(|e| format!("tempdir for PostgreSQL: {e}"))?;
        let d = data.path().display().to_string();
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", args.join(" ")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        let chown = Command::new("chown")
            .args(["postgres:postgres", &d])
            .status()
            .map_err(|e| format!("chown {d}: {e}"))?;
        if !chown.success() {
            return Err(format!("chown postgres {d} failed"));
        }
        run(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            &format!("{d}/data"),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ])?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(format!("{d}/data/pg_hba.conf"))
            .and_then(|mut f| {
                use std::io::Write;
                writeln!(f, "host all all 10.77.0.0/24 trust")
            })
            .map_err(|e| format!("pg_hba.conf: {e}"))?;
        let pg = addr_of("pg");
        run(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            &format!("{d}/data"),
            "-l",
            &format!("{d}/log"),
            "-w",
            "-o",
            &format!(
                "-c listen_addresses={pg} -c port=5432 -c unix_socket_directories={d} -c fsync=off -c max_connections=200"
            ),
            "start",
        ])?;
        Ok(LabPg {
            data,
            ns: ns.to_string(),
            url: format!("postgres://postgres@{pg}:5432/postgres"),
        })
    }

    pub fn log_path(&self) -> PathBuf {
        self.data.path().join("log")
    }
}

impl Drop for LabPg {
    fn drop(&mut self) {
        let d = self.data.path().display().to_string();
        let _ = Command::new("ip")
            .args(["netns", "exec", &self.ns, "runuser", "-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .args(["-D", &format!("{d}/data"), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The lab: namespaces, bridge, links. Build with [`Netlab::new`].
pub struct Netlab {
    pub tag: String,
    /// Where the test keeps configs, logs and the spools (shared by every host, as on NFS).
    pub dir: tempfile::TempDir,
    namespaces: Vec<String>,
    /// host → bridge port index.
    ports: BTreeMap<String, usize>,
    cuts: Vec<(String, String)>,
}

impl Netlab {
    /// Makes the namespaces and the bridge, or says why it cannot (not root, no `ip`, no
    /// namespaces in this container): the caller skips with that message.
    pub fn new() -> Result<Netlab, String> {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need CAP_NET_ADMIN".into());
        }
        if !Path::new(PG_BIN).join("initdb").exists() {
            return Err(format!(
                "no {PG_BIN}/initdb (Debian's postgresql-15): the lab runs its own PostgreSQL"
            ));
        }
        let tag = format!("hs{}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("hubee-netlab-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let mut lab = Netlab {
            tag: tag.clone(),
            dir,
            namespaces: Vec::new(),
            ports: BTreeMap::new(),
            cuts: Vec::new(),
        };
        let br = format!("{tag}-br");
        ip(&["netns", "add", &br])?;
        lab.namespaces.push(br.clone());
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for (i, (host, _)) in HOSTS.iter().enumerate() {
            let ns = lab.ns(host);
            ip(&["netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let port = format!("v{i}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            let a = format!("{}/24", addr_of(host));
            ip(&["-n", &ns, "addr", "add", &a, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            lab.ports.insert(host.to_string(), i);
        }
        Ok(lab)
    }

    /// [`Netlab::new`], or `None` after printing why the test is skipped.
    pub fn or_skip(test: &str) -> Option<Netlab> {
        match Netlab::new() {
            Ok(lab) => Some(lab),
            Err(e) => {
                eprintln!("{test}: SKIPPED: cannot build the test network: {e}");
                None
            }
        }
    }

    /// The namespace of a host.
    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    /// Starts the lab's PostgreSQL on the `pg` host.
    pub fn start_pg(&self) -> Result<LabPg, String> {
        LabPg::start(&self.ns("pg"))
    }

    /// A CA (`DIR/pki/ca.pem`, for `[hub] ca_file`) and a certificate for the hub's address
    /// signed by it, made with openssl.
    pub fn make_pki(&self) -> PathBuf {
        let pki = self.dir.path().join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        super::pki::make_pki(
            &pki,
            "hubee-sync netlab CA",
            "hub",
            &addr_of("hub").to_string(),
        );
        pki
    }

    /// Serves a fake hub on the `hub` host: plain HTTP on `port`, and HTTPS on `port + 1`
    /// (fake_hubee::tls, with the certificate of [`Netlab::make_pki`], made here) — hubee-sync
    /// speaks plain http to localhost only. The URL for the nodes: [`LabHub::https_url`].
    pub fn start_hub(&self, port: u16) -> LabHub {
        let pki = self.make_pki();
        let path = format!("/run/netns/{}", self.ns("hub"));
        let (tx, rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let addr = SocketAddr::from((addr_of("hub"), port));
        let tls_addr = SocketAddr::from((addr_of("hub"), port + 1));
        let (cert, key) = (pki.join("hub.pem"), pki.join("hub.key"));
        let thread = std::thread::spawn(move || {
            enter_ns(&path);
            // Worker threads are created by this thread, so they are in the hub's namespace.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("the hub's runtime");
            rt.block_on(async move {
                let mut hub = FakeHub::start_on(addr).await;
                if hub.is_ok() {
                    if let Err(e) =
                        fake_hubee::tls::start_tls_front(tls_addr, addr, &cert, &key).await
                    {
                        hub = Err(e);
                    }
                }
                let ok = hub.is_ok();
                let _ = tx.send(hub);
                if ok {
                    let _ = stop_rx.await;
                }
            });
        });
        let hub = rx
            .recv()
            .expect("the hub thread answers")
            .unwrap_or_else(|e| panic!("netlab: fake-hubee cannot bind {addr}: {e}"));
        LabHub {
            hub,
            https_url: format!("https://{tls_addr}"),
            ca_file: pki.join("ca.pem"),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Starts `hubee-sync --config CONFIG run` on `host`; stderr appended to `DIR/HOST.log`.
    pub fn start_node(&self, host: &str, config: &Path) -> LabNode {
        let log = self.dir.path().join(format!("{host}.log"));
        let ns = self.ns(host);
        let filter = "info".to_string();
        LabNode {
            name: host.to_string(),
            child: spawn_node(&ns, config, &log, &filter),
            log,
            config: config.to_path_buf(),
            ns,
            log_filter: filter,
        }
    }

    /// Starts any program on `host` (`ip netns exec`).
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), program]);
        c
    }

    /// Cuts `a` from `b` both ways: a blackhole route to the other on each side.
    pub fn cut(&mut self, a: &str, b: &str) {
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", addr_of(to));
            ip(&["-n", &self.ns(from), "route", "add", "blackhole", &dst])
                .unwrap_or_else(|e| panic!("netlab: cut {from} from {to}: {e}"));
        }
        self.cuts.push((a.to_string(), b.to_string()));
    }

    /// Undoes every [`Netlab::cut`] between `a` and `b`.
    pub fn heal(&mut self, a: &str, b: &str) {
        for (from, to) in [(a, b), (b, a)] {
            let dst = format!("{}/32", addr_of(to));
            let _ = ip(&["-n", &self.ns(from), "route", "del", "blackhole", &dst]);
        }
        self.cuts
            .retain(|(x, y)| !((x == a && y == b) || (x == b && y == a)));
    }

    /// Takes `host` off the network (its bridge port down), or puts it back.
    pub fn set_isolated(&self, host: &str, isolated: bool) {
        let port = format!("v{}", self.ports[host]);
        let state = if isolated { "down" } else { "up" };
        ip(&[
            "-n",
            &format!("{}-br", self.tag),
            "link",
            "set",
            &port,
            state,
        ])
        .unwrap_or_else(|e| panic!("netlab: {host} port {state}: {e}"));
    }

    /// A route from `host` to nowhere for `to` (one-way, for "only through the proxy").
    pub fn no_route(&self, host: &str, to: &str) {
        let dst = format!("{}/32", addr_of(to));
        ip(&["-n", &self.ns(host), "route", "add", "unreachable", &dst])
            .unwrap_or_else(|e| panic!("netlab: no route from {host} to {to}: {e}"));
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            // Processes still inside are killed: nothing of the lab outlives the test.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<libc::pid_t>() {
                        // SAFETY: kill(2) of a process inside the lab's own namespace.
                        unsafe {
                            libc::kill(pid, libc::SIGCONT);
                            libc::kill(pid, libc::SIGKILL);
                        }
                    }
                }
            }
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Waits for a TCP port to accept from inside `ns`.
pub fn wait_port(ns: &str, addr: SocketAddr, bound: Duration) -> bool {
    let ns = ns.to_string();
    in_ns(&ns, move || {
        let start = std::time::Instant::now();
        while start.elapsed() < bound {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
}
