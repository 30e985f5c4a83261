"""The health and metrics family: is Easel up, what is it doing, Prometheus figures.

``GET /api/health`` (no auth, cheap) is what load balancers and systemd-style
checks poll: ``{status: healthy|degraded|unhealthy, timestamp, uptime, version}``.
Unhealthy (503) while draining (``reason: draining``), when the database does
not answer, or while an actor is restarting and reloading its state (``actors``
names them); degraded (200) while a provider's circuit is open or a critical
alert fires. The database is pinged at most once per ``HEALTH_CACHE_SECONDS``
(the answer is cached), so a liveness probe never costs a database call of its
own.

``GET /api/health/detailed`` (admin scope) adds ``components``: the database,
storage (the backend, probed on each call: whether it answers, its last error,
bytes stored, upload latencies; and the free disk), each adapter (``up``/``degraded``/``down`` from its
circuit, last success, p95 latency) and the polling service (tasks tracked and
queued), beside the runtime's statistics (``providers``, ``restarts``,
``monitor``, ``store``) and job counts (``jobs``). ``/api/metrics`` is the
Prometheus registry, with the job and slot gauges refreshed when scraped.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import time
from typing import Any

import attrs
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response, current_app

from actors import metrics
from actors.errors import EaselError, ErrorCode
from daemon.api.auth import caller
from daemon.api.errors import json_response
from daemon.api.services import services

blueprint = Blueprint("health", __name__, url_prefix="/api")

HEALTH_CACHE_SECONDS = 1.0

try:
    VERSION = importlib.metadata.version("easel")
except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
    VERSION = "0+unknown"


def require_admin() -> None:
    """Refuse a caller without the admin scope (a daemon without keys: anyone)."""
    if not caller().admin:
        raise EaselError(ErrorCode.AUTHENTICATION_FAILED, "this needs a key with the admin scope")


@attrs.define
class _Check:
    """One app's last database check: when (``time.monotonic()``), how long it
    took, and the failure (None: it answered)."""

    at: float = -1e9
    wall: float = 0.0
    seconds: float = 0.0
    error: str | None = None


async def _database() -> _Check:
    check: _Check = current_app.extensions.setdefault("easel.health", _Check())
    now = time.monotonic()
    if now - check.at > HEALTH_CACHE_SECONDS:
        check.at, check.wall = now, time.time()
        try:
            await services().runtime.ping_store()
            check.error = None
        except Exception as exc:  # a failing database is what health is for
            check.error = f"{type(exc).__name__}: {exc}"
        check.seconds = time.monotonic() - now
    return check


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")


async def summary() -> dict[str, Any]:
    api = services()
    runtime = api.runtime
    database = await _database()
    recovering = runtime.not_running()
    status, reasons = "healthy", []
    stats = runtime.statistics()
    open_circuits = [name for name, p in stats["providers"].items()
                     if p["circuit"]["state"] != "closed"]
    if open_circuits:
        status = "degraded"
        reasons.append(f"circuit not closed: {', '.join(sorted(open_circuits))}")
    if stats["monitor"].get("alertsFiring"):
        reasons.append(f"{stats['monitor']['alertsFiring']} alert(s) firing")
    if database.error is not None:
        status = "unhealthy"
        reasons.append(f"database: {database.error}")
    if recovering:
        status = "unhealthy"
        reasons.append(f"restarting: {', '.join(recovering)}")
    if runtime.lifecycle.draining:
        status = "unhealthy"
        reasons.append("draining")
    return {
        "status": status,
        "timestamp": _iso(time.time()),
        "uptime": round(time.time() - api.started_at, 1),
        "version": VERSION,
        "reasons": reasons,
        "draining": runtime.lifecycle.draining,
    }


def _answer(body: dict[str, Any]) -> Response:
    return json_response(body, 503 if body["status"] == "unhealthy" else 200)


@blueprint.get("/health")
async def health() -> Response:
    return _answer(await summary())


def _adapter(name: str, figures: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    state = figures["circuit"]["state"]
    status = {"closed": "up", "half-open": "degraded"}.get(state, "down")
    return {
        "status": status,
        "message": f"circuit {state}" + (
            f", last error {seen['lastError']}" if seen.get("lastError") else ""),
        "lastCheck": _iso(seen.get("lastCall")),
        "responseTime": seen.get("p95Seconds"),
        "lastSuccess": _iso(seen.get("lastSuccess")),
        "circuit": figures["circuit"],
        "slotsHeld": figures["slotsHeld"],
        "queued": figures["queued"],
    }



def _storage(figures: dict[str, Any], free: dict[str, float],
             low: dict[str, float]) -> dict[str, Any]:
    """The storage component: down when the backend does not answer, degraded when a
    watched disk runs low, with the backend's own figures beside."""
    disk = ", ".join(f"{p}: {f:.1%} free" for p, f in free.items()) or "disk not checked yet"
    down = figures.get("reachable") is False
    message = f"{figures.get('backend', 'storage')} does not answer: {figures.get('lastError')}" \
        if down else disk
    return {"status": "down" if down else "degraded" if low else "up", "message": message,
            "diskFree": free, **figures}

@blueprint.get("/health/detailed")
async def health_detailed() -> Response:
    require_admin()
    runtime = services().runtime
    body = await summary()
    database = await _database()
    await runtime.probe_storage()  # the storage figures then say whether it answers now
    stats = runtime.statistics()
    monitor = stats["monitor"]
    free = monitor.get("diskFree", {})
    low = {path: f for path, f in free.items() if f < runtime.monitor.settings.rules.disk_free}
    body["components"] = {
        "database": {
            "status": "down" if database.error else "up",
            "message": database.error or "answers",
            "lastCheck": _iso(database.wall), "responseTime": round(database.seconds, 4),
        },
        "storage": _storage(stats.get("storage", {}), free, low),
        "adapters": {
            name: _adapter(name, figures, monitor.get("providers", {}).get(name, {}))
            for name, figures in stats["providers"].items()
        },
        "pollingService": {
            "status": "up" if not any(p.startswith("providers") for p in runtime.not_running())
            else "down",
            "tracked": {name: p["polling"] for name, p in stats["providers"].items()},
            "queueDepth": sum(p["queued"] for p in stats["providers"].values()),
        },
    }
    body["jobs"] = await runtime.count_by_state()
    return _answer({**stats, **body})


@blueprint.get("/metrics")
async def prometheus() -> Response:
    runtime = services().runtime
    for state, count in (await runtime.count_by_state()).items():
        metrics.JOBS_BY_STATE.labels(state=state).set(count)
    for name, figures in runtime.statistics()["providers"].items():
        metrics.SLOTS_HELD.labels(provider=name).set(figures["slotsHeld"])
    return Response(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)
