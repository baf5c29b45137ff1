"""Switchman's errors.

Every error maps to exactly one problem+json ``type`` and, where it concerns an
upstream attempt, one attempt ``error.kind`` (DESIGN §3)::

    SwitchmanError
    ├── ConfigError                 invalid configuration (field paths in .errors)
    ├── ApiError                    a request Switchman refuses (status, problem type)
    │   ├── ValidationFailed        400/422 with a list of {field, message}
    │   ├── Unauthorized            401
    │   ├── Forbidden               403
    │   ├── NotFound                404
    │   ├── Conflict                409
    │   ├── PayloadTooLarge         413
    │   ├── RateLimited             429 with Retry-After
    │   └── NoProviderAvailable     503 with Retry-After
    └── UpstreamError               one attempt at one provider failed (kind, http_status)
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = [
    "CALLER_KINDS",
    "RETRYABLE_KINDS",
    "ApiError",
    "ConfigError",
    "Conflict",
    "ErrorKind",
    "FieldError",
    "Forbidden",
    "NoProviderAvailable",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "SwitchmanError",
    "Unauthorized",
    "UpstreamError",
    "ValidationFailed",
]

ErrorKind = Literal[
    "upstream_unavailable",
    "timeout",
    "rate_limited",
    "invalid_request",
    "content_policy",
    "auth",
    "not_found",
    "malformed_response",
    "canceled",
    "deadline_exceeded",
    "no_provider",
]

#: Outcomes that move the work to the next candidate.
RETRYABLE_KINDS: Final[frozenset[str]] = frozenset(
    {"upstream_unavailable", "timeout", "rate_limited", "malformed_response", "auth", "not_found"}
)
#: Outcomes that are the caller's fault: the job fails, no failover, the breaker is not charged.
CALLER_KINDS: Final[frozenset[str]] = frozenset({"invalid_request", "content_policy"})


class SwitchmanError(Exception):
    """Root of every error Switchman raises on purpose."""


class ConfigError(SwitchmanError):
    """Raised when a configuration file is invalid; ``errors`` holds ``path: message`` lines."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n  " + "\n  ".join(errors))


class FieldError:
    """One invalid field of a request."""

    __slots__ = ("field", "message")

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message

    def __repr__(self) -> str:
        return f"FieldError({self.field!r}, {self.message!r})"


class ApiError(SwitchmanError):
    """Raised when Switchman refuses a request; rendered as RFC 9457 problem+json."""

    status: int = 400
    type_slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.retry_after_s = retry_after_s
        self.headers = headers or {}


class ValidationFailed(ApiError):
    """Raised when a request body or parameter is invalid; names each field."""

    status = 422
    type_slug = "validation-error"
    title = "Invalid request"

    def __init__(self, errors: list[FieldError], *, status: int = 422) -> None:
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or "invalid request"
        super().__init__(detail, errors=errors)
        self.status = status


class Unauthorized(ApiError):
    """Raised when no valid API key was presented."""

    status = 401
    type_slug = "unauthorized"
    title = "Unauthorized"


class Forbidden(ApiError):
    """Raised when the API key lacks the scope a route needs."""

    status = 403
    type_slug = "forbidden"
    title = "Forbidden"


class NotFound(ApiError):
    """Raised when a resource does not exist or belongs to another tenant."""

    status = 404
    type_slug = "not-found"
    title = "Not found"


class Conflict(ApiError):
    """Raised on an idempotency conflict or a tenant in-flight limit."""

    status = 409
    type_slug = "conflict"
    title = "Conflict"


class PayloadTooLarge(ApiError):
    """Raised when a body exceeds ``server.max_body_bytes``."""

    status = 413
    type_slug = "payload-too-large"
    title = "Payload too large"


class RateLimited(ApiError):
    """Raised when a tenant exceeds its request rate."""

    status = 429
    type_slug = "rate-limited"
    title = "Too many requests"


class NoProviderAvailable(ApiError):
    """Raised when no provider can take the request (all open, none capable, all drained)."""

    status = 503
    type_slug = "no-provider"
    title = "No provider available"


class UpstreamError(SwitchmanError):
    """Raised by an adapter when one attempt at one provider failed.

    ``kind`` is the attempt ``error.kind``; ``retry_after_s`` carries an upstream
    ``Retry-After`` (already converted to seconds) when the provider sent one.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        provider: str | None = None,
        http_status: int | None = None,
        retry_after_s: float | None = None,
        upstream_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.provider = provider
        self.http_status = http_status
        self.retry_after_s = retry_after_s
        self.upstream_id = upstream_id

    @property
    def retryable(self) -> bool:
        """Whether this outcome moves the work to the next candidate."""
        return self.kind in RETRYABLE_KINDS

    @property
    def callers_fault(self) -> bool:
        """Whether the caller caused this (never charged to the provider's breaker)."""
        return self.kind in CALLER_KINDS

    def __repr__(self) -> str:
        return (
            f"UpstreamError(kind={self.kind!r}, provider={self.provider!r}, "
            f"http_status={self.http_status!r}, message={self.message!r})"
        )
