"""The provider strategy: rank the providers that may take one request (DESIGN §2).

:class:`ProviderStrategy` is pure and synchronous: it reads a request and a
frozen :class:`Snapshot` and returns a :class:`Ranking`. It has no clock, does
no I/O and keeps no state between calls; its only source of chance is the
``random.Random`` the caller passes in, so a fixed seed gives a fixed answer.

A decision has three steps:

1. *Exclude* providers that must not be tried (see
   :func:`~strategies.eligibility.exclusion_reason`). Unhealthy providers are
   excluded only while something healthy is left: probes can be wrong, and
   trying a doubtful provider beats failing the request outright.
2. *Order* the rest by the policy. Whatever the policy, a provider whose
   latency estimate exceeds the caller's remaining time goes after every
   provider that can still make the deadline.
3. *Break near-ties* at the top by power-of-two-choices: among candidates
   whose score is within ``near_tie`` of the best *and* whose price is within
   ``near_tie`` of the leader's, two are drawn at random and the less loaded
   one goes first, so replicas sharing one view of the world do not all herd
   onto the same provider. A real price gap is never a tie: load-spreading
   must not quietly buy the dearer provider.

``balanced`` reads a provider's health on two time scales: the decayed success
ratio (tens of seconds) times ``1 / (1 + failure streak)``, the failures since
its last success decayed over seconds, so the first failure or two steer traffic
away before the breaker trips. A provider that failed since its last success,
or whose oldest attempt in flight is overdue (older than its tail latency
estimate), is *on trial*: while it has an attempt in flight it ranks after every
provider that is not, so a doubtful provider gets one call at a time, as a
half-open breaker does. A half-open provider with a free probe slot is scored as
if its probe will succeed (health 1): the probe is how recovery is seen, and
scoring it down would leave it half-open forever behind healthy providers.

Every candidate carries the ``balanced`` components (``health``, ``latency``,
``cost``, ``load``, ``weight``), whatever the policy, so any decision can be
explained in logs, in ``GET /v1/providers`` and on the job's attempts.
"""

from __future__ import annotations

import math
import random
from typing import Final, get_args

from strategies.eligibility import exclusion_reason, expected_cost_usd, latency_estimate_s
from strategies.snapshot import (
    Exclusion,
    Policy,
    ProviderSnapshot,
    Ranking,
    RouteRequest,
    ScoredCandidate,
    Snapshot,
    Weights,
)

__all__ = ["ProviderStrategy"]

_POLICIES: Final = frozenset(get_args(Policy))
#: In-flight requests at which an uncapped provider's load component halves. A bare
#: 1 / (1 + in-flight) punished a cheap provider for holding one or two requests at
#: modest rates (measured in the chaos bench: +20 % cost over the oracle).
_SOFT_CONCURRENCY: Final = 8.0
#: Latency component of a provider with no estimate yet: as good as the fastest, so it
#: is tried and measured. A neutral 0.5 lost to a lone *known* provider (which scores
#: 1.0 against itself however slow it is), so a 1.5 s provider kept all the traffic.
_UNKNOWN_LATENCY: Final = 1.0
#: The latency gap a generation caller does not notice. The latency component is
#: ``(best + F) / (best + F + excess)`` where a gap ``g`` over the best counts as
#: ``excess = g² / (g + F)``: about ``g`` once ``g`` is well over ``F``, but only
#: ``g² / F`` under it, so a 30 ms gap costs 0.05 where a plain ratio charged 0.2, and
#: a few tens of milliseconds can no longer outweigh a 50 % price gap (chaos bench).
_LATENCY_FLOOR_S: Final = 0.1
#: A failure streak below this counts as none (a streak decays but never reaches 0).
_STREAK_EPSILON: Final = 0.01
#: Below this token-bucket fill the health component starts to shrink.
_HEADROOM_KNEE: Final = 0.5
#: Policies whose ties are broken by power-of-two-choices. ``priority`` is the
#: operator's explicit order and ``weighted`` is already random.
_P2C_POLICIES: Final = frozenset({"balanced", "cheapest", "fastest"})
_INF: Final = math.inf


class _Row:
    """One routable provider while a decision is being made."""

    __slots__ = (
        "components",
        "cost",
        "index",
        "key",
        "latency",
        "over_deadline",
        "provider",
        "score",
        "trial_busy",
    )

    def __init__(
        self, provider: ProviderSnapshot, index: int, cost: float, latency: float | None
    ) -> None:
        self.provider = provider
        self.index = index
        self.cost = cost
        self.latency = latency
        self.over_deadline = False
        #: On trial (recent failures, or an overdue attempt) with an attempt in flight.
        self.trial_busy = False
        self.score = 0.0
        self.components: dict[str, float] = {}
        self.key: tuple[float, ...] = ()


class ProviderStrategy:
    """Ranks routable providers for a request by a policy (DESIGN §2).

    ``default_policy`` applies when the request names none; ``weights`` are the
    ``balanced`` policy's component weights (normalised to sum to 1);
    ``near_tie`` is the fraction of the best score within which candidates
    count as tied.
    """

    __slots__ = ("_default_policy", "_near_tie", "_w_cost", "_w_health", "_w_latency", "_w_load")

    def __init__(
        self,
        *,
        default_policy: Policy = "balanced",
        weights: Weights = Weights(),  # noqa: B008 - frozen value object, safe to share
        near_tie: float = 0.02,
    ) -> None:
        if default_policy not in _POLICIES:
            raise ValueError(f"unknown policy {default_policy!r}")
        if not 0.0 <= near_tie <= 1.0:
            raise ValueError(f"near_tie must be within [0, 1], got {near_tie}")
        parts = (weights.health, weights.latency, weights.cost, weights.load)
        if any(w < 0 or not math.isfinite(w) for w in parts):
            raise ValueError(f"weights must be finite and non-negative, got {weights}")
        # Normalised once here so a score is always within [0, weight].
        total = sum(parts) or 1.0
        self._default_policy: Policy = default_policy
        self._near_tie = near_tie
        self._w_health = weights.health / total
        self._w_latency = weights.latency / total
        self._w_cost = weights.cost / total
        self._w_load = weights.load / total

    def __repr__(self) -> str:
        return (
            f"ProviderStrategy(default_policy={self._default_policy!r}, near_tie={self._near_tie})"
        )

    def rank(self, request: RouteRequest, snapshot: Snapshot, rng: random.Random) -> Ranking:
        """Rank the providers in ``snapshot`` that may take ``request``, best first.

        Excluded providers are listed with their reason in configuration order,
        except that ``unhealthy`` exclusions come after the others.
        """
        policy: Policy = self._default_policy if request.policy is None else request.policy
        if policy not in _POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        allow_pos = None if request.allow is None else {n: i for i, n in enumerate(request.allow)}
        kind = request.kind
        excluded: list[Exclusion] = []
        rows: list[_Row] = []
        unhealthy: list[_Row] = []
        for index, provider in enumerate(snapshot.providers):
            cost = expected_cost_usd(request, provider)
            reason = exclusion_reason(request, provider, allow_pos, cost)
            if reason is None:
                rows.append(_Row(provider, index, cost, provider.latency_ewma_s.get(kind)))
            elif reason == "unhealthy":
                unhealthy.append(_Row(provider, index, cost, provider.latency_ewma_s.get(kind)))
            else:
                excluded.append(Exclusion(provider.name, reason))
        if not rows:
            rows = unhealthy
        else:
            excluded.extend(Exclusion(r.provider.name, "unhealthy") for r in unhealthy)
        if not rows:
            return Ranking(policy=policy, candidates=(), excluded=tuple(excluded))

        self._score(rows, request)
        if policy == "balanced":
            for r in rows:
                r.key = (r.over_deadline, r.trial_busy, -r.score, r.provider.priority, r.index)
        elif policy == "cheapest":
            for r in rows:
                r.score = r.components["cost"]
                lat = _INF if r.latency is None else r.latency
                health = r.components["health"]
                r.key = (r.over_deadline, r.cost, -health, lat, r.provider.priority, r.index)
        elif policy == "fastest":
            # A provider with no estimate yet goes first, once: optimism measures it,
            # where ranking it last would pin "fastest" to whichever answered first.
            for r in rows:
                known = r.latency is not None
                r.score = r.components["latency"] if known else 1.0
                lat = _INF if r.latency is None else r.latency
                health = r.components["health"]
                r.key = (r.over_deadline, known, lat, -health, r.cost, r.index)
        elif policy == "priority":
            for r in rows:
                first = 0 if allow_pos is None else allow_pos[r.provider.name]
                r.key = (r.over_deadline, first, r.provider.priority, r.index)
        else:  # weighted
            # Efraimidis–Spirakis: sorting by log(u)/w gives a weighted random
            # permutation in one pass. 1 - random() is in (0, 1], so log is defined.
            for r in rows:
                w = r.provider.weight * r.components["health"]
                r.score = w
                draw = math.log(1.0 - rng.random()) / w if w > 0 else -_INF
                r.key = (r.over_deadline, -draw, r.index)
        rows.sort(key=_sort_key)
        if policy == "priority":
            count = len(rows)
            for pos, r in enumerate(rows):
                r.score = (count - pos) / count
        elif policy in _P2C_POLICIES:
            self._break_near_tie(rows, rng)

        candidates = tuple(
            ScoredCandidate(
                name=r.provider.name,
                score=r.score,
                components=r.components,
                expected_cost_usd=r.cost,
                expected_latency_s=r.latency,
                probe=r.provider.breaker == "half_open",
            )
            for r in rows
        )
        return Ranking(policy=policy, candidates=candidates, excluded=tuple(excluded))

    def _score(self, rows: list[_Row], request: RouteRequest) -> None:
        """Fill each row's components, balanced score, deadline and trial flags."""
        min_cost = min(r.cost for r in rows)
        kind = request.kind
        # The latency scored: the EWMA, raised to the age of the oldest attempt still in
        # flight (a lower bound on that attempt's latency), so a provider that stopped
        # answering loses its lead before its first timeout.
        scored: list[float | None] = []
        for r in rows:
            age = r.provider.outstanding_s.get(kind)
            if age is None:
                scored.append(r.latency)
            elif r.latency is None:
                scored.append(age if age > 0 else None)
            else:
                scored.append(max(r.latency, age))
        known = [lat for lat in scored if lat is not None]
        min_latency = min(known) if known else 0.0
        if len(known) < len(rows):
            # Optimism under uncertainty: an unmeasured provider might be twice as fast
            # as the best measured one, so a lone slow measurement cannot score 1.0.
            min_latency /= 2
        remaining = request.remaining_s
        wh, wl, wc, wld = self._w_health, self._w_latency, self._w_cost, self._w_load
        base = min_latency + _LATENCY_FLOOR_S
        for r, lat in zip(rows, scored, strict=True):
            p = r.provider
            streak = p.failure_streak if p.failure_streak >= _STREAK_EPSILON else 0.0
            # Health: the success ratio over the failure streak, shrunk as the token
            # bucket empties (a nearly throttled provider is about to answer 429). A
            # half-open probe is scored as if it will succeed: its verdict is the news.
            if p.breaker == "half_open":
                health = 1.0
            else:
                health = min(max(p.success_ratio, 0.0), 1.0) / (1.0 + max(streak, 0.0))
            if p.tokens_capacity > 0:
                fill = p.tokens_available / p.tokens_capacity
                if fill < _HEADROOM_KNEE:
                    health *= 0.5 + fill
            if lat is None:
                latency = _UNKNOWN_LATENCY
            elif lat <= min_latency:
                latency = 1.0
            else:
                gap = lat - min_latency
                latency = base / (base + gap * gap / (gap + _LATENCY_FLOOR_S))
            if p.breaker == "closed" and p.inflight > 0:
                age = p.outstanding_s.get(kind)
                tail = latency_estimate_s(p, kind)
                overdue = age is not None and tail is not None and age > tail
                r.trial_busy = streak > 0 or overdue
            cost = 1.0 if r.cost <= 0 else min_cost / r.cost
            if p.max_concurrency:
                load = max(0.0, 1.0 - p.inflight / p.max_concurrency)
            else:
                load = 1.0 / (1.0 + max(p.inflight, 0) / _SOFT_CONCURRENCY)
            r.components = {
                "health": health,
                "latency": latency,
                "cost": cost,
                "load": load,
                "weight": p.weight,
            }
            r.score = (wh * health + wl * latency + wc * cost + wld * load) * p.weight
            if remaining is not None:
                estimate = latency_estimate_s(p, kind)
                r.over_deadline = estimate is not None and estimate > remaining

    def _break_near_tie(self, rows: list[_Row], rng: random.Random) -> None:
        """Put the less loaded of two random near-best candidates first.

        ``rows`` is sorted best first with non-increasing scores within the
        leading deadline group, so the near-ties are a prefix of it.
        """
        first = rows[0]
        best = first.score
        floor = best - self._near_tie * abs(best)
        price_cap = first.cost * (1.0 + self._near_tie)
        price_floor = first.cost * (1.0 - self._near_tie)
        tied = 1
        for r in rows[1:]:
            if (
                r.over_deadline != first.over_deadline
                or r.trial_busy != first.trial_busy
                or r.score < floor
            ):
                break
            if price_floor <= r.cost <= price_cap:
                tied += 1
                continue
            break
        if tied < 2:
            return
        i = rng.randrange(tied)
        j = rng.randrange(tied - 1)
        if j >= i:
            j += 1
        a, b = rows[i], rows[j]
        # Less loaded first, then the better score, then the earlier position.
        a_key = (a.components["load"], a.score, -i)
        b_key = (b.components["load"], b.score, -j)
        chosen = i if a_key > b_key else j
        if chosen:
            rows.insert(0, rows.pop(chosen))


def _sort_key(row: _Row) -> tuple[float, ...]:
    return row.key
