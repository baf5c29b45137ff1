"""The limits a provider's config declares, checked the same way by every adapter."""

from __future__ import annotations

from router.config import CapabilitiesConfig
from router.models import GenerationRequest

__all__ = ["capability_problem"]


def capability_problem(caps: CapabilitiesConfig, request: GenerationRequest) -> str | None:
    """Why ``request`` exceeds ``caps`` (outputs, size, duration, aspect ratio), or ``None``."""
    if caps.max_n is not None and request.n > caps.max_n:
        return f"at most {caps.max_n} outputs per request"
    if caps.max_width is not None and (request.width or 0) > caps.max_width:
        return f"width above {caps.max_width}"
    if caps.max_height is not None and (request.height or 0) > caps.max_height:
        return f"height above {caps.max_height}"
    if (
        caps.max_duration_s is not None
        and request.duration_s is not None
        and request.duration_s > caps.max_duration_s
    ):
        return f"duration above {caps.max_duration_s}s"
    if (
        request.aspect_ratio is not None
        and caps.aspect_ratios is not None
        and request.aspect_ratio not in caps.aspect_ratios
    ):
        return f"aspect ratio {request.aspect_ratio} not offered"
    return None
