"""The storage contract (tests/storage_contract.py) against the s3 backend, on a
real S3 API server: moto in server mode over HTTP (``tests/s3server.py``).

Its outage is the server stopped; it recovers when the server is started again
(on the same port, with the bucket made again). Also here: public-URL mode,
presigned URLs fetched over HTTP, the key layout, and a large video output sent
in parts by the finalizer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from actors.jobs import Job, JobState, new_job_id
from actors.monitor import Monitor
from actors.storage import MeteredStorage, S3Settings
from actors.storage.s3 import S3Storage
from actors.store import open_store
from daemon import config as config_module
from daemon.config import ConfigError
from tests.conftest import EmbeddedDaemon
from tests.s3server import BUCKET, MotoServer
from tests.storage_contract import LARGE, Backend, StorageContract, fetch
from tests.test_finalizer import (
    MP4_HEAD,
    Output,
    finalizing_job,
    make_finalizer,
    serve_output,
    until_settled,
)
from tests.test_outbox import SECRET, start_receiver, verify


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path / "moto.log").start()
    yield server
    server.stop()


class TestS3Storage(StorageContract):
    @pytest.fixture
    def backend(self, moto: MotoServer) -> Backend:
        def check_large(key: str) -> None:
            head = moto.client().head_object(Bucket=BUCKET, Key=key)
            assert head["ETag"].strip('"').endswith("-3")  # 17 MiB in 8 MiB parts

        return Backend("s3", moto.toml(), lambda easel: moto.stop(),
                       lambda easel: moto.start(), check_large)


async def test_presigned_urls_are_made_on_each_read(easel_daemon: Any, moto: MotoServer) -> None:
    easel: EmbeddedDaemon = await easel_daemon(moto.toml(presign_expiry=600))
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a lime"})
    job = await easel.wait(response.json()["id"])
    [result] = job["results"]
    assert "X-Amz-Signature=" in result["url"] and "X-Amz-Expires=600" in result["url"]
    assert result["urlExpiresAt"]
    media = await fetch(result["url"])
    assert media.status_code == 200 and media.headers["content-type"] == "image/png"
    assert hashlib.sha256(media.content).hexdigest() == result["sha256"]
    # The object carries its checksum, and sits under the documented key layout.
    [stored] = (await easel.runtime.get_job(job["id"])).results
    head = moto.client().head_object(Bucket=BUCKET, Key=stored["key"])
    assert head["Metadata"]["sha256"] == result["sha256"]
    assert stored["key"].startswith("easel/20") and stored["key"].endswith(f"/{job['id']}/0.png")


async def test_public_url_mode(easel_daemon: Any, moto: MotoServer) -> None:
    public = f"{moto.url}/{BUCKET}"
    moto.make_public()
    easel: EmbeddedDaemon = await easel_daemon(moto.toml(public_base_url=public, prefix="out/"))
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a melon"})
    job = await easel.wait(response.json()["id"])
    [result] = job["results"]
    assert result["url"].startswith(f"{public}/out/20") and "urlExpiresAt" not in result
    assert "X-Amz" not in result["url"]
    media = await fetch(result["url"])
    assert hashlib.sha256(media.content).hexdigest() == result["sha256"]


def test_key_layout() -> None:
    storage = S3Storage(S3Settings(bucket="b", prefix="/media/easel/"))
    job = Job(id=new_job_id(), model="m", provider="p", provider_model="m", prompt="p",
              created_at=1_764_633_600.0)  # 2025-12-02 00:00 UTC
    assert storage.key_for(job, 2, "mp4") == f"media/easel/2025/12/02/{job.id}/2.mp4"
    bare = S3Storage(S3Settings(bucket="b", prefix=""))
    assert bare.key_for(job, 0, "png") == f"2025/12/02/{job.id}/0.png"


def test_uploads_at_once_never_need_more_connections_than_the_pool() -> None:
    storage = S3Storage(S3Settings(bucket="b", max_connections=10, transfer_concurrency=3))
    assert storage._limiter.total_tokens * 3 <= 10


async def test_the_client_is_made_once(moto: MotoServer) -> None:
    storage = S3Storage(S3Settings(bucket=BUCKET, endpoint_url=moto.url, region="us-east-1",
                                   access_key_id="a", secret_access_key="b"))
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(storage.probe)
    assert storage._client() is storage._client()
    await storage.aclose()


async def test_a_large_video_output_is_streamed_and_sent_in_parts(
    tmp_path: Path, moto: MotoServer, nursery: trio.Nursery
) -> None:
    body = MP4_HEAD + os.urandom(LARGE - len(MP4_HEAD))
    output = Output([], body=body, content_type="video/mp4")
    await serve_output(nursery, output)
    storage = MeteredStorage(S3Storage(S3Settings(
        bucket=BUCKET, endpoint_url=moto.url, region="us-east-1", addressing_style="path",
        access_key_id="testing", secret_access_key="testing")), Monitor())
    async with open_store(tmp_path / "db.sqlite") as store:
        job = await finalizing_job(store, output.url)
        finalizer = make_finalizer(store, tmp_path, storage, max_video_bytes=LARGE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(finalizer.run)
            ended = await until_settled(store, job.id)
            nursery.cancel_scope.cancel()
        await finalizer.aclose()
    assert ended.state is JobState.SUCCEEDED, ended.error
    [result] = ended.results
    assert result["sha256"] == hashlib.sha256(body).hexdigest() and result["size"] == LARGE
    head = moto.client().head_object(Bucket=BUCKET, Key=result["key"])
    assert head["ETag"].strip('"').endswith("-3") and head["ContentType"] == "video/mp4"
    assert not (tmp_path / "staging" / job.id).exists()
    await storage.aclose()


async def test_a_client_webhook_carries_a_presigned_url_made_at_delivery(
    easel_daemon: Any, moto: MotoServer, nursery: trio.Nursery
) -> None:
    receiver = await start_receiver(nursery)
    easel: EmbeddedDaemon = await easel_daemon(
        f'{moto.toml()}\n[webhooks]\nsecret = "{SECRET}"\nallow_private_targets = true\n')
    response = await easel.submit({"modelIdentifier": "sandbox-image", "prompt": "a date",
                                   "webhook_url": receiver.url})
    await easel.wait(response.json()["id"])
    with trio.fail_after(10):
        [received] = await receiver.wait_for(1)
    [result] = verify(received)["results"]
    assert "X-Amz-Signature=" in result["url"] and result["urlExpiresAt"]
    media = await fetch(result["url"])
    assert hashlib.sha256(media.content).hexdigest() == result["sha256"]
    # The stored payload holds the key only: the URL was made when it was sent.
    [row] = await easel.runtime.store.webhooks_of(response.json()["id"])
    assert "X-Amz" not in row.payload


def test_the_s3_backend_needs_a_bucket(tmp_path: Path) -> None:
    path = tmp_path / "easel.toml"
    path.write_text('[storage]\nbackend = "s3"\n')
    with pytest.raises(ConfigError) as refused:
        config_module.load(path, environ={})
    assert refused.value.problems == ['storage.s3.bucket: must be set when storage.backend is "s3"']


async def test_inputs_for_url_only_providers_are_published_in_the_bucket(
        moto: MotoServer) -> None:
    """With the s3 backend a prepared input goes to ``{prefix}/inputs/`` of the
    bucket, at a presigned URL good for the configured days, fetched over HTTP."""
    import httpx

    from actors.images.publish import BucketInputs

    storage = S3Storage(S3Settings(bucket=BUCKET, endpoint_url=moto.url, region="us-east-1",
                                   access_key_id="a", secret_access_key="b", prefix="easel"))
    data = b"\xff\xd8\xff a prepared input"
    url = await BucketInputs(storage, days=2).publish_input(data, "image/jpeg")
    name = hashlib.sha256(data).hexdigest() + ".jpg"
    assert f"/easel/inputs/{name}" in url and "Expires=172800" in url.replace("X-Amz-", "")
    fetched = await trio.to_thread.run_sync(lambda: httpx.get(url))
    assert fetched.status_code == 200 and fetched.content == data
    head = moto.client().head_object(Bucket=BUCKET, Key=f"easel/inputs/{name}")
    assert head["ContentType"] == "image/jpeg"
    await storage.aclose()
