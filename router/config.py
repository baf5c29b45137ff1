"""Configuration (DESIGN §4): one YAML file, ``${ENV}`` interpolation, typed structs.

Loading collects every error it can find and names each by its field path
(``providers[2].rate_limit.per_s: expected `float` > 0``) so an operator fixes a
file in one pass. Every section forbids unknown keys (a typo is an error, not
a silently ignored setting) and is immutable once loaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from router.errors import ConfigError

__all__ = [
    "BreakerConfig",
    "CapabilitiesConfig",
    "Config",
    "CostConfig",
    "PollConfig",
    "ProviderConfig",
    "RateLimitConfig",
    "RetryBudgetConfig",
    "RoutingConfig",
    "SandboxConfig",
    "SandboxProviderConfig",
    "SecurityConfig",
    "ServerConfig",
    "StorageConfig",
    "TenantConfig",
    "TimeoutsConfig",
    "WeightsConfig",
    "load_config",
    "parse_config",
]

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
AdapterName = Literal["replicate", "fal", "openai", "stability", "veo", "runway", "http", "sim"]
PolicyName = Literal["balanced", "cheapest", "fastest", "priority", "weighted"]
Scope = Literal["generate", "read", "admin"]


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    #: Seconds SIGTERM waits for in-flight HTTP responses.
    shutdown_grace_s: NonNegative = 10.0
    #: How providers reach this service for webhooks (``https://switchman.example``);
    #: ``None`` means no webhooks are requested and jobs are polled.
    public_url: str | None = None
    #: Serve the on-call status page ``GET /ui`` (no auth; it shows what ``/metrics`` shows).
    ui_enabled: bool = True


class WeightsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    health: NonNegative = 0.35
    latency: NonNegative = 0.25
    cost: NonNegative = 0.25
    load: NonNegative = 0.15


class RetryBudgetConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    #: Extra attempts allowed per first attempt, over a sliding 10 s window.
    ratio: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.2
    #: Extra attempts always allowed per second, so low traffic can still fail over.
    min_per_s: NonNegative = 5.0


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    strategy: PolicyName = "balanced"
    weights: WeightsConfig = WeightsConfig()
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    default_timeout_s: Positive = 600.0
    #: Scores within this fraction of the best are near-ties, broken by two random choices.
    near_tie: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.02
    #: How long a request waits for a busy half-open probe's verdict before a 503.
    probe_wait_s: NonNegative = 2.0


class AssetsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    backend: Literal["local", "s3"] = "local"
    path: str = "./assets"
    bucket: str | None = None
    endpoint: str | None = None
    #: Download, check and keep outputs (``False``: pass provider URLs through as-is).
    enabled: bool = True
    #: Largest output Switchman downloads and keeps; a bigger one fails the attempt.
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 200 * 1024 * 1024


class StorageConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    database_url: str = "sqlite+aiosqlite:///./switchman.db"
    redis_url: str | None = None
    #: Key prefix in Redis, so several deployments can share one Redis.
    redis_prefix: str = "switchman:"
    #: Replicas expected to share the Redis state: while Redis is unreachable each one
    #: allows ``rate_limit.requests / replicas_hint`` (its share of every provider's limit).
    replicas_hint: PositiveInt = 1
    assets: AssetsConfig = AssetsConfig()
    #: How long an ``Idempotency-Key`` and its first answer are kept (Stripe: 24 h).
    idempotency_retention_s: Positive = 86_400.0
    #: How long a replica owns a non-final job without renewing (it renews every third
    #: of it); a killed replica's jobs are taken over by another after this long.
    lease_s: Annotated[float, msgspec.Meta(ge=0.3)] = 15.0


class SecurityConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    encryption_keys: dict[str, str] = msgspec.field(default_factory=dict)
    callback_hosts: list[str] = msgspec.field(default_factory=list)
    #: Standard Webhooks secret (``whsec_<base64>``) that signs caller callbacks;
    #: without it a request with a ``callback_url`` is refused.
    callback_secret: str | None = None
    #: Deliveries of one callback before giving up, and the first backoff (doubles, jittered).
    callback_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 8
    callback_backoff_s: Positive = 1.0
    #: Hosts (``fnmatch`` globs) an ``input_image_url`` may name even when they resolve
    #: to private addresses or use http (see ``router.ssrf``); others must be public https.
    input_image_hosts: list[str] = msgspec.field(default_factory=list)


class TenantConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    api_keys: list[Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]]
    scopes: list[Scope] = msgspec.field(default_factory=lambda: ["generate", "read"])
    max_inflight: PositiveInt | None = None
    budget_usd_per_month: NonNegative | None = None
    rate_limit_per_s: Positive | None = None


class CostConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    per_image_usd: NonNegative = 0.0
    per_video_s_usd: NonNegative = 0.0


class RateLimitConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    requests: Positive = 10.0
    per_s: Positive = 1.0
    max_concurrency: PositiveInt | None = None


class BreakerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    fail_max: PositiveInt = 5
    reset_timeout_s: Positive = 30.0
    #: Concurrent trial calls a half-open breaker lets through.
    half_open_max_probes: PositiveInt = 1


class TimeoutsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    connect_s: Positive = 2.0
    request_s: Positive = 30.0
    job_s: Positive = 900.0


class PollConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    interval_s: Positive = 1.0
    max_interval_s: Positive = 10.0
    #: An accepted job with no progress for this long is failed over.
    stall_s: Positive = 300.0


class CapabilitiesConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_width: PositiveInt | None = None
    max_height: PositiveInt | None = None
    max_duration_s: Positive | None = None
    aspect_ratios: list[str] | None = None
    max_n: PositiveInt | None = None


class ProviderConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    adapter: AdapterName
    base_url: str
    kinds: list[Literal["image", "video"]]
    api_key: str | None = None
    models: dict[str, str] = msgspec.field(default_factory=dict)
    cost: CostConfig = CostConfig()
    rate_limit: RateLimitConfig = RateLimitConfig()
    breaker: BreakerConfig = BreakerConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    poll: PollConfig = PollConfig()
    priority: int = 100
    weight: Positive = 1.0
    capabilities: CapabilitiesConfig = CapabilitiesConfig()
    webhook_secret: str | None = None
    #: Adapter-specific settings (for example the ``http`` adapter's mappings).
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class FaultsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Fault injection for a sandbox emulator; see ``router.sandbox.faults``."""

    latency_s: NonNegative = 0.0
    error_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    error_status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 503
    rate_limit_per_s: Positive | None = None
    retry_after_s: NonNegative = 1.0
    hang_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    reset_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    malformed_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    #: Outages as [start_s, end_s) windows, counted from the emulator's start.
    outages: list[tuple[NonNegative, NonNegative]] = msgspec.field(default_factory=list)


class SandboxProviderConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    adapter: AdapterName = "openai"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    faults: FaultsConfig = FaultsConfig()


class SandboxConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Emulators the service starts on loopback at boot (the default config's demo)."""

    host: str = "127.0.0.1"
    emulators: list[SandboxProviderConfig] = msgspec.field(default_factory=list)


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    server: ServerConfig = ServerConfig()
    routing: RoutingConfig = RoutingConfig()
    storage: StorageConfig = StorageConfig()
    security: SecurityConfig = SecurityConfig()
    tenants: list[TenantConfig] = msgspec.field(default_factory=list)
    providers: list[ProviderConfig] = msgspec.field(default_factory=list)
    sandbox: SandboxConfig | None = None

    def provider(self, name: str) -> ProviderConfig | None:
        """The provider called ``name``, if configured."""
        return next((p for p in self.providers if p.name == name), None)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _interpolate(value: Any, path: str, errors: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string, recording unset ones."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            got = os.environ.get(name)
            if got is None:
                if default is not None:
                    return default
                errors.append(f"{path or '$'}: environment variable {name} is not set")
                return ""
            return got

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, f"{path}.{k}" if path else str(k), errors) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value


def _convert_error(exc: msgspec.ValidationError, prefix: str) -> str:
    """Turn msgspec's ``Expected … - at `$.a.b``` into ``a.b: expected …``."""
    text = str(exc)
    m = _PATH.search(text)
    sub = m.group("path") if m else ""
    message = text[: m.start()] if m else text
    path = (prefix + sub).lstrip(".") or "$"
    return f"{path}: {message[:1].lower()}{message[1:]}"


def _section(data: dict[str, Any], key: str, typ: Any, errors: list[str]) -> Any:
    try:
        return msgspec.convert(data[key], typ)
    except msgspec.ValidationError as exc:
        errors.append(_convert_error(exc, key))
        return None


def parse_config(raw: Any) -> Config:
    """Validate an already-parsed YAML document; raise :class:`ConfigError` with every error."""
    errors: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["$: expected a mapping at the top level"])
    data = _interpolate(raw, "", errors)
    known = set(Config.__struct_fields__)
    errors.extend(f"{key}: unknown field" for key in data if key not in known)
    # Validate section by section, and providers/tenants one by one, to report them all.
    for key, typ in (
        ("server", ServerConfig),
        ("routing", RoutingConfig),
        ("storage", StorageConfig),
        ("security", SecurityConfig),
        ("sandbox", SandboxConfig | None),
    ):
        if key in data:
            _section(data, key, typ, errors)
    item_types: tuple[tuple[str, Any], ...] = (
        ("providers", ProviderConfig),
        ("tenants", TenantConfig),
    )
    for key, typ in item_types:
        items = data.get(key, [])
        if not isinstance(items, list):
            errors.append(f"{key}: expected an array")
            continue
        for i, item in enumerate(items):
            try:
                msgspec.convert(item, typ)
            except msgspec.ValidationError as exc:
                errors.append(_convert_error(exc, f"{key}[{i}]"))
    if errors:
        raise ConfigError(errors)
    config = msgspec.convert({k: v for k, v in data.items() if k in known}, Config)
    errors.extend(_semantic_errors(config))
    if errors:
        raise ConfigError(errors)
    return config


def _semantic_errors(config: Config) -> list[str]:
    """Rules that span fields: unique names, capabilities that match kinds, and so on."""
    errors: list[str] = []
    seen: set[str] = set()
    for i, p in enumerate(config.providers):
        if p.name in seen:
            errors.append(f"providers[{i}].name: duplicate provider name {p.name!r}")
        seen.add(p.name)
        if not p.kinds:
            errors.append(f"providers[{i}].kinds: expected at least one kind")
        if not (p.base_url.startswith(("http://", "https://", "sandbox:"))):
            errors.append(f"providers[{i}].base_url: expected an http(s):// or sandbox: URL")
        if p.poll.max_interval_s < p.poll.interval_s:
            errors.append(f"providers[{i}].poll.max_interval_s: expected >= poll.interval_s")
    tenant_ids: set[str] = set()
    for i, t in enumerate(config.tenants):
        if t.id in tenant_ids:
            errors.append(f"tenants[{i}].id: duplicate tenant id {t.id!r}")
        tenant_ids.add(t.id)
    w = config.routing.weights
    if w.health + w.latency + w.cost + w.load <= 0:
        errors.append("routing.weights: expected at least one weight > 0")
    if config.sandbox is not None:
        names = [e.name for e in config.sandbox.emulators]
        for i, p in enumerate(config.providers):
            target = p.base_url.removeprefix("sandbox:")
            if p.base_url.startswith("sandbox:") and target not in names:
                errors.append(f"providers[{i}].base_url: no sandbox emulator named {target!r}")
    else:
        for i, p in enumerate(config.providers):
            if p.base_url.startswith("sandbox:"):
                errors.append(f"providers[{i}].base_url: sandbox: URL but no sandbox section")
    return errors


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"$: cannot read {path}: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"$: invalid YAML: {exc}"]) from exc
    return parse_config(raw)
