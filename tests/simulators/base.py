"""What every provider simulator shares, so each provider module is only its protocol.

A simulator is a small quart-trio app with an in-memory table of tasks. Tasks move
through their lifecycle purely as a function of their creation time and the
simulator's clock (``SimTask.duration``), so no background task is needed to "run"
them and a simulator can be paused, inspected or restarted without losing track of
where a task "should" be. The only background work is outgoing webhooks, which
sleep until the moment a task changes state.

Besides the provider's own routes every simulator serves:

- ``GET /_sim/stats``: a ``SimStats`` snapshot, which is how tests assert things
  like "the daemon never submitted the same job twice" against a subprocess;
- ``GET|POST /_sim/knobs``: read or change the ``Knobs`` of a running simulator;
- ``GET /_sim/files/<task_id>/<index>.png``: the tiny PNG outputs the simulator
  hands out as result URLs, so downloads are real HTTP fetches too.

Writing a provider simulator (the whole contract; ``replicate.py`` is the example):

- Subclass ``Simulator``, set ``name``, and register every provider route in
  ``register_routes`` with ``self.add_route(app, rule, handler, kind=...)``. That one
  line gives the route authentication (``authorized``/``auth_error_response``),
  request counting and every fault knob. ``kind`` is one of ``ROUTE_KINDS``. Never
  use ``app.add_url_rule`` for a provider route: it would bypass the faults.
- Create tasks with ``self.create_task(TaskClass, id=..., key=..., **fields)``: it
  stamps ``created``, draws ``duration`` (lognormal) and ``error`` (``fail_rate``),
  records the submission and schedules the task's webhooks. Cancel with
  ``self.cancel_task(task)``.
- Override how errors look: ``error_body`` (generic shape), and where the provider
  documents something specific ``rate_limit_response``, ``server_error_response``,
  ``too_many_active_response``, ``auth_error_response``, ``task_failed_message``,
  ``malformed_body``; and ``authorized`` for the provider's auth header.
- Webhooks: set ``SimTask.webhook`` and implement ``webhook_request(task, event)``;
  ``webhook_schedule`` says which events fire when (default: "completed" at
  ``task.finished``, and at cancel time via ``cancel_task``).
- Extra CLI options: classmethods ``add_arguments(parser)`` and
  ``from_args(args, knobs)``; register the class in ``__main__.SIMULATORS``.

Two ways to run one: in-process with ``await nursery.start(serve_simulator, sim)``
(async tests; gives direct access to ``sim.stats()``), or as a subprocess with
``start_simulator_process(name, ...)`` (closest to how the daemon meets a provider,
and needed for synchronous clients such as the official ``replicate`` SDK).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import enum
import hashlib
import hmac
import io
import json
import logging
import math
import queue
import random
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs
import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from PIL import Image
from quart import Response, current_app, has_request_context, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

#: The repository root: subprocess simulators run from here so ``-m tests.simulators``
#: resolves without installing anything.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

#: Fraction of a task's duration spent queued before it starts running. Providers
#: report a distinct "queued/starting" state; tests need to be able to observe it.
STARTUP_FRACTION = 0.1

#: What a provider route does, as passed to ``Simulator.add_route(kind=...)``:
#: ``create`` (submit a task), ``status`` (poll one task), ``cancel``, ``list``
#: (enumerate tasks, used for reconciliation) and ``other`` (anything else: credits,
#: webhook secret...). Fault knobs apply to the kinds in ``Knobs.fault_routes``.
ROUTE_KINDS = ("create", "status", "cancel", "list", "other")


class Fault(enum.Enum):
    """Everything a simulator can do wrong on purpose; keys of ``SimStats.faults``."""

    #: 429 with ``Retry-After`` (``Knobs.rate_limit_rate``).
    RATE_LIMIT = "rate_limit"
    #: 500, 502 or 503 (``Knobs.error_5xx_rate``).
    SERVER_ERROR = "server_error"
    #: No answer for ``Knobs.hang_seconds``, then the real one (``Knobs.timeout_rate``).
    TIMEOUT = "timeout"
    #: 200 whose body is not valid JSON (``Knobs.malformed_rate``).
    MALFORMED = "malformed"
    #: Connection closed with no response (``Knobs.reset_rate``).
    RESET = "reset"
    #: A create refused because ``Knobs.max_active`` tasks are still running.
    TOO_MANY_ACTIVE = "too_many_active"
    #: A task created to end FAILED (``Knobs.fail_rate``).
    TASK_FAILED = "task_failed"
    #: An error answer echoing the request's credentials (``Knobs.echo_key``).
    ECHO_KEY = "echo_key"


#: The faults drawn per request, in the order their rates stack up in ``draw_fault``.
REQUEST_FAULTS = (Fault.RATE_LIMIT, Fault.SERVER_ERROR, Fault.TIMEOUT, Fault.MALFORMED, Fault.RESET)


# -- knobs ---------------------------------------------------------------------------


def _names(value: Any) -> tuple[str, ...]:
    """Accept ``"a,b"`` (CLI) or a list (JSON) for a set of names."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


def _subset_of(allowed: Iterable[str]) -> Callable[[Any, attrs.Attribute[Any], tuple[str, ...]], None]:
    allowed = tuple(allowed)

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        unknown = set(value) - set(allowed)
        if unknown:
            raise ValueError(f"{attribute.name}: unknown {sorted(unknown)}; expected some of {list(allowed)}")

    return check


def _statuses(value: Any) -> tuple[int, ...]:
    """``"401,500"`` (CLI) or a list (JSON) of HTTP error statuses."""
    statuses = tuple(int(name) for name in _names(value) if str(name).strip())
    if any(not 400 <= status <= 599 for status in statuses):
        raise ValueError(f"expected HTTP error statuses (400-599), got {list(statuses)}")
    return statuses


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _knob(default: Any, help: str, *, cli_type: Callable[[str], Any] = float, metavar: str | None = None,
          **field_args: Any) -> Any:
    """An attrs field that is also a CLI option ``--field-name`` (see ``add_knob_arguments``)."""
    return attrs.field(default=default, metadata={"help": help, "cli_type": cli_type, "metavar": metavar},
                       **field_args)


def _seconds(default: float, help: str) -> Any:
    return _knob(default, help, converter=float,
                 validator=[attrs.validators.instance_of(float), attrs.validators.ge(0.0)], metavar="SECONDS")


def _rate(help: str) -> Any:
    validators = [attrs.validators.instance_of(float), attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    return _knob(0.0, help, converter=float, metavar="FRACTION", validator=validators)


def _optional_str(default: str | None, help: str, metavar: str) -> Any:
    return _knob(default, help, cli_type=str, metavar=metavar,
                 validator=attrs.validators.optional(attrs.validators.instance_of(str)))


@attrs.define
class Knobs:
    """Behaviour settings of a simulator, changeable while it runs.

    Every field is both a CLI option (``--field-name``, generated by
    ``add_knob_arguments``) and a key of ``POST /_sim/knobs``, so a new knob is one
    more field here plus the few lines in ``Simulator`` that honour it.

    Request faults (``rate_limit_rate``, ``error_5xx_rate``, ``timeout_rate``,
    ``malformed_rate``, ``reset_rate``) are drawn once per request on the routes whose
    kind is in ``fault_routes``; their rates stack, so their sum may not exceed 1.
    Whether the provider did the work behind a faulty answer is ``late_faults``.
    """

    #: Median seconds from creation until a task finishes.
    duration: float = _seconds(1.0, "median seconds from creation until a task finishes")
    #: Sigma of the lognormal task duration around ``duration``; 0 = every task
    #: takes exactly ``duration``.
    duration_sigma: float = _seconds(0.0, "sigma of the lognormal task duration (0 = fixed --duration)")
    #: Seconds to sleep before answering a create request. The task is recorded
    #: *before* the sleep, like a real provider that accepted the job but whose
    #: answer has not reached the client yet: this is the window in which a test
    #: kills the daemon to exercise "did my submission land?" reconciliation.
    create_latency: float = _seconds(0.0, "seconds to sleep before answering a create (task recorded first)")
    #: Expected API token; ``None`` accepts any (or no) credentials.
    token: str | None = _optional_str(None, "API token to require; unset accepts any", "TOKEN")
    #: Fraction of created tasks that end FAILED with ``task_failed_message()``.
    fail_rate: float = _rate("fraction of created tasks that end FAILED")
    #: Fraction of requests answered 429 with ``Retry-After: retry_after``.
    rate_limit_rate: float = _rate("fraction of requests answered 429 with Retry-After")
    #: The ``Retry-After`` of simulated 429s, in seconds (non-integers are printed
    #: as decimals, which is not standard HTTP but keeps tests fast).
    retry_after: float = _seconds(1.0, "Retry-After seconds of simulated 429s")
    #: Fraction of requests answered 500, 502 or 503.
    error_5xx_rate: float = _rate("fraction of requests answered 500/502/503")
    #: Fraction of requests that get no answer for ``hang_seconds`` (then the real
    #: one), so that the client's read timeout fires first.
    timeout_rate: float = _rate("fraction of requests that hang for --hang-seconds before answering")
    hang_seconds: float = _seconds(30.0, "how long a --timeout-rate request hangs")
    #: Fraction of requests answered 200 with a body that is not valid JSON.
    malformed_rate: float = _rate("fraction of requests answered 200 with a body that is not JSON")
    #: Fraction of requests whose connection is closed without a response (the
    #: client sees "server disconnected without sending a response").
    reset_rate: float = _rate("fraction of requests whose connection is dropped without an answer")
    #: At most this many non-terminal tasks; further creates get
    #: ``too_many_active_response()`` (429 by default) and are not recorded.
    max_active: int | None = _knob(
        None, "at most N non-terminal tasks; creates beyond get the provider's too-many-active error",
        cli_type=int, metavar="N", converter=_optional_int,
        validator=attrs.validators.optional(attrs.validators.ge(1)),
    )
    #: Route kinds (``ROUTE_KINDS``) the request faults apply to.
    fault_routes: tuple[str, ...] = _knob(
        ("create", "status", "cancel", "list"), "comma-separated route kinds request faults apply to",
        cli_type=_names, metavar="KINDS", converter=_names, validator=_subset_of(ROUTE_KINDS),
    )
    #: Request faults that strike *after* the provider has handled the request:
    #: the task IS created (the cancel DID take effect) but the client never gets a
    #: usable answer, which is the case an exactly-once client must survive and
    #: ``SimStats.max_submissions_per_input`` exposes. Faults not listed strike
    #: *instead of* handling: the provider refused, nothing was recorded. Default:
    #: 429 and 5xx refuse; timeout, malformed and reset come after the work.
    late_faults: tuple[str, ...] = _knob(
        ("timeout", "malformed", "reset"),
        "comma-separated request faults that strike after the task is created, not instead",
        cli_type=_names, metavar="FAULTS", converter=_names,
        validator=_subset_of(fault.value for fault in REQUEST_FAULTS),
    )
    #: Seed of the simulator's random draws (faults, failures, durations); ``None``
    #: seeds from the OS. The same seed and the same requests give the same run.
    seed: int | None = _knob(None, "random seed, for reproducible runs", cli_type=int, metavar="N",
                             converter=_optional_int)
    #: Secret the simulator signs its webhooks with, in the provider's format
    #: (Replicate: ``whsec_<base64>``); ``None`` makes one up per simulator.
    webhook_secret: str | None = _optional_str(
        None, "secret to sign webhooks with, in the provider's format; unset makes one up", "SECRET"
    )

    #: Answer every request on ``fault_routes`` with these statuses in turn, the
    #: body and headers echoing the credentials the request carried (plain,
    #: URL-encoded and base64), as providers that print ``Invalid credential <key>``
    #: do. Empty: off. Checked before the other faults; the request does nothing.
    echo_key: tuple[int, ...] = _knob(
        (), "comma-separated statuses answered in turn, echoing the request's credentials",
        cli_type=_names, metavar="STATUSES", converter=_statuses,
    )
    #: Base URL of the task URLs the simulator hands out (BFL's ``polling_url``,
    #: fal's queue URLs, Replicate's next page); ``None``: the one the client used.
    #: Another host stands for a provider answer that names a host it should not.
    task_url_base: str | None = _optional_str(
        None, "base URL of the task URLs handed out (polling/status/next); unset: the client's",
        "URL")

    def __attrs_post_init__(self) -> None:
        total = sum(self.rate_of(fault) for fault in REQUEST_FAULTS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"request fault rates add up to {total:g}; at most 1 is possible")

    def rate_of(self, fault: Fault) -> float:
        """The knob rate of one request fault (0 for the others)."""
        return {
            Fault.RATE_LIMIT: self.rate_limit_rate,
            Fault.SERVER_ERROR: self.error_5xx_rate,
            Fault.TIMEOUT: self.timeout_rate,
            Fault.MALFORMED: self.malformed_rate,
            Fault.RESET: self.reset_rate,
        }.get(fault, 0.0)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form, for ``GET /_sim/knobs``."""
        data = attrs.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}


def add_knob_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add one ``--field-name`` option per ``Knobs`` field. Unset options stay
    ``None`` so ``knobs_from_args`` keeps the field's default."""
    for field in attrs.fields(Knobs):
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=field.metadata["cli_type"],
            default=None,
            metavar=field.metadata["metavar"],
            help=f"{field.metadata['help']} (default: {shown})",
        )


def knobs_from_args(args: argparse.Namespace) -> Knobs:
    """``Knobs`` from options added by ``add_knob_arguments``."""
    given = {field.name: getattr(args, field.name, None) for field in attrs.fields(Knobs)}
    return Knobs(**{name: value for name, value in given.items() if value is not None})


# -- stats and tasks -----------------------------------------------------------------


@attrs.frozen
class SimStats:
    """A snapshot of what clients have done to a simulator.

    ``max_submissions_per_input`` is the headline number for exactly-once tests:
    the most times one identical (model identity, input) pair was *recorded* as a
    task. A create refused by a fault (429, 5xx, too many active) records nothing;
    one hit by a late fault (timeout, malformed, reset: see ``Knobs.late_faults``)
    does, so a client that blindly retries it shows up here as 2.
    """

    #: Tasks the provider accepted (recorded), whatever the client saw.
    submissions: int = 0
    #: Requests on ``status`` routes, including faulted ones.
    status_checks: int = 0
    #: Requests on ``cancel`` routes, including faulted ones and unknown ids.
    cancels: int = 0
    #: Requests on ``list`` routes, including faulted ones.
    list_calls: int = 0
    max_submissions_per_input: int = 0
    #: Tasks not yet in a terminal state at snapshot time.
    active: int = 0
    #: The most tasks ever active at once: the high-water mark of ``active``, so a
    #: test can assert a client's concurrency cap after the run, not only while
    #: it samples ``active``.
    max_active_seen: int = 0
    #: All tasks ever created (the same as ``submissions``; kept for older readers).
    tasks: int = 0
    #: Requests per route kind, faulted or not (``requests["create"]`` minus
    #: ``submissions`` is how many creates were refused or invalid).
    requests: dict[str, int] = attrs.field(factory=dict)
    #: Faults per ``Fault`` value, e.g. ``{"rate_limit": 3, "task_failed": 1}``.
    faults: dict[str, int] = attrs.field(factory=dict)
    #: Webhooks answered 2xx, and webhooks given up on after every attempt.
    webhooks_delivered: int = 0
    webhooks_failed: int = 0

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
    a task "runs" without anything running. Build it with
    ``Simulator.create_task``, which fills ``created``, ``duration`` and ``error``.
    """

    id: str
    #: Canonical submission key (see ``Simulator.submission_key``).
    key: str
    #: Unix time of creation (on the simulator's clock).
    created: float
    #: Seconds from creation to completion, frozen at creation so changing the
    #: knob later does not move tasks already in flight.
    duration: float
    #: How many output files the task produces on success.
    outputs: int = 1
    canceled_at: float | None = None
    #: When set, the task ends FAILED with this message instead of SUCCEEDED
    #: (``create_task`` sets it for a ``Knobs.fail_rate`` draw).
    error: str | None = None
    #: URL the provider calls back when the task changes (``None``: no webhook).
    webhook: str | None = None
    #: Webhook events already sent for this task (each is sent at most once).
    notified: set[str] = attrs.field(factory=set, eq=False, repr=False)

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
        whether the cancel took effect. Simulators call ``Simulator.cancel_task``,
        which also sends the task's webhook."""
        if self.phase(now).terminal:
            return False
        self.canceled_at = now
        return True


@attrs.frozen
class WebhookRequest:
    """One outgoing webhook, as a provider's ``webhook_request`` builds it."""

    url: str
    body: bytes
    headers: dict[str, str] = attrs.field(factory=dict)


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


def sample_duration(rng: random.Random, median: float, sigma: float) -> float:
    """A task duration: lognormal with ``median`` and ``sigma`` (of the underlying
    normal), or exactly ``median`` when ``sigma`` is 0 (no draw is made then, so
    a fixed-duration run consumes no randomness)."""
    if sigma <= 0 or median <= 0:
        return median
    return rng.lognormvariate(math.log(median), sigma)


def format_seconds(seconds: float) -> str:
    """``1.0`` -> ``"1"``, ``0.5`` -> ``"0.5"``: a ``Retry-After`` value."""
    return f"{seconds:g}"


def hmac_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Base64 HMAC-SHA256 of ``"{msg_id}.{timestamp}.{body}"``: the signed content
    of Standard Webhooks (Replicate) and of Pollo's ``X-Webhook-Signature``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def standard_webhook_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of Standard Webhooks: ``v1,<hmac_signature>``."""
    return "v1," + hmac_signature(key, msg_id, timestamp, body)


# -- connection drops ------------------------------------------------------------------

#: Key in the ASGI scope asking ``_ConnectionDropper`` to drop this request's connection.
_DROP_CONNECTION = "easel.sim.drop_connection"


class _ConnectionDropper:
    """ASGI middleware that turns a response into a dropped connection.

    ASGI has no "abort"; hypercorn answers 500 to an app that ends without a
    response. What it does allow: the response start is replaced by an interim
    ``100 Continue`` (which HTTP clients skip as informational), the real answer
    is swallowed, and when the app ends hypercorn, seeing its HTTP/1.1 exchange
    unfinished, closes the socket. The client is left waiting for a final response
    on a closed connection: httpx raises ``RemoteProtocolError("Server disconnected
    without sending a response.")``, urllib ``RemoteDisconnected``.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: dict[str, Any]) -> None:
            if not scope.get(_DROP_CONNECTION):
                await send(message)
            elif message["type"] == "http.response.start":
                await send({"type": "http.response.start", "status": 100, "headers": []})
            # else: body swallowed.

        await self.app(scope, receive, guarded_send)


# -- the simulator ----------------------------------------------------------------------

TaskT = TypeVar("TaskT", bound=SimTask)
Handler = Callable[..., Awaitable[Any]]


class Simulator:
    """Base of every provider simulator: task table, stats, knobs, faults, files,
    webhooks and the app. See the module docstring for how to write one."""

    name: ClassVar[str] = "base"
    #: Statuses a ``SERVER_ERROR`` fault picks from (uniformly).
    server_error_statuses: ClassVar[tuple[int, ...]] = (500, 502, 503)
    #: Webhook delivery: attempts in all, first retry delay (doubling), per-attempt timeout.
    webhook_attempts: int = 3
    webhook_retry_delay: float = 0.5
    webhook_timeout: float = 5.0

    def __init__(self, knobs: Knobs | None = None, *, clock: Callable[[], float] = time.time) -> None:
        """``clock`` returns Unix seconds; tests may pass a fake one to step time
        deterministically (e.g. ``actors.clock.wall_now`` under a trio MockClock, or
        a hand-stepped clock: then call ``time_moved()`` after stepping it so
        pending webhooks notice)."""
        self.knobs = knobs if knobs is not None else Knobs()
        self.clock = clock
        self.tasks: dict[str, SimTask] = {}
        #: Input images accepted at create, as given (``tests/simulators/inputs.py``).
        self.received_images: list[str] = []
        self.submissions = 0
        self.requests: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.webhooks_delivered = 0
        self.webhooks_failed = 0
        #: Base URL the simulator is served at (set by ``serve_simulator``); used to
        #: build absolute URLs outside a request, e.g. in webhook bodies.
        self.url: str | None = None
        self._per_input: Counter[str] = Counter()
        #: Tasks active when last looked at (pruned at each create) and the most
        #: of them at once (``SimStats.max_active_seen``).
        self._live: list[SimTask] = []
        self.max_active_seen = 0
        self._scripted: dict[str, deque[Fault | None]] = {}
        self._app: QuartTrio | None = None
        self._time_moved_event: trio.Event | None = None
        self._generated_secret: str | None = None
        self.reseed(self.knobs.seed)

    # -- command line ------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        """Add this simulator's own CLI options (the ``Knobs`` ones exist already).
        Override together with ``from_args``."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, knobs: Knobs) -> Simulator:
        """Build the simulator from parsed CLI ``args`` and the ``knobs`` they gave.
        Raise ``ValueError`` for a bad option: the CLI reports it as a usage error."""
        return cls(knobs)

    # -- randomness ----------------------------------------------------------------------

    def reseed(self, seed: int | None) -> None:
        """Restart the random streams. Faults and task draws (failure, duration) use
        separate streams, so turning a fault knob does not reshuffle durations."""
        self.fault_rng = random.Random(None if seed is None else f"{seed}:faults")
        self.task_rng = random.Random(None if seed is None else f"{seed}:tasks")

    def script_faults(self, kind: str, *faults: Fault | None) -> None:
        """Make the next requests on routes of ``kind`` meet ``faults`` in order
        (``None``: no fault), whatever the knobs say; then the draws resume. For
        tests that need one given request to fail, e.g. the second list page."""
        self._scripted.setdefault(kind, deque()).extend(faults)

    def draw_fault(self, kind: str) -> Fault | None:
        """The request fault for one request on a route of ``kind``, or ``None``.

        A scripted fault first (``script_faults``); else one uniform draw per
        request (none when every rate is 0 or the kind is not in
        ``Knobs.fault_routes``), compared against the stacked rates."""
        if self._scripted.get(kind):
            return self._scripted[kind].popleft()
        knobs = self.knobs
        if kind not in knobs.fault_routes:
            return None
        rates = [(fault, knobs.rate_of(fault)) for fault in REQUEST_FAULTS]
        if not any(rate for _fault, rate in rates):
            return None
        draw = self.fault_rng.random()
        for fault, rate in rates:
            if draw < rate:
                return fault
            draw -= rate
        return None

    def draw_duration(self) -> float:
        """A new task's duration (``Knobs.duration``, ``Knobs.duration_sigma``)."""
        return sample_duration(self.task_rng, self.knobs.duration, self.knobs.duration_sigma)

    def draw_failure(self) -> str | None:
        """``task_failed_message()`` for a ``Knobs.fail_rate`` draw, else ``None``."""
        if self.knobs.fail_rate <= 0 or self.task_rng.random() >= self.knobs.fail_rate:
            return None
        self.faults[Fault.TASK_FAILED.value] += 1
        return self.task_failed_message()

    # -- bookkeeping -------------------------------------------------------------------

    @staticmethod
    def submission_key(identity: Any, input: Any) -> str:
        """The key identical submissions share: canonical JSON of model + input."""
        return canonical_json({"model": identity, "input": input})

    def create_task(self, task_class: type[TaskT], **fields: Any) -> TaskT:
        """Build, record and return a new task; the one way to create tasks.

        ``fields`` are the task's own (at least ``id`` and ``key``); ``created``
        (now), ``duration`` (``draw_duration``) and ``error`` (``draw_failure``) are
        filled in unless given. Webhooks of the task are scheduled (``webhook_schedule``).
        """
        fields.setdefault("created", self.clock())
        if "duration" not in fields:
            fields["duration"] = self.draw_duration()
        if "error" not in fields:
            fields["error"] = self.draw_failure()
        task = task_class(**fields)
        self.add_task(task)
        return task

    def add_task(self, task: SimTask) -> None:
        """Record a task built by hand (``create_task`` calls this) as a submission
        and schedule its webhooks."""
        self.tasks[task.id] = task
        self.submissions += 1
        self._per_input[task.key] += 1
        self._count_active(task)
        for event, at in self.webhook_schedule(task):
            self.schedule_webhook(task, event, at)

    def cancel_task(self, task: SimTask) -> bool:
        """Cancel ``task`` now unless it is terminal; if that took effect, its
        "completed" webhook goes out now (see ``webhook_request``)."""
        now = self.clock()
        if not task.cancel(now):
            return False
        if task.webhook is not None:
            self.schedule_webhook(task, "completed", now)
        return True

    def _count_active(self, task: SimTask) -> None:
        """Raise the high-water mark with ``task`` added. Tasks become active only
        when created (a phase changes with the clock, never back to active), so
        the most at once is always reached at a creation: counting there, over
        the tasks still live, is exact and costs the live tasks only."""
        now = self.clock()
        self._live = [live for live in self._live if not live.phase(now).terminal]
        if not task.phase(now).terminal:
            self._live.append(task)
        self.max_active_seen = max(self.max_active_seen, len(self._live))

    def active_tasks(self) -> int:
        """Tasks not in a terminal phase now."""
        now = self.clock()
        return sum(1 for task in self.tasks.values() if not task.phase(now).terminal)

    @property
    def status_checks(self) -> int:
        return self.requests["status"]

    @property
    def cancels(self) -> int:
        return self.requests["cancel"]

    @property
    def list_calls(self) -> int:
        return self.requests["list"]

    def stats(self) -> SimStats:
        """Snapshot of the counters, with ``active`` evaluated at the current time."""
        return SimStats(
            submissions=self.submissions,
            status_checks=self.status_checks,
            cancels=self.cancels,
            list_calls=self.list_calls,
            max_submissions_per_input=max(self._per_input.values(), default=0),
            active=self.active_tasks(),
            max_active_seen=self.max_active_seen,
            tasks=len(self.tasks),
            requests=dict(self.requests),
            faults=dict(self.faults),
            webhooks_delivered=self.webhooks_delivered,
            webhooks_failed=self.webhooks_failed,
        )

    async def create_delay(self) -> None:
        """Honour ``Knobs.create_latency``; call after recording the task."""
        if self.knobs.create_latency > 0:
            await trio.sleep(self.knobs.create_latency)

    # -- what errors look like (providers override) -------------------------------------

    def error_body(self, status: int, detail: str) -> dict[str, Any]:
        """JSON body of the simulator's generic errors (unknown route, wrong method,
        and the fault defaults below). Providers override it to match their shape."""
        return {"detail": detail}

    def error_response(self, status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
        """``error_body`` as a JSON response with ``status``."""
        return self.json_response(status, self.error_body(status, detail), headers)

    def rate_limit_response(self, retry_after: float) -> Response:
        """The provider's 429. The base adds ``Retry-After`` if this leaves it out."""
        return self.error_response(429, f"Rate limit exceeded; retry in {format_seconds(retry_after)} s.")

    def server_error_response(self, status: int) -> Response:
        """The provider's answer for a 5xx fault: ``status`` is one of
        ``server_error_statuses``, or 504 when a hang that is not a late fault ends."""
        detail = "Internal server error." if status == 500 else "Service unavailable."
        return self.error_response(status, detail)

    def too_many_active_response(self) -> Response:
        """The provider's refusal when ``Knobs.max_active`` tasks are running."""
        return self.error_response(429, f"Too many active tasks (at most {self.knobs.max_active}).")

    def auth_error_response(self) -> Response:
        """The provider's answer to missing or wrong credentials."""
        return self.error_response(401, "Unauthorized.")

    def task_failed_message(self) -> str:
        """The error text of a task that ends FAILED by ``Knobs.fail_rate``."""
        return "Simulated failure: the model raised an error while generating."

    def malformed_body(self, original: bytes) -> bytes:
        """The body of a malformed-answer fault, given the real one: by default its
        first half, as when a proxy cuts a response short. Never valid JSON."""
        cut = original[: len(original) // 2]
        try:
            json.loads(cut)
        except ValueError:
            if cut:
                return cut
        return b'{"error": "upstream conn'

    def authorized(self) -> bool:
        """Whether the current request carries ``Knobs.token`` (always true when the
        knob is ``None``). Default: ``Authorization: Bearer <token>``; providers with
        another scheme (``x-key``, ``Key ...``) override this."""
        token = self.knobs.token
        if token is None:
            return True
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())

    # -- webhooks ----------------------------------------------------------------------

    @property
    def webhook_secret(self) -> str:
        """``Knobs.webhook_secret``, or a secret made up once per simulator."""
        if self.knobs.webhook_secret is not None:
            return self.knobs.webhook_secret
        if self._generated_secret is None:
            self._generated_secret = self.generate_webhook_secret()
        return self._generated_secret

    def generate_webhook_secret(self) -> str:
        """A fresh secret in the provider's format, when the knob gives none."""
        return secrets.token_urlsafe(24)

    def webhook_schedule(self, task: SimTask) -> list[tuple[str, float]]:
        """``(event, unix_time)`` pairs of the webhooks a new task will send.

        Default: one "completed" at ``task.finished`` when the task has a webhook
        (a cancel sends it earlier through ``cancel_task``; each event goes out at
        most once). Providers that call back on every change add ("start",
        ``task.started``) and map the events in ``webhook_request``."""
        return [("completed", task.finished)] if task.webhook is not None else []

    def webhook_request(self, task: SimTask, event: str) -> WebhookRequest | None:
        """The webhook to send for ``event`` of ``task``, built when it is due (the
        task is in its new phase then; absolute URLs work through ``self.url``).
        ``None`` sends nothing. Default: nothing, i.e. the provider has no webhooks."""
        return None

    def schedule_webhook(self, task: SimTask, event: str, at: float) -> None:
        """Send ``event`` of ``task`` at Unix time ``at`` (simulator clock) from a
        background task of the app's nursery; needs the simulator to be served."""
        self._nursery().start_soon(self._send_when_due, task, event, at)

    async def deliver_webhook(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        """POST ``body`` to ``url`` until it answers 2xx, at most ``webhook_attempts``
        times with doubling delays from ``webhook_retry_delay``; report success.
        Counted in ``webhooks_delivered``/``webhooks_failed``."""
        delay = self.webhook_retry_delay
        for attempt in range(1, self.webhook_attempts + 1):
            try:
                async with httpx.AsyncClient(timeout=self.webhook_timeout) as client:
                    response = await client.post(url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    self.webhooks_delivered += 1
                    return True
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            logger.info("%s webhook to %s, attempt %d: %s", self.name, url, attempt, problem)
            if attempt < self.webhook_attempts:
                await trio.sleep(delay)
                delay *= 2
        self.webhooks_failed += 1
        logger.warning("%s webhook to %s given up after %d attempts", self.name, url, self.webhook_attempts)
        return False

    def time_moved(self) -> None:
        """Tell pending webhooks the clock jumped (only needed with a hand-stepped
        clock; ``time.time`` and ``wall_now`` move with trio's clock)."""
        if self._time_moved_event is not None:
            self._time_moved_event.set()
            self._time_moved_event = None

    async def sleep_until(self, when: float) -> None:
        """Sleep until the simulator clock reads ``when`` (Unix seconds)."""
        while (remaining := when - self.clock()) > 0:
            if self._time_moved_event is None:
                self._time_moved_event = trio.Event()
            moved = self._time_moved_event
            with trio.move_on_after(remaining):
                await moved.wait()

    async def _send_when_due(self, task: SimTask, event: str, at: float) -> None:
        await self.sleep_until(at)
        if event in task.notified:
            return
        try:
            webhook = self.webhook_request(task, event)
        except Exception:
            logger.exception("%s: building the %r webhook of task %s failed", self.name, event, task.id)
            return
        if webhook is None:
            return
        task.notified.add(event)
        await self._deliver_logged(webhook.url, webhook.body, webhook.headers)

    async def _deliver_logged(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        # A background task must not take the server down with it.
        try:
            await self.deliver_webhook(url, body, headers)
        except Exception:
            logger.exception("%s: webhook to %s crashed", self.name, url)

    def _nursery(self) -> trio.Nursery:
        nursery = getattr(self._app, "nursery", None)
        if nursery is None:
            raise RuntimeError(f"{self.name} simulator is not being served: no nursery for background work")
        return nursery

    # -- HTTP ------------------------------------------------------------------------

    def base_url(self) -> str:
        """Scheme and authority, without trailing slash, that clients reach us at.

        Inside a request it is what the client used, so URLs handed out are right
        whatever port was picked; outside one (webhook bodies) it is ``self.url``.
        """
        if has_request_context():
            return f"{request.scheme}://{request.host}"
        if self.url is None:
            raise RuntimeError(f"{self.name} simulator has no URL outside a request until it is served")
        return self.url

    def task_base_url(self) -> str:
        """``base_url()``, or ``Knobs.task_url_base`` for the task URLs handed out."""
        return self.knobs.task_url_base or self.base_url()

    #: Request headers that carry credentials, echoed by ``Knobs.echo_key``.
    credential_headers: ClassVar[tuple[str, ...]] = ("authorization", "x-key", "x-api-key")

    def echo_key_response(self, status: int) -> Response:
        """``Knobs.echo_key``'s answer: the provider's error shape with ``status``,
        saying back every credential the request carried, in its body and headers."""
        presented = [value for name in self.credential_headers
                     if (value := request.headers.get(name))]
        said = "; ".join(
            f"{value} (url: {urllib.parse.quote(value, safe='')},"
            f" b64: {base64.b64encode(value.encode()).decode()})"
            for value in presented
        )
        response = self.error_response(status, f"Invalid credential {said or '(none)'}")
        for index, value in enumerate(presented):
            response.headers[f"X-Echo-Credential-{index}"] = value
        response.headers["WWW-Authenticate"] = f'Bearer realm="{said}"'
        return response

    def file_url(self, task: SimTask, index: int) -> str:
        """Absolute URL of output ``index`` of ``task``."""
        return f"{self.base_url()}/_sim/files/{task.id}/{index}.png"

    @staticmethod
    def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        """A JSON response with an explicit status (201 for creates...)."""
        return Response(json.dumps(body), status=status, content_type="application/json", headers=headers)

    def register_routes(self, app: QuartTrio) -> None:
        """Add the provider's routes with ``add_route``. Subclasses must implement it."""
        raise NotImplementedError

    def add_route(
        self,
        app: QuartTrio,
        rule: str,
        handler: Handler,
        *,
        kind: str,
        methods: Sequence[str] = ("GET",),
        endpoint: str | None = None,
    ) -> None:
        """Register a provider route: ``handler`` (URL variables as keyword
        arguments) behind the shared request hook, which in order

        1. counts the request under ``kind`` (``SimStats.requests``);
        2. answers ``echo_key_response()`` when ``Knobs.echo_key`` is on for the
           kind, else ``auth_error_response()`` unless ``authorized()``;
        3. draws a request fault (``draw_fault``). One not in ``Knobs.late_faults``
           (default: 429, 5xx) answers now and ``handler`` never runs: the
           provider refused, no task is recorded;
        4. for creates, answers ``too_many_active_response()`` when
           ``Knobs.max_active`` tasks are active (no task recorded);
        5. runs ``handler``: the task is created, the cancel applied...;
        6. applies a late fault (default: timeout, malformed, reset) to its answer:
           the work is done but the client never gets a usable answer.
        """
        if kind not in ROUTE_KINDS:
            raise ValueError(f"route kind {kind!r} is not one of {ROUTE_KINDS}")

        async def view(**url_values: Any) -> Response:
            return await self._handle(kind, handler, url_values)

        name = endpoint or f"{getattr(handler, '__name__', 'route')}:{rule}"
        app.add_url_rule(rule, name, view, methods=list(methods))

    async def _handle(self, kind: str, handler: Handler, url_values: dict[str, Any]) -> Response:
        self.requests[kind] += 1
        # Read the body first, whatever the answer: one left unread by an early
        # answer (a refused key, a rate limit, a 5xx) stalls the next request on
        # the same keep-alive connection until the client gives up. The handlers
        # read it again from quart's cache.
        await request.get_data()
        if self.knobs.echo_key and kind in self.knobs.fault_routes:
            status = self.knobs.echo_key[self.faults[Fault.ECHO_KEY.value] % len(self.knobs.echo_key)]
            self.faults[Fault.ECHO_KEY.value] += 1
            return self.echo_key_response(status)
        if not self.authorized():
            return self.auth_error_response()
        fault = self.draw_fault(kind)
        late = fault is not None and fault.value in self.knobs.late_faults
        if fault is not None and not late:
            return await self._apply_fault(fault, None)
        if (
            kind == "create"
            and self.knobs.max_active is not None
            and self.active_tasks() >= self.knobs.max_active
        ):
            self.faults[Fault.TOO_MANY_ACTIVE.value] += 1
            return self.too_many_active_response()
        response = await current_app.make_response(await handler(**url_values))
        if fault is None:
            return response
        return await self._apply_fault(fault, response)

    async def _apply_fault(self, fault: Fault, response: Response | None) -> Response:
        """The answer for ``fault``; ``response`` is the handler's, if it ran."""
        self.faults[fault.value] += 1
        if fault is Fault.RATE_LIMIT:
            retry_after = self.knobs.retry_after
            limited = self.rate_limit_response(retry_after)
            if "Retry-After" not in limited.headers:
                limited.headers["Retry-After"] = format_seconds(retry_after)
            return limited
        if fault is Fault.SERVER_ERROR:
            return self.server_error_response(self.fault_rng.choice(self.server_error_statuses))
        original = b"" if response is None else await response.get_data(as_text=False)
        if fault is Fault.TIMEOUT:
            await trio.sleep(self.knobs.hang_seconds)
            return response if response is not None else self.server_error_response(504)
        if fault is Fault.MALFORMED:
            return Response(self.malformed_body(original), status=200, content_type="application/json")
        # Fault.RESET: see _ConnectionDropper.
        request.scope[_DROP_CONNECTION] = True
        return response if response is not None else Response(b"", status=200)

    def build_app(self) -> QuartTrio:
        """A fresh quart-trio app serving this simulator (the last one built is the
        one whose nursery runs webhooks)."""
        app = QuartTrio(f"sim-{self.name}", static_folder=None)
        app.asgi_app = _ConnectionDropper(app.asgi_app)  # type: ignore[method-assign]
        app.extensions["easel_simulator"] = self
        app.add_url_rule("/_sim/stats", "sim_stats", self._stats_route, methods=["GET"])
        app.add_url_rule("/_sim/knobs", "sim_knobs", self._knobs_route, methods=["GET", "POST"])
        app.add_url_rule(
            "/_sim/files/<task_id>/<int:index>.png", "sim_file", self._file_route, methods=["GET"]
        )
        app.register_error_handler(HTTPException, self._http_error)
        self.register_routes(app)
        self._app = app
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
            if "seed" in changes:
                self.reseed(self.knobs.seed)
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
    port; the URL reports the real one (from hypercorn's binds) and is also stored
    as ``sim.url``. Background work (webhooks) runs in the app's nursery, which
    exists while this serves.
    """
    app = app_or_sim.build_app() if isinstance(app_or_sim, Simulator) else app_or_sim
    config = HypercornConfig()
    config.bind = [_bind_address(host, port)]
    config.accesslog = None
    config.loglevel = "WARNING"  # hypercorn's "Running on ..." is noise in test output
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(hypercorn_serve, app, config)
        simulator = app.extensions.get("easel_simulator")
        if isinstance(simulator, Simulator):
            simulator.url = binds[0]
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


def set_knobs(base_url: str, **changes: Any) -> Knobs:
    """``POST /_sim/knobs`` of a (typically subprocess) simulator; the new knobs."""
    response = httpx.post(f"{base_url}/_sim/knobs", json=changes, timeout=10)
    response.raise_for_status()
    return Knobs(**response.json())
