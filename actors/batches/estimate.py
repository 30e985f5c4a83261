"""What a batch will cost, before anything of it is stored or spent.

Each item is priced as its job will be at admission (``ModelSpec.price``: the
catalog's ``cost`` per output, per second of video or per megapixel, in the
operator's own unit), so the estimate, the jobs' stamped ``cost`` and a key's
``daily_spend`` add up the same figures. A model whose catalog entry has no price
(``cost = 0``) is named in ``unpricedModels``: its items count as 0, which is an
unknown, not a free item.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from actors.batches.requests import ParsedBatch
from actors.catalog import ModelSpec


@attrs.frozen
class ItemCost:
    index: int
    custom_id: str
    model: str
    cost: float


@attrs.frozen
class Estimate:
    items: list[ItemCost]
    total: float
    #: Per model: its items and what they cost together.
    by_model: dict[str, tuple[int, float]]
    #: Models of the batch with no price in the catalog.
    unpriced: list[str]

    def to_api(self) -> dict[str, Any]:
        return {
            "totalTasks": len(self.items),
            "estimatedCost": round(self.total, 6),
            "byModel": {model: {"tasks": count, "cost": round(cost, 6)}
                        for model, (count, cost) in sorted(self.by_model.items())},
            "unpricedModels": self.unpriced,
            "tasks": [{"index": item.index, "customId": item.custom_id, "model": item.model,
                       "estimatedCost": round(item.cost, 6)} for item in self.items],
        }


def estimate(parsed: ParsedBatch, catalog: Mapping[str, ModelSpec]) -> Estimate:
    """Each item's price and the batch's total, from ``catalog``."""
    items: list[ItemCost] = []
    by_model: dict[str, tuple[int, float]] = {}
    for item in parsed.items:
        model = item.request.modelIdentifier
        spec = catalog[model]
        cost = spec.price(item.request.number_of_outputs, item.request.parameters)
        items.append(ItemCost(item.index, item.custom_id, model, cost))
        count, sum_ = by_model.get(model, (0, 0.0))
        by_model[model] = (count + 1, sum_ + cost)
    unpriced = sorted(model for model in by_model if not catalog[model].cost)
    return Estimate(items, sum(item.cost for item in items), by_model, unpriced)
