"""actors/finalizer.py: downloads retried per DOWNLOAD_RETRY (honouring
Retry-After), capped in size per kind, typed by their bytes, checksummed, through
the address-checked fetch; and local problems (no file descriptor left, a file too
large for the process's limit, a storage failure) leave the job FINALIZING until
they pass, never failing it.

The output URL is a real HTTP server on loopback; local failures are real ones
(``RLIMIT_NOFILE``, ``RLIMIT_FSIZE``, a file where the media directory should be).
Timers run on MockClock (which jumps only after some real idleness, as the
store's worker threads are real).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import resource
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from quart_trio import QuartTrio
from trio.testing import MockClock

from actors.catalog import ModelSpec
from actors.finalizer import DOWNLOAD_RETRY, DOWNLOAD_RETRY_AFTER_CAP, Finalizer, MediaSettings
from actors.jobs import Job, JobState, new_job_id
from actors.lifecycle import Lifecycle
from actors.monitor import Monitor
from actors.providers.base import ProviderSettings
from actors.storage import LocalStorage, MeteredStorage, Storage
from actors.store import Store, open_store
from tests.simulators.base import png_bytes, serve_simulator

#: An MP4's first box: what makes bytes a video to the sniffer.
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.1)


@attrs.define
class Output:
    """Serves ``body`` (with ``content_type``) at ``url`` after answering
    ``refusals`` first."""

    refusals: list[tuple[int, dict[str, str]]]
    body: bytes = attrs.field(factory=lambda: png_bytes("out"))
    content_type: str = "image/png"
    url: str = ""
    times: list[float] = attrs.field(factory=list)


async def serve_output(nursery: trio.Nursery, output: Output) -> None:
    app = QuartTrio("output")

    @app.get("/out")
    async def out() -> tuple[bytes, int, dict[str, str]]:
        output.times.append(trio.current_time())
        if output.refusals:
            status, headers = output.refusals.pop(0)
            return b"busy", status, headers
        return output.body, 200, {"content-type": output.content_type}

    output.url = await nursery.start(serve_simulator, app) + "/out"


@pytest.fixture
def serve(nursery: trio.Nursery) -> Callable[..., Awaitable[Output]]:
    """``await serve(refusals, **fields)``: an ``Output`` served on loopback."""

    async def start(refusals: Sequence[tuple[int, dict[str, str]]] = (),
                    **fields: Any) -> Output:
        output = Output(list(refusals), **fields)
        await serve_output(nursery, output)
        return output

    return start


def make_finalizer(store: Store, tmp_path: Path, storage: Storage | None = None,
                   **settings: Any) -> Finalizer:
    monitor = Monitor()
    providers = settings.pop("providers", None)
    catalog = settings.pop("catalog", None)
    values = {"allow_private_downloads": True, **settings}
    return Finalizer(
        store, storage or MeteredStorage(LocalStorage(tmp_path / "media"), monitor),
        Lifecycle(), monitor, changes=store.subscribe(), staging=tmp_path / "staging",
        settings=MediaSettings(**values), providers=providers, catalog=catalog,
    )


async def finalizing_job(store: Store, url: str) -> Job:
    job = Job(id=new_job_id(), model="sandbox-image", provider="sandbox",
              provider_model="sandbox-image", prompt="a lighthouse")
    await store.insert_job(job)
    moved = await store.transition(job.id, JobState.QUEUED, JobState.FINALIZING,
                                   provider_outputs=[url])
    assert moved is not None
    return moved


async def until_settled(store: Store, job_id: str) -> Job:
    with trio.fail_after(3600):
        while True:
            current = await store.get_job(job_id)
            assert current is not None
            if current.state is not JobState.FINALIZING:
                return current
            await trio.sleep(1)


async def finalized(store: Store, tmp_path: Path, url: str, max_bytes: int = 1 << 20,
                    **settings: Any) -> Job:
    job = await finalizing_job(store, url)
    finalizer = make_finalizer(store, tmp_path, max_image_bytes=max_bytes, **settings)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(finalizer.run)  # it takes up every job left in FINALIZING
        current = await until_settled(store, job.id)
        nursery.cancel_scope.cancel()
    await finalizer.aclose()
    return current


async def test_a_download_waits_as_long_as_retry_after_asks(
    tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock
) -> None:
    output = await serve([(503, {"retry-after": "45"}), (429, {"retry-after": "7200"}), (429, {})])
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalized(store, tmp_path, output.url)
    assert job.state is JobState.SUCCEEDED
    first, second, third, fourth = output.times
    assert 45 <= second - first <= 46  # not the schedule's second or so
    # Two hours would outlive the provider's URL: cut to the cap.
    assert DOWNLOAD_RETRY_AFTER_CAP <= third - second <= DOWNLOAD_RETRY_AFTER_CAP + 1
    assert DOWNLOAD_RETRY.ceiling(3) * (1 - DOWNLOAD_RETRY.jitter) <= fourth - third <= 5


async def test_an_output_over_the_cap_fails_without_retrying(
    tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock
) -> None:
    output = await serve()
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalized(store, tmp_path, output.url, max_bytes=10)
    assert job.state is JobState.FAILED
    assert job.error is not None and "larger than 10 bytes" in job.error.message
    assert len(output.times) == 1


async def test_caps_are_per_kind(tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock) -> None:
    video = await serve(body=MP4_HEAD + os.urandom(5000), content_type="video/mp4")
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalized(store, tmp_path, video.url, max_bytes=1000, max_video_bytes=6000)
        assert job.state is JobState.SUCCEEDED, job.error
        [result] = job.results
        assert (result["type"], result["contentType"], result["size"]) == ("video", "video/mp4", 5024)
        too_long = await finalized(store, tmp_path, video.url, max_video_bytes=5000)
    assert too_long.state is JobState.FAILED
    assert too_long.error is not None and "larger than 5000 bytes" in too_long.error.message


async def test_the_type_comes_from_the_bytes_and_the_checksum_is_kept(
    tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock
) -> None:
    body = png_bytes("mislabelled")
    output = await serve(body=body, content_type="application/octet-stream")
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalized(store, tmp_path, output.url)
    assert job.state is JobState.SUCCEEDED, job.error
    [result] = job.results
    assert result == {"type": "image", "contentType": "image/png", "storage": "local",
                      "key": f"{job.id}/0.png", "sha256": hashlib.sha256(body).hexdigest(),
                      "size": len(body)}
    assert (tmp_path / "media" / job.id / "0.png").read_bytes() == body
    assert not (tmp_path / "staging" / job.id).exists()  # the download is cleaned up


async def test_neither_image_nor_video_is_the_providers_error(
    tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock
) -> None:
    output = await serve(body=b"<html>Access denied</html>" * 10, content_type="image/png")
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalized(store, tmp_path, output.url)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.code.value == "PROVIDER_ERROR"
    assert "neither an image nor a video" in job.error.message
    assert job.error.details == {"declaredContentType": "image/png"}
    assert len(output.times) == 1  # not retried: the same bytes would come again


async def test_a_private_address_is_refused_unless_it_is_the_providers_own(
    tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock
) -> None:
    output = await serve()
    async with open_store(tmp_path / "db.sqlite") as store:
        refused = await finalized(store, tmp_path, output.url, allow_private_downloads=False)
        assert refused.state is JobState.FAILED and refused.error is not None
        assert "refused" in refused.error.message
        assert output.times == []  # nothing was sent there
        base = output.url.removesuffix("/out")
        own = await finalized(store, tmp_path, output.url, allow_private_downloads=False,
                              providers={"sandbox": ProviderSettings(base_url=base)})
    assert own.state is JobState.SUCCEEDED, own.error


async def test_upload_outputs_false_keeps_the_providers_url(
    tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock
) -> None:
    output = await serve()
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalized(store, tmp_path, output.url,
                              providers={"sandbox": ProviderSettings(upload_outputs=False)})
    assert job.state is JobState.SUCCEEDED
    assert job.results == [{"type": "image", "url": output.url}]
    assert output.times == []


async def test_a_models_upload_outputs_overrides_its_providers(
    tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock
) -> None:
    output = await serve()

    def catalog(upload: bool) -> dict[str, ModelSpec]:
        return {"sandbox-image": ModelSpec(provider="sandbox", provider_model="sandbox-image",
                                           upload_outputs=upload)}

    async with open_store(tmp_path / "db.sqlite") as store:
        kept = await finalized(store, tmp_path, output.url, catalog=catalog(False))
        stored = await finalized(store, tmp_path, output.url, catalog=catalog(True),
                                 providers={"sandbox": ProviderSettings(upload_outputs=False)})
    assert kept.results == [{"type": "image", "url": output.url}]
    assert stored.results[0]["key"] == f"{stored.id}/0.png"
    assert len(output.times) == 1


@contextmanager
def limited(limit: int, value: int) -> Iterator[None]:
    """The process's ``limit`` (a ``resource.RLIMIT_*``) lowered to ``value``."""
    soft, hard = resource.getrlimit(limit)
    resource.setrlimit(limit, (value, hard))
    try:
        yield
    finally:
        resource.setrlimit(limit, (soft, hard))


@contextmanager
def no_file_descriptors_left() -> Iterator[None]:
    """Every file descriptor this process may open held, as by 1,000 idle
    connections: opening one more fails with EMFILE."""
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    held: list[int] = []
    with limited(resource.RLIMIT_NOFILE, highest + 32):
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        try:
            yield
        finally:
            for fd in held:
                os.close(fd)


async def a_local_problem_passes(
    tmp_path: Path, problem: Callable[[], Any], storage: Storage | None = None
) -> tuple[Job, list[dict[str, Any]]]:
    """A job finalized while ``problem()`` lasts, then after it passed: the job as
    it ended, and its events."""
    data = png_bytes("local") * 40  # bytes past any small file size limit
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalizing_job(store, uri)
        finalizer = make_finalizer(store, tmp_path, storage)
        async with trio.open_nursery() as nursery:
            with problem():
                nursery.start_soon(finalizer.run)
                with trio.fail_after(600):
                    while finalizer.statistics()["retrying"] == 0:
                        await trio.sleep(0.01)
                during = await store.get_job(job.id)
                assert during is not None and during.state is JobState.FINALIZING
            ended = await until_settled(store, job.id)
            nursery.cancel_scope.cancel()
        await finalizer.aclose()
        return ended, await store.events(job.id)


async def test_emfile_while_finalizing_leaves_the_job_finalizing_until_it_passes(
    tmp_path: Path, clock: MockClock
) -> None:
    job, events = await a_local_problem_passes(tmp_path, no_file_descriptors_left)
    assert job.state is JobState.SUCCEEDED, job.error
    assert job.stage_reason is None
    [retry, *_] = [e for e in events if e["kind"] == "finalize_retry"]
    assert "Too many open files" in retry["error"]["message"]
    assert retry["error"]["code"] == "STORAGE_ERROR"


async def test_a_file_size_limit_and_a_failing_store_leave_the_job_finalizing(
    tmp_path: Path, clock: MockClock
) -> None:
    """``RLIMIT_FSIZE`` fails every write past 4 KiB with EFBIG, as a full disk
    fails them with ENOSPC: the download's file and the store's own writes."""
    job, _ = await a_local_problem_passes(
        tmp_path, lambda: limited(resource.RLIMIT_FSIZE, 4096))
    assert job.state is JobState.SUCCEEDED, job.error


async def test_a_download_kept_from_an_earlier_attempt_is_not_fetched_again(
    tmp_path: Path, serve: Callable[..., Awaitable[Output]], clock: MockClock
) -> None:
    """Storage fails after the download; meanwhile the provider's URL expires."""
    output = await serve()
    media = tmp_path / "media"
    media.write_bytes(b"a file where the media directory should be")

    @contextmanager
    def storage_down() -> Iterator[None]:
        yield
        output.refusals.extend([(404, {})] * 10)  # expired by the time storage is back
        media.unlink()

    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalizing_job(store, output.url)
        finalizer = make_finalizer(store, tmp_path)
        async with trio.open_nursery() as inner:
            with storage_down():
                inner.start_soon(finalizer.run)
                while finalizer.statistics()["retrying"] == 0:
                    await trio.sleep(0.01)
            ended = await until_settled(store, job.id)
            inner.cancel_scope.cancel()
        await finalizer.aclose()
    assert ended.state is JobState.SUCCEEDED, ended.error
    assert len(output.times) == 1
    assert (media / job.id / "0.png").read_bytes() == output.body
