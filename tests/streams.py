"""
Byte streams for tests: cutting a stream into chunks, for tests of
incremental framing, and the floods that slow-reader checks push.
"""

from __future__ import annotations

from itertools import pairwise

from tcplab.framing import encode

MiB = 1024 * 1024

#: What a client that never reads pushes, 1 MiB at a time, in each framing:
#: raw bytes, 1 KiB lines, 16 KiB frames.
FLOODS = {
    "raw": b"x" * MiB,
    "line": (b"x" * 1023 + b"\n") * 1024,
    "length": encode("length", b"x" * (16384 - 4)) * 64,
}


def cutAt(stream: bytes, cuts: list[int]) -> list[bytes]:
    """
    Cut C{stream} at the given offsets (taken modulo its length; duplicates
    and order do not matter).  Joining the result gives C{stream} back.
    """
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    return [stream[start:end] for start, end in pairwise(points)]
