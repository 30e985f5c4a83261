"""Masking secrets in anything that leaves the process: log lines, error details.

Provider answers and log records can carry keys (an echoed ``Authorization``
header, a pre-signed URL); both the logs and the ``details`` of API errors go
through this one set of patterns, so a key masked in one is masked in the other.
The patterns here are the generic ones; what one provider's keys look like
(Replicate's ``r8_...``) is declared by that provider (``Provider.redactions``)
and added from the registry.

Patterns only catch what looks like a key. A provider that answers ``401 Invalid
credential <key>`` echoes a key of any shape, so every configured credential is
also masked *by value*: ``SECRETS`` (a ``Secrets``) holds each one registered with
``SECRETS.add(value)`` (provider sections' keys, tokens and webhook secrets when
their adapter is built, the client webhook secret, API keys) and masks it, and its
obvious encodings (base64 and base64url at any alignment, so inside a Basic-auth
header or a JWT too; URL-encoding; JSON escaping), wherever ``redact_text`` runs
and in every ``ErrorInfo`` (``actors/errors.py``).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

MASK = "***"

#: A key whose value is a secret, whatever the value looks like. Keys are compared
#: lower-cased with ``-`` read as ``_`` (``X-Api-Key`` is ``x_api_key``).
_SECRET_KEY = re.compile(
    r"(?:^|_)(?:api_?key|api_?token|token|secret|password|passwd|authorization"
    r"|credentials?|private_?key|cookie|set_cookie|signing_?key)$"
    r"|secret|password"
)

#: Secret-looking text anywhere in a string: (pattern, replacement).
_SECRET_TEXT: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Bearer abc", "token=abc", "'api_key': 'abc'", "password: abc".
    (
        re.compile(
            r"""(?ix)
            ((?<![a-z0-9])(?:authorization|api[_-]?key|api[_-]?token|access[_-]?token
               |refresh[_-]?token|auth[_-]?token|token|client[_-]?secret|secret|password
               |passwd)(?![a-z0-9])["']?\s*[:=]\s*["']?)
            (?:(?:bearer|basic|token)\s+)?[^\s"',;&}\]]+
            """
        ),
        r"\1" + MASK,
    ),
    # Credentials in a URL's query string, S3 pre-signed URLs included.
    (
        re.compile(
            r"(?i)([?&;][\w.-]*(?:key|token|secret|signature|password|credential)[\w.-]*=)"
            r"[^&\s#\"']+"
        ),
        r"\1" + MASK,
    ),
    # Credentials in a URL's authority: "https://user:password@host/...".
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@\"'<>]+@"), r"\1" + MASK + "@"),
    # "Bearer" needs a token-sized word after it, so prose rarely trips it.
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + MASK),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"), "whsec_" + MASK),  # webhook secrets
    # Easel's own API keys (actors/keys.py): the id may show, the secret never.
    (re.compile(r"\b(easel_[0-9a-f]{12}_)[A-Za-z0-9_-]{43}"), r"\1" + MASK),
)

#: A word every match of a ``_SECRET_TEXT`` pattern contains, in lower case (it is
#: searched in the lower-cased text: a case-insensitive alternation is several times
#: slower). Most text holds none (a path, "job accepted"), and one search for them is
#: far cheaper than running every pattern; keep it in step with the patterns above.
_GENERIC_HINT = re.compile(
    r"auth|key|token|secret|passw|bearer|signature|credential|whsec_|easel_|://[^/\s]*@")

_MAX_DEPTH = 8

#: Shorter values are not masked by value: a three-letter "secret" would mask
#: every word it is part of, and guessing it is easy anyway.
MIN_SECRET_LENGTH = 6
#: A base64 fragment shorter than this is not looked for (it could occur by chance).
_MIN_FRAGMENT = 8


def _base64_fragments(raw: bytes) -> Iterator[str]:
    """What base64 (and base64url) of any text containing ``raw`` always contains.

    Base64 turns 3 bytes into 4 characters, so ``raw`` is written differently at
    each of the 3 positions it may start at in the encoded text; at each, the
    characters made only of ``raw``'s bits are the same whatever surrounds it
    (``user:<key>`` in a Basic-auth header, a JWT payload naming the key).
    """
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw + bytes(2)).decode("ascii")
        start = -(-8 * offset // 6)  # the first character made of raw's bits only
        end = (8 * (offset + len(raw))) // 6
        fragment = encoded[start:end]
        if len(fragment) >= _MIN_FRAGMENT:
            yield fragment
            yield fragment.replace("+", "-").replace("/", "_")


def encodings(value: str) -> frozenset[str]:
    """``value`` and the forms it takes once encoded: what masking looks for."""
    escaped = json.dumps(value)[1:-1]
    found = {value, escaped, escaped.replace("/", "\\/"),
             json.dumps(value, ensure_ascii=False)[1:-1],
             urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value, safe="")}
    for fragment in _base64_fragments(value.encode()):
        found |= {fragment, urllib.parse.quote(fragment, safe="")}
    return frozenset(text for text in found if text)


class Secrets:
    """Every configured credential, masked by value (and encodings) in any text.

    ``add(value)`` registers one (a value shorter than ``MIN_SECRET_LENGTH`` is
    ignored; each half of an ``id:secret`` pair is registered too); ``mask(text)`` replaces each occurrence with ``***``. Thread-safe:
    the log writer thread masks while the trio thread may register. Caches of
    texts found clean are dropped when a secret is added (``generation``).
    """

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._search: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        #: Bumped by every ``add`` that registered something new.
        self.generation = 0

    def add(self, value: str) -> None:
        if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
            return
        # A key pair given as one value (fal's "KEY_ID:KEY_SECRET") may be echoed
        # half by half: each half is masked too.
        values = {value} | {part for part in value.split(":") if len(part) >= MIN_SECRET_LENGTH}
        with self._lock:
            if values <= self._values:
                return
            self._values |= values
            texts = sorted({text for known in self._values for text in encodings(known)},
                           key=len, reverse=True)
            self._search = re.compile("|".join(map(re.escape, texts)))
            self.generation += 1
        _CLEAN.clear()

    def add_fields(self, settings: Any) -> None:
        """Register every non-empty string field of an attrs instance whose name
        says it is a credential (``api_key``, ``access_key``, ``webhook_secret``...)."""
        for field in attrs.fields(type(settings)):
            value = getattr(settings, field.name)
            if isinstance(value, str) and is_credential_name(field.name):
                self.add(value)

    def mask(self, text: str) -> str:
        search = self._search
        if search is None:
            return text
        return search.sub(MASK, text)

    def mask_value(self, value: Any, _depth: int = 0) -> Any:
        """``value`` with every string in it masked (dicts and lists copied)."""
        if self._search is None or _depth > _MAX_DEPTH:
            return value
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, Mapping):
            return {key: self.mask_value(item, _depth + 1) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.mask_value(item, _depth + 1) for item in value]
        return value


#: Names of settings that hold credentials: what ``_SECRET_KEY`` says, plus the
#: ``access_key`` of key pairs (Kling's, S3's), which is a credential too.
_CREDENTIAL_NAME = re.compile(r"(?:^|_)(?:access_?key|key|secret|token)$")


def is_credential_name(name: str) -> bool:
    return _is_secret_key(name) or bool(_CREDENTIAL_NAME.search(name.lower()))


#: The process's one registry: logs and errors everywhere mask with it.
SECRETS = Secrets()


@functools.lru_cache(maxsize=4096)
def _is_secret_key(key: str) -> bool:
    # Cached: the same few keys (a log call's extras, an answer's fields) recur.
    return bool(_SECRET_KEY.search(key.lower().replace("-", "_")))


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value)


@functools.cache
def _patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    """The generic patterns, then every provider's. Read from the registry on first
    use, not at import: the provider modules themselves import this module."""
    from actors.providers import PROVIDERS

    return _SECRET_TEXT + tuple(p for provider in PROVIDERS.values() for p in provider.redactions)


@functools.cache
def _provider_filters() -> tuple[re.Pattern[str], ...]:
    """Searches that find something in any text a provider's pattern would change:
    their patterns joined into one alternation per set of flags (exact: a text none
    of them matches is left as it is by every one)."""
    from actors.providers import PROVIDERS

    sources: dict[int, list[str]] = {}
    for provider in PROVIDERS.values():
        for pattern, _ in provider.redactions:
            sources.setdefault(pattern.flags, []).append(pattern.pattern)
    filters: list[re.Pattern[str]] = []
    for flags, texts in sources.items():
        try:
            filters.append(re.compile("|".join(f"(?:{text})" for text in texts), flags))
        except re.error:  # a pattern with leading inline flags cannot be nested
            filters.extend(re.compile(text, flags) for text in texts)
    return tuple(filters)


#: Short texts found to hold nothing to mask (a method, a path, an address, a
#: message): the same ones come back on every request. Only clean texts are kept,
#: so no secret stays in memory because it was logged.
_CLEAN: dict[str, None] = {}
_CLEAN_MAX = 4096
_CLEAN_LONGEST = 256


def redact_text(text: str) -> str:
    """Mask configured secrets (``SECRETS``) and secret-looking substrings (bearer
    tokens, ``whsec_…``, providers' keys)."""
    if text in _CLEAN:
        return text
    text = SECRETS.mask(text)
    if _GENERIC_HINT.search(text.lower()) is None:
        for search in _provider_filters():
            if search.search(text) is not None:
                break
        else:
            if len(text) <= _CLEAN_LONGEST:
                if len(_CLEAN) >= _CLEAN_MAX:
                    _CLEAN.clear()
                _CLEAN[text] = None
            return text
    for pattern, replacement in _patterns():
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any, _depth: int = 0) -> Any:
    """A JSON-safe, redacted copy of ``value``.

    Values under secret-named keys become ``***`` whatever they are (empty values
    stay, because "no key configured" is worth seeing); strings are scanned for
    secret-looking text; anything that is not JSON becomes its ``repr``, scanned
    too. Copying also freezes the value: the listener thread formats it later, and
    a dict the caller mutates after logging must not change the line.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if _depth >= _MAX_DEPTH:
        return redact_text(repr(value))
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _is_secret_key(name) and not _is_empty(item):
                out[name] = MASK
            else:
                out[name] = redact(item, _depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(item, _depth + 1) for item in value]
    return redact_text(repr(value))


def is_secret_field(key: str, value: Any) -> bool:
    """Whether a field named ``key`` must be masked whole (an empty one stays)."""
    return _is_secret_key(key) and not _is_empty(value)
