"""The orphan sweep finds provider tasks made with an Easel job's input that no job
holds, reports them once and cancels them; tasks that match nothing of Easel's are
left alone. Embedded daemon, Replicate simulator on loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from actors.catalog import ModelSpec
from actors.clock import wall_now
from actors.jobs import JobState
from actors.providers import make_adapter
from actors.providers.base import JobRequest, ProviderSettings
from actors.store import open_store
from actors.sweep import OrphanSweep
from tests.simulators.base import Knobs, Phase, serve_simulator
from tests.simulators.replicate import ReplicateSimulator
from tests.store_contract import make_job
from tests.test_cancel import TOKEN, provider_toml
from tests.test_doubt import events_of
from tests.test_fallbacks import metric


async def test_a_planted_orphan_is_reported_once_and_cancelled(
    easel_daemon, nursery: trio.Nursery
) -> None:
    sim = ReplicateSimulator(Knobs(token=TOKEN, duration=0.2))
    url = await nursery.start(serve_simulator, sim)
    toml = provider_toml("replicate", url, "flux", "owner/flux").replace(
        f'api_token = "{TOKEN}"', f'api_token = "{TOKEN}"\nsweep_interval = 0.1')
    easel = await easel_daemon(toml)
    job = await easel.wait((await easel.submit({"modelIdentifier": "flux",
                                                "prompt": "made twice"})).json()["id"])
    assert job["status"] == "SUCCESS", job

    # After the job ended: a second prediction with its input (the orphan), and
    # someone else's prediction on the same account.
    sim.knobs.duration = 600
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        made = []
        for model, prompt in (("owner/flux", "made twice"), ("owner/flux", "not ours")):
            response = await http.post(f"/v1/models/{model}/predictions",
                                       json={"input": {"prompt": prompt}})
            made.append(response.json()["id"])
    orphan, foreign = (sim.tasks[task_id] for task_id in made)

    with trio.fail_after(20):
        while not [e for e in await events_of(easel, job["id"]) if e["kind"] == "orphan"]:
            await trio.sleep(0.05)
        while orphan.phase(sim.clock()) is not Phase.CANCELED:
            await trio.sleep(0.05)
    await trio.sleep(0.5)  # a few more sweeps

    [event] = [e for e in await events_of(easel, job["id"]) if e["kind"] == "orphan"]
    assert (event["provider"], event["taskId"], event["action"]) == ("replicate", orphan.id,
                                                                     "cancelled")
    assert len(event["inputHash"]) == 16
    assert foreign.phase(sim.clock()) is not Phase.CANCELED  # not Easel's: never touched
    assert sim.stats().cancels == 1
    assert await metric(easel, "easel_orphans_total", provider="replicate",
                        action="cancelled") == 1
    assert (await easel.client.get(f"/api/external/generation/{job['id']}")).json()[
        "status"] == "SUCCESS"


async def direct(what: str, fn: Callable[[], Awaitable[Any]], *, safe: bool) -> Any:
    """The provider actor's ``call`` without tokens, retries or breaker."""
    return await fn()


async def test_a_task_of_a_job_still_submitting_is_left_for_its_lookup(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    sim = ReplicateSimulator(Knobs(duration=600))
    url = await nursery.start(serve_simulator, sim)
    settings = ProviderSettings(base_url=url, api_token="r8_test")
    adapter = make_adapter("replicate", settings, "replicate")
    async with open_store(tmp_path / "db.sqlite") as store:
        job, _ = await store.insert_job(make_job(
            provider="replicate", provider_model="owner/flux", prompt="in flight",
            state=JobState.SUBMITTING, submitting_at=wall_now()))
        spec = ModelSpec(provider="replicate", provider_model="owner/flux")
        task = await adapter.submit(JobRequest(job_id=job.id, model="m", spec=spec,
                                               prompt="in flight"))
        sweep = OrphanSweep("replicate", adapter, settings, store, direct)
        assert await sweep.find() == []  # its submission or lookup will claim it
        await store.transition(job.id, JobState.SUBMITTING, JobState.FAILED)
        [orphan] = await sweep.find()
        assert orphan.task.handle == task.task_id and orphan.job.id == job.id  # type: ignore[union-attr]
    await adapter.aclose()
