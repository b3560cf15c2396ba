#!/usr/bin/env python3
"""A user-space netem (issue 19): this machine's kernel has no sch_netem (`tc qdisc add dev lo
root netem delay 1ms` → "Specified qdisc kind is unknown"), so the 20 ms hub is a TCP
forwarder that delays each direction.

    python3 bench/netem_link.py LISTEN_PORT UPSTREAM_HOST:PORT [--delay-ms 20] [--jitter-ms 5]
                                [--loss 0.002] [--rto-ms 200] [--seed 1]

Every chunk read from one side is written to the other `delay ± jitter` later (seeded
uniform jitter, order kept, as TCP keeps it); each 1448-byte segment is lost with
probability `loss`, which costs what a loss costs TCP: a retransmission stall of `rto` before
that chunk and everything behind it on that connection (head-of-line blocking). At most 4 MiB
are in flight per direction and connection (a window). Prints `netem-link listening port=N`.
"""
import asyncio, os, random, signal, sys, time

args = sys.argv[1:]
opt = {"--delay-ms": 20.0, "--jitter-ms": 5.0, "--loss": 0.002, "--rto-ms": 200.0, "--seed": 1}
pos = []
i = 0
while i < len(args):
    if args[i] in opt:
        opt[args[i]] = float(args[i + 1])
        i += 2
    else:
        pos.append(args[i])
        i += 1
if len(pos) != 2:
    sys.exit(__doc__)
LISTEN = int(pos[0])
UP_HOST, UP_PORT = pos[1].rsplit(":", 1)
DELAY, JITTER = opt["--delay-ms"] / 1000, opt["--jitter-ms"] / 1000
LOSS, RTO = opt["--loss"], opt["--rto-ms"] / 1000
RNG = random.Random(int(opt["--seed"]))
STATS = {"conns": 0, "losses": 0, "bytes": 0}


async def pipe(reader, writer):
    q = asyncio.Queue(maxsize=64)  # 64 chunks of ≤ 64 KiB: the window

    async def pump_in():
        last = 0.0
        while True:
            data = await reader.read(65536)
            if not data:
                await q.put(None)
                return
            at = time.monotonic() + DELAY + RNG.uniform(-JITTER, JITTER)
            segs = (len(data) + 1447) // 1448
            lost = sum(1 for _ in range(segs) if RNG.random() < LOSS)
            if lost:
                STATS["losses"] += lost
                at += RTO * lost
            last = max(last, at)
            await q.put((last, data))

    async def pump_out():
        while True:
            item = await q.get()
            if item is None:
                break
            at, data = item
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            STATS["bytes"] += len(data)
            await writer.drain()
        try:
            writer.write_eof()
        except OSError:
            pass

    t = asyncio.ensure_future(pump_in())
    try:
        await pump_out()
    except (ConnectionError, OSError):
        pass
    finally:
        t.cancel()


async def handle(cr, cw):
    STATS["conns"] += 1
    try:
        ur, uw = await asyncio.open_connection(UP_HOST, int(UP_PORT))
    except OSError:
        cw.close()
        return
    await asyncio.gather(pipe(cr, uw), pipe(ur, cw), return_exceptions=True)
    for w in (cw, uw):
        try:
            w.close()
        except OSError:
            pass


async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", LISTEN, limit=1 << 20)
    port = srv.sockets[0].getsockname()[1]
    print(f"netem-link listening port={port}", flush=True)
    async with srv:
        await srv.serve_forever()


def bye(*_):
    print(f"netem-link: {STATS['conns']} connections, {STATS['bytes']} bytes, {STATS['losses']} segments lost",
          file=sys.stderr, flush=True)
    os._exit(0)


signal.signal(signal.SIGTERM, bye)
signal.signal(signal.SIGINT, bye)
asyncio.run(main())
