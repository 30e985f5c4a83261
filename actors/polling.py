"""When to check a running provider task next: pure functions of the poll count.

Kept free of I/O and clocks so the schedule can be tested and benchmarked alone.
"""

from __future__ import annotations

import math

from actors.catalog import ModelSpec, PollingSpec, PollingStrategy

DEFAULT = PollingSpec()


def delay_before_check(spec: PollingSpec, checks_done: int) -> float:
    """Seconds to wait before check number ``checks_done + 1``.

    The first check comes at ``first_check`` when set (near the model's typical
    completion: checking a 5-minute video after 2 s only spends tokens).
    Exponential: ``initial * factor**k`` capped at ``max_interval``.
    """
    if checks_done == 0 and spec.first_check is not None:
        return spec.first_check
    if spec.strategy is PollingStrategy.FIXED:
        return spec.interval
    # Compare in logarithms: factor**k overflows a float for a large factor or k.
    if spec.factor > 1 and spec.initial > 0 and (
        math.log(spec.initial) + checks_done * math.log(spec.factor) >= math.log(spec.max_interval)
    ):
        return spec.max_interval
    return min(spec.initial * spec.factor ** min(checks_done, 64), spec.max_interval)


def polling_for(model: ModelSpec, provider_default: PollingSpec | None = None) -> PollingSpec:
    return model.polling or provider_default or DEFAULT
