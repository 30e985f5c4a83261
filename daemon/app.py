"""The HTTP API: a quart-trio app over the runtime's actors.

Routes keep the paths existing clients use (DESIGN section 5). Every error leaves
as ``{error: {code, message, details, isRetryable}}`` with the status of its code,
including the ones Quart raises itself (404, 405, 413) and anything unexpected,
which is logged and answered INTERNAL_ERROR rather than leaking a stack trace.

A submission body is refused before validation when it is not what a JSON API
takes: another Content-Type (415), more than ``max_body_bytes`` (413), text that is
not strict JSON (NaN, numbers too long to read, nesting beyond the parser, lone
UTF-16 surrogates that could not be stored) (400). Each is the client's mistake,
so none may surface as a 500.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request, send_from_directory
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors import context, metrics
from actors.errors import EaselError, ErrorCode, ErrorInfo, http_status
from actors.jobs import Job
from actors.outbox import absolutise
from actors.runtime import Runtime
from actors.validation import job_from, parse_submission, request_hash

log = logging.getLogger(__name__)

#: The longest ``?wait=`` a status request may hold its connection, in seconds.
MAX_WAIT = 120.0
HEALTH_CACHE_SECONDS = 1.0

_HTTP_CODES = {
    400: ErrorCode.INVALID_REQUEST,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_REQUEST,
    413: ErrorCode.INVALID_REQUEST,
    415: ErrorCode.INVALID_REQUEST,
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON from a request body, or INVALID_REQUEST saying what is wrong.

    Python's parser takes ``NaN`` and ``Infinity`` (not JSON; they could not be sent
    back), raises ValueError past 4300 digits and RecursionError on deep nesting;
    a ``\\ud800`` escape yields a string SQLite cannot store. All are refused here.
    """
    try:
        body = json.loads(raw, parse_constant=_no_constant)
        json.dumps(body, ensure_ascii=False).encode()  # lone surrogates raise here
    except RecursionError:
        raise EaselError(ErrorCode.INVALID_REQUEST, "body is nested too deeply") from None
    except UnicodeError as exc:
        raise EaselError(ErrorCode.INVALID_REQUEST, f"body is not valid UTF-8 JSON text: {exc.reason}") from None
    except ValueError as exc:  # JSONDecodeError is one
        raise EaselError(ErrorCode.INVALID_REQUEST, f"body is not valid JSON: {exc}") from None
    return body


def _wait_seconds(text: str | None) -> float:
    """``?wait=`` as seconds from 0 to MAX_WAIT (a NaN would break the timeout)."""
    if text is None:
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds):
        raise EaselError(ErrorCode.INVALID_REQUEST, "wait must be a number of seconds",
                         {"wait": text[:100]})
    return min(max(seconds, 0.0), MAX_WAIT)


class _Refused(Exception):
    """A request refused with a status other than its code's own (415 for a body type)."""

    def __init__(self, info: ErrorInfo, status: int) -> None:
        super().__init__(info.message)
        self.info = info
        self.status = status


def error_response(info: ErrorInfo, status: int | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": info.to_json()})
    response = Response(body, status=status or http_status(info.code),
                        content_type="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, content_type="application/json")


def create_app(runtime: Runtime, *, media_dir: Path, max_body_bytes: int = 1_048_576,
               public_base_url: str = "", drain_retry_after: int = 30) -> QuartTrio:
    app = QuartTrio("easel")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    # A job id is one path segment: ``generation//x`` (an id of "/x") is no such job
    # (404), not a redirect to another path with an empty, non-JSON body.
    app.url_map.merge_slashes = False
    started_at = time.time()
    #: Provider section -> adapter family, which decides how ``parameters`` are checked.
    families = runtime.families
    health_cache: dict[str, Any] = {"at": -1e9, "body": None}

    def absolute(job: Job) -> dict[str, Any]:
        return absolutise(job.to_api(), public_base_url or request.host_url)

    @app.before_request
    async def tag_request() -> None:
        context.request_id.set(request.headers.get("X-Request-Id") or secrets.token_hex(8))

    @app.after_request
    async def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = context.request_id.get() or ""
        return response

    @app.errorhandler(EaselError)
    async def easel_error(exc: EaselError) -> Response:
        return error_response(exc.info)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, ErrorCode.INVALID_REQUEST if status < 500 else ErrorCode.INTERNAL_ERROR)
        message = {
            413: f"request body is larger than {max_body_bytes} bytes",
            404: "no such path",
            405: f"method {request.method} is not allowed here",
        }.get(status, exc.description or exc.name)
        # A 413 leaves the body unread on the connection: close it, or the client's
        # next request on it would wait for an answer that never comes.
        headers = {"Connection": "close"} if status == 413 else None
        return error_response(ErrorInfo(code, message, {"httpStatus": status}), status, headers)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
        return error_response(ErrorInfo(ErrorCode.INTERNAL_ERROR, "internal error"))

    async def json_body() -> Any:
        # Read first (413 beyond max_body_bytes), so a refused body never stays unread
        # on a connection the client goes on using.
        raw = await request.get_data(cache=False)
        if request.mimetype != "application/json":
            info = ErrorInfo(ErrorCode.INVALID_REQUEST, "Content-Type must be application/json",
                             {"contentType": (request.content_type or "")[:200], "httpStatus": 415})
            raise _Refused(info, 415)
        return parse_json(raw)

    @app.errorhandler(_Refused)
    async def refused(exc: _Refused) -> Response:
        return error_response(exc.info, exc.status)

    @app.post("/api/external/generation")
    async def submit() -> Response:
        if runtime.lifecycle.draining:
            return error_response(
                ErrorInfo(ErrorCode.SHUTTING_DOWN, "Easel is shutting down; retry shortly"),
                headers={"Retry-After": str(drain_retry_after), "Connection": "close"},
            )
        body = await json_body()
        parsed = parse_submission(body, runtime.catalog, families)
        key = request.headers.get("Idempotency-Key") or None
        if key is not None and len(key) > 255:
            raise EaselError(ErrorCode.INVALID_REQUEST, "Idempotency-Key is longer than 255 characters")
        job = job_from(parsed, runtime.catalog, idempotency_key=key, body_hash=request_hash(body))
        context.job_id.set(job.id)
        job, created = await runtime.submit(job)
        if created:
            metrics.JOBS_SUBMITTED.labels(model=job.model).inc()
            log.info("job accepted", extra={"model": job.model})
        return json_response(absolute(job), 202 if created else 200)

    @app.get("/api/external/generation/<job_id>")
    async def status(job_id: str) -> Response:
        wait = _wait_seconds(request.args.get("wait"))
        return json_response(absolute(await runtime.wait_for_job(job_id, wait)))

    @app.get("/api/external/generation/<job_id>/events")
    async def events(job_id: str) -> Response:
        return json_response({"id": job_id, "events": await runtime.job_events(job_id)})

    @app.post("/api/external/generation/<job_id>/cancel")
    async def cancel(job_id: str) -> Response:
        context.job_id.set(job_id)
        job = await runtime.cancel(job_id)
        return json_response(absolute(job))

    @app.post("/api/providers/<provider>/webhook")
    async def provider_webhook(provider: str) -> Response:
        context.provider.set(provider)
        body = await request.get_data(cache=False)
        try:
            outcome = await runtime.provider_webhook(provider, request.headers, body)
        except EaselError as exc:
            log.warning("provider webhook rejected: %s", exc.info.message)
            raise
        log.info("provider webhook: %s", outcome)
        return json_response({"received": True, "outcome": outcome})

    @app.get("/api/health")
    async def health() -> Response:
        now = time.monotonic()
        if health_cache["body"] is None or now - health_cache["at"] > HEALTH_CACHE_SECONDS:
            try:
                await runtime.ping_store()
                database = "ok"
            except Exception as exc:  # a failing database is what health is for
                database = f"error: {exc}"
            state = "draining" if runtime.lifecycle.draining else "ok"
            if database != "ok":
                state = "degraded"
            health_cache["body"] = {
                "status": state,
                "database": database,
                "uptimeSeconds": round(time.time() - started_at, 1),
                "providers": sorted(runtime.providers),
                "models": sorted(runtime.catalog),
            }
            health_cache["at"] = now
        body = health_cache["body"]
        return json_response(body, 200 if body["status"] == "ok" else 503)

    @app.get("/api/health/detailed")
    async def health_detailed() -> Response:
        counts = await runtime.count_by_state()
        return json_response({**runtime.statistics(), "jobs": counts})

    @app.get("/api/metrics")
    async def prometheus() -> Response:
        for state, count in (await runtime.count_by_state()).items():
            metrics.JOBS_BY_STATE.labels(state=state).set(count)
        for name, stats in runtime.statistics()["providers"].items():
            metrics.SLOTS_HELD.labels(provider=name).set(stats["slotsHeld"])
        return Response(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)

    @app.get("/media/<path:name>")
    async def media(name: str) -> Response:
        return await send_from_directory(media_dir, name)

    return app
