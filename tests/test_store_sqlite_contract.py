"""The store contract (tests/store_contract.py) run against the SQLite backend."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from actors.store import open_store
from tests.store_contract import OpenBackend, StoreContract


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> OpenBackend:
        return functools.partial(open_store, tmp_path / "state" / "easel.db")
