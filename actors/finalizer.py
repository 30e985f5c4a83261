"""The media finalizer actor: fetches a job's outputs and stores them.

It takes no messages: it follows the store's change feed, so every job that enters
FINALIZING reaches it once committed, whoever moved it and whatever became of that
actor after the commit, and its downloads start at once (provider URLs expire:
BFL's after 10 minutes). On start it also takes every job left in FINALIZING (after
a crash or a restart), since the provider's output URLs are stored on the job.

Each output goes through two steps:

1. **Download**, through the pinned, address-checked fetch (``actors/fetch.py``:
   each hop resolved once, checked, connected to the checked address; redirects
   checked hop by hop), streamed into a file under the state dir's ``staging/``
   (never whole in memory) within ``download_timeout``. Its type is sniffed from
   its first bytes (``actors/storage/kinds.py``), not taken from headers: neither
   an image nor a video is refused. It is capped in size per kind
   (``max_image_bytes``, ``max_video_bytes``) and hashed (sha256) as it streams.
   ``data:`` URIs (synchronous providers) are decoded to the same kind of file.
   A download that fails in a way that may pass (a connection error, a 5xx, a
   429) is retried per ``DOWNLOAD_RETRY``, never sooner than ``Retry-After``.
2. **Store**: the file is handed to the storage backend (``actors/storage/``); the
   result keeps the backend's name, the key, the sha256 and the size, never a URL
   (URLs are made when the job is read: ``actors/storage/links.py``). A provider
   or model with ``upload_outputs = false`` keeps the provider's own URL instead.

What the provider did wrong (an answer other than 200, a body that is neither an
image nor a video, too large, retries used up) fails the job. What went wrong
here never does: no file descriptor left, a full disk, the store or the storage
backend not answering. The job then stays FINALIZING (its ``stage_reason`` says
why) and is tried again after ``LOCAL_RETRY``'s backoff, for as long as it takes:
a billed output is not thrown away for a local problem. Files already downloaded
are kept across attempts (and restarts), so a provider URL that expired meanwhile
is not needed again.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import ipaddress
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs
import httpx
import trio

from actors import context
from actors.catalog import MediaKind, ModelSpec
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.fetch import Fetcher, FetchFailed, TooLarge
from actors.jobs import Job, JobState
from actors.lifecycle import Lifecycle
from actors.monitor import Monitor
from actors.providers.base import ProviderSettings
from actors.retry import Backoff, RetryPolicy, parse_retry_after
from actors.storage import Storage, StorageError, Upload
from actors.storage.kinds import HEAD_BYTES, extension_for, kind_of, sniff
from actors.store import Store
from actors.targets import TargetRefused

log = logging.getLogger(__name__)

#: Attempts at downloading one output, and the waits between them (about 1, 2, 4 s).
DOWNLOAD_RETRY = RetryPolicy(max_attempts=4, base=1.0, cap=8.0, jitter=0.5)
#: The longest wait a download takes from a ``Retry-After`` (seconds).
DOWNLOAD_RETRY_AFTER_CAP = 60.0
#: Waits between attempts at a job that failed for a local problem: 1 s, doubling
#: up to 5 minutes, never given up.
LOCAL_RETRY = Backoff(base=1.0, cap=300.0, jitter=0.5)
#: Bytes gathered before one write (and hash update) in a worker thread.
WRITE_CHUNK = 1 << 20
#: Errors of this host (not of the provider) that can hide inside a failed fetch.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT,
                          errno.ENOMEM, errno.ENOBUFS, errno.EROFS, errno.EFBIG})
_MIB = 1024 * 1024


@attrs.frozen
class MediaSettings:
    """``[media]``: how outputs are downloaded from providers."""

    #: Largest image output, in bytes.
    max_image_bytes: int = attrs.field(default=50 * _MIB, validator=attrs.validators.ge(1))
    #: Largest video output, in bytes.
    max_video_bytes: int = attrs.field(default=1024 * _MIB, validator=attrs.validators.ge(1))
    #: Seconds one download may take, whole.
    download_timeout: float = attrs.field(default=900.0, validator=attrs.validators.gt(0))
    #: Download outputs from loopback, private or link-local addresses. Off, only
    #: a provider configured at such an address literal (``base_url``) may serve
    #: its outputs from that same host.
    allow_private_downloads: bool = False
    #: Jobs downloading at once (storing is bounded by the backend).
    concurrency: int = attrs.field(default=8, validator=attrs.validators.ge(1))

    def cap(self, kind: MediaKind) -> int:
        return self.max_video_bytes if kind is MediaKind.VIDEO else self.max_image_bytes


class LocalProblem(Exception):
    """A download failed for a reason of this host (no file descriptor left...)."""


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    """The bytes of a base64 ``data:`` URI and the type it declares (which the
    finalizer does not trust: it sniffs the bytes)."""
    header, _, payload = uri.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise EaselError(ErrorCode.PROVIDER_ERROR, "output is not a base64 data URI",
                         retryable=False)
    declared = header[5:].split(";")[0] or "application/octet-stream"
    try:
        return base64.b64decode(payload, validate=True), declared
    except (binascii.Error, ValueError) as exc:
        raise EaselError(ErrorCode.PROVIDER_ERROR, "output data URI is not valid base64",
                         retryable=False) from exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was raised from or during, groups included."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def local_cause(exc: BaseException) -> OSError | None:
    """The error of this host behind ``exc`` (EMFILE, ENOSPC...), if there is one."""
    for cause in _causes(exc):
        if isinstance(cause, OSError) and cause.errno in LOCAL_ERRNOS:
            return cause
    return None


def _told_clients(exc: Exception) -> str:
    """What a client may read of a local problem (the job's ``stageReason`` and
    events): the system's words for it, never paths, keys or endpoints, which
    only the log gets."""
    errors = [c for c in _causes(exc) if isinstance(c, OSError) and c.strerror]
    if isinstance(exc, StorageError):
        return f"storage: {errors[0].strerror}" if errors else "storage backend unavailable"
    if errors:
        return str(errors[0].strerror)
    return "internal error"


def _private_literal(url: str) -> str | None:
    """The host of ``url`` when it is ``localhost`` or a non-public address literal."""
    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, ValueError):
        return None
    if host == "localhost":
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return None if address.is_global else host


def _too_large(limit: int) -> EaselError:
    return EaselError(ErrorCode.PROVIDER_ERROR, f"output is larger than {limit} bytes",
                      {"limit": limit}, retryable=False)


def _not_media(declared: str) -> EaselError:
    return EaselError(
        ErrorCode.PROVIDER_ERROR, "output is neither an image nor a video Easel knows",
        {"declaredContentType": declared[:100]}, retryable=False,
    )


class _Sink:
    """Where one download's bytes go: hashed and written a chunk at a time in a
    worker thread, its type sniffed from the head and its size capped by kind."""

    def __init__(self, file: IO[bytes], settings: MediaSettings, declared: str,
                 limiter: trio.CapacityLimiter) -> None:
        self.file = file
        self.settings = settings
        self.declared = declared
        self.limiter = limiter
        self.hash = hashlib.sha256()
        self.size = 0
        self.content_type: str | None = None
        self.cap = max(settings.max_image_bytes, settings.max_video_bytes)
        self._buffer = bytearray()

    def _write(self, data: bytes) -> None:
        self.hash.update(data)
        self.file.write(data)

    def _sniff(self, head: bytes) -> None:
        content_type = sniff(head)
        if content_type is None:
            raise _not_media(self.declared)
        self.content_type = content_type
        self.cap = self.settings.cap(kind_of(content_type))

    async def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._buffer += chunk
        if self.content_type is None and len(self._buffer) >= HEAD_BYTES:
            self._sniff(bytes(self._buffer[:HEAD_BYTES]))
        if self.size > self.cap:
            raise _too_large(self.cap)
        if len(self._buffer) >= WRITE_CHUNK:
            data, self._buffer = bytes(self._buffer), bytearray()
            await trio.to_thread.run_sync(self._write, data, limiter=self.limiter)

    async def finish(self) -> tuple[str, str]:
        """The content type and sha256 once every byte was added."""
        if self.content_type is None:
            self._sniff(bytes(self._buffer))
        if self.size > self.cap:
            raise _too_large(self.cap)
        data, self._buffer = bytes(self._buffer), bytearray()
        await trio.to_thread.run_sync(self._write, data, limiter=self.limiter)
        await trio.to_thread.run_sync(os.fsync, self.file.fileno(), limiter=self.limiter)
        assert self.content_type is not None
        return self.content_type, self.hash.hexdigest()


def _reread(path: Path) -> tuple[bytes, str, int]:
    """A staged file's head, sha256 and size (a download kept from an earlier attempt)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
        f.seek(0)
        while chunk := f.read(WRITE_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return head, digest.hexdigest(), size


class Finalizer:
    def __init__(
        self,
        store: Store,
        storage: Storage,
        lifecycle: Lifecycle,
        monitor: Monitor,
        *,
        changes: trio.MemoryReceiveChannel[Job],
        staging: Path,
        settings: MediaSettings | None = None,
        catalog: Mapping[str, ModelSpec] | None = None,
        providers: Mapping[str, ProviderSettings] | None = None,
    ) -> None:
        """``staging``: the directory downloads are written to (in the state dir).
        ``catalog`` and ``providers`` say which jobs keep their provider's URLs
        (``upload_outputs``) and which provider sits at a private address."""
        self.store = store
        self.storage = storage
        self.lifecycle = lifecycle
        self.monitor = monitor
        self.staging = staging
        self.settings = settings or MediaSettings()
        self.catalog = catalog or {}
        self.providers = providers or {}
        self._changes = changes
        #: Jobs being finalized now: the feed and a reload may both name one.
        self._active: set[str] = set()
        #: Jobs waiting to be tried again after a local problem.
        self._retrying: set[str] = set()
        self._limiter = trio.CapacityLimiter(self.settings.concurrency)
        self._io = trio.CapacityLimiter(max(4, self.settings.concurrency))
        timeout = httpx.Timeout(60.0, connect=10.0)
        self._fetcher = Fetcher(timeout=timeout,
                                allow_private=self.settings.allow_private_downloads)
        #: For a provider the operator put at a private address literal.
        self._private_fetcher = Fetcher(timeout=timeout, allow_private=True)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._active.clear()
        self._retrying.clear()
        await self.store.barrier()  # what a previous run sent is committed
        async with trio.open_nursery() as nursery:
            left = await self.store.jobs_in([JobState.FINALIZING])
            await trio.to_thread.run_sync(self._sweep_staging, {job.id for job in left},
                                          limiter=self._io)
            for job in left:
                self._start(nursery, job)
            task_status.started()
            async for job in self._changes:
                if job.state is JobState.FINALIZING:
                    self._start(nursery, job)

    def _sweep_staging(self, keep: set[str]) -> None:
        """Remove downloads of jobs no longer finalizing (ended while Easel was down,
        or before their files could be removed)."""
        try:
            names = os.listdir(self.staging)
        except FileNotFoundError:
            return
        except OSError as exc:  # out of descriptors: the files wait for the next start
            log.warning("cannot look through %s: %s", self.staging, exc)
            return
        for name in names:
            if name not in keep:
                shutil.rmtree(self.staging / name, ignore_errors=True)

    def _start(self, nursery: trio.Nursery, job: Job) -> None:
        if job.id not in self._active:
            self._active.add(job.id)
            nursery.start_soon(self._follow, job)

    async def aclose(self) -> None:
        await self._fetcher.aclose()
        await self._private_fetcher.aclose()

    def statistics(self) -> dict[str, int]:
        """Jobs being finalized, and those of them waiting after a local problem."""
        return {"active": len(self._active), "retrying": len(self._retrying)}

    async def _follow(self, seen: Job) -> None:
        """Finalize the job until it leaves FINALIZING, however many attempts local
        problems take. The first attempt takes the job as the feed or the reload
        handed it over (committed FINALIZING: no read needed; every move out of
        FINALIZING is conditional on it); later ones read it again."""
        job_id = seen.id
        context.job_id.set(job_id)
        attempt = 0
        try:
            while True:
                try:
                    await self._attempt(job_id, seen if attempt == 0 else None)
                    return
                except Exception as exc:  # a problem of this host: never the job's failure
                    attempt += 1
                    delay = LOCAL_RETRY.delay(attempt)
                    self._retrying.add(job_id)
                    await self._note_local_problem(job_id, exc, attempt, delay)
                    await trio.sleep(delay)
                finally:
                    self._retrying.discard(job_id)
        finally:
            self._active.discard(job_id)

    async def _note_local_problem(
        self, job_id: str, exc: Exception, attempt: int, delay: float
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:300]
        said = _told_clients(exc)
        if isinstance(exc, OSError | LocalProblem | StorageError):
            log.warning("finalizing attempt %d failed here (%s); again in %.0f s",
                        attempt, reason, delay)
        else:
            log.exception("finalizing attempt %d failed; again in %.0f s", attempt, delay)
        self.monitor.emit("finalize.retry", attempt=attempt, error=reason)
        info = ErrorInfo(ErrorCode.STORAGE_ERROR, said)
        try:
            await self.store.update(
                job_id, JobState.FINALIZING,
                stage_reason=f"local problem, retrying in {delay:.0f} s: {said}",
                event={"kind": "finalize_retry", "attempt": attempt, "error": info.to_json()},
            )
        except Exception as note_failed:  # the store may be the problem itself
            log.warning("could not record the finalizing problem: %r", note_failed)

    async def _attempt(self, job_id: str, job: Job | None) -> None:
        """One attempt at a job (``job``: as last committed, else read here): done,
        or failed for the provider's fault, or raising for a problem of this host."""
        if job is None:
            job = await self.store.get_job(job_id)
        if job is None or job.state is not JobState.FINALIZING:
            return  # a reload took care of it, or it was cancelled
        context.provider.set(job.provider)
        with self.lifecycle.busy():
            try:
                if not job.provider_outputs:
                    raise EaselError(ErrorCode.TASK_FAILED, "provider returned no outputs")
                results = await self._results(job)
            except EaselError as exc:
                await self._fail(job, exc.info)
                return
            done = await self.store.transition(
                job.id, JobState.FINALIZING, JobState.SUCCEEDED,
                results=results, provider_outputs=[], progress=1.0, stage_reason=None,
            )
        if done is not None:
            log.info("job succeeded", extra={"outputs": len(results)})
            self.monitor.emit("job.succeeded", job.provider, model=job.model)
        await self._clean(job.id)

    async def _fail(self, job: Job, error: ErrorInfo) -> None:
        failed = await self.store.transition(job.id, JobState.FINALIZING, JobState.FAILED,
                                             error=error, stage_reason=None)
        if failed is not None:
            log.warning("job failed while finalizing: %s", error.message)
            self.monitor.emit("job.failed", job.provider, code=error.code.value)
        await self._clean(job.id)

    async def _clean(self, job_id: str) -> None:
        await trio.to_thread.run_sync(
            lambda: shutil.rmtree(self.staging / job_id, ignore_errors=True), limiter=self._io)

    def _uploads(self, job: Job) -> bool:
        spec = self.catalog.get(job.serving_model)
        if spec is not None and spec.upload_outputs is not None:
            return spec.upload_outputs
        provider = self.providers.get(job.provider)
        return provider.upload_outputs if provider is not None else True

    async def _results(self, job: Job) -> list[dict[str, Any]]:
        upload = self._uploads(job)
        spec = self.catalog.get(job.serving_model)
        kind = spec.kind if spec is not None else MediaKind.IMAGE
        # Every download first, then every put: provider URLs expire, stores wait.
        # Only downloads take the limiter: a slow or failing store must not keep
        # another job's download waiting until its URL expires.
        staged: dict[int, Upload] = {}
        async with self._limiter:
            for index, url in enumerate(job.provider_outputs):
                if upload or url.startswith("data:"):
                    staged[index] = await self._staged(job, index, url)
        results = []
        for index, url in enumerate(job.provider_outputs):
            if index not in staged:
                results.append({"type": kind.value, "url": url})
                continue
            file = staged[index]
            key = self.storage.key_for(job, index, extension_for(file.content_type))
            await self.storage.put(key, file)
            results.append({
                "type": kind_of(file.content_type).value,
                "contentType": file.content_type,
                "storage": self.storage.name,
                "key": key,
                "sha256": file.sha256,
                "size": file.size,
            })
        return results

    async def _staged(self, job: Job, index: int, url: str) -> Upload:
        """Output ``index`` downloaded (or kept from an earlier attempt)."""
        directory = self.staging / job.id
        path = directory / f"{index}.out"
        if url.startswith("data:"):
            # A synchronous provider's output is already here: decoded, checked,
            # written and synced in one worker-thread call (each hop to a thread
            # costs more than this work, and the base64 decode stays off the loop).
            return await trio.to_thread.run_sync(self._stage_data, url, path, limiter=self._io)
        if await trio.to_thread.run_sync(path.exists, limiter=self._io):
            head, sha256, size = await trio.to_thread.run_sync(_reread, path, limiter=self._io)
            content_type = sniff(head)
            if content_type is not None:
                return Upload(path, content_type, sha256, size)
        await trio.to_thread.run_sync(lambda: directory.mkdir(parents=True, exist_ok=True),
                                      limiter=self._io)
        for attempt in range(1, DOWNLOAD_RETRY.max_attempts + 1):
            try:
                return await self._download(job, url, path)
            except EaselError as exc:
                if not exc.info.is_retryable or attempt == DOWNLOAD_RETRY.max_attempts:
                    raise
                # Provider URLs expire within minutes: a longer Retry-After is
                # cut to DOWNLOAD_RETRY_AFTER_CAP rather than waited out.
                retry_after = min(exc.retry_after or 0.0, DOWNLOAD_RETRY_AFTER_CAP)
                await trio.sleep(DOWNLOAD_RETRY.delay(attempt, retry_after))
        raise AssertionError("the loop returns or raises")

    def _stage_data(self, url: str, path: Path) -> Upload:
        """A ``data:`` URI's bytes staged at ``path`` as a download would be: type
        sniffed, size capped by kind, synced, then renamed into place."""
        data, declared = decode_data_uri(url)
        content_type = sniff(data[:HEAD_BYTES])
        if content_type is None:
            raise _not_media(declared)
        cap = self.settings.cap(kind_of(content_type))
        if len(data) > cap:
            raise _too_large(cap)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        with open(partial, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        return Upload(path, content_type, hashlib.sha256(data).hexdigest(), len(data))

    async def _download(self, job: Job, url: str, path: Path) -> Upload:
        partial = path.with_name(path.name + ".part")
        file = await trio.to_thread.run_sync(open, partial, "wb", limiter=self._io)
        try:
            sink = await self._fetch(job, url, file)
            content_type, sha256 = await sink.finish()
        finally:
            await trio.to_thread.run_sync(file.close, limiter=self._io)
        await trio.to_thread.run_sync(os.replace, partial, path, limiter=self._io)
        return Upload(path, content_type, sha256, sink.size)

    def _fetcher_for(self, job: Job, url: str) -> Fetcher:
        provider = self.providers.get(job.provider)
        host = _private_literal(url)
        if host is not None and provider is not None and host == _private_literal(provider.base_url):
            return self._private_fetcher
        return self._fetcher

    async def _fetch(self, job: Job, url: str, file: IO[bytes]) -> _Sink:
        timeout = self.settings.download_timeout
        try:
            with trio.fail_after(timeout):
                async with self._fetcher_for(job, url).stream("GET", url) as response:
                    if response.status_code != 200:
                        raise EaselError(
                            ErrorCode.PROVIDER_ERROR,
                            f"output download answered HTTP {response.status_code}",
                            {"status": response.status_code},
                            retryable=response.status_code >= 500 or response.status_code == 429,
                            retry_after=parse_retry_after(response.headers.get("retry-after")),
                        )
                    sink = _Sink(file, self.settings, response.headers.get("content-type", ""),
                                 self._io)
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > sink.cap:
                        raise TooLarge(sink.cap)
                    try:
                        async for chunk in response.aiter_bytes():
                            await sink.add(chunk)
                    except httpx.HTTPError as exc:
                        raise FetchFailed(f"{type(exc).__name__}: {exc}") from exc
                    return sink
        except trio.TooSlowError:
            raise EaselError(ErrorCode.PROVIDER_TIMEOUT,
                             f"output download took longer than {timeout:g} s") from None
        except TooLarge as exc:
            raise _too_large(exc.limit) from None
        except TargetRefused as exc:
            raise EaselError(ErrorCode.PROVIDER_ERROR, f"output URL refused: {exc}",
                             retryable=False) from None
        except FetchFailed as exc:
            cause = local_cause(exc)
            if cause is not None:
                raise LocalProblem(f"output download failed here: {cause}") from exc
            raise EaselError(ErrorCode.PROVIDER_UNAVAILABLE,
                             f"output download failed: {exc}") from exc
