"""The model catalog: what a client's ``modelIdentifier`` means.

Each entry names the provider section that serves it, the provider-side model, what
kind of media it makes, how long it usually takes and how long it may take, and how
its running tasks are polled, and which models may serve its jobs when its
provider cannot (``fallbacks``). ``config/models.toml`` ships the entries; an
operator's own config may add or override them under ``[models.NAME]``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from actors.pricing import CostUnit, job_cost


class MediaKind(str, enum.Enum):
    IMAGE = "image"
    VIDEO = "video"


class PollingStrategy(str, enum.Enum):
    FIXED = "fixed"
    EXPONENTIAL = "exponential"
    ADAPTIVE = "adaptive"


@attrs.frozen
class PollingSpec:
    """When to check a running task.

    ``fixed``: every ``interval`` seconds. ``exponential``: ``initial``, then times
    ``factor`` per check, capped at ``max_interval``. The first check of either comes
    after ``first_check`` seconds when set (near the model's typical completion).
    """

    strategy: PollingStrategy = PollingStrategy.EXPONENTIAL
    interval: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    initial: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    factor: float = attrs.field(default=1.5, validator=attrs.validators.ge(1))
    max_interval: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    first_check: float | None = None
    #: ``adaptive`` only: seconds of detection delay one check is worth (actors/adaptive.py).
    check_cost: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))


@attrs.frozen
class ModelSpec:
    provider: str
    provider_model: str
    kind: MediaKind = MediaKind.IMAGE
    expected_duration: float = 30.0
    max_duration: float = attrs.field(default=1800.0, validator=attrs.validators.gt(0))
    polling: PollingSpec | None = None
    #: Resend a job caught mid-submission by a crash when nothing can prove whether
    #: the provider got it. Only for models where paying twice is harmless.
    resubmit_on_uncertain: bool = False
    description: str = ""
    #: Models (catalog names, same ``kind``) that may serve this model's jobs, in
    #: order, when its provider's circuit is open or a submission provably never
    #: reached it (see ``ProviderActor`` and the scheduler).
    fallbacks: list[str] = attrs.field(factory=list)
    #: The price, in the operator's own units (cents, credits), per ``cost_per``
    #: (``actors/pricing.py``): a key's ``daily_spend``, a batch's estimate and an
    #: experiment's spend add the jobs' prices up.
    cost: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    cost_per: CostUnit = CostUnit.OUTPUT
    #: Store this model's outputs (``true``) or keep the provider's own URLs
    #: (``false``); unset: its provider section's ``upload_outputs``.
    upload_outputs: bool | None = None

    def price(self, number_of_outputs: int, parameters: Mapping[str, Any]) -> float:
        """What a request for this model costs (``actors/pricing.py``)."""
        return job_cost(self.cost, self.cost_per, number_of_outputs, parameters)


def fallback_chain(catalog: Mapping[str, ModelSpec], model: str) -> list[str]:
    """``model`` followed by its usable fallbacks, in order.

    A job only ever moves forward along this list (never back, never to the
    fallbacks of a fallback), so it can move at most ``len(fallbacks)`` times.
    Entries missing from ``catalog`` (unknown, or on a disabled provider) or of
    another kind are skipped here; configuration checking reports them.
    """
    spec = catalog.get(model)
    if spec is None:
        return [model]
    chain = [model]
    for name in spec.fallbacks:
        other = catalog.get(name)
        if other is not None and other.kind is spec.kind and name not in chain:
            chain.append(name)
    return chain


def later_models(catalog: Mapping[str, ModelSpec], model: str, serving: str | None) -> list[str]:
    """The models after ``serving`` (default: ``model``) in ``model``'s chain."""
    chain = fallback_chain(catalog, model)
    current = serving or model
    if current not in chain:
        return []
    return chain[chain.index(current) + 1:]


def check_fallbacks(catalog: Mapping[str, ModelSpec]) -> list[str]:
    """Problems with the catalog's ``fallbacks``, each with its key path."""
    problems = []
    for name, spec in catalog.items():
        for i, other in enumerate(spec.fallbacks):
            path = f"models.{name}.fallbacks[{i}]"
            if other == name:
                problems.append(f"{path}: a model cannot be its own fallback")
            elif other not in catalog:
                problems.append(f"{path}: no model {other!r} in the catalog")
            elif catalog[other].kind is not spec.kind:
                problems.append(
                    f"{path}: {other!r} makes {catalog[other].kind.value}, "
                    f"not {spec.kind.value}"
                )
    return problems
