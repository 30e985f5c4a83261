"""Provider adapters, one module per provider, found by adapter name.

An adapter named ``X`` lives in ``actors/providers/X.py`` and exposes its class as
``ADAPTER``; adding a provider is adding a module, with no registry to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from actors.providers.base import Adapter, ProviderSettings

_NOT_ADAPTERS = {"base", "http", "outcomes"}


def known_adapters() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_ADAPTERS
    )


def make_adapter(adapter: str, settings: ProviderSettings, name: str) -> Adapter:
    if adapter not in known_adapters():
        known = ", ".join(known_adapters())
        raise ValueError(f"unknown adapter {adapter!r} (known: {known})")
    module = importlib.import_module(f"actors.providers.{adapter}")
    return module.ADAPTER(settings, name)  # type: ignore[no-any-return]
