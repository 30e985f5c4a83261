"""The API's connections: accepted, counted, bounded in number and in time.

hypercorn speaks HTTP/1.1 on each connection (its ``TCPServer``); this module owns
everything around it that hypercorn's trio worker does not do, or does not do
under quart-trio:

- **How many.** ``serve_http`` runs its own accept loop over the listening sockets
  with at most ``max_connections`` connections open at once. A connection past the
  cap is answered ``503`` with ``Connection: close`` and closed at once, so the
  descriptors of the established connections, the store and the provider calls
  are never the ones that run out.
- **Out of descriptors anyway.** ``accept`` failing with EMFILE (or ENFILE, ENOMEM,
  ENOBUFS) is logged as one warning a minute with the count of failures, not a
  traceback every 0.1 s as ``trio.serve_listeners`` does; the pending client waits
  in the backlog and the established connections go on being served.
- **Idle keep-alive.** hypercorn restarts its keep-alive timer inside the ``send``
  call that completes a response, after it has told the app the request is over
  (``http.disconnect``). quart-trio cancels the request's tasks as soon as it reads
  that message, which cancels that very ``send`` before the timer task starts: a
  connection idle after its first response was never closed. ``ConnectionGuard``
  shields the completing send, so the timer starts and ``keep_alive_timeout``
  closes idle connections (and connections dribbling the headers of their next
  request, which hypercorn counts as idle until the headers are complete).
- **Clients that leave.** hypercorn's connection task ends only once its
  keep-alive timer has run out, even when the client closed the connection long
  before: its descriptor and its place under the cap were held for the whole
  ``keep_alive_timeout``. ``EaselTCPServer`` stops the timer when reading ends.
- **Slow bodies.** hypercorn's own ``read_timeout`` bounds each ``recv``, not a
  request, so a client sending a byte now and then is never cut off (and set
  below 120 s it would also cut ``?wait=`` long-polls, whose clients rightly send
  nothing). ``ConnectionGuard`` gives a request's body ``read_timeout`` seconds
  from the end of its headers; past it the request is answered ``408`` and the
  connection closed.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from socket import socket
from typing import Any

import hypercorn.config
import hypercorn.utils
import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import (
    AppWrapper,
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ConnectionState,
    LifespanState,
    Scope,
)

from actors.errors import ErrorCode, ErrorInfo

log = logging.getLogger(__name__)

#: ``accept`` errors that mean "no resources for one more connection right now".
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

#: Seconds between accept attempts while out of descriptors (trio's own pause).
CAPACITY_PAUSE = 0.1

#: At most one "out of descriptors" warning per this many seconds.
CAPACITY_WARNING_INTERVAL = 60.0

_OVER_CAPACITY_BODY = b"too many open connections\n"
#: What a connection past ``max_connections`` is told before it is closed.
OVER_CAPACITY_ANSWER = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain\r\n"
    b"content-length: %d\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"\r\n%s" % (len(_OVER_CAPACITY_BODY), _OVER_CAPACITY_BODY)
)

Handler = Callable[[trio.SocketStream], Awaitable[object]]


class CapacityWarning:
    """One warning per ``interval`` seconds while ``accept`` keeps failing for lack
    of descriptors, saying how many attempts failed since the previous one."""

    def __init__(self, interval: float = CAPACITY_WARNING_INTERVAL) -> None:
        self.interval = interval
        self._failures = 0
        self._next = -math.inf

    def failed(self, exc: OSError) -> None:
        self._failures += 1
        now = trio.current_time()
        if now < self._next:
            return
        log.warning(
            "cannot accept connections: %s (%s), %d attempts failed; the open"
            " connections are still served (raise LimitNOFILE / ulimit -n, or lower"
            " daemon.max_connections)",
            errno.errorcode.get(exc.errno or 0, exc.errno), os.strerror(exc.errno or 0),
            self._failures,
        )
        self._failures = 0
        self._next = now + self.interval


async def refuse(stream: trio.SocketStream) -> None:
    """Tell a connection past the cap why, then close it. A fresh socket's send
    buffer takes these few bytes at once; the bound is for a peer already gone."""
    with trio.move_on_after(1):
        try:
            await stream.send_all(OVER_CAPACITY_ANSWER)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(stream)


async def accept_loop(
    listener: trio.abc.Listener[trio.SocketStream],
    handler: Handler,
    limiter: trio.CapacityLimiter,
    nursery: trio.Nursery,
    warning: CapacityWarning,
) -> None:
    """Accept on ``listener`` forever, each connection handled in ``nursery`` while
    holding a token of ``limiter``; past it, the connection is refused at once."""

    async def run(stream: trio.SocketStream, token: object) -> None:
        try:
            await handler(stream)
        finally:
            await trio.aclose_forcefully(stream)
            limiter.release_on_behalf_of(token)

    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRNOS:
                    raise
                warning.failed(exc)
                await trio.sleep(CAPACITY_PAUSE)
                continue
            token = object()
            try:
                limiter.acquire_on_behalf_of_nowait(token)
            except trio.WouldBlock:
                nursery.start_soon(refuse, stream)
            else:
                nursery.start_soon(run, stream, token)


class EaselTCPServer(TCPServer):
    """hypercorn's connection handler, with its keep-alive timer stopped once the
    client is gone (reading ended), so the connection ends then, not when the timer
    would have fired."""

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            await self.idle_task.stop()


class ConnectionGuard:
    """ASGI middleware: the keep-alive timer really restarts after each response,
    and a request body slower than ``read_timeout`` seconds is cut off (408)."""

    def __init__(self, app: ASGIFramework, read_timeout: float) -> None:
        self.app = app
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answering = False
        deadline = trio.CancelScope(deadline=trio.current_time() + self.read_timeout)

        async def receive_body() -> Any:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                deadline.deadline = math.inf  # the whole body is in (or never will be)
            return message

        async def send_answer(message: Any) -> None:
            nonlocal answering
            if message["type"] == "http.response.start":
                answering = True
                deadline.deadline = math.inf
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                # hypercorn recycles the connection and restarts its keep-alive
                # timer inside this call; quart-trio cancels the request's tasks
                # in the middle of it (see the module docstring).
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        with deadline:
            await self.app(scope, receive_body, send_answer)
        if deadline.cancelled_caught and not answering:
            async with trio.open_nursery() as nursery:
                # Nobody reads the request any more: hypercorn would block on its
                # full queue, in the middle of closing the connection.
                nursery.start_soon(_discard, receive)
                await _send_timeout(send, self.read_timeout)


async def _discard(receive: ASGIReceiveCallable) -> None:
    """Read and drop what is left of a request until hypercorn says it is over
    (which it does as the 408 is sent; the bound is for a bug of ours, not a peer)."""
    with trio.move_on_after(5):
        while (await receive())["type"] != "http.disconnect":
            pass


async def _send_timeout(send: ASGISendCallable, read_timeout: float) -> None:
    info = ErrorInfo(
        ErrorCode.INVALID_REQUEST,
        f"request body not received within {read_timeout:g} seconds",
        {"httpStatus": 408},
    )
    body = json.dumps({"error": info.to_json()}).encode()
    await send({
        "type": "http.response.start",
        "status": 408,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
        "trailers": False,
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve_http(
    app: ASGIFramework,
    config: hypercorn.config.Config,
    sockets: Sequence[socket],
    *,
    max_connections: int,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the listening ``sockets`` until cancelled: hypercorn's trio
    worker (lifespan, one ``TCPServer`` per connection, ``graceful_timeout`` for
    the open ones at the end) over ``accept_loop``, with ``EaselTCPServer`` for
    each connection. ``app`` has ``ConnectionGuard`` inside it (``create_app``
    puts it under the access log). ``task_status.started`` gets the ``http://``
    addresses."""
    config.set_statsd_logger_class(StatsdLogger)
    wrapped: AppWrapper = hypercorn.utils.wrap_app(app, config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, lifespan_state)
    context = WorkerContext(None)
    limiter = trio.CapacityLimiter(max_connections)
    warning = CapacityWarning()
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            handler = functools.partial(
                EaselTCPServer, wrapped, config, context, ConnectionState(lifespan_state.copy())
            )
            listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))
                         for sock in sockets]
            binds = [f"http://{hypercorn.utils.repr_socket_addr(sock.family, sock.getsockname())}"
                     for sock in sockets]
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(
                            accept_loop, listener, handler, limiter, server_nursery, warning
                        )
                    task_status.started(binds)
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
