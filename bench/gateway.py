"""Easel's OpenAI-compatible image endpoint beside LiteLLM's proxy, in one run.

Both gateways stand in front of the same OpenAI simulator (``python -m
tests.simulators openai``, answering at once), and the same request goes through
each: ``POST /v1/images/generations`` ``{"model": "gpt-image-1", "prompt": ...}``
(a new prompt each time). Measured, one target after the other:

- the simulator alone, then LiteLLM's proxy, then Easel: latency at concurrency 1
  (``--requests`` sequential requests after a warm-up); each gateway's *added*
  latency is its p50 / p99 minus the simulator's;
- throughput at concurrency 16 (``--seconds`` of 16 keep-alive clients).

Easel records every request durably (a job row committed to SQLite, its image
stored on disk, its events) before answering; LiteLLM's proxy records nothing
(no database configured). The last line prints both and the ratios against the
targets: Easel's added p50 at most 0.5x LiteLLM's, its throughput at least 3x.

LiteLLM is not a dependency of Easel: the bench installs ``litellm[proxy]`` into
its own virtualenv (``.bench-litellm/`` at the repository root, made once).

    python bench/gateway.py [--requests 200] [--seconds 10] [--litellm-version 1.108.7]
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / ".bench-litellm"
#: The key every hop takes: the simulator's token, and LiteLLM's master key (which
#: must look strong for the proxy to start).
KEY = "sk-" + secrets.token_hex(32)
MODEL = "gpt-image-1"
PATH = "/v1/images/generations"
CONCURRENCY = 16

EASEL_CONFIG = """
[daemon]
bind = ["127.0.0.1:{port}"]
state_dir = "{state_dir}"

[logging]
level = "WARNING"

[providers.sandbox]
enabled = false

[providers.openai]
base_url = "{simulator}/v1"
api_key = "{key}"
rate = 100000
burst = 100000
max_in_flight = 256
"""

LITELLM_CONFIG = """
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {simulator}/v1
      api_key: {key}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_litellm(version: str) -> Path:
    """The ``litellm`` command of the bench's own virtualenv, installed if missing."""
    command = LITELLM_VENV / "bin" / "litellm"
    marker = LITELLM_VENV / f".installed-{version}"
    if not marker.exists():
        print(f"installing litellm[proxy]=={version} into {LITELLM_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet",
                        f"litellm[proxy]=={version}"], check=True)
        marker.touch()
    return command


class Process:
    """A server the bench started, its output in a log file."""

    def __init__(self, name: str, command: list[str], log: Path, port: int,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.port, self.log = name, port, log
        self.proc = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def until_answering(self, timeout: float = 120.0) -> None:
        """Until a real request goes through (the gateway and what is behind it)."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
                try:
                    if (await _request(client, "warm-up")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not answering:\n"
                                       f"{self.log.read_text()[-3000:]}")
                await trio.sleep(0.25)


async def _request(client: httpx.AsyncClient, prompt: str) -> httpx.Response:
    return await client.post(PATH, json={"model": MODEL, "prompt": prompt},
                             headers={"Authorization": f"Bearer {KEY}"})


def percentile_ms(latencies: list[float], p: float) -> float:
    ordered = sorted(latencies)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1] * 1000


async def latencies(url: str, requests: int) -> list[float]:
    """Seconds each of ``requests`` sequential requests took (after 20 unmeasured)."""
    found: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for n in range(20 + requests):
            started = time.perf_counter()
            response = await _request(client, f"a lighthouse {n} {started}")
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
            if n >= 20:
                found.append(time.perf_counter() - started)
    return found


async def throughput(url: str, seconds: float) -> float:
    """Requests a second answered 200 by ``CONCURRENCY`` clients over ``seconds``."""
    done = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        deadline = time.monotonic() + seconds

        async def worker(index: int) -> None:
            nonlocal done
            n = 0
            while time.monotonic() < deadline:
                response = await _request(client, f"a harbour {index} {n}")
                n += 1
                if response.status_code == 200:
                    done += 1

        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for index in range(CONCURRENCY):
                nursery.start_soon(worker, index)
        return done / (time.monotonic() - started)


async def run(args: argparse.Namespace, workdir: Path) -> None:
    litellm = ensure_litellm(args.litellm_version)
    port = free_port()
    simulator = Process("simulator", [sys.executable, "-m", "tests.simulators", "openai",
                                      "--port", str(port), "--duration", "0", "--token", KEY],
                        workdir / "simulator.log", port)
    servers = [simulator]
    try:
        port = free_port()
        config = workdir / "easel.toml"
        config.write_text(EASEL_CONFIG.format(port=port, state_dir=workdir / "easel-state",
                                              simulator=simulator.url, key=KEY))
        easel = Process("easel", [str(Path(sys.executable).parent / "easel"), "run",
                                  "--config", str(config)], workdir / "easel.log", port)
        servers.append(easel)
        port = free_port()
        litellm_config = workdir / "litellm.yaml"
        litellm_config.write_text(LITELLM_CONFIG.format(model=MODEL, simulator=simulator.url,
                                                        key=KEY))
        proxy = Process("litellm", [str(litellm), "--config", str(litellm_config),
                                    "--port", str(port), "--num_workers", "1"],
                        workdir / "litellm.log", port,
                        env={"LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": KEY})
        servers.append(proxy)
        for server in (simulator, easel, proxy):
            await server.until_answering()
        figures: dict[str, tuple[float, float, float]] = {}
        for server in (simulator, proxy, easel):
            found = await latencies(server.url, args.requests)
            rate = await throughput(server.url, args.seconds)
            figures[server.name] = (percentile_ms(found, 50), percentile_ms(found, 99), rate)
            p50, p99, _ = figures[server.name]
            print(f"{server.name:>9}: c=1 p50 {p50:7.2f} ms  p99 {p99:7.2f} ms   "
                  f"c={CONCURRENCY} {rate:7.1f} req/s", flush=True)
    finally:
        for server in servers:
            server.stop()
    base50, base99, _ = figures["simulator"]
    added = {name: (figures[name][0] - base50, figures[name][1] - base99)
             for name in ("litellm", "easel")}
    for name, (p50, p99) in added.items():
        print(f"{name:>9}: added p50 {p50:7.2f} ms  added p99 {p99:7.2f} ms")
    ratio_p50 = added["easel"][0] / added["litellm"][0] if added["litellm"][0] > 0 else math.nan
    ratio_rate = figures["easel"][2] / figures["litellm"][2]
    print(f"easel vs litellm {args.litellm_version}: added p50 {added['easel'][0]:.2f} ms vs "
          f"{added['litellm'][0]:.2f} ms = {ratio_p50:.2f}x (target <= 0.5x); "
          f"c={CONCURRENCY} {figures['easel'][2]:.1f} vs {figures['litellm'][2]:.1f} req/s = "
          f"{ratio_rate:.2f}x (target >= 3x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200,
                        help="measured sequential requests per target (default 200)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help=f"seconds of load at concurrency {CONCURRENCY} (default 10)")
    parser.add_argument("--litellm-version", default="1.108.7",
                        help="the litellm release to install and run (default 1.108.7)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="easel-gateway-") as workdir:
        trio.run(run, args, Path(workdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
