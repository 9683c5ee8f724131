"""The candidate-list encoding and the order-independent checksum, without services."""

from __future__ import annotations

import math
import random
import struct

import pytest

from tandem.contracts.checksum import combine, from_hex, record_digest, to_hex
from tandem.contracts.codec import decode, encode, summarize
from tandem.contracts.exceptions import CodecError
from tandem.store.progress import PartitionProgress, record_stat


@pytest.mark.parametrize("size", [0, 1, 7, 200, 2000])
def test_round_trip(size: int) -> None:
    ids = [f"i{n}" for n in range(size)]
    scores = [1.0 / (n + 1) for n in range(size)]
    item_ids, decoded = decode(encode(ids, scores))
    assert item_ids == ids
    assert decoded == pytest.approx(scores, rel=1e-6)
    assert summarize(encode(ids, scores)) == (size, True)


def test_summarize_flags_non_finite_scores() -> None:
    assert summarize(encode(["a", "b"], [1.0, math.inf])) == (2, False)
    assert summarize(encode(["a"], [math.nan])) == (1, False)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00",
        encode(["a"], [1.0])[:-1],
        b"\x02" + encode(["a"], [1.0])[1:],
        struct.pack("<BII", 1, 2, 1) + b"a" + b"\x00" * 8,
    ],
)
def test_corrupt_bytes_raise_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode(data)
    with pytest.raises(CodecError):
        summarize(data)


def test_checksum_is_order_independent_and_counts_duplicates() -> None:
    records = [(f"e{n}".encode(), encode([f"i{n}"], [float(n)])) for n in range(100)]
    digests = [record_digest(k, v) for k, v in records]
    shuffled = digests[:]
    random.Random(7).shuffle(shuffled)
    assert combine(*digests) == combine(*shuffled)
    assert combine(*digests, digests[0]) != combine(*digests)
    assert from_hex(to_hex(combine(*digests))) == combine(*digests)


def test_progress_bookkeeping_and_mismatch() -> None:
    value = encode(["i1"], [0.5])
    stats = [record_stat("e1", value, 1, True), record_stat("e2", encode([], []), 0, True)]
    progress = PartitionProgress().with_records(stats, last_offset=4)
    assert (progress.offset, progress.count, progress.empty) == (4, 2, 1)
    assert progress.mismatch() == "END_OF_PUSH not seen"
    assert PartitionProgress.from_json(progress.to_json()) == progress
    promised = PartitionProgress(eop_count=2, eop_checksum=progress.checksum)
    from dataclasses import replace

    assert replace(progress, eop_count=2, eop_checksum=progress.checksum).mismatch() is None
    assert "count 2 != pushed 3" in (
        replace(progress, eop_count=3, eop_checksum=0).mismatch() or ""
    )
    assert promised.ended
