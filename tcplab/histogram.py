"""
A histogram of connection durations, kept as plain integers: what
C{tcplab_connection_duration_seconds} shows.
"""

from __future__ import annotations

from bisect import bisect_left

#: The buckets' upper bounds, in seconds: from a connect-echo-close over
#: loopback (well under a millisecond) to connections held for an hour.
BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


class DurationHistogram:
    """
    Durations counted by bucket: one bisection and two additions each, no
    object made (a connection's close costs about 40 microseconds; this,
    well under one).

    @ivar counts: durations at most each bound of L{BUCKETS}, not added up
        (the bucket of the first bound they fit), then those over the last.
    @ivar microseconds: the sum of the durations, in whole microseconds:
        an integer, so that sums added up in any order (the workers', a
        replaced worker's) are the same and a total never goes down, as a
        float's rounding would make it now and then.
    """

    __slots__ = ("counts", "microseconds")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.microseconds = 0

    def observe(self, seconds: float) -> None:
        """
        Count one duration of C{seconds}.
        """
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.microseconds += round(seconds * 1_000_000)


def cumulative(counts: list[int]) -> list[tuple[float, int]]:
    """
    @param counts: a L{DurationHistogram}'s C{counts} (or several added up).
    @return: each bound (the last, infinity) with the count of durations at
        most that long, as Prometheus histograms give them.
    """
    buckets = []
    seen = 0
    for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
        seen += count
        buckets.append((bound, seen))
    return buckets
