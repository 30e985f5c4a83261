"""The provider registry: the one place that lists the providers Easel speaks.

Each provider is one module in this package whose ``PROVIDER`` record
(``actors/providers/base.py``) holds everything Easel knows about it: adapter,
parameter rules, required settings, settings class, capabilities and secret
patterns. Adding a provider is adding its module to ``_MODULES`` (plus its
simulator under ``tests/simulators/`` and its catalog entries in
``config/models.toml``); nothing else in Easel names a provider.

A ``[providers.NAME]`` section selects its provider with ``adapter = "..."``, or by
its own name (``[providers.bfl]``); several sections may share one provider
(``kling`` and ``tuzi-kling``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.errors import IterableValidationError, IterableValidationNote

from actors.conversion import Invalid, strict_object, type_name
from actors.providers import bfl, fal, kling, openai, pollo, replicate, sandbox
from actors.providers.base import Adapter, Provider, ProviderSettings
from actors.redaction import SECRETS

log = logging.getLogger(__name__)

_MODULES = (sandbox, replicate, bfl, kling, pollo, openai, fal)

#: Adapter name -> provider.
PROVIDERS: Mapping[str, Provider] = {module.PROVIDER.name: module.PROVIDER for module in _MODULES}


def known_adapters() -> list[str]:
    return sorted(PROVIDERS)


def provider(adapter: str) -> Provider:
    """The provider named ``adapter``; ``ValueError`` names the known ones."""
    found = PROVIDERS.get(adapter)
    if found is None:
        raise ValueError(f"unknown adapter {adapter!r} (known: {', '.join(known_adapters())})")
    return found


def family(section: str, settings: ProviderSettings) -> str:
    """The adapter name of ``[providers.<section>]``."""
    return settings.adapter or section


def make_adapter(adapter: str, settings: ProviderSettings, name: str) -> Adapter:
    """The adapter of provider ``adapter`` for the section ``name``.

    Plain ``ProviderSettings`` are taken for a provider with a settings class of its
    own: its own fields then have their defaults. The section's credentials are
    registered with ``SECRETS`` (masked by value in logs and errors).
    """
    chosen = provider(adapter)
    settings = _settings_of(chosen, settings)
    # Whatever the provider echoes of its credentials is masked from here on.
    SECRETS.add_fields(settings)
    return chosen.adapter(settings, name)


def _settings_of(chosen: Provider, settings: ProviderSettings) -> ProviderSettings:
    """``settings`` as an instance of ``chosen``'s settings class."""
    if isinstance(settings, chosen.settings):
        return settings
    return chosen.settings(**attrs.asdict(settings, recurse=False))


def missing_settings(section: str, settings: ProviderSettings) -> str | None:
    """Why ``[providers.<section>]`` cannot be used (``providers.bfl.api_key is not
    set``), or ``None`` when every setting its provider requires is set."""
    chosen = provider(family(section, settings))
    missing = chosen.missing(_settings_of(chosen, settings))
    if not missing:
        return None
    names = " and ".join(f"providers.{section}.{name}" for name in missing)
    return f"{names} {'is' if len(missing) == 1 else 'are'} not set"


def usable(providers: Mapping[str, ProviderSettings]) -> dict[str, ProviderSettings]:
    """``providers`` with every enabled section that lacks a required setting
    disabled, each logged as a warning naming the setting.

    A provider without its key would only fail at the provider, after network
    attempts, for every job sent to it; disabled, it is never called and its
    models are not offered (a submission names an unknown model).
    """
    out = {}
    for section, settings in providers.items():
        why = missing_settings(section, settings) if settings.enabled else None
        if why is not None:
            log.warning("provider %s disabled: %s", section, why,
                        extra={"provider": section})
            settings = attrs.evolve(settings, enabled=False)
        out[section] = settings
    return out


def structure_sections(converter: cattrs.Converter) -> None:
    """Teach ``converter`` to structure ``[providers]`` tables: each section into
    its provider's settings class, problems reported under the section's key."""

    def structure(value: Any, _: Any) -> dict[str, ProviderSettings]:
        sections = strict_object(value, None)
        out: dict[str, ProviderSettings] = {}
        errors: list[Exception] = []
        for section, table in sections.items():
            if type(table) is not dict:
                errors.append(_under(Invalid("expected a table, got " + type_name(table)), section))
                continue
            adapter = table.get("adapter")
            try:
                chosen = provider(adapter if type(adapter) is str else section)
            except ValueError as exc:
                errors.append(_under(Invalid(str(exc)), section, "adapter"))
                continue
            try:
                out[section] = converter.structure(table, chosen.settings)
            except Exception as exc:  # noqa: BLE001 - collected, raised together below
                errors.append(_under(exc, section))
        if errors:
            raise IterableValidationError("While structuring [providers]", errors, dict)
        return out

    converter.register_structure_hook_func(
        lambda t: t == dict[str, ProviderSettings], structure)


def _under(exc: Exception, section: str, key: str | None = None) -> Exception:
    """``exc`` noted as the problem of ``providers.<section>`` (or ``.<key>`` in it),
    as cattrs notes the errors of a mapping's values."""
    note = IterableValidationNote(f"Structuring mapping value @ key {section!r}", section, Any)
    if key is not None:
        inner = IterableValidationNote(f"Structuring mapping value @ key {key!r}", key, Any)
        exc = IterableValidationError("", [_noted(exc, inner)], dict)
    return _noted(exc, note)


def _noted(exc: Exception, note: IterableValidationNote) -> Exception:
    exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    return exc
