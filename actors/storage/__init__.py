"""Where outputs are kept, and the URLs clients fetch them at.

- ``base``: the ``Storage`` interface every backend implements, ``StorageError``
  and ``Link``;
- ``local``: files under the state dir, served at ``/media/`` (the default);
- ``s3``: any S3-compatible bucket through boto3 (AWS S3, R2, MinIO, B2);
- ``metered``: a backend with its health and Prometheus figures;
- ``links``: result URLs made each time a job is read, never stored;
- ``outputs``: a job's stored output read back, as a later item's input image;
- ``kinds``: what an output is, sniffed from its first bytes;
- ``settings``: the ``[storage]`` configuration.

``open_storage`` picks the backend the configuration names.
"""

from __future__ import annotations

from pathlib import Path

from actors.monitor import Monitor
from actors.storage.base import Link, NotStored, Storage, StorageError, Upload
from actors.storage.links import ResultLinks
from actors.storage.local import MEDIA_PREFIX, LocalStorage
from actors.storage.metered import MeteredStorage
from actors.storage.settings import S3Settings, StorageSettings

__all__ = [
    "MEDIA_PREFIX",
    "Link",
    "LocalStorage",
    "MeteredStorage",
    "NotStored",
    "ResultLinks",
    "S3Settings",
    "Storage",
    "StorageError",
    "StorageSettings",
    "Upload",
    "open_storage",
]


def open_storage(
    settings: StorageSettings, media_dir: Path, base_url: str, monitor: Monitor
) -> MeteredStorage:
    """The configured backend, metered. ``base_url``: where clients reach Easel
    (for the local backend's ``/media/`` URLs). Makes no connection: the s3
    client is built on first use, in a worker thread."""
    if settings.backend == "s3":
        from actors.storage.s3 import S3Storage  # boto3 is imported only when used

        return MeteredStorage(S3Storage(settings.s3), monitor)
    return MeteredStorage(LocalStorage(media_dir, base_url), monitor)
