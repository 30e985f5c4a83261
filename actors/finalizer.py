"""The media finalizer actor: fetches a job's outputs and stores them.

It takes no messages: it follows the store's change feed, so every job that enters
FINALIZING reaches it once committed, whoever moved it and whatever became of that
actor after the commit. On start it also takes every job left in FINALIZING (after
a crash or a restart), since the provider's output URLs are stored on the job. Downloads are streamed and capped in
size, their content type is checked, and ``data:`` URIs (synchronous providers) are
decoded in place. A download that fails in a way that may pass (a connection
error, a 5xx, a 429) is retried per ``DOWNLOAD_RETRY``, never sooner than the
answer's ``Retry-After``. Provider URLs expire (BFL's after 10 minutes), so
finalizing is never queued behind polling.
"""

from __future__ import annotations

import base64
import binascii
import logging

import httpx
import trio

from actors import context
from actors.errors import EaselError, ErrorCode, ErrorInfo
from actors.fetch import FetchFailed, TooLarge, read_capped
from actors.jobs import Job, JobState
from actors.lifecycle import Lifecycle
from actors.monitor import Monitor
from actors.retry import RetryPolicy, parse_retry_after
from actors.storage import LocalStorage, extension_for
from actors.store import Store

log = logging.getLogger(__name__)

#: Attempts at downloading one output, and the waits between them (about 1, 2, 4 s).
DOWNLOAD_RETRY = RetryPolicy(max_attempts=4, base=1.0, cap=8.0, jitter=0.5)
#: The longest wait a download takes from a ``Retry-After`` (seconds).
DOWNLOAD_RETRY_AFTER_CAP = 60.0


def decode_data_uri(uri: str) -> tuple[bytes, str]:
    header, _, payload = uri.partition(",")
    if not header.startswith("data:") or ";base64" not in header:
        raise EaselError(ErrorCode.PROVIDER_ERROR, "output is not a base64 data URI")
    content_type = header[5:].split(";")[0] or "application/octet-stream"
    try:
        return base64.b64decode(payload, validate=True), content_type
    except (binascii.Error, ValueError) as exc:
        raise EaselError(ErrorCode.PROVIDER_ERROR, "output data URI is not valid base64") from exc


class Finalizer:
    def __init__(
        self,
        store: Store,
        storage: LocalStorage,
        lifecycle: Lifecycle,
        monitor: Monitor,
        *,
        changes: trio.MemoryReceiveChannel[Job],
        max_bytes: int,
        concurrency: int = 8,
    ) -> None:
        self.store = store
        self.storage = storage
        self.lifecycle = lifecycle
        self.monitor = monitor
        self.max_bytes = max_bytes
        self._changes = changes
        #: Jobs being finalized now: the feed and a reload may both name one.
        self._active: set[str] = set()
        self._limiter = trio.CapacityLimiter(concurrency)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._active.clear()
        await self.store.barrier()  # what a previous run sent is committed
        async with trio.open_nursery() as nursery:
            for job in await self.store.jobs_in([JobState.FINALIZING]):
                self._start(nursery, job)
            task_status.started()
            async for job in self._changes:
                if job.state is JobState.FINALIZING:
                    self._start(nursery, job)

    def _start(self, nursery: trio.Nursery, job: Job) -> None:
        if job.id not in self._active:
            self._active.add(job.id)
            nursery.start_soon(self._finalize_once, job)

    async def _finalize_once(self, job: Job) -> None:
        try:
            # The feed may carry a change that a reload already took care of.
            current = await self.store.get_job(job.id)
            if current is not None and current.state is JobState.FINALIZING:
                await self._finalize(current)
        finally:
            self._active.discard(job.id)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _too_large(self) -> EaselError:
        return EaselError(ErrorCode.PROVIDER_ERROR, f"output is larger than {self.max_bytes} bytes",
                          retryable=False)

    async def _download(self, url: str) -> tuple[bytes, str]:
        if url.startswith("data:"):
            data, content_type = decode_data_uri(url)
            if len(data) > self.max_bytes:
                raise self._too_large()
            return data, content_type
        try:
            async with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise EaselError(
                        ErrorCode.PROVIDER_ERROR,
                        f"output download answered HTTP {response.status_code}",
                        {"status": response.status_code},
                        retryable=response.status_code >= 500 or response.status_code == 429,
                        retry_after=parse_retry_after(response.headers.get("retry-after")),
                    )
                content_type = response.headers.get("content-type", "")
                if extension_for(content_type) is None:
                    raise EaselError(
                        ErrorCode.PROVIDER_ERROR,
                        f"output has unexpected content type {content_type!r}",
                        retryable=False,
                    )
                return await read_capped(response, self.max_bytes), content_type
        except TooLarge:
            raise self._too_large() from None
        except (httpx.HTTPError, FetchFailed) as exc:
            raise EaselError(
                ErrorCode.PROVIDER_UNAVAILABLE, f"output download failed: {type(exc).__name__}"
            ) from exc

    async def _store_outputs(self, job: Job) -> list[dict[str, str]]:
        results = []
        for index, url in enumerate(job.provider_outputs):
            for attempt in range(1, DOWNLOAD_RETRY.max_attempts + 1):
                try:
                    data, content_type = await self._download(url)
                    break
                except EaselError as exc:
                    if not exc.info.is_retryable or attempt == DOWNLOAD_RETRY.max_attempts:
                        raise
                    # Provider URLs expire within minutes: a longer Retry-After is
                    # cut to DOWNLOAD_RETRY_AFTER_CAP rather than waited out.
                    retry_after = min(exc.retry_after or 0.0, DOWNLOAD_RETRY_AFTER_CAP)
                    await trio.sleep(DOWNLOAD_RETRY.delay(attempt, retry_after))
            path = await self.storage.save(job.id, index, data, content_type)
            kind = "video" if content_type.startswith("video/") else "image"
            results.append({"type": kind, "url": path, "contentType": content_type})
        return results

    async def _finalize(self, job: Job) -> None:
        context.job_id.set(job.id)
        context.provider.set(job.provider)
        async with self._limiter:
            with self.lifecycle.busy():
                try:
                    if not job.provider_outputs:
                        raise EaselError(ErrorCode.TASK_FAILED, "provider returned no outputs")
                    results = await self._store_outputs(job)
                except EaselError as exc:
                    error = exc.info
                except Exception as exc:
                    log.exception("finalizing failed")
                    error = ErrorInfo(ErrorCode.INTERNAL_ERROR, f"finalizing failed: {exc!r}")
                else:
                    done = await self.store.transition(
                        job.id,
                        JobState.FINALIZING,
                        JobState.SUCCEEDED,
                        results=results,
                        provider_outputs=[],
                        progress=1.0,
                    )
                    if done is not None:
                        log.info("job succeeded", extra={"outputs": len(results)})
                        self.monitor.emit("job.succeeded", job.provider, model=job.model)
                    return
                failed = await self.store.transition(
                    job.id, JobState.FINALIZING, JobState.FAILED, error=error
                )
                if failed is not None:
                    log.warning("job failed while finalizing: %s", error.message)
                    self.monitor.emit("job.failed", job.provider, code=error.code.value)
