"""The daemon's life: start everything, serve, drain on a signal, stop.

``serve(config)`` first makes sure it may start (``daemon/startup.py``: files
private to the daemon's user, the state directory locked for this process alone,
descriptors for ``max_connections``, every address bound; otherwise a one-line
``StartupError``), then opens the store, builds the runtime (actors under their
supervisor) and the HTTP app, serves it (``daemon/connections.py``: the connection
cap, keep-alive and read timeouts), tells systemd READY, then waits for
SIGTERM/SIGINT.
Draining: submissions get 503 SHUTTING_DOWN, the scheduler and
pollers start nothing new, and the provider calls and finalizations already under
way get up to ``drain_timeout`` seconds to finish and record what they learned.
Then the actors are cancelled, the store commits what it was sent, and the process
exits 0. Whatever was still in flight is in SQLite and is picked up after restart.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
from typing import Any

import attrs
import hypercorn.config
import trio

from actors.outbox import load_or_create_secret
from actors.runtime import Runtime
from actors.store import open_store
from daemon.api import create_app
from daemon.config import Config, exposure_problem
from daemon.connections import serve_http
from daemon.sdnotify import SystemdNotifier, run_watchdog, watchdog_interval
from daemon.startup import (
    StartupError,
    StateDirLock,
    connection_budget,
    listen,
    private_files,
)

log = logging.getLogger(__name__)

#: The generated webhook signing secret, under ``state_dir``, when
#: ``[webhooks] secret`` is empty.
WEBHOOK_SECRET_FILE = "webhook_secret"


def hypercorn_config(config: Config) -> hypercorn.config.Config:
    hc = hypercorn.config.Config()
    hc.bind = list(config.daemon.bind)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("easel.http")
    # Idle keep-alive clients would otherwise hold serve() open for the whole
    # graceful time; the drain itself is ours, not hypercorn's.
    hc.graceful_timeout = 1.0
    # Kept by daemon/connections.py's ConnectionGuard: hypercorn's own keep-alive
    # timer does not restart under quart-trio without it.
    hc.keep_alive_timeout = config.daemon.keep_alive_timeout
    return hc


async def serve(
    config: Config,
    *,
    notifier: SystemdNotifier | None = None,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``stop`` is set), then drain.

    ``task_status.started`` receives ``{"binds": [...], "runtime": Runtime}`` once
    the API is listening, for tests that embed the daemon in their own nursery.
    Raises ``StartupError``, outside any nursery (so never inside an
    ExceptionGroup), when the state directory is locked by another process or
    cannot be made, an address cannot be bound, or a non-loopback address would
    be served without API keys; nothing has been read or started then.
    """
    problem = exposure_problem(config)
    if problem is not None:
        raise StartupError(problem)
    private_files()
    hc = hypercorn_config(config)
    lock = await trio.to_thread.run_sync(StateDirLock.acquire, config.state_dir)
    with contextlib.closing(lock):
        sockets = await trio.to_thread.run_sync(listen, hc.bind, hc.backlog)
        try:
            await _serve(config, hc, sockets, notifier=notifier, stop=stop,
                         task_status=task_status)
        finally:
            for sock in sockets:
                sock.close()


async def _serve(
    config: Config,
    hc: hypercorn.config.Config,
    sockets: list[socket.socket],
    *,
    notifier: SystemdNotifier | None,
    stop: trio.Event | None,
    task_status: trio.TaskStatus[dict[str, Any]],
) -> None:
    stop = trio.Event() if stop is None else stop
    notifier = notifier or SystemdNotifier()
    state_dir = config.state_dir
    media_dir = (state_dir / "media").resolve()
    media_dir.mkdir(parents=True, exist_ok=True)
    webhooks = config.webhooks
    if not webhooks.secret:
        secret = await trio.to_thread.run_sync(
            load_or_create_secret, state_dir / WEBHOOK_SECRET_FILE
        )
        webhooks = attrs.evolve(webhooks, secret=secret)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_store(state_dir / "easel.db") as store:
            runtime = Runtime(
                store,
                providers=config.providers,
                catalog=config.models,
                media_dir=media_dir,
                media=config.media,
                storage=config.storage,
                max_restarts=config.daemon.max_restarts,
                max_restart_seconds=config.daemon.max_restart_seconds,
                public_base_url=config.daemon.public_base_url,
                idempotency_window=config.daemon.idempotency_window,
                webhooks=webhooks,
                media_base_url=config.daemon.public_base_url or _bind_url(config.daemon.bind),
                limits=config.limits,
                key_cache_seconds=config.auth.key_cache_seconds,
                preprocess=config.preprocess,
                monitoring=config.monitoring,
                watched_dirs=[config.state_dir],
            )
            app = create_app(
                runtime,
                media_dir=media_dir,
                max_body_bytes=config.daemon.max_body_bytes,
                public_base_url=config.daemon.public_base_url,
                drain_retry_after=max(1, int(config.daemon.drain_timeout)),
                auth_settings=config.auth,
                read_timeout=config.daemon.read_timeout,
                image_wait=config.openai_compat.image_wait,
                batch_limits=config.batches,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime.run)
                binds = await nursery.start(
                    functools.partial(
                        serve_http, app, hc, sockets,
                        max_connections=connection_budget(config.daemon.max_connections),
                    )
                )
                interval = watchdog_interval(os.environ)
                if interval is not None:
                    nursery.start_soon(run_watchdog, notifier, interval)
                log.info("easel listening on %s", ", ".join(binds))
                notifier.ready(f"listening on {', '.join(binds)}")
                task_status.started({"binds": binds, "runtime": runtime})

                nursery.start_soon(_stop_on_signal, signals, stop)
                await stop.wait()
                await drain(runtime, notifier, config.daemon.drain_timeout)
                nursery.cancel_scope.cancel()
        log.info("easel stopped")


def _bind_url(binds: list[str]) -> str:
    """The base of media URLs when ``public_base_url`` is not set: the first TCP
    address the API listens on (a client reached it there)."""
    for bind in binds:
        if not bind.startswith(("unix:", "fd://")):
            return f"http://{bind}"
    return ""


async def _stop_on_signal(signals: Any, stop: trio.Event) -> None:
    async for signum in signals:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()
        return


async def drain(runtime: Runtime, notifier: SystemdNotifier, timeout: float) -> None:
    runtime.lifecycle.start_drain()
    notifier.stopping(f"draining: {runtime.lifecycle.busy_count} provider calls in flight")
    with trio.move_on_after(timeout) as scope:
        await runtime.lifecycle.wait_idle()
    if scope.cancelled_caught:
        log.warning(
            "drain timeout: %d provider calls still in flight are left to recovery",
            runtime.lifecycle.busy_count,
        )
    else:
        log.info("drained: no provider call in flight")
