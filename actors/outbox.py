"""The client webhook deliverer: signed POSTs from the persisted outbox.

Owns the ``webhook_outbox`` rows once they exist (``Store.transition`` writes one in
the same transaction that makes a job with a ``webhook_url`` terminal, so a crash
can never lose a delivery) and takes no messages: a store listener wakes it when a
new row may be due, and a timer when a retry falls due.

Each delivery POSTs the job JSON (``Job.to_api()``, media URLs made absolute)
signed per Standard Webhooks (``webhook-id`` stable per delivery,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``). A 2xx marks
it delivered; 410 Gone stops it; anything else is retried with exponential backoff
and jitter until the row is ``max_age`` old. A target that is not a public address
(unless allowed) fails at once: retrying cannot make it acceptable. Rows live in
SQLite, so retries survive restarts: on start every due row is picked up again.
Delivery is at least once: a receiver should de-duplicate on ``webhook-id``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import random
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import attrs
import httpx
import trio

from actors import context
from actors.clock import trio_time_of, wall_now
from actors.jobs import Job
from actors.monitor import Monitor
from actors.signing import SignatureError, secret_key, sign
from actors.storage import MEDIA_PREFIX
from actors.store import (
    OUTBOX_DELIVERED,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    OutboxRow,
    Store,
)
from actors.targets import Resolver, TargetRefused, check_target, resolve_host

log = logging.getLogger(__name__)

#: Seconds before the first retry; each further retry waits twice as long ...
FIRST_RETRY = 5.0
#: ... up to this.
MAX_RETRY = 3600.0
#: Each wait is stretched by up to this fraction, at random, so receivers that come
#: back after an outage are not hit by every pending delivery in the same second.
JITTER = 0.2
#: Redirects followed per attempt (each hop's target is checked like the first).
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _check_secret(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        return
    try:
        if not value.startswith("whsec_") or not secret_key(value):
            raise SignatureError
    except SignatureError:
        # The value itself stays out of the message: it is a secret.
        raise ValueError(f"'{attribute.name}' must be 'whsec_' followed by base64") from None


@attrs.frozen
class OutboxSettings:
    """``[webhooks]``: how Easel calls clients back when their jobs end."""

    #: ``whsec_`` + base64 key. Empty: the daemon generates one in its state dir.
    secret: str = attrs.field(default="", validator=_check_secret, repr=False)
    #: Allow receivers on loopback, private, link-local or other non-public addresses.
    allow_private_targets: bool = False
    #: Seconds after the job ended at which an undelivered webhook is given up.
    max_age: float = attrs.field(default=86_400.0, validator=attrs.validators.gt(0))
    #: Seconds one attempt (DNS, connect, request, answer) may take.
    timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    #: Deliveries attempted at once.
    max_concurrency: int = attrs.field(default=16, validator=attrs.validators.ge(1))


def retry_delay(attempts: int, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: 5, 10, 20, ...
    capped at an hour, each stretched by up to ``JITTER``."""
    base = min(FIRST_RETRY * 2 ** min(attempts - 1, 30), MAX_RETRY)
    return base * (1 + JITTER * rng.random())


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def load_or_create_secret(path: Path) -> str:
    """The signing secret kept at ``path``, created (mode 0600) on first use.

    So that deliveries are always signed even when the operator set no
    ``[webhooks] secret``; the operator gives this file's content to receivers.
    Blocking: call it in a worker thread.
    """
    try:
        secret = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = new_secret()
        # O_EXCL: two daemons starting on one state dir cannot both write it.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_or_create_secret(path)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secret + "\n")
        log.warning("[webhooks] secret is not set: generated one in %s", path)
        return secret
    if not secret.startswith("whsec_"):
        raise ValueError(f"{path}: expected 'whsec_' followed by base64")
    secret_key(secret)  # raises SignatureError when not base64
    log.info("webhooks are signed with the secret in %s", path)
    return secret


def absolutise(data: dict[str, Any], base_url: str) -> dict[str, Any]:
    """The job JSON with its ``/media/...`` result URLs made absolute on ``base_url``
    (as the HTTP API does), since a receiver has no request to resolve them against."""
    base = base_url.rstrip("/")
    if not base:
        return data
    results = [
        {**r, "url": base + r["url"]}
        if isinstance(r, dict) and str(r.get("url", "")).startswith(MEDIA_PREFIX) else r
        for r in data.get("results") or []
    ]
    return {**data, "results": results}


class _Failed(Exception):
    """One attempt failed; ``status`` is the receiver's answer when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Outbox:
    """Delivers the outbox. Make one per runtime; ``run`` is a supervised actor."""

    def __init__(
        self,
        store: Store,
        settings: OutboxSettings,
        *,
        base_url: str = "",
        monitor: Monitor | None = None,
        rng: random.Random | None = None,
        resolve: Resolver = resolve_host,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.base_url = base_url
        self.monitor = monitor
        self._rng = rng or random.Random()
        self._resolve = resolve
        self._transport = transport
        self._in_flight: set[str] = set()
        self._wake = trio.Event()
        self._warned_no_secret = False

    def notify(self, job: Job) -> None:
        """Store listener: a job that just ended with a webhook_url has a new row."""
        if job.state.terminal and job.webhook_url:
            self._wake.set()

    def _emit(self, kind: str, **data: Any) -> None:
        if self.monitor is not None:
            self.monitor.emit(kind, **data)

    async def run(self) -> None:
        async with httpx.AsyncClient(
            timeout=self.settings.timeout,
            follow_redirects=False,  # followed by hand, each hop checked
            trust_env=False,  # a proxy from the environment would bypass the check
            transport=self._transport,
        ) as client, trio.open_nursery() as nursery:
            while True:
                # A fresh event before looking: a row that commits while we look
                # sets it, and the loop looks again.
                self._wake = trio.Event()
                free = self.settings.max_concurrency - len(self._in_flight)
                deadline = math.inf
                if not self.settings.secret:
                    # Only an embedding that passed no secret gets here (the daemon
                    # always has one): never send unsigned, keep the rows.
                    waiting = await self.store.next_webhook_at()
                    if waiting is not None and not self._warned_no_secret:
                        log.error("no webhook secret: deliveries wait until one is set")
                        self._warned_no_secret = True
                elif free > 0:
                    for row in await self.store.due_webhooks(wall_now(), free, self._in_flight):
                        self._in_flight.add(row.id)
                        nursery.start_soon(self._deliver, client, row, name=f"webhook:{row.id}")
                    if len(self._in_flight) < self.settings.max_concurrency:
                        due = await self.store.next_webhook_at(self._in_flight)
                        if due is not None:
                            deadline = trio_time_of(due)
                with trio.move_on_at(deadline):
                    await self._wake.wait()

    async def _deliver(self, client: httpx.AsyncClient, row: OutboxRow) -> None:
        context.job_id.set(row.job_id)
        try:
            await self._attempt(client, row)
        finally:
            self._in_flight.discard(row.id)
            self._wake.set()

    async def _attempt(self, client: httpx.AsyncClient, row: OutboxRow) -> None:
        attempt = row.attempts + 1
        try:
            try:
                with trio.fail_after(self.settings.timeout):
                    status = await self._post(client, row)
            except trio.TooSlowError:
                raise _Failed(f"no answer within {self.settings.timeout:g} s") from None
        except TargetRefused as exc:
            error = f"refused target: {exc}"
            log.warning("webhook %s to %s not sent: %s", row.id, row.url, error)
            await self.store.record_webhook_attempt(row.id, OUTBOX_FAILED, status=None, error=error)
            self._emit("webhook.failed", reason="target")
            return
        except _Failed as exc:
            status, error = exc.status, str(exc)
        else:
            log.info("webhook %s delivered to %s (HTTP %d)", row.id, row.url, status)
            await self.store.record_webhook_attempt(
                row.id, OUTBOX_DELIVERED, status=status, error=None
            )
            self._emit("webhook.delivered")
            return
        if status == 410:
            log.warning("webhook %s: %s answered 410 Gone; not retried", row.id, row.url)
            await self.store.record_webhook_attempt(
                row.id, OUTBOX_FAILED, status=status, error=error
            )
            self._emit("webhook.failed", reason="gone")
            return
        now = wall_now()
        give_up_at = row.created_at + self.settings.max_age
        if now >= give_up_at:
            log.error("webhook %s to %s given up after %d attempts over %.0f s: %s",
                      row.id, row.url, attempt, now - row.created_at, error)
            error = f"gave up after {attempt} attempts: {error}"
            await self.store.record_webhook_attempt(
                row.id, OUTBOX_FAILED, status=status, error=error
            )
            self._emit("webhook.failed", reason="max_age")
            return
        # The last try lands at the deadline itself rather than past it.
        retry_at = min(now + retry_delay(attempt, self._rng), give_up_at)
        log.info("webhook %s attempt %d failed (%s); next in %.0f s",
                 row.id, attempt, error, retry_at - now)
        await self.store.record_webhook_attempt(
            row.id, OUTBOX_PENDING, status=status, error=error, next_attempt_at=retry_at
        )
        self._emit("webhook.retry")

    def _signed(self, row: OutboxRow) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(absolutise(json.loads(row.payload), self.base_url)).encode()
        # Real wall time, not trio's clock: receivers compare it with their own clock.
        timestamp = int(time.time())
        return body, {
            "content-type": "application/json",
            "user-agent": "Easel-Webhooks/1",
            "webhook-id": row.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.settings.secret, row.id, timestamp, body),
        }

    async def _post(self, client: httpx.AsyncClient, row: OutboxRow) -> int:
        """One attempt: the status of the final answer, if 2xx; else ``_Failed``."""
        body, headers = self._signed(row)
        url = row.url
        for _ in range(MAX_REDIRECTS + 1):
            await self._check(url)
            try:
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    status = response.status_code  # the body is never read
                    location = response.headers.get("location")
            except httpx.HTTPError as exc:
                name = type(exc).__name__
                raise _Failed(f"{name}: {exc}" if str(exc) else name) from None
            except (httpx.InvalidURL, ValueError) as exc:  # e.g. a Location httpx refuses
                raise TargetRefused(f"not a URL Easel can send to: {exc}") from None
            if 200 <= status < 300:
                return status
            if status in _REDIRECTS and location:
                url = urljoin(url, location)
                continue
            raise _Failed(f"receiver answered HTTP {status}", status)
        raise _Failed(f"more than {MAX_REDIRECTS} redirects")

    async def _check(self, url: str) -> None:
        try:
            await check_target(url, allow_private=self.settings.allow_private_targets,
                               resolve=self._resolve)
        except TargetRefused:
            raise
        except OSError as exc:  # DNS may come back: a failed attempt, not a refusal
            raise _Failed(f"cannot resolve: {exc}") from None
        except ValueError as exc:  # a name no resolver takes (UnicodeError): never will
            raise TargetRefused(f"cannot resolve: {exc}") from None
