"""The ``http`` adapter: an in-house provider whose API is described in config, not code.

The provider's ``options`` say how to call it and where to find things in its
answers::

    options:
      submit: {path: /generate, body: {prompt: "{prompt}", seconds: "{duration_s:int}"}}
      id_field: id                        # dotted path of the upstream id in the submit answer
      poll: {method: GET, path: "/jobs/{id}"}   # omit for a synchronous provider
      status_field: status
      status_map: {pending: queued, working: running, done: succeeded, error: failed}
      outputs_field: result.urls          # a list of URLs, or of objects with a url
      progress_field: progress            # 0-100
      error_field: error.message
      cost_field: usage.cost_usd          # optional: the provider's own price for the job
      cancel: {method: POST, path: "/jobs/{id}/cancel"}
      probe: {method: GET, path: /healthz}
      auth_header: Authorization          # the provider's api_key goes here…
      auth_scheme: Bearer                 # …after this word (null: the bare key)
      content_policy_match: "safety|nsfw" # regex on error messages → content_policy

Templates are filled value by value, never by re-parsing text, so a prompt
cannot inject JSON or path segments: a string that is exactly ``"{field}"`` takes
the field's typed value (``{field:int}``, ``{field:float}``, ``{field:str}`` cast
it), a string with text around placeholders is formatted, values in paths are
percent-encoded, and a key whose field is unset is left out. Submit templates
may use the request's fields plus ``model``, ``job_id``, ``attempt_id`` and
``webhook_url``; poll and cancel templates may use ``id``, ``job_id`` and
``attempt_id``. Everything is checked when the adapter is built, and each error
names ``providers.<name>.options.<field>``.

HTTP errors are classified generically: 429 → rate_limited (with
``Retry-After``), 408/5xx → upstream_unavailable, 401/403 → auth, 404 →
not_found, other 4xx → invalid_request; an error message matching
``content_policy_match`` is content_policy whatever the status.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx
import msgspec

from breakers.clock import Clock, SystemClock
from router.adapters.base import (
    AttemptContext,
    PollResult,
    ProbeResult,
    SubmitResult,
    UpstreamStatus,
    WebhookEvent,
)
from router.adapters.capabilities import capability_problem
from router.adapters.http_util import parse_retry_after, safe_json, transport_error
from router.config import ProviderConfig
from router.errors import ConfigError, ErrorKind, UpstreamError
from router.models import GenerationRequest, Output

__all__ = ["CallSpec", "HttpAdapter", "HttpOptions", "extract", "render"]

Status = Literal["queued", "running", "succeeded", "failed", "canceled"]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

#: Request fields a submit template may use (besides the extras below).
REQUEST_FIELDS: Final = frozenset(
    {
        "kind",
        "prompt",
        "negative_prompt",
        "aspect_ratio",
        "width",
        "height",
        "duration_s",
        "fps",
        "input_image_url",
        "n",
        "seed",
        "quality",
        "style",
        "motion_intensity",
    }
)
SUBMIT_FIELDS: Final = REQUEST_FIELDS | {"model", "job_id", "attempt_id", "webhook_url"}
JOB_FIELDS: Final = frozenset({"id", "job_id", "attempt_id"})
_STATUSES: Final = frozenset({"queued", "running", "succeeded", "failed", "canceled"})
_PLACEHOLDER: Final = re.compile(r"\{\{|\}\}|\{([a-z_]+)(?::(int|float|str))?\}")
_ERROR_FALLBACKS: Final = ("error.message", "error", "message", "detail")
_EXTENSIONS: Final = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "mov": "video/quicktime",
}
_DEFAULT_VIDEO_S: Final = 5.0
_REMEMBERED: Final = 10_000
_MISSING: Final = object()


class CallSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One HTTP call: method, path under ``base_url``, optional JSON body and query."""

    path: str
    method: Method | None = None
    body: Any = None
    query: dict[str, Any] | None = None


class HttpOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``options`` an ``http`` provider accepts (see the module docstring)."""

    submit: CallSpec
    outputs_field: str
    id_field: str | None = None
    poll: CallSpec | None = None
    status_field: str | None = None
    status_map: dict[str, Status] = msgspec.field(default_factory=dict)
    progress_field: str | None = None
    error_field: str | None = None
    cost_field: str | None = None
    cancel: CallSpec | None = None
    probe: CallSpec | None = None
    auth_header: str = "Authorization"
    auth_scheme: str | None = "Bearer"
    content_policy_match: str | None = None


@dataclass(frozen=True, slots=True)
class _Spec:
    """What was asked, remembered per upstream id to describe and price the outputs."""

    kind: str
    width: int | None
    height: int | None
    duration_s: float | None


# -- templates ---------------------------------------------------------------------------


def _placeholders(template: Any) -> Iterator[tuple[str, str | None]]:
    """Every ``(name, cast)`` in a template (strings anywhere in dicts and lists)."""
    if isinstance(template, str):
        for m in _PLACEHOLDER.finditer(template):
            if m.group(1):
                yield m.group(1), m.group(2)
    elif isinstance(template, dict):
        for value in template.values():
            yield from _placeholders(value)
    elif isinstance(template, list):
        for value in template:
            yield from _placeholders(value)


def _cast(value: Any, cast: str | None) -> Any:
    if cast == "int":
        return round(value) if isinstance(value, float) else int(value)
    if cast == "float":
        return float(value)
    if cast == "str":
        return str(value)
    return value


def _render_string(template: str, values: Mapping[str, Any], in_path: bool) -> Any:
    whole = _PLACEHOLDER.fullmatch(template)
    if whole is not None and whole.group(1) and not in_path:
        value = values.get(whole.group(1))
        return _MISSING if value is None else _cast(value, whole.group(2))
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        token = m.group(0)
        if token in ("{{", "}}"):
            return token[0]
        value = values.get(m.group(1))
        if value is None:
            missing = True
            return ""
        text = str(_cast(value, m.group(2)))
        return quote(text, safe="") if in_path else text

    text = _PLACEHOLDER.sub(sub, template)
    return _MISSING if missing else text


def render(template: Any, values: Mapping[str, Any], *, in_path: bool = False) -> Any:
    """``template`` with placeholders filled from ``values``; unset ones drop their key.

    Returns a private sentinel when the whole template is unset; callers test for
    it with :func:`is_missing`.
    """
    if isinstance(template, str):
        return _render_string(template, values, in_path)
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            rendered = render(value, values)
            if rendered is not _MISSING:
                out[key] = rendered
        return out
    if isinstance(template, list):
        return [r for r in (render(v, values) for v in template) if r is not _MISSING]
    return template


def is_missing(value: Any) -> bool:
    """Whether :func:`render` found the template's placeholders unset."""
    return value is _MISSING


def extract(data: Any, path: str) -> Any:
    """The value at a dotted path (``result.urls``, ``items.0.url``), or ``None``."""
    for part in path.split("."):
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return None
    return data


# -- validation --------------------------------------------------------------------------


def _option_errors(name: str, options: HttpOptions) -> list[str]:
    """Rules across options that msgspec's types cannot say."""
    prefix = f"providers.{name}.options"
    errors: list[str] = []
    calls = (
        ("submit", options.submit, SUBMIT_FIELDS),
        ("poll", options.poll, JOB_FIELDS),
        ("cancel", options.cancel, JOB_FIELDS),
        ("probe", options.probe, frozenset[str]()),
    )
    for field, call, allowed in calls:
        if call is None:
            continue
        if not call.path.startswith("/"):
            errors.append(f"{prefix}.{field}.path: expected a path starting with /")
        for part in ("path", "body", "query"):
            for placeholder, _cast_name in _placeholders(getattr(call, part)):
                if placeholder not in allowed:
                    choices = ", ".join(sorted(allowed)) or "none"
                    errors.append(
                        f"{prefix}.{field}.{part}: unknown placeholder {{{placeholder}}} "
                        f"(allowed: {choices})"
                    )
    for field in ("outputs_field", "id_field", "status_field", "progress_field"):
        errors.extend(_path_error(prefix, field, getattr(options, field)))
    for field in ("error_field", "cost_field"):
        errors.extend(_path_error(prefix, field, getattr(options, field)))
    if options.poll is not None:
        if options.id_field is None:
            errors.append(f"{prefix}.id_field: required when options.poll is set")
        if options.status_field is None:
            errors.append(f"{prefix}.status_field: required when options.poll is set")
    if options.cancel is not None and options.id_field is None:
        errors.append(f"{prefix}.id_field: required when options.cancel is set")
    if options.content_policy_match is not None:
        try:
            re.compile(options.content_policy_match)
        except re.error as exc:
            errors.append(f"{prefix}.content_policy_match: invalid regex: {exc}")
    if not options.auth_header.strip() or any(c in options.auth_header for c in ":\r\n "):
        errors.append(f"{prefix}.auth_header: expected an HTTP header name")
    return errors


def _path_error(prefix: str, field: str, value: str | None) -> list[str]:
    if value is not None and (not value or any(not part for part in value.split("."))):
        return [f"{prefix}.{field}: expected a dotted path such as result.urls"]
    return []


def parse_options(name: str, raw: Mapping[str, Any]) -> HttpOptions:
    """Validated options; :class:`ConfigError` naming ``providers.<name>.options.<field>``."""
    prefix = f"providers.{name}.options"
    try:
        options = msgspec.convert(dict(raw), HttpOptions)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = re.search(r" - at `\$\.?(?P<path>[^`]*)`$", text)
        where = f"{prefix}.{m.group('path')}" if m and m.group("path") else prefix
        message = text[: m.start()] if m else text
        if "missing required field" in message.lower():
            field = re.search(r"`([^`]+)`", message)
            if field:
                where = f"{where}.{field.group(1)}"
        raise ConfigError([f"{where}: {message[:1].lower()}{message[1:]}"]) from exc
    errors = _option_errors(name, options)
    if errors:
        raise ConfigError(errors)
    return options


# -- the adapter -------------------------------------------------------------------------


class HttpAdapter:
    """A config-described in-house provider behind the Adapter protocol."""

    def __init__(self, config: ProviderConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self._clock: Clock = clock or SystemClock()
        self.options = parse_options(config.name, config.options)
        self._root = config.base_url.rstrip("/")
        self._timeout = httpx.Timeout(config.timeouts.request_s, connect=config.timeouts.connect_s)
        self._policy = (
            re.compile(self.options.content_policy_match, re.IGNORECASE)
            if self.options.content_policy_match
            else None
        )
        self._path_fields = {p for p, _ in _placeholders(self.options.submit.path)}
        self._specs: OrderedDict[str, _Spec] = OrderedDict()

    # -- selection --------------------------------------------------------------------

    def _values(self, request: GenerationRequest, ctx: AttemptContext | None) -> dict[str, Any]:
        values: dict[str, Any] = {f: getattr(request, f) for f in REQUEST_FIELDS}
        values["model"] = request.model or self.config.models.get(request.kind)
        if ctx is not None:
            values |= {
                "job_id": ctx.job_id,
                "attempt_id": ctx.attempt_id,
                "webhook_url": ctx.webhook_url,
            }
        return values

    def supports(self, request: GenerationRequest) -> str | None:
        if request.kind not in self.config.kinds:
            return f"{self.config.name} does not serve {request.kind}"
        caps = self.config.capabilities
        if (problem := capability_problem(caps, request)) is not None:
            return problem
        values = self._values(request, None)
        for field in self._path_fields & SUBMIT_FIELDS - {"job_id", "attempt_id"}:
            if values.get(field) is None:
                return f"the submit path needs {field}, which this request does not set"
        return None

    def estimate_cost(self, request: GenerationRequest) -> float:
        cost = self.config.cost
        if request.kind == "video":
            return cost.per_video_s_usd * (request.duration_s or _DEFAULT_VIDEO_S) * request.n
        return cost.per_image_usd * request.n

    def build_call(
        self, call: CallSpec, values: Mapping[str, Any], default_method: str
    ) -> tuple[str, str, dict[str, Any] | None, Any]:
        """``(method, url, query, body)`` of ``call`` with ``values`` filled in."""
        path = render(call.path, values, in_path=True)
        if is_missing(path):
            raise UpstreamError(
                "invalid_request",
                f"a placeholder of path {call.path!r} has no value",
                provider=self.config.name,
            )
        query = render(call.query, values) if call.query is not None else None
        body = render(call.body, values) if call.body is not None else None
        method = call.method or default_method
        return method, f"{self._root}{path}", query, None if is_missing(body) else body

    # -- calls ------------------------------------------------------------------------

    def _headers(self, api_key: str | None, ctx: AttemptContext | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        key = api_key or self.config.api_key
        if key:  # an in-house provider on a private network may need no credential
            scheme = self.options.auth_scheme
            headers[self.options.auth_header] = f"{scheme} {key}" if scheme else key
        if ctx is not None:
            headers.update(ctx.trace_headers)
            headers["X-Client-Request-Id"] = ctx.attempt_id
        return headers

    async def _send(
        self,
        client: httpx.AsyncClient,
        call: CallSpec,
        values: Mapping[str, Any],
        default_method: str,
        headers: dict[str, str],
        upstream_id: str | None = None,
    ) -> httpx.Response:
        method, url, query, body = self.build_call(call, values, default_method)
        content = None
        if body is not None:
            content = msgspec.json.encode(body)
            headers = headers | {"Content-Type": "application/json"}
        try:
            return await client.request(
                method,
                url,
                params={k: str(v) for k, v in query.items()} if query else None,
                content=content,
                headers=headers,
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise self._transport_error("timeout", exc, upstream_id) from exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise self._transport_error("upstream_unavailable", exc, upstream_id) from exc

    def _json(self, response: httpx.Response, upstream_id: str | None) -> Any:
        if not response.is_success:
            raise self._status_error(response, upstream_id)
        data = safe_json(response.content)
        if not isinstance(data, dict | list):
            raise self._malformed("the answer is not a JSON object", upstream_id)
        return data

    async def submit(self, request: GenerationRequest, ctx: AttemptContext) -> SubmitResult:
        values = self._values(request, ctx)
        response = await self._send(
            ctx.client, self.options.submit, values, "POST", self._headers(ctx.api_key, ctx)
        )
        data = self._json(response, None)
        spec = _Spec(request.kind, request.width, request.height, request.duration_s)
        upstream_id = self._upstream_id(data)
        asynchronous = self.options.poll is not None
        if asynchronous and upstream_id is None:
            raise self._malformed(f"no upstream id at {self.options.id_field}", None)
        status = self._status(data, "queued" if asynchronous else "succeeded", upstream_id)
        if status == "succeeded":
            outputs = self._outputs(data, spec, upstream_id)
            return SubmitResult(
                status="succeeded",
                upstream_id=upstream_id,
                outputs=outputs,
                progress=100,
                cost_usd=self._cost(data, outputs, spec),
            )
        if status in ("failed", "canceled"):
            message = self._error_message(data) or f"upstream job {status} at submission"
            raise UpstreamError(
                self._failure_kind(message),
                message[:300],
                provider=self.config.name,
                http_status=response.status_code,
                upstream_id=upstream_id,
            )
        if not asynchronous:
            raise self._malformed(f"a synchronous provider answered {status!r}", upstream_id)
        assert upstream_id is not None
        self._specs[upstream_id] = spec
        while len(self._specs) > _REMEMBERED:
            self._specs.popitem(last=False)
        return SubmitResult(status=status, upstream_id=upstream_id, progress=self._progress(data))

    async def poll(self, upstream_id: str, ctx: AttemptContext) -> PollResult:
        if self.options.poll is None:
            raise UpstreamError(
                "not_found",
                f"{self.config.name} is synchronous; there is nothing to poll",
                provider=self.config.name,
                upstream_id=upstream_id,
            )
        values = {"id": upstream_id, "job_id": ctx.job_id, "attempt_id": ctx.attempt_id}
        response = await self._send(
            ctx.client,
            self.options.poll,
            values,
            "GET",
            self._headers(ctx.api_key, ctx),
            upstream_id,
        )
        data = self._json(response, upstream_id)
        status = self._status(data, None, upstream_id)
        progress = self._progress(data)
        if status in ("queued", "running"):
            return PollResult(status=status, progress=progress)
        spec = self._specs.pop(upstream_id, None) or _Spec("image", None, None, None)
        if status == "succeeded":
            outputs = self._outputs(data, spec, upstream_id)
            return PollResult(
                status="succeeded",
                progress=100,
                outputs=outputs,
                cost_usd=self._cost(data, outputs, spec),
            )
        message = self._error_message(data) or f"upstream job {status}"
        return PollResult(
            status=status,
            progress=progress,
            error_kind=self._failure_kind(message) if status == "failed" else "canceled",
            error_message=message[:300],
        )

    # -- reading answers --------------------------------------------------------------

    def _upstream_id(self, data: Any) -> str | None:
        if self.options.id_field is None:
            return None
        value = extract(data, self.options.id_field)
        if value is None or isinstance(value, dict | list | bool) or value == "":
            return None
        return str(value)

    def _status(self, data: Any, default: UpstreamStatus | None, upstream_id: str | None) -> str:
        field = self.options.status_field
        raw = extract(data, field) if field else None
        if raw is None:
            if default is None:
                raise self._malformed(f"no status at {field}", upstream_id)
            return default
        text = str(raw)
        mapped = self.options.status_map.get(text)
        if mapped is not None:
            return mapped
        if text in _STATUSES:
            return text
        raise self._malformed(f"unknown status {text[:40]!r} at {field}", upstream_id)

    def _progress(self, data: Any) -> int | None:
        if self.options.progress_field is None:
            return None
        value = extract(data, self.options.progress_field)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return None
        return max(0, min(100, int(value)))

    def _error_message(self, data: Any) -> str:
        fields = (self.options.error_field,) if self.options.error_field else _ERROR_FALLBACKS
        for field in fields:
            value = extract(data, field)
            if isinstance(value, str) and value:
                return value
        return ""

    def _failure_kind(self, message: str) -> ErrorKind:
        """A failed job is the provider's trouble unless its message says content policy."""
        if self._policy is not None and self._policy.search(message):
            return "content_policy"
        return "upstream_unavailable"

    def _outputs(self, data: Any, spec: _Spec, upstream_id: str | None) -> tuple[Output, ...]:
        raw = extract(data, self.options.outputs_field)
        items = raw if isinstance(raw, list) else [raw] if raw is not None else []
        outputs = [o for o in (self._output(item, spec) for item in items) if o is not None]
        if not outputs:
            raise self._malformed(f"no outputs at {self.options.outputs_field}", upstream_id)
        return tuple(outputs)

    def _output(self, item: Any, spec: _Spec) -> Output | None:
        fields: Mapping[str, Any] = item if isinstance(item, dict) else {}
        url = item if isinstance(item, str) else fields.get("url") or fields.get("uri")
        if not isinstance(url, str) or not url:
            return None
        content_type = next(
            (
                v
                for v in (fields.get(k) for k in ("content_type", "mime_type", "mimeType", "type"))
                if isinstance(v, str) and "/" in v
            ),
            None,
        ) or _guess_type(url, spec.kind)
        video = content_type.startswith("video/")
        return Output(
            url=url,
            content_type=content_type,
            width=_int(fields.get("width")) or spec.width,
            height=_int(fields.get("height")) or spec.height,
            duration_s=_seconds(fields.get("duration_s"), spec) if video else None,
        )

    def _cost(self, data: Any, outputs: tuple[Output, ...], spec: _Spec) -> float:
        if self.options.cost_field is not None:
            reported = _number(extract(data, self.options.cost_field))
            if reported is not None and reported >= 0:
                return reported
        cost = self.config.cost
        total = 0.0
        for out in outputs:
            if (out.content_type or "").startswith("video/"):
                seconds = out.duration_s or spec.duration_s or _DEFAULT_VIDEO_S
                total += cost.per_video_s_usd * seconds
            else:
                total += cost.per_image_usd
        return total

    # -- errors -----------------------------------------------------------------------

    def _malformed(self, message: str, upstream_id: str | None) -> UpstreamError:
        return UpstreamError(
            "malformed_response",
            f"{self.config.name}: {message}",
            provider=self.config.name,
            upstream_id=upstream_id,
        )

    def _transport_error(
        self, kind: ErrorKind, exc: Exception, upstream_id: str | None
    ) -> UpstreamError:
        return transport_error(self.config.name, kind, exc, upstream_id)

    def _status_error(self, response: httpx.Response, upstream_id: str | None) -> UpstreamError:
        status = response.status_code
        kind = self.classify(status, response.content, response.headers)
        text = f"{self.config.name} {status}"
        message = self._error_message(safe_json(response.content))
        if kind != "auth" and message:
            text = f"{text}: {message[:300]}"
        return UpstreamError(
            kind,
            text,
            provider=self.config.name,
            http_status=status,
            retry_after_s=parse_retry_after(response.headers, self._clock.time()),
            upstream_id=upstream_id,
        )

    def classify(self, status: int | None, body: bytes, headers: Mapping[str, str]) -> ErrorKind:
        if status is None:
            return "upstream_unavailable"
        if self._policy is not None and status >= 400:
            message = self._error_message(safe_json(body)) or body[:1000].decode("utf-8", "replace")
            if self._policy.search(message):
                return "content_policy"
        if status == 429:
            return "rate_limited"
        if status == 408 or status >= 500:
            return "upstream_unavailable"
        if status in (401, 403):
            return "auth"
        if status == 404:
            return "not_found"
        if status >= 400:
            return "invalid_request"
        return "malformed_response"

    # -- the rest of the protocol -----------------------------------------------------

    async def cancel(self, upstream_id: str, ctx: AttemptContext) -> bool:
        """``options.cancel`` when configured; ``True`` on a 2xx answer."""
        if self.options.cancel is None:
            return False
        values = {"id": upstream_id, "job_id": ctx.job_id, "attempt_id": ctx.attempt_id}
        response = await self._send(
            ctx.client,
            self.options.cancel,
            values,
            "POST",
            self._headers(ctx.api_key, ctx),
            upstream_id,
        )
        self._specs.pop(upstream_id, None)
        return response.is_success

    async def probe(self, client: httpx.AsyncClient, api_key: str | None) -> ProbeResult:
        """``options.probe`` (default ``GET /``): any answer but 5xx or 401/403 is healthy."""
        start = self._clock.monotonic()
        call = self.options.probe or CallSpec(path="/", method="GET")
        try:
            response = await self._send(client, call, {}, "GET", self._headers(api_key, None))
        except UpstreamError as exc:
            return ProbeResult(
                ok=False, latency_s=self._clock.monotonic() - start, detail=exc.message
            )
        latency = self._clock.monotonic() - start
        status = response.status_code
        ok = status < 500 and status not in (401, 403, 429)
        return ProbeResult(ok=ok, latency_s=latency, detail=str(status))

    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """In-house providers are polled; no webhook is trusted."""
        return False

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent | None:
        """In-house providers are polled."""
        return None


def _guess_type(url: str, kind: str) -> str:
    path = url.split("?", 1)[0].split("#", 1)[0]
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return _EXTENSIONS.get(ext) or ("video/mp4" if kind == "video" else "image/png")


def _seconds(value: Any, spec: _Spec) -> float | None:
    seconds = _number(value) or spec.duration_s
    return float(seconds) if seconds is not None else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number > 0 else None


#: The class :func:`router.adapters.registry.build_adapter` constructs for ``adapter: http``.
ADAPTER = HttpAdapter
