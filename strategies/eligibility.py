"""Whether a provider may take a request, and what it would cost and take.

These are the per-provider facts the strategy needs before it can compare
providers with each other. They are plain functions of a request and one
:class:`ProviderSnapshot`, so the job engine can reuse them (for example to
price an attempt) and tests can pin each rule down on its own.
"""

from __future__ import annotations

from collections.abc import Container

from strategies.snapshot import ProviderSnapshot, RouteRequest

__all__ = [
    "DEFAULT_VIDEO_DURATION_S",
    "exclusion_reason",
    "expected_cost_usd",
    "latency_estimate_s",
]

#: Seconds of video assumed for pricing when the request leaves the duration to the provider.
DEFAULT_VIDEO_DURATION_S = 5.0


def expected_cost_usd(request: RouteRequest, provider: ProviderSnapshot) -> float:
    """What ``provider`` would charge for ``request``, in USD.

    Images are priced per image; videos per second of output (``n`` videos of
    ``duration_s`` each, 5 s when the request does not say).
    """
    if request.kind == "video":
        duration = DEFAULT_VIDEO_DURATION_S if request.duration_s is None else request.duration_s
        return provider.cost.per_video_s_usd * duration * request.n
    return provider.cost.per_image_usd * request.n


def latency_estimate_s(provider: ProviderSnapshot, kind: str) -> float | None:
    """The latency to hold against a deadline: the tail estimate if known, else the EWMA.

    The tail is the honest number for "will this finish in time"; the EWMA is a
    fallback for providers whose tail has not been measured yet.
    """
    tail = provider.latency_tail_s.get(kind)
    return provider.latency_ewma_s.get(kind) if tail is None else tail


def _incapable(request: RouteRequest, provider: ProviderSnapshot) -> str | None:
    """The first capability ``request`` needs that ``provider`` lacks, or ``None``."""
    caps = provider.capabilities
    if request.kind not in caps.kinds:
        return "incapable:kind"
    if request.width is not None and caps.max_width is not None and request.width > caps.max_width:
        return "incapable:width"
    if (
        request.height is not None
        and caps.max_height is not None
        and request.height > caps.max_height
    ):
        return "incapable:height"
    # An unset duration is the provider's own default, which fits its own limit.
    if (
        request.duration_s is not None
        and caps.max_duration_s is not None
        and request.duration_s > caps.max_duration_s
    ):
        return "incapable:duration"
    if (
        request.aspect_ratio is not None
        and caps.aspect_ratios is not None
        and request.aspect_ratio not in caps.aspect_ratios
    ):
        return "incapable:aspect_ratio"
    if caps.max_n is not None and request.n > caps.max_n:
        return "incapable:n"
    return None


def exclusion_reason(
    request: RouteRequest,
    provider: ProviderSnapshot,
    allowed: Container[str] | None = None,
    cost_usd: float | None = None,
) -> str | None:
    """Why ``provider`` must not take ``request`` now, or ``None`` if it may.

    Reasons are checked from the most to the least permanent, and the first
    one found is returned: ``not_allowed``, ``drained``, ``breaker_open``,
    ``probe_busy``, ``incapable:<what>``, ``cooling_down``, ``rate_limited``,
    ``at_capacity``, ``over_budget``, ``unhealthy``. ``allowed`` is the
    request's allow list as a container (``None`` allows all); ``cost_usd``
    saves recomputing :func:`expected_cost_usd` when the caller has it.

    ``unhealthy`` is returned last on purpose: the strategy still ranks
    unhealthy providers when nothing healthy is left (probes can be wrong).
    """
    name = provider.name
    if (allowed is not None and name not in allowed) or name in request.exclude:
        return "not_allowed"
    if provider.drained:
        return "drained"
    if provider.breaker == "open":
        return "breaker_open"
    if provider.breaker == "half_open" and not provider.probe_available:
        return "probe_busy"
    incapable = _incapable(request, provider)
    if incapable is not None:
        return incapable
    if provider.cooldown_remaining_s > 0:
        return "cooling_down"
    if provider.tokens_available < 1:
        return "rate_limited"
    if provider.max_concurrency is not None and provider.inflight >= provider.max_concurrency:
        return "at_capacity"
    if request.max_cost_usd is not None:
        cost = expected_cost_usd(request, provider) if cost_usd is None else cost_usd
        if cost > request.max_cost_usd:
            return "over_budget"
    if not provider.healthy:
        return "unhealthy"
    return None
