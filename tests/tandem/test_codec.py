"""The candidate-list encoding and the order-independent checksum, without services."""

from __future__ import annotations

import math
import random
import struct

import pytest

from tandem.contracts.checksum import batch_checksum, combine, from_hex, record_digest, to_hex
from tandem.contracts.codec import decode, encode, summarize, summarize_all
from tandem.contracts.exceptions import CodecError
from tandem.contracts.ids import valid_ids
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


BATCH = [encode([f"i{n}", "é"], [float(n), 0.5]) for n in range(50)] + [encode([], [])]


@pytest.mark.parametrize(
    ("bad", "at"),
    [
        (b"", 3),
        (encode(["a"], [1.0])[:-1], 0),
        (struct.pack("<BII", 1, 2, 1) + b"a" + b"\x00" * 8, 50),
        (struct.pack("<BII", 1, 1, 2) + b"\xc3" + b"\x00" * 5, 7),  # a cut-off UTF-8 sequence
        (struct.pack("<BII", 1, 0, 1) + b"a", 20),  # an id but no item
    ],
)
def test_summarize_all_rejects_a_batch_whenever_summarize_rejects_one(bad: bytes, at: int) -> None:
    assert summarize_all(BATCH) == (1, 0)
    with pytest.raises(CodecError):
        summarize(bad)
    with pytest.raises(CodecError):
        summarize_all([*BATCH[:at], bad, *BATCH[at:]])


def test_summarize_all_counts_lists_with_non_finite_scores() -> None:
    odd = [encode(["a", "b"], [1.0, math.inf]), encode(["a"], [math.nan]), encode(["a"], [3e38])]
    assert summarize_all([*BATCH, *odd]) == (1, 2)


def test_batch_checksum_and_valid_ids_agree_with_their_single_forms() -> None:
    keys = [f"e{n}".encode() for n in range(len(BATCH))]
    assert batch_checksum(keys, BATCH) == combine(
        *(record_digest(k, v) for k, v in zip(keys, BATCH, strict=True))
    )
    assert batch_checksum([], []) == 0
    assert valid_ids(keys) == [k.decode() for k in keys]
    for bad in (None, b"", b"a b", b"a\nb", "é".encode(), b"x" * 129):
        assert valid_ids([*keys, bad]) is None
    assert valid_ids([b"x" * 128]) == ["x" * 128]
