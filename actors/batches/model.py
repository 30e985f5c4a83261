"""A batch's data: its options, its state, and how one item's outcome is named.

A batch is a row of ``generation_batches``; its items are ordinary jobs (rows of
``generation_requests``) carrying ``batch_id``, their place in the batch
(``batch_index``), the caller's ``custom_id`` and the ``custom_id``s they depend
on. An item that may not run yet (its batch is over its concurrency, before its
``notBefore``, or waiting for a dependency) is ``WAITING``: it is in no queue, and
the batch actor moves it to QUEUED when it may run. Nothing of a batch is held in
memory but its counts: items are read from the store when they are released.

Outcomes beyond a job's own: an item whose dependency did not succeed ends FAILED
with ``UPSTREAM_FAILED``, one not started by the batch's ``deadline`` ends FAILED
with ``EXPIRED``; the batch view names both as the item's status.
"""

from __future__ import annotations

import enum
import secrets
from typing import Any

import attrs

from actors.errors import ErrorCode
from actors.jobs import Job, JobState, iso

#: The most items one batch may hold (JSON or JSONL).
MAX_ITEMS = 50_000
#: The longest ``custom_id``.
MAX_CUSTOM_ID = 64

#: An input image that is a dependency's output: ``easel:item/<custom_id>/<n>`` as
#: submitted, rewritten when the item is released to ``easel:output/<job_id>/<n>``
#: (the dependency's current job; the provider side reads it from storage).
ITEM_REF = "easel:item/"
OUTPUT_REF = "easel:output/"


class BatchState(str, enum.Enum):
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    PARTIAL_FAILED = "PARTIAL_FAILED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self is not BatchState.PROCESSING


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(10)


def item_ref(custom_id: str, output: int) -> str:
    """The placeholder for output ``output`` of item ``custom_id`` of the same batch."""
    return f"{ITEM_REF}{custom_id}/{output}"


def output_ref(job_id: str, output: int) -> str:
    """The reference to output ``output`` of the stored job ``job_id``."""
    return f"{OUTPUT_REF}{job_id}/{output}"


def _parse_ref(prefix: str, image: str) -> tuple[str, int] | None:
    if not image.startswith(prefix):
        return None
    name, _, output = image[len(prefix):].rpartition("/")
    if not name or not output.isdigit():
        return None
    return name, int(output)


def parse_item_ref(image: str) -> tuple[str, int] | None:
    """``(custom_id, output)`` of an ``easel:item/...`` placeholder; None for any
    other input image."""
    return _parse_ref(ITEM_REF, image)


def parse_output_ref(image: str) -> tuple[str, int] | None:
    """``(job_id, output)`` of an ``easel:output/...`` reference; None otherwise."""
    return _parse_ref(OUTPUT_REF, image)


@attrs.frozen
class BatchOptions:
    """What the client asked of the batch as a whole (``options`` in the request)."""

    #: False: items run one at a time, in the order given.
    parallel: bool = True
    #: The most items of the batch queued or at a provider at once.
    max_concurrency: int = 3
    #: After the first failed item, items not started yet are cancelled.
    stop_on_error: bool = False
    #: The priority of every item that does not set its own.
    priority: int = 0
    #: Unix time before which no item starts.
    not_before: float | None = None
    #: Unix time after which items not started end EXPIRED.
    deadline: float | None = None
    #: Where the batch's end is posted (signed like a job's webhook).
    webhook_url: str | None = None
    #: Also post each item's end to ``webhook_url``.
    item_webhooks: bool = False

    @property
    def concurrency(self) -> int:
        """The items that may run at once: one when not ``parallel``."""
        return self.max_concurrency if self.parallel else 1

    def to_api(self) -> dict[str, Any]:
        return {
            "parallel": self.parallel,
            "maxConcurrency": self.max_concurrency,
            "stopOnError": self.stop_on_error,
            "priority": self.priority,
            "notBefore": iso(self.not_before),
            "deadline": iso(self.deadline),
            "webhookUrl": self.webhook_url,
            "itemWebhooks": self.item_webhooks,
        }


@attrs.define
class BatchCounts:
    """A batch's items by outcome, counted from its jobs (never kept as counters)."""

    total: int = 0
    waiting: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Of ``failed``: those that never ran for a dependency, and for the deadline.
    upstream_failed: int = 0
    expired: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def open(self) -> int:
        return self.total - self.finished


@attrs.define
class Batch:
    """One row of ``generation_batches``."""

    id: str
    options: BatchOptions
    total: int
    state: BatchState = BatchState.PROCESSING
    owner: str | None = None
    #: ``POST .../retry`` runs so far.
    repairs: int = 0
    #: The catalog's estimate for the whole batch when it was accepted.
    estimated_cost: float = 0.0
    metadata: dict[str, Any] = attrs.field(factory=dict)
    #: Why items stopped being started (``stopOnError``, a cancel), when they did.
    stopped_reason: str | None = None
    #: When the client cancelled the batch (it ends CANCELLED); None otherwise.
    cancelled_at: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    completed_at: float | None = None

    def to_api(self, counts: BatchCounts) -> dict[str, Any]:
        """The batch as ``GET /api/external/generation/batch/{id}`` shows it (the
        route adds ``tasks``)."""
        return {
            "batchId": self.id,
            "status": self.state.value,
            "totalTasks": self.total,
            "completedTasks": counts.succeeded,
            "failedTasks": counts.failed,
            "cancelledTasks": counts.cancelled,
            "runningTasks": counts.queued + counts.running,
            "waitingTasks": counts.waiting,
            "upstreamFailedTasks": counts.upstream_failed,
            "expiredTasks": counts.expired,
            "progress": round(100.0 * counts.finished / self.total, 2) if self.total else 100.0,
            "options": self.options.to_api(),
            "repairs": self.repairs,
            "estimatedCost": self.estimated_cost,
            "stoppedReason": self.stopped_reason,
            "metadata": self.metadata,
            "createdAt": iso(self.created_at),
            "completedAt": iso(self.completed_at),
        }


def batch_state(counts: BatchCounts, cancelled: bool) -> BatchState:
    """What a batch is, from its items: PROCESSING while any is open; then
    CANCELLED (the client cancelled it), COMPLETED (all succeeded), FAILED (none
    did) or PARTIAL_FAILED."""
    if counts.open:
        return BatchState.PROCESSING
    if cancelled:
        return BatchState.CANCELLED
    if counts.succeeded == counts.total:
        return BatchState.COMPLETED
    if counts.succeeded == 0:
        return BatchState.FAILED
    return BatchState.PARTIAL_FAILED


#: The codes of items that ended without ever reaching a provider: a dependency
#: did not succeed, or the deadline came first.
NEVER_RAN = frozenset({ErrorCode.UPSTREAM_FAILED, ErrorCode.EXPIRED})


def item_status(job: Job) -> str:
    """An item's status in the batch view: the job's status, ``WAITING`` before it
    is released, and ``UPSTREAM_FAILED`` / ``EXPIRED`` for the items that never ran."""
    if job.state is JobState.FAILED and job.error is not None:
        if job.error.code in NEVER_RAN:
            return job.error.code.value
    if job.state.value == "WAITING":
        return "WAITING"
    return job.state.status
