"""Provider adapters, one module per provider, found by adapter name."""

from __future__ import annotations

from collections.abc import Callable

from actors.providers.base import Adapter, ProviderSettings
from actors.providers.replicate import ReplicateAdapter
from actors.providers.sandbox import SandboxAdapter

ADAPTERS: dict[str, Callable[[ProviderSettings, str], Adapter]] = {
    "sandbox": SandboxAdapter,
    "replicate": ReplicateAdapter,
}


def make_adapter(adapter: str, settings: ProviderSettings, name: str) -> Adapter:
    try:
        factory = ADAPTERS[adapter]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unknown adapter {adapter!r} (known: {known})") from None
    return factory(settings, name)
