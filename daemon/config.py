"""Configuration: shipped defaults, the operator's file over them, env secrets.

Loading order: ``config/easel.toml`` and ``config/models.toml`` shipped inside the
package (found the same way from a checkout or an installed wheel), then the file
given with ``--config`` (or ``/etc/easel/easel.toml`` when it exists), merged table by
table. ``${NAME}`` and ``${NAME:-default}`` in strings are replaced from the
environment, so secrets stay out of files. cattrs structures the result into attrs
classes; every mistake is reported with its key path
(``providers.replicate.rate: expected a number, got a string``).
"""

from __future__ import annotations

import importlib.resources
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from actors.catalog import ModelSpec, check_fallbacks
from actors.conversion import make_converter, problems_of
from actors.outbox import OutboxSettings
from actors.providers import structure_sections
from actors.providers.base import ProviderSettings

SYSTEM_CONFIG = Path("/etc/easel/easel.toml")


class ConfigError(Exception):
    """The configuration is wrong; ``problems`` lists ``path: message`` lines."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class DaemonSettings:
    bind: list[str] = attrs.field(factory=lambda: ["127.0.0.1:8700"])
    state_dir: str = ".easel-state"
    drain_timeout: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    max_body_bytes: int = attrs.field(default=1_048_576, validator=attrs.validators.ge(1024))
    public_base_url: str = ""
    #: Seconds an ``Idempotency-Key`` stays bound to its job.
    idempotency_window: float = attrs.field(default=86_400.0, validator=attrs.validators.gt(0))
    #: Restart intensity of the supervisor: more than ``max_restarts`` crashes of
    #: actors within ``max_restart_seconds`` and the process exits non-zero.
    max_restarts: int = 5
    max_restart_seconds: float = 60.0


@attrs.frozen
class LoggingSettings:
    level: str = "INFO"
    #: Log file; relative paths are under ``state_dir``. Empty: stderr only.
    file: str = "logs/easel.log"
    format: str = "json"
    max_size: int = 10 * 1024 * 1024
    max_files: int = 5


@attrs.frozen
class MediaSettings:
    #: Largest output Easel downloads from a provider, in bytes.
    max_download_bytes: int = 200 * 1024 * 1024


@attrs.frozen
class Config:
    daemon: DaemonSettings = attrs.field(factory=DaemonSettings)
    logging: LoggingSettings = attrs.field(factory=LoggingSettings)
    media: MediaSettings = attrs.field(factory=MediaSettings)
    #: ``[webhooks]``: signed client webhooks (actors/outbox.py).
    webhooks: OutboxSettings = attrs.field(factory=OutboxSettings)
    providers: dict[str, ProviderSettings] = attrs.field(factory=dict)
    models: dict[str, ModelSpec] = attrs.field(factory=dict)

    @property
    def state_dir(self) -> Path:
        return Path(self.daemon.state_dir)

    @property
    def log_file(self) -> Path | None:
        if not self.logging.file:
            return None
        return self.state_dir / self.logging.file

    def adapter_name(self, provider: str) -> str:
        return self.providers[provider].adapter or provider


# The one strict converter (no "false" -> True, no 5.5 -> 5), which structures
# each [providers.X] table into its provider's own settings class.
_converter = make_converter()
structure_sections(_converter)

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, environ: Mapping[str, str]) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a TOML tree.

    An unset variable becomes the default or the empty string: the shipped config
    names every provider's key, and an operator who uses only the sandbox must not
    have to set them all. A section left without its key is disabled at start
    with a warning naming the setting (``actors.providers.usable``).
    """
    if isinstance(value, str):
        # As in POSIX sh, ":-" takes the default when the variable is unset or empty.
        return _ENV_REF.sub(lambda m: environ.get(m.group(1)) or m.group(2) or "", value)
    if isinstance(value, dict):
        return {k: interpolate(v, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ) for v in value]
    return value


#: Tables that an override replaces whole: a model's ``polling = {strategy =
#: "fixed", interval = 5}`` must not inherit the shipped ``first_check`` of another
#: strategy. Paths with ``*`` for any key.
_REPLACED_WHOLE = {("models", "*", "polling"), ("providers", "*", "polling")}


def _replaced_whole(path: tuple[str, ...]) -> bool:
    return any(
        len(pattern) == len(path) and all(p in ("*", k) for p, k in zip(pattern, path, strict=True))
        for pattern in _REPLACED_WHOLE
    )


def merge(
    base: dict[str, Any], override: Mapping[str, Any], path: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Deep-merge TOML tables: tables merge key by key (except ``_REPLACED_WHOLE``),
    anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        here = (*path, key)
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and not _replaced_whole(here):
            out[key] = merge(out[key], value, here)
        else:
            out[key] = value
    return out


def _shipped(name: str) -> dict[str, Any]:
    text = importlib.resources.files("config").joinpath(name).read_text(encoding="utf-8")
    return tomllib.loads(text)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from None


def structure(tree: Mapping[str, Any]) -> Config:
    try:
        return _converter.structure(dict(tree), Config)
    except cattrs.BaseValidationError as exc:
        raise ConfigError(problems_of(exc)) from None


def _check(config: Config) -> None:
    problems: list[str] = []
    for name, model in config.models.items():
        if model.provider not in config.providers:
            problems.append(f"models.{name}.provider: no [providers.{model.provider}] section")
    problems.extend(check_fallbacks(config.models))
    if not config.daemon.bind:
        problems.append("daemon.bind: at least one address is needed")
    for i, bind in enumerate(config.daemon.bind):
        if not bind.startswith("unix:") and ":" not in bind:
            problems.append(f"daemon.bind[{i}]: expected HOST:PORT or unix:PATH, got {bind!r}")
    if problems:
        raise ConfigError(problems)


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Shipped defaults, then ``path`` (or the system config), then checks."""
    environ = os.environ if environ is None else environ
    tree = merge(_shipped("easel.toml"), {"models": _shipped("models.toml").get("models", {})})
    if path is not None:
        tree = merge(tree, _read_toml(Path(path)))
    elif SYSTEM_CONFIG.exists():
        tree = merge(tree, _read_toml(SYSTEM_CONFIG))
    config = structure(interpolate(tree, environ))
    _check(config)
    return config
