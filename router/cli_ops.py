"""Operator commands over the admin API (DESIGN §8): ``providers``, ``drain``, …

Each command reads the service's address and key from ``SWITCHMAN_URL`` (default
``http://127.0.0.1:8080``) and ``SWITCHMAN_API_KEY``, and prints a table for a
person or, with ``--json``, the service's JSON for a script. Output is stable
and greppable: one row per provider or job, columns separated by spaces, ``-``
for an unknown value. An HTTP error prints the problem's detail to stderr and
exits 1; a missing key or an unreachable service exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import httpx

__all__ = ["DEFAULT_URL", "register"]

DEFAULT_URL = "http://127.0.0.1:8080"
#: Seconds a command waits for the service (a provider test can take a while).
_TIMEOUT_S = 45.0

PROVIDER_COLUMNS = (
    "NAME",
    "BREAKER",
    "DRAINED",
    "HEALTHY",
    "SCORE",
    "AVAILABLE",
    "INFLIGHT",
    "LATENCY",
    "SUCCESS",
    "COST",
)
JOB_COLUMNS = ("ID", "TENANT", "KIND", "STATUS", "PROVIDER", "ATTEMPTS", "AGE", "COST", "CREATED")


class CommandError(Exception):
    """Raised when a command cannot finish; carries the exit code and the message."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ----------------------------------------------------------------- HTTP


def _call(method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None) -> Any:
    """One admin API call; the decoded JSON, or :class:`CommandError` with the problem."""
    key = os.environ.get("SWITCHMAN_API_KEY")
    if not key:
        raise CommandError("SWITCHMAN_API_KEY is not set (an API key with the admin scope)", 2)
    base = os.environ.get("SWITCHMAN_URL") or DEFAULT_URL
    query = {k: v for k, v in (params or {}).items() if v is not None}
    try:
        with httpx.Client(base_url=base, timeout=_TIMEOUT_S, trust_env=False) as client:
            response = client.request(
                method,
                path,
                json=body,
                params=query,
                headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            )
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach Switchman at {base}: {exc}", 2) from None
    if response.is_error:
        raise CommandError(_problem_text(response))
    return response.json()


def _problem_text(response: httpx.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    detail = problem.get("detail") or problem.get("title") or ""
    lines = [f"HTTP {response.status_code}: {detail}"]
    lines += [f"  {e.get('field')}: {e.get('message')}" for e in problem.get("errors") or []]
    return "\n".join(lines)


# ----------------------------------------------------------------- formatting


def _table(columns: Sequence[str], rows: list[list[str]]) -> str:
    """Left-aligned columns; cells never contain spaces, so ``awk`` can split rows."""
    cells = [list(columns), *[[c.replace(" ", "_") or "-" for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}s"


def _provider_row(p: dict[str, Any]) -> list[str]:
    rl = p["rate_limit"]
    latency = ",".join(f"{k}:{_secs(v)}" for k, v in sorted(p["latency_ewma_s"].items()))
    cost = []
    if "image" in p["kinds"]:
        cost.append(f"{p['cost']['per_image_usd']:g}/image")
    if "video" in p["kinds"]:
        cost.append(f"{p['cost']['per_video_s_usd']:g}/video_s")
    breaker = p["breaker"] + ("(forced)" if p.get("breaker_forced_open") else "")
    return [
        p["name"],
        breaker,
        "yes" if p["drained"] else "no",
        "yes" if p["healthy"] else "no",
        _num(p["score"]["value"]),
        f"{rl['available']:g}/{rl['capacity']:g}",
        f"{p['inflight']}/{p['max_concurrency'] or '-'}",
        latency or "-",
        _num(p["success_ratio"]),
        ",".join(cost) or "-",
    ]


def _providers_text(providers: list[dict[str, Any]]) -> str:
    out = _table(PROVIDER_COLUMNS, [_provider_row(p) for p in providers])
    notes = [f"{p['name']}: drained: {p['drain_reason']}" for p in providers if p["drained"]]
    return "\n".join([out, *notes]) if notes else out


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _job_row(j: dict[str, Any]) -> list[str]:
    return [
        j["id"],
        j.get("tenant") or "-",
        j["kind"],
        j["status"],
        j.get("provider") or "-",
        str(len(j.get("attempts") or [])),
        _age(j.get("age_s")),
        f"{j.get('cost_usd', 0.0):g}",
        j["created_at"],
    ]


def _job_text(j: dict[str, Any]) -> str:
    fields = [
        ("id", j["id"]),
        ("tenant", j.get("tenant")),
        ("kind", j["kind"]),
        ("status", j["status"]),
        ("progress", f"{j.get('progress', 0)}%"),
        ("provider", j.get("provider")),
        ("cost_usd", f"{j.get('cost_usd', 0.0):g}"),
        ("age", _age(j.get("age_s"))),
        ("created_at", j["created_at"]),
        ("updated_at", j["updated_at"]),
        ("completed_at", j.get("completed_at")),
    ]
    error = j.get("error")
    if error:
        fields.append(("error", f"{error.get('code')}: {error.get('message')}"))
    fields.append(("outputs", str(len(j.get("outputs") or []))))
    lines = [f"{k + ':':<14}{v if v is not None else '-'}" for k, v in fields]
    attempts = j.get("attempts") or []
    if attempts:
        rows = []
        for i, a in enumerate(attempts, 1):
            err = a.get("error") or {}
            rows.append(
                [
                    str(i),
                    a["provider"],
                    a["status"],
                    err.get("kind") or "-",
                    str(err.get("http_status") or "-"),
                    _secs(a.get("latency_s")),
                    a.get("upstream_id") or "-",
                ]
            )
        cols = ("#", "PROVIDER", "STATUS", "ERROR", "HTTP", "LATENCY", "UPSTREAM_ID")
        lines += ["", "attempts:", _table(cols, rows)]
    return "\n".join(lines)


# ----------------------------------------------------------------- commands


def _print(args: argparse.Namespace, payload: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True) if args.json else text(payload))


def cmd_providers(args: argparse.Namespace) -> int:
    """Every provider's live state."""
    payload = _call("GET", "/v1/providers")
    _print(args, payload, lambda p: _providers_text(p["providers"]))
    return 0


def _state_line(verb: str) -> Callable[[dict[str, Any]], str]:
    def text(p: dict[str, Any]) -> str:
        return f"{verb} {p['name']}\n{_providers_text([p])}"

    return text


def cmd_drain(args: argparse.Namespace) -> int:
    """Take a provider out of routing; in-flight attempts finish."""
    payload = _call("POST", f"/v1/providers/{args.name}/drain", body={"reason": args.reason})
    _print(args, payload, _state_line("drained"))
    return 0


def cmd_undrain(args: argparse.Namespace) -> int:
    """Put a drained provider back into routing."""
    body = {"reason": args.reason} if args.reason else {}
    payload = _call("POST", f"/v1/providers/{args.name}/undrain", body=body)
    _print(args, payload, _state_line("undrained"))
    return 0


def cmd_breaker(args: argparse.Namespace) -> int:
    """Hold a provider's breaker open, or close it."""
    body: dict[str, Any] = {"state": "open" if args.state == "open" else "closed"}
    if args.reason:
        body["reason"] = args.reason
    payload = _call("POST", f"/v1/providers/{args.name}/breaker", body=body)
    verb = "breaker held open:" if args.state == "open" else "breaker closed:"
    _print(args, payload, _state_line(verb))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """A live credentials and connectivity check; exits 1 when it fails."""
    payload = _call("POST", f"/v1/providers/{args.name}/test")
    _print(
        args,
        payload,
        lambda r: (
            f"{r['provider']}: {'ok' if r['ok'] else 'FAILED'} "
            f"latency={_secs(r['latency_s'])} detail={r['detail'] or '-'}"
        ),
    )
    return 0 if payload["ok"] else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    """Jobs across every tenant, newest first."""
    params = {"status": args.status, "limit": args.limit, "tenant": args.tenant}
    payload = _call("GET", "/v1/admin/jobs", params=params)
    _print(args, payload, lambda p: _table(JOB_COLUMNS, [_job_row(j) for j in p["data"]]))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    """One job of any tenant, with its attempts."""
    payload = _call("GET", f"/v1/admin/jobs/{args.id}")
    _print(args, payload, _job_text)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Re-read the service's config file; an invalid file changes nothing."""
    payload = _call("POST", "/v1/admin/reload")

    def text(r: dict[str, Any]) -> str:
        lines = [f"reloaded: {len(r['providers'])} providers ({', '.join(r['providers'])})"]
        for key in ("added", "removed", "changed", "restart_required"):
            if r.get(key):
                lines.append(f"{key}: {', '.join(r[key])}")
        return "\n".join(lines)

    _print(args, payload, text)
    return 0


def _run(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CommandError as exc:
            print(f"switchman {args.command}: {exc.message}", file=sys.stderr)
            return exc.code

    return run


def _reason(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected some text")
    return text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator subcommands to the ``switchman`` parser."""

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> Any:
        parser = sub.add_parser(name, help=help_, description=func.__doc__)
        parser.add_argument("--json", action="store_true", help="print the service's JSON")
        parser.set_defaults(func=_run(func))
        return parser

    add("providers", cmd_providers, "every provider's live state")
    p = add("drain", cmd_drain, "take a provider out of routing")
    p.add_argument("name")
    p.add_argument("--reason", required=True, type=_reason, help="why (goes to the audit log)")
    p = add("undrain", cmd_undrain, "put a drained provider back")
    p.add_argument("name")
    p.add_argument("--reason", type=_reason, help="why (goes to the audit log)")
    p = add("breaker", cmd_breaker, "hold a provider's breaker open, or close it")
    p.add_argument("name")
    p.add_argument("state", choices=("open", "close"))
    p.add_argument("--reason", type=_reason, help="why (goes to the audit log)")
    p = add("test", cmd_test, "live credentials/connectivity check of a provider")
    p.add_argument("name")
    p = add("jobs", cmd_jobs, "jobs of every tenant, newest first")
    p.add_argument("--status", choices=("queued", "running", "succeeded", "failed", "canceled"))
    p.add_argument("--limit", type=int, default=20, help="1..100 (default 20)")
    p.add_argument("--tenant", help="only this tenant's jobs")
    p = add("job", cmd_job, "one job with its attempts")
    p.add_argument("id")
    add("reload", cmd_reload, "re-read the service's config file")
