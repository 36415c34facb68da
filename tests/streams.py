"""
Helpers that cut byte streams into chunks, for tests of incremental framing.
"""

from __future__ import annotations

from itertools import pairwise


def cutAt(stream: bytes, cuts: list[int]) -> list[bytes]:
    """
    Cut C{stream} at the given offsets (taken modulo its length; duplicates
    and order do not matter).  Joining the result gives C{stream} back.
    """
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    return [stream[start:end] for start, end in pairwise(points)]
