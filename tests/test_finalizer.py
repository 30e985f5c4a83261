"""actors/finalizer.py: downloads are retried per DOWNLOAD_RETRY, honouring the
answer's Retry-After, and capped in size.

The output URL is a real HTTP server on loopback; timers run on MockClock (which
jumps only after some real idleness, as the store's worker threads are real).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
from quart_trio import QuartTrio
from trio.testing import MockClock

from actors.finalizer import DOWNLOAD_RETRY, DOWNLOAD_RETRY_AFTER_CAP, Finalizer, MediaSettings
from actors.jobs import Job, JobState, new_job_id
from actors.lifecycle import Lifecycle
from actors.monitor import Monitor
from actors.storage import LocalStorage, MeteredStorage
from actors.store import Store, open_store
from tests.simulators.base import png_bytes, serve_simulator


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0.1)


@attrs.define
class Output:
    """Serves one PNG at ``url`` after answering ``refusals`` first."""

    refusals: list[tuple[int, dict[str, str]]]
    url: str = ""
    times: list[float] = attrs.field(factory=list)


async def serve_output(nursery: trio.Nursery, output: Output) -> None:
    app = QuartTrio("output")

    @app.get("/out.png")
    async def out() -> tuple[bytes, int, dict[str, str]]:
        output.times.append(trio.current_time())
        if output.refusals:
            status, headers = output.refusals.pop(0)
            return b"busy", status, headers
        return png_bytes("out"), 200, {"content-type": "image/png"}

    output.url = await nursery.start(serve_simulator, app) + "/out.png"


async def finalized(store: Store, tmp_path: Path, url: str, max_bytes: int = 1 << 20) -> Job:
    job = Job(id=new_job_id(), model="sandbox-image", provider="sandbox",
              provider_model="sandbox-image", prompt="a lighthouse")
    await store.insert_job(job)
    moved = await store.transition(job.id, JobState.QUEUED, JobState.FINALIZING,
                                   provider_outputs=[url])
    assert moved is not None
    monitor = Monitor()
    finalizer = Finalizer(
        store, MeteredStorage(LocalStorage(tmp_path / "media"), monitor), Lifecycle(), monitor,
        changes=store.subscribe(), staging=tmp_path / "staging",
        settings=MediaSettings(max_image_bytes=max_bytes, allow_private_downloads=True),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(finalizer.run)  # it takes up every job left in FINALIZING
        with trio.fail_after(3600):
            while True:
                current = await store.get_job(job.id)
                assert current is not None
                if current.state is not JobState.FINALIZING:
                    break
                await trio.sleep(1)
        nursery.cancel_scope.cancel()
    await finalizer.aclose()
    return current


async def test_a_download_waits_as_long_as_retry_after_asks(
    tmp_path: Path, nursery: trio.Nursery, clock: MockClock
) -> None:
    output = Output([(503, {"retry-after": "45"}), (429, {"retry-after": "7200"}), (429, {})])
    await serve_output(nursery, output)
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalized(store, tmp_path, output.url)
    assert job.state is JobState.SUCCEEDED
    first, second, third, fourth = output.times
    assert 45 <= second - first <= 46  # not the schedule's second or so
    # Two hours would outlive the provider's URL: cut to the cap.
    assert DOWNLOAD_RETRY_AFTER_CAP <= third - second <= DOWNLOAD_RETRY_AFTER_CAP + 1
    assert DOWNLOAD_RETRY.ceiling(3) * (1 - DOWNLOAD_RETRY.jitter) <= fourth - third <= 5


async def test_an_output_over_the_cap_fails_without_retrying(
    tmp_path: Path, nursery: trio.Nursery, clock: MockClock
) -> None:
    output = Output([])
    await serve_output(nursery, output)
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalized(store, tmp_path, output.url, max_bytes=10)
    assert job.state is JobState.FAILED
    assert job.error is not None and "larger than 10 bytes" in job.error.message
    assert len(output.times) == 1
