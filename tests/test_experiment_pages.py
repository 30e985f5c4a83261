"""The experiment pages in a real headless Chromium, driven by Playwright.

A person logs in, fills the create form wrongly (a negative weight: the page
comes back with the problem under that variant's row and everything typed still
there), then rightly: a control that sends the client's prompt as it is against
a variant whose fixed prompt never fails, on half the traffic's prompts asking
the sandbox to fail. They start it; traffic goes through the API (the sandbox,
one user per job); the open page's results section refreshes by itself until it
shows every job and the variant as the winner, with its chart and thumbnails;
they complete it. Screenshots of each step go under ``test-artifacts/experiments/``.

The browser set-up and the stand-in keys are the admin pages' own
(``tests/test_admin_pages.py``): Debian's chromium, Playwright's sync API in a
worker thread while the daemon runs in the test's trio run. The traffic is sent
from that thread back into the trio run (``trio.from_thread.run``), so the page
stays open while it arrives. Each form's POST and redirect is awaited
(``expect_navigation``) before the next step reads the page.
"""

from __future__ import annotations

import collections
import functools
import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.experiments.hashing import assign
from actors.experiments.model import ExperimentState, MetricName
from daemon.api import experiment_pages
from tests.test_admin_pages import (  # noqa: F401  (keys: a fixture)
    ADMIN_KEY,
    chromium,
    keys,
    launched,
    on_phone,
)
from tests.test_api import FAST_SANDBOX

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "experiments"
#: Users sent through the experiment, one job each; every other one's prompt fails.
USERS = 60
#: The create form as typed, field by field; the second variant's weight is refused.
FORM = {
    "input[name=name]": "Fixed prompt against the client's",
    "textarea[name=description]": "Does a fixed prompt fail less?",
    "select[name=match_model]": "sandbox-image",
    "input[name=variant-0-id]": "control",
    "select[name=variant-0-model]": "sandbox-image",
    "input[name=variant-0-template]": "{prompt}",
    "input[name=variant-1-id]": "fixed",
    "select[name=variant-1-model]": "sandbox-image",
    "input[name=variant-1-template]": "a calm lake at dawn",
    "textarea[name=variant-1-parameters]": '{"style": "calm"}',
    "input[name=variant-1-weight]": "-1",
    "select[name=metric-cost]": "secondary",
    "input[name=min_sample]": "5",
}


def drive(browser_path: str, base: str, traffic: Callable[[str], Awaitable[None]]
          ) -> dict[str, Any]:
    """The browser's part, in a worker thread; what it saw."""
    seen: dict[str, Any] = {}
    with launched(browser_path, ARTIFACTS) as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        answer = page.goto(f"{base}/admin/experiments")
        seen["login_status"] = answer.status if answer else None
        page.fill("input[name=key]", ADMIN_KEY)
        with page.expect_navigation():
            page.click("button[type=submit]")
        seen["empty_list"] = page.locator("#experiments").inner_text()

        # A refused form: a negative weight on the second variant.
        for selector, value in FORM.items():
            if selector.startswith("select"):
                page.select_option(selector, value)
            else:
                page.fill(selector, value)
        with page.expect_navigation():
            page.click("button.primary")
        seen["refused_problems"] = page.locator("#form-problems").inner_text()
        seen["refused_row"] = page.locator("#variant-row-1 + tr.row-problems").inner_text()
        seen["kept"] = {
            "name": page.input_value("input[name=name]"),
            "template": page.input_value("input[name=variant-1-template]"),
            "parameters": page.input_value("textarea[name=variant-1-parameters]"),
            "cost": page.input_value("select[name=metric-cost]"),
        }
        page.screenshot(path=str(ARTIFACTS / "refused.png"), full_page=True)

        # Fixed: the experiment is created and the page is its own.
        page.fill("input[name=variant-1-weight]", "1")
        with page.expect_navigation():
            page.click("button.primary")
        page.wait_for_url(f"{base}/admin/experiments/exp_*")
        # The form posted to ...#new: the browser keeps that fragment over the redirect.
        experiment_id = page.url.partition("#")[0].rsplit("/", 1)[1]
        seen["experiment_id"] = experiment_id
        seen["draft_state"] = page.locator("#state").inner_text()
        with page.expect_navigation():
            page.click("button:has-text('Start')")
        seen["started_state"] = page.locator("#state").inner_text()
        seen["before_traffic"] = page.locator("#stats").inner_text()
        page.screenshot(path=str(ARTIFACTS / "started.png"), full_page=True)

        # Traffic arrives while the page is open; its results refresh by themselves.
        trio.from_thread.run(traffic, experiment_id)
        page.wait_for_selector("#winner.good", timeout=30_000)
        page.wait_for_function(
            "n => document.querySelector('#arm-control .metric-success_rate')"
            " && [...document.querySelectorAll('#arms td.metric-success_rate small')]"
            ".reduce((s, e) => s + Number((e.textContent.match(/n (\\d+)/) || [0, 0])[1]), 0)"
            " === n", arg=USERS, timeout=30_000)
        seen["winner"] = page.locator("#winner").inner_text()
        seen["srm"] = page.locator("#srm").inner_text()
        seen["arm_fixed"] = page.locator("#arm-fixed").inner_text()
        seen["chart"] = page.locator("#figure-success_rate svg").evaluate("e => e.outerHTML")
        page.reload()
        seen["thumbnails_after_reload"] = page.locator("#outputs-fixed img").count()
        thumb = page.locator("#outputs-fixed a.thumb").first
        seen["thumbnail_href"] = thumb.get_attribute("href")
        seen["thumbnail_loaded"] = page.locator("#outputs-fixed img").first.evaluate(
            "img => img.complete && img.naturalWidth")
        page.screenshot(path=str(ARTIFACTS / "results.png"), full_page=True)

        with page.expect_navigation():
            page.click("button:has-text('Complete')")
        seen["completed_state"] = page.locator("#state").inner_text()
        seen["buttons_left"] = page.locator(".actions button").count()

        page.goto(f"{base}/admin/experiments")
        seen["list_row"] = page.locator(f"#experiment-{experiment_id}").inner_text()
        page.screenshot(path=str(ARTIFACTS / "list.png"), full_page=True)

        seen["phone_width"] = on_phone(browser, page, f"{base}/admin/experiments/{experiment_id}",
                                       ARTIFACTS / "results-phone.png")
    return seen


async def test_create_start_watch_and_complete_an_experiment(
        easel_daemon: Any, keys: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    browser = chromium()
    monkeypatch.setattr(experiment_pages, "REFRESH_SECONDS", 1)
    easel = await easel_daemon(FAST_SANDBOX)

    async def traffic(experiment_id: str) -> None:
        # Users picked so each variant gets half: the experiment's id (its hash
        # seed) is random, and a split as uneven as 14 to 46 (about one run in a
        # thousand) is a sample ratio mismatch that rightly holds back the winner
        # this test waits for.
        experiment = await easel.runtime.experiments.get(experiment_id)
        users: list[tuple[str, int]] = []  # a user, and its place in its variant
        per_variant: collections.Counter[str] = collections.Counter()
        for n in itertools.count():
            variant = assign(experiment, f"user-{n}")
            if variant is not None and per_variant[variant.id] < USERS // 2:
                users.append((f"user-{n}", per_variant[variant.id]))
                per_variant[variant.id] += 1
            if len(users) == USERS:
                break

        async def one(index: int, user: str) -> None:
            prompt = "a red apple" if index % 2 else "a green pear [fail]"
            answer = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": prompt,
                                         "user_id": user})
            assert answer.status_code in (200, 201, 202), answer.text
            await easel.wait(answer.json()["id"])

        async with trio.open_nursery() as nursery:
            for user, index in users:
                nursery.start_soon(one, index, user)

    seen = await trio.to_thread.run_sync(functools.partial(
        drive, browser, easel.base_url, traffic))

    assert seen["login_status"] == 401
    assert "No experiments yet" in seen["empty_list"]
    assert "variants[1].weight" in seen["refused_row"]
    assert "variant row 2" in seen["refused_problems"]
    assert seen["kept"] == {"name": "Fixed prompt against the client's",
                            "template": "a calm lake at dawn",
                            "parameters": '{"style": "calm"}', "cost": "secondary"}

    experiment = await easel.runtime.experiments.get(seen["experiment_id"])
    assert [v.id for v in experiment.variants] == ["control", "fixed"]
    assert experiment.variants[1].prompt_template == "a calm lake at dawn"
    assert experiment.variants[1].parameters == {"style": "calm"}
    assert experiment.match_model == "sandbox-image" and experiment.min_sample == 5
    assert [m.name for m in experiment.metrics] == [MetricName.SUCCESS_RATE, MetricName.COST]
    assert experiment.owner == "key_ops"

    assert seen["draft_state"] == "DRAFT" and seen["started_state"] == "RUNNING"
    assert "No winner yet: no finished jobs" in seen["before_traffic"]
    assert "fixed" in seen["winner"] and "confidence" in seen["winner"]
    assert "Choose Variant fixed" in seen["winner"] and "higher success rate" in seen["winner"]
    assert "100.0 %" not in seen["winner"]
    assert "OK" in seen["srm"]
    assert "100.0 %" in seen["arm_fixed"]

    # The chart drawn in the page: the fixed variant's bar reaches 100 %, the control's
    # about half, each with its interval.
    svg = ET.fromstring(seen["chart"])
    ns = "{http://www.w3.org/2000/svg}"
    bars = {g.get("data-label"): g for g in svg.iter(f"{ns}g")
            if "bar" in (g.get("class") or "").split()}
    assert set(bars) == {"control", "fixed"}
    assert "control" in bars["control"].get("class")
    assert float(bars["fixed"].find(f"{ns}rect").get("data-value")) == 1.0
    assert 0.2 < float(bars["control"].find(f"{ns}rect").get("data-value")) < 0.8
    assert bars["control"].find(f".//{ns}g[@class='interval']") is not None

    assert seen["thumbnails_after_reload"] >= 1
    assert seen["thumbnail_href"].startswith("/admin/experiments/media/")
    assert seen["thumbnail_loaded"] > 0
    assert seen["completed_state"] == "COMPLETED" and seen["buttons_left"] == 0
    assert "COMPLETED" in seen["list_row"] and "fixed" in seen["list_row"]
    assert seen["phone_width"] <= 390
    assert (await easel.runtime.experiments.get(seen["experiment_id"])).state is \
        ExperimentState.COMPLETED
    for name in ("refused", "started", "results", "list", "results-phone"):
        assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000


#: The sandbox with a price, so cost and spend have something to show.
PRICED_SANDBOX = FAST_SANDBOX + """
[models.sandbox-image]
provider = "sandbox"
provider_model = "sandbox-image"
cost = 4
"""


async def test_the_pages_without_a_browser(easel_daemon: Any) -> None:
    """What the browser test does not reach: a segmented experiment's table and its
    caveat, cost and spend, the results section served alone, an added variant row,
    a form the page itself refuses, and a missing experiment (no keys: everyone is
    admin, as on the API)."""
    easel = await easel_daemon(PRICED_SANDBOX)
    service = easel.runtime.experiments
    experiment = await service.create({
        "name": "Plans", "match": "sandbox-image", "segmentAttribute": "plan", "minSample": 2,
        "variants": [{"id": "a", "modelIdentifier": "sandbox-image"},
                     {"id": "b", "modelIdentifier": "sandbox-image",
                      "promptTemplate": "{prompt}, at dusk"}],
        "metrics": [{"name": "success_rate"}, {"name": "cost", "type": "secondary"}]})
    draft = await easel.client.get(f"/admin/experiments/{experiment.id}")
    assert draft.status_code == 200 and "No results yet" in draft.text
    await service.start(experiment.id)
    for user in range(8):
        answer = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a red apple",
                                     "user_id": f"u{user}",
                                     "metadata": {"plan": "pro" if user % 2 else "free"}})
        await easel.wait(answer.json()["id"])

    page = await easel.client.get(f"/admin/experiments/{experiment.id}")
    assert page.status_code == 200
    text = page.text
    assert 'id="segments"' in text and "plan=pro" in text and "plan=free" in text
    assert 'id="segments-caveat"' in text
    spends = [float(found) for found in re.findall(r"spend ([\d.]+), 4 per success", text)]
    assert sum(spends) == 32  # 8 jobs at 4 each, split between the variants
    assert 'id="chart-cost"' in text and 'id="chart-success_rate"' in text
    assert "setInterval" in text  # running: the results refresh themselves

    fragment = await easel.client.get(f"/admin/experiments/{experiment.id}/stats")
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<section id="stats"')
    assert "<html" not in fragment.text

    listing = await easel.client.get("/admin/experiments")
    row = listing.text.split(f'id="experiment-{experiment.id}"', 1)[1].split("</tr>", 1)[0]
    assert "RUNNING" in row and ">32<" in row.replace(" ", "")  # 8 jobs at 4 each

    more = await easel.client.post("/admin/experiments", data={
        "rows": "3", "action": "add-row", "name": "kept", "variant-2-template": "{prompt}!"})
    assert more.status_code == 200
    assert more.text.count('class="variant-row"') == 4
    assert 'value="kept"' in more.text and 'value="{prompt}!"' in more.text

    refused = await easel.client.post("/admin/experiments", data={
        "rows": "2", "action": "create", "name": "bad json",
        "variant-0-model": "sandbox-image", "variant-1-model": "sandbox-image",
        "variant-1-parameters": "{not json", "coverage": "lots"})
    assert refused.status_code == 400
    assert "parameters: not JSON" in refused.text and "coverage: &#39;lots&#39; is not a number" in refused.text
    assert [e.name for e in await service.list()] == ["Plans"]

    bandit = await service.create({
        "name": "Bandit", "allocation": "bandit", "bandit": {"minSamples": 50},
        "variants": [{"modelIdentifier": "sandbox-image"}, {"modelIdentifier": "sandbox-image"}]})
    await service.start(bandit.id)
    shown = (await easel.client.get(f"/admin/experiments/{bandit.id}")).text
    assert 'id="bandit"' in shown and "not yet (every arm needs 50 finished jobs)" in shown
    assert "50.0 %" in shown.split('id="bandit"', 1)[1]  # the shares until then

    missing = await easel.client.get("/admin/experiments/exp_nothere")
    assert missing.status_code == 404
    assert "text/html" in missing.headers["content-type"] and "No experiment exp_nothere" in missing.text
