"""Where a sampled process spends its CPU: a text summary of py-spy's raw stacks.

Why: a flame graph shows the shape of the time, but a lead deciding what to change
needs numbers -- what share of the server's CPU goes to JSON, to logging, to the
store's thread hops -- that can be compared run to run and pasted into a report.

Input is ``py-spy record --format raw --threads`` output: one line per distinct
stack, ``thread (TID): NAME;frame;frame;... COUNT``, root first, each frame
``function (path:line)``. py-spy leaves out idle samples by default, so a sample is
a moment the thread was on the CPU (or about to be).

Three views, all in % of every sample of the process:

- by thread (the trio thread, the store's writer, the logging listener, ...);
- by category: each sample goes to the innermost frame whose file belongs to a
  category below (so ``json.dumps`` called from a route counts as JSON, and the
  route's own lines as the HTTP app);
- by function: self time (the innermost frame) and inclusive time (anywhere on the
  stack, once per sample) of the top functions, file and name without line numbers.

Run alone: ``python bench/stacks.py PROFILE.raw``; ``bench/submit.py --profile``
calls it after sampling Easel under wrk load.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: (category, path fragments): a frame belongs to the first category one of whose
#: fragments is in its file's path. Easel's own packages come last, so library
#: code called from them is charged to the library.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging (format, redact, queue)", ("logging/", "daemon/logs", "actors/redaction")),
    ("JSON encode/decode", ("json/",)),
    ("prometheus metrics", ("prometheus_client/",)),
    ("cattrs/attrs conversion", ("cattrs/", "attr/", "attrs/", "<attrs generated")),
    ("submission validation", ("actors/validation", "actors/parameters", "actors/catalog")),
    ("trio thread hops (to_thread, entry queue)", (
        "trio/_threads", "trio/_core/_thread_cache", "trio/_core/_entry_queue")),
    ("trio scheduler and sockets", ("trio/", "outcome/", "sniffio/")),
    ("h11 HTTP/1.1 parsing", ("h11/",)),
    ("hypercorn", ("hypercorn/",)),
    ("quart/werkzeug request handling", (
        "quart/", "quart_trio/", "werkzeug/", "flask/", "blinker/", "jinja2/")),
    ("easel store: rows, SQL calls, commits (any thread)", ("actors/store",)),
    ("easel HTTP app", ("daemon/",)),
    ("easel actors", ("actors/",)),
    ("python threading/queue", ("threading.py", "queue.py")),
)

_THREAD = re.compile(r"^thread \((?P<tid>[^)]*)\): (?P<name>.*)$")
_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::\d+)?\)$")


@dataclass(frozen=True)
class Stack:
    """One distinct stack of one thread and how many samples had it."""

    thread: str
    frames: tuple[str, ...]  # root first; "function (path)" without line numbers
    count: int


def load(path: Path) -> list[Stack]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        parts = body.split(";")
        thread = parts[0]
        match = _THREAD.match(thread)
        if match is not None:
            thread = f"{match['name']} ({match['tid']})"
        stacks.append(Stack(thread, tuple(_frame(f) for f in parts[1:]), int(count)))
    return stacks


def _frame(text: str) -> str:
    match = _FRAME.match(text)
    return text if match is None else f"{match['function']} ({match['path']})"


def _path(frame: str) -> str:
    return frame.rpartition(" (")[2].rstrip(")")


def category(frames: tuple[str, ...]) -> str:
    for frame in reversed(frames):
        path = _path(frame)
        for name, fragments in CATEGORIES:
            if any(fragment in path for fragment in fragments):
                return name
    return "other"


def group_of(thread: str) -> str:
    """The thread group ``bench/submit.py`` measures CPU by, from py-spy's thread
    label: ``main`` (the trio thread), ``trio workers`` (trio's ``to_thread`` pool,
    "Trio thread N", renamed "FUNCTION from TASK" while it runs a job), ``other``."""
    if thread.startswith("MainThread"):
        return "main"
    if thread.startswith("Trio thread") or " from " in thread:
        return "trio workers"
    return "other"


def sample_weights(stacks: list[Stack],
                   ms_by_group: dict[str, float] | None) -> dict[str, float]:
    """Milliseconds per request that one sample of each thread group stands for.

    py-spy counts a thread as busy while it is runnable or blocked in the kernel
    (an fsync, a lock handed over), so its shares overstate threads that mostly
    wait. Spreading each group's CPU as measured in /proc over that group's samples
    corrects this. Without measurements (``None``) every sample weighs 1.
    """
    samples: Counter = Counter()
    for s in stacks:
        samples[group_of(s.thread)] += s.count
    if ms_by_group is None:
        return {group: 1.0 for group in samples}
    return {group: ms_by_group.get(group, 0.0) / n for group, n in samples.items()}


def _tally(stacks: list[Stack], weights: dict[str, float], key: Any) -> Counter:
    counts: Counter = Counter()
    for s in stacks:
        weight = s.count * weights[group_of(s.thread)]
        for name in key(s):
            counts[name] += weight
    return counts


def _print_shares(title: str, counts: Counter, total: float, top: int, in_ms: bool) -> None:
    print(f"  {title}:")
    for name, n in counts.most_common(top):
        cost = f"{n:7.3f} ms/req  " if in_ms else ""
        print(f"    {100 * n / total:5.1f}%  {cost}{name}")


def print_summary(stacks: list[Stack], top: int = 25,
                  ms_by_group: dict[str, float] | None = None) -> None:
    """Shares by thread, category and function: of the server's CPU per request
    when ``ms_by_group`` (CPU ms per request by thread group) is given, else of
    the samples."""
    total = sum(s.count for s in stacks)
    if not total:
        print("  (no samples)")
        return
    weights = sample_weights(stacks, ms_by_group)
    in_ms = ms_by_group is not None
    print(f"  {total} samples; shares of the "
          f"{'CPU per request (each thread group scaled to its measured CPU)' if in_ms else 'samples'}")
    threads = _tally(stacks, weights, lambda s: [s.thread])
    everything = sum(threads.values()) or 1.0
    _print_shares("by thread", threads, everything, top, in_ms)
    _print_shares("by category (innermost matching frame)",
                  _tally(stacks, weights, lambda s: [category(s.frames)]), everything, top,
                  in_ms)
    _print_shares("self time by function",
                  _tally(stacks, weights, lambda s: s.frames[-1:]), everything, top, in_ms)
    _print_shares("inclusive time by function",
                  _tally(stacks, weights, lambda s: set(s.frames)), everything, top, in_ms)


def print_comparison(first: tuple[str, list[Stack], dict[str, float]],
                     second: tuple[str, list[Stack], dict[str, float]]) -> None:
    """Server CPU per request by category for two profiled servers, side by side:
    (name, stacks, CPU ms per request by thread group) each; the difference is what
    the first spends that the second does not."""
    (name1, stacks1, ms1), (name2, stacks2, ms2) = first, second
    by_category = lambda s: [category(s.frames)]  # noqa: E731
    cost1 = _tally(stacks1, sample_weights(stacks1, ms1), by_category)
    cost2 = _tally(stacks2, sample_weights(stacks2, ms2), by_category)
    rows = sorted(((name, cost1[name], cost2[name]) for name in set(cost1) | set(cost2)),
                  key=lambda row: row[2] - row[1])
    print(f"  {name1[:8]:>8} {name2[:8]:>8} {'diff':>8}  (CPU ms per request)")
    for name, a, b in rows:
        print(f"  {a:8.3f} {b:8.3f} {a - b:+8.3f}  {name}")
    total1, total2 = sum(cost1.values()), sum(cost2.values())
    print(f"  {total1:8.3f} {total2:8.3f} {total1 - total2:+8.3f}  all (live threads)")


def main(argv: list[str]) -> int:
    """``PROFILE.raw [THREAD]``: THREAD keeps only threads whose name contains it."""
    if len(argv) not in (1, 2):
        print("usage: python bench/stacks.py PROFILE.raw [THREAD]  (py-spy record "
              "--format raw --threads)", file=sys.stderr)
        return 2
    stacks = load(Path(argv[0]))
    if len(argv) == 2:
        stacks = [s for s in stacks if argv[1] in s.thread]
    print_summary(stacks)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
