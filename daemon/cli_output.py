"""What the ``easel`` client commands print for people: a job's progress while
``submit --wait`` waits, a job, its events, and aligned tables.

Progress goes to stderr, so stdout keeps only what a script reads (the job id, the
output URLs, or the JSON of ``--json``). On a terminal it is a live line drawn by
``rich`` (a spinner, the job's stage, a bar and the percentage when the provider
reports one); anywhere else it is plain text, one line per change of stage or of
whole percent, so a log or a CI job shows the same history without escape codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from actors.jobs import iso

#: Shows one reading of a job (the API's JSON of it).
Show = Callable[[Mapping[str, Any]], None]


def percent(job: Mapping[str, Any]) -> int | None:
    """The job's progress in whole percent, None while its provider reports none."""
    progress = job.get("progress")
    if not isinstance(progress, int | float):
        return None
    return max(0, min(100, int(progress * 100)))


def stage_line(job: Mapping[str, Any]) -> str:
    """``gen_… RUNNING 40%``: the job, its stage and its progress when known."""
    line = f"{job['id']} {job['stage']}"
    done = percent(job)
    return line if done is None else f"{line} {done}%"


@contextmanager
def progress(console: Console) -> Iterator[Show]:
    """A ``Show`` for ``console``: a live rich line on a terminal, plain lines
    elsewhere. The live line is left showing the last reading when the block ends."""
    if not console.is_terminal:
        yield _lines(console.file)
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("submitted", total=None)

        def show(job: Mapping[str, Any]) -> None:
            done = percent(job)
            # No percentage yet: an indeterminate (pulsing) bar, not a false 0%.
            bar.update(task, description=f"{job['id']} {job['stage']}",
                       total=None if done is None else 100, completed=done or 0)

        yield show


def _lines(stream: TextIO) -> Show:
    last: list[str] = []

    def show(job: Mapping[str, Any]) -> None:
        line = stage_line(job)
        if last != [line]:
            last[:] = [line]
            print(line, file=stream, flush=True)

    return show


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows (the first one the headings) as aligned plain text, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def when(at: Any) -> str:
    """An event's ``at`` (Unix seconds) as UTC ISO 8601; anything else as it is."""
    return str(iso(at) if isinstance(at, int | float) else at)


def events_table(events: Sequence[Mapping[str, Any]]) -> str:
    """A job's events, oldest first: when, what, and the rest as ``key=value`` (a
    value that is not a string as JSON)."""
    rows = [["AT", "EVENT", "DETAILS"]]
    for event in events:
        details = " ".join(
            f"{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in event.items() if key not in ("at", "kind"))
        rows.append([when(event.get("at")), str(event.get("kind")), details])
    return table(rows)


def job_summary(job: Mapping[str, Any]) -> str:
    """A job for people: its status and stage, model, times, error and outputs."""
    done = percent(job)
    status = f"{job['status']} ({job['stage']}{f', {done}%' if done is not None else ''})"
    lines = [("id", job["id"]), ("status", status),
             ("model", job.get("modelIdentifier")), ("provider", job.get("provider")),
             ("created", job.get("createdAt")), ("completed", job.get("completedAt"))]
    error = job.get("error")
    if error:
        lines.append(("error", f"{error.get('code')}: {error.get('message')}"))
    lines += [("output", result.get("url")) for result in job.get("results") or ()]
    return "\n".join(f"{name:<10} {value}" for name, value in lines if value is not None)
