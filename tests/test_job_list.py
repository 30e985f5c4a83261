"""``GET /api/external/generation``: filters, cursor pages, scoping to the caller."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from quart import g

from actors.jobs import JobState
from daemon.api import create_app
from daemon.api.auth import Caller, Scope
from daemon.api.listing import MAX_LIMIT
from tests.store_contract import make_job
from tests.test_api import FAST_SANDBOX

LIST = "/api/external/generation"


async def _ids(easel: Any, **params: Any) -> list[str]:
    response = await easel.client.get(LIST, params=params)
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()["data"]]


async def test_filters_and_pages(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    store = easel.runtime.store
    jobs = [make_job(model="sandbox-image", provider="sandbox", created_at=1000.0 + i,
                     user_id="u1" if i % 2 else None,
                     state=JobState.FAILED if i == 4 else JobState.SUCCEEDED)
            for i in range(6)]
    for job in jobs:
        await store.insert_job(job)
    newest = [job.id for job in reversed(jobs)]
    assert await _ids(easel) == newest
    assert await _ids(easel, status="FAILED") == [jobs[4].id]
    assert await _ids(easel, status="success,pending") == [j for j in newest if j != jobs[4].id]
    assert await _ids(easel, userId="u1") == [jobs[5].id, jobs[3].id, jobs[1].id]
    assert await _ids(easel, model="sandbox-video") == []
    assert await _ids(easel, provider="sandbox", createdAfter="1001",
                      createdBefore="1970-01-01T00:16:43Z") == [jobs[2].id, jobs[1].id]

    pages: list[str] = []
    params: dict[str, Any] = {"limit": 4}
    while True:
        body = (await easel.client.get(LIST, params=params)).json()
        pages += [job["id"] for job in body["data"]]
        if not body["hasMore"]:
            assert body["nextCursor"] is None
            break
        # A job submitted between pages does not shift the next page.
        await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "late"})
        params["cursor"] = body["nextCursor"]
    assert pages == newest


@pytest.mark.parametrize("params", [
    {"status": "DONE"}, {"limit": "0"}, {"limit": str(MAX_LIMIT + 1)}, {"limit": "x"},
    {"cursor": "nonsense"}, {"cursor": base64.b64encode(b"seq:-1").decode()},
    {"createdAfter": "yesterday"}, {"createdAfter": "2026-01-01T00:00:00"},
    {"createdBefore": "nan"}, {"statuss": "FAILED"}, {"user_id": "a", "userId": "b"},
])
async def test_bad_filters_are_refused_naming_the_parameter(easel_daemon, params) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    response = await easel.client.get(LIST, params=params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    assert error["details"]["param"] in params


async def test_a_key_lists_only_its_own_jobs_and_an_admin_all(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX)
    mine, theirs = make_job(owner="key_a"), make_job(owner="key_b")
    for job in (mine, theirs):
        await easel.runtime.store.insert_job(job)
    app = create_app(easel.runtime, media_dir=easel.state_dir / "media")
    seen: dict[str, list[str]] = {}
    for name, who in {"key": Caller("key_a", frozenset({Scope.READ})),
                      "admin": Caller("key_c", frozenset({Scope.ADMIN}))}.items():

        async def as_caller(who: Caller = who) -> None:
            g.caller = who

        app.before_request_funcs[None].append(as_caller)
        response = await app.test_client().get(LIST)
        app.before_request_funcs[None].remove(as_caller)
        seen[name] = [job["id"] for job in (await response.get_json())["data"]]
    assert seen == {"key": [mine.id], "admin": [theirs.id, mine.id]}
