"""The actors of one daemon, wired together and put under a supervisor.

``Runtime`` builds one provider actor and one poller per enabled provider, the
scheduler, the finalizer, the monitor and the client webhook outbox, connects their
mailboxes, and exposes what the HTTP layer needs (``submit``, ``cancel``,
``statistics``). Wiring lives here, not in the actors, so each actor module only
knows the messages it takes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.finalizer import Finalize, Finalizer
from actors.jobs import TERMINAL, Job, JobState
from actors.lifecycle import Lifecycle
from actors.monitor import Monitor
from actors.outbox import Outbox, OutboxSettings
from actors.poller import Forget, Observed, Poller, Track
from actors.provider import CancelTask, ProviderActor
from actors.providers import make_adapter
from actors.providers.base import ProviderSettings
from actors.scheduler import Enqueue, Scheduler
from actors.storage import LocalStorage
from actors.store import DEFAULT_IDEMPOTENCY_WINDOW, Store
from actors.supervisor import RESTART_BACKOFF, ChildSpec, Intensity, Supervisor, started_on_entry
from actors.validation import fits

log = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        store: Store,
        *,
        providers: dict[str, ProviderSettings],
        catalog: dict[str, ModelSpec],
        media_dir: Path,
        max_download_bytes: int = 200 * 1024 * 1024,
        max_restarts: int = 5,
        max_restart_seconds: float = 60.0,
        public_base_url: str = "",
        idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
        webhooks: OutboxSettings | None = None,
        webhook_base_url: str = "",
    ) -> None:
        """``webhooks`` configures client webhook delivery (its ``secret`` must be
        set: the daemon generates one when the operator did not);
        ``webhook_base_url`` makes ``/media/`` result URLs in them absolute."""
        self.store = store
        self.idempotency_window = idempotency_window
        self.catalog = {
            name: spec
            for name, spec in catalog.items()
            if spec.provider in providers and providers[spec.provider].enabled
        }
        self.lifecycle = Lifecycle()
        self.monitor = Monitor()
        self.storage = LocalStorage(media_dir)
        self.scheduler = Scheduler(store, self.lifecycle)
        self.families = {name: settings.adapter or name for name, settings in providers.items()}
        self.scheduler.fits = self.fits
        self.finalizer = Finalizer(
            store, self.storage, self.lifecycle, self.monitor, max_bytes=max_download_bytes
        )
        self.providers: dict[str, ProviderActor] = {}
        self.pollers: dict[str, Poller] = {}
        for name, settings in providers.items():
            if not settings.enabled:
                continue
            adapter = make_adapter(settings.adapter or name, settings, name)
            actor = ProviderActor(
                name, adapter, settings, store=store, catalog=self.catalog,
                lifecycle=self.lifecycle, monitor=self.monitor,
            )
            poller = Poller(actor, store, self.lifecycle, self.monitor)
            actor.scheduler_send = self.scheduler.send.send
            actor.on_running = self._tracker(poller)
            actor.on_outputs = poller.on_outputs = self._finalize
            actor.on_cancelled = self._forgetter(poller)
            actor.callback_base = public_base_url
            actor.fits = self.fits
            self.scheduler.add_provider(name, actor.slots, actor.send.send)
            self.providers[name] = actor
            self.pollers[name] = poller
        self.outbox = Outbox(
            store, webhooks or OutboxSettings(), base_url=webhook_base_url, monitor=self.monitor
        )
        store.add_listener(self._on_change)
        store.add_listener(self.outbox.notify)
        self.supervisor = Supervisor(
            "easel", self._children(), intensity=Intensity(max_restarts, max_restart_seconds),
            backoff=RESTART_BACKOFF,
            on_crash=lambda name, exc: self.monitor.emit("actor.crash", actor=name),
        )

    def _children(self) -> list[ChildSpec]:
        children = [
            ChildSpec("monitor", started_on_entry(self.monitor.run)),
            ChildSpec("finalizer", started_on_entry(self.finalizer.run)),
            ChildSpec("scheduler", started_on_entry(self.scheduler.run)),
            ChildSpec("outbox", started_on_entry(self.outbox.run)),
        ]
        for name in self.providers:
            children.append(ChildSpec(f"provider:{name}", started_on_entry(self.providers[name].run)))
            children.append(ChildSpec(f"poller:{name}", started_on_entry(self.pollers[name].run)))
        return children

    @staticmethod
    def _tracker(poller: Poller):  # type: ignore[no-untyped-def]
        async def track(job: Job) -> None:
            await poller.send.send(Track(job))

        return track

    @staticmethod
    def _forgetter(poller: Poller) -> Callable[[Job], None]:
        def forget(job: Job) -> None:
            try:
                poller.send.send_nowait(Forget(job.id))
            except trio.WouldBlock:
                # A full mailbox: the poller keeps checking the task until the
                # provider reports it ended or its deadline passes; then its
                # RUNNING -> ... transition finds the job CANCELLED and drops it.
                pass

        return forget

    async def _finalize(self, job: Job) -> None:
        await self.finalizer.send.send(Finalize(job))

    def _on_change(self, job: Job) -> None:
        """Every committed state change: a terminal job gives back its slot."""
        if job.state in TERMINAL:
            actor = self.providers.get(job.provider)
            if actor is not None:
                actor.slots.release(job.id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.supervisor.run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                for actor in self.providers.values():
                    await actor.adapter.aclose()
                await self.finalizer.aclose()

    def fits(self, job: Job, model: str) -> bool:
        """Whether catalog ``model`` can take ``job``'s request as it was stored."""
        spec = self.catalog.get(model)
        if spec is None:
            return False
        return fits(job, spec.provider_model, self.families.get(spec.provider, spec.provider))

    # -- what the HTTP layer calls -------------------------------------------

    async def submit(self, job: Job) -> tuple[Job, bool]:
        """Store ``job`` durably, then queue it. Returns ``(job, created)``."""
        stored, created = await self.store.insert_job(job, self.idempotency_window)
        if created:
            await self.scheduler.send.send(Enqueue(stored))
        return stored, created

    async def cancel(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        if job is None:
            raise EaselError(ErrorCode.NOT_FOUND, f"no job {job_id}")
        if job.state.terminal:
            raise EaselError(
                ErrorCode.CONFLICT, f"job {job_id} is already {job.state.status}",
                {"status": job.state.status},
            )
        cancelled = await self.store.transition(
            job_id, [job.state], JobState.CANCELLED,
            error=ErrorInfo(ErrorCode.TASK_CANCELLED, "cancelled by the client"),
        )
        if cancelled is None:  # it moved meanwhile; try once more from where it is
            return await self.cancel(job_id)
        self.monitor.emit("job.cancelled", job.provider)
        actor = self.providers.get(job.provider)
        if actor is not None and job.state is not JobState.QUEUED:
            await actor.send.send(CancelTask(cancelled))
        return cancelled

    async def get_job(self, job_id: str) -> Job:
        """The job as stored, or NOT_FOUND."""
        job = await self.store.get_job(job_id)
        if job is None:
            raise EaselError(ErrorCode.NOT_FOUND, f"no job {job_id}")
        return job

    async def wait_for_job(self, job_id: str, seconds: float) -> Job:
        """The job once it is terminal, or as it stands after ``seconds``."""
        job = await self.get_job(job_id)
        with trio.move_on_after(seconds):
            while not job.state.terminal:
                changed = self.store.watch(job_id)
                job = await self.get_job(job_id)  # re-read after watching: no change slips by
                if job.state.terminal:
                    break
                await changed.wait()
                job = await self.get_job(job_id)
        return job

    async def job_events(self, job_id: str) -> list[dict[str, Any]]:
        """The job's event history, oldest first (NOT_FOUND for an unknown job)."""
        await self.get_job(job_id)
        return await self.store.events(job_id)

    async def count_by_state(self) -> dict[str, int]:
        return await self.store.count_by_state()

    async def ping_store(self) -> None:
        """Raise if the database does not answer."""
        await self.store.ping()

    async def provider_webhook(self, provider: str, headers: Mapping[str, str], body: bytes) -> str:
        """Take a provider's webhook: verify it, then hand the status to the poller.

        Returns what became of it (``"applied"`` or why it was ignored). Unknown
        tasks are ignored, not refused: the webhook can outrun the recording of the
        task id, and polling covers that job anyway.
        """
        actor = self.providers.get(provider)
        parse = getattr(actor.adapter, "parse_webhook", None) if actor else None
        if actor is None or parse is None:
            raise EaselError(ErrorCode.NOT_FOUND, f"provider {provider!r} takes no webhooks")
        event = parse(headers, body)
        job = await self.store.job_by_task(provider, event.task_id)
        if job is None:
            return "unknown task"
        if job.state is not JobState.RUNNING:
            return f"job is {job.state.value}"
        await self.pollers[provider].send.send(Observed(job.id, event.status))
        return "applied"

    def statistics(self) -> dict[str, Any]:
        providers = {}
        for name, actor in self.providers.items():
            slots = actor.slots.statistics()
            providers[name] = {
                "slotsHeld": slots.held,
                "slotsCapacity": slots.capacity,
                "tokens": round(actor.bucket.available, 2),
                "queued": self.scheduler.queued(name),
                "polling": self.pollers[name].tracked,
                "circuit": actor.breaker.statistics(),
            }
        return {
            "draining": self.lifecycle.draining,
            "providers": providers,
            "restarts": self.supervisor.statistics().restarts,
            "monitor": self.monitor.statistics(),
            "store": attrs.asdict(self.store.statistics()),
        }
