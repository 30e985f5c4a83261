"""A batch's end: its state from its items, and the webhook it owes, written together.

Both the batch actor (the last item ended) and the service (a cancel that left
nothing open) end batches; the store's ``end_batch`` is conditional (PROCESSING,
no item open), so whichever comes second changes nothing.
"""

from __future__ import annotations

import json

import attrs
import trio

from actors.batches.model import Batch, BatchCounts, batch_state
from actors.clock import wall_now
from actors.store import Delivery, Store


def batch_webhook(batch: Batch, counts: BatchCounts) -> list[Delivery]:
    """The delivery an ended batch owes (none without ``webhookUrl``): the batch as
    ``GET .../batch/{id}`` shows it, with ``type`` ``batch.ended``. Its id names
    the repair, so a retried batch's next end is a delivery of its own."""
    url = batch.options.webhook_url
    if not url:
        return []
    payload = {"type": "batch.ended", **batch.to_api(counts)}
    delivery_id = f"msg_{batch.id}_{batch.state.value}_{batch.repairs}"
    return [Delivery(delivery_id, url, json.dumps(payload))]


async def settle(
    store: Store, batch_id: str, outbox: trio.MemorySendChannel[None]
) -> Batch | None:
    """End ``batch_id`` if it is PROCESSING with no item open: its state from its
    counts, ``completed_at`` now, and its webhook in the same transaction (then
    the outbox is nudged: no job's change tells it of that row). The ended batch,
    or None."""
    batch = await store.get_batch(batch_id)
    if batch is None or batch.state.terminal:
        return None
    counts = await store.batch_counts(batch_id)
    if counts.open:
        return None
    ended = attrs.evolve(batch, state=batch_state(counts, batch.cancelled_at is not None),
                         completed_at=wall_now())
    owed = batch_webhook(ended, counts)
    stored = await store.end_batch(ended, owed)
    if stored is not None and owed:
        try:
            outbox.send_nowait(None)
        except trio.WouldBlock:  # a nudge is pending already
            pass
    return stored
