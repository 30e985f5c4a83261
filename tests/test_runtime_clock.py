"""The runtime's timers under trio's MockClock: polling, timeouts, recovery.

No HTTP here: jobs go straight into ``Runtime.submit`` and the clock jumps, so a
task that runs for ten minutes is checked in milliseconds of real time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from actors.catalog import ModelSpec, PollingSpec, PollingStrategy
from actors.clock import wall_now
from actors.jobs import Job, JobState, new_job_id
from actors.providers.sandbox import SandboxSettings
from actors.runtime import Runtime
from actors.store import open_store


def video_model(max_duration: float, interval: float = 10.0) -> ModelSpec:
    return ModelSpec(
        provider="sandbox",
        provider_model="sandbox-video",
        max_duration=max_duration,
        resubmit_on_uncertain=True,
        polling=PollingSpec(strategy=PollingStrategy.FIXED, interval=interval),
    )


def new_job(prompt: str = "a slow zoom") -> Job:
    return Job(id=new_job_id(), model="video", provider="sandbox",
               provider_model="sandbox-video", prompt=prompt)


@pytest.fixture
def clock() -> MockClock:
    """Jumps only after 100 ms of real idleness: the store's worker threads are real,
    and a jump while one is busy would cancel work the test means to finish."""
    return MockClock(autojump_threshold=0.1)


async def wait_state(runtime: Runtime, job_id: str, done: Callable[[JobState], bool]) -> Job:
    while True:
        changed = runtime.store.watch(job_id)
        job = await runtime.store.get_job(job_id)
        assert job is not None
        if done(job.state):
            return job
        await changed.wait()


async def wait_terminal(runtime: Runtime, job_id: str) -> Job:
    return await wait_state(runtime, job_id, lambda state: state.terminal)


def run_seconds(job: Job) -> float:
    """From the provider taking the job to its end, as the job's own stamps say.

    Not the clock as the test sees it: the store's worker threads are real, and on
    a loaded machine one can stay busy past the autojump threshold while the job
    is being submitted, so the clock jumps to the next timer before the task even
    starts; every deadline counts from ``started_at``, and so does this."""
    assert job.started_at is not None and job.completed_at is not None
    return job.completed_at - job.started_at


async def run_runtime(tmp_path: Path, model: ModelSpec, video_duration: float,
                      nursery: trio.Nursery, store) -> Runtime:
    runtime = Runtime(
        store,
        providers={"sandbox": SandboxSettings(video_duration=video_duration, rate=100, burst=100)},
        catalog={"video": model},
        media_dir=tmp_path / "media",
    )
    await nursery.start(runtime.run)
    return runtime


async def test_long_task_is_polled_on_schedule(tmp_path: Path, clock) -> None:
    async with open_store(tmp_path / "db.sqlite") as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, video_model(3600, interval=30), 600, nursery, store)
        job, _ = await runtime.submit(new_job())
        done = await wait_terminal(runtime, job.id)
        assert done.state is JobState.SUCCEEDED
        # Until the poll that saw it done (the job then went on to be finalized).
        seen_done = next(event["at"] for event in await runtime.store.events(job.id)
                         if event["kind"] == "state" and event["state"] == "FINALIZING")
        assert done.started_at is not None
        elapsed = seen_done - done.started_at
        # Finished within one polling interval of the task's 600 s, checked every 30 s.
        assert 600 <= elapsed <= 600 + 30 + 1
        assert 600 / 30 - 1 <= done.poll_count <= 600 / 30 + 1
        assert (tmp_path / "media" / job.id / "0.mp4").exists()  # the sandbox video
        nursery.cancel_scope.cancel()


async def test_task_longer_than_max_duration_times_out(tmp_path: Path, clock) -> None:
    async with open_store(tmp_path / "db.sqlite") as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, video_model(120, interval=50), 10_000, nursery, store)
        job, _ = await runtime.submit(new_job())
        done = await wait_terminal(runtime, job.id)
        assert done.state is JobState.FAILED
        assert done.error is not None and done.error.code.value == "TASK_TIMEOUT"
        # At the deadline, not at the next poll after it.
        assert 120 <= run_seconds(done) <= 121
        await trio.testing.wait_all_tasks_blocked()
        assert runtime.statistics()["providers"]["sandbox"]["slotsHeld"] == 0
        nursery.cancel_scope.cancel()


async def test_running_job_resumes_at_its_stored_poll_time(tmp_path: Path, clock) -> None:
    """A restart (a new runtime on the same database) picks the task up where it was."""
    db = tmp_path / "db.sqlite"
    async with open_store(db) as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, video_model(3600, interval=60), 300, nursery, store)
        job, _ = await runtime.submit(new_job())
        await wait_state(runtime, job.id, lambda state: state is JobState.RUNNING)
        await trio.sleep(100)  # a few polls
        nursery.cancel_scope.cancel()
    async with open_store(db) as store:
        stored = await store.get_job(job.id)
        assert stored is not None and stored.state is JobState.RUNNING
        assert stored.next_poll_at is not None and stored.next_poll_at > wall_now()
    async with open_store(db) as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, video_model(3600, interval=60), 300, nursery, store)
        assert runtime.pollers["sandbox"].statistics()["tracked"] in (0, 1)
        done = await wait_terminal(runtime, job.id)
        assert done.state is JobState.SUCCEEDED
        assert done.attempts == 1  # never submitted again
        nursery.cancel_scope.cancel()


async def test_queued_jobs_survive_a_restart(tmp_path: Path, clock) -> None:
    db = tmp_path / "db.sqlite"
    async with open_store(db) as store:
        ids = [(await store.insert_job(new_job(f"queued {i}")))[0].id for i in range(5)]
    async with open_store(db) as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, video_model(3600, interval=5), 20, nursery, store)
        for job_id in ids:
            assert (await wait_terminal(runtime, job_id)).state is JobState.SUCCEEDED
        nursery.cancel_scope.cancel()


async def test_submitting_job_is_reconciled_not_lost(tmp_path: Path, clock) -> None:
    """A job left in SUBMITTING by a crash: the sandbox model is safe to resubmit."""
    db = tmp_path / "db.sqlite"
    async with open_store(db) as store:
        job, _ = await store.insert_job(new_job())
        await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING,
                               submitting_at=wall_now(), attempts=1)
    async with open_store(db) as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, video_model(3600, interval=5), 20, nursery, store)
        done = await wait_terminal(runtime, job.id)
        assert done.state is JobState.SUCCEEDED
        kinds = [e["kind"] for e in await store.events(job.id)]
        assert "resubmitted" in kinds
        nursery.cancel_scope.cancel()


async def test_uncertain_submission_fails_clearly_when_not_safe(tmp_path: Path, clock) -> None:
    db = tmp_path / "db.sqlite"
    model = ModelSpec(provider="sandbox", provider_model="sandbox-video", max_duration=3600)
    async with open_store(db) as store:
        job, _ = await store.insert_job(new_job())
        await store.transition(job.id, JobState.QUEUED, JobState.SUBMITTING,
                               submitting_at=wall_now(), attempts=1)
    async with open_store(db) as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, model, 20, nursery, store)
        done = await wait_terminal(runtime, job.id)
        assert done.state is JobState.FAILED
        assert done.error is not None and done.error.code.value == "UNCERTAIN_SUBMISSION"
        assert done.attempts == 1
        nursery.cancel_scope.cancel()
