"""The model catalog: what a client's ``modelIdentifier`` means.

Each entry names the provider section that serves it, the provider-side model, what
kind of media it makes, how long it usually takes and how long it may take, and how
its running tasks are polled. ``config/models.toml`` ships the entries; an
operator's own config may add or override them under ``[models.NAME]``.
"""

from __future__ import annotations

import enum

import attrs


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
