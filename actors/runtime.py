"""The actors of one daemon, wired together and put under a supervisor.

``Runtime`` opens every mailbox (trio memory channels), builds one provider actor
and one poller per enabled provider, the scheduler, the finalizer, the monitor and
the client webhook outbox, handing each the channel ends it may use, and puts them
under the supervisor. Wiring is done here, in constructors, and nowhere else: no
actor is given another actor, only the send ends of its mailboxes, so each actor
module knows just the messages it takes (``actors/messages.py``).

It also holds the application services the HTTP layer calls (``submit``,
``cancel``, job queries, ``provider_webhook``, ``statistics``): routes never reach
the store or an actor directly.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import attrs
import trio

from actors.alerts.records import Alert, AlertState, ErrorEntry
from actors.alerts.settings import MonitoringSettings
from actors.batches.actor import BatchActor
from actors.batches.service import BatchService
from actors.catalog import ModelSpec
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.experiments.actor import ExperimentsActor
from actors.experiments.enroll import enroll
from actors.experiments.service import ExperimentService
from actors.finalizer import Finalizer, MediaSettings
from actors.images.inputs import InputPreparer
from actors.images.presets import PreprocessSettings
from actors.images.publish import Bucket, BucketInputs, InputPublisher, LocalInputs
from actors.jobs import Job, JobState
from actors.keys import KeyRing
from actors.lifecycle import Lifecycle
from actors.messages import (
    BatchOpened,
    CancelTask,
    Enqueue,
    Observed,
    PollerMessage,
    ProviderMessage,
    SchedulerMessage,
)
from actors.monitor import Monitor
from actors.outbox import Outbox, OutboxSettings
from actors.poller import Poller
from actors.provider import ProviderActor
from actors.providers import PROVIDERS, family, make_adapter, missing_settings, usable
from actors.providers.base import Adapter, ProviderSettings, WebhookReceiver
from actors.quotas import Quotas, QuotaSettings
from actors.routing import Router
from actors.scheduler import Scheduler
from actors.storage import ResultLinks, StorageError, StorageSettings, open_storage
from actors.storage.outputs import StoredOutputs
from actors.store import DEFAULT_IDEMPOTENCY_WINDOW, JobQuery, Store
from actors.supervisor import (
    RESTART_BACKOFF,
    ChildSpec,
    ChildState,
    Intensity,
    Strategy,
    Supervisor,
    started_on_entry,
)
from actors.validation import fits

log = logging.getLogger(__name__)

#: Mailbox sizes. Bounded: a sender that outruns an actor waits (backpressure).
SCHEDULER_MAILBOX = 1024
BATCH_MAILBOX = 256
PROVIDER_MAILBOX = 256
POLLER_MAILBOX = 1024
#: The longest a health check waits for the storage backend to answer.
STORAGE_PROBE_SECONDS = 5.0


@attrs.frozen
class _ProviderChannels:
    """The send ends the runtime keeps for one provider's actors."""

    provider: trio.MemorySendChannel[ProviderMessage]
    poller: trio.MemorySendChannel[PollerMessage]


class Runtime:
    def __init__(
        self,
        store: Store,
        *,
        providers: dict[str, ProviderSettings],
        catalog: dict[str, ModelSpec],
        media_dir: Path,
        media: MediaSettings | None = None,
        storage: StorageSettings | None = None,
        max_restarts: int = 5,
        max_restart_seconds: float = 60.0,
        public_base_url: str = "",
        idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
        webhooks: OutboxSettings | None = None,
        media_base_url: str = "",
        limits: QuotaSettings | None = None,
        key_cache_seconds: float = 1.0,
        preprocess: PreprocessSettings | None = None,
        monitoring: MonitoringSettings | None = None,
        watched_dirs: list[Path] | None = None,
    ) -> None:
        """``webhooks`` configures client webhook delivery (its ``secret`` must be
        set: the daemon generates one when the operator did not).
        ``media_base_url`` is where clients reach Easel (``[daemon]
        public_base_url``, else the address it listens on): the base of
        ``/media/`` result URLs in API answers and webhooks, never a request's
        ``Host``. Downloads are staged in ``staging/`` beside ``media_dir``.
        ``limits`` are the quotas (``actors/quotas.py``), and ``key_cache_seconds``
        how long a key read from the store is trusted (``actors/keys.py``);
        ``preprocess``: input-image presets and limits (``[preprocess]``).
        ``monitoring``: the error log, alert rules and alerters; ``watched_dirs``
        (with ``media_dir``) the directories whose free disk space is watched."""
        self.store = store
        self.idempotency_window = idempotency_window
        # A section without its keys is never started (``usable`` logs why), and
        # its models are refused at submission naming the missing setting.
        missing = {
            name: why for name, settings in providers.items()
            if settings.enabled and (why := missing_settings(name, settings)) is not None
        }
        providers = usable(providers)
        #: Models whose provider is disabled for a missing setting -> that problem.
        self.unavailable = {
            name: missing[spec.provider] for name, spec in catalog.items()
            if spec.provider in missing
        }
        enabled = {name: settings for name, settings in providers.items() if settings.enabled}
        self.catalog = {
            name: spec for name, spec in catalog.items() if spec.provider in enabled
        }
        self.families = {name: settings.adapter or name for name, settings in providers.items()}
        self.lifecycle = Lifecycle()
        self.monitor = Monitor(
            store=store, settings=monitoring, changes=store.subscribe(),
            watched_dirs=[*(watched_dirs or []), media_dir],
        )
        storage = storage or StorageSettings()
        self.storage = open_storage(storage, media_dir, media_base_url,
                                    self.monitor)
        #: Makes result URLs each time a job is read (``present``).
        self.links = ResultLinks(self.storage, media_base_url)
        self.keys = KeyRing(store, key_cache_seconds)
        self.quotas = Quotas(limits or QuotaSettings(), store=store, keys=self.keys,
                             catalog=self.catalog, changes=store.subscribe())
        self.preprocess = preprocess or PreprocessSettings()
        # Inputs published for URL-only providers: in the bucket with the s3
        # backend, else under /media/inputs/ (reached at public_base_url).
        days = self.preprocess.input_url_days
        inputs_at: InputPublisher = (
            BucketInputs(cast(Bucket, self.storage.backend), days)
            if storage.backend == "s3"
            else LocalInputs(media_dir, public_base_url, days))
        image_threads = trio.CapacityLimiter(self.preprocess.threads)
        # A batch item's input that is its dependency's output, read back.
        outputs = StoredOutputs(store, self.storage, media_dir)
        to_scheduler, scheduler_mailbox = trio.open_memory_channel[SchedulerMessage](
            SCHEDULER_MAILBOX)
        self._to_scheduler = to_scheduler
        self.finalizer = Finalizer(
            store, self.storage, self.lifecycle, self.monitor,
            changes=store.subscribe(), staging=media_dir.parent / "staging",
            settings=media, catalog=self.catalog, providers=enabled,
        )
        self.adapters: dict[str, Adapter] = {}
        #: Sections whose provider pushes task updates (``Capabilities.webhooks``).
        self._receivers: dict[str, WebhookReceiver] = {}
        self.providers: dict[str, ProviderActor] = {}
        self.pollers: dict[str, Poller] = {}
        self._channels: dict[str, _ProviderChannels] = {}
        for name, settings in enabled.items():
            adapter = make_adapter(settings.adapter or name, settings, name)
            to_provider, provider_mailbox = trio.open_memory_channel[ProviderMessage](
                PROVIDER_MAILBOX)
            to_poller, poller_mailbox = trio.open_memory_channel[PollerMessage](POLLER_MAILBOX)
            self.adapters[name] = adapter
            declared = PROVIDERS[family(name, settings)]
            capabilities = declared.capabilities
            takes_webhooks = capabilities.webhooks
            if takes_webhooks:
                self._receivers[name] = cast(WebhookReceiver, adapter)
            self.providers[name] = ProviderActor(
                name, adapter, settings, store=store, catalog=self.catalog,
                lifecycle=self.lifecycle, monitor=self.monitor, mailbox=provider_mailbox,
                # Every committed change, to every provider actor: a job moved to a
                # fallback leaves its slot at a provider its row no longer names.
                # Subscribed once, here: the feed outlives the actor's restarts.
                changes=store.subscribe(), scheduler=to_scheduler, poller=to_poller,
                capabilities=capabilities,
                callback_base=public_base_url if takes_webhooks else "",
                inputs=InputPreparer(
                    name, declared.inputs, self.preprocess, publisher=inputs_at,
                    limiter=image_threads, outputs=outputs,
                    allow_private=settings.allow_private_inputs),
            )
            self.pollers[name] = Poller(
                name, settings, catalog=self.catalog, store=store, lifecycle=self.lifecycle,
                monitor=self.monitor, mailbox=poller_mailbox, provider=to_provider,
            )
            self._channels[name] = _ProviderChannels(to_provider, to_poller)
        self.scheduler = Scheduler(
            store=store, lifecycle=self.lifecycle, monitor=self.monitor,
            router=Router(self.catalog, self.fits), catalog=self.catalog,
            providers={name: channels.provider for name, channels in self._channels.items()},
            mailbox=scheduler_mailbox,
        )
        # A batch's end writes its webhook row with no job changing: the outbox is
        # nudged (a full buffer means a nudge is pending already).
        to_outbox, outbox_nudges = trio.open_memory_channel[None](1)
        self.outbox = Outbox(
            store, webhooks or OutboxSettings(), changes=store.subscribe(),
            monitor=self.monitor, links=self.links, nudges=outbox_nudges,
        )
        to_batches, batch_mailbox = trio.open_memory_channel[BatchOpened](BATCH_MAILBOX)
        self.batch_actor = BatchActor(
            store, changes=store.subscribe(), mailbox=batch_mailbox, scheduler=to_scheduler,
            quotas=self.quotas, outbox=to_outbox,
        )
        #: The batch service (``actors/batches/service.py``) the HTTP layer calls.
        self.batches = BatchService(
            store, self.quotas, catalog=self.catalog, actor=to_batches, outbox=to_outbox,
            cancel_job=self.cancel,
        )
        #: Experiments: what the admin API calls, and what enrolment reads.
        self.experiments = ExperimentService(store, self.catalog, self.families)
        self.experiments_actor = ExperimentsActor(self.experiments, monitor=self.monitor)
        self.supervisor = self._tree(Intensity(max_restarts, max_restart_seconds))

    def _tree(self, intensity: Intensity) -> Supervisor:
        """The supervision tree (``docs/architecture.md``, "Supervision")::

            easel (one_for_one)
            ├── quotas, monitor, finalizer, outbox, scheduler, batches, experiments
            └── providers (one_for_one)
                └── provider:NAME (rest_for_one): provider, poller

        rest_for_one where a later child depends on an earlier one's state: a
        restarted provider may have lost the replies its poller waits for. A
        restarted scheduler asks every provider to announce itself again
        (``Announce``), so the providers' calls in flight are not cut off by it.
        Each supervisor has the
        configured intensity; one that exceeds it escalates to its parent, and the
        root's escalation ends the process non-zero. Every child reports started
        only once it has reloaded its state, so the root's ``started`` (READY=1,
        then the HTTP API) means recovery is done.
        """

        def tree(name: str, children: list[ChildSpec], strategy: Strategy) -> ChildSpec:
            supervisor = Supervisor(name, children, strategy=strategy, intensity=intensity,
                                    backoff=RESTART_BACKOFF, on_crash=self._crashed)
            return ChildSpec(name, supervisor.run)

        groups = [
            tree(f"provider:{name}", [
                ChildSpec("provider", self.providers[name].run),
                ChildSpec("poller", self.pollers[name].run),
            ], Strategy.REST_FOR_ONE)
            for name in self.providers
        ]
        return Supervisor("easel", [
            # First: its counts are reloaded before any other actor writes.
            ChildSpec("quotas", self.quotas.run),
            ChildSpec("monitor", self.monitor.run),
            ChildSpec("finalizer", self.finalizer.run),
            ChildSpec("outbox", started_on_entry(self.outbox.run)),
            ChildSpec("scheduler", self.scheduler.run),
            # After the scheduler: what it releases is enqueued there.
            ChildSpec("batches", self.batch_actor.run),
            # Before the HTTP API: enrolment reads the experiments it loads.
            ChildSpec("experiments", self.experiments_actor.run),
            tree("providers", groups, Strategy.ONE_FOR_ONE),
        ], intensity=intensity, backoff=RESTART_BACKOFF, on_crash=self._crashed)

    def _crashed(self, path: str, exc: BaseException) -> None:
        self.monitor.emit("actor.crash", actor=path)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.supervisor.run(task_status=task_status)
        finally:
            # Shielded, so a cancelled run still closes its connections, and
            # bounded, so a connection that will not close cannot hang shutdown.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                for adapter in self.adapters.values():
                    await adapter.aclose()
                await self.finalizer.aclose()
                await self.storage.aclose()

    def fits(self, job: Job, model: str) -> bool:
        """Whether catalog ``model`` can take ``job``'s request as it was stored."""
        spec = self.catalog.get(model)
        if spec is None:
            return False
        return fits(job, spec.provider_model, self.families.get(spec.provider, spec.provider))

    # -- what the HTTP layer calls -------------------------------------------

    async def submit(self, job: Job) -> tuple[Job, bool]:
        """Store ``job`` durably, then queue it. Returns ``(job, created)``.

        The insert and the hand-over to the scheduler are shielded together: a
        client that hangs up while its row commits must not leave a QUEUED job the
        scheduler never hears of. A replay of a key whose job is still QUEUED
        enqueues it again (the scheduler drops what it already has), which also
        recovers the one case left: a scheduler mailbox so full that the send had
        to wait, and the waiting client hung up.

        RATE_LIMITED when the job would pass a quota (``actors/quotas.py``): its
        key's unfinished jobs or daily spend, or the daemon's queue depth.

        First, a job that matches a running experiment is rewritten to its
        variant (``actors/experiments/enroll.py``), so the quotas price what will
        run.
        """
        job = await enroll(self.experiments, job)
        ticket = await self.quotas.admit(job)
        with trio.CancelScope(shield=True):
            try:
                stored, created = await self.store.insert_job(job, self.idempotency_window)
            except BaseException:
                ticket.release()
                raise
            if not created:
                ticket.release()
            if stored.state is not JobState.QUEUED:
                return stored, created
            try:  # no scheduling point per submission while the mailbox has room
                self._to_scheduler.send_nowait(Enqueue(stored))
                return stored, created
            except trio.WouldBlock:
                pass
        await self._to_scheduler.send(Enqueue(stored))
        return stored, created

    async def cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancel the job (of ``owner`` when given: another's is NOT_FOUND)."""
        job = await self.get_job(job_id, owner)
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
            return await self.cancel(job_id, owner)
        self.monitor.emit("job.cancelled", job.provider)
        channels = self._channels.get(job.provider)
        if channels is not None and job.state not in (JobState.QUEUED, JobState.WAITING):
            await channels.provider.send(CancelTask(cancelled))
        return cancelled

    async def get_job(self, job_id: str, owner: str | None = None) -> Job:
        """The job as stored, or NOT_FOUND; with ``owner``, another owner's job is
        NOT_FOUND too, answered exactly as a job that does not exist (a key learns
        nothing of the others' jobs, not even that they exist)."""
        job = await self.store.get_job(job_id)
        if job is None or (owner is not None and job.owner != owner):
            raise EaselError(ErrorCode.NOT_FOUND, f"no job {job_id}")
        return job

    async def present(self, job: Job) -> dict[str, Any]:
        """The job as clients see it (``Job.to_api()``), with its result URLs made
        now: presigned ones expire, so none is stored."""
        return await self.links.present(job.to_api())

    async def probe_storage(self) -> None:
        """Ask the storage backend whether it answers (its figures record the
        outcome; a failure is not raised: health reports it)."""
        with contextlib.suppress(StorageError), trio.move_on_after(STORAGE_PROBE_SECONDS):
            await self.storage.probe()

    async def wait_for_job(self, job_id: str, seconds: float, owner: str | None = None) -> Job:
        """The job once it is terminal, or as it stands after ``seconds`` (of
        ``owner`` when given)."""
        # One read per state the job is seen in, not two: the watch hands over the
        # job as committed, and only a wake that is not the end needs a re-read
        # (after watching again, so no change slips by between the two).
        changed = self.store.watch(job_id)
        job = await self.get_job(job_id, owner)
        with trio.move_on_after(seconds):
            while not job.state.terminal:
                job = await changed.wait()
                if job.state.terminal:
                    break
                changed = self.store.watch(job_id)
                job = await self.get_job(job_id)
        return job

    async def job_events(self, job_id: str, owner: str | None = None) -> list[dict[str, Any]]:
        """The job's event history, oldest first (NOT_FOUND for an unknown job, or
        another ``owner``'s)."""
        await self.get_job(job_id, owner)
        return await self.store.events(job_id)

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        """The jobs ``query`` asks for (its ``owner`` scopes them: set it from the
        caller unless the caller sees every job)."""
        return await self.store.list_jobs(query)

    async def count_by_state(self) -> dict[str, int]:
        return await self.store.count_by_state()

    async def ping_store(self) -> None:
        """Raise if the database does not answer."""
        await self.store.ping()

    async def provider_webhook(self, provider: str, headers: Mapping[str, str], body: bytes) -> str:
        """Take a provider's webhook: verify it, then hand the status to the poller.

        Returns what became of it (``"applied"`` or why it was ignored), for the
        log only: the caller's answer must not tell a known task from an unknown
        one. Unknown tasks are ignored, not refused: the webhook can outrun the
        recording of the task id, and polling covers that job anyway.
        """
        receiver = self._receivers.get(provider)
        if receiver is None:
            raise EaselError(ErrorCode.NOT_FOUND, f"provider {provider!r} takes no webhooks")
        event = receiver.parse_webhook(headers, body)
        job = await self.store.job_by_task(provider, event.task_id)
        if job is None:
            return "unknown task"
        if job.state is not JobState.RUNNING:
            return f"job is {job.state.value}"
        await self._channels[provider].poller.send(Observed(job.id, event.status))
        return "applied"

    # -- monitoring (the admin pages and API) ---------------------------------

    async def job_totals(self, since: float, until: float) -> dict[str, Any]:
        return await self.store.job_totals(since, until)

    async def list_errors(
        self, filters: Mapping[str, Any] | None = None, limit: int = 100
    ) -> list[ErrorEntry]:
        return await self.store.list_errors(filters, limit)

    async def resolve_error(self, error_id: int, by: str) -> ErrorEntry:
        entry = await self.store.resolve_error(error_id, by)
        if entry is None:
            raise EaselError(ErrorCode.NOT_FOUND, f"no error {error_id}")
        return entry

    async def list_alerts(self, state: AlertState | None = None, limit: int = 100) -> list[Alert]:
        return await self.store.list_alerts(state, limit)

    async def acknowledge_alert(self, alert_id: int, by: str) -> Alert:
        alert = await self.store.acknowledge_alert(alert_id, by)
        if alert is None:
            raise EaselError(ErrorCode.NOT_FOUND, f"no alert {alert_id}")
        return alert

    async def resolve_alert(self, alert_id: int, by: str) -> Alert:
        """Resolved by the monitor, which owns each alert's life (and sends the
        resolved notice)."""
        alert = await self.monitor.resolve_alert(alert_id, by)
        if alert is None:
            raise EaselError(ErrorCode.NOT_FOUND, f"no alert {alert_id}")
        return alert

    def not_running(self) -> list[str]:
        """Supervised actors (by path) that are not up now: starting and reloading
        their state, or waiting to be restarted after a crash."""
        return [child.path for child in self.supervisor.statistics().children
                if child.state is not ChildState.RUNNING]

    def statistics(self) -> dict[str, Any]:
        """Every actor's snapshot; reading changes nothing."""
        queued = self.scheduler.statistics()
        providers = {}
        for name, actor in self.providers.items():
            stats = actor.statistics()
            providers[name] = {
                **{key: stats[key] for key in ("slotsHeld", "slotsCapacity", "tokens")},
                "queued": queued.get(name, 0),
                "polling": self.pollers[name].statistics()["tracked"],
                "circuit": stats["circuit"],
            }
        return {
            "draining": self.lifecycle.draining,
            "providers": providers,
            "restarts": self.supervisor.statistics().restarts,
            "monitor": self.monitor.statistics(),
            "store": attrs.asdict(self.store.statistics()),
            "storage": self.storage.statistics(),
            "finalizer": self.finalizer.statistics(),
        }
