"""The storage seam: what the finalizer, the result links and the input
preparer ask of a backend.

A backend keeps objects under keys it chooses (``key_for``), takes each one from a
file on disk (``put``: outputs are streamed to a temporary file first, so nothing
is ever held whole in memory), says where a client can fetch one (``link``), and
gives a stored object's bytes back, capped (``read``: a batch item whose input is
its dependency's output, ``actors/storage/outputs.py``).
Results record the key, never the URL: a presigned URL expires and a public base
can change, so the URL is made each time a job is read.

Every failure of a backend (unreachable endpoint, refused credentials, a full or
read-only disk, no file descriptor left) is a ``StorageError``: a local problem
the finalizer retries with backoff, never a reason to fail the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import attrs

from actors.jobs import Job


@attrs.frozen
class Upload:
    """One output downloaded to a file, ready to be stored."""

    path: Path
    content_type: str
    sha256: str
    size: int


class StorageError(Exception):
    """A backend could not do what was asked; a later attempt may succeed."""


class NotStored(Exception):
    """The backend answered, and holds nothing under the key (never stored, or
    removed since): no later attempt will find it, unlike a ``StorageError``."""


@attrs.frozen
class Link:
    """Where a client fetches a stored object, and until when (``None``: no end)."""

    url: str
    expires_at: float | None = None


class Storage(Protocol):
    """A place outputs are kept. ``name`` is recorded with each result (``local``,
    ``s3``), so results stored by another backend are still read correctly."""

    name: str

    def key_for(self, job: Job, index: int, extension: str) -> str:
        """The key output ``index`` of ``job`` is stored under (the same on every
        attempt, so a retried put replaces rather than duplicates)."""
        ...

    async def put(self, key: str, upload: Upload) -> None:
        """Store ``upload``'s file under ``key``; ``StorageError`` if that fails."""
        ...

    async def link(self, key: str) -> Link:
        """The URL a client fetches ``key`` at, made now."""
        ...

    async def read(self, key: str, max_bytes: int) -> bytes:
        """The bytes stored under ``key``, at most ``max_bytes + 1`` of them (one
        more than the cap tells the caller the object is larger); ``NotStored``
        when there is none, ``StorageError`` when the backend fails."""
        ...

    async def probe(self) -> None:
        """Raise ``StorageError`` unless the backend answers now."""
        ...

    async def aclose(self) -> None: ...
