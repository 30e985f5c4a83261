"""The storage contract: what every storage backend must do, seen from outside.

A backend's test module subclasses ``StorageContract`` (pytest collects the
subclass, not this class) and gives a ``backend`` fixture: a ``Backend`` saying
how a daemon is configured to use it and how to make it fail and come back. Each
test runs a real embedded daemon (``tests/conftest.py``) configured that way, and
fetches result URLs over HTTP as a client would. ``tests/test_storage_local.py``
and ``tests/test_storage_s3.py`` (moto's S3 server) run it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from actors.jobs import Job, new_job_id
from actors.storage import NotStored, StorageError, Upload
from actors.storage.outputs import StoredOutputs
from tests.conftest import EmbeddedDaemon

FAST_SANDBOX = """
[providers.sandbox]
delay = 0.05
"""
#: Larger than the s3 backend's default multipart threshold (16 MiB).
LARGE = 17 * 1024 * 1024


@attrs.frozen
class Backend:
    #: The name results record (``local``, ``s3``).
    name: str
    #: The daemon's ``[storage]`` configuration.
    toml: str
    #: Make the backend fail (an outage), then bring it back.
    fail: Callable[[EmbeddedDaemon], None]
    recover: Callable[[EmbeddedDaemon], None]
    #: Checks on a large object stored under a key (the s3 backend: sent in parts).
    check_large: Callable[[str], None] = lambda key: None


def video_file(path: Path, size: int) -> Path:
    """An MP4-looking file of ``size`` bytes (an ``ftyp`` box, then noise)."""
    with open(path, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2")
        left = size - 24
        while left > 0:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            left -= len(chunk)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def fetch(url: str) -> httpx.Response:
    """A result URL fetched as a client would: a fresh client, no base URL."""
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.get(url)


async def wait_for(check: Callable[[], Awaitable[Any]], within: float = 60) -> Any:
    with trio.fail_after(within):
        while not (found := await check()):
            await trio.sleep(0.05)
    return found


class StorageContract:
    async def daemon(self, easel_daemon: Any, backend: Backend, extra: str = "") -> EmbeddedDaemon:
        started: EmbeddedDaemon = await easel_daemon(f"{FAST_SANDBOX}\n{backend.toml}\n{extra}")
        return started

    async def test_an_output_is_stored_and_served_at_its_url(
        self, easel_daemon: Any, backend: Backend
    ) -> None:
        easel = await self.daemon(easel_daemon, backend)
        response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a pear"})
        job = await easel.wait(response.json()["id"])
        assert job["status"] == "SUCCESS", job
        [result] = job["results"]
        assert result["type"] == "image" and result["contentType"] == "image/png"
        media = await fetch(result["url"])
        assert media.status_code == 200
        assert media.headers["content-type"] == "image/png"
        assert hashlib.sha256(media.content).hexdigest() == result["sha256"]
        assert len(media.content) == result["size"]
        # The row keeps where the output is, never a URL: the URL is made per read.
        [stored] = (await easel.runtime.get_job(job["id"])).results
        assert stored["storage"] == backend.name and "url" not in stored
        assert stored["key"].endswith(f"{job['id']}/0.png")

    async def test_a_stored_output_is_read_back_capped(
        self, easel_daemon: Any, backend: Backend
    ) -> None:
        easel = await self.daemon(easel_daemon, backend)
        response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a lime"})
        job_id = (await easel.wait(response.json()["id"]))["id"]
        [stored] = (await easel.runtime.get_job(job_id)).results
        # As a later batch item's input reads it: through the job's results.
        outputs = StoredOutputs(easel.runtime.store, easel.runtime.storage,
                                easel.state_dir / "media")
        output = await outputs.read(job_id, 0, stored["size"])
        assert output.content_type == "image/png" and output.url is None
        assert hashlib.sha256(output.data).hexdigest() == stored["sha256"]
        storage = easel.runtime.storage
        assert await storage.read(stored["key"], 10) == output.data[:11]  # one past the cap
        with pytest.raises(NotStored):
            await storage.read(stored["key"].replace("/0.png", "/9.png"), 100)
        backend.fail(easel)
        with pytest.raises(StorageError):
            await storage.read(stored["key"], 100)
        assert storage.statistics()["reachable"] is False
        backend.recover(easel)

    async def test_a_result_url_never_comes_from_the_host_header(
        self, easel_daemon: Any, backend: Backend
    ) -> None:
        easel = await self.daemon(easel_daemon, backend)
        response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a fig"},
                                      headers={"Host": "evil.example"})
        assert "evil.example" not in response.text
        job_id = response.json()["id"]
        await easel.wait(job_id)
        read = await easel.client.get(f"/api/external/generation/{job_id}",
                                      headers={"Host": "evil.example"})
        [result] = read.json()["results"]
        assert "evil.example" not in read.text
        assert (await fetch(result["url"])).status_code == 200

    async def test_a_large_video_is_stored_whole(
        self, easel_daemon: Any, backend: Backend, tmp_path: Path
    ) -> None:
        easel = await self.daemon(easel_daemon, backend)
        storage = easel.runtime.storage
        path = await trio.to_thread.run_sync(video_file, tmp_path / "large.mp4", LARGE)
        digest = await trio.to_thread.run_sync(sha256_of, path)
        job = Job(id=new_job_id(), model="m", provider="sandbox", provider_model="m",
                  prompt="p", created_at=1_764_547_200.0)
        key = storage.key_for(job, 0, "mp4")
        await storage.put(key, Upload(path, "video/mp4", digest, LARGE))
        backend.check_large(key)
        media = await fetch((await storage.link(key)).url)
        assert media.status_code == 200 and len(media.content) == LARGE
        assert hashlib.sha256(media.content).hexdigest() == digest
        # A put again (a retried attempt) replaces the object on the same key.
        small = await trio.to_thread.run_sync(video_file, tmp_path / "small.mp4", 1000)
        await storage.put(key, Upload(small, "video/mp4", sha256_of(small), 1000))
        media = await fetch((await storage.link(key)).url)
        assert media.content == small.read_bytes()
        assert storage.statistics()["bytesStored"] == LARGE + 1000

    async def test_an_outage_leaves_the_job_finalizing_until_storage_returns(
        self, easel_daemon: Any, backend: Backend
    ) -> None:
        easel = await self.daemon(easel_daemon, backend)
        backend.fail(easel)
        response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a plum"})
        job_id = response.json()["id"]

        async def waiting() -> dict[str, Any] | None:
            job = (await easel.client.get(f"/api/external/generation/{job_id}")).json()
            assert job["status"] != "FAILED", job
            reason = job["stageReason"] or ""
            return job if job["stage"] == "FINALIZING" and "local problem" in reason else None

        waited = await wait_for(waiting)
        # Clients read why, in the system's words: no path, key or endpoint.
        assert waited["stageReason"].split(": ", 1)[1].startswith("storage")
        assert str(easel.state_dir) not in waited["stageReason"]
        assert "127.0.0.1" not in waited["stageReason"]
        health = (await easel.client.get("/api/health/detailed")).json()
        assert health["storage"]["reachable"] is False
        assert health["storage"]["lastError"]
        events = (await easel.client.get(f"/api/external/generation/{job_id}/events")).json()
        retry = next(e for e in events["events"] if e["kind"] == "finalize_retry")
        assert retry["error"]["code"] == "STORAGE_ERROR"
        backend.recover(easel)
        job = await easel.wait(job_id)
        assert job["status"] == "SUCCESS", job
        assert job["stageReason"] is None
        assert (await fetch(job["results"][0]["url"])).status_code == 200

    async def test_health_and_metrics_show_the_storage(
        self, easel_daemon: Any, backend: Backend
    ) -> None:
        easel = await self.daemon(easel_daemon, backend)
        response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a kiwi"})
        await easel.wait(response.json()["id"])
        storage = (await easel.client.get("/api/health/detailed")).json()["storage"]
        assert storage["backend"] == backend.name and storage["reachable"] is True
        assert storage["lastError"] is None
        assert storage["objectsStored"] == 1 and storage["bytesStored"] > 0
        assert storage["uploadSeconds"]["count"] == 1
        metrics = (await easel.client.get("/api/metrics")).text
        assert f'easel_storage_upload_seconds_bucket{{backend="{backend.name}"' in metrics
        assert f'easel_storage_stored_bytes_total{{backend="{backend.name}"}}' in metrics
        assert f'easel_storage_up{{backend="{backend.name}"}} 1.0' in metrics
