#!/usr/bin/env python3
"""Benchmarks of hubee-sync against the fake hub (issue 10), every figure a ratio to a
ceiling measured in the same run on the same machine.

    python3 bench/run.py [--quick]

For each scenario it starts `fake-hubee` (release) serving generated content, measures
  * the ceiling: the same bytes fetched with one curl, piped through `tee` into a file on the
    same disk and through `openssl dgst -sha256`, then `sync FILE`;
  * `hubee-sync once` delivering the same cases end to end (download, hash, fsync, publish,
    receipt, DELETE): wall time, MB/s, ratio to the ceiling, peak RSS (GNU time);
and, for the scenarios of 100 cases or more, the spool floor: the same directories and files
written, fsynced and renamed by a few lines of Python, 16 cases at a time, without network,
hashing or state database (what the spool layout costs on this disk by itself);
then the editor scale: 500 subscriptions with empty queues in one `once` (wall, CPU,
requests), and `hubee-sync run` idle between cycles for a minute (CPU %, RSS).
Prints a Markdown table for BENCHMARKS.md.

    --quick        smaller scenarios
    --only=abce    some scenarios only (e = editor scale and idle)
    --no-build     use the release binaries as they are
    --perf         run hubee-sync under `perf record -g` (/var/tmp/hubee-bench-X.perf)
    --repeat=N     run each scenario N times (each in a directory of its own)

Work directories are removed only at the end of the run, and a run starts at least 90 s
after the previous one ended (it waits, and says so): on ext4 without a journal (this
project's machines), the inode allocator skips every inode freed in the last minute, so the
16,000 inodes a run of (a) frees slow down the next run's (a) by a factor of up to two
(BENCHMARKS.md).
"""
import json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB = os.path.join(ROOT, "target/release/fake-hubee")
SYNC = os.path.join(ROOT, "target/release/hubee-sync")
QUICK = "--quick" in sys.argv
# `--only a,c,e`: some scenarios only ((a), (b), (c), e = editor scale and idle).
ONLY = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")), "abce")
# `--perf`: hubee-sync runs under `perf record` (call graphs), data in /var/tmp/hubee-bench-X.perf.
PERF = "--perf" in sys.argv
REPEAT = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--repeat=")), "1"))
# Work directories, removed at the end of the run (see above).
LEFT = []
STAMP = "/var/tmp/hubee-bench.last"
SETTLE_S = 90


def settle():
    """Waits until the previous run's removals are SETTLE_S seconds old; removes what a run
    that was killed left behind first."""
    leftovers = [os.path.join("/var/tmp", d) for d in os.listdir("/var/tmp") if d.startswith("hubee-bench-")
                 and os.path.isdir(os.path.join("/var/tmp", d))]
    for d in leftovers:
        shutil.rmtree(d, ignore_errors=True)
    last = time.time() if leftovers else (os.path.getmtime(STAMP) if os.path.exists(STAMP) else 0)
    wait = last + SETTLE_S - time.time()
    if wait > 0:
        print(f"waiting {wait:.0f} s: inodes freed by an earlier run less than {SETTLE_S} s ago would slow (a) down",
              file=sys.stderr, flush=True)
        time.sleep(wait)


def clean_up():
    for d in LEFT:
        shutil.rmtree(d, ignore_errors=True)
    with open(STAMP, "w") as f:
        f.write(f"{time.time()}\n")


def start_hub(work, cases, files, size, extra_clients=0):
    out = open(os.path.join(work, "hub.out"), "w+")
    p = subprocess.Popen([HUB, "--listen", "127.0.0.1:0", "--client-id", "bench", "--client-secret", "bench-secret",
                          "--cases", str(cases), "--files", str(files), "--file-size", str(size), "--seed", "7",
                          "--extra-clients", str(extra_clients)], stdout=out, stderr=subprocess.DEVNULL)
    for _ in range(6000):
        out.seek(0)
        line = out.read()
        if "listening" in line:
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            return p, f["api_url"], f["token_url"]
        time.sleep(0.05)
    raise SystemExit("fake-hubee did not start")


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def hub_state(api):
    with urllib.request.urlopen(api + "/_fake/state") as r:
        return json.load(r)


def ceiling(work, api, token_url):
    """curl | tee FILE | openssl dgst -sha256; sync FILE — over every attachment."""
    tok = subprocess.run(["curl", "-s", "-u", "bench:bench-secret", "-d", "scope=SI&grant_type=client_credentials", token_url],
                         capture_output=True, check=True).stdout
    token = json.loads(tok)["access_token"]
    urls = []
    for case in hub_state(api)["cases"]:
        for a in case.get("attachments", []):
            urls.append(f"{api}/teledossiers/v1/cases/{case['id']}/attachments/{a['id']}")
    cfg = os.path.join(work, "curl.cfg")
    with open(cfg, "w") as f:
        f.write(f'header = "Authorization: Bearer {token}"\n')
        for u in urls:
            f.write(f'url = "{u}"\n')
    target = os.path.join(work, "ceiling.bin")
    t0 = time.monotonic()
    subprocess.run(f"curl -s -K {cfg} | tee {target} | openssl dgst -sha256 >/dev/null && sync {target}",
                   shell=True, check=True)
    t = time.monotonic() - t0
    n = os.path.getsize(target)
    os.remove(target)
    return n, t


def spool_floor(work, cases, files, size, threads=16):
    """The spool's own filesystem work for the same cases, without network, hashing or state
    database: per case two mkdirs, case.json, the files, manifest.json and SHA256SUMS each
    written and fsynced, three directory fsyncs, the rename into new/ and two more directory
    fsyncs — what `hubee-sync` must do at the least to publish durably (16 cases at a time)."""
    import concurrent.futures
    root = os.path.join(work, "floor")
    for d in ("tmp", "new"):
        os.makedirs(os.path.join(root, d))
    tmp, new = os.path.join(root, "tmp"), os.path.join(root, "new")
    payload = os.urandom(size)
    small = b"x" * 1200

    def fsync_path(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(path, data):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def one(i):
        entry = os.path.join(tmp, f"case-{i}")
        os.mkdir(entry)
        os.mkdir(os.path.join(entry, "attachments"))
        put(os.path.join(entry, "case.json"), small)
        for f in range(files):
            put(os.path.join(entry, "attachments", f"file-{f}.pdf"), payload)
        put(os.path.join(entry, "manifest.json"), small)
        put(os.path.join(entry, "SHA256SUMS"), small[:300])
        for d in (os.path.join(entry, "attachments"), entry, tmp):
            fsync_path(d)
        os.rename(entry, os.path.join(new, f"case-{i}"))
        fsync_path(new)
        fsync_path(tmp)

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(cases)))
    t = time.monotonic() - t0
    return t


def write_config(work, api, token_url, subs, schedule="every 5m"):
    with open(os.path.join(work, "secret"), "w") as f:
        f.write("bench-secret\n")
    os.chmod(os.path.join(work, "secret"), 0o600)
    lines = [f'[hub]\napi_url = "{api}"\ntoken_url = "{token_url}"\neditor_name = "Benchmark"\n',
             f'[state]\nurl = "sqlite://{work}/state.db"\n']
    for name, client in subs:
        lines.append(f'[[subscription]]\nname = "{name}"\nprocess_code = "CERTDC"\nclient_id = "{client}"\n'
                     f'client_secret_file = "{work}/secret"\nschedule = "{schedule}"\nspool = "{work}/spool/{name}"\n')
    path = os.path.join(work, "hubee-sync.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o640)
    return path


def timed_once(work, cfg, tag=""):
    rss = os.path.join(work, "rss")
    prof = ["perf", "record", "-q", "-F", "999", "-g", "-o", f"/var/tmp/hubee-bench-{tag}.perf"] if PERF and tag else []
    t0 = time.monotonic()
    r = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", rss] + prof + [SYNC, "--config", cfg, "once"],
                       env={**os.environ, "HUBEE_SYNC_LOG": "warn"}, capture_output=True)
    t = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"hubee-sync once failed: {r.stdout.decode()} {r.stderr.decode()[-2000:]}")
    kib, user, sys_ = open(rss).read().split()
    return t, int(kib), float(user) + float(sys_)


def proc_cpu_s(pid):
    """User + system CPU seconds of a live process so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def scenario(label, cases, files, size):
    work = tempfile.mkdtemp(prefix="hubee-bench-", dir="/var/tmp")
    try:
        hub, api, tok = start_hub(work, cases, files, size)
        n, t_ceiling = ceiling(work, api, tok)
        cfg = write_config(work, api, tok, [("bench", "bench")])
        hub_cpu0 = proc_cpu_s(hub.pid)
        t, kib, cpu = timed_once(work, cfg, label[1])
        hub_cpu = proc_cpu_s(hub.pid) - hub_cpu0
        floor = spool_floor(work, cases, files, size) if cases >= 100 else None
        entries = len(os.listdir(os.path.join(work, "spool/bench/new")))
        assert entries == cases, f"{entries} entries for {cases} cases"
        state = hub_state(api)
        assert not any(state.get("notifications", {}).values()), "notifications left"
        stop(hub)
        mb = n / 1e6
        return dict(label=label, bytes=n, ceiling_s=t_ceiling, ceiling_mbs=mb / t_ceiling, s=t, mbs=mb / t,
                    ratio_throughput=(mb / t) / (mb / t_ceiling), ratio_time=t / t_ceiling, rss_kib=kib, cpu_s=cpu, hub_cpu_s=hub_cpu,
                    spool_floor_s=floor)
    finally:
        LEFT.append(work)


def editor_scale(nsubs=500):
    work = tempfile.mkdtemp(prefix="hubee-bench-", dir="/var/tmp")
    try:
        hub, api, tok = start_hub(work, 0, 0, 0, extra_clients=nsubs)
        subs = [(f"s{i:03d}", f"bench-{i}") for i in range(nsubs)]
        cfg = write_config(work, api, tok, subs)
        before = hub_state(api)["requestTotal"]
        t, kib, cpu = timed_once(work, cfg)
        total = hub_state(api)["requestTotal"]
        # Idle: `run`, first cycles done, then a minute between cycles.
        idle = 20 if QUICK else 60
        p = subprocess.Popen([SYNC, "--config", cfg, "run"], env={**os.environ, "HUBEE_SYNC_LOG": "warn"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(8)
        def cpu_ticks():
            f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            return int(f[11]) + int(f[12])
        def rss_kib():
            for line in open(f"/proc/{p.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        c0 = cpu_ticks(); t0 = time.monotonic()
        time.sleep(idle)
        c1 = cpu_ticks(); t1 = time.monotonic()
        hz = os.sysconf("SC_CLK_TCK")
        idle_cpu = (c1 - c0) / hz / (t1 - t0) * 100
        idle_rss = rss_kib()
        p.send_signal(signal.SIGTERM); p.wait(timeout=60)
        stop(hub)
        return dict(nsubs=nsubs, s=t, cpu_s=cpu, rss_kib=kib, requests=total - before,
                    idle_cpu_pct=idle_cpu, idle_rss_kib=idle_rss, idle_window_s=t1 - t0)
    finally:
        LEFT.append(work)


def main():
    if "--no-build" not in sys.argv:
        subprocess.run(["cargo", "build", "--locked", "--release", "--workspace", "--bins"], cwd=ROOT, check=True)
    if not os.path.exists("/usr/bin/time"):
        raise SystemExit("GNU time is needed: apt-get install time")
    settle()
    try:
        measure()
    finally:
        clean_up()


def measure():
    rows = []
    plan = [("(a) 1000 cases x 3 x 100 KB", 1000, 3, 100_000),
            ("(b) 20 cases x 3 x 50 MB", 20, 3, 50_000_000),
            ("(c) 1 case x 1 x 1 GiB", 1, 1, 1 << 30)]
    if QUICK:
        plan = [("(a) 100 cases x 3 x 100 KB", 100, 3, 100_000), ("(b) 4 cases x 3 x 50 MB", 4, 3, 50_000_000),
                ("(c) 1 case x 1 x 256 MiB", 1, 1, 256 << 20)]
    for label, cases, files, size in plan:
        if label[1] not in ONLY:
            continue
        for _ in range(REPEAT):
            r = scenario(label, cases, files, size)
            rows.append(r)
            print(json.dumps(r), flush=True)
    e = editor_scale(100 if QUICK else 500) if "e" in ONLY else None
    print(json.dumps(e), flush=True)
    print()
    print("| scenario | bytes | ceiling s (MB/s) | hubee-sync s (MB/s) | throughput / ceiling | time / ceiling | peak RSS | CPU s (fake hub) | spool floor s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        floor = f"{r['spool_floor_s']:.2f}" if r.get("spool_floor_s") else "-"
        print(f"| {r['label']} | {r['bytes']:,} | {r['ceiling_s']:.2f} ({r['ceiling_mbs']:.0f}) | {r['s']:.2f} ({r['mbs']:.0f}) "
              f"| {r['ratio_throughput']:.2f} | {r['ratio_time']:.2f} | {r['rss_kib'] / 1024:.1f} MiB "
              f"| {r['cpu_s']:.2f} ({r['hub_cpu_s']:.2f}) | {floor} |")
    if e is None:
        return
    print()
    print(f"| {e['nsubs']} empty subscriptions, one once | {e['s']:.2f} s wall, {e['cpu_s']:.2f} s CPU, "
          f"{e['requests']} requests, peak RSS {e['rss_kib'] / 1024:.1f} MiB |")
    print(f"| run, idle over {e['idle_window_s']:.0f} s | {e['idle_cpu_pct']:.3f} % of a core, RSS {e['idle_rss_kib'] / 1024:.1f} MiB |")


if __name__ == "__main__":
    main()
