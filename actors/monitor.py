"""The monitor actor: counts what happens, without ever slowing it down.

Mailbox messages are ``MonitorEvent``s. Senders use ``emit`` (``send_nowait``): a
full mailbox drops the event and bumps ``dropped`` instead of blocking the data
path. Alert rules and alerters will hang off ``_handle``; for now it keeps counters
by kind and provider, and the Prometheus metrics the daemon exposes (including the
circuit breakers' ``circuit`` and the scheduler's ``fallback`` events).
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import attrs
import trio

from actors import metrics

log = logging.getLogger(__name__)


@attrs.frozen
class MonitorEvent:
    kind: str  # e.g. "job.succeeded", "job.failed", "provider.call", "actor.crash"
    provider: str | None = None
    data: dict[str, Any] = attrs.field(factory=dict)


class Monitor:
    def __init__(self, mailbox_size: int = 10_000) -> None:
        self._send, self._receive = trio.open_memory_channel[MonitorEvent](mailbox_size)
        self.counts: collections.Counter[tuple[str, str | None]] = collections.Counter()
        self.dropped = 0

    def emit(self, kind: str, provider: str | None = None, **data: Any) -> None:
        """Record an event; never blocks, never raises."""
        try:
            self._send.send_nowait(MonitorEvent(kind, provider, data))
        except trio.WouldBlock:
            self.dropped += 1
            metrics.MONITOR_DROPPED.inc()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1

    async def run(self) -> None:
        async for event in self._receive:
            self._handle(event)

    def _handle(self, event: MonitorEvent) -> None:
        self.counts[(event.kind, event.provider)] += 1
        provider = event.provider or ""
        if event.kind.startswith("job."):
            metrics.JOBS_FINISHED.labels(provider=provider, outcome=event.kind[4:]).inc()
        elif event.kind == "provider.call":
            metrics.PROVIDER_CALLS.labels(
                provider=provider,
                call=event.data.get("call", ""),
                outcome=event.data.get("outcome", ""),
            ).inc()
            if "seconds" in event.data:
                metrics.PROVIDER_LATENCY.labels(
                    provider=provider, call=event.data.get("call", "")
                ).observe(event.data["seconds"])
        elif event.kind == "actor.crash":
            metrics.ACTOR_RESTARTS.labels(actor=event.data.get("actor", "")).inc()
        elif event.kind == "circuit":
            # ``state`` is a CircuitState value; ``initial`` marks the state a breaker
            # starts in, which sets the gauge without counting a transition.
            metrics.CIRCUIT_STATE.labels(provider=provider).set(event.data.get("value", 0))
            if not event.data.get("initial"):
                metrics.CIRCUIT_TRANSITIONS.labels(
                    provider=provider, state=event.data.get("state", "")
                ).inc()
        elif event.kind.startswith("webhook."):
            metrics.WEBHOOK_DELIVERIES.labels(
                outcome=event.kind.removeprefix("webhook."), reason=event.data.get("reason", ""),
            ).inc()
        elif event.kind == "fallback":
            metrics.FALLBACKS.labels(
                model=event.data.get("model", ""), to=event.data.get("to", ""),
                reason=event.data.get("reason", ""),
            ).inc()

    def statistics(self) -> dict[str, Any]:
        by_kind: dict[str, int] = collections.Counter()
        for (kind, _), n in self.counts.items():
            by_kind[kind] += n
        return {"events": dict(by_kind), "dropped": self.dropped}
