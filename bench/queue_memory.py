"""1,000,000 queued jobs: the daemon's memory, and how long a restart takes to be healthy.

Why: a burst of submissions to a slow or stalled provider leaves its jobs QUEUED,
and a queue that held each job whole grew without bound (a probe took RSS from
84 MB to 2 GB with 2,100 large submissions, and a restart timed out while it
reloaded them). The scheduler now keeps one int per queued job and reloads its
queue from a covering index; this bench shows what that costs at a million.

How: the bench writes N QUEUED jobs straight into a fresh SQLite database (seeding
through the HTTP API would measure submission, see ``submit.py``, for many minutes
before the part this bench is about), priorities mixed so the heap has work to
do. They are all the sandbox's, whose section is configured so that it drains
nothing meanwhile: one in-flight slot and a draw that takes an hour, so one job
leaves the queue. Then it starts ``easel run`` on that state directory (what a
restart does: migrate, recover, reload the queue, bind, serve), times how long
from the process's start until ``/api/health`` answers ``ok``, and reads the
process's RSS (``VmRSS`` in ``/proc/PID/status``) at that moment and again once
the reloads the providers' announcements cause have settled.

The last line is ``queued=N healthy_s=X (target <= 10) rss_mb=Y (target <= 300)``;
``rss_mb`` is the larger of the two readings.

Run: ``python bench/queue_memory.py [--jobs 1000000] [--settle 10]``.
Figures only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.store.migrations import connect, migrate  # noqa: E402
from bench.inflight import daemon_config, free_port, rss_mb, start, stop  # noqa: E402

MODEL = "sandbox-image"
TARGET_RSS_MB = 300
TARGET_HEALTHY_S = 10.0


def write_config(state: Path, port: int) -> Path:
    config = state / "easel.toml"
    config.write_text(daemon_config(state, port, drain_timeout=1) + """
[providers.sandbox]
rate = 0.001
burst = 1
max_in_flight = 1
delay = 3600
""")
    return config


def rows(jobs: int) -> Iterator[tuple[Any, ...]]:
    now = time.time()
    rng = random.Random(1)
    for i in range(jobs):
        # Ids in the shape of new_job_id's, in order: the unique index on id then
        # fills by appending, which keeps seeding a million rows under a minute.
        yield (f"gen_{i:020x}", "QUEUED", MODEL, "sandbox", MODEL,
               f"a lighthouse at dusk, study {i}", rng.randint(-3, 3), now, now)


def seed(db: Path, jobs: int) -> None:
    """N QUEUED sandbox jobs, in one transaction (every other column its default)."""
    conn = connect(db)
    migrate(conn)
    # A bench's scratch database: no journal and no fsync while it is filled (the
    # daemon turns WAL back on when it opens it).
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO generation_requests (id, state, model, provider, provider_model,"
        " prompt, priority, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(jobs),
    )
    conn.execute("COMMIT")
    conn.close()


def wait_healthy(process: subprocess.Popen[bytes], base: str, began: float,
                 timeout: float = 300) -> float:
    """Seconds from ``began`` (the process's start) until ``/api/health`` says ok."""
    with httpx.Client(base_url=base, timeout=5) as client:
        while time.monotonic() - began < timeout:
            if process.poll() is not None:
                raise SystemExit(f"easel exited {process.returncode}")
            try:
                response = client.get("/api/health")
                if response.status_code == 200 and response.json()["status"] == "healthy":
                    return time.monotonic() - began
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.02)
    raise SystemExit("easel was not healthy in time")


def queued(base: str) -> int:
    stats = httpx.get(f"{base}/api/health/detailed", timeout=60).json()
    return int(stats["providers"]["sandbox"]["queued"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds after healthy before RSS is read again")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="easel-queue-") as tmp:
        state = Path(tmp)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = write_config(state, port)
        began = time.monotonic()
        seed(state / "easel.db", args.jobs)
        print(f"seeded {args.jobs} queued jobs in {time.monotonic() - began:.1f} s", flush=True)

        began = time.monotonic()
        process = start(config, state / "daemon.log")
        try:
            healthy = wait_healthy(process, base, began)
            rss = rss_mb(process.pid)
            print(f"healthy after {healthy:.2f} s, rss {rss:.0f} MB", flush=True)
            time.sleep(args.settle)
            settled = rss_mb(process.pid)
            print(f"after {args.settle:g} s more: rss {settled:.0f} MB, "
                  f"{queued(base)} jobs in the scheduler's queue", flush=True)
        finally:
            stop(process)
    print(f"queued={args.jobs} healthy_s={healthy:.2f} (target <= {TARGET_HEALTHY_S:g}) "
          f"rss_mb={max(rss, settled):.0f} (target <= {TARGET_RSS_MB})")


if __name__ == "__main__":
    main()
