"""The runtime's supervision tree: who restarts with whom, and when it is ready.

A real store and the sandbox provider, on the real clock (nothing here waits on a
timer of its own). A crash is caused the way a bug would cause one: a message an
actor cannot handle, sent to its mailbox.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from actors.catalog import ModelSpec, PollingSpec, PollingStrategy
from actors.jobs import Job, JobState, new_job_id
from actors.messages import Enqueue, Submit
from actors.providers.sandbox import SandboxSettings
from actors.runtime import Runtime
from actors.store import Store, open_store

CATALOG = {
    "image": ModelSpec(provider="sandbox", provider_model="sandbox-image"),
    "video": ModelSpec(provider="sandbox", provider_model="sandbox-video", max_duration=3600,
                       resubmit_on_uncertain=True,
                       polling=PollingSpec(strategy=PollingStrategy.FIXED, interval=3600)),
}


def make_runtime(store: Store, tmp_path: Path) -> Runtime:
    return Runtime(
        store,
        providers={"sandbox": SandboxSettings(delay=0, video_duration=3600, rate=100, burst=100)},
        catalog=CATALOG,
        media_dir=tmp_path / "media",
    )


def image_job(prompt: str = "a red fox") -> Job:
    return Job(id=new_job_id(), model="image", provider="sandbox",
               provider_model="sandbox-image", prompt=prompt)


async def finished(runtime: Runtime, job_id: str) -> Job:
    with trio.fail_after(60):
        while True:
            changed = runtime.store.watch(job_id)
            job = await runtime.store.get_job(job_id)
            assert job is not None
            if job.state.terminal:
                return job
            await changed.wait()


async def restarts_reach(runtime: Runtime, wanted: dict[str, int]) -> dict[str, Any]:
    with trio.fail_after(60):
        while True:
            restarts = runtime.statistics()["restarts"]
            if all(restarts.get(path, 0) >= n for path, n in wanted.items()):
                return restarts
            await trio.sleep(0.01)


async def test_started_means_every_actor_has_reloaded(tmp_path: Path) -> None:
    """The root reports started (READY=1, then the API) only after recovery: here,
    every RUNNING task is back on its poller's heap at that moment."""
    async with open_store(tmp_path / "db.sqlite") as store:
        for i in range(20):
            job = Job(id=new_job_id(), model="video", provider="sandbox",
                      provider_model="sandbox-video", prompt=f"running {i}")
            await store.insert_job(job)
            await store.transition(job.id, JobState.QUEUED, JobState.RUNNING,
                                   provider_task_id=f"sbv:{job.id}:{trio.current_time()}:3600",
                                   next_poll_at=4e9)
        runtime = make_runtime(store, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            assert runtime.statistics()["providers"]["sandbox"]["polling"] == 20
            assert runtime.not_running() == []  # what /api/health reports as "actors"
            nursery.cancel_scope.cancel()


async def test_a_crashed_provider_restarts_with_its_poller_and_work_goes_on(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path / "db.sqlite") as store, trio.open_nursery() as nursery:
        runtime = make_runtime(store, tmp_path)
        await nursery.start(runtime.run)
        # A Submit without a job: the provider's handler raises, the actor crashes.
        await runtime._channels["sandbox"].provider.send(Submit(None))  # type: ignore[arg-type]
        restarts = await restarts_reach(runtime, {
            "providers/provider:sandbox/provider": 1,
            "providers/provider:sandbox/poller": 1,
        })
        with trio.fail_after(60):
            while runtime.not_running():  # backing off, then reloading
                await trio.sleep(0.01)
        # rest_for_one within its group only: the scheduler and the others were
        # left alone.
        assert restarts.get("scheduler", 0) == 0
        assert restarts.get("finalizer", 0) == 0
        job, _ = await runtime.submit(image_job())
        assert (await finished(runtime, job.id)).state is JobState.SUCCEEDED
        nursery.cancel_scope.cancel()


async def test_a_crashed_scheduler_restarts_alone_and_providers_announce_again(
    tmp_path: Path,
) -> None:
    """A restarted scheduler has lost every provider's credit; it asks them to
    announce themselves (``Announce``), so jobs still go out, and the providers'
    calls in flight are not cut off by a restart of theirs."""
    async with open_store(tmp_path / "db.sqlite") as store, trio.open_nursery() as nursery:
        runtime = make_runtime(store, tmp_path)
        await nursery.start(runtime.run)
        await runtime._to_scheduler.send(Enqueue(None))  # type: ignore[arg-type]
        restarts = await restarts_reach(runtime, {"scheduler": 1})
        assert not any(path.startswith("providers") and n for path, n in restarts.items())
        assert restarts.get("monitor", 0) == 0 and restarts.get("outbox", 0) == 0
        jobs = [(await runtime.submit(image_job(f"after {i}")))[0] for i in range(5)]
        for job in jobs:
            assert (await finished(runtime, job.id)).state is JobState.SUCCEEDED
        nursery.cancel_scope.cancel()


async def test_a_submitter_that_gives_up_mid_commit_still_gets_its_job_run(
    tmp_path: Path,
) -> None:
    """A client that hangs up while its row commits: the row commits anyway, so
    the job must reach the scheduler too, or it would sit QUEUED unseen."""
    async with open_store(tmp_path / "db.sqlite") as store, trio.open_nursery() as nursery:
        runtime = make_runtime(store, tmp_path)
        await nursery.start(runtime.run)
        job = image_job("hung up")
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as request:
                request.start_soon(runtime.submit, job)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()  # the handler is cancelled while the insert commits
        assert (await finished(runtime, job.id)).state is JobState.SUCCEEDED
        nursery.cancel_scope.cancel()
