"""The media finalizer actor: fetches a job's outputs and stores them.

Mailbox (``actors/messages.py``): ``Finalize(job)`` for a job that has just entered
FINALIZING. On start it also takes every job left in FINALIZING (after a crash or a restart), since the
provider's output URLs are stored on the job. Downloads are streamed and capped in
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
from actors.messages import Finalize
from actors.monitor import Monitor
from actors.retry import RetryPolicy, parse_retry_after
from actors.storage import LocalStorage, extension_for
from actors.store import Store

log = logging.getLogger(__name__)

#: Attempts at downloading one output, and the waits between them (about 1, 2, 4 s).
DOWNLOAD_RETRY = RetryPolicy(max_attempts=4, base=1.0, cap=8.0, jitter=0.5)


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
        mailbox: trio.MemoryReceiveChannel[Finalize],
        max_bytes: int,
        concurrency: int = 8,
    ) -> None:
        self.store = store
        self.storage = storage
        self.lifecycle = lifecycle
        self.monitor = monitor
        self.max_bytes = max_bytes
        self._mailbox = mailbox
        self._limiter = trio.CapacityLimiter(concurrency)
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for job in await self.store.jobs_in([JobState.FINALIZING]):
                nursery.start_soon(self._finalize, job)
            task_status.started()
            async for message in self._mailbox:
                nursery.start_soon(self._finalize, message.job)

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
                    await trio.sleep(DOWNLOAD_RETRY.delay(attempt, exc.retry_after))
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
