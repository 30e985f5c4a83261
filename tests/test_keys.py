"""API keys, scopes and ownership, quotas and backpressure, through a real embedded daemon.

Keys are made the way ``easel keys create`` makes them (``actors.keys.new_key``)
and stored through the daemon's own store, or with the real command for the round
trip. Each test here fails on a daemon without keys: it answers everyone, every
job to every caller, and takes submissions without limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from actors.clock import wall_now
from actors.keys import KeyLimits, KeyRing, new_key, parse_scopes
from actors.store import open_store
from daemon import config as config_module
from daemon.api import create_app
from daemon.api.auth import NEEDS
from daemon.config import exposure_problem
from daemon.service import serve
from daemon.startup import StartupError
from tests.conftest import EmbeddedDaemon, free_port
from tests.process import PROJECT_ROOT
from tests.test_api import FAST_SANDBOX, assert_error_shape

KEYS = FAST_SANDBOX + """
[auth]
require_keys = true
"""

#: Jobs that stay unfinished for the whole test.
SLOW = KEYS.replace("video_duration = 0.5", "video_duration = 3600")

GENERATION = "/api/external/generation"


async def make_key(easel: EmbeddedDaemon, scopes: str = "submit,read", **limits: Any) -> str:
    """A key stored as ``easel keys create`` stores it; its secret form."""
    key, token = new_key("test", parse_scopes(scopes), KeyLimits(**limits), wall_now())
    await easel.runtime.store.create_key(key)
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def submit(easel: EmbeddedDaemon, token: str | None, model: str = "sandbox-image",
                 prompt: str = "a red apple") -> httpx.Response:
    return await easel.submit({"modelIdentifier": model, "prompt": prompt},
                              headers=bearer(token) if token else None)


def assert_rate_limited(response: httpx.Response, limit: str) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    assert_error_shape(response.json(), "RATE_LIMITED")
    error = response.json()["error"]
    assert error["details"]["limit"] == limit
    assert int(response.headers["Retry-After"]) >= 1
    assert error["details"]["retryAfter"] == int(response.headers["Retry-After"])
    return error  # type: ignore[no-any-return]


# -- who may call --------------------------------------------------------------


async def test_no_key_is_401_with_a_bearer_challenge(easel_daemon) -> None:
    easel = await easel_daemon(KEYS)
    for method, path in [("POST", GENERATION), ("GET", f"{GENERATION}/gen_x"),
                         ("GET", f"{GENERATION}/gen_x/events"),
                         ("POST", f"{GENERATION}/gen_x/cancel"), ("GET", "/media/gen_x/0.png"),
                         ("GET", "/api/health/detailed"), ("GET", "/api/metrics"),
                         ("GET", "/api/nothing")]:
        response = await easel.client.request(method, path, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert_error_shape(response.json(), "AUTHENTICATION_FAILED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await easel.client.get(f"{GENERATION}/gen_x", headers=bearer("easel_nope"))
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    # Health stays open to load balancers.
    assert (await easel.client.get("/api/health")).status_code == 200


async def test_admin_pages_ask_for_an_admin_key_with_their_login_form(easel_daemon) -> None:
    from daemon.api.admin import COOKIE

    easel = await easel_daemon(KEYS)
    admin, reader = await make_key(easel, "admin"), await make_key(easel, "read")
    page = "/admin/monitoring"
    anonymous = await easel.client.get(page)
    assert anonymous.status_code == 401 and "<form" in anonymous.text  # a page, not JSON
    assert (await easel.client.get(page, headers=bearer(reader))).status_code == 401
    assert (await easel.client.get(page, headers=bearer("easel_nope"))).status_code == 401
    assert (await easel.client.get(page, headers=bearer(admin))).status_code == 200
    with_cookie = await easel.client.get(page, headers={"Cookie": f"{COOKIE}={admin}"})
    assert with_cookie.status_code == 200
    # The monitoring API behind the pages takes an admin key like any other route.
    api = "/api/admin/monitoring/errors"
    assert (await easel.client.get(api)).status_code == 401
    assert (await easel.client.get(api, headers=bearer(reader))).status_code == 403
    assert (await easel.client.get(api, headers=bearer(admin))).status_code == 200


async def test_published_inputs_are_open_to_providers_and_nothing_else_is(
        easel_daemon) -> None:
    """A URL-only provider fetches the inputs Easel published for it without a key;
    the outputs beside them still need one."""
    easel = await easel_daemon(KEYS)
    media = easel.state_dir / "media"
    inputs = media / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "ab12.jpg").write_bytes(b"\xff\xd8\xff published")
    (media / "ab12.jpg").write_bytes(b"\xff\xd8\xff an output")
    published = await easel.client.get("/media/inputs/ab12.jpg")
    assert published.status_code == 200 and published.content.endswith(b"published")
    assert (await easel.client.get("/media/ab12.jpg")).status_code == 401
    assert (await easel.client.get("/media/inputs/../ab12.jpg")).status_code in (401, 404)


async def test_keys_are_needed_once_one_exists_even_when_not_required(easel_daemon) -> None:
    easel = await easel_daemon(FAST_SANDBOX + "\n[auth]\nkey_cache_seconds = 0\n")
    assert (await submit(easel, None)).status_code == 202  # no key yet: loopback dev mode
    token = await make_key(easel)
    assert (await submit(easel, None)).status_code == 401
    assert (await submit(easel, token)).status_code == 202


async def test_a_key_without_the_scope_is_403(easel_daemon) -> None:
    easel = await easel_daemon(KEYS)
    reader = await make_key(easel, "read")
    submitter = await make_key(easel, "submit,read")
    refused = await submit(easel, reader)
    assert refused.status_code == 403
    assert_error_shape(refused.json(), "FORBIDDEN")
    assert refused.json()["error"]["details"] == {"requiredScope": "submit"}
    assert 'scope="submit"' in refused.headers["WWW-Authenticate"]
    accepted = await submit(easel, submitter)
    assert accepted.status_code == 202
    job_id = accepted.json()["id"]
    # A reader cannot cancel either, even its own kind of job.
    assert (await easel.client.post(f"{GENERATION}/{job_id}/cancel",
                                    headers=bearer(reader))).status_code == 403
    for path in ("/api/health/detailed", "/api/metrics"):
        assert (await easel.client.get(path, headers=bearer(submitter))).status_code == 403


async def test_another_keys_job_is_404_like_an_unknown_one(easel_daemon) -> None:
    easel = await easel_daemon(KEYS)
    alice, bob = await make_key(easel), await make_key(easel)
    admin = await make_key(easel, "admin")
    job_id = (await submit(easel, alice)).json()["id"]
    with trio.fail_after(30):
        while True:
            job = (await easel.client.get(f"{GENERATION}/{job_id}", params={"wait": 10},
                                          headers=bearer(alice))).json()
            if job["status"] == "SUCCESS":
                break
    media = job["results"][0]["url"]
    assert (await easel.client.get(media, headers=bearer(alice))).status_code == 200
    assert (await easel.client.get(media, headers=bearer(admin))).status_code == 200

    unknown = "gen_" + "0" * 20
    for method, path in [("GET", f"{GENERATION}/{{}}"), ("GET", f"{GENERATION}/{{}}?wait=1"),
                         ("GET", f"{GENERATION}/{{}}/events"),
                         ("POST", f"{GENERATION}/{{}}/cancel"),
                         ("GET", "/media/{}/0.png")]:
        theirs = await easel.client.request(method, path.format(job_id), headers=bearer(bob))
        missing = await easel.client.request(method, path.format(unknown), headers=bearer(bob))
        assert theirs.status_code == missing.status_code == 404, (path, theirs.text)
        assert theirs.json() == json.loads(missing.text.replace(unknown, job_id)), path
    # Still there for its owner and for admin keys; bob's cancel changed nothing.
    for token in (alice, admin):
        mine = await easel.client.get(f"{GENERATION}/{job_id}/events", headers=bearer(token))
        assert mine.status_code == 200
    again = await easel.client.get(f"{GENERATION}/{job_id}", headers=bearer(alice))
    assert again.json()["status"] == "SUCCESS"


async def test_cancel_reaches_only_the_owners_running_job(easel_daemon) -> None:
    easel = await easel_daemon(SLOW)
    alice, bob = await make_key(easel), await make_key(easel)
    job_id = (await submit(easel, alice, "sandbox-video")).json()["id"]
    refused = await easel.client.post(f"{GENERATION}/{job_id}/cancel", headers=bearer(bob))
    assert refused.status_code == 404
    job = await easel.client.get(f"{GENERATION}/{job_id}", headers=bearer(alice))
    assert job.json()["status"] in ("PENDING", "PROCESSING")
    cancelled = await easel.client.post(f"{GENERATION}/{job_id}/cancel", headers=bearer(alice))
    assert cancelled.json()["status"] == "CANCELLED"


async def test_a_revoked_key_is_401(easel_daemon) -> None:
    easel = await easel_daemon(KEYS + "key_cache_seconds = 0\n")
    token = await make_key(easel)
    assert (await submit(easel, token)).status_code == 202
    [key] = await easel.runtime.store.list_keys()
    await easel.runtime.store.revoke_key(key.id)
    refused = await submit(easel, token)
    assert refused.status_code == 401
    assert_error_shape(refused.json(), "AUTHENTICATION_FAILED")


async def test_a_revocation_counts_within_the_cache_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_store(tmp_path / "easel.db") as store:
        ring = KeyRing(store, cache_seconds=1.0)
        key, token = new_key("k", parse_scopes("read"), KeyLimits(), wall_now())
        await store.create_key(key)
        assert await ring.any_exist()
        assert await ring.identify(token) == key
        assert await ring.identify(token + "x") is None
        assert await ring.identify(token.replace(key.id, "0" * 12)) is None
        await store.revoke_key(key.id)
        await trio.sleep(1.0)
        assert await ring.identify(token) is None


async def test_metrics_open_to_the_scrape_token_and_admin_keys(easel_daemon) -> None:
    easel = await easel_daemon(KEYS + 'metrics_token = "scrape-me"\n')
    admin = await make_key(easel, "admin")
    scraped = await easel.client.get("/api/metrics", headers=bearer("scrape-me"))
    assert scraped.status_code == 200 and "easel_jobs" in scraped.text
    assert (await easel.client.get("/api/metrics", headers=bearer(admin))).status_code == 200
    # The scrape token opens nothing else.
    for path in ("/api/health/detailed", f"{GENERATION}/gen_x"):
        assert (await easel.client.get(path, headers=bearer("scrape-me"))).status_code == 401
    detailed = await easel.client.get("/api/health/detailed", headers=bearer(admin))
    assert detailed.status_code == 200


def test_every_route_family_declares_what_it_needs(tmp_path: Path) -> None:
    app = create_app(object(), media_dir=tmp_path)  # type: ignore[arg-type]
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        family = rule.endpoint.partition(".")[0]
        assert rule.endpoint in NEEDS or family in NEEDS, f"{rule.rule}: declare it in NEEDS"


# -- refusing to start exposed -------------------------------------------------


def config_with(tmp_path: Path, bind: str, auth: str = "") -> config_module.Config:
    path = tmp_path / "easel.toml"
    path.write_text(f'[daemon]\nbind = ["{bind}"]\nstate_dir = "{tmp_path / "state"}"\n'
                    f"[auth]\n{auth}\n")
    return config_module.load(path, environ={})


@pytest.mark.parametrize("bind", ["127.0.0.1:8700", "127.0.0.2:8700", "[::1]:8700",
                                  "localhost:8700", "unix:/tmp/easel-test.sock"])
def test_loopback_binds_need_no_keys(tmp_path: Path, bind: str) -> None:
    assert exposure_problem(config_with(tmp_path, bind)) is None


@pytest.mark.parametrize("bind", ["0.0.0.0:8700", "[::]:8700", "192.168.1.5:8700",
                                  "easel.example.com:8700"])
def test_other_binds_need_keys_or_a_loud_override(tmp_path: Path, bind: str) -> None:
    problem = exposure_problem(config_with(tmp_path, bind))
    assert problem is not None and bind in problem and "\n" not in problem
    assert exposure_problem(config_with(tmp_path, bind, "require_keys = true")) is None
    assert exposure_problem(
        config_with(tmp_path, bind, "insecure_network_without_keys = true")) is None


async def test_an_embedded_daemon_on_a_network_address_without_keys_refuses(
    tmp_path: Path,
) -> None:
    config = config_with(tmp_path, f"0.0.0.0:{free_port()}")
    with pytest.raises(StartupError, match="require_keys"):
        await serve(config)
    assert not (tmp_path / "state").exists()  # nothing was made or read


def test_easel_run_on_a_network_address_without_keys_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    config_with(tmp_path, f"0.0.0.0:{free_port()}")
    for command in ("run", "check-config"):
        result = subprocess.run(
            [sys.executable, "-m", "daemon", command, "--config", str(tmp_path / "easel.toml")],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 2, result
        [line] = result.stderr.splitlines()
        assert line.startswith("easel: ") and "is not loopback" in line


# -- the command ---------------------------------------------------------------


async def easel_keys(config: Path, *args: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "daemon", "keys", *args, "--config", str(config)],
        cwd=PROJECT_ROOT, capture_stdout=True, capture_stderr=True, check=False,
    )


async def test_easel_keys_round_trip_against_a_running_daemon(
    easel_daemon, tmp_path: Path
) -> None:
    easel = await easel_daemon(KEYS + "key_cache_seconds = 0\n")
    config = tmp_path / "easel.toml"
    created = await easel_keys(config, "create", "--name", "ci runner", "--scope", "submit,read",
                               "--max-active", "3")
    assert created.returncode == 0, created.stderr
    token = created.stdout.decode().strip()
    assert token.startswith("easel_")
    assert (await submit(easel, token)).status_code == 202

    listed = await easel_keys(config, "list")
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout.decode()
    [key] = await easel.runtime.store.list_keys()
    assert key.id in text and "ci runner" in text and "read,submit" in text
    assert token not in text and token.rsplit("_", 1)[1] not in text and key.hash not in text
    assert key.limits == KeyLimits(max_active_jobs=3)

    revoked = await easel_keys(config, "revoke", key.id)
    assert revoked.returncode == 0, revoked.stderr
    assert (await submit(easel, token)).status_code == 401
    assert "REVOKED" in (await easel_keys(config, "list")).stdout.decode()
    unknown = await easel_keys(config, "revoke", "0" * 12)
    assert unknown.returncode == 1 and b"no key" in unknown.stderr
    bad = await easel_keys(config, "create", "--name", "x", "--scope", "everything")
    assert bad.returncode == 2 and b"unknown scope 'everything'" in bad.stderr


# -- quotas and backpressure ---------------------------------------------------


async def test_a_key_past_its_request_rate_is_429(easel_daemon) -> None:
    easel = await easel_daemon(KEYS)
    token = await make_key(easel, rate=0.01, burst=2)
    other = await make_key(easel)
    for _ in range(2):
        assert (await easel.client.get(f"{GENERATION}/gen_x",
                                       headers=bearer(token))).status_code == 404
    error = assert_rate_limited(
        await easel.client.get(f"{GENERATION}/gen_x", headers=bearer(token)), "rate")
    assert error["details"]["value"] == 0.01
    # Another key has its own bucket.
    assert (await easel.client.get(f"{GENERATION}/gen_x",
                                   headers=bearer(other))).status_code == 404


async def test_a_key_past_its_unfinished_jobs_is_429_until_one_ends(easel_daemon) -> None:
    easel = await easel_daemon(SLOW)
    token = await make_key(easel, max_active_jobs=2)
    other = await make_key(easel)
    ids = [(await submit(easel, token, "sandbox-video")).json()["id"] for _ in range(2)]
    error = assert_rate_limited(await submit(easel, token, "sandbox-video"), "max_active_jobs")
    assert error["details"]["value"] == 2
    assert (await submit(easel, other, "sandbox-video")).status_code == 202
    await easel.client.post(f"{GENERATION}/{ids[0]}/cancel", headers=bearer(token))
    with trio.fail_after(10):
        while (response := await submit(easel, token, "sandbox-video")).status_code == 429:
            await trio.sleep(0.01)
    assert response.status_code == 202


async def test_a_burst_of_submissions_does_not_overshoot(easel_daemon) -> None:
    easel = await easel_daemon(SLOW)
    token = await make_key(easel, max_active_jobs=3, rate=1000, burst=100)
    statuses: list[int] = []

    async def one(n: int) -> None:
        statuses.append((await submit(easel, token, "sandbox-video", f"take {n}")).status_code)

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(one, n)
    assert sorted(statuses) == [202] * 3 + [429] * 17


async def test_a_key_past_its_daily_spend_is_429(easel_daemon) -> None:
    easel = await easel_daemon(KEYS + "\n[models.sandbox-image]\ncost = 2\n")
    token = await make_key(easel, daily_spend=5)
    first = await submit(easel, token)
    assert first.status_code == 202 and first.json()["cost"] == 2
    assert (await submit(easel, token)).status_code == 202
    error = assert_rate_limited(await submit(easel, token), "daily_spend")
    assert error["details"]["value"] == 5
    assert int(error["details"]["retryAfter"]) <= 86_400


async def test_the_global_queue_depth_is_429_for_everyone(easel_daemon) -> None:
    easel = await easel_daemon(SLOW.replace("require_keys = true", "require_keys = false")
                               + "\n[limits]\nmax_queue_depth = 2\n")
    for _ in range(2):
        assert (await submit(easel, None, "sandbox-video")).status_code == 202
    error = assert_rate_limited(await submit(easel, None, "sandbox-video"), "max_queue_depth")
    assert error["isRetryable"] is True


async def test_unfinished_jobs_count_again_after_a_restart(easel_daemon, tmp_path: Path) -> None:
    first = await easel_daemon(SLOW, directory=tmp_path / "d")
    token = await make_key(first, max_active_jobs=1)
    assert (await submit(first, token, "sandbox-video")).status_code == 202
    first.stop.set()
    await first.done.wait()
    again = await easel_daemon(SLOW, directory=tmp_path / "d")
    assert_rate_limited(await submit(again, token, "sandbox-video"), "max_active_jobs")
