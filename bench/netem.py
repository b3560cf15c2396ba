#!/usr/bin/env python3
"""The hub 20 ms away (issue 19), in ONE run: every figure beside its ceiling over the same link.

    python3 bench/netem.py [--cases 9000] [--seq-seconds 60] [--big 1G] [--bin DIR]
                           [--set KEY=VALUE]… [--also KEY=VALUE[,KEY=VALUE…]]… [--spread N]
                           [--curl-parallel N] [--only=dsb]

The link is bench/netem_link.py (user space: this kernel has no sch_netem) in front of
fake-hubee: 20 ms ± 5 ms each way, 0.2 % of segments lost (a 200 ms retransmission stall each).
  d  the national day: CASES cases × 3 attachments × 100 KiB, `hubee-sync once` with the
     defaults (and the `--set` [hub] keys, e.g. --set max_parallel_downloads=16), then once more
     for each `--also` (its keys on top), then, with `--spread N`, the same cases dealt over N
     subscriptions (an editor's day); the ceiling is curl fetching the same attachments over
     the same link, as many curls side by side as hubee-sync could fetch files at once
     (max_parallel_cases × 4, capped at 64, or --curl-parallel), each reusing its connection,
     output to /dev/null (the link's ceiling, not the disk's);
  s  sequential: `max_parallel_cases = 1`, time-boxed to --seq-seconds, extrapolated to CASES;
  b  one file of --big (1 GiB) against one curl of it over the link.
Work directories in /var/tmp/hubee-netem-* (not bench/run.py's prefix), removed at the end.
Binaries: target/release (cargo build --release --locked) or --bin DIR.
"""
import json, os, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def arg(name, default):
    for a in sys.argv[1:]:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default


BIN = arg("--bin", os.path.join(ROOT, "target/release"))
HUB, SYNC = os.path.join(BIN, "fake-hubee"), os.path.join(BIN, "hubee-sync")
CASES = int(arg("--cases", "9000"))
SEQ_S = float(arg("--seq-seconds", "60"))
BIG = arg("--big", "1G")
ONLY = arg("--only", "dsb")
SETS = [a.split("=", 1)[1] if a.startswith("--set=") else sys.argv[i + 1]
        for i, a in enumerate(sys.argv) if a == "--set" or a.startswith("--set=")]
# `--also KEY=VALUE[,KEY=VALUE…]`: the national day once more with those [hub] keys too (same
# run, same ceiling); each `--also` is one more run.
ALSO = [(a.split("=", 1)[1] if a.startswith("--also=") else sys.argv[i + 1]).split(",")
        for i, a in enumerate(sys.argv) if a == "--also" or a.startswith("--also=")]
SPREAD = int(arg("--spread", "0"))
WORKS = []
SETUPS = []


def wait_line(path, word, what):
    for _ in range(12000):
        with open(path) as f:
            line = f.read()
        if word in line:
            return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


class Setup:
    """fake-hubee with `cases` × `files` × `size`, and the link in front of it."""

    def __init__(self, cases, files, size, spread=0):
        self.spread = spread
        self.work = tempfile.mkdtemp(prefix="hubee-netem-", dir="/var/tmp")
        WORKS.append(self.work)
        SETUPS.append(self)
        out = os.path.join(self.work, "hub.out")
        self.hub = subprocess.Popen([HUB, "--listen", "127.0.0.1:0", "--client-id", "bench", "--client-secret",
                                     "bench-secret", "--cases", str(cases), "--files", str(files), "--file-size",
                                     str(size), "--seed", "7"] + (["--spread", str(spread)] if spread > 1 else []),
                                    stdout=open(out, "w"), stderr=subprocess.DEVNULL)
        f = wait_line(out, "listening", "fake-hubee")
        self.direct = f["api_url"]
        port = self.direct.rsplit(":", 1)[1]
        lout = os.path.join(self.work, "link.out")
        self.lerr = os.path.join(self.work, "link.err")
        self.link = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench/netem_link.py"), "0",
                                      f"127.0.0.1:{port}"], stdout=open(lout, "w"), stderr=open(self.lerr, "w"))
        lport = wait_line(lout, "listening", "netem-link")["port"]
        self.api = f"http://127.0.0.1:{lport}"
        self.token_url = self.api + "/oauth2/token"

    def state(self):
        with urllib.request.urlopen(self.direct + "/_fake/state") as r:
            return json.load(r)

    def stop(self):
        self.link.send_signal(signal.SIGTERM)
        self.link.wait(timeout=30)
        self.hub.send_signal(signal.SIGTERM)
        self.hub.wait(timeout=30)
        return open(self.lerr).read().strip()

    def config(self, extra=()):
        w = self.work
        with open(os.path.join(w, "secret"), "w") as f:
            f.write("bench-secret\n")
        os.chmod(os.path.join(w, "secret"), 0o600)
        hub_extra = "".join(f"{k.strip()} = {v.strip()}\n" for k, v in (s.split("=", 1) for s in list(SETS) + list(extra)))
        subs = [(f"s{i:03d}", f"bench-s{i}") for i in range(self.spread)] if self.spread > 1 else [("bench", "bench")]
        text = (f'[hub]\napi_url = "{self.api}"\ntoken_url = "{self.token_url}"\neditor_name = "Benchmark"\n{hub_extra}\n'
                f'[state]\nurl = "sqlite://{w}/state.db"\n\n')
        for name, client in subs:
            text += (f'[[subscription]]\nname = "{name}"\nprocess_code = "CERTDC"\nclient_id = "{client}"\n'
                     f'client_secret_file = "{w}/secret"\nschedule = "every 5m"\nspool = "{w}/spool/{name}"\n\n')
        path = os.path.join(w, "hubee-sync.toml")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o640)
        return path


def curl_ceiling(s, parallel):
    tok = subprocess.run(["curl", "-s", "-u", "bench:bench-secret", "-d", "scope=SI&grant_type=client_credentials",
                          s.token_url], capture_output=True, check=True).stdout
    token = json.loads(tok)["access_token"]
    urls = [f"{s.api}/teledossiers/v1/cases/{c['id']}/attachments/{a['id']}"
            for c in s.state()["cases"] for a in c.get("attachments", [])]
    parallel = max(1, min(parallel, len(urls)))
    cfgs = []
    for k in range(parallel):
        cfg = os.path.join(s.work, f"curl-{k}.cfg")
        with open(cfg, "w") as f:
            f.write(f'header = "Authorization: Bearer {token}"\n')
            for u in urls[k::parallel]:
                f.write(f'url = "{u}"\noutput = "/dev/null"\n')
        cfgs.append(cfg)
    t0 = time.monotonic()
    ps = [subprocess.Popen(["curl", "-sf", "-K", c]) for c in cfgs]
    for p in ps:
        if p.wait() != 0:
            raise SystemExit("curl failed over the link")
    return len(urls), time.monotonic() - t0


def once(s, extra=(), bound=None):
    cfg = s.config(extra)
    t0 = time.monotonic()
    p = subprocess.Popen([SYNC, "--config", cfg, "once"], env={**os.environ, "HUBEE_SYNC_LOG": "warn"},
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(s.work, "once.err"), "w"))
    try:
        rc = p.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        rc = None
    t = time.monotonic() - t0
    if rc not in (0, None):
        raise SystemExit(f"hubee-sync once failed: {open(os.path.join(s.work, 'once.err')).read()[-2000:]}")
    spools = os.path.join(s.work, "spool")
    done = sum(len(os.listdir(os.path.join(spools, d, "new"))) for d in os.listdir(spools)
               if os.path.isdir(os.path.join(spools, d, "new"))) if os.path.isdir(spools) else 0
    return t, done, rc is None


def effective(key, default):
    for k, v in (x.split("=", 1) for x in SETS):
        if k.strip() == key:
            return int(v)
    return default


def main():
    rows = []
    size = 100 * 1024
    if "d" in ONLY:
        s = Setup(CASES, 3, "100K")
        # As many curls as connections hubee-sync may use for files (cases × downloads, ≤ 64),
        # or --curl-parallel N (e.g. max_parallel_downloads: the files it fetches at once).
        par = int(arg("--curl-parallel", min(64, effective("max_parallel_cases", 16) * 4)))
        n, tc = curl_ceiling(s, par)
        s.stop()
        for extra, spread in [([], 0)] + [(a, 0) for a in ALSO] + ([([], SPREAD)] if SPREAD > 1 else []):
            s = Setup(CASES, 3, "100K", spread)
            t, done, _ = once(s, extra=extra)
            link = s.stop()
            mb = CASES * 3 * size / 1e6
            where = f" over {spread} subscriptions" if spread > 1 else ", one subscription"
            rows.append(f"| national day ({CASES} × 3 × 100 KiB, {mb:.0f} MB){where}, settings: "
                        f"{', '.join(SETS + extra) or 'defaults'} "
                        f"| {t / 60:.2f} min ({done} cases, {mb / t:.1f} MB/s) | curl ×{par}: {tc / 60:.2f} min "
                        f"({n} files, {mb / tc:.1f} MB/s) | {tc / t:.2f}× |")
            print(rows[-1], "  link:", link, flush=True)
    if "s" in ONLY:
        s = Setup(CASES, 3, "100K")
        t, done, cut = once(s, extra=["max_parallel_cases=1"], bound=SEQ_S)
        s.stop()
        per = t / max(done, 1)
        rows.append(f"| sequential (`max_parallel_cases = 1`), {'time-boxed ' + str(int(SEQ_S)) + ' s, ' if cut else ''}"
                    f"{done} cases | {per * 1000:.0f} ms per case → {per * CASES / 60:.1f} min for {CASES} "
                    f"{'(extrapolated)' if cut else ''} | | |")
        print(rows[-1], flush=True)
    if "b" in ONLY:
        s = Setup(1, 1, BIG)
        n, tc = curl_ceiling(s, 1)
        s.stop()
        s = Setup(1, 1, BIG)
        t, done, _ = once(s)
        link = s.stop()
        sz = os.path.getsize(next(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(s.work, "spool/bench/new"))
                                  for f in fs if "attachments" in dp))
        rows.append(f"| one file of {sz / 2**30:.2f} GiB | {t:.1f} s ({sz / t / 1e6:.0f} MB/s) | curl: {tc:.1f} s "
                    f"({sz / tc / 1e6:.0f} MB/s) | {tc / t:.2f}× |")
        print(rows[-1], "  link:", link, flush=True)
    print("\n| scenario (20 ms ± 5 ms each way, 0.2 % loss) | hubee-sync once | ceiling over the same link | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print(r)


try:
    main()
finally:
    for s_ in SETUPS:
        for p in (s_.link, s_.hub):
            if p.poll() is None:
                p.kill()
    for w in WORKS:
        shutil.rmtree(w, ignore_errors=True)
