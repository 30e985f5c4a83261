"""A job's stored output read back, for a later batch item that takes it as input.

When a batch item depends on another and takes its output as an input image, the
batch actor writes ``easel:output/<job_id>/<n>`` in its place
(``actors/batches/model.py``). The item's provider prepares that image like a
client's ``data:`` one (``actors/images/inputs.py``); this module gives it the
bytes: the job's stored result ``n`` (``Job.results``, as the finalizer wrote
it: ``{"storage", "key", "contentType", ...}``) read through the storage backend
that holds it.

Where the result lives:

- under the configured backend (its name is recorded with the result): read
  from it, capped, in a worker thread (the backends' own limiters);
- under the local media directory while another backend is configured now (the
  configuration changed since): read from there;
- at the provider (``upload_outputs = false`` kept its URL): that URL, which the
  preparer fetches as it does a client's.

What cannot be read now but may be later (the backend not answering) is a
``StorageError``; what is not there (no such job, not succeeded, no output
``n``, the object removed) is ``OutputMissing``, with the reason as a client
reads it.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from actors.jobs import JobState
from actors.storage.base import NotStored, Storage
from actors.storage.links import local_output
from actors.storage.local import LocalStorage
from actors.store import Store


class OutputMissing(Exception):
    """The output named is not stored; the text says why, as a client reads it."""


@attrs.frozen
class StoredOutput:
    """A stored output's bytes and content type, or (kept at the provider) its URL."""

    data: bytes = b""
    content_type: str | None = None
    url: str | None = None


class StoredOutputs:
    """Reads outputs the finalizer stored (module doc). ``media_dir``: the local
    backend's directory, read for results stored there before the backend changed."""

    def __init__(self, store: Store, storage: Storage, media_dir: Path) -> None:
        self._store = store
        self._storage = storage
        self._local: Storage = (storage if storage.name == LocalStorage.name
                                else LocalStorage(media_dir))

    async def read(self, job_id: str, index: int, max_bytes: int) -> StoredOutput:
        """Output ``index`` of job ``job_id``: at most ``max_bytes + 1`` bytes of it
        (``Storage.read``), or its provider URL."""
        job = await self._store.get_job(job_id)
        if job is None:
            raise OutputMissing(f"names job {job_id}, which does not exist")
        if job.state is not JobState.SUCCEEDED:
            raise OutputMissing(f"is an output of job {job_id}, which is {job.state.value}")
        if not 0 <= index < len(job.results):
            raise OutputMissing(f"is output {index} of job {job_id}, which has "
                                f"{len(job.results)} output(s)")
        result = job.results[index]
        if not isinstance(result, dict):
            raise OutputMissing(f"is output {index} of job {job_id}, which is not stored")
        backend = result.get("storage") or LocalStorage.name
        key = result.get("key")
        source = self._storage
        if not (isinstance(key, str) and backend == self._storage.name):
            key, source = local_output(result), self._local
        if key is None:
            url = result.get("url")
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                return StoredOutput(url=url)
            raise OutputMissing(f"is output {index} of job {job_id}, kept by the {backend} "
                                "storage backend, which is not configured")
        try:
            data = await source.read(key, max_bytes)
        except NotStored:
            raise OutputMissing(f"is output {index} of job {job_id}, which is no longer "
                                "stored") from None
        return StoredOutput(data, result.get("contentType"))
