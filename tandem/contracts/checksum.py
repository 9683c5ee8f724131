"""The order-independent checksum of a version: a sum, modulo 2**64, of per-record digests.

A sum (not XOR) so that a record counted twice changes the result. Publisher, materializer and
replay all compute it over the same bytes: the record's key and its encoded value.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

import numpy as np

MASK64 = (1 << 64) - 1


def record_digest(key: bytes, value: bytes) -> int:
    """The 64-bit digest of one record."""
    return int.from_bytes(blake2b(key + b"\x00" + value, digest_size=8).digest(), "little")


def batch_checksum(keys: Sequence[bytes], values: Sequence[bytes]) -> int:
    """The checksum of a batch of records, as :func:`combine` of their :func:`record_digest`s:
    the digests are summed as one array (numpy's uint64 sum wraps modulo 2**64) instead of one
    Python int each."""
    digests = b"".join(
        [
            blake2b(k + b"\x00" + v, digest_size=8).digest()
            for k, v in zip(keys, values, strict=True)
        ]
    )
    return int(np.frombuffer(digests, dtype="<u8").sum(dtype=np.uint64))


def combine(*checksums: int) -> int:
    """Checksums of disjoint record sets combined into the checksum of their union."""
    return sum(checksums) & MASK64


def to_hex(checksum: int) -> str:
    """The printable form used in control messages, the registry and the CLI."""
    return f"{checksum & MASK64:016x}"


def from_hex(text: str) -> int:
    """Inverse of :func:`to_hex`."""
    return int(text, 16) & MASK64
