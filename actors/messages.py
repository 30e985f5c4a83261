"""Every message the actors send each other, grouped by the mailbox that takes it.

An actor's state is read and written by its own tasks only; everything another
actor (or the HTTP layer) wants of it travels as one of these frozen classes over a
trio memory channel, or is read from its side-effect-free ``statistics()``. The
channels are opened by ``actors/runtime.py`` and handed to the constructors, so
this module is the whole vocabulary: who may say what to whom.

A reply travels over a channel of buffer 1 that the asker opened and passed in the
request; the replier sends with ``send_nowait`` and ignores a closed end, so an
asker that gave up (cancelled, restarted) can never make the replier fail.
"""

from __future__ import annotations

import attrs
import trio

from actors.breaker import CircuitView
from actors.errors import EaselError, ErrorInfo
from actors.jobs import Job
from actors.providers.base import TaskStatus

# -- the scheduler's mailbox ----------------------------------------------------


@attrs.frozen
class Enqueue:
    """A job newly accepted (from the HTTP layer), QUEUED and committed."""

    job: Job


@attrs.frozen
class ProviderReady:
    """From a provider actor that has (re)started and reloaded its state: it can
    take ``free`` more jobs, and its circuit is ``circuit``. The scheduler resets
    its credit for the provider and reloads the provider's QUEUED jobs (a job
    handed over just before a crash is QUEUED still, and would otherwise be lost)."""

    provider: str
    free: int
    circuit: CircuitView


@attrs.frozen
class Demand:
    """From a provider actor: ``slots`` more of its in-flight slots are free."""

    provider: str
    slots: int = 1


@attrs.frozen
class CircuitChanged:
    """From a provider actor: its breaker moved (sent after every change)."""

    provider: str
    circuit: CircuitView


@attrs.frozen
class Returned:
    """From a provider actor: a job handed over that it did not send and that is
    QUEUED still. ``circuit`` is set when the breaker refused it (open, or every
    half-open probe already out); ``None`` when the provider had no free slot."""

    job: Job
    circuit: CircuitView | None


@attrs.frozen
class Unaccepted:
    """From a provider actor: the submission of ``job`` failed with ``error`` and
    the provider provably holds nothing for it. The provider has put the job back
    to QUEUED (durably, before sending this) and freed its slot; the scheduler
    decides where it goes: a fallback, or failed with ``error``."""

    job: Job
    error: ErrorInfo


SchedulerMessage = Enqueue | ProviderReady | Demand | CircuitChanged | Returned | Unaccepted

# -- a provider actor's mailbox ---------------------------------------------------


@attrs.frozen
class Submit:
    """From the scheduler: submit ``job`` (QUEUED), for which one credit was spent."""

    job: Job


@attrs.frozen
class CheckResult:
    """The reply to ``CheckTask``: the task's status, or why it could not be read."""

    status: TaskStatus | None = None
    error: EaselError | None = None


@attrs.frozen
class CheckTask:
    """From the provider's poller: read the status of ``task_id`` (a call that
    spends a token and feeds the breaker) and reply on ``reply``."""

    task_id: str
    reply: trio.MemorySendChannel[CheckResult] = attrs.field(eq=False)


@attrs.frozen
class CancelTask:
    """From the HTTP layer (a client's cancel) or the poller (a task past its
    deadline): stop watching ``job`` and ask the provider to stop its task."""

    job: Job


@attrs.frozen
class Announce:
    """From the scheduler as it starts: say ``ProviderReady`` again (a restarted
    scheduler has lost every provider's credit and circuit)."""


ProviderMessage = Submit | CheckTask | CancelTask | Announce

# -- a poller's mailbox -------------------------------------------------------------


@attrs.frozen
class Track:
    """From the provider actor: ``job`` has just become RUNNING."""

    job: Job


@attrs.frozen
class Forget:
    """From the provider actor: ``job_id`` was cancelled; stop checking it."""

    job_id: str


@attrs.frozen
class Observed:
    """From a provider webhook: a verified status of a running job, or (``None``)
    a hint that its task should be checked now."""

    job_id: str
    status: TaskStatus | None


PollerMessage = Track | Forget | Observed

# -- the batch actor's mailbox ------------------------------------------------------


@attrs.frozen
class BatchOpened:
    """From the batch service: batch ``batch_id`` was created, or re-opened by a
    retry, and is committed with WAITING items: the actor takes it on."""

    batch_id: str

def reply_nowait(channel: trio.MemorySendChannel[CheckResult], result: CheckResult) -> None:
    """Answer a request; an asker that is gone (or already answered) is ignored."""
    try:
        channel.send_nowait(result)
    except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
