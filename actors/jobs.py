"""The job: its states, the row it is stored as, and the JSON a client sees.

A job moves QUEUED -> SUBMITTING -> RUNNING -> FINALIZING -> SUCCEEDED (a synchronous
provider skips RUNNING), or to FAILED / CANCELLED from any state that is not
terminal. A batch's item starts WAITING (in no queue) and is released to QUEUED by
the batch actor when its batch lets it run (``actors/batches/actor.py``). Clients see the coarser ``status`` (PENDING, PROCESSING, SUCCESS, FAILED,
CANCELLED) beside the finer ``stage``.
"""

from __future__ import annotations

import datetime
import enum
import secrets
from typing import Any

import attrs

from actors.errors import ErrorInfo


class JobState(str, enum.Enum):
    #: A batch item that may not run yet (its batch's concurrency, ``notBefore``, a
    #: dependency): in no queue; the batch actor moves it to QUEUED.
    WAITING = "WAITING"
    QUEUED = "QUEUED"
    SUBMITTING = "SUBMITTING"
    #: The create's answer was lost (a timeout, a reset, a 5xx, a crash): the
    #: provider may hold a task for the job, and Easel is looking for it.
    RESOLVING = "RESOLVING"
    RUNNING = "RUNNING"
    FINALIZING = "FINALIZING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def status(self) -> str:
        return _STATUS[self]


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
#: States in which the job holds one of its provider's in-flight slots.
AT_PROVIDER = frozenset({JobState.SUBMITTING, JobState.RESOLVING, JobState.RUNNING,
                         JobState.FINALIZING})

_STATUS = {
    JobState.WAITING: "PENDING",
    JobState.QUEUED: "PENDING",
    JobState.SUBMITTING: "PENDING",
    JobState.RESOLVING: "PENDING",
    JobState.RUNNING: "PROCESSING",
    JobState.FINALIZING: "PROCESSING",
    JobState.SUCCEEDED: "SUCCESS",
    JobState.FAILED: "FAILED",
    JobState.CANCELLED: "CANCELLED",
}


def new_job_id() -> str:
    return "gen_" + secrets.token_hex(10)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


@attrs.define
class Job:
    """One row of ``generation_requests``."""

    id: str
    model: str
    provider: str
    provider_model: str
    prompt: str
    state: JobState = JobState.QUEUED
    number_of_outputs: int = 1
    input_images: list[str] = attrs.field(factory=list)
    parameters: dict[str, Any] = attrs.field(factory=dict)
    priority: int = 0
    webhook_url: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    idempotency_key: str | None = None
    request_hash: str | None = None
    batch_id: str | None = None
    experiment_id: str | None = None
    variant_id: str | None = None
    served_model: str | None = None
    provider_task_id: str | None = None
    provider_outputs: list[str] = attrs.field(factory=list)
    results: list[dict[str, Any]] = attrs.field(factory=list)
    error: ErrorInfo | None = None
    progress: float | None = None
    attempts: int = 0
    cost: float | None = None
    rating: int | None = None
    feedback: str | None = None
    next_poll_at: float | None = None
    poll_count: int = 0
    created_at: float = 0.0
    submitting_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    updated_at: float = 0.0
    seq: int | None = None
    #: Why the job is in its stage, when that needs saying (RESOLVING: what was lost).
    stage_reason: str | None = None
    #: The id of the API key that created the job; None without keys. Not shown to
    #: clients: a key sees only its own jobs, so the owner says nothing new.
    owner: str | None = None
    #: The input-image preprocessing asked for (``actors/images/presets.py``): a
    #: preset name or an object; None: the serving provider's default preset.
    preprocess: str | dict[str, Any] | None = None
    #: A batch item's name, unique in its batch (the client's, or ``item-<index>``).
    custom_id: str | None = None
    #: A batch item's place in its batch, 0 first. A re-run (``retry``) is a new job
    #: with the same index; the newest job of an index is the item's current one.
    batch_index: int | None = None
    #: The ``custom_id``s of the items this one waits for (each must succeed first).
    depends_on: list[str] = attrs.field(factory=list)
    #: Of those, how many have not succeeded yet: a WAITING item is releasable at 0.
    #: Kept by the store (the dependency's SUCCEEDED transition counts it down).
    waiting_on: int = 0
    #: When the batch actor released the item (WAITING -> QUEUED); None for a job
    #: submitted alone, and for an item that never ran. Quotas count an item as
    #: unfinished only from then.
    released_at: float | None = None
    #: The id of the job that re-runs this item (``retry``); None for the current one.
    replaced_by: str | None = None

    @property
    def serving_model(self) -> str:
        """The catalog model the job runs on now: a fallback's once it moved."""
        return self.served_model or self.model

    def to_api(self) -> dict[str, Any]:
        """The job as ``GET /api/external/generation/{id}`` returns it."""
        return {
            "id": self.id,
            "status": self.state.status,
            "stage": self.state.value,
            "stageReason": self.stage_reason,
            "modelIdentifier": self.model,
            "servedBy": self.serving_model,
            "provider": self.provider,
            "prompt": self.prompt,
            "numberOfOutputs": self.number_of_outputs,
            "parameters": self.parameters,
            "priority": self.priority,
            "progress": 1.0 if self.state is JobState.SUCCEEDED else self.progress,
            "results": self.results,
            "error": self.error.to_json() if self.error else None,
            "attempts": self.attempts,
            "cost": self.cost,
            "providerTaskId": self.provider_task_id,
            "userId": self.user_id,
            "metadata": self.metadata,
            "batchId": self.batch_id,
            "customId": self.custom_id,
            "experimentId": self.experiment_id,
            "variantId": self.variant_id,
            "rating": self.rating,
            "feedback": self.feedback,
            "webhookUrl": self.webhook_url,
            "createdAt": iso(self.created_at),
            "startedAt": iso(self.started_at),
            "completedAt": iso(self.completed_at),
            "updatedAt": iso(self.updated_at),
        }
