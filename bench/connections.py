"""Health under 2,000 idle keep-alive connections, and how long they stay open.

Why: idle keep-alive connections cost a descriptor each; when they were never
closed, about a thousand of them took the daemon down (health and submit timed
out, EMFILE). Now they are closed after ``daemon.keep_alive_timeout`` and capped by
``daemon.max_connections``; what is left to measure is whether the API stays quick
for a monitor while they are held.

How: starts ``easel run`` on a free loopback port with a fresh state dir,
``keep_alive_timeout`` long enough for every connection to be open at once and
``max_connections`` above their count. It opens ``--connections`` connections (64
at a time), each making one ``GET /api/health`` and then staying idle; then, with
all of them open, it asks ``/api/health`` ``--probes`` times, each on a fresh
connection as a monitor would, one after the other; then it waits until the server
has closed every idle connection.

The last line is ``idle=N open_at_probes=M health_p50_ms=X health_max_ms=Y
(target < 100) closed_after_s=Z (keep_alive_timeout=T)``: ``closed_after_s`` is
from the last connection's answer until the server had closed them all.

Run: ``python bench/connections.py [--connections 2000] [--probes 50]
[--keep-alive 60]``. Figures only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.startup import RESERVED_DESCRIPTORS  # noqa: E402
from tests.connections import (  # noqa: E402
    IdleCrowd,
    health_latency,
    raise_open_files_limit,
    start_daemon,
)

#: The issue's target for ``/api/health`` while the idle connections are held.
TARGET_MS = 100


async def measure(port: int, connections: int, probes: int, keep_alive: float) -> str:
    crowd = IdleCrowd(port)
    async with trio.open_nursery() as watchers:
        await crowd.gather(connections, watchers)
        last_answer = time.monotonic()
        open_at_probes = crowd.open_now
        latencies = []
        for _ in range(probes):
            status, latency = await health_latency(port)
            if status != 200:
                raise SystemExit(f"health answered {status}")
            latencies.append(latency)
            await trio.sleep(0.02)
        await crowd.all_closed()
        closed_after = time.monotonic() - last_answer
    if not all(crowd.outcomes):
        raise SystemExit("a connection got something other than a close from the server")
    return (
        f"idle={connections} open_at_probes={open_at_probes}"
        f" health_p50_ms={statistics.median(latencies):.1f}"
        f" health_max_ms={max(latencies):.1f} (target < {TARGET_MS})"
        f" closed_after_s={closed_after:.1f} (keep_alive_timeout={keep_alive:g})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=50)
    parser.add_argument("--keep-alive", type=float, default=60.0,
                        help="daemon.keep_alive_timeout: longer than opening them all takes")
    args = parser.parse_args()
    max_connections = args.connections + 100
    reason = raise_open_files_limit(max(args.connections + 200,
                                        max_connections + RESERVED_DESCRIPTORS))
    if reason:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="easel-bench-connections-") as tmp:
        daemon, port = start_daemon(
            Path(tmp),
            f"keep_alive_timeout = {args.keep_alive}\nmax_connections = {max_connections}",
        )
        try:
            print(trio.run(measure, port, args.connections, args.probes, args.keep_alive))
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
