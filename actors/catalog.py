"""The model catalog: what a client's ``modelIdentifier`` means.

Each entry names the provider section that serves it, the provider-side model, what
kind of media it makes, how long it usually takes and how long it may take, and how
its running tasks are polled, which models may serve its jobs when its
provider cannot (``fallbacks``), and which entries are the same model through
other provider sections (``served_by``: a batch's items are spread over them by
free capacity, ``actors/routing.py``). ``config/models.toml`` ships the entries;
an operator's own config may add or override them under ``[models.NAME]``.
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
    #: Models (catalog names, same ``kind``, other provider sections) that are this
    #: same model through another section: a batch item for this model is queued
    #: on whichever of them has the most free capacity and a closed circuit. A
    #: single submission stays on this model's own section.
    served_by: list[str] = attrs.field(factory=list)
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
    """The models after ``serving`` (default: ``model``) in ``model``'s chain. A job
    spread to one of ``model``'s ``served_by`` is where ``model`` is in it."""
    chain = fallback_chain(catalog, model)
    current = serving or model
    if current not in chain and current in sections_of(catalog, model):
        current = model
    if current not in chain:
        return []
    return chain[chain.index(current) + 1:]


def sections_of(catalog: Mapping[str, ModelSpec], model: str) -> list[str]:
    """``model`` followed by its usable ``served_by``: the same model through each
    section that offers it here. Entries missing from ``catalog`` (unknown, or on
    a disabled provider), of another kind, or on ``model``'s own section are
    skipped here; configuration checking reports them."""
    spec = catalog.get(model)
    if spec is None:
        return [model]
    found = [model]
    providers = {spec.provider}
    for name in spec.served_by:
        other = catalog.get(name)
        if other is not None and other.kind is spec.kind and other.provider not in providers:
            found.append(name)
            providers.add(other.provider)
    return found


def check_fallbacks(catalog: Mapping[str, ModelSpec]) -> list[str]:
    """Problems with the catalog's ``fallbacks`` and ``served_by``, each with its
    key path."""
    problems = []
    for name, spec in catalog.items():
        for field, others, role in (("fallbacks", spec.fallbacks, "its own fallback"),
                                    ("served_by", spec.served_by, "served by itself")):
            for i, other in enumerate(others):
                path = f"models.{name}.{field}[{i}]"
                if other == name:
                    problems.append(f"{path}: a model cannot be {role}")
                elif other not in catalog:
                    problems.append(f"{path}: no model {other!r} in the catalog")
                elif catalog[other].kind is not spec.kind:
                    problems.append(
                        f"{path}: {other!r} makes {catalog[other].kind.value}, "
                        f"not {spec.kind.value}"
                    )
                elif field == "served_by" and catalog[other].provider == spec.provider:
                    problems.append(f"{path}: {other!r} is on the same provider section "
                                    f"({spec.provider}); name the model through another")
    return problems
