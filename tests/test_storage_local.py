"""The storage contract (tests/storage_contract.py) against the local backend.

Its outage is a real filesystem failure: the media directory replaced by a file,
so every write under it fails (``NotADirectoryError``) until it is put back.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import EmbeddedDaemon
from tests.storage_contract import Backend, StorageContract


def _fail(easel: EmbeddedDaemon) -> None:
    media = easel.state_dir / "media"
    os.replace(media, media.with_name("media.away"))
    media.write_bytes(b"not a directory")


def _recover(easel: EmbeddedDaemon) -> None:
    media = easel.state_dir / "media"
    media.unlink()
    os.replace(media.with_name("media.away"), media)


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def backend(self) -> Backend:
        return Backend("local", '[storage]\nbackend = "local"\n', _fail, _recover)
