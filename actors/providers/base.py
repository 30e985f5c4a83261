"""What every provider speaks, and what a provider module declares about itself.

An adapter holds a provider's wire protocol: ``submit`` answers ``Submitted`` (a
remote task to poll) or ``Completed`` (the outputs at once), ``check`` answers a
``TaskStatus`` and ``cancel`` asks the provider to stop. An adapter whose provider
lists its tasks is also a ``TaskLister``: ``lookup_page`` reads one page of that
list for tasks matching a job whose create went unanswered. Failures are raised as
``EaselError`` with a code; the actor around the adapter decides about retries,
tokens and slots.

Each provider module ends with a ``PROVIDER = Provider(...)`` record: everything
else Easel knows about it (parameter rules per model, required settings, its own
settings class, capabilities, secret patterns for redaction, the form its input
images must take), so that adding a
provider is adding one module to the registry in ``actors/providers/__init__.py``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from actors.catalog import ModelSpec, PollingSpec
from actors.images.forms import InputSpec
from actors.parameters import Rules


@attrs.frozen
class ProviderSettings:
    """One ``[providers.NAME]`` section: what every provider has. A provider with
    settings of its own subclasses this (``Provider.settings``); fields an adapter
    does not use are ignored."""

    adapter: str | None = None
    enabled: bool = True
    base_url: str = ""
    api_token: str = ""
    api_key: str = ""
    access_key: str = ""
    secret_key: str = ""
    rate: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    burst: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    max_in_flight: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    request_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    connect_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    #: Attempts for a call that is safe to repeat (status checks, provably unsent
    #: submissions) before the error is final.
    max_attempts: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    #: Backoff between attempts: up to ``min(retry_cap, retry_base * 2**(n-1))``
    #: seconds, ``retry_jitter`` of it random, never less than ``Retry-After``.
    retry_base: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    retry_cap: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    retry_jitter: float = attrs.field(
        default=1.0, validator=[attrs.validators.ge(0), attrs.validators.le(1)])
    #: Seconds after a create during which the provider's task list can still
    #: show its task: a job whose create's answer was lost is looked for (RESOLVING)
    #: until then, and only then ends UNCERTAIN_SUBMISSION (providers with lookup).
    lookup_window: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    #: Circuit breaker (actors/breaker.py): open at ``breaker_threshold`` failures
    #: among at least ``breaker_min_calls`` calls in ``breaker_window`` seconds;
    #: half-open after ``breaker_cooldown`` with ``breaker_probes`` trial submissions.
    breaker_threshold: float = attrs.field(
        default=0.5, validator=[attrs.validators.gt(0), attrs.validators.le(1)])
    breaker_window: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    breaker_min_calls: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    breaker_cooldown: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    breaker_probes: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    #: Shared secret for webhooks the provider sends us (Replicate's ``whsec_...``,
    #: Pollo's signing secret, the secret BFL echoes back).
    webhook_secret: str = ""
    #: Let the adapter fetch input images from loopback or private addresses (an
    #: image server on the same host or network). Off: a submitted URL must not
    #: make Easel reach inside the network it runs in.
    allow_private_inputs: bool = False
    #: Seconds between sweeps of the provider's recent tasks for orphans (tasks
    #: Easel caused that no job holds; ``actors/sweep.py``); 0 turns it off. Only
    #: for providers that can list their tasks.
    sweep_interval: float = attrs.field(default=300.0, validator=attrs.validators.ge(0))
    #: Polling for this provider's models that name none of their own.
    polling: PollingSpec | None = None
    #: Hosts a URL the provider hands back (BFL's ``polling_url``, fal's status and
    #: response URLs, Replicate's next page) may point at: only those are sent the
    #: API key. ``*.example.com`` matches any subdomain. Empty: the provider's
    #: documented hosts (``actors/providers/http.py``, ``AllowedHosts``); the host
    #: of ``base_url`` is always allowed.
    allowed_hosts: tuple[str, ...] = ()
    #: Download and store outputs (the storage backend); ``false`` keeps the
    #: provider's own URLs in results (they expire at the provider's pace).
    upload_outputs: bool = True


@attrs.frozen
class JobRequest:
    """What an adapter needs to know of a job to submit it."""

    job_id: str
    model: str
    spec: ModelSpec
    prompt: str
    number_of_outputs: int = 1
    input_images: tuple[str, ...] = ()
    parameters: dict[str, Any] = attrs.field(factory=dict)
    #: Wall-clock time the job entered SUBMITTING; reconciliation matches on it.
    submitting_at: float = 0.0
    #: Where the provider may POST the task's completion, when Easel has a public
    #: URL (``[daemon] public_base_url``); adapters whose API takes one pass it on.
    callback_url: str | None = None


@attrs.frozen
class Submitted:
    task_id: str


@attrs.frozen
class Completed:
    """Outputs known at once. Each output is a URL: http(s) or a ``data:`` URI."""

    outputs: tuple[str, ...]


class TaskState(str, enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@attrs.frozen
class TaskStatus:
    state: TaskState
    outputs: tuple[str, ...] = ()
    error: Any = None  # an ErrorInfo when state is FAILED
    progress: float | None = None


@attrs.frozen
class WebhookEvent:
    """A provider webhook: which task it is about, and where it stands.

    ``status`` is ``None`` when the provider signs nothing Easel could verify (Kling's
    ``callback_url``): the delivery is then only a hint, and the poller checks the
    task with the provider at once instead of believing the body.
    """

    task_id: str
    status: TaskStatus | None


class WebhookReceiver(Protocol):
    """Adapters whose provider pushes task updates implement this too."""

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Verify and read one webhook delivery.

        Raises ``EaselError`` AUTHENTICATION_FAILED when it cannot be verified and
        INVALID_REQUEST when it cannot be read; both are answered 4xx and logged.
        """
        ...


class Adapter(Protocol):
    """The wire protocol of one provider."""

    name: str

    async def submit(self, job: JobRequest) -> Submitted | Completed:
        """Start the job at the provider.

        ``Submitted.task_id`` is all Easel persists of the task. When checking it
        later needs more than the provider's id (BFL's ``polling_url``, fal's
        ``status_url``), the handle is ``"<id> <extra>"``: the provider's id, one
        space, then whatever the adapter needs; webhooks still find the job by the
        bare id (see ``Store.job_by_task``).
        """
        ...

    async def check(self, task_id: str) -> TaskStatus: ...

    async def cancel(self, task_id: str) -> None: ...

    async def aclose(self) -> None: ...


@attrs.frozen
class LookupPage:
    """One page of a provider's task list, as read for one job.

    ``matches``: the handles (as ``submit`` would answer them) of this page's tasks
    that match the job, oldest first. ``next_cursor``: what to pass for the next
    page; ``None`` when the list holds nothing more within the lookup's reach (the
    page reached tasks created before the job's ``submitting_at`` less the
    provider's clock skew, or the list ended).
    """

    matches: tuple[str, ...] = ()
    next_cursor: str | None = None


@attrs.frozen
class ListedTask:
    """One task in a provider's list: its handle (as ``submit`` would answer it),
    the key the adapter matches jobs on (``TaskLister.match_keys``) and when it was
    created (Unix seconds, when the list says)."""

    handle: str
    key: str
    created: float | None = None


@attrs.frozen
class TaskPage:
    """One page of a provider's task list: its tasks created since the time asked
    for, and the cursor of the next page (``None``: nothing more since then)."""

    tasks: tuple[ListedTask, ...] = ()
    next_cursor: str | None = None

    def matching(self, keys: tuple[str, ...]) -> LookupPage:
        """This page as a lookup for the job whose ``match_keys`` are ``keys``."""
        matches = sorted((task.created or 0.0, task.handle) for task in self.tasks
                         if task.key in keys)
        return LookupPage(tuple(handle for _, handle in matches), self.next_cursor)


@runtime_checkable
class TaskLister(Protocol):
    """Adapters whose provider can list its tasks (``Capabilities.lookup``).

    One call is one request, so the provider actor spends one rate-limit token on
    it, retries it alone when it fails and keeps the matches of the pages before.
    """

    #: At most this many pages are read for one lookup: a walk that gets this far
    #: without reaching the end of its reach is left incomplete rather than spend
    #: the provider's rate limit on an unbounded list.
    lookup_pages: int

    async def lookup_page(self, job: JobRequest, cursor: str | None) -> LookupPage:
        """Read one page of the task list for tasks matching ``job`` (same input,
        or the job's id where the provider keeps one, created no earlier than
        ``job.submitting_at`` less the clock skew): the newest page when ``cursor``
        is ``None``, else the page ``cursor`` names."""
        ...

    async def recent_page(self, cursor: str | None, since: float) -> TaskPage:
        """Read one page of every task the provider lists (all of its lists, where
        it keeps several), newest first, keeping those created at or after
        ``since``: what the orphan sweep compares with Easel's jobs."""
        ...

    def match_keys(self, job: JobRequest) -> tuple[str, ...]:
        """The ``ListedTask.key`` values a task created for ``job`` may carry (its
        exact input, or the job id where the provider keeps one)."""
        ...


# -- what a provider module declares ----------------------------------------------------


@attrs.frozen
class Capabilities:
    """What a provider's API offers besides submitting and checking a task."""

    #: A task can be stopped (``cancel`` sends something); without it, a cancelled
    #: job's task runs to its end at the provider (and is paid for).
    cancel: bool = False
    #: Tasks can be listed or looked up (the adapter is a ``TaskLister``), so a
    #: create whose answer was lost can be proven to have reached the provider.
    lookup: bool = False
    #: The provider pushes task updates; the adapter implements ``WebhookReceiver``.
    webhooks: bool = False


def bare_task_id(handle: str) -> str:
    """The provider's own id in a stored task handle ``"<id> <extra>"`` (see
    ``Adapter.submit``): what a provider's webhook names the task by."""
    return handle.partition(" ")[0]


def nothing_missing(settings: ProviderSettings) -> tuple[str, ...]:
    """For providers that need no credentials (the sandbox)."""
    return ()


def missing_of(settings: ProviderSettings, *choices: tuple[str, ...]) -> tuple[str, ...]:
    """The settings still to set when any one of ``choices`` (each a group of
    settings that must all be set) would do: nothing when a group is complete, else
    the first group's unset names (the usual way, named in the message)."""
    for group in choices:
        if all(getattr(settings, name) for name in group):
            return ()
    return tuple(name for name in choices[0] if not getattr(settings, name))


def _no_schema(provider_model: str) -> Rules:
    return Rules(None)  # a model Easel knows no schema for: its provider judges


@attrs.frozen
class Provider:
    """Everything Easel knows about one provider family, besides its catalog entries.

    ``name`` is the adapter name a ``[providers.X]`` section selects (``adapter =``,
    or the section's own name).
    """

    name: str
    #: Builds the adapter for one section: ``adapter(settings, section_name)``.
    adapter: Callable[[Any, str], Adapter]
    capabilities: Capabilities
    #: The settings that are missing for the provider to be usable at all (API keys).
    missing: Callable[[Any], tuple[str, ...]] = nothing_missing
    #: The parameters, output and input-image limits of a provider model.
    rules: Callable[[str], Rules] = _no_schema
    #: The section's settings class: ``ProviderSettings`` or a subclass with fields
    #: only this provider has.
    settings: type[ProviderSettings] = ProviderSettings
    #: Secret-looking text this provider's keys and tokens look like:
    #: ``(pattern, replacement)``, applied to every log line and error detail.
    redactions: tuple[tuple[re.Pattern[str], str], ...] = ()
    #: The provider's own id in a task handle this adapter stored.
    task_id: Callable[[str], str] = bare_task_id
    #: The forms its API takes input images in, and the preset they get when a
    #: submission names none (``actors/images/forms.py``).
    inputs: InputSpec = InputSpec()
