"""The delivery loop of one channel: its persisted notifications, sent in order.

Each notification is a row written with the alert's change (``Store.record_alert``),
so a restart finds every one not yet sent and sends it; one recorded SENT is never
sent again. (A crash between the channel taking it and the SENT record commits
would send that one again: at least once. Each carries a stable id, the
webhook's ``X-Easel-Notification-Id`` header and the email's ``Message-ID``, so a
receiver can drop the repeat.) A failure backs off (``actors/retry.py``, the
channel's peer's Retry-After honoured) without holding up the other channels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from actors.alerts.alerters import Alerter, SendFailed
from actors.alerts.records import DELIVERY_FAILED, DELIVERY_PENDING, DELIVERY_SENT
from actors.clock import trio_time_of, wall_now
from actors.retry import Backoff
from actors.store import Store

log = logging.getLogger(__name__)

#: Notifications read per round.
BATCH = 20


class Bell:
    """Rings the delivery loops when new notifications were stored."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def ring(self) -> None:
        self._event.set()
        self._event = trio.Event()

    def ticket(self) -> trio.Event:
        """Set at the next ring: taken before looking, so a ring while looking is
        not missed."""
        return self._event


async def deliver(
    store: Store, alerter: Alerter, *, backoff: Backoff, max_attempts: int, bell: Bell,
    on_outcome: Callable[[str, str], None],
) -> None:
    """Send ``alerter``'s channel's due notifications, forever. ``on_outcome``
    hears ``(channel, outcome)`` for each attempt: sent, retry or failed."""
    channel = alerter.channel
    while True:
        rung = bell.ticket()
        due = await store.due_alert_deliveries(channel, wall_now(), BATCH)
        for delivery in due:
            try:
                await alerter.send(delivery)
            except SendFailed as exc:
                attempt = delivery.attempts + 1
                if attempt >= max_attempts:
                    log.error("alert %s to %s failed for good: %s",
                              delivery.alert.fingerprint, channel, exc)
                    await store.record_alert_delivery(delivery.id, DELIVERY_FAILED,
                                                      error=str(exc))
                    on_outcome(channel, "failed")
                    continue
                delay = backoff.delay(attempt, exc.retry_after)
                log.warning("alert %s to %s failed (%s); retry in %.1fs",
                            delivery.alert.fingerprint, channel, exc, delay)
                await store.record_alert_delivery(
                    delivery.id, DELIVERY_PENDING, error=str(exc),
                    next_attempt_at=wall_now() + delay)
                on_outcome(channel, "retry")
                continue
            await store.record_alert_delivery(delivery.id, DELIVERY_SENT, error=None)
            on_outcome(channel, "sent")
        if due:
            continue
        upcoming = await store.next_alert_delivery_at(channel)
        deadline = trio_time_of(upcoming) if upcoming is not None else float("inf")
        with trio.move_on_at(deadline):
            await rung.wait()
