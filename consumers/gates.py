"""Quality gates a new version must pass before it goes live: pure decisions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tandem.contracts.checksum import combine, to_hex
from tandem.contracts.settings import StorePolicy
from tandem.store.progress import PartitionProgress


@dataclass(frozen=True, slots=True)
class VersionStats:
    """What the gates look at in a version."""

    count: int
    empty: int = 0
    nonfinite: int = 0
    dlq: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Verification:
    """Whether every partition delivered what its END_OF_PUSH promised."""

    complete: bool
    reasons: list[str]
    stats: VersionStats
    checksum: str


def verify(progress: Mapping[int, PartitionProgress], partitions: int) -> Verification:
    """Compare each partition's applied records with its END_OF_PUSH.

    ``complete`` is False while any partition has not ended; ``reasons`` lists mismatches.
    """
    parts = [progress.get(p, PartitionProgress()) for p in range(partitions)]
    complete = partitions > 0 and all(p.ended for p in parts)
    dlq = sum(p.dlq for p in parts)
    reasons = [f"{dlq} record(s) could not be applied (see tandem.dlq)"] if dlq else []
    reasons.extend(
        f"partition {n}: {problem}"
        for n, p in enumerate(parts)
        if complete and (problem := p.mismatch()) is not None
    )
    stats = VersionStats(
        count=sum(p.count for p in parts),
        empty=sum(p.empty for p in parts),
        nonfinite=sum(p.nonfinite for p in parts),
        dlq=dlq,
    )
    return Verification(complete, reasons, stats, to_hex(combine(*(p.checksum for p in parts))))


def evaluate(new: VersionStats, live: VersionStats | None, policy: StorePolicy) -> list[str]:
    """Reasons to reject ``new`` given the live version's stats; empty means it passes."""
    reasons = []
    if new.count == 0:
        reasons.append("the version has no records")
    if new.nonfinite:
        reasons.append(f"{new.nonfinite} list(s) have non-finite scores")
    if new.count and new.empty / new.count > policy.max_empty_share:
        reasons.append(
            f"{new.empty / new.count:.1%} of lists are empty (at most "
            f"{policy.max_empty_share:.1%} allowed)"
        )
    if live is not None and live.count:
        coverage = new.count / live.count
        if coverage < policy.min_coverage:
            reasons.append(
                f"entity count {new.count} is {coverage:.1%} of the live version's "
                f"{live.count} (at least {policy.min_coverage:.0%} required)"
            )
        reasons.extend(_metric_regressions(new.metrics, live.metrics, policy.metric_tolerance))
    return reasons


def _metric_regressions(
    new: Mapping[str, float], live: Mapping[str, float], tolerance: float
) -> list[str]:
    """Offline metrics (higher is better) that fell more than ``tolerance`` (relative)."""
    reasons = []
    for name, old in sorted(live.items()):
        value = new.get(name)
        if value is not None and value < old - tolerance * abs(old):
            reasons.append(
                f"offline metric {name} fell from {old:.4g} to {value:.4g} "
                f"(tolerance {tolerance:.0%})"
            )
    return reasons
