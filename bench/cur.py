#!/usr/bin/env python3
"""Does a long cur/ slow down every new entry? (issue 10, editor scale)

    python3 bench/cur.py [ENTRIES_IN_CUR] [CASES] [--no-build] [--sync=PATH]   # 50000 300

Before each new entry hubee-sync looks for an entry of the same name the consumer may have
taken into cur/ (`NAME:2,FLAGS`). It starts the fake hub (release) with CASES cases of one
1 KB file, and times `hubee-sync once` twice in the same run: into a spool whose cur/ is
empty, and into one whose cur/ already holds ENTRIES_IN_CUR entries left by a consumer.
A ratio near 1 means the cost per case does not grow with cur/.
"""
import os, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the helpers of bench/run.py)

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
ENTRIES = int(ARGS[0]) if ARGS else 50000
CASES = int(ARGS[1]) if len(ARGS) > 1 else 300
# `--sync=PATH`: another hubee-sync binary (an older build, to compare).
run.SYNC = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--sync=")), run.SYNC)


def once_into(cur_entries):
    work = tempfile.mkdtemp(prefix="hubee-bench-cur-", dir="/var/tmp")
    hub, api, token_url = run.start_hub(work, CASES, 1, 1000)
    try:
        cfg = run.write_config(work, api, token_url, [("certdc", "bench")])
        cur = os.path.join(work, "spool", "certdc", "cur")
        os.makedirs(cur)
        for i in range(cur_entries):
            os.mkdir(os.path.join(cur, f"OLD-{i:06d}~{i:08x}-0000-4000-8000-000000000000:2,S"))
        # Entries the consumer took in earlier days: cur/ last changed a minute ago.
        past = time.time() - 60
        os.utime(cur, (past, past))
        t, kib, cpu = run.timed_once(work, cfg)
        return t, cpu
    finally:
        run.stop(hub)
        subprocess.run(["rm", "-rf", work])


def main():
    if "--no-build" not in sys.argv:
        subprocess.run(["cargo", "build", "--locked", "--release", "--workspace", "--bins"], cwd=run.ROOT, check=True)
    empty_t, empty_cpu = once_into(0)
    full_t, full_cpu = once_into(ENTRIES)
    print(f"| cur/ holds | {CASES} cases, `once` s | CPU s | per case |")
    print("|---|---|---|---|")
    print(f"| 0 entries | {empty_t:.2f} | {empty_cpu:.2f} | {empty_t / CASES * 1000:.2f} ms |")
    print(f"| {ENTRIES:,} entries | {full_t:.2f} | {full_cpu:.2f} | {full_t / CASES * 1000:.2f} ms |")
    print(f"ratio (full / empty): {full_t / empty_t:.2f}")


if __name__ == "__main__":
    main()
