"""API keys: what one is, how its secret is made and checked, and the daemon's view of them.

A key is shown once, when it is made: ``easel_<id>_<secret>``, where ``<id>`` (12
hex digits) names the key everywhere else (``easel keys list``, the ``owner`` of
the jobs it creates, the logs) and ``<secret>`` is 32 random bytes. Only the
SHA-256 of the whole key is stored: a copy of the database does not let anyone call
the API. A presented key is found by its id and its hash compared with
``hmac.compare_digest``, in constant time.

Keys are made and revoked by ``easel keys`` on the database of the state
directory, while the daemon may be running (SQLite's WAL lets both work). The
daemon reads them through ``KeyRing``, which trusts what it read for
``cache_seconds`` at most: a key made or revoked from the command line counts from
then on, without a restart.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from actors.store.protocol import Store

#: The start of every key, so a leaked one is recognisable (and maskable) as Easel's.
PREFIX = "easel_"
_TOKEN = re.compile(r"easel_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")

#: How many key lookups ``KeyRing`` remembers at most (found or not).
CACHE_ENTRIES = 4096


class Scope(str, enum.Enum):
    """What a key may do."""

    #: Create jobs (and cancel its own).
    SUBMIT = "submit"
    #: Read its own jobs, their events and media.
    READ = "read"
    #: Everything: every job, detailed health, metrics, the admin API and pages.
    ADMIN = "admin"


def parse_scopes(text: str) -> frozenset[Scope]:
    """``"submit,read"`` as scopes; ValueError naming what is not one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("at least one scope is needed (submit, read, admin)")
    try:
        return frozenset(Scope(name) for name in names)
    except ValueError:
        unknown = [name for name in names if name not in {s.value for s in Scope}]
        raise ValueError(f"unknown scope {unknown[0]!r} (known: submit, read, admin)") from None


def hash_token(token: str) -> str:
    """What is stored of a key: the hex SHA-256 of the whole key."""
    return hashlib.sha256(token.encode()).hexdigest()


def key_id_of(token: str) -> str | None:
    """The id inside a presented key, or None when it is not shaped like one."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


@attrs.frozen
class KeyLimits:
    """A key's own limits; None: the configured default (``[limits]``)."""

    #: Requests a second (a token bucket refilled at this rate).
    rate: float | None = None
    #: Requests that may come at once before the rate applies.
    burst: int | None = None
    #: Jobs queued or running at once.
    max_active_jobs: int | None = None
    #: Cost (the catalog's units) of the jobs accepted in one UTC day.
    daily_spend: float | None = None


@attrs.frozen
class ApiKey:
    """One stored key (never its secret)."""

    id: str
    name: str
    #: ``hash_token`` of the key.
    hash: str
    scopes: frozenset[Scope]
    created_at: float
    revoked_at: float | None = None
    limits: KeyLimits = KeyLimits()

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def matches(self, token: str) -> bool:
        """Whether ``token`` is this key, compared in constant time."""
        return hmac.compare_digest(hash_token(token), self.hash)


def new_key(name: str, scopes: frozenset[Scope], limits: KeyLimits,
            created_at: float) -> tuple[ApiKey, str]:
    """A fresh key and its secret form, the one time it exists in clear."""
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(key_id, name, hash_token(token), scopes, created_at, limits=limits)
    return key, token


@attrs.define
class _Entry:
    key: ApiKey | None
    at: float


class KeyRing:
    """The daemon's view of the stored keys, read through the store and trusted for
    ``cache_seconds`` (0: every request reads the store).

    The cache is what lets every request be checked without a database read each;
    its bound is what a revocation may take to count.
    """

    def __init__(self, store: Store, cache_seconds: float = 1.0) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._keys: dict[str, _Entry] = {}
        self._any: _Entry | None = None
        self._any_found = False

    def _fresh(self, entry: _Entry | None) -> bool:
        return entry is not None and trio.current_time() - entry.at < self._cache_seconds

    async def get(self, key_id: str) -> ApiKey | None:
        """The stored key ``key_id`` (revoked or not), or None."""
        entry = self._keys.get(key_id)
        if entry is None or not self._fresh(entry):
            key = await self._store.get_key(key_id)
            if len(self._keys) >= CACHE_ENTRIES:
                self._keys.clear()
            entry = self._keys[key_id] = _Entry(key, trio.current_time())
        return entry.key

    async def identify(self, token: str) -> ApiKey | None:
        """The live (not revoked) key ``token`` is, or None."""
        key_id = key_id_of(token)
        if key_id is None:
            return None
        key = await self.get(key_id)
        if key is None or key.revoked or not key.matches(token):
            return None
        return key

    async def any_exist(self) -> bool:
        """Whether a key was ever made (revoked ones count: revoking every key must
        not open the daemon to everyone)."""
        if not self._any_found and not self._fresh(self._any):
            found = await self._store.has_keys()
            self._any = _Entry(None, trio.current_time())
            self._any_found = found
        return self._any_found
