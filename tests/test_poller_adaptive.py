"""Adaptive polling in the running poller: it learns from finished tasks, stores
what it learned, and plans the next tasks' checks from it (MockClock, sandbox video).
"""

from __future__ import annotations

from pathlib import Path

import trio

from actors.catalog import ModelSpec, PollingSpec, PollingStrategy
from actors.jobs import JobState
from actors.store import open_store
from tests.test_runtime_clock import clock, new_job, run_runtime, wait_terminal

__all__ = ["clock"]  # the MockClock fixture, imported for pytest-trio

ADAPTIVE = ModelSpec(
    provider="sandbox",
    provider_model="sandbox-video",
    max_duration=3600,
    resubmit_on_uncertain=True,
    polling=PollingSpec(strategy=PollingStrategy.ADAPTIVE, initial=5, factor=1.5,
                        max_interval=300),
)


async def test_adaptive_learns_then_checks_fewer_times(tmp_path: Path, clock) -> None:
    db = tmp_path / "db.sqlite"
    async with open_store(db) as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, ADAPTIVE, 600, nursery, store)
        poller = runtime.pollers["sandbox"]
        # Too few completions yet: the model's exponential spec decides.
        first = [(await runtime.submit(new_job(f"training {i}")))[0] for i in range(20)]
        trained = [await wait_terminal(runtime, job.id) for job in first]
        assert all(job.state is JobState.SUCCEEDED for job in trained)
        fallback_checks = max(job.poll_count for job in trained)
        assert poller.history.count("video") == 20

        job, _ = await runtime.submit(new_job("planned"))
        planned = await wait_terminal(runtime, job.id)
        assert planned.state is JobState.SUCCEEDED
        # Every task takes 600 s: the plan checks near 600 s, not all the way up.
        assert planned.poll_count <= 3 < fallback_checks
        assert planned.completed_at is not None and planned.started_at is not None
        assert planned.completed_at - planned.started_at <= 600 + 60
        nursery.cancel_scope.cancel()

    async with open_store(db) as store:
        durations = await store.recent_durations(["video"], 1000)
        assert len(durations["video"]) == 21
        # Polled, so each end lies between the last running check and its detection.
        assert all(seen is not None and seen < seconds for seconds, seen in durations["video"])
        assert all(600 <= seconds <= 900 for seconds, _ in durations["video"])

    # A restart reloads what was learned from SQLite.
    async with open_store(db) as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, ADAPTIVE, 600, nursery, store)
        history = runtime.pollers["sandbox"].history
        with trio.move_on_after(10):  # the poller loads it as it starts
            while history.count("video") < 21:
                await trio.sleep(0.1)
                history = runtime.pollers["sandbox"].history
        assert history.count("video") == 21
        nursery.cancel_scope.cancel()


async def test_fixed_models_record_nothing(tmp_path: Path, clock) -> None:
    fixed = ModelSpec(provider="sandbox", provider_model="sandbox-video", max_duration=3600,
                      polling=PollingSpec(strategy=PollingStrategy.FIXED, interval=30))
    async with open_store(tmp_path / "db.sqlite") as store, trio.open_nursery() as nursery:
        runtime = await run_runtime(tmp_path, fixed, 60, nursery, store)
        job, _ = await runtime.submit(new_job())
        assert (await wait_terminal(runtime, job.id)).state is JobState.SUCCEEDED
        assert await store.recent_durations(["video"], 10) == {"video": []}
        nursery.cancel_scope.cancel()
