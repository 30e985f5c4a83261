"""``easel batch``: submit a file of requests as one batch, follow it, read it back.

    easel batch submit FILE [--wait [--timeout S]] [--json] [options]
    easel batch status|cancel [--json] ID
    easel batch retry [--item CUSTOM_ID ...] [--json] ID
    easel batch results [--output FILE] ID

``FILE`` is JSONL (one request per line, ``custom_id`` on each; ``-`` reads
stdin), sent as ``application/x-ndjson`` with the options as query parameters, or
a ``.json`` file holding ``{requests, options}`` whose options the command's own
override. ``submit`` prints the batch id; with ``--wait`` it follows the batch on
stderr (a live bar on a terminal: done, failed and running counts, the rate and
the time left; plain lines elsewhere) until it ends. ``results`` writes the API's
JSONL as it streams, one line per finished item in completion order.

Exit status as every client command's (``daemon/cli.py``): 0 done (a waited batch
COMPLETED); 1 a batch ended FAILED, PARTIAL_FAILED or CANCELLED (``submit
--wait``, ``status``), the wait ran out, or the daemon answered an error; 2 bad
arguments; 3 the daemon could not be reached; 130 interrupted while waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from daemon.cli import (
    _REFRESH,
    DEFAULT_WAIT_TIMEOUT,
    EXIT_FAILED,
    EXIT_HELP,
    EXIT_INTERRUPTED,
    CommandFailed,
    Daemon,
    _daemon,
    _fail,
    wait_timeout,
)

PATH = "/api/external/generation/batch"
#: A batch's states that are an end, and those of them that are not a success.
ENDED = ("COMPLETED", "PARTIAL_FAILED", "FAILED", "CANCELLED")
ENDED_BADLY = ("PARTIAL_FAILED", "FAILED", "CANCELLED")

#: Shows one reading of a batch (the API's JSON of it).
Show = Callable[[Mapping[str, Any]], None]


def _batch_path(batch_id: str, action: str = "") -> str:
    return f"{PATH}/{quote(batch_id, safe='')}{action}"


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The batch options given on the command line, by their API names."""
    given = {"maxConcurrency": args.max_concurrency, "priority": args.priority,
             "notBefore": args.not_before, "deadline": args.deadline,
             "webhookUrl": args.webhook_url}
    options = {name: value for name, value in given.items() if value is not None}
    for flag, name, value in ((args.sequential, "parallel", False),
                              (args.stop_on_error, "stopOnError", True),
                              (args.item_webhooks, "itemWebhooks", True)):
        if flag:
            options[name] = value
    return options


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(_fail([f"cannot read {path}: {exc.strerror or exc}"], "batch")) from None


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The POST's arguments: a JSON body with the options merged in, or the JSONL
    file as it is with the options in the query string."""
    raw = _read(args.file)
    options = _options(args)
    if args.file.endswith(".json"):
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise SystemExit(_fail([f"{args.file}: not JSON: {exc}"], "batch")) from None
        if not isinstance(body, dict):
            raise SystemExit(_fail([f"{args.file}: expected {{requests, options}}"], "batch"))
        if isinstance(body.get("options", {}), dict):
            body["options"] = {**body.get("options", {}), **options}
        if args.dry_run:
            body["dryRun"] = True
        return {"json": body}
    query = {name: str(value).lower() if isinstance(value, bool) else str(value)
             for name, value in options.items()}
    if args.dry_run:
        query["dryRun"] = "true"
    return {"content": raw, "params": query,
            "headers": {"Content-Type": "application/x-ndjson"}}


def submit(args: argparse.Namespace) -> int:
    timeout = wait_timeout(args, "batch")
    sent = _request(args)
    with _daemon(args) as daemon:
        answer = daemon.call("POST", PATH, **sent)
        if args.dry_run:
            print(json.dumps(answer, indent=2) if args.json else estimate_summary(answer))
            return 0
        if not args.json:
            print(answer["batchId"], flush=True)
        batch = answer
        if args.wait:
            try:
                batch = _wait(daemon, answer["batchId"], timeout)
            except KeyboardInterrupt:
                raise CommandFailed(EXIT_INTERRUPTED, "INTERRUPTED",
                                    f"stopped waiting; batch {answer['batchId']} goes on "
                                    f"(cancel it with: easel batch cancel "
                                    f"{answer['batchId']})") from None
    if args.json:
        print(json.dumps(batch, indent=2))
    if args.wait and batch["status"] in ENDED_BADLY:
        raise _ended_badly(batch)
    return 0


def _ended_badly(batch: Mapping[str, Any]) -> CommandFailed:
    return CommandFailed(EXIT_FAILED, str(batch["status"]),
                         f"batch {batch['batchId']} {batch['status']}: "
                         f"{batch.get('completedTasks')} of {batch.get('totalTasks')} succeeded, "
                         f"{batch.get('failedTasks')} failed, {batch.get('cancelledTasks')} "
                         f"cancelled (see: easel batch results {batch['batchId']})")


def _wait(daemon: Daemon, batch_id: str, timeout: float) -> dict[str, Any]:
    """The batch once it ends, its counts shown on stderr meanwhile (read every
    ``_REFRESH`` seconds, one task a page: only the counts are wanted)."""
    deadline = time.monotonic() + timeout
    with progress(Console(stderr=True)) as show:
        while True:
            batch = daemon.call("GET", _batch_path(batch_id), params={"limit": "1"})
            show(batch)
            if batch["status"] in ENDED:
                return batch
            if time.monotonic() >= deadline:
                raise CommandFailed(EXIT_FAILED, "TIMEOUT",
                                    f"batch {batch_id} still {batch['status']} after "
                                    f"{timeout:g} s; it was not cancelled (see: easel batch "
                                    f"status {batch_id})")
            time.sleep(_REFRESH)


def _finished(batch: Mapping[str, Any]) -> int:
    return int(batch.get("completedTasks", 0)) + int(batch.get("failedTasks", 0)) + int(
        batch.get("cancelledTasks", 0))


def counts_line(batch: Mapping[str, Any]) -> str:
    """``done 120 failed 3 running 10 waiting 867``."""
    return (f"done {batch.get('completedTasks', 0)} failed {batch.get('failedTasks', 0)} "
            f"running {batch.get('runningTasks', 0)} waiting {batch.get('waitingTasks', 0)}")


@contextmanager
def progress(console: Console) -> Iterator[Show]:
    """A ``Show`` for ``console``: on a terminal a live bar (finished of total,
    the counts, rate and time left, computed by rich from the finished count);
    elsewhere a plain line each time the counts change, with the rate and ETA."""
    if not console.is_terminal:
        yield _lines(console.file)
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("batch", total=None, counts="", rate="")
        started = time.monotonic()

        def show(batch: Mapping[str, Any]) -> None:
            done = _finished(batch)
            elapsed = max(time.monotonic() - started, 1e-6)
            bar.update(task, description=f"{batch['batchId']} {batch['status']}",
                       total=batch.get("totalTasks") or None, completed=done,
                       counts=counts_line(batch), rate=f"{done / elapsed:.1f}/s")

        yield show


def _lines(stream: TextIO) -> Show:
    last: list[str] = []
    started = time.monotonic()
    first: list[int] = []

    def show(batch: Mapping[str, Any]) -> None:
        line = f"{batch['batchId']} {batch['status']} {counts_line(batch)}"
        if last == [line]:
            return
        last[:] = [line]
        done, total = _finished(batch), int(batch.get("totalTasks", 0))
        if not first:
            first.append(done)
        elapsed = time.monotonic() - started
        rate = (done - first[0]) / elapsed if elapsed > 0 else 0.0
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and batch["status"] not in ENDED \
            else "-"
        print(f"{line} ({done}/{total}, {rate:.1f}/s, eta {eta})", file=stream, flush=True)

    return show


def summary(batch: Mapping[str, Any]) -> str:
    """A batch for people: its state, counts, options and times."""
    lines = [("batch", batch["batchId"]), ("status", batch["status"]),
             ("tasks", f"{_finished(batch)}/{batch.get('totalTasks')} finished "
                       f"({batch.get('progress')}%)"),
             ("counts", counts_line(batch) + f" cancelled {batch.get('cancelledTasks', 0)}"
                        f" upstream-failed {batch.get('upstreamFailedTasks', 0)} expired "
                        f"{batch.get('expiredTasks', 0)}"),
             ("cost", batch.get("estimatedCost")), ("repairs", batch.get("repairs")),
             ("stopped", batch.get("stoppedReason")), ("created", batch.get("createdAt")),
             ("completed", batch.get("completedAt"))]
    return "\n".join(f"{name:<10} {value}" for name, value in lines if value is not None)


def estimate_summary(answer: Mapping[str, Any]) -> str:
    """A dry run's estimate for people: the total and the cost per model."""
    lines = [f"{answer['totalTasks']} tasks, estimated cost {answer['estimatedCost']:g}"]
    for model, figures in answer.get("byModel", {}).items():
        lines.append(f"  {model}: {figures['tasks']} tasks, {figures['cost']:g}")
    if answer.get("unpricedModels"):
        lines.append("no price in the catalog (counted as 0): "
                     + ", ".join(answer["unpricedModels"]))
    return "\n".join(lines)


def _action(method: str, action: str, people: Callable[[Mapping[str, Any]], str],
            failing: bool = False) -> Callable[[argparse.Namespace], int]:
    """A command that calls ``method`` on the batch's ``action`` and prints the
    batch (``--json``: as the API answers it); ``failing``: exit 1 for a batch
    that ended badly. ``--item`` (retry) becomes the body's ``items``."""

    def run(args: argparse.Namespace) -> int:
        named = getattr(args, "item", None)
        sent = {"json": {"items": named}} if named else {}
        with _daemon(args) as daemon:
            batch = daemon.call(method, _batch_path(args.id, action), **sent)
        print(json.dumps(batch, indent=2) if args.json else people(batch))
        if failing and batch["status"] in ENDED_BADLY:
            raise _ended_badly(batch)
        return 0

    return run


status = _action("GET", "", summary, failing=True)
cancel = _action("POST", "/cancel", lambda batch: f"{batch['batchId']} {batch['status']}")
retry = _action("POST", "/retry", lambda batch: f"{batch['batchId']} {batch['status']} "
                                                f"(repair {batch.get('repairs')})")


def results(args: argparse.Namespace) -> int:
    """Copy the results' JSONL to stdout (or ``--output``) as it streams."""
    with _daemon(args) as daemon:
        out = sys.stdout.buffer if args.output is None else Path(args.output).open("wb")
        try:
            daemon.stream("GET", _batch_path(args.id, "/results"), out)
        finally:
            if args.output is not None:
                out.close()
    return 0


def add_commands(sub: Any, client: Callable[..., argparse.ArgumentParser]) -> None:
    """``easel batch ACTION`` under ``sub`` (the ``easel`` command's subparsers);
    ``client`` adds a command that talks to a daemon (``--url``, ``--api-key``)."""
    b = sub.add_parser("batch", help="submit and follow batches of generations",
                       description="submit a file of requests as one batch, follow it, "
                                   "cancel or repair it, read its results as JSONL",
                       epilog=EXIT_HELP)
    actions = b.add_subparsers(dest="batch_command", required=True, metavar="ACTION",
                               help="submit, status, cancel, retry or results")
    s = client(actions, "submit", "submit a JSONL (or .json) file as one batch and print "
                                  "its id", "print the API's answer (with --wait: the batch "
                                            "once it ended) instead of the id")
    s.add_argument("file", help="JSONL: one request per line with its custom_id ('-': "
                                "stdin); or a .json file holding {requests, options}")
    s.add_argument("--wait", action="store_true",
                   help="follow the batch until it ends, its counts, rate and time left "
                        "on stderr (exit 1 unless it COMPLETED)")
    s.add_argument("--timeout", type=float, metavar="SECONDS",
                   help=f"with --wait: stop waiting after SECONDS and exit 1, leaving the "
                        f"batch running (default: {DEFAULT_WAIT_TIMEOUT:g})")
    s.add_argument("--max-concurrency", type=int, metavar="N",
                   help="items of the batch queued or running at once (default: 3)")
    s.add_argument("--sequential", action="store_true",
                   help="run the items one at a time, in the file's order")
    s.add_argument("--stop-on-error", action="store_true",
                   help="after the first failed item, cancel the items not started")
    s.add_argument("--priority", type=int, metavar="N",
                   help="priority of the items that set none (-1000 to 1000)")
    s.add_argument("--not-before", metavar="TIME",
                   help="start no item before TIME (ISO 8601 with a zone, or Unix seconds)")
    s.add_argument("--deadline", metavar="TIME",
                   help="items not started by TIME end EXPIRED")
    s.add_argument("--webhook-url", metavar="URL", help="where the batch's end is posted")
    s.add_argument("--item-webhooks", action="store_true",
                   help="also post each item's end to --webhook-url")
    s.add_argument("--dry-run", action="store_true",
                   help="check the batch and print its estimated cost; store nothing")
    s.set_defaults(func=submit)
    for name, func, help_, json_help in (
        ("status", status, "show a batch's state and counts (exit 1 when it ended FAILED, "
                           "PARTIAL_FAILED or CANCELLED)", "print the batch as the API "
                                                           "answers it, first page of tasks"),
        ("cancel", cancel, "cancel a batch: items not started are cancelled",
         "print the batch as the API answers it"),
        ("retry", retry, "run a batch's failed, expired and upstream-failed items again",
         "print the batch as the API answers it"),
        ("results", results, "write a batch's finished items as JSONL, in completion order",
         None),
    ):
        one = client(actions, name, help_, json_help)
        one.add_argument("id", help="the batch id `batch submit` printed (batch_...)")
        one.set_defaults(func=func)
        if name == "retry":
            one.add_argument("--item", action="append", metavar="CUSTOM_ID",
                             help="also run this item again (repeatable)")
        if name == "results":
            one.add_argument("--output", metavar="FILE",
                             help="write to FILE instead of stdout")
