"""Where outputs are kept: local disk under the state dir, served at ``/media/``.

Writes go through a worker thread (file I/O blocks) and land under a temporary name
first, then are renamed, so a crash never leaves a half-written file that looks
complete. Results record the path under ``/media/``; the HTTP layer turns it into an
absolute URL for the client.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio

_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
}

MEDIA_PREFIX = "/media/"


def extension_for(content_type: str) -> str | None:
    return _EXTENSIONS.get(content_type.split(";")[0].strip().lower())


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._limiter = trio.CapacityLimiter(4)

    def _write(self, relative: str, data: bytes) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".part")
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)

    async def save(self, job_id: str, index: int, data: bytes, content_type: str) -> str:
        """Store one output; returns its URL path (``/media/<job>/<n>.<ext>``)."""
        ext = extension_for(content_type) or "bin"
        relative = f"{job_id}/{index}.{ext}"
        await trio.to_thread.run_sync(self._write, relative, data, limiter=self._limiter)
        return MEDIA_PREFIX + relative
