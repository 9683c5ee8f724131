"""Gate decisions and batch planning are pure: tested without services."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tandem.consumers.gates import VersionStats, evaluate, verify
from tandem.consumers.records import Record
from tandem.consumers.sink import plan_batch
from tandem.contracts.checksum import combine, record_digest
from tandem.contracts.codec import encode
from tandem.contracts.control import (
    Control,
    EndOfPush,
    Headers,
    StartOfPush,
    control_headers,
    record_headers,
)
from tandem.contracts.settings import StorePolicy
from tandem.store.progress import PartitionProgress

POLICY = StorePolicy(min_coverage=0.9, max_empty_share=0.1, metric_tolerance=0.05)


@pytest.mark.parametrize(
    ("new", "live", "expected"),
    [
        (VersionStats(100), None, []),
        (VersionStats(95), VersionStats(100), []),
        (VersionStats(89), VersionStats(100), ["entity count 89 is 89.0%"]),
        (VersionStats(0), None, ["the version has no records"]),
        (VersionStats(100, empty=11), None, ["11.0% of lists are empty"]),
        (VersionStats(100, nonfinite=2), None, ["2 list(s) have non-finite scores"]),
        (VersionStats(100, metrics={"ndcg": 0.29}), VersionStats(100, metrics={"ndcg": 0.3}), []),
        (
            VersionStats(100, metrics={"ndcg": 0.2}),
            VersionStats(100, metrics={"ndcg": 0.3}),
            ["offline metric ndcg fell from 0.3 to 0.2"],
        ),
        (VersionStats(100), VersionStats(100, metrics={"ndcg": 0.3}), []),
    ],
)
def test_gates(new: VersionStats, live: VersionStats | None, expected: list[str]) -> None:
    reasons = evaluate(new, live, POLICY)
    assert len(reasons) == len(expected)
    for reason, start in zip(reasons, expected, strict=True):
        assert reason.startswith(start)


def test_verify_waits_for_every_partition_then_compares() -> None:
    done = PartitionProgress(count=3, checksum=7, eop_count=3, eop_checksum=7)
    assert not verify({0: done}, 2).complete
    ok = verify({0: done, 1: done}, 2)
    assert ok.complete
    assert ok.reasons == []
    assert ok.stats.count == 6
    short = PartitionProgress(count=2, checksum=7, eop_count=3, eop_checksum=7, dlq=1)
    bad = verify({0: done, 1: short}, 2)
    assert bad.reasons == [
        "1 record(s) could not be applied (see tandem.dlq)",
        "partition 1: count 2 != pushed 3",
    ]


def _record(offset: int, key: bytes | None, value: bytes | None, headers: Headers) -> Record:
    return Record("tandem.store.u2i.v1", 0, offset, key, value, list(headers))


def test_plan_batch_sorts_control_records_and_dead_letters() -> None:
    good = encode(["i1"], [0.5])
    empty = encode([], [])
    checksum = combine(record_digest(b"u1", good), record_digest(b"u2", empty))
    messages = [
        _record(
            0,
            None,
            StartOfPush(1, 0, {"m": 1}).encode(),
            control_headers(Control.START_OF_PUSH, "u2i", 1),
        ),
        _record(1, b"u1", good, record_headers("u2i", 1)),
        _record(2, b"u2", empty, record_headers("u2i", 1)),
        _record(3, b"u3", b"junk", record_headers("u2i", 1)),
        _record(4, None, good, record_headers("u2i", 1)),
        _record(
            5, None, EndOfPush(2, checksum).encode(), control_headers(Control.END_OF_PUSH, "u2i", 1)
        ),
    ]
    plan = plan_batch(PartitionProgress(), messages)
    assert [e for e, _ in plan.entries] == ["u1", "u2"]
    assert [m.offset for m, _ in plan.dead] == [3, 4]
    assert plan.start is not None
    assert plan.start.metadata == {"m": 1}
    after = plan.after
    assert (after.offset, after.count, after.empty, after.dlq) == (5, 2, 1, 2)
    assert after.started
    assert after.mismatch() is None


def test_plan_batch_counts_a_clean_batch_as_one_holding_a_bad_record_counts_the_rest() -> None:
    values = [encode(["i1"], [0.5]), encode([], []), encode(["i2"], [math.nan])]
    clean = [
        _record(n, f"u{n}".encode(), v, record_headers("u2i", 1)) for n, v in enumerate(values)
    ]
    bad = _record(3, "é".encode(), values[0], record_headers("u2i", 1))  # checked one by one
    fast = plan_batch(PartitionProgress(), clean).after
    slow = plan_batch(PartitionProgress(), [*clean, bad])
    assert [m.offset for m, _ in slow.dead] == [3]
    assert replace(slow.after, offset=2, dlq=0) == fast
    assert (fast.count, fast.empty, fast.nonfinite) == (3, 1, 1)
    assert fast.checksum == combine(
        *(record_digest(f"u{n}".encode(), v) for n, v in enumerate(values))
    )
