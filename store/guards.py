"""Online guards: judge a running canary against control, abort it or promote it.

:func:`judge` is pure (counters and a policy in, a decision out). :class:`Guard` applies it to
every store's canary, one bounded pass per :meth:`Guard.check`: a breached guard aborts the
canary (rejected, with the reasons in the registry and on ``tandem.versions``); a canary that
reached its promotion sample with no guard objecting goes live. :meth:`Guard.run` repeats the
pass, and gives up (raises) when every pass failed for ``give_up_s``: a guard that cannot read
the counters must not look alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import Counter, Gauge

from tandem.contracts.metrics import component_registry
from tandem.contracts.settings import GuardPolicy
from tandem.store.experiments import CANARY, CONTROL, VariantStats
from tandem.store.registry import now_ms

if TYPE_CHECKING:
    from tandem.store.admin import VersionAdmin

log = logging.getLogger(__name__)

REGISTRY = component_registry()  # what `tandem guard --metrics-port` exports
PASSES = Counter(
    "tandem_guard_passes_total", "Passes over the stores, by outcome", ["outcome"],
    registry=REGISTRY,
)  # fmt: skip
DECISIONS = Counter(
    "tandem_guard_decisions_total",
    "Canaries aborted or promoted, and live versions rolled back, by the guard",
    ["store", "action"],
    registry=REGISTRY,
)
LAST_PASS = Gauge(
    "tandem_guard_last_pass_timestamp_seconds",
    "When the last pass that read every store ended",
    registry=REGISTRY,
)

Action = Literal["wait", "abort", "promote"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the guard decided for one canary, and why."""

    action: Action
    reasons: tuple[str, ...] = ()
    z: dict[str, float] = field(default_factory=dict)


def worse_z(
    control_hits: int, control_n: int, canary_hits: int, canary_n: int, drop: float
) -> float:
    """One-sided two-proportion z statistic of "the canary's rate is below control's by more
    than ``drop`` (relative)": large when the canary is clearly worse."""
    if not control_n or not canary_n:
        return 0.0
    p_control, p_canary = control_hits / control_n, canary_hits / canary_n
    bar = p_control * (1 - drop)
    variance = (1 - drop) ** 2 * p_control * (1 - p_control) / control_n + p_canary * (
        1 - p_canary
    ) / canary_n
    if variance <= 0:
        return 0.0
    return (bar - p_canary) / math.sqrt(variance)


def interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate (95% by default)."""
    if not n:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def health(stats: VariantStats, policy: GuardPolicy) -> list[str]:
    """What is wrong with a version's answers themselves (degraded share, p99 latency)."""
    reasons = []
    if stats.degraded_share > policy.max_degraded_share:
        reasons.append(
            f"degraded share {stats.degraded_share:.3f} above {policy.max_degraded_share:g}"
        )
    p99 = stats.p99_ms()
    if p99 is not None and p99 > policy.max_p99_ms:
        reasons.append(f"p99 latency {p99:g} ms above {policy.max_p99_ms:g} ms")
    return reasons


def since(now: VariantStats, before: VariantStats | None) -> VariantStats:
    """The counts between two readings of the same counters."""
    if before is None:
        return now
    latency = tuple(a - b for a, b in zip(now.latency, before.latency, strict=False))
    return VariantStats(
        impressions=now.impressions - before.impressions,
        degraded=now.degraded - before.degraded,
        click=now.click - before.click,
        add_to_cart=now.add_to_cart - before.add_to_cart,
        purchase=now.purchase - before.purchase,
        latency_ms_sum=now.latency_ms_sum - before.latency_ms_sum,
        latency=latency or now.latency,
    )


def judge(control: VariantStats, canary: VariantStats, policy: GuardPolicy) -> Decision:
    """Abort, promote or wait, from the experiment's counters."""
    if min(control.impressions, canary.impressions) < policy.min_impressions:
        return Decision("wait")
    reasons = health(canary, policy)
    z = {
        "ctr": worse_z(control.click, control.impressions, canary.click, canary.impressions,
                       policy.max_drop),
        "conversion": worse_z(control.purchase, control.impressions, canary.purchase,
                              canary.impressions, policy.max_drop),
    }  # fmt: skip
    rates = {
        "ctr": (control.ctr, canary.ctr),
        "conversion": (control.conversion, canary.conversion),
    }
    for name, value in z.items():
        if value > policy.z:
            was, now = rates[name]
            reasons.append(
                f"{name} {now:.4f} below control {was:.4f} by more than {policy.max_drop:.0%} "
                f"(z={value:.2f} > {policy.z:g})"
            )
    if reasons:
        return Decision("abort", tuple(reasons), z)
    # Promotion needs evidence, not only the absence of it: after its sample, the canary's CTR
    # must be shown not worse than control's by more than max_drop (a non-inferiority test:
    # the same statistic, significant the other way).
    enough = min(control.impressions, canary.impressions) >= policy.promote_after
    if policy.promote_after and enough and z["ctr"] < -policy.z:
        why = (
            f"ctr {canary.ctr:.4f} against control {control.ctr:.4f}: not worse by more than "
            f"{policy.max_drop:.0%} (z={-z['ctr']:.2f} > {policy.z:g}), no guard breached"
        )
        return Decision("promote", (why,), z)
    return Decision("wait", (), z)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One store's canary as the guard left it."""

    store: str
    version: int
    decision: Decision
    control: VariantStats
    canary: VariantStats
    decided_after_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON output."""
        return {
            "store": self.store,
            "version": str(self.version),
            "action": self.decision.action,
            "reasons": list(self.decision.reasons),
            "z": {k: round(v, 3) for k, v in self.decision.z.items()},
            CONTROL: self.control.to_dict(),
            CANARY: self.canary.to_dict(),
            "decided_after_s": self.decided_after_s,
        }


class Guard:
    """Judges every configured store's canary; bounded: one pass per :meth:`check`."""

    def __init__(self, admin: VersionAdmin, policies: dict[str, GuardPolicy]) -> None:
        self._admin = admin
        self._policies = policies
        # Per store: the live version and its counters when its current window began.
        self._windows: dict[str, tuple[int, VariantStats]] = {}

    async def check(self) -> list[Outcome]:
        """One pass over the stores: judge each canary; without one, the live version's health
        since the last window (rolled back when it breaches a guard). Acts on each decision."""
        outcomes = []
        for store, policy in sorted(self._policies.items()):
            canary = await self._admin.experiments.canary(store)
            if canary is None or canary.shadow:
                await self._watch_live(store, policy)
                continue
            stats = await self._admin.experiments.counters(store, canary.version)
            decision = judge(stats[CONTROL], stats[CANARY], policy)
            after = await self._act(store, canary.version, decision)
            outcomes.append(
                Outcome(store, canary.version, decision, stats[CONTROL], stats[CANARY], after)
            )
        return outcomes

    async def _act(self, store: str, version: int, decision: Decision) -> float | None:
        """Abort or promote; seconds since the canary started, when it was decided."""
        if decision.action == "wait":
            return None
        info = await self._admin.experiments.registry.get(store, version)
        started_ms = (info.metadata.get("canary", {}) if info else {}).get("started_ms", now_ms())
        after_s = (now_ms() - int(started_ms)) / 1000
        why = "; ".join(decision.reasons)
        if decision.action == "abort":
            await self._admin.abort_canary(store, [f"guard: {r}" for r in decision.reasons])
            log.warning(
                "guard: %s canary v%s aborted after %.1f s: %s", store, version, after_s, why
            )
        else:
            await self._admin.promote_canary(store, f"guard: {why}")
            log.info("guard: %s canary v%s promoted after %.1f s", store, version, after_s)
        await self._record(store, version, decision, after_s)
        DECISIONS.labels(store, decision.action).inc()
        return after_s

    async def _record(self, store: str, version: int, decision: Decision, after_s: float) -> None:
        registry = self._admin.experiments.registry
        info = await registry.get(store, version)
        if info is None:
            return
        canary = {
            **info.metadata.get("canary", {}),
            "guard": {
                "action": decision.action,
                "reasons": list(decision.reasons),
                "z": decision.z,
                "decided_after_s": round(after_s, 3),
            },
        }
        await registry.update(
            store, version, info.state, metadata={**info.metadata, "canary": canary}
        )

    async def _watch_live(self, store: str, policy: GuardPolicy) -> str | None:
        """Roll the live version back when, over a window of at least ``min_impressions``
        answers, its degraded share or p99 breaches a guard; why, if it did."""
        live = await self._admin.lifecycle.live(store)
        if live is None:
            return None
        now = await self._admin.experiments.live_counters(store, live)
        start = self._windows.get(store)
        window = since(now, start[1] if start is not None and start[0] == live else None)
        if window.impressions < policy.min_impressions:
            if start is None or start[0] != live:
                self._windows[store] = (live, now)
            return None
        self._windows[store] = (live, now)
        reasons = health(window, policy)
        if not reasons or await self._admin.lifecycle.backup(store) is None:
            return None
        why = [f"guard: {r} over the last {window.impressions} answers" for r in reasons]
        await self._admin.rollback(store, why)
        DECISIONS.labels(store, "rollback").inc()
        log.warning("guard: %s v%s rolled back: %s", store, live, "; ".join(why))
        self._windows.pop(store, None)
        return "; ".join(why)

    async def run(self, stop: asyncio.Event, interval_s: float, give_up_s: float = 60.0) -> None:
        """Check every ``interval_s`` until ``stop`` is set; re-raise the last error once every
        pass failed for ``give_up_s`` (a failed pass is logged and tried again until then)."""
        failing_since: float | None = None
        while not stop.is_set():
            try:
                await self.check()
            except Exception as e:
                PASSES.labels("failed").inc()
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= give_up_s:
                    raise
                log.warning(
                    "a guard pass failed (%s); trying again for %.0f s more",
                    e,
                    give_up_s - (now - failing_since),
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            else:
                PASSES.labels("ok").inc()
                LAST_PASS.set_to_current_time()
                failing_since = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
