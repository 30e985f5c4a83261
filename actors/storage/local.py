"""The ``local`` backend: files under the state dir, served by Easel at ``/media/``.

Keys are ``{job_id}/{n}.{ext}``, the path under the media directory and under
``/media/``, so the route serving them can tell whose job a file belongs to.
A put hard-links the downloaded file in (a copy when the media directory is on
another filesystem) under a temporary name, syncs it, then renames it, so a crash
never leaves a half-written file that looks complete, and the downloaded file is
kept until the job is marked done.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import trio

from actors.jobs import Job
from actors.storage.base import Link, NotStored, StorageError, Upload

#: The URL path local outputs are served under.
MEDIA_PREFIX = "/media/"


class LocalStorage:
    name = "local"

    def __init__(self, root: Path, base_url: str = "") -> None:
        """``root``: the media directory. ``base_url``: where clients reach Easel
        (``[daemon] public_base_url``, else the first address it listens on)."""
        self.root = root
        self.base_url = base_url.rstrip("/")
        self._limiter = trio.CapacityLimiter(4)

    def key_for(self, job: Job, index: int, extension: str) -> str:
        return f"{job.id}/{index}.{extension}"

    def _place(self, key: str, source: Path) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".part")
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copyfile(source, temporary)
        fd = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    async def put(self, key: str, upload: Upload) -> None:
        try:
            await trio.to_thread.run_sync(self._place, key, upload.path, limiter=self._limiter)
        except OSError as exc:
            raise StorageError(f"cannot write {key} under {self.root}: {exc}") from exc

    async def link(self, key: str) -> Link:
        return Link(self.base_url + MEDIA_PREFIX + key)

    def _read(self, key: str, max_bytes: int) -> bytes:
        if key.startswith("/") or ".." in Path(key).parts:
            raise FileNotFoundError(key)  # never a path outside the media directory
        with open(self.root / key, "rb") as file:
            return file.read(max_bytes + 1)

    async def read(self, key: str, max_bytes: int) -> bytes:
        try:
            return await trio.to_thread.run_sync(self._read, key, max_bytes,
                                                 limiter=self._limiter)
        except (FileNotFoundError, IsADirectoryError):
            raise NotStored(key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key} under {self.root}: {exc}") from exc

    def _probe(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.root):
            pass

    async def probe(self) -> None:
        try:
            await trio.to_thread.run_sync(self._probe, limiter=self._limiter)
        except OSError as exc:
            raise StorageError(f"cannot write under {self.root}: {exc}") from exc

    async def aclose(self) -> None:
        pass
