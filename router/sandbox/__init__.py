"""Local emulators of the providers' public HTTP APIs, with fault injection (DESIGN §5).

Tests, benchmarks and the demo config route to these on loopback::

    emulator = build_emulator("openai", FaultsConfig(error_ratio=0.1))
    await emulator.start()          # 127.0.0.1, a free port
    ...                             # provider base_url = emulator.base_url
    emulator.faults.update(hang_ratio=1.0)
    await emulator.stop()
"""

from __future__ import annotations

import importlib

from breakers.clock import Clock
from router.config import FaultsConfig
from router.sandbox.faults import Decision, FaultAction, FaultInjector
from router.sandbox.media import PNG_SIGNATURE, png_bytes, png_size
from router.sandbox.openai import DEFAULT_API_KEY, OpenAIEmulator
from router.sandbox.server import Emulator, EmulatorStats, RecordedRequest

__all__ = [
    "DEFAULT_API_KEY",
    "PNG_SIGNATURE",
    "Decision",
    "Emulator",
    "EmulatorStats",
    "FaultAction",
    "FaultInjector",
    "OpenAIEmulator",
    "RecordedRequest",
    "build_emulator",
    "png_bytes",
    "png_size",
]


def build_emulator(
    adapter_name: str,
    faults: FaultsConfig | None = None,
    *,
    api_key: str | None = None,
    clock: Clock | None = None,
    seed: int = 0,
) -> Emulator:
    """A (not yet started) emulator of the provider behind adapter ``adapter_name``.

    By convention the emulator of adapter ``x`` lives in ``router/sandbox/x.py`` and
    exposes its class as ``EMULATOR``, constructed as
    ``EMULATOR(faults, api_key=..., clock=..., seed=...)``.
    """
    try:
        module = importlib.import_module(f"router.sandbox.{adapter_name}")
    except ModuleNotFoundError:
        module = None
    cls: type[Emulator] | None = getattr(module, "EMULATOR", None)
    if cls is None:
        raise NotImplementedError(f"no sandbox emulator for adapter {adapter_name!r}")
    return cls(faults, api_key=api_key, clock=clock, seed=seed)  # type: ignore[call-arg]
