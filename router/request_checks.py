"""Checks on a decoded request that span fields or need the config.

Type and range checks live on :class:`router.models.GenerationRequest`; these
are the rules a single field's type cannot say.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from router.config import Config
from router.errors import FieldError, ValidationFailed
from router.models import GenerationRequest

__all__ = ["check_request"]


def _url_error(field: str, url: str) -> FieldError | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return FieldError(field, "expected an absolute http(s) URL")
    if parts.username or parts.password:
        return FieldError(field, "credentials in URLs are not allowed")
    return None


def check_request(request: GenerationRequest, config: Config) -> None:
    """Raise :class:`ValidationFailed` (422) naming every field that breaks a rule."""
    errors: list[FieldError] = []
    if request.kind == "image":
        for name in ("duration_s", "fps", "motion_intensity"):
            if getattr(request, name) is not None:
                errors.append(FieldError(name, "only applies to kind 'video'"))
    if (request.width is None) != (request.height is None):
        missing = "height" if request.height is None else "width"
        errors.append(FieldError(missing, "width and height go together"))
    for name in ("callback_url", "input_image_url"):
        value = getattr(request, name)
        if value is not None and (err := _url_error(name, value)) is not None:
            errors.append(err)
    routing = request.routing
    if routing is not None:
        known = {p.name for p in config.providers}
        for field_name, names in (("providers", routing.providers), ("exclude", routing.exclude)):
            for i, name in enumerate(names or ()):
                if name not in known:
                    errors.append(
                        FieldError(f"routing.{field_name}[{i}]", f"unknown provider {name!r}")
                    )
    if errors:
        raise ValidationFailed(errors)
