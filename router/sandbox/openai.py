"""An emulator of OpenAI's Images API (provider-contracts §3), with fault injection.

Routes: ``POST /v1/images/generations``, ``GET /v1/models`` (faulted, bearer
auth) and ``GET /files/{name}`` (the PNGs that response URLs point to). The
request is validated the way the real API does it (unknown parameters, model,
``n``, ``size``, ``quality``, ``style``, ``response_format``) and errors use
OpenAI's body ``{"error": {"message", "type", "param", "code"}}``. A prompt
containing the word ``forbidden`` trips the content filter.

File names carry their size (``img-<seq>-<w>x<h>.png``), so serving a file needs
no per-image state: memory stays flat however long a benchmark runs.
"""

from __future__ import annotations

import base64
import math
import os
import re
from functools import lru_cache
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from breakers.clock import Clock, SystemClock
from router.config import FaultsConfig
from router.sandbox.faults import Decision
from router.sandbox.media import png_bytes
from router.sandbox.server import Emulator, Handler

__all__ = ["DEFAULT_API_KEY", "OpenAIEmulator", "format_duration"]

DEFAULT_API_KEY = "sk-sandbox"

_DALLE = ("dall-e-2", "dall-e-3")
_GPT = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
_GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
_SIZES: dict[str, tuple[str, ...]] = {
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
} | dict.fromkeys(_GPT, _GPT_SIZES)
_QUALITIES: dict[str, tuple[str, ...]] = {
    "dall-e-2": ("standard",),
    "dall-e-3": ("standard", "hd"),
} | dict.fromkeys(_GPT, ("low", "medium", "high", "auto"))
_PROMPT_MAX = {"dall-e-2": 1000, "dall-e-3": 4000} | dict.fromkeys(_GPT, 32000)
_KNOWN = frozenset(
    {
        "prompt",
        "model",
        "n",
        "size",
        "quality",
        "style",
        "response_format",
        "output_format",
        "output_compression",
        "background",
        "moderation",
        "user",
    }
)
_FORBIDDEN = re.compile(r"\bforbidden\b", re.IGNORECASE)
_WXH = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$")
_FILE = re.compile(r"^img-[0-9a-f]+-([0-9]{1,5})x([0-9]{1,5})\.png$")
_JSON = "application/json"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}


class _BadRequestError(Exception):
    """Raised inside validation; becomes a 400 with ``param``."""

    def __init__(self, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type=_JSON, headers=headers
    )


def format_duration(seconds: float) -> str:
    """Seconds as OpenAI writes them in ``x-ratelimit-reset-*`` (``20ms``, ``1s``, ``6m0s``)."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@lru_cache(maxsize=64)
def _b64_png(width: int, height: int) -> str:
    return base64.b64encode(png_bytes(width, height)).decode("ascii")


class OpenAIEmulator(Emulator):
    """OpenAI's Images API on loopback; ``api_key`` is the only key it accepts."""

    provider: ClassVar[str] = "openai"

    def __init__(
        self,
        faults: FaultsConfig | None = None,
        *,
        api_key: str | None = None,
        clock: Clock | None = None,
        seed: int = 0,
        recent: int = 50,
    ) -> None:
        super().__init__(faults, clock=clock, seed=seed, recent=recent)
        self.api_key = api_key or DEFAULT_API_KEY
        self._auth = f"Bearer {self.api_key}"
        self._clock: Clock = clock or SystemClock()
        self._seq = 0
        self._prefix = os.urandom(3).hex()
        self._static_limits = {
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
        }

    # -- routes -----------------------------------------------------------------------

    def api_routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/images/generations", self._generate),
            ("GET", "/v1/models", self._models),
        ]

    def plain_routes(self) -> list[tuple[str, str, Handler]]:
        return [("GET", "/files/{name}", self._file)]

    # -- hooks ------------------------------------------------------------------------

    def fault_response(self, decision: Decision) -> web.Response:
        status = decision.status or 500
        headers: dict[str, str] = {}
        if decision.retry_after_s is not None:
            headers["retry-after"] = str(math.ceil(decision.retry_after_s))
            headers["retry-after-ms"] = str(round(decision.retry_after_s * 1000))
        if status == 429:
            return _error(
                429,
                "Rate limit reached for requests. Please try again later.",
                type_="requests",
                code="rate_limit_exceeded",
                headers=headers,
            )
        if status >= 500:
            return _error(
                status,
                "The server is currently overloaded or unavailable. Please retry.",
                type_="server_error",
                headers=headers,
            )
        return _error(
            status, "Injected error.", type_=_ERROR_TYPES.get(status, "invalid_request_error")
        )

    def decorate(self, response: web.StreamResponse, decision: Decision) -> None:
        self._seq += 1
        headers = response.headers
        headers["x-request-id"] = f"req_{self._prefix}{self._seq:010x}"
        if decision.limit is None:
            headers.update(self._static_limits)
            return
        headers["x-ratelimit-limit-requests"] = str(int(decision.limit))
        headers["x-ratelimit-remaining-requests"] = str(int(decision.remaining or 0))
        headers["x-ratelimit-reset-requests"] = format_duration(decision.reset_s or 0.0)

    # -- handlers ---------------------------------------------------------------------

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        got = request.headers.get("Authorization")
        if got == self._auth:
            return None
        if not got or not got.startswith("Bearer "):
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        key = got.removeprefix("Bearer ")
        masked = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else "***"
        return _error(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        created = 1_698_785_189
        data = [
            {"id": m, "object": "model", "created": created, "owned_by": "system"}
            for m in (*_DALLE, *_GPT)
        ]
        return web.Response(
            body=msgspec.json.encode({"object": "list", "data": data}), content_type=_JSON
        )

    async def _generate(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            raw = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return _error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly.)",
            )
        try:
            params = _validate(raw)
        except _BadRequestError as exc:
            return _error(400, exc.message, param=exc.param, code=exc.code)
        model, prompt = params["model"], params["prompt"]
        if _FORBIDDEN.search(prompt):
            if model in _DALLE:
                return _error(
                    400,
                    "Your request was rejected as a result of our safety system. Your prompt "
                    "may contain text that is not allowed by our safety system.",
                    code="content_policy_violation",
                )
            return _error(
                400,
                "Your request was rejected by the safety system. safety_violations=[policy].",
                type_="image_generation_user_error",
                code="moderation_blocked",
            )
        return web.Response(body=msgspec.json.encode(self._result(params)), content_type=_JSON)

    def _result(self, params: dict[str, Any]) -> dict[str, Any]:
        model: str = params["model"]
        size: str = params["size"]
        width, height = (1024, 1024) if size == "auto" else map(int, size.split("x"))
        data: list[dict[str, Any]] = []
        for _ in range(params["n"]):
            item: dict[str, Any]
            if model in _GPT or params["response_format"] == "b64_json":
                item = {"b64_json": _b64_png(width, height)}
            else:
                self._seq += 1
                name = f"img-{self._prefix}{self._seq:x}-{width}x{height}.png"
                item = {"url": f"{self.base_url}/files/{name}"}
            if model == "dall-e-3":
                item["revised_prompt"] = f"{params['prompt']}, in crisp detail"
            data.append(item)
        body: dict[str, Any] = {"created": int(self._clock.time()), "data": data}
        if model in _GPT:
            tokens = len(params["prompt"]) // 4 + 1
            body["usage"] = {
                "input_tokens": tokens,
                "output_tokens": 1056 * params["n"],
                "total_tokens": tokens + 1056 * params["n"],
                "input_tokens_details": {"text_tokens": tokens, "image_tokens": 0},
            }
            body["size"] = f"{width}x{height}"
            body["quality"] = "high" if params["quality"] == "auto" else params["quality"]
            body["output_format"] = params.get("output_format") or "png"
        return body

    async def _file(self, request: web.Request) -> web.Response:
        m = _FILE.match(request.match_info["name"])
        if m is None or not (0 < int(m.group(1)) <= 4096 and 0 < int(m.group(2)) <= 4096):
            return _error(404, "No such file.", code="not_found")
        return web.Response(
            body=png_bytes(int(m.group(1)), int(m.group(2))), content_type="image/png"
        )


def _validate(raw: Any) -> dict[str, Any]:
    """The request's parameters with defaults filled in; :class:`_BadRequestError` when invalid."""
    if not isinstance(raw, dict):
        raise _BadRequestError("Invalid type for request body: expected an object.", None)
    for key in raw:
        if key not in _KNOWN:
            raise _BadRequestError(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
    model = raw.get("model", "dall-e-2")
    if model not in _SIZES:
        raise _BadRequestError(f"Invalid value for 'model': {model!r}.", "model", "invalid_value")
    prompt = raw.get("prompt")
    if prompt is None:
        raise _BadRequestError(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    if not isinstance(prompt, str) or not prompt.strip():
        raise _BadRequestError("Invalid 'prompt': expected a non-empty string.", "prompt")
    if len(prompt) > _PROMPT_MAX[model]:
        raise _BadRequestError(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{_PROMPT_MAX[model]}, but got a string with length {len(prompt)} instead.",
            "prompt",
            "string_above_max_length",
        )
    n = raw.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        raise _BadRequestError("Invalid 'n': expected an integer between 1 and 10.", "n")
    if model == "dall-e-3" and n != 1:
        raise _BadRequestError("You must provide n=1 for this model.", "n")
    size = raw.get("size", "auto" if model in _GPT else "1024x1024")
    if size not in _SIZES[model] and not (model == "gpt-image-2" and _custom_size_ok(size)):
        raise _BadRequestError(
            f"Invalid value: '{size}'. Supported values are: "
            + ", ".join(f"'{s}'" for s in _SIZES[model])
            + ".",
            "size",
            "invalid_value",
        )
    quality = raw.get("quality", "auto" if model in _GPT else "standard")
    if quality not in _QUALITIES[model]:
        raise _BadRequestError(
            f"Invalid value for 'quality': {quality!r}.", "quality", "invalid_value"
        )
    style = raw.get("style")
    if style is not None and (model != "dall-e-3" or style not in ("vivid", "natural")):
        raise _BadRequestError(f"Invalid value for 'style': {style!r}.", "style", "invalid_value")
    response_format = raw.get("response_format")
    if response_format is not None and (
        model in _GPT or response_format not in ("url", "b64_json")
    ):
        raise _BadRequestError(
            f"Invalid value for 'response_format': {response_format!r}.",
            "response_format",
            "invalid_value",
        )
    output_format = raw.get("output_format")
    if output_format is not None and (
        model in _DALLE or output_format not in ("png", "jpeg", "webp")
    ):
        raise _BadRequestError(
            f"Invalid value for 'output_format': {output_format!r}.",
            "output_format",
            "invalid_value",
        )
    return {
        "model": model,
        "prompt": prompt,
        "n": n,
        "size": size,
        "quality": quality,
        "response_format": response_format or "url",
        "output_format": output_format,
    }


def _custom_size_ok(size: Any) -> bool:
    """``gpt-image-2`` also takes W×H with each side a multiple of 16 (up to 3840)."""
    m = _WXH.match(size) if isinstance(size, str) else None
    if m is None:
        return False
    w, h = int(m.group(1)), int(m.group(2))
    return all(16 <= side <= 3840 and side % 16 == 0 for side in (w, h))


#: The class :func:`router.sandbox.build_emulator` constructs for ``openai``.
EMULATOR = OpenAIEmulator
