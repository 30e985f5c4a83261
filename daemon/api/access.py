"""The access log and request ids: one line per request, one id per request.

``AccessLog`` wraps the app at the ASGI level, outside Quart, so it sees every
request the app answers, whatever answered it: a route, an error handler, Quart's
own 404/405/413 or the handler of unexpected errors. For each request it:

- takes the client's ``X-Request-Id`` when it is a safe token (1-64 letters,
  digits and ``._-``) or makes a new one, and sets ``actors.context.request_id``
  before the app runs, so every log line written while handling the request
  carries it (the app's tasks are spawned inside this call and inherit the context);
- echoes the id in the response's ``X-Request-Id`` header;
- writes one line to the ``easel.access`` logger as the response's last part is
  sent (or when the app ends without answering in full):
  ``"POST /api/external/generation 202"`` with the fields ``method``, ``path``,
  ``status``, ``duration_ms`` and ``remote`` (the client's address), plus
  ``request_id`` from the context.

It is on the submit path of every request, so it stays cheap: no Quart objects, one
logging call whose formatting and writing happen on the logging thread.
"""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any

from hypercorn.typing import ASGIFramework, ASGIReceiveCallable, ASGISendCallable, Scope

from actors import context

log = logging.getLogger("easel.access")

_HEADER = b"x-request-id"
#: A client's request id is taken only if it is this: what UUIDs, hex and
#: ``prefix_id`` styles use, and short. Nothing else is echoed into a header and
#: every log line: no spaces, quotes, control characters, ``/``, ``:`` or ``=``
#: that a log reader, a shell or a URL would take for something else, and no room
#: for a payload (the header may be 8 KB).
_SANE_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def request_id_from(headers: Any) -> str:
    """The client's ``X-Request-Id`` if it is safe, else a fresh 16-hex-digit id.

    A fresh id only has to be unique enough to tell requests apart in the logs (a
    client may send any id it likes), so it comes from ``random``, not from the
    system's entropy source: one system call fewer per request.
    """
    for name, value in headers:
        if name == _HEADER and _SANE_ID.fullmatch(value):
            return value.decode("ascii")
    return f"{random.getrandbits(64):016x}"


class AccessLog:
    """ASGI middleware: request id in, request id out, one access-log line."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        encoded = request_id.encode("ascii")
        status = 500  # what the client is left with if the app ends without answering
        logged = False

        def log_once() -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            client = scope.get("client")
            log.info(
                "%s %s %s", scope["method"], scope["path"], status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "remote": client[0] if client else "",
                },
            )

        async def send_with_id(message: Any) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (_HEADER, encoded)]}
            elif kind == "http.response.body" and not message.get("more_body", False):
                # Logged before the last byte leaves: once a client has its answer,
                # the line is already queued (a test, or a person, can rely on it).
                log_once()
            await send(message)

        token = context.request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log_once()  # the app ended without a complete answer: still one line
            context.request_id.reset(token)
