"""Experiments in the daemon, below the HTTP layer: creation checked against the
catalog, the life cycle, enrolment at submission (the rewrite, coverage,
namespaces), sticky assignments across a restart and a weight change, the budget
pause and the bandit's cadence (under ``MockClock``), and a planted effect of
2,000 jobs found by the results.

A real SQLite store throughout; job outcomes are simulated by moving each
enrolled job to SUCCEEDED or FAILED with its variant's chance, as the provider
would have.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from actors.catalog import MediaKind, ModelSpec
from actors.errors import EaselError, ErrorCode
from actors.experiments.actor import ExperimentsActor
from actors.experiments.enroll import enroll
from actors.experiments.model import ExperimentState, MetricName
from actors.experiments.service import ExperimentService
from actors.jobs import Job, JobState, new_job_id
from actors.monitor import Monitor
from actors.store import Store
from actors.store.sqlite import open_store

CATALOG = {
    "sandbox-image": ModelSpec("sandbox", "sandbox-image", cost=1.0),
    "sandbox-image-b": ModelSpec("sandbox", "sandbox-image", cost=2.0),
    "sandbox-video": ModelSpec("sandbox", "sandbox-video", kind=MediaKind.VIDEO),
    "flux-dev": ModelSpec("bfl", "flux-dev"),
}


def two_arms(**extra: Any) -> dict[str, Any]:
    return {"name": "b is better", "match": "sandbox-image",
            "variants": [{"modelIdentifier": "sandbox-image"},
                         {"modelIdentifier": "sandbox-image-b",
                          "promptTemplate": "{prompt}, studio light",
                          "parameters": {"style": "b"}}],
            **extra}


def job_for(user: str | None, model: str = "sandbox-image", **fields: Any) -> Job:
    spec = CATALOG[model]
    return Job(id=new_job_id(), model=model, provider=spec.provider,
               provider_model=spec.provider_model, prompt="a cat", user_id=user,
               parameters={"seed": 1}, **fields)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "easel.db") as opened:
        yield opened


@pytest.fixture
def service(store: Store) -> ExperimentService:
    return ExperimentService(store, CATALOG, {})


async def running(service: ExperimentService, body: dict[str, Any]) -> str:
    experiment = await service.create(body)
    await service.start(experiment.id)
    return experiment.id


async def submit(service: ExperimentService, job: Job, outcome: bool | None = None) -> Job:
    """Enrol ``job`` and store it as the runtime would, priced as the quotas do;
    then end it as ``outcome`` says (None: leave it queued)."""
    job = await enroll(service, job)
    job.cost = CATALOG[job.model].price(job.number_of_outputs, job.parameters)
    stored, _ = await service.store.insert_job(job)
    if outcome is not None:
        await service.store.transition(stored.id, JobState.QUEUED, JobState.SUBMITTING)
        ended = await service.store.transition(
            stored.id, JobState.SUBMITTING,
            JobState.SUCCEEDED if outcome else JobState.FAILED)
        assert ended is not None
        stored = ended
    return stored


# -- creation -------------------------------------------------------------------


async def test_creation_lists_every_problem_per_variant(service: ExperimentService) -> None:
    with pytest.raises(EaselError) as caught:
        await service.create({
            "name": "bad", "trafficAllocation": 150,
            "variants": [{"modelIdentifier": "no-such-model"},
                         {"modelIdentifier": "flux-dev", "parameters": {"bogus": 1}},
                         {"modelIdentifier": "sandbox-image", "weight": -1},
                         {"modelIdentifier": "sandbox-image", "promptTemplate": "no slot"}],
            "metrics": [{"name": "speed"}],
        })
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS
    problems = caught.value.info.details["problems"]
    assert any(p.startswith("variants[0].modelIdentifier: unknown model") for p in problems)
    assert any(p.startswith("variants[1].parameters: unknown key(s): bogus") for p in problems)
    assert any(p.startswith("variants[2].weight") for p in problems)
    assert any(p.startswith("variants[3].promptTemplate: must contain {prompt}")
               for p in problems)
    assert any(p.startswith("trafficAllocation") for p in problems)
    assert any(p.startswith("metrics[0].name") for p in problems)
    assert await service.list() == []


async def test_creation_refuses_zero_weights_mixed_kinds_and_one_variant(
        service: ExperimentService) -> None:
    for body in ({"name": "w", "variants": [{"modelIdentifier": "sandbox-image", "weight": 0},
                                            {"modelIdentifier": "sandbox-image", "weight": 0}]},
                 {"name": "k", "variants": [{"modelIdentifier": "sandbox-image"},
                                            {"modelIdentifier": "sandbox-video"}]},
                 {"name": "1", "variants": [{"modelIdentifier": "sandbox-image"}]}):
        with pytest.raises(EaselError) as caught:
            await service.create(body)
        assert caught.value.code is ErrorCode.INVALID_PARAMETERS, body
    with pytest.raises(EaselError) as caught:
        await service.create([1, 2])
    assert caught.value.code is ErrorCode.INVALID_REQUEST


async def test_a_created_experiment_reads_back_as_given(service: ExperimentService) -> None:
    made = await service.create(two_arms(trafficAllocation=40, budget=50,
                                         segmentAttribute="plan", allocation="bandit",
                                         bandit={"minSamples": 10, "cadence": 60}))
    again = await service.get(made.id)
    assert again == made
    shown = service.to_api(again)
    assert shown["state"] == "DRAFT" and shown["trafficAllocation"] == 40
    assert [v["id"] for v in shown["variants"]] == ["A", "B"]
    assert shown["variants"][1]["promptTemplate"] == "{prompt}, studio light"
    assert shown["metrics"] == [{"name": "success_rate", "type": "primary", "goal": "maximize"}]
    assert shown["bandit"]["minSamples"] == 10


async def test_factors_expand_into_variants_and_report_main_effects(
        service: ExperimentService) -> None:
    experiment_id = await running(service, {
        "name": "2x2", "match": "sandbox-image",
        "factors": {"model": ["sandbox-image", "sandbox-image-b"],
                    "prompt_template": ["{prompt}", "{prompt}, studio light"]}})
    experiment = await service.get(experiment_id)
    assert len(experiment.variants) == 4
    assert {v.factors["model"] for v in experiment.variants} == {"sandbox-image",
                                                                 "sandbox-image-b"}
    rng = np.random.default_rng(3)
    for n in range(800):
        job = await enroll(service, job_for(f"u{n}"))
        variant = next(v for v in experiment.variants if v.id == job.variant_id)
        chance = 0.5 + 0.2 * (variant.factors["model"] == "sandbox-image-b")
        await submit(service, job_for(f"u{n}"), bool(rng.random() < chance))
    results = await service.results(experiment_id)
    assert results.main_effects is not None
    effects = results.main_effects["model"]
    b, a = (effects[level][MetricName.SUCCESS_RATE] for level in ("sandbox-image-b",
                                                                  "sandbox-image"))
    assert b > 0.05 > -0.05 > a
    assert set(results.main_effects["prompt_template"]) == {"{prompt}", "{prompt}, studio light"}


# -- life cycle -----------------------------------------------------------------


async def test_life_cycle_and_its_conflicts(service: ExperimentService) -> None:
    made = await service.create(two_arms())
    with pytest.raises(EaselError) as caught:
        await service.pause(made.id)
    assert caught.value.code is ErrorCode.CONFLICT
    assert (await service.start(made.id)).state is ExperimentState.RUNNING
    assert [e.id for e in service.running()] == [made.id]
    assert (await service.pause(made.id)).state is ExperimentState.PAUSED
    assert service.running() == []
    assert (await service.start(made.id)).state is ExperimentState.RUNNING
    done = await service.complete(made.id)
    assert done.state is ExperimentState.COMPLETED and done.completed_at is not None
    for action in (service.start, service.pause, service.complete):
        with pytest.raises(EaselError) as caught:
            await action(made.id)
        assert caught.value.code is ErrorCode.CONFLICT
    with pytest.raises(EaselError) as caught:
        await service.start("exp_nothing")
    assert caught.value.code is ErrorCode.NOT_FOUND


# -- enrolment ------------------------------------------------------------------


async def test_enrolment_rewrites_the_job_to_its_variant(service: ExperimentService) -> None:
    experiment_id = await running(service, two_arms())
    seen: Counter[str] = Counter()
    for n in range(300):
        job = await submit(service, job_for(f"user-{n}"))
        assert job.experiment_id == experiment_id
        seen[job.variant_id or ""] += 1
        if job.variant_id == "B":
            assert job.model == "sandbox-image-b" and job.cost == 2.0
            assert job.prompt == "a cat, studio light"
            assert job.parameters == {"seed": 1, "style": "b"}
        else:
            assert job.model == "sandbox-image" and job.prompt == "a cat"
    assert set(seen) == {"A", "B"} and 110 < seen["A"] < 190
    other = await submit(service, job_for("user-x", "sandbox-video"))
    assert other.experiment_id is None and other.model == "sandbox-video"


async def test_coverage_leaves_the_rest_on_the_requested_model(
        service: ExperimentService) -> None:
    await running(service, two_arms(trafficAllocation=30))
    jobs = [await submit(service, job_for(f"u{n}")) for n in range(400)]
    enrolled = [job for job in jobs if job.experiment_id is not None]
    assert 80 < len(enrolled) < 160
    assert all(job.model == "sandbox-image" and job.variant_id is None
               for job in jobs if job.experiment_id is None)


async def test_naming_an_experiment_enrols_and_an_unknown_one_is_refused(
        service: ExperimentService) -> None:
    experiment_id = await running(service, two_arms(match=None))
    plain = await submit(service, job_for("u1"))
    assert plain.experiment_id is None
    named = await submit(service, job_for("u1", experiment_id=experiment_id))
    assert named.experiment_id == experiment_id and named.variant_id in ("A", "B")
    with pytest.raises(EaselError) as caught:
        await enroll(service, job_for("u1", experiment_id="exp_missing"))
    assert caught.value.code is ErrorCode.INVALID_REQUEST


async def test_namespaces_keep_experiments_mutually_exclusive(
        service: ExperimentService) -> None:
    first = await running(service, two_arms(namespace="home", namespaceRange=[0, 0.5]))
    second = await running(service, {
        "name": "videos", "match": "sandbox-video", "namespace": "home",
        "namespaceRange": [0.5, 1],
        "variants": [{"modelIdentifier": "sandbox-video"}, {"modelIdentifier": "sandbox-video"}]})
    in_first, in_second = set(), set()
    for n in range(300):
        if (await submit(service, job_for(f"u{n}"))).experiment_id == first:
            in_first.add(n)
        if (await submit(service, job_for(f"u{n}", "sandbox-video"))).experiment_id == second:
            in_second.add(n)
    assert in_first and in_second and not in_first & in_second
    overlapping = await service.create(two_arms(namespace="home", namespaceRange=[0.4, 0.6]))
    with pytest.raises(EaselError) as caught:
        await service.start(overlapping.id)
    assert caught.value.code is ErrorCode.CONFLICT


async def test_assignment_is_sticky_across_a_weight_change_and_a_restart(
        tmp_path: Path) -> None:
    path = tmp_path / "sticky.db"
    async with open_store(path) as store:
        service = ExperimentService(store, CATALOG, {})
        experiment_id = await running(service, two_arms())
        first = {n: (await submit(service, job_for(f"u{n}"))).variant_id for n in range(200)}
        changed = await service.set_weights(experiment_id, {"A": 0, "B": 1})
        assert changed.phase == 1
        assert [(await submit(service, job_for(f"u{n}"))).variant_id
                for n in range(200)] == list(first.values())
        newcomers = {(await submit(service, job_for(f"new{n}"))).variant_id for n in range(50)}
        assert newcomers == {"B"}
    async with open_store(path) as store:  # a restart: nothing but the database
        service = ExperimentService(store, CATALOG, {})
        await service.refresh()
        assert [(await submit(service, job_for(f"u{n}"))).variant_id
                for n in range(200)] == list(first.values())


async def test_weights_are_checked(service: ExperimentService) -> None:
    experiment_id = await running(service, two_arms())
    for weights in ({"A": 1}, {"A": 1, "B": -1}, {"A": 0, "B": 0}, None):
        with pytest.raises(EaselError) as caught:
            await service.set_weights(experiment_id, weights)
        assert caught.value.code is ErrorCode.INVALID_PARAMETERS


# -- the actor ------------------------------------------------------------------


def actor_for(service: ExperimentService, seed: int = 1) -> ExperimentsActor:
    return ExperimentsActor(service, monitor=Monitor(store=service.store),
                            rng=np.random.default_rng(seed))


async def test_budget_pauses_the_experiment(service: ExperimentService) -> None:
    experiment_id = await running(service, two_arms(budget=10))
    actor = actor_for(service)
    for n in range(4):
        await submit(service, job_for(f"u{n}"))
    await actor.tick()
    assert (await service.get(experiment_id)).state is ExperimentState.RUNNING
    for n in range(4, 12):
        await submit(service, job_for(f"u{n}"))
    assert await service.spend(experiment_id) >= 10
    await actor.tick()  # within the check interval: not read again yet
    assert (await service.get(experiment_id)).state is ExperimentState.RUNNING
    actor._budget_due.clear()
    await actor.tick()
    assert (await service.get(experiment_id)).state is ExperimentState.PAUSED
    assert (await submit(service, job_for("late"))).experiment_id is None


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Jumps only once the run has been idle a tenth of a real second: a store read
    waiting on its worker thread must not let the clock run ahead of it."""
    return trio.testing.MockClock(autojump_threshold=0.1)


async def test_the_bandit_reweighs_on_its_cadence_without_moving_anyone(
        store: Store, clock: trio.testing.MockClock) -> None:
    service = ExperimentService(store, CATALOG, {})
    experiment_id = await running(service, two_arms(
        allocation="bandit", bandit={"minSamples": 30, "cadence": 600, "floor": 0.05}))
    rng = np.random.default_rng(7)
    first: dict[str, str | None] = {}
    for n in range(300):
        job = job_for(f"u{n}")
        enrolled = await enroll(service, job)
        chance = 0.3 if enrolled.variant_id == "A" else 0.8
        first[f"u{n}"] = (await submit(service, job, bool(rng.random() < chance))).variant_id
    actor = actor_for(service)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        started = (await service.get(experiment_id)).started_at
        assert started is not None
        with trio.fail_after(36_000):
            while (experiment := await service.get(experiment_id)).phase == 0:
                await trio.sleep(10)
        # One re-weighting at least: the clock jumps while the store's thread
        # works, and on a loaded machine it can pass a second cadence before the
        # loop reads the experiment again.
        assert experiment.phase >= 1
        assert experiment.updated_at >= started + 600  # not before the cadence
        shares = {v.id: v.weight for v in experiment.variants}
        assert shares["B"] > 0.8 and shares["A"] >= 0.05
        assert service.p_best[experiment_id]["B"] > 0.95
        nursery.cancel_scope.cancel()
    assert [(await submit(service, job_for(unit))).variant_id
            for unit in first] == list(first.values())


# -- the planted effect -----------------------------------------------------------


async def test_a_planted_effect_of_ten_points_is_found(service: ExperimentService) -> None:
    """2,000 jobs: variant B succeeds 80 % of the time, A 70 %."""
    experiment_id = await running(service, two_arms(minSample=100))
    rng = np.random.default_rng(2026)
    for n in range(2000):
        job = await enroll(service, job_for(f"user-{n}"))
        chance = 0.8 if job.variant_id == "B" else 0.7
        await submit(service, job_for(f"user-{n}"), bool(rng.random() < chance))
    results = await service.results(experiment_id)
    assert results.srm is not None and not results.srm.mismatch
    assert results.winner is not None and results.winner.variant_id == "B"
    assert results.winner.confidence > 0.99
    print(f"planted effect: winner {results.winner.variant_id}"
          f" with confidence {results.winner.confidence:.6f}:"
          f" {results.winner.recommendation}")
