"""The ``s3`` backend: any S3-compatible bucket, through boto3.

One boto3 client, made once (in a worker thread, on first use: building it reads
boto's service models from disk) and shared by every call; boto3 clients are
thread-safe. Every call runs in ``trio.to_thread.run_sync`` under a limiter sized
so that the uploads it lets through at once, each sending
``transfer_concurrency`` parts in parallel, never need more connections than
botocore's pool holds (``max_connections``): a thread never waits for a pooled
connection while holding a worker. Files from ``multipart_threshold`` up go in
parts (``TransferConfig``), read from disk part by part, never whole.

Keys: ``{prefix}/{yyyy}/{mm}/{dd}/{job_id}/{n}.{ext}``, dated by the job's creation
(UTC), so a retried upload lands on the same key. Links: ``{public_base_url}/{key}``
for a public bucket, else a presigned GET valid ``presign_expiry`` seconds, made
on each read. Checksums are sent only where the API requires them
(``when_required``): several S3-compatible services refuse the newer default ones.
"""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any
from urllib.parse import quote

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions
import trio
from boto3.s3.transfer import TransferConfig

from actors.jobs import Job
from actors.storage.base import Link, NotStored, StorageError, Upload
from actors.storage.settings import S3Settings

#: The error codes of a GET for a key the bucket does not hold.
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
#: What a failed boto3 call raises (network, credentials, the service's answer).
_FAILURES = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    boto3.exceptions.Boto3Error,
    OSError,
)


class S3Storage:
    name = "s3"

    def __init__(self, settings: S3Settings) -> None:
        if not settings.bucket:
            raise ValueError("[storage.s3] bucket must be set for the s3 backend")
        self.settings = settings
        self.prefix = settings.prefix.strip("/")
        self._config = botocore.config.Config(
            max_pool_connections=settings.max_connections,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"mode": "standard", "max_attempts": settings.max_attempts},
            s3={"addressing_style": settings.addressing_style},
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._transfer = TransferConfig(
            multipart_threshold=settings.multipart_threshold,
            multipart_chunksize=settings.multipart_chunksize,
            max_concurrency=settings.transfer_concurrency,
            use_threads=settings.transfer_concurrency > 1,
        )
        self._limiter = trio.CapacityLimiter(
            max(1, settings.max_connections // settings.transfer_concurrency))
        #: Presigning is local work (no connection), apart from the pool's limiter.
        self._sign_limiter = trio.CapacityLimiter(4)
        self._client_lock = threading.Lock()
        self._made: Any = None

    def _client(self) -> Any:
        """The one client (built on first use, in a worker thread)."""
        with self._client_lock:
            if self._made is None:
                s = self.settings
                credentials = {}
                if s.access_key_id or s.secret_access_key:
                    credentials = {"aws_access_key_id": s.access_key_id,
                                   "aws_secret_access_key": s.secret_access_key}
                self._made = boto3.session.Session().client(
                    "s3", region_name=s.region or None, endpoint_url=s.endpoint_url or None,
                    config=self._config, **credentials)
            return self._made

    def key_for(self, job: Job, index: int, extension: str) -> str:
        day = datetime.datetime.fromtimestamp(job.created_at, datetime.UTC)
        key = f"{day:%Y/%m/%d}/{job.id}/{index}.{extension}"
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _call(self, what: str, fn: Any, *args: Any, limiter: trio.CapacityLimiter) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)
        except _FAILURES as exc:
            raise StorageError(f"s3 {what} failed: {type(exc).__name__}: {exc}") from exc

    def _upload(self, key: str, upload: Upload) -> None:
        self._client().upload_file(
            str(upload.path), self.settings.bucket, key, Config=self._transfer,
            ExtraArgs={"ContentType": upload.content_type, "Metadata": {"sha256": upload.sha256}},
        )

    async def put(self, key: str, upload: Upload) -> None:
        await self._call("upload", self._upload, key, upload, limiter=self._limiter)

    def _presign(self, key: str) -> str:
        url: str = self._client().generate_presigned_url(
            "get_object", Params={"Bucket": self.settings.bucket, "Key": key},
            ExpiresIn=self.settings.presign_expiry,
        )
        return url

    async def link(self, key: str) -> Link:
        if self.settings.public_base_url:
            return Link(f"{self.settings.public_base_url.rstrip('/')}/{quote(key)}")
        expires_at = time.time() + self.settings.presign_expiry
        url = await self._call("presign", self._presign, key, limiter=self._sign_limiter)
        return Link(url, expires_at)

    def _get(self, key: str, max_bytes: int) -> bytes:
        try:
            answer = self._client().get_object(Bucket=self.settings.bucket, Key=key,
                                               Range=f"bytes=0-{max_bytes}")
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise NotStored(key) from None
            raise
        body = answer["Body"]
        try:
            data: bytes = body.read(max_bytes + 1)
        finally:
            body.close()
        return data

    async def read(self, key: str, max_bytes: int) -> bytes:
        """One ranged GET (the first ``max_bytes + 1`` bytes): an object larger than
        the cap is never fetched whole."""
        data: bytes = await self._call("get", self._get, key, max_bytes, limiter=self._limiter)
        return data

    def _publish(self, key: str, data: bytes, content_type: str, seconds: int) -> str:
        self._client().put_object(Bucket=self.settings.bucket, Key=key, Body=data,
                                  ContentType=content_type)
        url: str = self._client().generate_presigned_url(
            "get_object", Params={"Bucket": self.settings.bucket, "Key": key},
            ExpiresIn=seconds)
        return url

    async def publish(self, name: str, data: bytes, content_type: str, seconds: int) -> str:
        """Put ``data`` at ``{prefix}/inputs/{name}`` for a provider to fetch; a URL
        good for ``seconds`` (a presigned GET, or the public base URL's). A small
        object (an input image is at most a few MB): one PUT, no multipart."""
        key = f"{self.prefix}/inputs/{name}" if self.prefix else f"inputs/{name}"
        url: str = await self._call("publish", self._publish, key, data, content_type,
                                    seconds, limiter=self._limiter)
        if self.settings.public_base_url:
            return f"{self.settings.public_base_url.rstrip('/')}/{quote(key)}"
        return url

    def _head_bucket(self) -> None:
        self._client().head_bucket(Bucket=self.settings.bucket)

    async def probe(self) -> None:
        await self._call("head_bucket", self._head_bucket, limiter=self._limiter)

    async def aclose(self) -> None:
        client = self._made
        if client is not None:
            await trio.to_thread.run_sync(client.close)
