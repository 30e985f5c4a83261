"""Durable submissions per second through HTTP: Easel against a bare quart-trio handler.

Why: a 202 from ``POST /api/external/generation`` promises the job row is committed
to SQLite (the store group-commits concurrent writes, DESIGN section 4). This bench
measures what that promise costs, by putting Easel next to the cheapest thing the
same stack can do -- a quart-trio handler served by hypercorn that parses the JSON
body and answers 202 -- with the same load generator, in the same run.

Both servers run as subprocesses (Easel as ``easel run --config <tmp config>`` on a
free port with a fresh state dir; the bare app as ``python bench/submit.py
--serve-bare PORT``) and are measured one after the other, never at the same time.
The load generator is one process: ``--clients`` trio tasks, each with its own
``httpx.AsyncClient`` (one keep-alive connection each), a warm-up, then a fixed
duration (``--seconds``) or a fixed number of requests (``--requests``). Only 202
counts as accepted; anything else is reported as an error.

Easel is configured so that the sandbox provider drains slowly (rate 1/s, burst 1,
one call in flight): almost every job stays QUEUED, so the figures are about the
submission path, not about drawing PNGs.

Run: ``python bench/submit.py`` (``--help`` for the knobs). Figures only; nothing
here asserts on speed.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

SUBMIT_PATH = "/api/external/generation"
HEALTH_PATH = "/api/health"
MODEL = "sandbox-image"
TARGET_RATIO = 0.6
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

EASEL_CONFIG = """\
# Written by bench/submit.py for one run; the state dir is thrown away afterwards.
[daemon]
bind = ["127.0.0.1:{port}"]
state_dir = "{state_dir}"
drain_timeout = 5

[logging]
file = ""
level = "WARNING"

# Slow to drain on purpose: jobs stay QUEUED, the bench measures submission only.
[providers.sandbox]
rate = 1
burst = 1
max_in_flight = 1
"""


# --------------------------------------------------------------------------- bare server


def serve_bare(port: int) -> None:
    """The baseline: quart-trio + hypercorn, parse the JSON body, answer 202.

    Uses the same hypercorn settings as Easel (daemon/service.py) so the only
    difference between the two targets is what the handler does.
    """
    import json
    import logging
    import uuid

    import hypercorn.config
    import hypercorn.trio
    from quart import Response, request
    from quart_trio import QuartTrio

    logging.basicConfig(level=logging.WARNING)
    app = QuartTrio("bare")

    @app.post(SUBMIT_PATH)
    async def submit() -> Response:
        body = json.loads(await request.get_data(cache=False))
        answer = {"id": uuid.uuid4().hex, "status": "PENDING",
                  "modelIdentifier": body.get("modelIdentifier")}
        return Response(json.dumps(answer), status=202, content_type="application/json")

    @app.get(HEALTH_PATH)
    async def health() -> Response:
        return Response('{"status": "ok"}', status=200, content_type="application/json")

    hc = hypercorn.config.Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("bare.http")
    hc.graceful_timeout = 1.0
    hc.keep_alive_timeout = 5.0

    async def main() -> None:
        stop = trio.Event()

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_signal)
            await hypercorn.trio.serve(app, hc, shutdown_trigger=stop.wait)
            nursery.cancel_scope.cancel()

    trio.run(main)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_easel() -> str:
    beside = Path(sys.executable).parent / "easel"
    if beside.exists():
        return str(beside)
    found = shutil.which("easel")
    if found is None:
        sys.exit("cannot find the `easel` console script (install the project, or --easel PATH)")
    return found


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    note: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float | None:
        """utime + stime of the server process, from /proc (Linux only)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float) -> str:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns what happened."""
        if self.proc.poll() is not None:
            return f"had already exited ({self.proc.returncode})"
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
            return f"SIGTERM -> exit {rc} in {time.monotonic() - started:.1f}s"
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
            return f"SIGTERM ignored for {timeout:.0f}s -> SIGKILL (exit {rc})"


def start_bare(workdir: Path) -> Server:
    port = free_port()
    log_path = workdir / "bare.log"
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve-bare", str(port)],
        stdin=subprocess.DEVNULL, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server("bare quart-trio", proc, port, log_path)


def start_easel(workdir: Path, easel: str) -> Server:
    port = free_port()
    state_dir = workdir / "easel-state"
    state_dir.mkdir()
    config = workdir / "easel-bench.toml"
    config.write_text(EASEL_CONFIG.format(port=port, state_dir=state_dir))
    log_path = workdir / "easel.log"
    proc = subprocess.Popen(
        [easel, "run", "--config", str(config)],
        stdin=subprocess.DEVNULL, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server("easel", proc, port, log_path)


async def wait_healthy(server: Server, timeout: float = 30.0) -> None:
    deadline = trio.current_time() + timeout
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as client:
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited ({server.proc.returncode}) "
                                   f"before it was healthy:\n{server.log_tail()}")
            try:
                if (await client.get(HEALTH_PATH)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if trio.current_time() > deadline:
                raise RuntimeError(f"{server.name} not healthy after {timeout:.0f}s:\n"
                                   f"{server.log_tail()}")
            await trio.sleep(0.1)


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    name: str
    accepted: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, accepted only
    errors: Counter = field(default_factory=Counter)
    server_cpu: float | None = None
    client_cpu: float = 0.0
    stopped: str = ""
    store: dict | None = None  # Easel's store statistics over the measured window

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed else 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of accepted latencies, in milliseconds."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1] * 1000


async def run_load(server: Server, *, clients: int, warmup: float, seconds: float,
                   requests: int | None) -> Result:
    """``clients`` tasks post as fast as answers come back.

    Measured: requests *sent* after the warm-up ends, until ``seconds`` have passed
    (or ``requests`` have been sent). Latency is per request, send to full answer.
    """
    result = Result(server.name)
    measuring = False
    stop = trio.Event()
    sent_measured = 0
    seq = 0
    t_start = t_end = 0.0

    async def client_task(n: int) -> None:
        nonlocal sent_measured, seq, t_end
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits,
                                     timeout=30.0) as client:
            while not stop.is_set():
                counted = measuring
                if counted:
                    if requests is not None and sent_measured >= requests:
                        return
                    sent_measured += 1
                seq += 1
                payload = {"modelIdentifier": MODEL, "prompt": f"bench {n} #{seq}"}
                t0 = time.perf_counter()
                try:
                    response = await client.post(SUBMIT_PATH, json=payload)
                    outcome = response.status_code
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                t1 = time.perf_counter()
                if not counted:
                    continue
                t_end = max(t_end, t1)
                if outcome == 202:
                    result.accepted += 1
                    result.latencies.append(t1 - t0)
                else:
                    result.errors[str(outcome)] += 1
                    if not isinstance(outcome, int):
                        await trio.sleep(0.05)  # do not spin on a dead server

    cpu0 = server_cpu0 = store0 = None
    async with trio.open_nursery() as nursery:
        for n in range(clients):
            nursery.start_soon(client_task, n)
        await trio.sleep(warmup)
        measuring = True
        t_start = time.perf_counter()
        cpu0, server_cpu0 = time.process_time(), server.cpu_seconds()
        store0 = await store_statistics(server)
        if requests is None:
            await trio.sleep(seconds)
            stop.set()  # requests already sent still finish and count
        # with --requests the tasks return by themselves once the tickets are gone
    # elapsed: from the end of the warm-up to the last measured answer
    result.elapsed = max(t_end - t_start, 1e-9)
    result.client_cpu = time.process_time() - cpu0
    server_cpu1 = server.cpu_seconds()
    if server_cpu0 is not None and server_cpu1 is not None:
        result.server_cpu = server_cpu1 - server_cpu0
    store1 = await store_statistics(server)
    if store0 is not None and store1 is not None:
        result.store = {"writes": store1["writes"] - store0["writes"],
                        "transactions": store1["transactions"] - store0["transactions"],
                        "largest_batch": store1["largest_batch"]}
    return result


async def store_statistics(server: Server) -> dict | None:
    """Easel's group-commit counters from /api/health/detailed; None for the bare app
    or when the endpoint does not answer them (it is admin-only where keys are set)."""
    if server.name != "easel":
        return None
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5.0) as client:
            response = await client.get("/api/health/detailed")
        store = response.json()["store"]
        return {k: int(store[k]) for k in ("writes", "transactions", "largest_batch")}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


async def measure(server: Server, args: argparse.Namespace) -> Result:
    await wait_healthy(server)
    return await run_load(server, clients=args.clients, warmup=args.warmup,
                          seconds=args.seconds, requests=args.requests)


def queued_jobs(state_dir: Path) -> str:
    """How many jobs the Easel run left per state, read after it stopped."""
    import sqlite3

    db = state_dir / "easel.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT state, count(*) FROM generation_requests GROUP BY state").fetchall()
    except sqlite3.Error as exc:
        return f"(could not read {db}: {exc})"
    return ", ".join(f"{state}={count}" for state, count in sorted(rows)) or "(no jobs)"


# --------------------------------------------------------------------------- report


def print_report(results: list[Result], args: argparse.Namespace) -> None:
    mode = (f"{args.requests} requests" if args.requests is not None
            else f"{args.seconds:g} s")
    print()
    print(f"POST {SUBMIT_PATH}  model={MODEL}  clients={args.clients}  "
          f"warm-up={args.warmup:g} s  measured={mode} per target")
    print("load generator: 1 process, 1 trio thread, one httpx.AsyncClient "
          "(one keep-alive connection) per client")
    print(f"machine: {os.cpu_count()} CPUs; the load generator's CPU competes with the "
          "server under test (see client CPU column)")
    print("easel: [providers.sandbox] rate=1 burst=1 max_in_flight=1, so almost every "
          "job stays QUEUED; a 202 means the row is committed to SQLite")
    print()
    header = (f"{'target':<16} {'accepted/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'accepted':>9} {'errors':>6} {'server CPU':>10} {'client CPU':>10} "
              f"{'srv ms/req':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        errors = sum(r.errors.values())
        srv = "n/a" if r.server_cpu is None else f"{100 * r.server_cpu / r.elapsed:.0f}%"
        per_req = ("n/a" if r.server_cpu is None or not r.accepted
                   else f"{1000 * r.server_cpu / r.accepted:.2f}")
        cli = f"{100 * r.client_cpu / r.elapsed:.0f}%"
        print(f"{r.name:<16} {r.rate:>10.1f} {r.percentile(50):>8.1f} "
              f"{r.percentile(99):>8.1f} {r.accepted:>9} {errors:>6} {srv:>10} "
              f"{cli:>10} {per_req:>10}")
    for r in results:
        if r.errors:
            detail = ", ".join(f"{k} x{v}" for k, v in r.errors.most_common())
            print(f"  {r.name} non-202 answers: {detail}")
    print("(CPU columns: share of one core over the measured window; "
          "srv ms/req = server CPU per accepted request)")
    for r in results:
        if r.store and r.store["transactions"]:
            st = r.store
            print(f"  {r.name} store during the window: {st['writes']} writes in "
                  f"{st['transactions']} transactions (mean batch "
                  f"{st['writes'] / st['transactions']:.1f}, largest so far "
                  f"{st['largest_batch']}), {st['transactions'] / r.elapsed:.0f} commits/s")
    for r in results:
        if r.stopped:
            print(f"  {r.name} stopped: {r.stopped}")
    by_name = {r.name: r for r in results}
    easel, bare = by_name.get("easel"), by_name.get("bare quart-trio")
    if easel and bare:
        ratio = easel.rate / bare.rate if bare.rate else math.nan
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        print(f"target: easel >= {TARGET_RATIO}x bare accepted/s ({verdict})")
        print(f"ratio={ratio:.2f}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured seconds per target (10)")
    parser.add_argument("--requests", type=int, default=None,
                        help="measure a fixed number of requests instead of --seconds")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unmeasured load first (2)")
    parser.add_argument("--only", choices=["easel", "bare"], default=None,
                        help="measure one target only")
    parser.add_argument("--easel", default=None, help="path of the `easel` console script")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary state dir and server logs")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--clients must be >= 1, --seconds > 0, --warmup >= 0")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return 0

    easel_bin = args.easel or find_easel()
    workdir = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    starters = []
    if args.only in (None, "bare"):
        starters.append(lambda: start_bare(workdir))
    if args.only in (None, "easel"):
        starters.append(lambda: start_easel(workdir, easel_bin))

    results: list[Result] = []
    failed = False
    try:
        for start in starters:
            server = start()
            result = None
            try:
                print(f"measuring {server.name} on {server.base_url} ...", flush=True)
                result = trio.run(measure, server, args)
            except (RuntimeError, KeyboardInterrupt) as exc:
                print(f"{server.name}: {exc}", file=sys.stderr)
                failed = True
                break
            finally:
                # Easel drains up to drain_timeout (5 s) plus hypercorn's graceful 1 s.
                stopped = server.stop(timeout=15.0)
                if result is not None:
                    result.stopped = stopped
                    if server.name == "easel":
                        result.stopped += "; jobs left: " + queued_jobs(workdir / "easel-state")
                    results.append(result)
                else:
                    print(f"{server.name} stopped: {stopped}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if results:
        print_report(results, args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
