"""A batch's items spread over the provider sections that offer their model.

The choice (``Router.spread``) is tested as the pure function it is; the
scheduler applying it on the test's harness (``tests/test_scheduler.py``: a real
store, the test playing the providers); and end to end with two sandbox
sections of different capacity, and a section whose circuit a dead endpoint
opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from actors.breaker import CircuitState
from actors.catalog import MediaKind, ModelSpec, check_fallbacks, later_models, sections_of
from actors.jobs import Job, JobState
from actors.messages import CircuitChanged
from actors.routing import Router
from tests.conftest import EmbeddedDaemon, free_port
from tests.store_contract import make_job
from tests.test_scheduler import OPEN, harness

CLOSED, OPENED = CircuitState.CLOSED, CircuitState.OPEN

CATALOG = {
    "flux": ModelSpec(provider="a", provider_model="flux", served_by=["flux-b", "flux-c"],
                      fallbacks=["other"]),
    "flux-b": ModelSpec(provider="b", provider_model="black-forest/flux"),
    "flux-c": ModelSpec(provider="c", provider_model="flux-dev"),
    "other": ModelSpec(provider="d", provider_model="other"),
}


def item(**fields: Any) -> Job:
    return make_job(model="flux", provider="a", provider_model="flux", batch_id="batch_1",
                    **fields)


def router(refuses: str = "") -> Router:
    return Router(CATALOG, lambda job, model: model != refuses)


ALL_CLOSED = {"a": CLOSED, "b": CLOSED, "c": CLOSED, "d": CLOSED}


def test_a_batch_item_goes_where_the_most_capacity_is_free() -> None:
    assert router().spread(item(), {"a": 1, "b": 5, "c": 3}, ALL_CLOSED) == "flux-b"
    assert router().spread(item(), {"a": 1, "b": 2, "c": 3}, ALL_CLOSED) == "flux-c"
    # A tie keeps the item on its own model's section, so nothing is written.
    assert router().spread(item(), {"a": 3, "b": 3, "c": 3}, ALL_CLOSED) is None
    # Over-subscribed everywhere: the least over.
    assert router().spread(item(), {"a": -9, "b": -2, "c": -4}, ALL_CLOSED) == "flux-b"


def test_an_open_circuit_or_a_refusing_family_is_passed_over() -> None:
    free = {"a": 1, "b": 5, "c": 3}
    assert router().spread(item(), free, {**ALL_CLOSED, "b": OPENED}) == "flux-c"
    assert router("flux-b").spread(item(), free, ALL_CLOSED) == "flux-c"
    # Its own section's circuit is open: anywhere closed, even with less room.
    assert router().spread(item(), {"a": 9, "b": 0, "c": -1}, {**ALL_CLOSED, "a": OPENED}) \
        == "flux-b"
    # Not running here (absent): never chosen.
    assert router().spread(item(), free, {"a": CLOSED, "c": CLOSED}) == "flux-c"
    # Nowhere closed: it stays, for the circuit rules to hold or move it.
    assert router().spread(item(), free, {"a": OPENED, "b": OPENED, "c": OPENED}) is None


def test_a_single_or_a_moved_job_stays() -> None:
    free = {"a": 0, "b": 5, "c": 3}
    single = make_job(model="flux", provider="a", provider_model="flux")
    assert router().spread(single, free, ALL_CLOSED) is None
    assert router().spread(item(served_model="other"), free, ALL_CLOSED) is None
    lonely = make_job(model="other", provider="d", provider_model="other", batch_id="b")
    assert router().spread(lonely, {"d": 0, "b": 5}, ALL_CLOSED) is None


def test_sections_are_checked_like_fallbacks() -> None:
    catalog = {
        "a": ModelSpec(provider="p", provider_model="x",
                       served_by=["a", "nope", "v", "same", "b", "b2"]),
        "same": ModelSpec(provider="p", provider_model="y"),
        "b": ModelSpec(provider="q", provider_model="x"),
        "b2": ModelSpec(provider="q", provider_model="x2"),
        "v": ModelSpec(provider="r", provider_model="x", kind=MediaKind.VIDEO),
    }
    assert check_fallbacks(catalog) == [
        "models.a.served_by[0]: a model cannot be served by itself",
        "models.a.served_by[1]: no model 'nope' in the catalog",
        "models.a.served_by[2]: 'v' makes video, not image",
        "models.a.served_by[3]: 'same' is on the same provider section (p); "
        "name the model through another",
    ]
    # Usable ones only, one per section.
    assert sections_of(catalog, "a") == ["a", "b"]
    assert sections_of(catalog, "gone") == ["gone"]


def test_a_spread_item_keeps_its_models_fallbacks() -> None:
    assert later_models(CATALOG, "flux", "flux-b") == ["other"]
    assert later_models(CATALOG, "flux", "other") == []


# -- the scheduler applying it -------------------------------------------------------------


async def test_the_scheduler_queues_items_by_free_capacity(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 1, "q": 3})
        items = [await h.enqueue(model="shared", batch_id="batch_1") for _ in range(4)]
        single = await h.enqueue(model="shared")
        on_q = {(await h.next("q")).id for _ in range(3)}
        assert on_q == {items[0].id, items[1].id, items[3].id}
        # Tied at one free each: the third stays on its own section.
        assert (await h.next("p")).id == items[2].id
        await h.nothing_more("q")
        await h.finish("p")
        assert (await h.next("p")).id == single.id  # a single keeps its section
        moved = await h.store.get_job(items[0].id)
        assert moved is not None and moved.state is JobState.QUEUED
        assert (moved.provider, moved.provider_model, moved.served_model) == ("q", "qm", "shared-q")
        spreads = [await h.events(job.id, "spread") for job in items]
        assert [[(e["to"], e["free"]) for e in events] for events in spreads] == [
            [("shared-q", 3)], [("shared-q", 2)], [], [("shared-q", 1)]]


async def test_the_scheduler_keeps_items_off_an_open_circuit(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.start(ready={"p": 8, "q": 1})
        await h.tell.send(CircuitChanged("p", OPEN))
        first = await h.enqueue(model="shared", batch_id="batch_1")
        assert (await h.next("q")).id == first.id
        await h.nothing_more("p")


# -- end to end ----------------------------------------------------------------------------

#: One video model through three sections: two sandboxes of different capacity,
#: and a Replicate section at an address nothing listens on, whose circuit the
#: first refused call opens (and keeps open for the test).
SECTIONS = """
[providers.sandbox]
video_duration = 600
max_in_flight = 2

[providers.sandbox-b]
adapter = "sandbox"
video_duration = 600
max_in_flight = 6

[providers.dead]
adapter = "replicate"
base_url = "http://127.0.0.1:{port}"
api_token = "r8_test"
max_attempts = 1
breaker_min_calls = 1
breaker_cooldown = 3600

[models.clip]
provider = "sandbox"
provider_model = "sandbox-video"
kind = "video"
served_by = ["clip-b", "clip-dead"]

[models.clip-b]
provider = "sandbox-b"
provider_model = "sandbox-video"
kind = "video"

[models.clip-dead]
provider = "dead"
provider_model = "owner/clip"
kind = "video"
"""


async def batch_items(easel: EmbeddedDaemon, count: int) -> list[str]:
    """A batch of ``count`` items for ``clip``, all released at once; their ids."""
    response = await easel.client.post("/api/external/generation/batch", json={
        "requests": [{"modelIdentifier": "clip", "prompt": f"a kite {i}"} for i in range(count)],
        "options": {"maxConcurrency": count},
    })
    assert response.status_code == 202, response.text
    return [task["id"] for task in response.json()["tasks"]]


async def sections(easel: EmbeddedDaemon, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` each section holds once every one was sent."""
    with trio.fail_after(20):
        while True:
            jobs = [await easel.runtime.get_job(job_id) for job_id in ids]
            if all(job.state is JobState.RUNNING for job in jobs):
                break
            await trio.sleep(0.02)
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.provider] = counts.get(job.provider, 0) + 1
    return counts


async def test_items_fill_the_sections_by_capacity_and_avoid_an_open_circuit(
    easel_daemon: Any,
) -> None:
    easel = await easel_daemon(SECTIONS.format(port=free_port()))
    # A single submission stays on its model's section: here, the dead one,
    # whose refusal opens its circuit.
    single = await easel.submit({"modelIdentifier": "clip-dead", "prompt": "a kite"})
    failed = await easel.wait(single.json()["id"])
    assert failed["error"]["code"] == "PROVIDER_UNAVAILABLE", failed
    with trio.fail_after(10):
        while easel.runtime.statistics()["providers"]["dead"]["circuit"]["state"] != "open":
            await trio.sleep(0.02)

    # Eight items: the larger sandbox takes six, the smaller two, the dead
    # section (with the most free slots of all: sixteen) none.
    ids = await batch_items(easel, 8)
    assert await sections(easel, ids) == {"sandbox-b": 6, "sandbox": 2}
    job = await easel.client.get(f"/api/external/generation/{ids[0]}")
    assert job.json()["servedBy"] == "clip-b"
    singles = await easel.submit({"modelIdentifier": "clip", "prompt": "a lone kite"})
    assert (await easel.runtime.get_job(singles.json()["id"])).provider == "sandbox"
