"""Where a job runs: the one place that decides routing.

Where a job is queued first: on its model's provider section, except a batch's
item whose model the catalog offers through several sections (``served_by``,
``actors/catalog.py``): it goes to the section (its model's or one of those)
with the most free capacity whose circuit is closed and whose parameter family
accepts it (``spread``). Free capacity is the scheduler's view: the jobs a
section has said it can take (its credit) minus those already queued for it.
A tie keeps the job's own section. So a large batch fills every section that
offers its model, in proportion to what each can take, and avoids one whose
circuit is open; a single submission stays where its model names (its client
chose the model, and its latency should not depend on a batch's traffic).

Two situations move a job off the provider it was queued for, and both are
decided here, by the same rule, with the same event and the same metric:

- ``circuit_open``: the job is QUEUED for a provider whose circuit is open. Nothing
  was sent for it, so it may go anywhere.
- ``not_accepted``: the job's submission failed and the provider provably holds
  nothing for it (connection refused, a documented refusal such as 429, after the
  retries the provider section allows). Only then: a timeout, reset or 5xx may have
  created the task, and moving such a job would pay twice.

The rule: the first later model in the job's fallback chain (``catalog``'s
``fallbacks``) that is served by a running provider whose circuit is closed and
whose parameter family accepts the job's stored request (``fits``). No such model:
a ``circuit_open`` job waits where it is (a client that cannot wait cancels), a
``not_accepted`` job fails with its error.

``Router`` is pure (no I/O, no clock); ``place`` and ``reroute`` write its
decisions. The scheduler is the only caller of all three.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from actors.breaker import CircuitState
from actors.catalog import ModelSpec, later_models, sections_of
from actors.jobs import Job, JobState
from actors.monitor import Monitor
from actors.store import Store

log = logging.getLogger(__name__)

#: ``fits(job, model)``: whether catalog ``model`` can take ``job``'s stored request.
Fits = Callable[[Job, str], bool]


class Router:
    def __init__(self, catalog: Mapping[str, ModelSpec], fits: Fits) -> None:
        self.catalog = catalog
        self.fits = fits

    def fallback(self, job: Job, circuits: Mapping[str, CircuitState]) -> str | None:
        """The model ``job`` should move to, given each running provider's circuit
        (providers absent from ``circuits`` are not running here)."""
        for model in later_models(self.catalog, job.model, job.served_model):
            spec = self.catalog[model]
            if circuits.get(spec.provider) is CircuitState.CLOSED and self.fits(job, model):
                return model
        return None

    def spread(self, job: Job, free: Mapping[str, int],
               circuits: Mapping[str, CircuitState]) -> str | None:
        """The model a new batch item ``job`` should be queued on instead of its
        own (module doc), or None to leave it. ``free``: each running provider's
        free capacity (its credit minus its queued jobs)."""
        if job.batch_id is None or job.served_model is not None:
            return None  # a single, or a job already moved: it stays
        best, most = None, 0
        for model in sections_of(self.catalog, job.model):
            provider = self.catalog[model].provider if model in self.catalog else None
            if provider is None or circuits.get(provider) is not CircuitState.CLOSED:
                continue
            if model != job.model and not self.fits(job, model):
                continue
            room = free.get(provider, 0)
            if best is None or room > most:
                best, most = model, room
        return best if best != job.model else None


async def _move(
    store: Store, job: Job, target: str, catalog: Mapping[str, ModelSpec],
    event: dict[str, Any],
) -> Job | None:
    """QUEUED ``job`` moved to catalog model ``target``'s section, with ``event``
    in the same write; None when it is no longer QUEUED at its provider."""
    spec = catalog[target]
    return await store.update(
        job.id, JobState.QUEUED, event=event, where={"provider": job.provider},
        provider=spec.provider, provider_model=spec.provider_model, served_model=target,
    )


async def place(
    store: Store, job: Job, target: str, *, catalog: Mapping[str, ModelSpec], free: int,
) -> Job | None:
    """Queue new batch item ``job`` on ``target`` (``Router.spread``) instead of its
    own model: a ``spread`` event (``from``, ``to``, the ``free`` capacity that
    chose it) in the same write. None when the job is no longer QUEUED at its
    provider (cancelled meanwhile)."""
    moved = await _move(store, job, target, catalog, {
        "kind": "spread", "from": job.model, "to": target, "free": free})
    if moved is not None:
        log.debug("batch item %s queued on %s", job.id, target)
    return moved


async def reroute(
    store: Store,
    monitor: Monitor,
    job: Job,
    target: str,
    *,
    catalog: Mapping[str, ModelSpec],
    reason: str,
    **detail: Any,
) -> Job | None:
    """Move QUEUED ``job`` to catalog model ``target``, QUEUED there.

    Nothing is at the old provider (a queued job was never sent; a refused one was
    put back to QUEUED by its provider), so the row changes provider in place,
    with a ``fallback`` event (``from``, ``to``, ``reason`` and ``detail``) in the
    same write; the ``fallback`` monitor event feeds
    ``easel_fallbacks_total{model,to,reason}``. Conditional on the job being
    QUEUED at its old provider still: returns ``None`` when it is not (a client
    cancelled it, a provider took it first).
    """
    current = job.serving_model
    data = {"from": current, "to": target, "reason": reason, **detail}
    moved = await _move(store, job, target, catalog, {"kind": "fallback", **data})
    if moved is None:
        return None
    monitor.emit("fallback", job.provider, model=job.model, to=target, reason=reason)
    log.warning("job %s moved from %s to %s (%s)", job.id, current, target, reason)
    return moved
