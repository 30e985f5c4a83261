"""A backend with its figures: is it reachable, its last error, bytes stored, and
how long uploads take; for ``/api/health/detailed`` and ``/api/metrics``.

``MeteredStorage`` wraps any backend and counts what passes through it; the
Prometheus figures are ``easel_storage_*`` in Easel's registry. A failure is also
a ``storage.failed`` monitor event, for alert rules to see.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from actors import metrics
from actors.jobs import Job, iso
from actors.monitor import Monitor
from actors.storage.base import Link, Storage, StorageError, Upload

#: Upper bounds (seconds) of the upload latency buckets: a thumbnail to a large video.
UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

UPLOAD_SECONDS = Histogram(
    "easel_storage_upload_seconds", "Time to store one output", ["backend"],
    buckets=UPLOAD_BUCKETS, registry=metrics.REGISTRY,
)
STORED_BYTES = Counter(
    "easel_storage_stored_bytes", "Bytes of outputs stored", ["backend"], registry=metrics.REGISTRY
)
FAILURES = Counter(
    "easel_storage_failures", "Failed storage operations", ["backend", "operation"],
    registry=metrics.REGISTRY,
)
UP = Gauge(
    "easel_storage_up", "1 when the last storage operation succeeded, else 0", ["backend"],
    registry=metrics.REGISTRY,
)


class MeteredStorage:
    """``backend`` with its figures kept (``statistics``)."""

    def __init__(self, backend: Storage, monitor: Monitor) -> None:
        self.backend = backend
        self.name = backend.name
        self.monitor = monitor
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.bytes_stored = 0
        self.objects_stored = 0
        #: Uploads per ``UPLOAD_BUCKETS`` bucket (the last one: slower than all).
        self._buckets = [0] * (len(UPLOAD_BUCKETS) + 1)
        self._upload_seconds = 0.0

    def _ok(self) -> None:
        self.reachable = True
        UP.labels(backend=self.name).set(1)

    def _failed(self, operation: str, exc: StorageError) -> None:
        self.reachable = False
        self.last_error = str(exc)
        self.last_error_at = time.time()
        UP.labels(backend=self.name).set(0)
        FAILURES.labels(backend=self.name, operation=operation).inc()
        self.monitor.emit("storage.failed", backend=self.name, operation=operation,
                          error=self.last_error)

    def key_for(self, job: Job, index: int, extension: str) -> str:
        return self.backend.key_for(job, index, extension)

    async def put(self, key: str, upload: Upload) -> None:
        started = time.perf_counter()
        try:
            await self.backend.put(key, upload)
        except StorageError as exc:
            self._failed("put", exc)
            raise
        seconds = time.perf_counter() - started
        self._ok()
        self.bytes_stored += upload.size
        self.objects_stored += 1
        self._upload_seconds += seconds
        self._buckets[bisect.bisect_left(UPLOAD_BUCKETS, seconds)] += 1
        UPLOAD_SECONDS.labels(backend=self.name).observe(seconds)
        STORED_BYTES.labels(backend=self.name).inc(upload.size)

    async def link(self, key: str) -> Link:
        try:
            return await self.backend.link(key)
        except StorageError as exc:
            self._failed("link", exc)
            raise

    async def read(self, key: str, max_bytes: int) -> bytes:
        try:
            data = await self.backend.read(key, max_bytes)
        except StorageError as exc:
            self._failed("read", exc)
            raise
        self._ok()
        return data

    async def probe(self) -> None:
        try:
            await self.backend.probe()
        except StorageError as exc:
            self._failed("probe", exc)
            raise
        self._ok()

    async def aclose(self) -> None:
        await self.backend.aclose()

    def statistics(self) -> dict[str, Any]:
        """A snapshot; reading it changes nothing. ``uploadSeconds.buckets`` counts
        uploads at or under each bound (cumulative, as Prometheus does)."""
        cumulative, total = {}, 0
        for bound, count in zip(UPLOAD_BUCKETS, self._buckets):
            total += count
            cumulative[str(bound)] = total
        return {
            "backend": self.name,
            "reachable": self.reachable,
            "lastError": self.last_error,
            "lastErrorAt": iso(self.last_error_at),
            "bytesStored": self.bytes_stored,
            "objectsStored": self.objects_stored,
            "uploadSeconds": {
                "count": self.objects_stored,
                "sum": round(self._upload_seconds, 3),
                "buckets": cumulative,
            },
        }
