"""Result URLs, made each time a job is read (API answers, client webhooks).

A stored result holds its backend's name and key (``{"type", "contentType",
"storage", "key", "sha256", "size"}``); a client sees ``url`` instead (and
``urlExpiresAt`` for a presigned one). Made at read time because a presigned URL
expires and a public base can change; so the URL is never stored.

Also read: results that hold a ``url`` (a provider's own, kept by
``upload_outputs = false``, shown as it is) and results stored before keys, whose
``url`` is a ``/media/...`` path (made absolute like a local key). ``local_output``
reads the same shapes for code that serves a local output's bytes itself. The base of
Easel's own URLs is ``[daemon] public_base_url``, else the address it listens on:
never a request's ``Host`` header, which the client chooses.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.jobs import iso
from actors.storage.base import Link, Storage, StorageError
from actors.storage.local import MEDIA_PREFIX

log = logging.getLogger(__name__)

#: Result fields that say where a result is stored, for Easel only.
_STORED_AT = ("storage", "key")


class ResultLinks:
    def __init__(self, storage: Storage, base_url: str) -> None:
        self.storage = storage
        self.base_url = base_url.rstrip("/")

    async def present(self, data: dict[str, Any]) -> dict[str, Any]:
        """The job JSON (``Job.to_api()``) with a URL for each result."""
        results = data.get("results")
        if not results:
            return data
        return {**data, "results": [await self._result(r) for r in results]}

    async def _result(self, result: Any) -> Any:
        if not isinstance(result, dict):
            return result
        key = result.get("key")
        if not isinstance(key, str):
            url = result.get("url")
            if isinstance(url, str) and url.startswith(MEDIA_PREFIX):
                return {**result, "url": self.base_url + url}
            return result
        shown = {k: v for k, v in result.items() if k not in _STORED_AT}
        link = await self._link(result.get("storage") or "local", key)
        shown["url"] = link.url if link else None
        if link is not None and link.expires_at is not None:
            shown["urlExpiresAt"] = iso(link.expires_at)
        return shown

    async def _link(self, backend: str, key: str) -> Link | None:
        if backend == self.storage.name:
            try:
                return await self.storage.link(key)
            except StorageError as exc:
                log.warning("no URL for stored output %s: %s", key, exc)
                return None
        if backend == "local":  # the backend changed since; /media/ still serves it
            return Link(self.base_url + MEDIA_PREFIX + key)
        log.warning("output %s is kept by the %s backend, which is not configured", key, backend)
        return None


def local_output(result: Any) -> str | None:
    """Where a stored result is under the media directory (``<job>/<n>.<ext>``), or
    None when another backend (S3) or the provider keeps it: those are reached by
    their URL only."""
    if not isinstance(result, dict):
        return None
    key = result.get("key")
    if isinstance(key, str):
        return key if (result.get("storage") or "local") == "local" else None
    url = result.get("url")  # stored before results held keys
    if isinstance(url, str) and url.startswith(MEDIA_PREFIX):
        return url.removeprefix(MEDIA_PREFIX)
    return None
