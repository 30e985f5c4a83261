"""``easel batch ...`` against an embedded daemon: submit a JSONL file and follow it,
read its results, status, cancel and retry, exit statuses as every client
command's; and the progress display, live on a terminal and as lines elsewhere.

The CLI runs as a real process, so it talks HTTP to the daemon in the test's trio
loop (as tests/test_cli.py does)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from daemon import batch_command
from tests.conftest import free_port
from tests.test_batch_api import CONFIG, SLOW, ended
from tests.test_cli import easel


def jsonl(path: Path, *prompts: str, model: str = "sandbox-image") -> str:
    path.write_text("".join(json.dumps({"custom_id": f"i{n}", "modelIdentifier": model,
                                        "prompt": prompt}) + "\n"
                            for n, prompt in enumerate(prompts)))
    return str(path)


async def test_submit_wait_then_results_and_status(easel_daemon, tmp_path: Path) -> None:
    daemon = await easel_daemon(CONFIG)
    file = jsonl(tmp_path / "foxes.jsonl", "a red fox", "a blue fox", "a green fox")
    with trio.fail_after(120):
        done = await easel("batch", "submit", file, "--wait", "--max-concurrency", "2",
                           "--url", daemon.base_url)
    assert done.returncode == 0, done.stderr
    batch_id = done.stdout.decode().strip()
    assert batch_id.startswith("batch_")
    progress = done.stderr.decode().splitlines()
    assert progress[-1].startswith(f"{batch_id} COMPLETED done 3 failed 0")
    assert "/s, eta" in progress[-1]
    with trio.fail_after(60):
        results = await easel("batch", "results", batch_id, "--url", daemon.base_url)
        status = await easel("batch", "status", batch_id, "--url", daemon.base_url)
        as_json = await easel("batch", "status", "--json", batch_id, "--url", daemon.base_url)
    lines = [json.loads(line) for line in results.stdout.decode().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == ["i0", "i1", "i2"]
    assert status.returncode == 0 and "COMPLETED" in status.stdout.decode()
    assert json.loads(as_json.stdout)["completedTasks"] == 3


async def test_a_failed_item_exits_1_naming_the_batch_state(easel_daemon,
                                                           tmp_path: Path) -> None:
    daemon = await easel_daemon(CONFIG)
    file = jsonl(tmp_path / "b.jsonl", "fine", "x [fail]")
    with trio.fail_after(120):
        done = await easel("batch", "submit", file, "--wait", "--json", "--url",
                           daemon.base_url)
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "PARTIAL_FAILED"
    assert done.stderr.decode().splitlines()[-1].startswith("easel: PARTIAL_FAILED: batch ")
    with trio.fail_after(60):
        retried = await easel("batch", "retry", json.loads(done.stdout)["batchId"],
                              "--item", "i0", "--url", daemon.base_url)
    assert retried.returncode == 0 and "(repair 1)" in retried.stdout.decode()


async def test_dry_run_prints_the_estimate_and_stores_nothing(easel_daemon,
                                                             tmp_path: Path) -> None:
    daemon = await easel_daemon(CONFIG)
    file = jsonl(tmp_path / "b.jsonl", "one", "two")
    with trio.fail_after(60):
        people = await easel("batch", "submit", file, "--dry-run", "--url", daemon.base_url)
        machine = await easel("batch", "submit", file, "--dry-run", "--json", "--url",
                              daemon.base_url)
    assert people.returncode == 0
    assert people.stdout.decode().splitlines()[0] == "2 tasks, estimated cost 0.08"
    assert json.loads(machine.stdout)["estimatedCost"] == 0.08
    listed = (await daemon.client.get("/api/external/generation")).json()
    assert listed["data"] == []


async def test_a_json_file_takes_the_command_line_options(easel_daemon, tmp_path: Path) -> None:
    daemon = await easel_daemon(SLOW)
    file = tmp_path / "b.json"
    file.write_text(json.dumps({"requests": [
        {"modelIdentifier": "sandbox-video", "prompt": "slow"}] * 3,
        "options": {"maxConcurrency": 1, "priority": 5}}))
    with trio.fail_after(60):
        done = await easel("batch", "submit", str(file), "--max-concurrency", "2", "--json",
                           "--url", daemon.base_url)
    batch_id = json.loads(done.stdout)["batchId"]
    batch = (await daemon.client.get(f"/api/external/generation/batch/{batch_id}")).json()
    assert batch["options"]["maxConcurrency"] == 2 and batch["options"]["priority"] == 5
    with trio.fail_after(60):
        cancelled = await easel("batch", "cancel", batch_id, "--url", daemon.base_url)
        again = await easel("batch", "cancel", batch_id, "--url", daemon.base_url)
    assert cancelled.stdout.decode().strip() == f"{batch_id} CANCELLED"
    assert (await ended(daemon, batch_id))["status"] == "CANCELLED"
    assert again.returncode == 1 and again.stderr.startswith(b"easel: CONFLICT: ")
    with trio.fail_after(60):
        status = await easel("batch", "status", batch_id, "--url", daemon.base_url)
    assert status.returncode == 1 and b"easel: CANCELLED: " in status.stderr


async def test_errors_and_usage_exit_as_every_command(easel_daemon, tmp_path: Path) -> None:
    daemon = await easel_daemon(CONFIG)
    with trio.fail_after(60):
        missing = await easel("batch", "status", "batch_nope", "--url", daemon.base_url)
        unreachable = await easel("batch", "status", "batch_x", "--url",
                                  f"http://127.0.0.1:{free_port()}")
        no_file = await easel("batch", "submit", str(tmp_path / "none.jsonl"), "--url",
                              daemon.base_url)
        timeout = await easel("batch", "submit", "x.jsonl", "--timeout", "5")
        bad = await easel("batch", "submit", jsonl(tmp_path / "b.jsonl", ""), "--url",
                          daemon.base_url)
    assert missing.returncode == 1 and missing.stderr.startswith(b"easel: NOT_FOUND: ")
    assert unreachable.returncode == 3 and unreachable.stderr.startswith(b"easel: UNREACHABLE")
    assert no_file.returncode == 2 and no_file.stderr.startswith(b"easel: batch: cannot read")
    assert timeout.returncode == 2 and b"--timeout bounds --wait" in timeout.stderr
    assert bad.returncode == 1
    assert bad.stderr.startswith(b"easel: INVALID_PARAMETERS: item 0 (i0): prompt: ")


def reading(done: int, failed: int = 0, running: int = 0, total: int = 10,
            status: str = "PROCESSING") -> dict[str, Any]:
    return {"batchId": "batch_1", "status": status, "totalTasks": total,
            "completedTasks": done, "failedTasks": failed, "cancelledTasks": 0,
            "runningTasks": running, "waitingTasks": total - done - failed - running}


def test_the_terminal_bar_shows_counts_rate_and_time_left() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    with batch_command.progress(console) as show:
        show(reading(0, running=3))
        show(reading(4, failed=1, running=3))
    text = out.getvalue()
    assert "\x1b[" in text
    assert "5/10" in text and "done 4 failed 1 running 3 waiting 2" in text
    assert "/s" in text and "ETA" in text


def test_plain_lines_elsewhere_one_per_change() -> None:
    out = io.StringIO()
    with batch_command.progress(Console(file=out, force_terminal=False)) as show:
        for shown in (reading(0, running=2), reading(0, running=2), reading(5, running=2),
                      reading(10, status="COMPLETED")):
            show(shown)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "batch_1 PROCESSING done 0 failed 0 running 2 waiting 8",
        "batch_1 PROCESSING done 5 failed 0 running 2 waiting 3",
        "batch_1 COMPLETED done 10 failed 0 running 0 waiting 0"]
    assert lines[1].split(" (")[1].startswith("5/10, ")
    assert lines[-1].endswith("eta -)")
