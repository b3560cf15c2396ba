#!/usr/bin/env python3
"""What a scrape of GET /metrics costs, against what a cycle costs (issue 20).

    python3 bench/metrics.py [--quick] [--debug] [--scrapes=N] [--hub=PATH]

Under the load of benchmark (a) (BENCHMARKS.md: 1000 cases x 3 x 100 KB; --quick: 100), it
starts `fake-hubee` and `hubee-sync run` with `[metrics] listen` on a free 127.0.0.1 port
and a schedule of `every 1h`, so that the process runs exactly one cycle and is then idle:
  * the cycle's CPU: the process's user+system CPU (/proc/PID/stat) from start until the
    first cycle is counted in `hubee_sync_cycles_total` (start-up included: a ceiling);
    meanwhile it is scraped every 0.5 s, as a Prometheus would, under load;
  * a scrape's CPU: after the cycle, N scrapes (default 2000) one after the other, the
    process's CPU delta minus the CPU the idle process takes over the same wall time
    (measured just before, without scraping), divided by N.
Prints the figures and the ratio (a scrape's CPU / the cycle's CPU) as a Markdown line for
BENCHMARKS.md. Its work directory is /var/tmp/hubee-metrics-bench-* (not bench/run.py's).
"""
import json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBUG = "--debug" in sys.argv
QUICK = "--quick" in sys.argv
BIN = os.path.join(ROOT, "target/debug" if DEBUG else "target/release")
# `--hub=PATH`: another fake-hubee binary (its CPU is not measured).
HUB = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--hub=")), os.path.join(BIN, "fake-hubee"))
SCRAPES = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--scrapes=")), "2000"))
CASES = 100 if QUICK else 1000


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def value(text, name, contains=""):
    for line in text.splitlines():
        if line.startswith(name + "{") and contains in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def main():
    if not DEBUG and not os.path.exists(os.path.join(BIN, "hubee-sync")):
        subprocess.run(["cargo", "build", "--locked", "--release", "-p", "hubee-sync", "-p", "fake-hubee"], cwd=ROOT, check=True)
    if DEBUG and not (os.path.exists(os.path.join(BIN, "hubee-sync")) and os.path.exists(HUB)):
        subprocess.run(["cargo", "build", "--locked", "-p", "hubee-sync", "-p", "fake-hubee"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="hubee-metrics-bench-", dir="/var/tmp")
    hub = sync = None
    try:
        out = open(os.path.join(work, "hub.out"), "w+")
        hub = subprocess.Popen([HUB, "--listen", "127.0.0.1:0", "--client-id", "bench",
                                "--client-secret", "bench-secret", "--cases", str(CASES), "--files", "3",
                                "--file-size", "100000", "--seed", "7"], stdout=out, stderr=subprocess.DEVNULL)
        for _ in range(6000):
            out.seek(0)
            line = out.read()
            if "listening" in line:
                break
            time.sleep(0.05)
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        with open(os.path.join(work, "secret"), "w") as s:
            s.write("bench-secret\n")
        os.chmod(os.path.join(work, "secret"), 0o600)
        port = free_port()
        cfg = os.path.join(work, "hubee-sync.toml")
        with open(cfg, "w") as c:
            c.write(f'[hub]\napi_url = "{f["api_url"]}"\ntoken_url = "{f["token_url"]}"\neditor_name = "Benchmark"\n\n'
                    f'[state]\nurl = "sqlite://{work}/state.db"\n\n[metrics]\nlisten = "127.0.0.1:{port}"\n\n'
                    f'[[subscription]]\nname = "bench"\nprocess_code = "CERTDC"\nclient_id = "bench"\n'
                    f'client_secret_file = "{work}/secret"\nschedule = "every 1h"\nspool = "{work}/spool/bench"\n')
        os.chmod(cfg, 0o640)
        url = f"http://127.0.0.1:{port}/metrics"
        t0 = time.monotonic()
        sync = subprocess.Popen([os.path.join(BIN, "hubee-sync"), "--config", cfg, "run"],
                                env={**os.environ, "HUBEE_SYNC_LOG": "warn"}, stdout=subprocess.DEVNULL,
                                stderr=open(os.path.join(work, "run.log"), "w"))
        scrapes_under_load = 0
        while True:
            time.sleep(0.5)
            try:
                text = scrape(url)
            except OSError:
                if time.monotonic() - t0 > 600:
                    raise SystemExit("no scrape within 600 s")
                continue
            scrapes_under_load += 1
            if (value(text, "hubee_sync_cycles_total", 'outcome="ok"') or 0) + \
               (value(text, "hubee_sync_cycles_total", 'outcome="failed"') or 0) >= 1:
                break
        cycle_cpu = cpu_s(sync.pid)
        cycle_wall = time.monotonic() - t0
        delivered = value(text, "hubee_sync_teledossiers_delivered_total")
        assert delivered == CASES, f"{delivered} delivered, {CASES} expected"
        time.sleep(2)  # the outbox pass and the gauges' refresh after the cycle
        size = len(scrape(url).encode())
        # Idle, without scraping, for about as long as the scrapes will take.
        t_s = time.monotonic(); c_s = cpu_s(sync.pid)
        for _ in range(SCRAPES):
            scrape(url)
        scrape_wall = time.monotonic() - t_s
        scrape_cpu = cpu_s(sync.pid) - c_s
        c_i = cpu_s(sync.pid)
        time.sleep(scrape_wall)
        idle_cpu = cpu_s(sync.pid) - c_i
        per_scrape = max(scrape_cpu - idle_cpu, 0.0) / SCRAPES
        r = dict(build="debug" if DEBUG else "release", cases=CASES, cycle_cpu_s=cycle_cpu, cycle_wall_s=cycle_wall,
                 scrapes_under_load=scrapes_under_load, scrape_bytes=size, scrapes=SCRAPES, scrapes_wall_s=scrape_wall,
                 scrapes_cpu_s=scrape_cpu, idle_cpu_s=idle_cpu, cpu_per_scrape_ms=per_scrape * 1000,
                 scrape_over_cycle_pct=per_scrape / cycle_cpu * 100)
        print(json.dumps(r), flush=True)
        print()
        print("| build | cases | cycle CPU s (wall s) | scrape size | scrapes | CPU per scrape | scrape / cycle CPU |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {r['build']} | {CASES} | {cycle_cpu:.2f} ({cycle_wall:.1f}) | {size:,} B | {SCRAPES} "
              f"| {per_scrape * 1e6:.0f} µs | {r['scrape_over_cycle_pct']:.4f} % |")
    finally:
        for p in (sync, hub):
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
