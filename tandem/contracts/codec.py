"""The encoding of a candidate list, on Kafka and in Redis.

Layout (little endian): format byte ``1``, u32 item count, u32 length of the ids blob, the ids
joined by NUL (ids never contain NUL), then one float32 score per item. Measured against orjson
on 200-item lists (``tandem bench store``): decodes faster and is half the size.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence

import numpy as np

from tandem.contracts.exceptions import CodecError

FORMAT = 1
_HEADER = struct.Struct("<BII")
_SEP = "\x00"


def encode(item_ids: list[str], scores: list[float]) -> bytes:
    """Pack ids (validated elsewhere) and scores into the stored form."""
    if len(item_ids) != len(scores):
        raise CodecError(f"{len(item_ids)} item ids but {len(scores)} scores")
    blob = _SEP.join(item_ids).encode()
    return _HEADER.pack(FORMAT, len(item_ids), len(blob)) + blob + array("f", scores).tobytes()


def _checked_header(data: bytes) -> tuple[int, int]:
    """``(item count, offset of the scores)`` of an encoded list whose length fits its header."""
    if len(data) < _HEADER.size:
        raise CodecError(f"{len(data)} bytes is shorter than the {_HEADER.size}-byte header")
    fmt, count, blob_len = _HEADER.unpack_from(data)
    if fmt != FORMAT:
        raise CodecError(f"unknown format byte {fmt}")
    scores_at = _HEADER.size + blob_len
    if len(data) != scores_at + 4 * count:
        raise CodecError(f"{len(data)} bytes do not hold {count} items and {blob_len} id bytes")
    return count, scores_at


def decode(data: bytes) -> tuple[list[str], list[float]]:
    """Unpack the stored form into ``(item_ids, scores)``."""
    count, scores_at = _checked_header(data)
    if count == 0:
        return [], []
    try:
        item_ids = data[_HEADER.size : scores_at].decode().split(_SEP)
    except UnicodeDecodeError as e:
        raise CodecError(f"item ids are not UTF-8: {e}") from e
    if len(item_ids) != count:
        raise CodecError(f"header says {count} items, the ids blob holds {len(item_ids)}")
    scores = array("f")
    scores.frombytes(data[scores_at:])
    return item_ids, scores.tolist()


def summarize(data: bytes) -> tuple[int, bool]:
    """``(item count, all scores finite)`` of an encoded list, checking its structure."""
    count, scores_at = _checked_header(data)
    blob = data[_HEADER.size : scores_at]
    ids_in_blob = blob.count(b"\x00") + 1 if blob else 0
    if ids_in_blob != count:
        raise CodecError(f"header says {count} items, the ids blob disagrees")
    try:
        blob.decode()
    except UnicodeDecodeError as e:
        raise CodecError(f"item ids are not UTF-8: {e}") from e
    return count, _all_finite(data, scores_at)


def _all_finite(data: bytes, scores_at: int) -> bool:
    # A non-finite float32 has all exponent bits set, so its high byte is 0x7F or 0xFF. Scanning
    # the high bytes is much cheaper than numpy per list; numpy decides only when one matches.
    high = data[scores_at + 3 :: 4]
    if not (high.count(0x7F) or high.count(0xFF)):
        return True
    return bool(np.isfinite(np.frombuffer(data, dtype="<f4", offset=scores_at)).all())


def summarize_all(values: Sequence[bytes]) -> tuple[int, int]:
    """``(lists with no item, lists with a non-finite score)`` of a batch of encoded lists,
    checking every list as :func:`summarize` does; raises :class:`CodecError` if any fails
    (without saying which: the caller asks :func:`summarize` of each, on that rare path).

    One pass of a few C calls per list, then the UTF-8 and finiteness checks once over the
    joined parts: the per-list function calls and slices cost more than the checks."""
    unpack, header_size = _HEADER.unpack_from, _HEADER.size
    blobs: list[bytes] = []
    highs: list[bytes] = []
    empty = 0
    for data in values:
        if len(data) < header_size:
            raise CodecError("a list is shorter than its header")
        fmt, count, blob_len = unpack(data)
        scores_at = header_size + blob_len
        if fmt != FORMAT or len(data) != scores_at + 4 * count:
            raise CodecError("a list's format byte or length disagrees with its header")
        if (data.count(0, header_size, scores_at) + 1 if blob_len else 0) != count:
            raise CodecError("a list's header and ids blob disagree")
        empty += not count
        blobs.append(data[header_size:scores_at])
        highs.append(data[scores_at + 3 :: 4])
    try:
        # NUL is one byte that never continues a sequence: the join is valid UTF-8 iff each is.
        _SEP.encode().join(blobs).decode()
    except UnicodeDecodeError as e:
        raise CodecError(f"item ids are not UTF-8: {e}") from e
    high = b"".join(highs)
    if not (high.count(0x7F) or high.count(0xFF)):
        return empty, 0
    return empty, sum(not summarize(data)[1] for data in values)
