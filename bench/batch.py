"""Batches: how fast a big batch is accepted durably, what it costs in memory, and
what Easel adds per item when a batch runs through the sandbox.

Why: a batch is one request carrying thousands of generations; its 202 promises
every item is committed (one transaction). The target (issue 14): a 10,000-item
batch accepted in at most 0.5 s (20,000 items a second or more) with the daemon's
RSS growing by at most 50 MB, measured beside what SQLite itself does with the
same rows (``executemany`` in one transaction, same schema, same
``synchronous``) in the same run, so a slow machine reads as slow for both.

How, part one (acceptance): ``easel run`` as a subprocess on a fresh state dir,
the sandbox configured so nothing is released during the measure (the batch's
``notBefore`` is an hour away). A warm-up batch of 100 items, then the measured
JSONL batch of ``--items`` sandbox-image requests (distinct prompts, custom_ids),
posted over one connection; the time is from the request's first byte to the
202. The daemon's log line ``batch accepted`` splits it into checking (JSON,
every item validated as a submission), building the jobs, and storing them. RSS
is the daemon's ``VmRSS`` before and after, and its peak (``VmHWM``) after.
Then the raw SQLite figure: the same number of job rows, made by the same code
(``actors/batches/requests.py``, the store's row encoding), inserted with
``executemany`` into a fresh database migrated as the daemon's.

Part two (throughput): a second daemon with the sandbox opened wide, and
``--through`` items (default 100,000; sandbox-image, which draws a PNG for each)
in one batch with ``maxConcurrency`` at its maximum, until the batch ends. It
prints the wall time, items a second, and the daemon's CPU per item: Easel's
per-item cost (release, queue, submit, draw, store, finish), the scheduler and
batch actor included, as one figure.

The last line of part one is the target line::

    batch accept: items=10000 seconds=X (target <= 0.5) items_per_s=Y (target >= 20000)
    raw_sqlite_items_per_s=Z rss_growth_mb=W (target <= 50)

Run: ``python bench/batch.py [--items 10000] [--through 100000]``; ``--through 0``
skips part two. Figures only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.batches.model import BatchOptions, new_batch_id  # noqa: E402
from actors.batches.requests import (  # noqa: E402
    BatchLimits,
    Checks,
    ParsedBatch,
    batch_jobs,
    parse_batch,
)
from actors.catalog import ModelSpec  # noqa: E402
from actors.images.presets import PreprocessSettings  # noqa: E402
from actors.store import batches as batch_rows  # noqa: E402
from actors.store.migrations import connect, migrate  # noqa: E402
from bench.inflight import cpu_seconds, daemon_config, free_port, rss_mb, start, stop  # noqa: E402
from bench.queue_memory import wait_healthy  # noqa: E402

BATCH = "/api/external/generation/batch"
MODEL = "sandbox-image"
TARGET_SECONDS = 0.5
TARGET_RATE = 20_000
TARGET_RSS_MB = 50


def lines(count: int, tag: str) -> bytes:
    return "\n".join(json.dumps({"custom_id": f"{tag}-{n}", "modelIdentifier": MODEL,
                                 "prompt": f"product {n}, angle {n % 8}"})
                     for n in range(count)).encode()


def vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def logged(log: Path, batch_id: str) -> dict[str, Any]:
    """The daemon's ``batch accepted`` line for ``batch_id`` (its JSON log)."""
    for line in log.read_text(errors="replace").splitlines():
        if batch_id in line and "batch accepted" in line:
            try:
                return json.loads(line)  # type: ignore[no-any-return]
            except ValueError:
                continue
    return {}


def daemon(workdir: Path, name: str, sandbox: str) -> tuple[Any, str, Path]:
    state = workdir / name
    state.mkdir()
    port = free_port()
    config = state / "easel.toml"
    config.write_text(daemon_config(state, port).replace('level = "WARNING"', 'level = "INFO"')
                      + sandbox + """
[limits]
max_queue_depth = 0
max_active_jobs = 0
rate = 0

[batches]
max_concurrency = 1000
""")
    process = start(config, state / "stdout.log")
    base = f"http://127.0.0.1:{port}"
    wait_healthy(process, base, time.monotonic(), 60)
    return process, base, state / "logs" / "easel.log"


def accept(workdir: Path, count: int) -> None:
    process, base, log = daemon(workdir, "accept", "\n[providers.sandbox]\nrate = 1000\n")
    later = str(int(time.time()) + 3600)
    try:
        with httpx.Client(base_url=base, timeout=300) as client:
            def post(body: bytes) -> tuple[float, dict[str, Any]]:
                began = time.perf_counter()
                response = client.post(BATCH, content=body, params={"notBefore": later},
                                       headers={"Content-Type": "application/x-ndjson"})
                took = time.perf_counter() - began
                if response.status_code != 202:
                    raise SystemExit(f"{response.status_code}: {response.text[:500]}")
                return took, response.json()

            post(lines(100, "warm"))
            body = lines(count, "item")
            before = rss_mb(process.pid)
            took, answer = post(body)
            after, peak = rss_mb(process.pid), vm(process.pid, "VmHWM")
        parts = logged(log, answer["batchId"])
    finally:
        stop(process)
    raw = raw_sqlite(workdir, count)
    print(f"request: {len(body) / 1e6:.1f} MB of JSONL; daemon: check "
          f"{parts.get('checkSeconds', float('nan')):.3f} s, build "
          f"{parts.get('buildSeconds', float('nan')):.3f} s, store "
          f"{parts.get('storeSeconds', float('nan')):.3f} s; RSS {before:.0f} -> {after:.0f} MB "
          f"(peak {peak:.0f} MB)")
    print(f"raw sqlite: {count} rows by executemany in one transaction: {count / raw:,.0f} "
          f"rows/s ({raw:.3f} s)")
    print(f"batch accept: items={count} seconds={took:.3f} (target <= {TARGET_SECONDS}) "
          f"items_per_s={count / took:,.0f} (target >= {TARGET_RATE:,}) "
          f"raw_sqlite_items_per_s={count / raw:,.0f} rss_growth_mb={after - before:.1f} "
          f"(target <= {TARGET_RSS_MB}) peak_growth_mb={peak - before:.1f}", flush=True)


def raw_sqlite(workdir: Path, count: int) -> float:
    """Seconds SQLite takes to insert ``count`` job rows as the store encodes them,
    with the daemon's pragmas, in one transaction."""
    catalog = {MODEL: ModelSpec(provider="sandbox", provider_model=MODEL)}
    requests = [json.loads(line) for line in lines(count, "raw").splitlines()]
    parsed: ParsedBatch = parse_batch({"requests": requests},
                                      Checks(catalog, {}, {}, PreprocessSettings()),
                                      BatchLimits(max_items=max(1, min(count, 50_000))))
    parsed = ParsedBatch(BatchOptions(), parsed.items)
    jobs = batch_jobs(parsed, catalog, batch_id=new_batch_id(), owner=None)
    rows = batch_rows._item_rows(jobs)
    conn = connect(workdir / "raw.db")
    migrate(conn)
    began = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(batch_rows._INSERT_ITEMS, rows)
    conn.execute("COMMIT")
    took = time.perf_counter() - began
    conn.close()
    return took


def through(workdir: Path, count: int) -> None:
    process, base, _ = daemon(workdir, "through", """
[providers.sandbox]
rate = 100000
burst = 10000
max_in_flight = 1000
""")
    try:
        with httpx.Client(base_url=base, timeout=600) as client:
            ids = []
            began = time.perf_counter()
            cpu = cpu_seconds(process.pid)
            for first in range(0, count, 50_000):  # a batch holds 50,000 at most
                size = min(50_000, count - first)
                response = client.post(BATCH, content=lines(size, f"t{first}"),
                                       params={"maxConcurrency": "1000"},
                                       headers={"Content-Type": "application/x-ndjson"})
                if response.status_code != 202:
                    raise SystemExit(f"{response.status_code}: {response.text[:500]}")
                ids.append(response.json()["batchId"])
            done: dict[str, dict[str, Any]] = {}
            while len(done) < len(ids):
                time.sleep(1)
                for batch_id in ids:
                    batch = client.get(f"{BATCH}/{batch_id}", params={"limit": "1"}).json()
                    if batch["status"] != "PROCESSING":
                        done[batch_id] = batch
            wall = time.perf_counter() - began
            cpu = cpu_seconds(process.pid) - cpu
    finally:
        stop(process)
    succeeded = sum(batch["completedTasks"] for batch in done.values())
    print(f"batch through the sandbox: items={count} succeeded={succeeded} wall_s={wall:.1f} "
          f"items_per_s={count / wall:,.0f} per_item_ms={1000 * wall / count:.2f} "
          f"daemon_cpu_per_item_ms={1000 * cpu / count:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000,
                        help="items of the batch whose acceptance is timed (default 10000)")
    parser.add_argument("--through", type=int, default=100_000,
                        help="items run through the sandbox to completion (0: skip)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="easel-bench-batch-") as tmp:
        workdir = Path(tmp)
        accept(workdir, args.items)
        if args.through:
            through(workdir, args.through)


if __name__ == "__main__":
    main()
