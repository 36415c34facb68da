"""
What a run measured, and its JSON-ready summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tcplab.bench.plan import LoadPlan


@dataclass
class BenchResult:
    """
    What a run measured.

    @ivar messages: messages whose reply came back (right or wrong).
    @ivar errors: replies that differ from the expected bytes, plus extra bytes.
    @ivar split: replies (raw framing with a suffix) that came back in pieces,
        each with its suffix: the server read the message in pieces.  Neither
        right nor wrong, and not counted in C{errors}.
    @ivar unanswered: messages sent whose reply never came.
    @ivar latencies: histogram of round-trip times: microseconds to count.
    @ivar connections: connections opened at the start (C{--connections}).
    @ivar connectionsMade: connections that were made, those opened at the
        start and (with C{--reconnect}) those that took the place of a
        closed one.
    @ivar connectLatencies: histogram of the time each connection took to
        be made: microseconds to count.
    @ivar failedConnections: connections that could not be made, or that
        were lost or closed by the server before their last reply.
    @ivar failures: why, for the first L{MAX_FAILURES} of them.
    """

    connections: int = 0
    connectionsMade: int = 0
    failedConnections: int = 0
    messages: int = 0
    requestBytes: int = 0
    errors: int = 0
    split: int = 0
    unanswered: int = 0
    seconds: float = 0.0
    latencies: dict[int, int] = field(default_factory=dict)
    connectLatencies: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, reason: str, count: int = 1) -> None:
        """
        Count C{count} failed connections, for C{reason}.
        """
        self.failedConnections += count
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(reason)

    def merge(self, other: BenchResult) -> None:
        """
        Add the counts of C{other}, measured at the same time by another process.
        """
        self.connections += other.connections
        self.connectionsMade += other.connectionsMade
        self.failedConnections += other.failedConnections
        self.messages += other.messages
        self.requestBytes += other.requestBytes
        self.errors += other.errors
        self.split += other.split
        self.unanswered += other.unanswered
        self.seconds = max(self.seconds, other.seconds)
        addHistogram(self.latencies, other.latencies)
        addHistogram(self.connectLatencies, other.connectLatencies)
        self.failures.extend(other.failures[: MAX_FAILURES - len(self.failures)])

    def percentile(self, fraction: float) -> float | None:
        """
        @return: the round-trip time in milliseconds that C{fraction} of the
            answered messages did not exceed, or L{None} if none was answered.
        """
        return percentile(self.latencies, fraction)

    def summary(self, plan: LoadPlan) -> dict[str, Any]:
        """
        @return: the JSON-ready summary of the run.
        """
        seconds = self.seconds or float("nan")
        reconnecting = plan.reconnect is not None
        return {
            "framing": plan.framing,
            "size": plan.size,
            "suffix": plan.suffix.decode("utf-8", "replace"),
            "pipeline": plan.pipeline,
            "reconnect": plan.reconnect,
            "connections": self.connections,
            "connectionsMade": self.connectionsMade,
            # Without --reconnect every connection is made before the run.
            "connectionsPerSecond": (
                round(self.connectionsMade / seconds, 1) if reconnecting and self.seconds else None
            ),
            "connectLatencyMs": percentiles(self.connectLatencies),
            "failedConnections": self.failedConnections,
            "messages": self.messages,
            "seconds": round(self.seconds, 6),
            "messagesPerSecond": round(self.messages / seconds, 1) if self.seconds else 0.0,
            "megabytesPerSecond": round(self.requestBytes / seconds / 1e6, 3) if self.seconds else 0.0,
            "latencyMs": percentiles(self.latencies),
            "errors": self.errors,
            "split": self.split,
            "unanswered": self.unanswered,
        }


#: Failed connections whose reason is kept (the others are only counted).
MAX_FAILURES = 100


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """
    @param histogram: microseconds to count.
    @return: the time in milliseconds that C{fraction} of the counted
        events did not exceed, or L{None} if there is none.
    """
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = math.ceil(fraction * total), 0
    for micros in sorted(histogram):
        seen += histogram[micros]
        if seen >= rank:
            return micros / 1000
    return max(histogram) / 1000


def percentiles(histogram: dict[int, int]) -> dict[str, float | None]:
    """
    @return: the p50, p90, p99 and max of C{histogram} (microseconds to
        count), in milliseconds; L{None} for each if it is empty.
    """
    return {
        "p50": percentile(histogram, 0.50),
        "p90": percentile(histogram, 0.90),
        "p99": percentile(histogram, 0.99),
        "max": max(histogram) / 1000 if histogram else None,
    }


def addHistogram(total: dict[int, int], other: dict[int, int]) -> None:
    """
    Add the counts of histogram C{other} to C{total}'s.
    """
    for micros, count in other.items():
        total[micros] = total.get(micros, 0) + count
