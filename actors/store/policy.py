"""The domain decisions a store applies inside its transactions.

A backend knows how to keep rows; it does not decide what a repeated request means
or what a job owes its client when it ends. Those decisions live here, as plain
functions of ``Job`` values, so that every backend applies the same ones and a test
can read them without a database:

- **Idempotency** (``replay``, ``key_expired``): a request carrying an
  ``Idempotency-Key`` that another job holds is the same request again when its body
  hash matches (the original job is answered) and a CONFLICT otherwise; a key is
  held for a window, after which it is released and means a new request.
- **Client webhooks** (``StorePolicy.deliveries``): which outbox rows a committed
  state change creates. The default, ``webhook_deliveries``, gives a job that became
  terminal with a ``webhook_url`` one delivery of its API JSON.

Why the store still *applies* them rather than its callers: both must happen in the
transaction of the write they follow. A webhook queued after the terminal state has
committed can be lost to a crash in between; a key checked before the insert's
transaction can be claimed twice by concurrent requests. So the backend asks the
policy from inside its transaction and writes what it answers, and the policy is
given to the store as data (``open_store(path, policy=...)``) instead of being
written into its SQL. The functions run on the store's writer (a worker thread for
SQLite): they must be pure and quick.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import attrs

from actors.errors import EaselError, ErrorCode
from actors.jobs import Job, JobState

#: How long an ``Idempotency-Key`` stays bound to its job (24 h).
DEFAULT_IDEMPOTENCY_WINDOW = 24 * 3600.0


def key_expired(holder: Job, now: float, window: float) -> bool:
    """Whether the job holding an idempotency key has held it for longer than
    ``window`` seconds (the key is then released and means a new request)."""
    return holder.created_at < now - window


def replay(holder: Job, job: Job) -> Job:
    """The answer to ``job``, a request whose idempotency key ``holder`` holds: the
    original job when the request is the same, else CONFLICT."""
    if holder.request_hash != job.request_hash:
        raise EaselError(
            ErrorCode.CONFLICT,
            "Idempotency-Key was already used with a different request",
            {"id": holder.id},
        )
    return holder


def outbox_id(job_id: str, state: JobState) -> str:
    """The delivery's ``webhook-id``: stable across retries and restarts, so a
    receiver can drop a delivery it has already seen."""
    return f"msg_{job_id}_{state.value}"


@attrs.frozen
class Delivery:
    """A client webhook delivery to queue: the outbox row's content. A backend
    ignores one whose ``id`` it already holds."""

    id: str
    url: str
    payload: str


def webhook_deliveries(job: Job) -> Sequence[Delivery]:
    """The default outbox policy: a job that has just become terminal and has a
    ``webhook_url`` gets one delivery of ``Job.to_api()`` (media URLs relative; the
    outbox makes them absolute when it sends)."""
    if not (job.state.terminal and job.webhook_url):
        return ()
    return (Delivery(outbox_id(job.id, job.state), job.webhook_url, json.dumps(job.to_api())),)


@attrs.frozen
class StorePolicy:
    """The decisions a store takes from above."""

    #: The outbox rows a committed state change creates, given the job as it was
    #: committed. Called for every transition that moves a job (not for inserts or
    #: same-state updates), inside that transaction.
    deliveries: Callable[[Job], Sequence[Delivery]] = webhook_deliveries


DEFAULT_POLICY = StorePolicy()
