"""The ``easel`` client commands against an embedded daemon: ``submit`` options say
what they do, ``--model`` is required and ``--timeout`` bounds ``--wait``; ``--wait``
shows the job's stages; ``--json`` prints the API's answer; the exit status says
what happened (0 done, 1 the job or the daemon said no, 2 usage, 3 unreachable).

The CLI runs as a real process (``trio.run_process``) so it talks HTTP to the daemon
running in the test's trio loop. Its stderr is not a terminal there, so progress is
plain lines; the live terminal display is tested on a rich Console forced to be one.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from rich.console import Console

from actors.jobs import JobState
from daemon import cli_output
from daemon.cli import parser
from tests.conftest import EmbeddedDaemon, free_port, write_config
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
    *progress, error = result.stderr.decode().splitlines()
    assert re.fullmatch(
        f"easel: TIMEOUT: job {job_id} still (PENDING|PROCESSING) after 1 s; it was not cancelled "
        f"\\(see: easel status {job_id}\\)",
        error,
    ), result.stderr
    assert progress and all(line.startswith(f"{job_id} ") for line in progress)
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


#: A sandbox video short enough to finish in a test, long enough to be seen RUNNING.
SHORT_VIDEO = """
[providers.sandbox]
video_duration = 3
"""


async def test_wait_without_a_terminal_prints_each_stage_in_order(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon(SHORT_VIDEO)
    with trio.fail_after(60):
        result = await easel("submit", "--url", daemon.base_url, "--model", "sandbox-video",
                             "--wait", "a blue ball")
    assert result.returncode == 0, result.stderr
    job_id, url = result.stdout.decode().split()
    assert url.startswith(f"{daemon.base_url}/media/{job_id}/")
    lines = result.stderr.decode().splitlines()
    # One line per change: no line repeats the one before it.
    assert all(a != b for a, b in zip(lines, lines[1:])), lines
    stages = []
    for line in lines:
        assert re.fullmatch(f"{job_id} [A-Z]+( [0-9]{{1,3}}%)?", line), line
        if (stage := line.split()[1]) not in stages:
            stages.append(stage)
    order = [state.value for state in JobState]
    assert stages == sorted(stages, key=order.index), stages
    assert "RUNNING" in stages and stages[-1] == "SUCCEEDED"
    assert lines[-1] == f"{job_id} SUCCEEDED 100%"


async def test_json_prints_what_the_api_answers(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon()
    with trio.fail_after(60):
        submitted = await easel("submit", "--url", daemon.base_url, "--model", "sandbox-image",
                                "--wait", "--json", "a green pear")
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)
        status = await easel("status", "--url", daemon.base_url, "--json", job["id"])
        events = await easel("events", "--url", daemon.base_url, "--json", job["id"])
        human = await easel("status", "--url", daemon.base_url, job["id"])
    api = daemon.client
    assert job == (await api.get(f"/api/external/generation/{job['id']}")).json()
    assert job["status"] == "SUCCESS"
    assert json.loads(status.stdout) == job
    assert json.loads(events.stdout) == (
        await api.get(f"/api/external/generation/{job['id']}/events")).json()
    assert json.loads(events.stdout)["events"]
    assert human.returncode == 0
    assert "status     SUCCESS (SUCCEEDED, 100%)" in human.stdout.decode()
    assert job["results"][0]["url"] in human.stdout.decode()


async def test_cancel_then_events_and_a_second_cancel_is_refused(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon(SLOW_VIDEO)
    job_id = (await daemon.submit({"modelIdentifier": "sandbox-video", "prompt": "slow"}))
    job_id = job_id.json()["id"]
    with trio.fail_after(60):
        cancelled = await easel("cancel", "--url", daemon.base_url, "--json", job_id)
        again = await easel("cancel", "--url", daemon.base_url, job_id)
        events = await easel("events", "--url", daemon.base_url, job_id)
        status = await easel("status", "--url", daemon.base_url, job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    job = json.loads(cancelled.stdout)
    assert job["status"] == "CANCELLED"
    assert (await daemon.client.get(f"/api/external/generation/{job_id}")).json()["status"] \
        == "CANCELLED"
    assert again.returncode == 1 and again.stdout == b""
    assert again.stderr == f"easel: CONFLICT: job {job_id} is already CANCELLED\n".encode()
    heading, *rows = events.stdout.decode().splitlines()
    assert heading.split() == ["AT", "EVENT", "DETAILS"] and rows
    # A cancelled job is shown, and the status says it did not succeed.
    assert status.returncode == 1 and b"CANCELLED" in status.stdout
    assert status.stderr.startswith(b"easel: TASK_CANCELLED: ")


async def test_a_failed_job_exits_1_with_its_error_code_on_one_line(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon()
    with trio.fail_after(60):
        result = await easel("submit", "--url", daemon.base_url, "--model", "sandbox-image",
                             "--wait", "[fail] a red apple")
    assert result.returncode == 1
    job_id = result.stdout.decode().strip()
    *_, error = result.stderr.decode().splitlines()
    assert error == f"easel: TASK_FAILED: job {job_id} FAILED: sandbox: the task failed as asked"


async def test_an_error_answer_exits_1_naming_its_code(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon()
    with trio.fail_after(60):
        result = await easel("status", "--url", daemon.base_url, "--json", "gen_nothing")
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"easel: NOT_FOUND: no job gen_nothing\n"


@pytest.mark.parametrize("command", [["status", "gen_x"], ["cancel", "gen_x"],
                                     ["events", "gen_x"], ["jobs"],
                                     ["submit", "--model", "sandbox-image", "a pear"]])
async def test_a_closed_port_exits_3(command: list[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with trio.fail_after(60):
        result = await easel(*command, "--url", url)
    assert (result.returncode, result.stdout) == (3, b"")
    assert result.stderr.decode().startswith(f"easel: UNREACHABLE: cannot reach the daemon at {url}")
    assert result.stderr.count(b"\n") == 1


async def test_a_missing_unix_socket_exits_3(tmp_path: Path) -> None:
    socket = tmp_path / "nobody.sock"
    config = write_config(tmp_path, daemon_toml="").read_text().replace(
        'bind = ["127.0.0.1:', f'bind = ["unix:{socket}", "127.0.0.1:')
    (tmp_path / "easel.toml").write_text(config)
    with trio.fail_after(60):
        result = await easel("jobs", "--config", str(tmp_path / "easel.toml"))
    assert result.returncode == 3
    assert result.stderr.decode().startswith(
        f"easel: UNREACHABLE: cannot reach the daemon at unix:{socket}: ")


@pytest.mark.parametrize("command", [["status", "--bogus", "gen_x"], ["jobs", "--limit", "x"],
                                     ["cancel"], ["nope"], ["jobs", "--url", "ftp://x"],
                                     ["events", "--url", "localhost:8700", "gen_x"]])
async def test_usage_errors_exit_2(command: list[str]) -> None:
    with trio.fail_after(60):
        result = await easel(*command)
    assert (result.returncode, result.stdout) == (2, b"")


async def test_the_api_key_option_is_sent_and_never_printed(
    easel_daemon: Callable[..., Awaitable[EmbeddedDaemon]],
) -> None:
    daemon = await easel_daemon("[auth]\nrequire_keys = true\n")
    with trio.fail_after(60):
        result = await easel("jobs", "--url", daemon.base_url, "--api-key", "easel_nope_secret")
    assert result.returncode == 1
    assert result.stderr.startswith(b"easel: AUTHENTICATION_FAILED: ")
    assert b"secret" not in result.stderr + result.stdout


def test_help_documents_the_exit_statuses() -> None:
    for command in [parser(), *subcommands().values()]:
        text = " ".join(command.format_help().split())
        assert "3 the daemon could not be reached" in text, command.prog


async def test_keys_list_and_check_config_print_json(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with trio.fail_after(60):
        created = await easel("keys", "create", "--config", str(config), "--name", "ci",
                              "--json")
        listed = await easel("keys", "list", "--config", str(config), "--json")
        checked = await easel("check-config", "--config", str(config), "--json")
    key = json.loads(created.stdout)
    assert key["key"].startswith(f"easel_{key['id']}_")
    [entry] = json.loads(listed.stdout)
    assert entry == {name: value for name, value in key.items() if name != "key"}
    assert entry["scopes"] == ["read", "submit"] and entry["revokedAt"] is None
    assert key["key"].encode() not in listed.stdout
    summary = json.loads(checked.stdout)
    assert "sandbox" in summary["providers"] and "sandbox-image" in summary["models"]


def test_the_terminal_display_shows_the_stage_and_progress() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with cli_output.progress(console) as show:
        show({"id": "gen_1", "stage": "QUEUED", "progress": None})
        show({"id": "gen_1", "stage": "RUNNING", "progress": 0.4})
    text = out.getvalue()
    assert "\x1b[" in text  # drawn for a terminal, not as plain lines
    assert "gen_1 RUNNING" in text and "40%" in text


def test_plain_lines_elsewhere_one_per_change() -> None:
    out = io.StringIO()
    with cli_output.progress(Console(file=out, force_terminal=False)) as show:
        for stage, progress in [("QUEUED", None), ("QUEUED", None), ("RUNNING", 0.101),
                                ("RUNNING", 0.109), ("RUNNING", 0.5), ("SUCCEEDED", 1.0)]:
            show({"id": "gen_1", "stage": stage, "progress": progress})
    assert out.getvalue().splitlines() == [
        "gen_1 QUEUED", "gen_1 RUNNING 10%", "gen_1 RUNNING 50%", "gen_1 SUCCEEDED 100%"]
