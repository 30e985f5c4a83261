"""Running ``easel run`` as a real process for process-level tests."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class DaemonProcess:
    """One ``python -m daemon run --config FILE`` process, its output in a file."""

    def __init__(self, config: Path, base_url: str, output: Path,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.base_url = base_url
        self.output = output
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> DaemonProcess:
        environ = {**os.environ, **(self.env or {})}
        with open(self.output, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daemon", "run", "--config", str(self.config)],
                cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, env=environ,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"easel exited {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.base_url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"easel did not become healthy:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.output.read_text(errors="replace")[-5000:]

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def submit_many(base_url: str, count: int, prefix: str,
                model: str = "replicate-flux-schnell") -> list[str]:
    """Submit ``count`` jobs from 16 threads (prompts ``"{prefix} {i}"``); their ids."""

    def one(i: int) -> str:
        response = httpx.post(
            f"{base_url}/api/external/generation",
            json={"modelIdentifier": model, "prompt": f"{prefix} {i}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(count)))


def job_states(db: Path) -> dict[str, str]:
    """Job id -> state, read straight from the database (the daemon may be dead)."""
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT id, state FROM generation_requests"))
    finally:
        conn.close()


def wait_all_terminal(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, Any]:
    jobs: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    for job_id in ids:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"job {job_id} not terminal in time: {jobs.get(job_id)}")
            job = client.get(
                f"/api/external/generation/{job_id}", params={"wait": min(remaining, 30)}
            ).json()
            jobs[job_id] = job
            if job["status"] in ("SUCCESS", "FAILED", "CANCELLED"):
                break
    return jobs
