"""The admin pages: server-rendered HTML under ``/admin``, no JavaScript.

- ``/admin/monitoring``: an overview (health, alerts firing, unresolved errors,
  jobs by state, each provider's calls, failures and p95 latency);
- ``/admin/monitoring/errors``: the error log, filtered by level, source (a
  prefix), open or resolved, and the last N hours; each entry's stack and
  context; *Resolve* records who and when;
- ``/admin/monitoring/alerts``: alerts firing and resolved; *Acknowledge*
  records who and when; *Resolve* ends a firing alert (the monitor sends the
  resolved notice);
- ``/admin/jobs``: jobs by state and each provider's queue, slots and polling;
- ``/admin/experiments``: the experiments, in ``daemon/api/experiment_pages.py``
  (a blueprint nested in this one: the same login and cookie).

Every page needs the admin scope (``caller().admin``; a daemon without keys
lets everyone in, as it does for the API). A browser cannot send a bearer
header, so ``/admin/login`` takes the key in a form and keeps it in an
``HttpOnly``, ``SameSite=Strict`` cookie scoped to ``/admin``; ``KeyCookie``
turns that cookie into the ``Authorization`` header the one authentication hook
reads, for ``/admin`` paths only. Strict same-site cookies and POST-only changes
keep other sites from acting with it.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any

from quart import Blueprint, Response, redirect, render_template, request
from werkzeug.wrappers.response import Response as WerkzeugResponse

from actors.alerts.records import AlertState, Level
from daemon.api.auth import caller
from daemon.api.health import summary
from daemon.api.services import services

blueprint = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")

#: The cookie holding the admin key, and the path it is sent on.
COOKIE, COOKIE_PATH = "easel_admin_key", "/admin"

#: Rows a page shows at most.
PAGE_ROWS = 200

Page = Response | WerkzeugResponse | str | tuple[str, int]


@blueprint.app_template_filter("when")
def _when(at: float | None) -> str:
    if at is None:
        return ""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _who() -> str:
    return caller().owner or "admin"


async def _login_page(failed: bool = False) -> tuple[str, int]:
    page = await render_template("admin/login.html", next=request.full_path.rstrip("?"),
                                 failed=failed)
    return page, 401


def admin_page(view: Callable[..., Awaitable[Page]]) -> Callable[..., Awaitable[Page]]:
    """A page for admin callers; others get the login form (401)."""

    async def guarded(*args: Any, **kwargs: Any) -> Page:
        if not caller().admin:
            return await _login_page(failed=COOKIE in request.cookies)
        return await view(*args, **kwargs)

    guarded.__name__ = view.__name__
    return guarded


def _back(default: str) -> WerkzeugResponse:
    """Back to the page a form was posted from (a path of these pages only)."""
    target = request.referrer or ""
    path = target.split("://", 1)[-1].partition("/")[2]
    return redirect("/" + path if path.startswith("admin/") else default, 303)


@blueprint.get("")
@blueprint.get("/")
async def index() -> WerkzeugResponse:
    return redirect("/admin/monitoring", 303)


@blueprint.post("/login")
async def login() -> Page:
    form = await request.form
    target = form.get("next", "")
    if not target.startswith("/admin/"):
        target = "/admin/monitoring"
    response = redirect(target, 303)
    response.set_cookie(COOKIE, form.get("key", ""), path=COOKIE_PATH, httponly=True,
                        samesite="Strict", secure=request.scheme == "https",
                        max_age=12 * 3600)
    return response


@blueprint.post("/logout")
async def logout() -> WerkzeugResponse:
    response = redirect("/admin/monitoring", 303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


@blueprint.get("/monitoring")
@admin_page
async def overview() -> Page:
    runtime = services().runtime
    stats = runtime.statistics()
    seen = stats["monitor"].get("providers", {})
    providers = {name: {**p, "seen": seen.get(name, {})} for name, p in stats["providers"].items()}
    errors = await runtime.list_errors({"resolved": False}, PAGE_ROWS)
    firing = await runtime.list_alerts(AlertState.FIRING, PAGE_ROWS)
    return await render_template(
        "admin/overview.html", health=await summary(), firing=len(firing),
        unresolved=len(errors), limit=PAGE_ROWS, jobs=await runtime.count_by_state(),
        providers=providers)


def _error_filters(args: Any) -> tuple[dict[str, Any], str]:
    filters: dict[str, Any] = {}
    if args.get("level") in {level.value for level in Level}:
        filters["level"] = args["level"]
    if args.get("source"):
        filters["source"] = args["source"][:200]
    if args.get("resolved") in ("yes", "no"):
        filters["resolved"] = args["resolved"] == "yes"
    hours = args.get("hours", "")
    try:
        if hours and float(hours) > 0:
            filters["since"] = time.time() - float(hours) * 3600
    except ValueError:
        hours = ""
    return filters, hours


@blueprint.get("/monitoring/errors")
@admin_page
async def errors() -> Page:
    filters, hours = _error_filters(request.args)
    found = await services().runtime.list_errors(filters, PAGE_ROWS)
    return await render_template("admin/errors.html", errors=found, filters=filters,
                                 hours=hours, levels=[level.value for level in Level])


@blueprint.post("/monitoring/errors/<int:error_id>/resolve")
@admin_page
async def resolve_error(error_id: int) -> Page:
    await services().runtime.resolve_error(error_id, _who())
    return _back("/admin/monitoring/errors")


@blueprint.get("/monitoring/alerts")
@admin_page
async def alerts() -> Page:
    state = request.args.get("state", "")
    chosen = AlertState(state) if state in {s.value for s in AlertState} else None
    found = await services().runtime.list_alerts(chosen, PAGE_ROWS)
    return await render_template("admin/alerts.html", alerts=found,
                                 state=chosen.value if chosen else "")


@blueprint.post("/monitoring/alerts/<int:alert_id>/acknowledge")
@admin_page
async def acknowledge_alert(alert_id: int) -> Page:
    await services().runtime.acknowledge_alert(alert_id, _who())
    return _back("/admin/monitoring/alerts")


@blueprint.post("/monitoring/alerts/<int:alert_id>/resolve")
@admin_page
async def resolve_alert(alert_id: int) -> Page:
    await services().runtime.resolve_alert(alert_id, _who())
    return _back("/admin/monitoring/alerts")


@blueprint.get("/jobs")
@admin_page
async def jobs() -> Page:
    runtime = services().runtime
    return await render_template("admin/jobs.html", jobs=await runtime.count_by_state(),
                                 providers=runtime.statistics()["providers"])


class KeyCookie:
    """ASGI middleware: on ``/admin`` paths, a request with the admin cookie and no
    ``Authorization`` header is given ``Authorization: Bearer <cookie>``."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path", "").startswith(COOKIE_PATH):
            headers = list(scope.get("headers", []))
            names = {name.lower() for name, _ in headers}
            key = _cookie(headers)
            if key and b"authorization" not in names:
                headers.append((b"authorization", b"Bearer " + key.encode("latin-1")))
                scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def _cookie(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, _, found = part.strip().partition("=")
            if key == COOKIE and found:
                return found.strip('"')
    return None
