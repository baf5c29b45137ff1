"""Adapter construction: a provider's ``adapter`` name → its adapter class.

By convention the adapter named ``x`` lives in ``router/adapters/x.py`` and exposes
its class as ``ADAPTER``, constructed as ``ADAPTER(config, clock=clock)``. Adding a
provider is one new module; nothing here changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Final, get_args

from breakers.clock import Clock
from router.adapters.base import Adapter
from router.config import AdapterName, ProviderConfig
from router.errors import ConfigError

__all__ = ["ADAPTER_NAMES", "adapter_class", "adapter_errors", "build_adapter"]

ADAPTER_NAMES: Final[tuple[str, ...]] = get_args(AdapterName)


def adapter_class(name: str) -> type[Adapter] | None:
    """The class of the adapter called ``name``, or ``None`` when this build lacks it."""
    if name not in ADAPTER_NAMES:
        return None
    try:
        module = importlib.import_module(f"router.adapters.{name}")
    except ModuleNotFoundError:
        return None
    cls: type[Adapter] | None = getattr(module, "ADAPTER", None)
    return cls


def build_adapter(config: ProviderConfig, *, clock: Clock | None = None) -> Adapter:
    """The adapter for ``config``; :class:`ConfigError` when its adapter is not built in."""
    cls = adapter_class(config.adapter)
    if cls is None:
        available = [n for n in ADAPTER_NAMES if adapter_class(n) is not None]
        raise ConfigError(
            [
                f"providers.{config.name}.adapter: adapter {config.adapter!r} is not "
                f"implemented (available: {', '.join(available)})"
            ]
        )
    return cls(config, clock=clock)  # type: ignore[call-arg]


def adapter_errors(providers: Sequence[ProviderConfig]) -> list[str]:
    """What building each provider's adapter refuses, as ``path: message`` lines.

    An adapter checks what the config schema cannot: that it is built in, and its own
    ``options`` (Veo's ``project``, a service-account file). Building one opens nothing
    and calls nobody, so ``check-config`` can report these with the schema's errors.
    """
    errors: list[str] = []
    for provider in providers:
        try:
            build_adapter(provider)
        except ConfigError as exc:
            errors.extend(exc.errors)
    return errors
