"""The admin monitoring API (admin scope): figures and the error log as JSON.

- ``GET /api/admin/monitoring/stats?from=&to=``: jobs created in the range
  (Unix seconds or ISO 8601; the last 24 h by default) by outcome, success rate
  and mean run time; each adapter's calls, successes, failures and mean
  response time since the process started; the newest error; the process's
  memory and CPU time;
- ``GET /api/admin/monitoring/errors`` and ``/alerts``: the rows the admin pages
  show, with the same filters (``level``, ``source``, ``resolved``, ``state``).
"""

from __future__ import annotations

import datetime
import math
import resource
import time
from typing import Any

from quart import Blueprint, Response, request

from actors.alerts.records import AlertState
from actors.errors import EaselError, ErrorCode
from daemon.api.errors import json_response
from daemon.api.health import require_admin
from daemon.api.services import services

blueprint = Blueprint("monitoring", __name__, url_prefix="/api/admin/monitoring")


def _moment(name: str, default: float) -> float:
    value = request.args.get(name)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise EaselError(ErrorCode.INVALID_REQUEST, f"{name}: expected a finite time")
        return seconds
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EaselError(ErrorCode.INVALID_REQUEST,
                         f"{name}: expected Unix seconds or an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _process() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        rss = usage.ru_maxrss * 1024
    return {"memoryBytes": rss, "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 3)}


@blueprint.get("/stats")
async def stats() -> Response:
    require_admin()
    runtime = services().runtime
    until = _moment("to", time.time())
    since = _moment("from", until - 86_400)
    if since >= until:
        raise EaselError(ErrorCode.INVALID_REQUEST, "from must be before to")
    totals = await runtime.job_totals(since, until)
    by_state: dict[str, int] = totals["byState"]
    succeeded, failed = by_state.get("SUCCEEDED", 0), by_state.get("FAILED", 0)
    finished = succeeded + failed
    seen = runtime.monitor.statistics().get("providers", {})
    last = await runtime.list_errors(None, 1)
    return json_response({
        "timeRange": {"from": since, "to": until},
        "totals": {"jobs": sum(by_state.values()), "succeeded": succeeded, "failed": failed,
                   "cancelled": by_state.get("CANCELLED", 0), "byState": by_state},
        "rates": {"successRate": succeeded / finished if finished else None,
                  "failureRate": failed / finished if finished else None},
        "successRate": succeeded / finished if finished else None,
        "averageDuration": totals["meanRunSeconds"],
        "adapters": {
            name: {"calls": figures["calls"], "successes": figures["calls"] - figures["failures"],
                   "failures": figures["failures"],
                   "averageResponseTime": figures["meanSeconds"],
                   "lastError": figures["lastError"]}
            for name, figures in seen.items()
        },
        "lastError": last[0].to_json() if last else None,
        "process": _process(),
    })


@blueprint.get("/errors")
async def errors() -> Response:
    require_admin()
    filters: dict[str, Any] = {key: request.args[key] for key in ("level", "source")
                               if request.args.get(key)}
    if request.args.get("resolved") in ("true", "false"):
        filters["resolved"] = request.args["resolved"] == "true"
    found = await services().runtime.list_errors(filters, 200)
    return json_response({"errors": [entry.to_json() for entry in found]})


@blueprint.get("/alerts")
async def alerts() -> Response:
    require_admin()
    state = request.args.get("state", "")
    chosen = AlertState(state) if state in {s.value for s in AlertState} else None
    found = await services().runtime.list_alerts(chosen, 200)
    return json_response({"alerts": [alert.to_json() for alert in found]})
