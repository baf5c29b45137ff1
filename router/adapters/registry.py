"""Adapter construction: a provider's ``adapter`` name → its adapter class.

Adding a provider means one module under ``router/adapters/`` and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from breakers.clock import Clock
from router.adapters.base import Adapter
from router.adapters.openai import OpenAIAdapter
from router.adapters.sim import SimAdapter
from router.config import ProviderConfig
from router.errors import ConfigError

__all__ = ["ADAPTERS", "build_adapter"]

AdapterFactory = Callable[[ProviderConfig, Clock | None], Adapter]

#: Every adapter this build can construct, by ``ProviderConfig.adapter`` name.
ADAPTERS: Final[dict[str, AdapterFactory]] = {
    "openai": lambda config, clock: OpenAIAdapter(config, clock=clock),
    "sim": lambda config, _clock: SimAdapter(config),
}


def build_adapter(config: ProviderConfig, *, clock: Clock | None = None) -> Adapter:
    """The adapter for ``config``; :class:`ConfigError` when its adapter is not built in."""
    factory = ADAPTERS.get(config.adapter)
    if factory is None:
        raise ConfigError(
            [
                f"providers.{config.name}.adapter: adapter {config.adapter!r} is not "
                f"implemented (available: {', '.join(sorted(ADAPTERS))})"
            ]
        )
    return factory(config, clock)
