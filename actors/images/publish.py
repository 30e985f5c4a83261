"""Publishing a prepared input image at a URL, for providers that take only URLs.

``InputPublisher`` is the one thing the pipeline needs of a storage backend;
``LocalInputs`` is its local implementation: files under the media directory's
``inputs/``, served by the daemon at ``/media/inputs/`` under
``[daemon] public_base_url`` (the provider fetches them from outside), and
removed once they are older than the configured days (1 to 7), checked at most
once an hour when something is published.

``BucketInputs`` is the s3 backend's: objects under ``{prefix}/inputs/`` of the
bucket, each URL presigned for the configured days (SigV4 allows at most seven,
the setting's range). The bucket keeps the objects until its lifecycle rule on
that prefix removes them (README, "Storage"): Easel never lists the bucket.

Names are the sha256 of the bytes: the same prepared image is one file and one
URL however often it is sent, and a name says nothing of the job or its owner.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import trio

#: Where published inputs live, under the media directory and under ``/media/``.
INPUTS_DIR = "inputs"
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
#: Seconds between two sweeps for expired inputs.
PURGE_INTERVAL = 3600.0


class NotPublishable(Exception):
    """There is no URL a provider could fetch from (no public base URL)."""


class InputPublisher(Protocol):
    """Where a prepared input image is put for a provider to fetch."""

    async def publish_input(self, data: bytes, content_type: str) -> str:
        """Store ``data`` for a limited time; its absolute URL. Raises
        ``NotPublishable`` when no URL would reach it."""
        ...


class Bucket(Protocol):
    """What ``BucketInputs`` needs of a bucket (``actors.storage.s3.S3Storage``)."""

    async def publish(self, name: str, data: bytes, content_type: str, seconds: int) -> str:
        ...


class BucketInputs:
    """``InputPublisher`` in an S3-compatible bucket (module doc)."""

    def __init__(self, bucket: Bucket, days: int) -> None:
        self.bucket = bucket
        self.seconds = days * 86400

    async def publish_input(self, data: bytes, content_type: str) -> str:
        return await self.bucket.publish(_name(data, content_type), data, content_type,
                                         self.seconds)


def _name(data: bytes, content_type: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()}.{_EXTENSIONS[content_type]}"


class LocalInputs:
    """``InputPublisher`` on local disk (module doc)."""

    def __init__(self, media_dir: Path, base_url: str, days: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = media_dir / INPUTS_DIR
        self.base_url = base_url.rstrip("/")
        self.max_age = days * 86400.0
        self._clock = clock
        self._purged_at = -PURGE_INTERVAL
        self._limiter = trio.CapacityLimiter(1)

    async def publish_input(self, data: bytes, content_type: str) -> str:
        if not self.base_url:
            raise NotPublishable("[daemon] public_base_url is not set, so no URL of Easel's "
                                 "can be fetched from outside")
        name = _name(data, content_type)
        await trio.to_thread.run_sync(self._write, name, data, limiter=self._limiter)
        return f"{self.base_url}/media/{INPUTS_DIR}/{name}"

    def _write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        if path.exists():
            os.utime(path)  # sent again: its time starts again
        else:
            temporary = path.with_name(f".{name}.part")
            temporary.write_bytes(data)
            os.replace(temporary, path)
        now = self._clock()
        if now - self._purged_at >= PURGE_INTERVAL:
            self._purged_at = now
            self.purge(now)

    def purge(self, now: float) -> None:
        """Remove the inputs published more than the configured days ago."""
        for entry in os.scandir(self.root):
            if entry.is_file() and now - entry.stat().st_mtime > self.max_age:
                Path(entry.path).unlink(missing_ok=True)
