"""Finalizing eight large videos at once holds none of them in memory: the
bench (``bench/finalize_memory.py``) run small, in its own process, its peak
resident memory above idle well under what the outputs weigh together."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.process import PROJECT_ROOT


def test_eight_videos_at_once_are_streamed_not_held() -> None:
    videos, size_mb = 8, 24
    done = subprocess.run(
        [sys.executable, "bench/finalize_memory.py", "--videos", str(videos),
         "--size-mb", str(size_mb)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, check=True,
    )
    line = done.stdout.strip().splitlines()[-1]
    assert "states=SUCCEEDED " in line, line
    above_idle = int(re.search(r"above_idle_mb=(\d+)", line).group(1))  # type: ignore[union-attr]
    # Held whole, the outputs would weigh 192 MB; streamed, a few MB each.
    assert above_idle < videos * size_mb / 2, line
