#!/usr/bin/env python3
"""A/B of scenario (a) (issue 10) between hubee-sync binaries, run after run, each with its
own ceiling measured just before it (bench/run.py's ceiling and configuration).

    python3 bench/ab.py [--runs=3] [--cases=1000] [--spread] [--tmpfs] BIN [BIN ...]

  --spread   the spool and the state database in a new directory at the root of the
             filesystem: ext4 places such a directory in a block group of its own, away
             from the inodes that earlier runs freed in /var/tmp (without a journal, ext4
             skips every inode freed less than a minute ago when it allocates one: a run
             right after another is slowed by it; BENCHMARKS.md)
  --tmpfs    the spool and the state database in /dev/shm: no disk at all, what is left is
             hubee-sync's own CPU, the network and the fake hub
  extra [hub] keys: HUB_EXTRA="max_parallel_cases = 8"

Prints one line per run: ceiling s, hubee-sync s, ratio, CPU s of hubee-sync (fake hub).
"""
import os, shutil, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--")]
opt = {a.split("=", 1)[0]: (a.split("=", 1) + [""])[1] for a in sys.argv[1:] if a.startswith("--")}
runs = int(opt.get("--runs", "3"))
cases = int(opt.get("--cases", "1000"))
place = "/dev/shm" if "--tmpfs" in opt else ("/" if "--spread" in opt else None)
if not args:
    raise SystemExit(__doc__)


def one(binary):
    work = tempfile.mkdtemp(prefix="hubee-bench-", dir="/var/tmp")
    away = tempfile.mkdtemp(prefix="hubee-bench-", dir=place) if place else None
    try:
        hub, api, tok = bench.start_hub(work, cases, 3, 100_000)
        _, t_ceiling = bench.ceiling(work, api, tok)
        cfg = bench.write_config(work, api, tok, [("bench", "bench")])
        text = open(cfg).read()
        if away:
            text = text.replace(f"sqlite://{work}/state.db", f"sqlite://{away}/state.db")
            text = text.replace(f'spool = "{work}/spool/bench"', f'spool = "{away}/bench"')
        if os.environ.get("HUB_EXTRA"):
            text = text.replace("[hub]\n", "[hub]\n" + os.environ["HUB_EXTRA"] + "\n", 1)
        with open(cfg, "w") as f:
            f.write(text)
        bench.SYNC = os.path.abspath(binary)
        hub0 = bench.proc_cpu_s(hub.pid)
        t, kib, cpu = bench.timed_once(work, cfg)
        hub_cpu = bench.proc_cpu_s(hub.pid) - hub0
        entries = len(os.listdir(os.path.join(away or os.path.join(work, "spool"), "bench", "new")))
        assert entries == cases, f"{entries} entries for {cases} cases"
        bench.stop(hub)
        print(f"{binary}: ceiling {t_ceiling:.2f} s, hubee-sync {t:.2f} s, ratio {t / t_ceiling:.2f}, "
              f"CPU {cpu:.2f} s ({hub_cpu:.2f}), peak RSS {kib / 1024:.1f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if away:
            shutil.rmtree(away, ignore_errors=True)


for _ in range(runs):
    for b in args:
        one(b)
