"""Where a job runs: the one place that decides routing.

Two situations move a job off the provider its model names, and both are decided
here, by the same rule, with the same event and the same metric:

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

``Router`` is pure (no I/O, no clock); ``reroute`` writes the decision. The
scheduler is the only caller of both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from actors.breaker import CircuitState
from actors.catalog import ModelSpec, later_models
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
    spec = catalog[target]
    current = job.serving_model
    data = {"from": current, "to": target, "reason": reason, **detail}
    moved = await store.update(
        job.id, JobState.QUEUED, event={"kind": "fallback", **data},
        where={"provider": job.provider},
        provider=spec.provider, provider_model=spec.provider_model, served_model=target,
    )
    if moved is None:
        return None
    monitor.emit("fallback", job.provider, model=job.model, to=target, reason=reason)
    log.warning("job %s moved from %s to %s (%s)", job.id, current, target, reason)
    return moved
