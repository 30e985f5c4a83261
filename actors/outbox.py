"""The client webhook deliverer: signed POSTs from the persisted outbox.

Owns the ``webhook_outbox`` rows once they exist (``Store.transition`` writes one in
the same transaction that makes a job with a ``webhook_url`` terminal, and
``Store.end_batch`` one in the transaction that ends a batch with a
``webhookUrl``, so a crash can never lose a delivery). The store's change feed
wakes it when a new row may be due, a nudge (an empty message) when a batch's end
wrote one, and a timer when a retry falls due.

Each delivery POSTs the job JSON (``Job.to_api()``, result URLs made at delivery
by ``ResultLinks``: a presigned URL is fresh when it leaves)
signed per Standard Webhooks (``webhook-id`` stable per delivery,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``) through the
SSRF-checked ``Fetcher`` (``actors/fetch.py``). A 2xx marks it delivered; 410 Gone
stops it; anything else is retried per ``BACKOFF`` (never sooner than the
receiver's ``Retry-After``) until the row is ``max_age`` old. A target that is not
a public address (unless allowed) fails at once: retrying cannot make it
acceptable. Rows live in SQLite, so retries survive restarts: on start every due
row is picked up again. Delivery is at least once: a receiver should de-duplicate
on ``webhook-id``.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from actors import context
from actors.clock import trio_time_of, wall_now
from actors.fetch import Fetcher, FetchFailed
from actors.jobs import Job
from actors.monitor import Monitor
from actors.redaction import SECRETS
from actors.retry import Backoff, parse_retry_after
from actors.signing import SignatureError, secret_key, sign
from actors.storage import ResultLinks
from actors.store import (
    OUTBOX_DELIVERED,
    OUTBOX_FAILED,
    OUTBOX_PENDING,
    OutboxRow,
    Store,
)
from actors.targets import IPAddress, Resolver, TargetRefused, is_public, resolve_host

log = logging.getLogger(__name__)

#: Waits between attempts: 5 s, then twice as long each time up to an hour, each
#: shortened by up to a fifth at random, so that receivers that come back after an
#: outage are not hit by every pending delivery in the same second.
BACKOFF = Backoff(base=5.0, cap=3600.0, jitter=0.2)


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


class _Failed(Exception):
    """One attempt failed; ``status`` is the receiver's answer when there was one,
    ``retry_after`` the seconds its ``Retry-After`` asked for."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Outbox:
    """Delivers the outbox. Make one per runtime; ``run`` is a supervised actor."""

    def __init__(
        self,
        store: Store,
        settings: OutboxSettings,
        *,
        changes: trio.MemoryReceiveChannel[Job],
        monitor: Monitor,
        links: ResultLinks | None = None,
        rng: random.Random | None = None,
        resolve: Resolver = resolve_host,
        public: Callable[[IPAddress], bool] = is_public,
        nudges: trio.MemoryReceiveChannel[None] | None = None,
    ) -> None:
        """``changes``: the store's change feed (a job that ended with a
        ``webhook_url`` has a new row to deliver). ``links`` makes the result URLs
        of each payload (none: sent as stored). ``resolve`` and ``public`` are
        the ``Fetcher``'s seams for tests. ``nudges``: a row was written by no
        job's change (a batch's end, ``actors/batches/ending.py``): look now."""
        self.store = store
        self.settings = settings
        SECRETS.add_fields(settings)  # the signing secret, even a generated one
        self.links = links
        self.monitor = monitor
        self._changes = changes
        self._nudges = nudges
        self._rng = rng or random.Random()
        self._resolve = resolve
        self._public = public
        self._in_flight: set[str] = set()
        self._wake = trio.Event()
        self._warned_no_secret = False

    async def _follow_changes(self) -> None:
        """Wake the delivery loop when a job ends with a ``webhook_url``: its row
        was written in the same transaction."""
        async for job in self._changes:
            if job.state.terminal and job.webhook_url:
                self._wake.set()

    async def _follow_nudges(self) -> None:
        if self._nudges is None:
            return
        async for _ in self._nudges:
            self._wake.set()

    def _emit(self, kind: str, **data: Any) -> None:
        self.monitor.emit(kind, **data)

    async def run(self) -> None:
        async with Fetcher(
            timeout=self.settings.timeout,
            allow_private=self.settings.allow_private_targets,
            resolve=self._resolve,
            public=self._public,
        ) as fetcher, trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_changes)
            nursery.start_soon(self._follow_nudges)
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
                        nursery.start_soon(self._deliver, fetcher, row, name=f"webhook:{row.id}")
                    if len(self._in_flight) < self.settings.max_concurrency:
                        due = await self.store.next_webhook_at(self._in_flight)
                        if due is not None:
                            deadline = trio_time_of(due)
                with trio.move_on_at(deadline):
                    await self._wake.wait()

    async def _deliver(self, fetcher: Fetcher, row: OutboxRow) -> None:
        context.job_id.set(row.job_id)
        try:
            await self._attempt(fetcher, row)
        finally:
            self._in_flight.discard(row.id)
            self._wake.set()

    async def _attempt(self, fetcher: Fetcher, row: OutboxRow) -> None:
        attempt = row.attempts + 1
        retry_after = None
        try:
            try:
                with trio.fail_after(self.settings.timeout):
                    status = await self._post(fetcher, row)
            except trio.TooSlowError:
                raise _Failed(f"no answer within {self.settings.timeout:g} s") from None
        except TargetRefused as exc:
            error = f"refused target: {exc}"
            log.warning("webhook %s to %s not sent: %s", row.id, row.url, error)
            await self.store.record_webhook_attempt(row.id, OUTBOX_FAILED, status=None, error=error)
            self._emit("webhook.failed", reason="target")
            return
        except _Failed as exc:
            status, error, retry_after = exc.status, str(exc), exc.retry_after
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
        retry_at = min(now + BACKOFF.delay(attempt, retry_after, rng=self._rng), give_up_at)
        log.info("webhook %s attempt %d failed (%s); next in %.0f s",
                 row.id, attempt, error, retry_at - now)
        await self.store.record_webhook_attempt(
            row.id, OUTBOX_PENDING, status=status, error=error, next_attempt_at=retry_at
        )
        self._emit("webhook.retry")

    async def _signed(self, row: OutboxRow) -> tuple[bytes, dict[str, str]]:
        payload = json.loads(row.payload)
        if self.links is not None:
            payload = await self.links.present(payload)
        body = json.dumps(payload).encode()
        # Real wall time, not trio's clock: receivers compare it with their own clock.
        timestamp = int(time.time())
        return body, {
            "content-type": "application/json",
            "user-agent": "Easel-Webhooks/1",
            "webhook-id": row.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.settings.secret, row.id, timestamp, body),
        }

    async def _post(self, fetcher: Fetcher, row: OutboxRow) -> int:
        """One attempt: the status of the final answer, if 2xx; else ``_Failed``
        (``TargetRefused`` for a URL or a redirect hop that may not be sent to)."""
        body, headers = await self._signed(row)
        try:
            async with fetcher.stream("POST", row.url, content=body, headers=headers) as response:
                status = response.status_code  # the body is never read
                retry_after = parse_retry_after(response.headers.get("retry-after"))
        except FetchFailed as exc:
            raise _Failed(str(exc)) from None
        if 200 <= status < 300:
            return status
        raise _Failed(f"receiver answered HTTP {status}", status, retry_after)
