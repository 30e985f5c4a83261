"""100,000 running provider tasks: the daemon's memory, idle CPU and resume time.

Why: video tasks run for many minutes, so a busy Easel holds a very large number of
RUNNING jobs at once, each under a poller's timer. What that costs while nothing
finishes (memory, CPU spent waiting and checking), and how long a restart takes to
put every task back under a poller, decide whether one process can carry the load.

How: the bench writes N jobs straight into a fresh SQLite database in the RUNNING
state, as the provider actor would have left them: each with an async sandbox task
(``sandbox-video``, whose state is derived from its start time and duration, so
the tasks are real to the daemon and survive its restart) that runs for a day, and
its next status check spread evenly over one polling interval. Seeding through the
HTTP API would measure submission (see ``submit.py``) for minutes before the part
this bench is about. Then it:

1. starts ``easel run`` and times how long until ``/api/health/detailed`` reports
   every task under the sandbox poller (first start, cold page cache);
2. lets it settle, then samples the process's CPU time over ``--measure`` seconds
   (while pollers check their due tasks at the configured interval) and its RSS;
3. SIGKILLs it, starts it again, and times the resume once more: that is
   ``resume_s``, the figure for "after a restart".

The last line is ``rss_mb=X idle_cpu_pct=Y resume_s=Z`` (CPU in % of one core).
Targets (issue "Speak every provider"): <= 500 MB, < 5 %, <= 10 s.

Run: ``python bench/inflight.py [--tasks 100000] [--interval 600] [--measure 20]``.
Figures only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.jobs import Job, JobState, new_job_id  # noqa: E402
from actors.store.jobs import to_row  # noqa: E402
from actors.store.migrations import connect, migrate  # noqa: E402

MODEL = "long-video"
DAY = 86_400.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_config(state: Path, port: int, drain_timeout: float = 5) -> str:
    """The ``[daemon]`` and ``[logging]`` tables of a bench's daemon on ``port``."""
    return f"""
[daemon]
bind = ["127.0.0.1:{port}"]
state_dir = "{state}"
drain_timeout = {drain_timeout:g}

[logging]
level = "WARNING"
"""


def write_config(state: Path, port: int, tasks: int, interval: float) -> Path:
    config = state / "easel.toml"
    config.write_text(daemon_config(state, port) + f"""
[providers.sandbox]
rate = 500
burst = 500
max_in_flight = {tasks + 1000}
video_duration = {DAY}

[models.{MODEL}]
provider = "sandbox"
provider_model = "sandbox-video"
kind = "video"
expected_duration = {DAY}
max_duration = {2 * DAY}
polling = {{ strategy = "fixed", interval = {interval} }}
""")
    return config


def seed(db: Path, tasks: int, interval: float) -> None:
    """N RUNNING jobs with day-long sandbox tasks, next checks spread over one interval."""
    now = time.time()
    rng = random.Random(1)
    conn = connect(db)
    migrate(conn)
    rows = []
    for i in range(tasks):
        job_id = new_job_id()
        job = Job(
            id=job_id, model=MODEL, provider="sandbox", provider_model="sandbox-video",
            prompt=f"a slow pan over field {i}", state=JobState.RUNNING,
            provider_task_id=f"sbv:{job_id}:{now:.3f}:{DAY:g}",
            created_at=now, submitting_at=now, started_at=now, updated_at=now,
            next_poll_at=now + rng.uniform(0, interval),
        )
        row = to_row(job)
        row.pop("seq")
        rows.append(row)
    names = ", ".join(rows[0])
    marks = ", ".join(f":{n}" for n in rows[0])
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(f"INSERT INTO generation_requests ({names}) VALUES ({marks})", rows)
    conn.execute("COMMIT")
    conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the daemon has not exited within 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_resumed(process: subprocess.Popen[bytes], base: str, tasks: int,
                 timeout: float = 300) -> float:
    """Seconds from now until every task is under the poller."""
    began = time.monotonic()
    with httpx.Client(base_url=base, timeout=5) as client:
        while time.monotonic() - began < timeout:
            if process.poll() is not None:
                raise SystemExit(f"easel exited {process.returncode}")
            try:
                stats = client.get("/api/health/detailed").json()
                if stats["providers"]["sandbox"]["polling"] >= tasks:
                    return time.monotonic() - began
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.05)
    raise SystemExit("tasks were not all resumed in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--interval", type=float, default=600.0,
                        help="seconds between status checks of one task")
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--measure", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="easel-inflight-") as tmp:
        state = Path(tmp)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = write_config(state, port, args.tasks, args.interval)
        began = time.monotonic()
        seed(state / "easel.db", args.tasks, args.interval)
        print(f"seeded {args.tasks} running tasks in {time.monotonic() - began:.1f} s",
              flush=True)

        process = start(config, state / "daemon.log")
        try:
            first = wait_resumed(process, base, args.tasks)
            print(f"first start: all tasks under the poller after {first:.2f} s", flush=True)
            time.sleep(args.settle)
            cpu0, t0 = cpu_seconds(process.pid), time.monotonic()
            time.sleep(args.measure)
            cpu = (cpu_seconds(process.pid) - cpu0) / (time.monotonic() - t0) * 100
            rss = rss_mb(process.pid)
            checks = args.tasks / args.interval
            print(f"waiting: rss_mb={rss:.0f} cpu_pct={cpu:.1f} "
                  f"(about {checks:.0f} status checks/s at one per {args.interval:g} s)",
                  flush=True)
            process.send_signal(signal.SIGKILL)
            process.wait()
            process = start(config, state / "daemon.log")
            resume = wait_resumed(process, base, args.tasks)
            time.sleep(1)
            rss = max(rss, rss_mb(process.pid))
        finally:
            stop(process)
        print(f"rss_mb={rss:.0f} idle_cpu_pct={cpu:.1f} resume_s={resume:.2f}")


if __name__ == "__main__":
    main()
