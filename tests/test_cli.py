"""The ``easel`` client commands against an embedded daemon: ``submit`` options say
what they do, ``--model`` is required and ``--timeout`` bounds ``--wait``.

The CLI runs as a real process (``trio.run_process``) so it talks HTTP to the daemon
running in the test's trio loop.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable

import pytest
import trio

from daemon.cli import parser
from tests.conftest import EmbeddedDaemon
from tests.process import PROJECT_ROOT

#: A sandbox video that takes an hour: a job that is certainly still running when a
#: short ``--timeout`` runs out.
SLOW_VIDEO = """
[providers.sandbox]
video_duration = 3600
"""


async def easel(*args: str) -> trio.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "daemon", *args],
        cwd=PROJECT_ROOT, capture_stdout=True, capture_stderr=True, check=False,
    )


def subcommands() -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_has_help(command: str) -> None:
    for action in subcommands()[command]._actions:
        assert action.help, f"easel {command} {action.option_strings or action.dest}: no help"


def test_submit_help_says_what_timeout_bounds_and_that_model_is_required() -> None:
    text = subcommands()["submit"].format_help()
    assert "--model MODEL" in text and "[--model MODEL]" not in text
    assert "with --wait: stop waiting after SECONDS" in text
    assert "(default: 1800)" in text


async def test_submit_without_model_is_a_usage_error() -> None:
    result = await easel("submit", "--url", "http://127.0.0.1:9", "a red apple")
    assert result.returncode == 2
    assert b"the following arguments are required: --model" in result.stderr


async def test_timeout_without_wait_is_refused() -> None:
    result = await easel("submit", "--url", "http://127.0.0.1:9", "--model", "sandbox-image",
                         "--timeout", "5", "a red apple")
    assert result.returncode == 2
    assert result.stderr == b"easel: submit: --timeout bounds --wait; give both or neither\n"


async def test_timeout_ends_the_wait_and_leaves_the_job_running(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon(SLOW_VIDEO)
    # Generous, and still well under the 60 s a status long-poll may last: before
    # --timeout bounded each wait, the first long-poll alone outlived it.
    with trio.fail_after(50):
        result = await easel("submit", "--url", daemon.base_url, "--model", "sandbox-video",
                             "--wait", "--timeout", "1", "a slow video")
    assert result.returncode == 1, result.stderr
    job_id = result.stdout.decode().strip()
    assert job_id.startswith("gen_")
    assert re.fullmatch(
        f"easel: job {job_id} still (PENDING|PROCESSING) after 1 s; it was not cancelled "
        f"\\(see: easel status {job_id}\\)\n",
        result.stderr.decode(),
    ), result.stderr
    job = (await daemon.client.get(f"/api/external/generation/{job_id}")).json()
    assert job["status"] in ("PENDING", "PROCESSING")


async def test_submit_wait_prints_the_outputs(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon()
    with trio.fail_after(120):
        result = await easel("submit", "--url", daemon.base_url, "--model", "sandbox-image",
                             "--wait", "--timeout", "100", "a red apple")
    assert result.returncode == 0, result.stderr
    job_id, url = result.stdout.decode().split()
    assert url.startswith(f"{daemon.base_url}/media/{job_id}/")


async def test_jobs_lists_as_a_table_and_as_json(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon()
    ids = [(await daemon.submit({"modelIdentifier": "sandbox-image", "prompt": f"pear {n}"}))
           .json()["id"] for n in range(3)]
    with trio.fail_after(60):
        table = await easel("jobs", "--url", daemon.base_url, "--limit", "2",
                            "--model", "sandbox-image")
        as_json = await easel("jobs", "--url", daemon.base_url, "--json", "--status", "DONE")
    assert table.returncode == 0, table.stderr
    heading, first, second, more = table.stdout.decode().splitlines()
    assert heading.split() == ["ID", "STATUS", "STAGE", "MODEL", "PROVIDER", "CREATED", "PROMPT"]
    assert first.startswith(ids[2]) and "pear 2" in first and second.startswith(ids[1])
    assert more.startswith("(more: easel jobs --cursor ")
    assert as_json.returncode == 1
    assert as_json.stderr.startswith(b"easel: INVALID_REQUEST: status: unknown status 'DONE'")
    page = json.loads((await easel("jobs", "--url", daemon.base_url, "--json")).stdout)
    assert [job["id"] for job in page["data"]] == ids[::-1] and page["hasMore"] is False
