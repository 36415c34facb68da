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
    """

    connections: int = 0
    failedConnections: int = 0
    messages: int = 0
    requestBytes: int = 0
    errors: int = 0
    split: int = 0
    unanswered: int = 0
    seconds: float = 0.0
    latencies: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def merge(self, other: BenchResult) -> None:
        """
        Add the counts of C{other}, measured at the same time by another process.
        """
        self.connections += other.connections
        self.failedConnections += other.failedConnections
        self.messages += other.messages
        self.requestBytes += other.requestBytes
        self.errors += other.errors
        self.split += other.split
        self.unanswered += other.unanswered
        self.seconds = max(self.seconds, other.seconds)
        for micros, count in other.latencies.items():
            self.latencies[micros] = self.latencies.get(micros, 0) + count
        self.failures.extend(other.failures)

    def percentile(self, fraction: float) -> float | None:
        """
        @return: the round-trip time in milliseconds that C{fraction} of the
            answered messages did not exceed, or L{None} if none was answered.
        """
        total = sum(self.latencies.values())
        if not total:
            return None
        rank, seen = math.ceil(fraction * total), 0
        for micros in sorted(self.latencies):
            seen += self.latencies[micros]
            if seen >= rank:
                return micros / 1000
        return max(self.latencies) / 1000

    def summary(self, plan: LoadPlan) -> dict[str, Any]:
        """
        @return: the JSON-ready summary of the run.
        """
        seconds = self.seconds or float("nan")
        return {
            "framing": plan.framing,
            "size": plan.size,
            "suffix": plan.suffix.decode("utf-8", "replace"),
            "pipeline": plan.pipeline,
            "connections": self.connections,
            "failedConnections": self.failedConnections,
            "messages": self.messages,
            "seconds": round(self.seconds, 6),
            "messagesPerSecond": round(self.messages / seconds, 1) if self.seconds else 0.0,
            "megabytesPerSecond": round(self.requestBytes / seconds / 1e6, 3) if self.seconds else 0.0,
            "latencyMs": {
                "p50": self.percentile(0.50),
                "p90": self.percentile(0.90),
                "p99": self.percentile(0.99),
                "max": max(self.latencies) / 1000 if self.latencies else None,
            },
            "errors": self.errors,
            "split": self.split,
            "unanswered": self.unanswered,
        }
