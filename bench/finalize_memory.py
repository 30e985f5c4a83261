"""Peak memory while finalizing large videos at once.

Why: a video output can be hundreds of MB and eight jobs may finalize together.
Held whole in memory (as before outputs were streamed) that is gigabytes; streamed
to a staging file and stored from the file it should be a few MB per download.
Target (issue "Media done right"): eight 150 MB videos at once stay under 150 MB
above idle.

How: one process holds a real store, the storage backend and the finalizer actor,
as the daemon does (the part measured). A separate ``python -m http.server``
process serves a generated video file (an MP4 ``ftyp`` box, then noise) over HTTP
on loopback, so its memory is not counted. N jobs are put in FINALIZING, each with
its own URL of that file, and the finalizer takes them up at once. The process's
resident set size is sampled every 20 ms, and its peak (``VmHWM``, reset once idle)
read at the end. ``--backend s3`` stores into moto's S3 server (a subprocess too)
in parts.

The last line is ``videos=N size_mb=S backend=B idle_rss_mb=X peak_rss_mb=Y
above_idle_mb=Z (target < 150) seconds=T``. Figures only; nothing here asserts.

Run: ``python bench/finalize_memory.py [--videos 8] [--size-mb 150] [--backend local|s3]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from actors.finalizer import Finalizer, MediaSettings  # noqa: E402
from actors.jobs import Job, JobState, new_job_id  # noqa: E402
from actors.lifecycle import Lifecycle  # noqa: E402
from actors.monitor import Monitor  # noqa: E402
from actors.storage import LocalStorage, MeteredStorage, S3Settings, Storage  # noqa: E402
from actors.store import open_store  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.s3server import BUCKET, CREDENTIALS, MotoServer  # noqa: E402
from tests.storage_contract import video_file  # noqa: E402

_MIB = 1024 * 1024


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` figure (``VmRSS``, ``VmHWM``), in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


async def sample(peak: list[int]) -> None:
    while True:
        peak[0] = max(peak[0], status_kb("VmRSS"))
        await trio.sleep(0.02)


async def run(args: argparse.Namespace, work: Path, base: str, moto: MotoServer | None) -> str:
    monitor = Monitor()
    backend: Storage
    if moto is not None:
        from actors.storage.s3 import S3Storage

        backend = S3Storage(S3Settings(
            bucket=BUCKET, endpoint_url=moto.url, region="us-east-1", addressing_style="path",
            access_key_id=CREDENTIALS["aws_access_key_id"],
            secret_access_key=CREDENTIALS["aws_secret_access_key"]))
    else:
        backend = LocalStorage(work / "media")
    storage = MeteredStorage(backend, monitor)
    async with open_store(work / "easel.db") as store:
        await storage.probe()  # the s3 client is built: part of idle, as in the daemon
        finalizer = Finalizer(
            store, storage, Lifecycle(), monitor, changes=store.subscribe(),
            staging=work / "staging",
            settings=MediaSettings(max_video_bytes=args.size_mb * _MIB + _MIB,
                                   allow_private_downloads=True, concurrency=args.videos),
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(finalizer.run)
            await trio.sleep(0.5)
            idle = status_kb("VmRSS")
            reset_peak()
            peak = [idle]
            nursery.start_soon(sample, peak)
            started = time.perf_counter()
            ids = []
            for n in range(args.videos):
                job = Job(id=new_job_id(), model="sandbox-video", provider="sandbox",
                          provider_model="sandbox-video", prompt="p")
                await store.insert_job(job)
                await store.transition(job.id, JobState.QUEUED, JobState.FINALIZING,
                                       provider_outputs=[f"{base}/video.mp4?n={n}"])
                ids.append(job.id)
            while True:
                jobs = [await store.get_job(i) for i in ids]
                if all(j is not None and j.state is not JobState.FINALIZING for j in jobs):
                    break
                await trio.sleep(0.1)
            seconds = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        await finalizer.aclose()
        await storage.aclose()
    states = {j.state.value for j in jobs if j is not None}
    top = max(peak[0], status_kb("VmHWM"))
    return (f"videos={args.videos} size_mb={args.size_mb} backend={args.backend} "
            f"states={','.join(sorted(states))} idle_rss_mb={idle / 1024:.0f} "
            f"peak_rss_mb={top / 1024:.0f} above_idle_mb={(top - idle) / 1024:.0f} "
            f"(target < 150) seconds={seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--size-mb", type=int, default=150)
    parser.add_argument("--backend", choices=("local", "s3"), default="local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="easel-finalize-") as tmp:
        work = Path(tmp)
        served = work / "served"
        served.mkdir()
        video_file(served / "video.mp4", args.size_mb * _MIB)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
             "--directory", str(served)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        moto = MotoServer(work / "moto.log").start() if args.backend == "s3" else None
        try:
            time.sleep(1)  # http.server has no readiness signal; it binds at once
            print(trio.run(run, args, work, f"http://127.0.0.1:{port}", moto))
        finally:
            server.terminate()
            server.wait(10)
            if moto is not None:
                moto.stop()
            os.sync()


if __name__ == "__main__":
    main()
