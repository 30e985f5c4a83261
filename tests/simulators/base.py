"""What every provider simulator shares, so each provider module is only its protocol.

A simulator is a small quart-trio app with an in-memory table of tasks. Tasks move
through their lifecycle purely as a function of their creation time and the wall
clock (``Knobs.duration``), so no background task is needed and a simulator can be
paused, inspected or restarted without losing track of where a task "should" be.

Besides the provider's own routes every simulator serves:

- ``GET /_sim/stats``: a ``SimStats`` snapshot, which is how tests assert things
  like "the daemon never submitted the same job twice" against a subprocess;
- ``GET|POST /_sim/knobs``: read or change the ``Knobs`` of a running simulator;
- ``GET /_sim/files/<task_id>/<index>.png``: the tiny PNG outputs the simulator
  hands out as result URLs, so downloads are real HTTP fetches too.

Two ways to run one: in-process with ``await nursery.start(serve_simulator, sim)``
(async tests; gives direct access to ``sim.stats()``), or as a subprocess with
``start_simulator_process(name, ...)`` (closest to how the daemon meets a provider,
and needed for synchronous clients such as the official ``replicate`` SDK).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import io
import json
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import attrs
import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from PIL import Image
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

#: The repository root: subprocess simulators run from here so ``-m tests.simulators``
#: resolves without installing anything.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Fraction of a task's duration spent queued before it starts running. Providers
#: report a distinct "queued/starting" state; tests need to be able to observe it.
STARTUP_FRACTION = 0.1

_non_negative = [attrs.validators.instance_of(float), attrs.validators.ge(0.0)]


@attrs.define
class Knobs:
    """Behaviour settings of a simulator, changeable while it runs.

    Kept as one small attrs class so a new fault (error rates, throttling, dropped
    connections...) is one more field here plus the few lines that honour it, and
    is reachable both from the CLI and from ``POST /_sim/knobs``.
    """

    #: Seconds from creation until a task finishes.
    duration: float = attrs.field(default=1.0, converter=float, validator=_non_negative)
    #: Seconds to sleep before answering a create request. The task is recorded
    #: *before* the sleep, like a real provider that accepted the job but whose
    #: answer has not reached the client yet: this is the window in which a test
    #: kills the daemon to exercise "did my submission land?" reconciliation.
    create_latency: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    #: Expected API token; ``None`` accepts any (or no) credentials.
    token: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form, for ``GET /_sim/knobs``."""
        return attrs.asdict(self)


@attrs.frozen
class SimStats:
    """A snapshot of what clients have done to a simulator.

    ``max_submissions_per_input`` is the headline number for exactly-once tests:
    the most times one identical (model identity, input) pair was submitted.
    """

    submissions: int = 0
    status_checks: int = 0
    cancels: int = 0
    list_calls: int = 0
    max_submissions_per_input: int = 0
    #: Tasks not yet in a terminal state at snapshot time.
    active: int = 0
    #: All tasks ever created (equal to ``submissions`` unless a fault knob rejects some).
    tasks: int = 0

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form, served at ``GET /_sim/stats``."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimStats:
        """Parse ``GET /_sim/stats``; unknown keys are ignored so newer simulators
        stay readable by older helpers."""
        names = {field.name for field in attrs.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


class Phase(enum.Enum):
    """Provider-neutral lifecycle; each simulator maps it to its own vocabulary."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        """Whether the task can no longer change."""
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELED)


@attrs.define(kw_only=True)
class SimTask:
    """One submitted job. Providers subclass it to keep their request fields.

    The phase is derived from ``created``/``duration`` and the time asked about, so
    a task "runs" without anything running.
    """

    id: str
    #: Canonical submission key (see ``Simulator.submission_key``).
    key: str
    #: Unix time of creation.
    created: float
    #: Seconds from creation to completion, frozen at creation so changing the
    #: knob later does not move tasks already in flight.
    duration: float
    #: How many output files the task produces on success.
    outputs: int = 1
    canceled_at: float | None = None
    #: When set, the task ends FAILED with this message instead of SUCCEEDED.
    #: Nothing sets it yet; it is the hook for a future failure knob.
    error: str | None = None

    @property
    def started(self) -> float:
        """Unix time at which the task leaves the queue."""
        return self.created + self.duration * STARTUP_FRACTION

    @property
    def finished(self) -> float:
        """Unix time at which the task completes unless canceled first."""
        return self.created + self.duration

    def phase(self, now: float) -> Phase:
        """Where the task is at Unix time ``now``."""
        if self.canceled_at is not None:
            return Phase.CANCELED
        if now >= self.finished:
            return Phase.FAILED if self.error is not None else Phase.SUCCEEDED
        if now >= self.started:
            return Phase.RUNNING
        return Phase.QUEUED

    def completed_at(self, now: float) -> float | None:
        """Unix time the task reached a terminal phase, or ``None`` if it has not."""
        if self.canceled_at is not None:
            return self.canceled_at
        return self.finished if now >= self.finished else None

    def cancel(self, now: float) -> bool:
        """Cancel unless already terminal (providers ignore late cancels); report
        whether the cancel took effect."""
        if self.phase(now).terminal:
            return False
        self.canceled_at = now
        return True


def rfc3339(unix: float) -> str:
    """RFC 3339 UTC with microseconds and 'Z', the way Replicate (and most of the
    providers) print timestamps, e.g. ``2024-05-01T12:00:00.123456Z``."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> str:
    """Key-sorted compact JSON: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@lru_cache(maxsize=256)
def png_bytes(seed: str, size: int = 8) -> bytes:
    """A tiny solid-colour PNG whose colour depends on ``seed``.

    Distinct outputs get distinct bytes, so a test can tell which file it got.
    """
    red, green, blue = hashlib.sha256(seed.encode()).digest()[:3]
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (red, green, blue)).save(buffer, format="PNG")
    return buffer.getvalue()


class Simulator:
    """Base of every provider simulator: task table, stats, knobs, files and app.

    Subclasses set ``name`` and implement ``register_routes``; they create tasks
    with ``add_task`` and count polls with ``record_status_check``.
    """

    name: ClassVar[str] = "base"

    def __init__(self, knobs: Knobs | None = None, *, clock: Callable[[], float] = time.time) -> None:
        """``clock`` returns Unix seconds; tests may pass a fake one to step time
        deterministically (e.g. ``actors.clock.wall_now`` under a trio MockClock)."""
        self.knobs = knobs if knobs is not None else Knobs()
        self.clock = clock
        self.tasks: dict[str, SimTask] = {}
        self.submissions = 0
        self.status_checks = 0
        self.cancels = 0
        self.list_calls = 0
        self._per_input: Counter[str] = Counter()

    # -- bookkeeping -------------------------------------------------------------

    @staticmethod
    def submission_key(identity: Any, input: Any) -> str:
        """The key identical submissions share: canonical JSON of model + input."""
        return canonical_json({"model": identity, "input": input})

    def add_task(self, task: SimTask) -> None:
        """Record a newly created task and count it as a submission."""
        self.tasks[task.id] = task
        self.submissions += 1
        self._per_input[task.key] += 1

    def record_status_check(self) -> None:
        """Count one poll of one task's status."""
        self.status_checks += 1

    def stats(self) -> SimStats:
        """Snapshot of the counters, with ``active`` evaluated at the current time."""
        now = self.clock()
        return SimStats(
            submissions=self.submissions,
            status_checks=self.status_checks,
            cancels=self.cancels,
            list_calls=self.list_calls,
            max_submissions_per_input=max(self._per_input.values(), default=0),
            active=sum(1 for task in self.tasks.values() if not task.phase(now).terminal),
            tasks=len(self.tasks),
        )

    async def create_delay(self) -> None:
        """Honour ``Knobs.create_latency``; call after recording the task."""
        if self.knobs.create_latency > 0:
            await trio.sleep(self.knobs.create_latency)

    # -- HTTP ----------------------------------------------------------------------

    @staticmethod
    def base_url() -> str:
        """Scheme and authority of the current request, without trailing slash.

        URLs handed to clients are built from what the client used to reach us, so
        they are right whatever port was picked.
        """
        return f"{request.scheme}://{request.host}"

    def file_url(self, task: SimTask, index: int) -> str:
        """Absolute URL of output ``index`` of ``task`` (valid inside a request)."""
        return f"{self.base_url()}/_sim/files/{task.id}/{index}.png"

    def error_body(self, status: int, detail: str) -> dict[str, Any]:
        """JSON body for errors raised outside the provider's own handlers (unknown
        route, wrong method). Providers override it to match their error shape."""
        return {"detail": detail}

    def error_response(self, status: int, detail: str) -> Response:
        """``error_body`` as a JSON response with ``status``."""
        return Response(
            json.dumps(self.error_body(status, detail)), status=status, content_type="application/json"
        )

    def register_routes(self, app: QuartTrio) -> None:
        """Add the provider's routes. Subclasses must implement it."""
        raise NotImplementedError

    def build_app(self) -> QuartTrio:
        """A fresh quart-trio app serving this simulator."""
        app = QuartTrio(f"sim-{self.name}", static_folder=None)
        app.add_url_rule("/_sim/stats", "sim_stats", self._stats_route, methods=["GET"])
        app.add_url_rule("/_sim/knobs", "sim_knobs", self._knobs_route, methods=["GET", "POST"])
        app.add_url_rule(
            "/_sim/files/<task_id>/<int:index>.png", "sim_file", self._file_route, methods=["GET"]
        )
        app.register_error_handler(HTTPException, self._http_error)
        self.register_routes(app)
        return app

    async def _stats_route(self) -> dict[str, Any]:
        return self.stats().to_json()

    async def _knobs_route(self) -> Response | dict[str, Any]:
        if request.method == "POST":
            changes = await request.get_json(force=True, silent=True)
            names = {field.name for field in attrs.fields(Knobs)}
            if not isinstance(changes, dict) or not set(changes) <= names:
                return self.error_response(422, f"expected a JSON object with keys among {sorted(names)}")
            try:
                self.knobs = attrs.evolve(self.knobs, **changes)
            except (TypeError, ValueError) as exc:
                return self.error_response(422, str(exc))
        return self.knobs.to_json()

    async def _file_route(self, task_id: str, index: int) -> Response:
        # Files exist only once the task has succeeded, as with real providers.
        task = self.tasks.get(task_id)
        if task is None or not 0 <= index < task.outputs or task.phase(self.clock()) is not Phase.SUCCEEDED:
            return self.error_response(404, "Not found.")
        return Response(png_bytes(f"{task_id}/{index}"), status=200, content_type="image/png")

    async def _http_error(self, error: HTTPException) -> Response:
        status = error.code or 500
        return self.error_response(status, error.description or error.name)


def _bind_address(host: str, port: int) -> str:
    """Hypercorn bind string; IPv6 literals need brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


async def serve_simulator(
    app_or_sim: Simulator | QuartTrio,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a simulator until cancelled; ``nursery.start`` returns its base URL.

    Usage: ``url = await nursery.start(serve_simulator, sim)``. Port 0 picks a free
    port; the URL reports the real one (from hypercorn's binds).
    """
    app = app_or_sim.build_app() if isinstance(app_or_sim, Simulator) else app_or_sim
    config = HypercornConfig()
    config.bind = [_bind_address(host, port)]
    config.accesslog = None
    config.loglevel = "WARNING"  # hypercorn's "Running on ..." is noise in test output
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, app, config)
        task_status.started(binds[0])


@contextlib.contextmanager
def start_simulator_process(
    name: str, *args: str, host: str = "127.0.0.1", startup_timeout: float = 30.0
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``python -m tests.simulators NAME --port 0 ARGS...``; yield (process, base URL).

    The process is terminated (then killed) on exit. ``args`` come after the
    defaults, so e.g. ``"--port", "8123"`` overrides the free port. Blocking: from
    async code, prefer ``serve_simulator`` or wrap this in a thread.
    """
    command = [sys.executable, "-m", "tests.simulators", name, "--host", host, "--port", "0", *args]
    # stderr is inherited: pytest captures it and shows it when a test fails.
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = _read_announced_url(process, startup_timeout)
        yield process, url
    finally:
        _stop_process(process)


def _read_announced_url(process: subprocess.Popen[str], timeout: float) -> str:
    """Wait for the ``listening on URL`` line; a reader thread gives us a timeout."""
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise RuntimeError(f"simulator did not announce itself within {timeout} s") from None
    prefix = "listening on "
    if not line.startswith(prefix):
        raise RuntimeError(f"simulator exited ({process.poll()}) or printed {line!r} instead of its URL")
    return line[len(prefix) :].strip()


def _stop_process(process: subprocess.Popen[str]) -> None:
    """Terminate, escalating to kill if the process does not go within a few seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


def fetch_stats(base_url: str) -> SimStats:
    """``GET /_sim/stats`` of a (typically subprocess) simulator."""
    response = httpx.get(f"{base_url}/_sim/stats", timeout=10)
    response.raise_for_status()
    return SimStats.from_json(response.json())
