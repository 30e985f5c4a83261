"""The API's one error shape, the strict reading of JSON bodies, and the error handlers.

Every error leaves as ``{error: {code, message, details, isRetryable}}`` with the
status of its code (``actors.errors``), including the ones Quart raises itself
(404, 405, 413, 415) and anything unexpected, which is logged and answered
INTERNAL_ERROR rather than leaking a stack trace.

A body is refused before validation when it is not what a JSON API takes: another
Content-Type (415), more than ``max_body_bytes`` (413), text that is not strict JSON
(NaN, numbers too large or too long to read, nesting beyond the parser, lone UTF-16
surrogates that could not be stored) (400). Each is the client's mistake, so none may surface
as a 500.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from quart import Quart, Response, current_app, request
from werkzeug.exceptions import HTTPException

from actors.errors import EaselError, ErrorCode, ErrorInfo, http_status
from actors.redaction import SECRETS

log = logging.getLogger(__name__)

#: The code of each status Quart raises on its own.
_HTTP_CODES = {
    400: ErrorCode.INVALID_REQUEST,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.INVALID_REQUEST,
    413: ErrorCode.INVALID_REQUEST,
    415: ErrorCode.INVALID_REQUEST,
}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``data`` as a JSON response: the one writer of every answer, errors included.

    Every configured secret is masked in the text sent (``actors/redaction.py``):
    whatever a job, an event or a health figure came to hold, no credential leaves.
    """
    return Response(SECRETS.mask(json.dumps(data)), status=status, content_type="application/json",
                    headers=headers)


#: Writes an error in another API's envelope: ``(info, status, headers)``.
Envelope = Callable[[ErrorInfo, int, "dict[str, str] | None"], Response]
_ENVELOPES = "easel.envelopes"


def speak_under(app: Quart, prefix: str, envelope: Envelope) -> None:
    """Answer every error of a path under ``prefix`` with ``envelope``: a family
    speaking another API's dialect (``/v1/``) gets its errors, those the app-wide
    hooks and Quart raise included, in that API's shape."""
    app.extensions.setdefault(_ENVELOPES, {})[prefix] = envelope


def error_response(info: ErrorInfo, status: int | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    """``info`` in the error envelope of the path asked for, with its code's status
    unless told another."""
    status = status or http_status(info.code)
    for prefix, envelope in current_app.extensions.get(_ENVELOPES, {}).items():
        if request.path.startswith(prefix):
            return envelope(info, status, headers)
    return json_response({"error": info.to_json()}, status, headers)


class Refused(Exception):
    """A request refused with a status other than its code's own (415 for a body type)."""

    def __init__(self, info: ErrorInfo, status: int) -> None:
        super().__init__(info.message)
        self.info = info
        self.status = status


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"{text[:40]} is too large for a number")
    return number


#: One strict decoder for every body: ``json.loads`` with hooks makes a new one
#: (and its scanner) per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def parse_json(raw: bytes) -> Any:
    """Strict JSON from a request body, or INVALID_REQUEST saying what is wrong.

    Python's parser takes ``NaN`` and ``Infinity`` (not JSON), reads ``1e400`` as
    infinity (which it would write back as ``Infinity``, not JSON either), raises
    ValueError past 4300 digits and RecursionError on deep nesting; a ``\\ud800``
    escape yields a string SQLite cannot store. All are refused here.
    """
    try:
        # What json.loads does with bytes: UTF-8, -16 or -32, told by the first bytes.
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
        # A lone surrogate comes only from a \u escape or from bytes beyond ASCII
        # (the parser decodes with surrogatepass); ASCII text without an escape
        # cannot hold one.
        if b"\\u" in raw or not raw.isascii():
            json.dumps(body, ensure_ascii=False).encode()  # lone surrogates raise here
    except RecursionError:
        raise EaselError(ErrorCode.INVALID_REQUEST, "body is nested too deeply") from None
    except UnicodeError as exc:
        raise EaselError(ErrorCode.INVALID_REQUEST,
                         f"body is not valid UTF-8 JSON text: {exc.reason}") from None
    except ValueError as exc:  # JSONDecodeError is one
        raise EaselError(ErrorCode.INVALID_REQUEST, f"body is not valid JSON: {exc}") from None
    return body


async def json_body() -> Any:
    """The request's body as strict JSON (415 for another Content-Type, 413 if too long).

    The body is read first, so a refused one never stays unread on a connection the
    client goes on using.
    """
    raw = await request.get_data(cache=False)
    if request.mimetype != "application/json":
        info = ErrorInfo(ErrorCode.INVALID_REQUEST, "Content-Type must be application/json",
                         {"contentType": (request.content_type or "")[:200], "httpStatus": 415})
        raise Refused(info, 415)
    return parse_json(raw)


async def _easel_error(exc: EaselError) -> Response:
    # A refusal that knows when to come back says so (a drain, a rate limit); a
    # draining daemon also closes the connection, so the client reconnects elsewhere.
    headers = {"Retry-After": str(math.ceil(exc.retry_after))} if exc.retry_after else {}
    if exc.code is ErrorCode.SHUTTING_DOWN:
        headers["Connection"] = "close"
    return error_response(exc.info, headers=headers or None)


async def _refused(exc: Refused) -> Response:
    return error_response(exc.info, exc.status)


async def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    fallback = ErrorCode.INVALID_REQUEST if status < 500 else ErrorCode.INTERNAL_ERROR
    code = _HTTP_CODES.get(status, fallback)
    if status == 413:
        # The route's own limit: a batch's is larger than the others'.
        message = f"request body is larger than {request.max_content_length} bytes"
    elif status == 404:
        message = "no such path"
    elif status == 405:
        message = f"method {request.method} is not allowed here"
    else:
        message = exc.description or exc.name
    # A 413 leaves the body unread on the connection: close it, or the client's next
    # request on it would wait for an answer that never comes.
    headers = {"Connection": "close"} if status == 413 else None
    return error_response(ErrorInfo(code, message, {"httpStatus": status}), status, headers)


async def _unexpected(exc: Exception) -> Response:
    log.error("unhandled error in %s %s", request.method, request.path, exc_info=exc)
    return error_response(ErrorInfo(ErrorCode.INTERNAL_ERROR, "internal error"))


def install(app: Quart) -> None:
    """Answer every error ``app`` meets in the envelope (the most specific handler wins)."""
    app.register_error_handler(EaselError, _easel_error)
    app.register_error_handler(Refused, _refused)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
