"""``[storage]`` and ``[storage.s3]``: where outputs are kept (README, "Storage")."""

from __future__ import annotations

import attrs

_MIB = 1024 * 1024


@attrs.frozen
class S3Settings:
    """An S3-compatible bucket: AWS S3, Cloudflare R2, MinIO, Backblaze B2..."""

    bucket: str = ""
    #: Keys are ``{prefix}/{yyyy}/{mm}/{dd}/{job_id}/{n}.{ext}`` (the job's creation
    #: date, UTC); an empty prefix leaves that part out.
    prefix: str = "easel"
    region: str = ""
    #: Another S3 API than AWS's (``https://<account>.r2.cloudflarestorage.com``,
    #: ``http://minio:9000``); empty: AWS.
    endpoint_url: str = ""
    #: ``path`` (``endpoint/bucket/key``, what MinIO wants), ``virtual``
    #: (``bucket.endpoint/key``) or ``auto``.
    addressing_style: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "path", "virtual")))
    #: Credentials; both empty: boto3's own chain (environment, shared files,
    #: instance or container roles).
    access_key_id: str = attrs.field(default="", repr=False)
    secret_access_key: str = attrs.field(default="", repr=False)
    #: The bucket's public base URL (a CDN, R2's public bucket URL): result URLs are
    #: ``{public_base_url}/{key}``. Empty: each read gets a presigned GET.
    public_base_url: str = ""
    #: Seconds a presigned GET stays valid (S3 allows up to 7 days).
    presign_expiry: int = attrs.field(
        default=3600, validator=[attrs.validators.ge(1), attrs.validators.le(604_800)])
    #: botocore's connection pool; uploads at once are capped so that their parts
    #: never need more connections than this.
    max_connections: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    #: Parts of one multipart upload sent at once.
    transfer_concurrency: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    #: Files at least this large go up in parts of ``multipart_chunksize``.
    multipart_threshold: int = attrs.field(default=16 * _MIB, validator=attrs.validators.ge(5 * _MIB))
    multipart_chunksize: int = attrs.field(default=8 * _MIB, validator=attrs.validators.ge(5 * _MIB))
    connect_timeout: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    read_timeout: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    #: botocore's own attempts per call (its ``standard`` retry mode); the
    #: finalizer retries a failed store again later with its own backoff.
    max_attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))


@attrs.frozen
class StorageSettings:
    #: ``local`` (under ``state_dir/media``, served by Easel at ``/media/``) or ``s3``.
    backend: str = attrs.field(default="local", validator=attrs.validators.in_(("local", "s3")))
    s3: S3Settings = attrs.field(factory=S3Settings)
