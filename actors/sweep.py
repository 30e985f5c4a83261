"""The orphan sweep: provider tasks that Easel caused but no job holds.

A create whose answer was lost may have made a task that no job adopted (the job
ended meanwhile, or a twin took another task), and it runs and bills unseen. For a
provider that lists its tasks (``TaskLister``), the sweep reads the recent part of
the list every ``sweep_interval`` seconds and compares it with the provider's jobs
submitted in that time, by the adapter's own matching rule (``match_keys``: the
exact input, or the job id where the provider keeps one).

A listed task no job holds is an *orphan* when every job it matches has ended or
holds another task: it is recorded once (an ``orphan`` event on the job with the
provider, task handle, input hash and action; a warning; the counter
``easel_orphans_total{provider,action}``) and cancelled where the provider can
cancel. A task that matches a job still queued, being submitted or RESOLVING is
left alone (the submission or its lookup will claim it), and a task that matches no job is
never touched: it may be someone else's on the same account.

Owned by the provider actor, which runs it as a child task and lends it ``call``
(tokens, retries, breaker); it takes no messages.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from actors import metrics
from actors.catalog import ModelSpec
from actors.clock import wall_now
from actors.errors import EaselError
from actors.jobs import TERMINAL, Job, JobState
from actors.providers import PROVIDERS, family
from actors.providers.base import (
    Adapter,
    JobRequest,
    ListedTask,
    ProviderSettings,
    TaskLister,
)
from actors.store import Store

log = logging.getLogger(__name__)

#: How far back the sweep looks at the provider's tasks (seconds).
SWEEP_WINDOW = 3600.0

#: A job in one of these states may still claim a task that matches it.
_UNSETTLED = frozenset({JobState.QUEUED, JobState.SUBMITTING, JobState.RESOLVING})

Call = Callable[..., Awaitable[Any]]


def input_hash(key: str) -> str:
    """A short, stable name for a task's matching key (its input), for logs and
    events without copying the prompt into them."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@attrs.frozen
class Orphan:
    """A listed task no job holds, and the job it was made for."""

    task: ListedTask
    job: Job


class OrphanSweep:
    def __init__(self, name: str, adapter: Adapter, settings: ProviderSettings, store: Store,
                 call: Call, *, window: float = SWEEP_WINDOW) -> None:
        """``call``: the provider actor's ``call`` (a token per request, retries,
        the breaker). Sweeps nothing when the adapter cannot list or
        ``settings.sweep_interval`` is 0."""
        self.name = name
        self.lister = adapter if isinstance(adapter, TaskLister) else None
        self.adapter = adapter
        self.interval = settings.sweep_interval
        self.can_cancel = PROVIDERS[family(name, settings)].capabilities.cancel
        self.window = window
        self._store = store
        self._call = call
        #: Handles reported since start (the job's events say so across restarts).
        self._reported: set[str] = set()

    async def run(self) -> None:
        if self.lister is None or self.interval <= 0:
            return
        while True:
            await trio.sleep(self.interval)
            try:
                await self.sweep()
            except EaselError as exc:
                log.warning("orphan sweep of %s stopped: %s", self.name, exc.info.message)

    async def sweep(self) -> list[Orphan]:
        """One pass: read the recent list, report and cancel the orphans found."""
        orphans = await self.find()
        for orphan in orphans:
            await self._report(orphan)
        return orphans

    async def find(self) -> list[Orphan]:
        lister = self.lister
        assert lister is not None
        since = wall_now() - self.window
        # Jobs from one window further back: a task is created after its job
        # entered SUBMITTING, but resubmissions and clock skew blur the edge.
        jobs = await self._store.jobs_submitted_since(self.name, since - self.window)
        by_key: dict[str, list[Job]] = {}
        for job in jobs:
            request = _request_for(job)
            for key in lister.match_keys(request):
                by_key.setdefault(key, []).append(job)
        orphans: list[Orphan] = []
        cursor: str | None = None
        for _ in range(lister.lookup_pages):
            page = await self._call(
                "sweep", functools.partial(lister.recent_page, cursor, since), safe=True)
            for task in page.tasks:
                matched = by_key.get(task.key, [])
                if not matched or task.handle in self._reported:
                    continue  # not Easel's, or reported already
                if await self._store.job_by_task(self.name, task.handle) is not None:
                    continue
                if all(_settled(job, task.handle) for job in matched):
                    orphans.append(Orphan(task, matched[-1]))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return orphans

    async def _report(self, orphan: Orphan) -> None:
        task, job = orphan.task, orphan.job
        self._reported.add(task.handle)
        events = await self._store.events(job.id)
        if any(e["kind"] == "orphan" and e.get("taskId") == task.handle for e in events):
            return  # reported before a restart
        action = "kept"
        if self.can_cancel:
            try:
                await self._call("cancel", lambda: self.adapter.cancel(task.handle), safe=True)
                action = "cancelled"
            except EaselError as exc:
                log.warning("cancelling orphan %s failed: %s", task.handle, exc.info.message)
                action = "cancel_failed"
        log.warning("orphan task at %s: %s (job %s, %s): %s", self.name, task.handle, job.id,
                    job.state.value, action)
        await self._store.add_event(job.id, "orphan", {
            "provider": self.name, "taskId": task.handle, "inputHash": input_hash(task.key),
            "cost": None, "action": action,
        })
        metrics.ORPHANS.labels(provider=self.name, action=action).inc()


def _settled(job: Job, handle: str) -> bool:
    """Whether ``job`` can no longer take the task ``handle``: it ended, or it
    holds another task."""
    if job.state in TERMINAL:
        return True
    if job.state in _UNSETTLED:
        return False
    return bool(job.provider_task_id) and job.provider_task_id != handle


def _request_for(job: Job) -> JobRequest:
    """The request ``job`` was submitted as, as far as matching needs it (the
    catalog entry may be gone; only the provider model is read)."""
    spec = ModelSpec(provider=job.provider or "", provider_model=job.provider_model or "")
    return JobRequest(
        job_id=job.id, model=job.serving_model, spec=spec, prompt=job.prompt,
        number_of_outputs=job.number_of_outputs, input_images=tuple(job.input_images),
        parameters=job.parameters, submitting_at=job.submitting_at or 0.0,
    )
