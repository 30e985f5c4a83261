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
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from actors.alerts.settings import MonitoringSettings
from actors.batches.requests import BatchLimits
from actors.catalog import ModelSpec, check_fallbacks
from actors.conversion import make_converter, problems_of
from actors.finalizer import MediaSettings
from actors.images.presets import PreprocessSettings, structure_presets
from actors.outbox import OutboxSettings
from actors.providers import known_adapters, structure_sections
from actors.providers.base import ProviderSettings
from actors.quotas import QuotaSettings
from actors.redaction import SECRETS
from actors.storage import StorageSettings
from daemon.logs import FORMATS, parse_level

SYSTEM_CONFIG = Path("/etc/easel/easel.toml")
#: The shortest last path segment of a Slack webhook URL taken for its token.
SLACK_TOKEN_LENGTH = 16


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
    #: Seconds a connection may sit idle (no request, or a request's headers not
    #: complete) before the server closes it.
    keep_alive_timeout: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    #: Seconds a request's body may take to arrive after its headers (then 408).
    read_timeout: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    #: Connections open at once; past it a new one is answered 503 and closed.
    max_connections: int = attrs.field(default=512, validator=attrs.validators.ge(1))


@attrs.frozen
class LoggingSettings:
    level: str = "INFO"
    #: Log file; relative paths are under ``state_dir``. Empty: stderr only.
    file: str = "logs/easel.log"
    format: str = "json"
    #: Rotate the file when it would pass this many bytes (0: never).
    max_size: int = attrs.field(default=10 * 1024 * 1024, validator=attrs.validators.ge(0))
    #: Rotated files kept beside the current one.
    max_files: int = attrs.field(default=5, validator=attrs.validators.ge(1))


@attrs.frozen
class AuthSettings:
    """``[auth]``: who may call the API (``daemon/api/auth.py``)."""

    #: Every route but ``/api/health`` needs an API key (``easel keys create``).
    #: Keys are needed anyway once any key exists.
    require_keys: bool = False
    #: Serve a non-loopback address without requiring keys: anyone who reaches the
    #: port can spend the providers' money. Refused at start unless set.
    insecure_network_without_keys: bool = False
    #: A bearer token that opens ``/api/metrics`` (and nothing else) to a scraper.
    metrics_token: str = ""
    #: Seconds a key read from the database is trusted: how long a revocation may
    #: take to count in a running daemon.
    key_cache_seconds: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))


@attrs.frozen
class OpenAICompatSettings:
    """``[openai_compat]``: the OpenAI-compatible ``/v1`` endpoints."""

    #: Seconds ``POST /v1/images/generations`` and ``/v1/images/edits`` wait for
    #: their job before answering a timeout error that names the job.
    image_wait: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))


@attrs.frozen
class Config:
    daemon: DaemonSettings = attrs.field(factory=DaemonSettings)
    logging: LoggingSettings = attrs.field(factory=LoggingSettings)
    media: MediaSettings = attrs.field(factory=MediaSettings)
    #: ``[webhooks]``: signed client webhooks (actors/outbox.py).
    webhooks: OutboxSettings = attrs.field(factory=OutboxSettings)
    openai_compat: OpenAICompatSettings = attrs.field(factory=OpenAICompatSettings)
    #: ``[monitoring]``: error log retention, alert rules, alerters (actors/alerts/).
    monitoring: MonitoringSettings = attrs.field(factory=MonitoringSettings)
    providers: dict[str, ProviderSettings] = attrs.field(factory=dict)
    models: dict[str, ModelSpec] = attrs.field(factory=dict)
    auth: AuthSettings = attrs.field(factory=AuthSettings)
    #: ``[limits]``: quotas per API key and the daemon's queue depth (actors/quotas.py).
    limits: QuotaSettings = attrs.field(factory=QuotaSettings)
    #: ``[preprocess]``: input-image limits and presets (actors/images/).
    preprocess: PreprocessSettings = attrs.field(factory=PreprocessSettings)
    #: ``[storage]``: where outputs are kept (actors/storage/).
    storage: StorageSettings = attrs.field(factory=StorageSettings)
    #: ``[batches]``: a batch's size and concurrency limits (actors/batches/requests.py).
    batches: BatchLimits = attrs.field(factory=BatchLimits)

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
structure_presets(_converter)

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


#: What the kernel takes as an AF_UNIX socket path (``sun_path`` less its NUL).
_MAX_UNIX_PATH = 107
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


@attrs.frozen
class Address:
    """One ``[daemon] bind`` entry: a TCP ``host``/``port`` or a unix socket ``path``."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def client_url(self) -> str:
        """The base URL a client on this host uses to reach the address (a wildcard
        address is reached on loopback); for a unix socket, a placeholder host."""
        if self.path:
            return "http://easel"
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


def parse_bind(text: str) -> Address:
    """``"HOST:PORT"`` (an IPv6 host in brackets) or ``"unix:PATH"``; a ValueError
    says what is wrong. Checked here, when the config is loaded, so that
    ``check-config`` refuses what the socket layer would refuse at start."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise ValueError("unix: needs a socket path")
        if len(os.fsencode(path)) > _MAX_UNIX_PATH:
            raise ValueError(f"unix socket path is longer than {_MAX_UNIX_PATH} bytes")
        return Address(path=path)
    host, colon, port = text.rpartition(":")
    if not colon or not host or "/" in text:
        raise ValueError(f"expected HOST:PORT or unix:PATH, got {text!r}")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            return Address(host=str(ipaddress.IPv6Address(host[1:-1])), port=int(port))
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address") from None
    if ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host} is not an IPv4 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or address")
    return Address(host=host, port=int(port))


def _loopback(address: Address) -> bool:
    if address.path:
        return True
    if address.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_problem(config: Config) -> str | None:
    """Why the daemon must not start as configured: an address other callers can
    reach, with no API keys required. One line, or None."""
    auth = config.auth
    if auth.require_keys or auth.insecure_network_without_keys:
        return None
    for bind in config.daemon.bind:
        if not _loopback(parse_bind(bind)):
            return (f"[daemon] bind {bind} is not loopback and [auth] require_keys is false: "
                    "anyone who reaches it could submit jobs; set require_keys = true and "
                    "create keys with `easel keys create` (or, to serve without keys anyway, "
                    "insecure_network_without_keys = true)")
    return None


def _problems(config: Config) -> Iterator[str]:
    """What ``easel run`` would refuse in a well-typed config, as ``path: message``."""
    for name, model in config.models.items():
        if model.provider not in config.providers:
            yield f"models.{name}.provider: no [providers.{model.provider}] section"
    yield from check_fallbacks(config.models)
    adapters = known_adapters()
    for name, provider in config.providers.items():
        adapter = provider.adapter or name
        if provider.enabled and adapter not in adapters:
            where = f"providers.{name}.adapter" if provider.adapter else f"providers.{name}"
            yield f"{where}: unknown adapter {adapter!r} (known: {', '.join(adapters)})"
    if not config.daemon.bind:
        yield "daemon.bind: at least one address is needed"
    for i, bind in enumerate(config.daemon.bind):
        try:
            parse_bind(bind)
        except ValueError as exc:
            yield f"daemon.bind[{i}]: {exc}"
    if not config.daemon.state_dir.strip():
        yield "daemon.state_dir: must not be empty (check the ${...} variables it names)"
    try:
        parse_level(config.logging.level)
    except ValueError as exc:
        yield f"logging.level: {exc}"
    if config.storage.backend == "s3" and not config.storage.s3.bucket:
        yield "storage.s3.bucket: must be set when storage.backend is \"s3\""
    if config.logging.format not in FORMATS:
        yield f"logging.format: must be one of {', '.join(map(repr, FORMATS))}"


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Shipped defaults, then ``path`` (or the system config), then checks."""
    environ = os.environ if environ is None else environ
    tree = merge(_shipped("easel.toml"), {"models": _shipped("models.toml").get("models", {})})
    if path is not None:
        tree = merge(tree, _read_toml(Path(path)))
    elif SYSTEM_CONFIG.exists():
        tree = merge(tree, _read_toml(SYSTEM_CONFIG))
    config = structure(interpolate(tree, environ))
    for section in (config.webhooks, config.auth, config.storage.s3, config.monitoring.email,
                    *config.providers.values()):
        SECRETS.add_fields(section)  # masked by value in logs and errors from now on
    # A Slack incoming webhook's URL is its credential: whoever has it may post. Its
    # token is the last path segment (24 characters); the rest (a host, a port)
    # must not be masked wherever it appears.
    token = config.monitoring.slack.webhook_url.rstrip("/").rpartition("/")[2]
    if len(token) >= SLACK_TOKEN_LENGTH:
        SECRETS.add(token)
    problems = list(_problems(config))
    if problems:
        raise ConfigError(problems)
    return config
