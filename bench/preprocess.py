"""Input-image preprocessing: 12 MP JPEG -> 1024 px JPEG q85, images per second.

Why: every image-to-image or image-to-video job sends its input through the
pipeline (``actors/images/``) before its create, in worker threads. How many
images a core prepares, against the fastest common tool for the same work
(libvips, through pyvips), says whether the pipeline is ever what a job waits on;
how it scales with a second thread says whether Pillow really leaves the GIL.

How: a 4000x3000 photo-like JPEG (gradients, shapes and noise, quality 90) is
made once with Pillow. Each contender turns it into a JPEG whose longer side is
1024 px at quality 85:

- ``easel``: ``actors.images.pipeline.process`` with the steps of that job
  (``format = "jpeg"``, ``max_width = max_height = 1024``, ``quality = 85``): the
  whole pipeline as a job runs it, checks included (magic bytes, trailing data,
  pixel cap), a reduced JPEG decode (``draft``) and bicubic with ``reducing_gap``;
- ``pillow-naive``: ``Image.open``, ``resize`` to 1024 (bicubic too), ``save``:
  what one would write without the pipeline's ``draft``;
- ``pyvips``: ``thumbnail_buffer(1024)`` (shrink-on-load, then its lanczos3
  reduce) then ``jpegsave_buffer(Q=85)`` with
  libvips held to one thread (``concurrency_set(1)``) and its operation cache off,
  so it is one core's work too.

Each runs for ``--seconds`` per round, the contenders interleaved round after
round (``--rounds``), so a neighbour's load on a shared machine falls on all of
them alike; the figure is the median of the rounds. Then ``easel`` runs in two
threads at once (``--threads``) and its rate is compared with one thread's.
Besides images per wall second, each run reports images per CPU second of the
process ("per core": what one core does, however busy the machine is) and the
cores it had (CPU seconds per wall second): on a shared machine the second
thread may get no second core, and these say whether it was the GIL or the
machine that held it back.

pyvips is installed into this interpreter's environment if it is missing
(``pip install "pyvips[binary]"``, which bundles libvips); it is not a dependency of
Easel. If it cannot be installed the run says so and goes on without it.

Targets (issue 12): ``easel`` >= 1.0x pyvips on one core; two threads >= 1.7x one.

Run: ``python bench/preprocess.py [--seconds 2] [--rounds 5] [--threads 2]``.
Figures only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import attrs
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.images.pipeline import process  # noqa: E402
from actors.images.presets import Preprocess  # noqa: E402
from actors.images.validate import Limits  # noqa: E402

SIZE = (4000, 3000)
SIDE = 1024
QUALITY = 85
STEPS = Preprocess(format="jpeg", max_width=SIDE, max_height=SIDE, quality=QUALITY)
LIMITS = Limits(max_bytes=64 * 1024 * 1024, max_pixels=50_000_000)


def photo() -> bytes:
    """A 12 MP JPEG with what makes photos costly to code: gradients, edges, noise."""
    width, height = SIZE
    red = Image.linear_gradient("L").resize(SIZE)
    green = Image.linear_gradient("L").rotate(90).resize(SIZE)
    noise = Image.effect_noise(SIZE, 48)
    image = Image.merge("RGB", (red, green, noise))
    draw = ImageDraw.Draw(image)
    for n in range(60):
        x, y = (n * 7919) % width, (n * 104729) % height
        draw.ellipse((x, y, x + 300, y + 200), fill=((n * 40) % 256, (n * 90) % 256, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def easel(data: bytes) -> bytes:
    return process(data, "image/jpeg", STEPS, LIMITS).data


def pillow_naive(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        scale = SIDE / max(image.size)
        small = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()


def load_pyvips() -> tuple[ModuleType | None, str]:
    """pyvips, installed into this environment first if missing; or why not."""
    try:
        module = importlib.import_module("pyvips")
    except (ImportError, OSError):
        print("pyvips is missing: installing pyvips[binary] into this environment ...",
              flush=True)
        installed = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "pyvips[binary]"],
            capture_output=True, text=True, check=False)
        if installed.returncode != 0:
            return None, f"pyvips could not be installed: {installed.stderr.strip()[-300:]}"
        importlib.invalidate_caches()
        try:
            module = importlib.import_module("pyvips")
        except (ImportError, OSError) as exc:
            return None, f"pyvips was installed but cannot be loaded: {exc}"
    module.concurrency_set(1)
    module.cache_set_max(0)
    libvips = ".".join(str(module.version(n)) for n in range(3))
    return module, f"pyvips {module.__version__} (libvips {libvips}), one thread"


def pyvips_thumbnail(vips: ModuleType) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        thumbnail = vips.Image.thumbnail_buffer(data, SIDE, height=SIDE, size="down")
        return bytes(thumbnail.jpegsave_buffer(Q=QUALITY))

    return run


@attrs.frozen
class Rate:
    """One timed run: images per wall second, and per CPU second of this process
    (what one core does, whatever else the machine is doing)."""

    wall: float
    per_cpu: float
    cores: float  # CPU seconds per wall second: how many cores the run had


def rate(work: Callable[[bytes], bytes], data: bytes, seconds: float, threads: int = 1) -> Rate:
    """``work`` in ``threads`` threads for about ``seconds``."""
    done = [0] * threads
    deadline = time.perf_counter() + seconds

    def loop(index: int) -> None:
        while time.perf_counter() < deadline:
            work(data)
            done[index] += 1

    started, cpu = time.perf_counter(), time.process_time()
    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return Rate(sum(done) / wall, sum(done) / cpu, cpu / wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per contender per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    data = photo()
    vips, vips_note = load_pyvips()
    contenders: dict[str, Callable[[bytes], bytes]] = {"easel": easel, "pillow-naive": pillow_naive}
    if vips is not None:
        contenders["pyvips"] = pyvips_thumbnail(vips)
    out = Image.open(io.BytesIO(easel(data)))
    print(f"input: {SIZE[0]}x{SIZE[1]} JPEG, {len(data) / 1e6:.1f} MB; output: {out.size[0]}x"
          f"{out.size[1]} JPEG q{QUALITY}")
    print(f"Pillow {Image.__version__}; {vips_note}; {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds of {args.seconds:g} s")
    for work in contenders.values():
        work(data)  # warm-up: imports, first allocations

    rounds: dict[str, list[Rate]] = {name: [] for name in [*contenders, "easel-threads"]}
    for _ in range(args.rounds):
        for name, work in contenders.items():
            rounds[name].append(rate(work, data, args.seconds))
        rounds["easel-threads"].append(rate(easel, data, args.seconds, args.threads))
    wall = {name: statistics.median(r.wall for r in runs) for name, runs in rounds.items()}
    per_cpu = {name: statistics.median(r.per_cpu for r in runs) for name, runs in rounds.items()}

    print(f"{'contender':<18}{'images/s':>9}{'per core':>10}{'cores':>7}   images/s by round")
    for name, runs in rounds.items():
        label = f"easel {args.threads} threads" if name == "easel-threads" else name
        cores = statistics.median(r.cores for r in runs)
        spread = " ".join(f"{r.wall:.1f}" for r in runs)
        print(f"{label:<18}{wall[name]:>9.2f}{per_cpu[name]:>10.2f}{cores:>7.2f}   {spread}")
    if "pyvips" in wall:
        print(f"easel / pyvips, per core: {per_cpu['easel'] / per_cpu['pyvips']:.2f}x; "
              f"one thread each: {wall['easel'] / wall['pyvips']:.2f}x (target >= 1.0x)")
    else:
        print(f"easel / pyvips: not measured ({vips_note})")
    print(f"easel {args.threads} threads / 1 thread: {wall['easel-threads'] / wall['easel']:.2f}x "
          f"(target >= 1.7x with 2); per core {per_cpu['easel-threads'] / per_cpu['easel']:.2f}x "
          f"(1.0x: the threads lose nothing to the GIL, only to the cores they get)")


if __name__ == "__main__":
    main()
