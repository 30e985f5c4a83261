"""Durable submissions per second through HTTP: Easel against a bare quart-trio handler.

Why: a 202 from ``POST /api/external/generation`` promises the job row is committed
to SQLite (the store commits concurrent writes together, in one transaction, before
any of their callers is answered). This bench measures what that promise costs, by
putting Easel next to the cheapest thing the same stack can do -- a quart-trio
handler served by hypercorn that parses the JSON body and answers 202 -- with the
same load generator, in the same run.

Both servers run as subprocesses and are measured one after the other, never at
the same time, each freshly started for each load generator:

- Easel is ``easel run --config <tmp config>`` (the console script, so the bench
  does not care where the HTTP app lives inside the package), on a free port with
  a fresh state dir and otherwise the shipped defaults: the sandbox provider, INFO
  logging to a JSON file and stderr, the access log included.
- The bare app is ``python bench/submit.py --serve-bare PORT``.

Two load generators drive them:

- ``wrk`` (C, one thread, ``--clients`` keep-alive connections, a Lua script that
  posts a sandbox submission with a new prompt each time and counts answers by
  status). Cheap enough that the server is the limit. Installed from Debian's
  package when missing and the bench runs as root on Debian.
- a Python generator: ``--clients`` trio tasks, each with its own
  ``httpx.AsyncClient`` (one keep-alive connection each). It costs most of a core,
  so it reaches the server's limit only when it has a core of its own.

When ``taskset`` is there and the machine has two CPUs or more, the server runs on
one CPU and the load generator on another, so they do not compete for a core.
Only 202 counts as accepted; anything else is reported as an error. Each target
gets a warm-up, then a measured window; the server's CPU over the window comes
from ``/proc/<pid>/stat`` (all its threads).

``--profile`` instead samples both servers with py-spy under wrk load and prints
where their CPU goes, side by side (see ``bench/stacks.py``).

Run: ``python bench/submit.py`` (``--help`` for the knobs). Figures only; nothing
here asserts on speed.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stacks  # noqa: E402  (bench/stacks.py, beside this file)

SUBMIT_PATH = "/api/external/generation"
HEALTH_PATH = "/api/health"
MODEL = "sandbox-image"
#: Easel's accepted/s as a share of the bare handler's, under wrk (issue 8's target).
TARGET_RATIO = 0.7
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
GENERATORS = ("wrk", "python")

EASEL_CONFIG = """\
# Written by bench/submit.py for one run; the state dir is thrown away afterwards.
# Everything not set here is Easel's shipped default.
[daemon]
bind = ["127.0.0.1:{port}"]
state_dir = "{state_dir}"
drain_timeout = 5

[limits]
# Queued jobs pile up far past what a small host should hold: measure the submit
# path, not the queue-depth refusal.
max_queue_depth = 0
"""

#: ``--sandbox queued``: after the first job the sandbox starts one job per 1000 s,
#: so jobs stay QUEUED and no PNG is drawn during the window. (At one job a second
#: drawing and finalizing cost about 2% of a core, which at a few hundred requests a
#: second is several percent of the CPU per request.)
QUEUED_SANDBOX = """
[providers.sandbox]
rate = 0.001
burst = 1
max_in_flight = 1
"""

#: Posts one sandbox submission per request, a new prompt each time (so nothing
#: keyed on the body can flatter a server), and counts the answers by status.
WRK_SCRIPT = """\
-- Written by bench/submit.py for one run.
local counter = 0
local headers = {{["Content-Type"] = "application/json"}}
statuses = {{}}

function request()
  counter = counter + 1
  local body = string.format('{{"modelIdentifier": "{model}", "prompt": "wrk #%d"}}', counter)
  return wrk.format("POST", "{path}", headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {{}}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local parts = {{}}
  local total = {{}}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + n
    end
  end
  for status, n in pairs(total) do
    table.insert(parts, status .. ":" .. n)
  end
  local e = summary.errors
  io.write(string.format(
    "wrk-result duration_us=%d requests=%d p50_us=%d p99_us=%d connect=%d read=%d"
    .. " write=%d timeout=%d statuses=%s\\n",
    summary.duration, summary.requests, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
end
"""


# --------------------------------------------------------------------------- bare server


def serve_bare(port: int) -> None:
    """The baseline: quart-trio + hypercorn, parse the JSON body, answer 202.

    Uses the hypercorn settings Easel's daemon uses (no access log, an error log,
    graceful_timeout 1 s, keep_alive_timeout 5 s) so the only difference between
    the two targets is what happens inside the app.
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


# --------------------------------------------------------------------------- tools


def find_script(name: str) -> str | None:
    """A console script of this virtualenv (beside the interpreter), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def find_easel() -> str:
    found = find_script("easel")
    if found is None:
        sys.exit("cannot find the `easel` console script (install the project, or --easel PATH)")
    return found


def ensure_wrk() -> str | None:
    """The ``wrk`` binary, installed from Debian's package when it is missing and we
    are root on Debian (``apt-get update; apt-get install -y wrk``); else None, after
    saying how to get it."""
    found = shutil.which("wrk")
    if found is not None:
        return found
    if os.geteuid() == 0 and Path("/etc/debian_version").exists() and shutil.which("apt-get"):
        print("wrk is missing: installing Debian's package "
              "(apt-get update; apt-get install -y wrk) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
            done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"`{' '.join(command)}` failed ({done.returncode}):\n"
                      f"{done.stderr.strip()[-2000:]}", file=sys.stderr)
                break
        found = shutil.which("wrk")
    if found is None:
        print("wrk is not installed, so the C load generator is skipped. On Debian or "
              "Ubuntu: `sudo apt-get install wrk` (the bench does it itself when run as "
              "root); elsewhere install wrk from your package manager.", file=sys.stderr)
    return found


@dataclass(frozen=True)
class Pinning:
    """Which CPU the server and the load generator run on (None: not pinned)."""

    server: int | None = None
    generator: int | None = None

    @classmethod
    def choose(cls, wanted: bool) -> Pinning:
        """Server on the last CPU we may use, load generator on the first; unpinned
        without ``taskset`` or with fewer than two CPUs."""
        if not wanted or shutil.which("taskset") is None:
            return cls()
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls()
        return cls(server=cpus[-1], generator=cpus[0])

    def prefix(self, cpu: int | None) -> list[str]:
        return [] if cpu is None else ["taskset", "-c", str(cpu)]

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (no taskset, fewer than 2 CPUs, or --no-pin)"
        return f"server on CPU {self.server}, load generator on CPU {self.generator} (taskset)"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    state_dir: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float | None:
        """utime + stime of the server process (every thread), from /proc (Linux)."""
        return _stat_cpu(Path(f"/proc/{self.proc.pid}/stat"))

    def threads(self) -> dict[str, tuple[float, int]] | None:
        """CPU seconds and context switches (voluntary + involuntary) of the server's
        live threads by group, from /proc (Linux): ``main`` (the trio thread, where
        every request is parsed, handled and answered), ``trio workers`` (trio's
        ``to_thread`` pool: the store's SQLite calls) and ``other`` (such as the
        logging listener). Trio names its workers at the OS level ("Trio thread N",
        or the job's name while one runs); Python threads keep the process's name.
        A thread that ended meanwhile takes its figures with it."""
        groups: dict[str, tuple[float, int]] = {}
        tasks = Path(f"/proc/{self.proc.pid}/task")
        try:
            process_name = (tasks / str(self.proc.pid) / "comm").read_text()
            for task in tasks.iterdir():
                cpu = _stat_cpu(task / "stat")
                status = (task / "status").read_text().splitlines()
                comm = (task / "comm").read_text()
                switches = sum(int(line.split()[1]) for line in status
                               if "ctxt_switches:" in line)
                group = ("main" if task.name == str(self.proc.pid) else
                         "other" if comm == process_name else "trio workers")
                old_cpu, old_switches = groups.get(group, (0.0, 0))
                groups[group] = (old_cpu + (cpu or 0.0), old_switches + switches)
        except (OSError, ValueError):
            return None
        return groups

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


def _stat_cpu(stat: Path) -> float | None:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen:
    # taskset execs the command, so the pid is the server's own (for /proc/<pid>/stat).
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_path.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def start_bare(workdir: Path, tag: str, pin: Pinning) -> Server:
    port = free_port()
    log_path = workdir / f"bare-{tag}.log"
    command = [*pin.prefix(pin.server), sys.executable, os.path.abspath(__file__),
               "--serve-bare", str(port)]
    return Server("bare quart-trio", _spawn(command, log_path), port, log_path)


def start_easel(workdir: Path, tag: str, pin: Pinning, easel: str, sandbox: str,
                extra: str) -> Server:
    port = free_port()
    state_dir = workdir / f"easel-state-{tag}"
    state_dir.mkdir()
    config = workdir / f"easel-{tag}.toml"
    text = EASEL_CONFIG.format(port=port, state_dir=state_dir)
    config.write_text(text + (QUEUED_SANDBOX if sandbox == "queued" else "") + extra)
    log_path = workdir / f"easel-{tag}.log"
    command = [*pin.prefix(pin.server), easel, "run", "--config", str(config)]
    return Server("easel", _spawn(command, log_path), port, log_path, state_dir)


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


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Usage:
    """The server's CPU seconds (``cpu``: every thread, ended ones too) and, per
    thread group, CPU seconds and context switches (see ``Server.threads``), read
    from /proc at one moment, or the difference of two readings."""

    cpu: float | None
    threads: dict[str, tuple[float, int]] | None

    @classmethod
    def of(cls, server: Server) -> Usage:
        return cls(server.cpu_seconds(), server.threads())

    def since(self, before: Usage) -> Usage:
        cpu = None if self.cpu is None or before.cpu is None else self.cpu - before.cpu
        if self.threads is None or before.threads is None:
            return Usage(cpu, None)
        threads = {}
        for group, (now_cpu, now_switches) in self.threads.items():
            then_cpu, then_switches = before.threads.get(group, (0.0, 0))
            threads[group] = (now_cpu - then_cpu, now_switches - then_switches)
        return Usage(cpu, threads)

    @property
    def main_cpu(self) -> float | None:
        return None if self.threads is None else self.threads.get("main", (0.0, 0))[0]

    @property
    def switches(self) -> int | None:
        return None if self.threads is None else sum(n for _, n in self.threads.values())


@dataclass
class Result:
    name: str
    generator: str
    round: int = 1
    accepted: int = 0
    elapsed: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    errors: Counter = field(default_factory=Counter)
    server: Usage = Usage(None, None)  # over the measured window
    client_cpu: float = 0.0
    load: float = math.nan  # 1-minute load average before the measured window
    stopped: str = ""
    store: dict | None = None  # Easel's store statistics over the measured window

    @property
    def label(self) -> str:
        return f"{self.generator} {self.name} (round {self.round})"

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed else 0.0

    def per_request(self, amount: float | None, scale: float = 1.0) -> float | None:
        if amount is None or not self.accepted:
            return None
        return scale * amount / self.accepted

    @property
    def cpu_per_request_ms(self) -> float | None:
        return self.per_request(self.server.cpu, 1000)


def percentile_ms(latencies: list[float], p: float) -> float:
    """Nearest-rank percentile of latencies in seconds, in milliseconds."""
    if not latencies:
        return math.nan
    ordered = sorted(latencies)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1] * 1000


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


def store_delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    return {"writes": after["writes"] - before["writes"],
            "transactions": after["transactions"] - before["transactions"],
            "largest_batch": after["largest_batch"]}


# --------------------------------------------------------------------------- python load


async def run_python_load(server: Server, *, clients: int, warmup: float, seconds: float,
                          requests: int | None) -> Result:
    """``clients`` tasks post as fast as answers come back.

    Measured: requests *sent* after the warm-up ends, until ``seconds`` have passed
    (or ``requests`` have been sent). Latency is per request, send to full answer.
    """
    await wait_healthy(server)
    result = Result(server.name, "python")
    latencies: list[float] = []
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
                    latencies.append(t1 - t0)
                else:
                    result.errors[str(outcome)] += 1
                    if not isinstance(outcome, int):
                        await trio.sleep(0.05)  # do not spin on a dead server

    async with trio.open_nursery() as nursery:
        for n in range(clients):
            nursery.start_soon(client_task, n)
        await trio.sleep(warmup)
        measuring = True
        result.load = os.getloadavg()[0]
        t_start = time.perf_counter()
        cpu0, usage0 = time.process_time(), Usage.of(server)
        store0 = await store_statistics(server)
        if requests is None:
            await trio.sleep(seconds)
            stop.set()  # requests already sent still finish and count
        # with --requests the tasks return by themselves once the tickets are gone
    # elapsed: from the end of the warm-up to the last measured answer
    result.elapsed = max(t_end - t_start, 1e-9)
    result.client_cpu = time.process_time() - cpu0
    result.server = Usage.of(server).since(usage0)
    result.store = store_delta(store0, await store_statistics(server))
    result.p50_ms = percentile_ms(latencies, 50)
    result.p99_ms = percentile_ms(latencies, 99)
    return result


def measure_python(server: Server, args: argparse.Namespace, pin: Pinning) -> Result:
    """The Python generator in this process, pinned to the generator's CPU meanwhile."""
    affinity = os.sched_getaffinity(0)
    if pin.generator is not None:
        os.sched_setaffinity(0, {pin.generator})
    try:
        return trio.run(lambda: run_python_load(
            server, clients=args.clients, warmup=args.warmup, seconds=args.seconds,
            requests=args.requests))
    finally:
        os.sched_setaffinity(0, affinity)


# --------------------------------------------------------------------------- wrk load


def wrk_command(wrk: str, server: Server, script: Path, *, connections: int,
                seconds: float, pin: Pinning) -> list[str]:
    return [*pin.prefix(pin.generator), wrk, "-t1", f"-c{connections}",
            f"-d{max(1, math.ceil(seconds))}s", "--timeout", "30s", "-s", str(script),
            server.base_url]


def parse_wrk(output: str) -> dict[str, str]:
    """The ``wrk-result key=value ...`` line the Lua script's ``done`` prints."""
    for line in output.splitlines():
        if line.startswith("wrk-result "):
            return dict(part.split("=", 1) for part in line.split()[1:])
    raise RuntimeError(f"wrk printed no result line:\n{output[-2000:]}")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_wrk(server: Server, args: argparse.Namespace, pin: Pinning, wrk: str,
                script: Path, during: Callable[[], subprocess.Popen] | None = None) -> Result:
    """A warm-up run of wrk, then the measured run; ``during`` starts a process (a
    profiler) for the measured window and is waited for afterwards."""
    trio.run(wait_healthy, server)
    seconds = args.seconds  # wrk runs for a duration; --requests is the python generator's
    if args.warmup > 0:
        subprocess.run(wrk_command(wrk, server, script, connections=args.clients,
                                   seconds=args.warmup, pin=pin),
                       capture_output=True, check=False)
    result = Result(server.name, "wrk", load=os.getloadavg()[0])
    store0 = trio.run(store_statistics, server)
    command = wrk_command(wrk, server, script, connections=args.clients, seconds=seconds,
                          pin=pin)
    sidecar = during() if during is not None else None
    client0, usage0 = children_cpu(), Usage.of(server)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    result.server, client1 = Usage.of(server).since(usage0), children_cpu()
    if sidecar is not None:
        sidecar.wait()
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    figures = parse_wrk(done.stdout)
    result.elapsed = int(figures["duration_us"]) / 1e6
    result.p50_ms = int(figures["p50_us"]) / 1000
    result.p99_ms = int(figures["p99_us"]) / 1000
    for pair in filter(None, figures["statuses"].split(",")):
        status, count = pair.split(":")
        if status == "202":
            result.accepted = int(count)
        else:
            result.errors[status] += int(count)
    for kind in ("connect", "read", "write", "timeout"):
        if int(figures[kind]):
            result.errors[f"socket {kind}"] += int(figures[kind])
    result.client_cpu = client1 - client0
    result.store = store_delta(store0, trio.run(store_statistics, server))
    return result


# --------------------------------------------------------------------------- profile


def find_py_spy() -> str:
    found = find_script("py-spy")
    if found is None:
        sys.exit("--profile needs py-spy: `.venv/bin/pip install py-spy` (from PyPI)")
    return found


def py_spy_starter(py_spy: str, server: Server, out: Path, seconds: float,
                   pin: Pinning) -> Callable[[], subprocess.Popen]:
    """Starts py-spy on the server for the measured window: raw (collapsed) stacks,
    one sample per 10 ms, split by thread, on the load generator's CPU so the
    server's stays its own.

    ``--nonblocking`` reads the server without stopping it. A stopped process has
    no thread on the CPU, so py-spy could no longer leave idle threads out and the
    shares would count waiting as work; the price is that a sample's outer frames
    may be torn (the innermost ones, which the categories use, are right)."""
    command = [*pin.prefix(pin.generator), py_spy, "record", "--pid", str(server.proc.pid),
               "--duration", str(max(1, math.ceil(seconds))), "--rate", "100",
               "--format", "raw", "--threads", "--nonblocking", "-o", str(out)]

    def start() -> subprocess.Popen:
        print("profiling:", " ".join(command), flush=True)
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    return start


def print_profiles(results: list[Result], directory: Path) -> None:
    """Each profiled server's CPU by thread, category and function, then the two
    side by side per request."""
    profiled = []
    for r in results:
        raw = directory / ("bare.raw" if r.name.startswith("bare") else "easel.raw")
        if not raw.exists() or not r.accepted or r.server.threads is None:
            continue
        print(f"\nprofile of {r.name} under wrk load ({raw}; sampling perturbs the "
              "figures above):")
        loaded = stacks.load(raw)
        ms_by_group = {group: 1000 * cpu / r.accepted
                       for group, (cpu, _) in r.server.threads.items()}
        stacks.print_summary(loaded, ms_by_group=ms_by_group)
        profiled.append((r.name.split()[0], loaded, ms_by_group))
    if len(profiled) == 2:
        print("\nserver CPU per accepted request by category (innermost frame), "
              "easel against bare:")
        stacks.print_comparison(profiled[1], profiled[0])


# --------------------------------------------------------------------------- report


def _figure(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_table(results: list[Result]) -> None:
    header = (f"{'round':<5} {'generator':<9} {'target':<16} {'accepted/s':>10} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'accepted':>9} {'errors':>6} {'server CPU':>10} "
              f"{'client CPU':>10} {'srv ms/req':>10} {'trio ms/req':>11} "
              f"{'ctxsw/req':>9} {'load1':>6}")
    print(header)
    print("-" * len(header))
    for r in results:
        busy = None if r.server.cpu is None else 100 * r.server.cpu / r.elapsed
        print(f"{r.round:<5} {r.generator:<9} {r.name:<16} {r.rate:>10.1f} {r.p50_ms:>8.1f} "
              f"{r.p99_ms:>8.1f} {r.accepted:>9} {sum(r.errors.values()):>6} "
              f"{_figure(busy, 0) + '%':>10} {100 * r.client_cpu / r.elapsed:>9.0f}% "
              f"{_figure(r.cpu_per_request_ms, 3):>10} "
              f"{_figure(r.per_request(r.server.main_cpu, 1000), 3):>11} "
              f"{_figure(r.per_request(r.server.switches), 2):>9} {r.load:>6.1f}")


def print_report(results: list[Result], args: argparse.Namespace, pin: Pinning) -> None:
    mode = (f"{args.requests} requests" if args.requests is not None
            else f"{args.seconds:g} s")
    print()
    print(f"POST {SUBMIT_PATH}  model={MODEL}  connections={args.clients}  "
          f"warm-up={args.warmup:g} s  measured={mode} per target")
    print("generators: wrk = C, 1 thread, Lua script (new prompt per request); "
          "python = 1 trio thread, one httpx.AsyncClient per connection")
    print(f"machine: {os.cpu_count()} CPUs; {pin.describe()}")
    sandbox = ("rate=0.001 burst=1 max_in_flight=1 (jobs stay QUEUED)"
               if args.sandbox == "queued"
               else "shipped defaults (the sandbox draws PNGs meanwhile)")
    print(f"easel: shipped config, INFO logging; [providers.sandbox] {sandbox}; "
          "a 202 means the row is committed to SQLite")
    print()
    print_table(results)
    for r in results:
        if r.errors:
            detail = ", ".join(f"{k} x{v}" for k, v in r.errors.most_common())
            print(f"  {r.label} non-202 answers: {detail}")
    print("(CPU columns: share of one core over the measured window; srv ms/req = "
          "server CPU per accepted request, all threads; trio ms/req = the same for the "
          "trio (main) thread alone; ctxsw/req = server context switches "
          "per accepted request; load1 = 1-minute load average before it)")
    for r in results:
        if r.server.threads and r.accepted:
            groups = ", ".join(
                f"{group} {1000 * cpu / r.accepted:.3f} ms + {switches / r.accepted:.2f} sw"
                for group, (cpu, switches) in sorted(r.server.threads.items()))
            print(f"  {r.label} per accepted request by thread: {groups}")
    for r in results:
        if r.store and r.store["transactions"]:
            st = r.store
            print(f"  {r.label} store during the window: {st['writes']} writes "
                  f"in {st['transactions']} transactions (mean batch "
                  f"{st['writes'] / st['transactions']:.1f}, largest so far "
                  f"{st['largest_batch']}), {st['transactions'] / r.elapsed:.0f} commits/s")
    for r in results:
        if r.stopped:
            print(f"  {r.label} stopped: {r.stopped}")
    ratios = []
    for generator in GENERATORS:
        pairs = paired(results, generator)
        if not pairs:
            continue
        rates = [easel.rate / bare.rate if bare.rate else math.nan for easel, bare in pairs]
        cpus = [easel.cpu_per_request_ms / bare.cpu_per_request_ms for easel, bare in pairs
                if easel.cpu_per_request_ms and bare.cpu_per_request_ms]
        ratio = statistics.median(rates)
        verdict = ""
        if generator == "wrk":
            verdict = f" (target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'})"
        each = f" (rounds: {' '.join(f'{r:.2f}' for r in rates)})" if len(rates) > 1 else ""
        print(f"{generator}: easel/bare accepted/s = {ratio:.2f}{verdict}{each}")
        if cpus:
            each = f" (rounds: {' '.join(f'{c:.2f}' for c in cpus)})" if len(cpus) > 1 else ""
            cpu = statistics.median(cpus)
            print(f"{generator}: server CPU per request easel/bare = {cpu:.2f}x{each}, "
                  f"i.e. an accepted/s ratio of {1 / cpu:.2f} for servers each on a core "
                  "of its own")
        starved = [r for pair in pairs for r in pair
                   if r.server.cpu is not None and r.server.cpu < 0.9 * r.elapsed]
        if starved:
            print(f"  note: {len(starved)} of the {generator} servers had less than 90% of "
                  "a core (see server CPU): their accepted/s is not their own limit, and "
                  "the server with more busy threads gets the larger share of a contended "
                  "CPU; the CPU-per-request ratio is the fairer figure")
        ratios.append(f"ratio_{generator}={ratio:.2f}")
    if ratios:
        print(" ".join(ratios))


def paired(results: list[Result], generator: str) -> list[tuple[Result, Result]]:
    """(easel, bare) measured with ``generator`` in the same round, round by round."""
    rounds: dict[int, dict[str, Result]] = {}
    for r in results:
        if r.generator == generator:
            rounds.setdefault(r.round, {})[r.name] = r
    return [(by_name["easel"], by_name["bare quart-trio"]) for _, by_name in sorted(rounds.items())
            if "easel" in by_name and "bare quart-trio" in by_name]


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", choices=[*GENERATORS, "both"], default="both",
                        help="load generator(s) to run (both)")
    parser.add_argument("--clients", type=int, default=32,
                        help="concurrent connections (32)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="measured seconds per target (10)")
    parser.add_argument("--requests", type=int, default=None,
                        help="python generator: a fixed number of requests instead of "
                             "--seconds")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unmeasured load first (2)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every generator and target, interleaved; ratios "
                             "are the median of the rounds' (1)")
    parser.add_argument("--only", choices=["easel", "bare"], default=None,
                        help="measure one target only")
    parser.add_argument("--sandbox", choices=["queued", "shipped"], default="queued",
                        help="Easel's sandbox provider: queued (rate 0.001/s: jobs stay "
                             "QUEUED, the default) or the shipped limits (it draws 50 PNGs "
                             "a second during the window)")
    parser.add_argument("--easel-toml", type=Path, metavar="FILE", default=None,
                        help="TOML appended to Easel's config, to measure a setting "
                             "(e.g. [logging] level = \"WARNING\"); not [daemon], nor "
                             "[providers.sandbox] with --sandbox queued")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin server and load generator to separate CPUs")
    parser.add_argument("--profile", type=Path, metavar="DIR", default=None,
                        help="sample both servers with py-spy under wrk load instead; "
                             "keep the raw stacks in DIR and print where the CPU goes")
    parser.add_argument("--easel", default=None, help="path of the `easel` console script")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary state dirs and server logs")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("--clients must be >= 1, --seconds > 0, --warmup >= 0")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be >= 1")
    if args.repeat < 1 or (args.profile is not None and args.repeat != 1):
        parser.error("--repeat must be >= 1, and 1 with --profile")
    return args


def plan(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The generators to run, and the wrk binary when wrk is one of them."""
    wanted = list(GENERATORS) if args.generator == "both" else [args.generator]
    if args.profile is not None:
        wanted = ["wrk"]
    wrk = ensure_wrk() if "wrk" in wanted else None
    if wrk is None and "wrk" in wanted:
        if wanted == ["wrk"]:
            sys.exit("wrk is required for --generator wrk and --profile")
        wanted.remove("wrk")
    return wanted, wrk


class _Failed(Exception):
    """One measurement failed (already reported); the figures so far are printed."""


def run_one(generator: str, target: str, round_: int, workdir: Path,
            args: argparse.Namespace, pin: Pinning, easel_bin: str, extra: str,
            wrk: str | None, script: Path, py_spy: str | None) -> Result | None:
    """Start ``target``, load it with ``generator``, stop it; None when it failed."""
    tag = f"{round_}-{generator}-{target}"
    server = (start_bare(workdir, tag, pin) if target == "bare" else
              start_easel(workdir, tag, pin, easel_bin, args.sandbox, extra))
    result = None
    try:
        print(f"{generator}: measuring {server.name} on {server.base_url}"
              f"{f' (round {round_})' if args.repeat > 1 else ''} ...", flush=True)
        if generator == "python":
            result = measure_python(server, args, pin)
        else:
            during = None
            if args.profile is not None and py_spy is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                during = py_spy_starter(py_spy, server, args.profile / f"{target}.raw",
                                        args.seconds, pin)
            assert wrk is not None
            result = measure_wrk(server, args, pin, wrk, script, during)
        result.round = round_
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"{server.name}: {exc}", file=sys.stderr)
    finally:
        # Easel drains up to drain_timeout (5 s) plus hypercorn's graceful 1 s.
        stopped = server.stop(timeout=15.0)
        if result is not None:
            result.stopped = stopped
            if server.state_dir is not None:
                result.stopped += "; jobs left: " + queued_jobs(server.state_dir)
        else:
            print(f"{server.name} stopped: {stopped}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return 0

    easel_bin = args.easel or find_easel()
    generators, wrk = plan(args)
    py_spy = find_py_spy() if args.profile is not None else None
    pin = Pinning.choose(args.pin)
    workdir = Path(tempfile.mkdtemp(prefix="easel-bench-"))
    script = workdir / "submit.lua"
    script.write_text(WRK_SCRIPT.format(model=MODEL, path=SUBMIT_PATH))
    targets = [t for t in ("bare", "easel") if args.only in (None, t)]
    extra = "" if args.easel_toml is None else "\n" + args.easel_toml.read_text()

    results: list[Result] = []
    try:
        for round_ in range(1, args.repeat + 1):
            for generator in generators:
                for target in targets:
                    result = run_one(generator, target, round_, workdir, args, pin,
                                     easel_bin, extra, wrk, script, py_spy)
                    if result is None:
                        raise _Failed
                    results.append(result)
        failed = False
    except _Failed:
        failed = True
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if results:
        print_report(results, args, pin)
    if args.profile is not None and results:
        print_profiles(results, args.profile)
    return 1 if failed else 0


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


if __name__ == "__main__":
    sys.exit(main())
