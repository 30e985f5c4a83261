"""The provider actor's lookup of a task whose create answer was lost: a walk of
the provider's list one page per call, each page retried on its own, stopping at
the first page with a task no job has claimed. A real ``ProviderActor`` around a
real adapter, against the Replicate and Kling simulators on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.catalog import MediaKind, ModelSpec
from actors.clock import wall_now
from actors.images.inputs import InputPreparer
from actors.images.presets import PreprocessSettings
from actors.images.publish import LocalInputs
from actors.jobs import JobState
from actors.lifecycle import Lifecycle
from actors.limits import TokenBucket
from actors.monitor import Monitor
from actors.provider import Lookup, ProviderActor
from actors.providers import PROVIDERS, kling, make_adapter
from actors.providers.base import Adapter, JobRequest, ProviderSettings
from actors.providers.kling import KlingSettings
from actors.store import Store, open_store
from tests.fakes import FakeClock
from tests.simulators.base import Fault, Knobs, Simulator, serve_simulator
from tests.simulators.kling import KlingSimulator
from tests.simulators.replicate import ReplicateSimulator
from tests.store_contract import make_job

#: Fast retries with no jitter: each page is tried up to MAX_ATTEMPTS times.
MAX_ATTEMPTS = 3
RETRIES = {"rate": 1000.0, "burst": 100, "max_attempts": MAX_ATTEMPTS, "retry_base": 0.01,
           "retry_cap": 0.01, "retry_jitter": 0.0}


class CountingBucket(TokenBucket):
    """The actor's token bucket, counting the tokens taken from it."""

    def __init__(self, rate: float, burst: int) -> None:
        super().__init__(rate, burst)
        self.taken = 0

    async def take(self) -> None:
        await super().take()
        self.taken += 1

ActorFor = Callable[[Simulator, str], Awaitable[ProviderActor]]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "db.sqlite") as opened:
        yield opened


@pytest.fixture
async def actor_for(nursery: trio.Nursery, store: Store, tmp_path: Path) -> AsyncIterator[ActorFor]:
    """A provider actor (not running: only its calls are used) for a simulator."""
    adapters: list[Adapter] = []

    async def make(sim: Simulator, family: str) -> ProviderActor:
        url = await nursery.start(serve_simulator, sim)
        settings: ProviderSettings
        if family == "kling":
            settings = KlingSettings(base_url=url, access_key="ak", secret_key="sk", **RETRIES)
        else:
            settings = ProviderSettings(base_url=url, api_token="r8_test", **RETRIES)
        adapter = make_adapter(family, settings, family)
        adapters.append(adapter)
        to_scheduler, _ = trio.open_memory_channel[Any](100)
        to_poller, _ = trio.open_memory_channel[Any](100)
        _, mailbox = trio.open_memory_channel[Any](0)
        actor = ProviderActor(
            family, adapter, settings, store=store, catalog={}, lifecycle=Lifecycle(),
            monitor=Monitor(), mailbox=mailbox, changes=store.subscribe(),
            scheduler=to_scheduler, poller=to_poller,
            capabilities=PROVIDERS[family].capabilities, callback_base="",
            inputs=InputPreparer(family, PROVIDERS[family].inputs, PreprocessSettings(),
                                 publisher=LocalInputs(tmp_path, "", 1),
                                 limiter=trio.CapacityLimiter(1)),
        )
        actor._bucket = CountingBucket(settings.rate, settings.burst)
        return actor

    yield make
    for adapter in adapters:
        await adapter.aclose()


def tokens_taken(actor: ProviderActor) -> int:
    assert isinstance(actor._bucket, CountingBucket)
    return actor._bucket.taken


# -- Replicate ------------------------------------------------------------------------------

REPLICATE_SPEC = ModelSpec(provider="replicate", provider_model="owner/flux")


def replicate_job(prompt: str, submitting_at: float) -> JobRequest:
    return JobRequest(job_id=f"gen_{prompt.replace(' ', '_')}", model="flux", spec=REPLICATE_SPEC,
                      prompt=prompt, submitting_at=submitting_at)


async def planted(actor: ProviderActor, sim: ReplicateSimulator, prompts: list[str]) -> list[str]:
    """Create one prediction per prompt, oldest first; their ids."""
    ids = []
    for prompt in prompts:
        submitted = await actor.adapter.submit(replicate_job(prompt, 0.0))
        ids.append(submitted.task_id)  # type: ignore[union-attr]
    return ids


def laters(count: int) -> list[str]:
    return [f"later {n}" for n in range(count)]


async def walk(actor: ProviderActor, sim: Simulator, request: JobRequest) -> tuple[Lookup, int, int]:
    """Look ``request`` up: the answer, the list requests sent and the tokens spent."""
    lists, tokens = sim.stats().list_calls, tokens_taken(actor)
    lookup = await actor._look_up(request)
    return lookup, sim.stats().list_calls - lists, tokens_taken(actor) - tokens


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def replicate(actor_for: ActorFor, clock: FakeClock) -> tuple[ProviderActor, ReplicateSimulator]:
    sim = ReplicateSimulator(Knobs(duration=60), page_size=2, clock=clock)
    return await actor_for(sim, "replicate"), sim


async def test_the_walk_stops_at_the_first_page_with_a_match(
    replicate: tuple[ProviderActor, ReplicateSimulator], clock: FakeClock
) -> None:
    actor, sim = replicate
    submitting_at = clock()
    [_, lost, *later] = await planted(actor, sim, ["older", "lost answer", *laters(9)])
    # Pages of two, newest first: l8 l7 | l6 l5 | l4 l3 | l2 l1 | l0 lost | older.
    lookup, lists, tokens = await walk(actor, sim, replicate_job("lost answer", submitting_at))
    assert lookup == Lookup(found=(lost,), complete=False)  # found: nothing more to read
    assert lists == tokens == 5  # the page after the match is never asked for

    lookup, lists, tokens = await walk(actor, sim, replicate_job("later 8", submitting_at))
    assert lookup == Lookup(found=(later[-1],), complete=False)
    assert lists == tokens == 1  # matched on page 1: one request, one token


async def test_a_walk_with_no_match_reads_to_the_end_of_its_reach(
    replicate: tuple[ProviderActor, ReplicateSimulator], clock: FakeClock
) -> None:
    actor, sim = replicate
    await planted(actor, sim, ["long ago", "long ago too"])
    clock.advance(600)
    submitting_at = clock()
    await planted(actor, sim, [f"recent {n}" for n in range(3)])
    lookup, lists, tokens = await walk(actor, sim, replicate_job("never sent", submitting_at))
    # recent 2, recent 1 | recent 0, long ago too: older than the skew, so the end.
    assert lookup == Lookup(found=(), complete=True)
    assert lists == tokens == 2


async def test_a_failing_page_is_retried_alone(
    replicate: tuple[ProviderActor, ReplicateSimulator], clock: FakeClock
) -> None:
    actor, sim = replicate
    submitting_at = clock()
    [_, lost, *_] = await planted(actor, sim, ["older", "lost answer", *laters(3)])
    # l2 l1 | l0 lost | older. Page 1 answers; page 2 meets a 429, a 503, then answers.
    sim.script_faults("list", None, Fault.RATE_LIMIT, Fault.SERVER_ERROR)
    sim.knobs.retry_after = 0.01
    lookup, lists, tokens = await walk(actor, sim, replicate_job("lost answer", submitting_at))
    assert lookup == Lookup(found=(lost,), complete=False)
    assert lists == tokens == 4  # page 1 once, page 2 three times: never page 1 again


async def test_matches_found_before_a_page_fails_for_good_are_kept(
    replicate: tuple[ProviderActor, ReplicateSimulator], store: Store, clock: FakeClock
) -> None:
    actor, sim = replicate
    submitting_at = clock()
    [older, newer] = await planted(actor, sim, ["twice sent", "twice sent"])
    await planted(actor, sim, ["other"])
    # The newer twin (page 1, with "other") is another job's: the walk goes on to
    # page 2, whose every attempt fails.
    await store.insert_job(make_job(provider="replicate", state=JobState.RUNNING,
                                    provider_task_id=newer))
    sim.script_faults("list", None, *[Fault.SERVER_ERROR] * MAX_ATTEMPTS)
    lookup, lists, tokens = await walk(actor, sim, replicate_job("twice sent", submitting_at))
    assert lookup.found == (newer,) and not lookup.complete and lookup.error
    assert lists == tokens == 1 + MAX_ATTEMPTS  # page 1 once, then page 2's every attempt

    lookup, lists, _ = await walk(actor, sim, replicate_job("twice sent", submitting_at))
    assert lookup == Lookup(found=(newer, older), complete=True)  # _adopt takes the unclaimed one
    assert lists == 2


async def test_timeouts_on_the_list_are_retried_per_page(
    replicate: tuple[ProviderActor, ReplicateSimulator], clock: FakeClock
) -> None:
    actor, sim = replicate
    submitting_at = clock()
    [lost] = await planted(actor, sim, ["lost answer"])
    sim.knobs.hang_seconds = 2
    actor.adapter.client.timeout = 0.2  # type: ignore[attr-defined]
    sim.script_faults("list", Fault.TIMEOUT)
    lookup, lists, tokens = await walk(actor, sim, replicate_job("lost answer", submitting_at))
    assert lookup == Lookup(found=(lost,), complete=True)
    assert lists == tokens == 2


# -- Kling ------------------------------------------------------------------------------------

KLING_SPEC = ModelSpec(provider="kling", provider_model="kling-v2-1-master", kind=MediaKind.VIDEO)


def kling_job(job_id: str, submitting_at: float = 0.0) -> JobRequest:
    return JobRequest(job_id=job_id, model="kling", spec=KLING_SPEC, prompt=f"video {job_id}",
                      submitting_at=submitting_at)


async def test_kling_searches_external_task_id_page_by_page(
    actor_for: ActorFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kling, "LOOKUP_PAGE_SIZE", 2)
    sim = KlingSimulator(access_key="ak", secret_key="sk")  # real time: its JWTs are checked
    actor = await actor_for(sim, "kling")
    submitting_at = wall_now()
    lost = (await actor.adapter.submit(kling_job("gen_lost"))).task_id  # type: ignore[union-attr]
    for n in range(4):
        await actor.adapter.submit(kling_job(f"gen_later{n}"))
    # Pages of two, newest first: the lost task is on page 3; page 2 fails once.
    sim.script_faults("list", None, Fault.SERVER_ERROR)
    lookup, lists, tokens = await walk(actor, sim, kling_job("gen_lost", submitting_at))
    assert lookup == Lookup(found=(lost,), complete=True)  # page 3 is short: the list ended
    assert lists == tokens == 4

    lookup, lists, tokens = await walk(actor, sim, kling_job("gen_later3", submitting_at))
    assert len(lookup.found) == 1 and lists == tokens == 1
