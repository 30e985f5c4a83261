"""Masking secrets in anything that leaves the process: log lines, error details.

Provider answers and log records can carry keys (an echoed ``Authorization``
header, a pre-signed URL); both the logs and the ``details`` of API errors go
through this one set of patterns, so a key masked in one is masked in the other.
The patterns here are the generic ones; what one provider's keys look like
(Replicate's ``r8_...``) is declared by that provider (``Provider.redactions``)
and added from the registry.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

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
    # "Bearer" needs a token-sized word after it, so prose rarely trips it.
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + MASK),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]+"), "whsec_" + MASK),  # webhook secrets
)

#: A word every match of a ``_SECRET_TEXT`` pattern contains, in lower case (it is
#: searched in the lower-cased text: a case-insensitive alternation is several times
#: slower). Most text holds none (a path, "job accepted"), and one search for them is
#: far cheaper than running every pattern; keep it in step with the patterns above.
_GENERIC_HINT = re.compile(r"auth|key|token|secret|passw|bearer|signature|credential|whsec_")

_MAX_DEPTH = 8


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
    """Mask secret-looking substrings (bearer tokens, ``whsec_…``, providers' keys)."""
    if text in _CLEAN:
        return text
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
