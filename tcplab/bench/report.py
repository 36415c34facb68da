"""
What C{tcplab bench} prints: the summary, the problem line, and the live
progress bar on a terminal.
"""

from __future__ import annotations

import time
from typing import IO, Any

from tcplab.bench.result import BenchResult
from tcplab.text import plural


def formatSummary(summary: dict[str, Any]) -> str:
    """
    @return: the human-readable summary of a run, several lines.
    """

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} ms"

    def percentiles(latency: dict[str, float | None]) -> str:
        return f"p50 {ms(latency['p50'])}  p90 {ms(latency['p90'])}  p99 {ms(latency['p99'])}  max {ms(latency['max'])}"

    reconnect = summary["reconnect"]
    return "\n".join(
        [
            f"load          {plural(summary['connections'], 'connection')} x {summary['pipeline']:,} "
            f"in flight, {summary['size']:,}-byte {summary['framing']} messages"
            + (f", suffix {summary['suffix']!r}" if summary["suffix"] else "")
            + (f", each connection closed after {plural(reconnect, 'message')}" if reconnect else ""),
            f"messages      {summary['messages']:,} in {summary['seconds']:.2f} s",
            f"throughput    {summary['messagesPerSecond']:,.0f} messages/s, "
            f"{summary['megabytesPerSecond']:,.2f} MB/s"
            + (" (counted from bytes: with wrong replies, not meaningful)" if summary["errors"] else ""),
            f"latency       {percentiles(summary['latencyMs'])}",
            f"errors        {plural(summary['errors'], 'wrong reply', 'wrong replies')}, "
            + (
                f"{plural(summary['split'], 'split reply', 'split replies')}, "
                if summary["framing"] == "raw" and summary["suffix"]
                else ""
            )
            + f"{summary['unanswered']:,} unanswered",
            f"connections   {summary['connectionsMade']:,} made"
            + (f" ({summary['connectionsPerSecond']:,.0f}/s)" if reconnect else "")
            + f", {summary['failedConnections']:,} failed",
            f"connect       {percentiles(summary['connectLatencyMs'])}",
        ]
    )


def formatProblems(result: BenchResult) -> str | None:
    """
    @return: what went wrong in a run, in one line, or L{None} if every
        connection was made and every reply was right.
    """
    problems = []
    if result.errors:
        problems.append(
            f"{plural(result.errors, 'wrong reply', 'wrong replies')} (do --framing and --suffix match the server's?)"
        )
    if result.split:
        problems.append(
            f"{plural(result.split, 'split reply', 'split replies')} (the server read a message in "
            "pieces and suffixed each: raw framing does not keep messages whole)"
        )
    if result.unanswered:
        problems.append(plural(result.unanswered, "unanswered message"))
    if result.failedConnections:
        problems.append(f"{plural(result.failedConnections, 'failed connection')} ({result.failures[0]})")
    return "; ".join(problems) if problems else None


class ProgressBar:
    """
    A live progress bar on a terminal (rich), or nothing at all.
    """

    def __init__(self, stream: IO[str], total: float, unit: str) -> None:
        self._progress: Any = None
        if not stream.isatty():
            return
        # Imported here: only a run on a terminal needs it.
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("bench"),
            BarColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self._task = self._progress.add_task("bench", total=total, rate="")
        self._unit = unit
        self._started = time.monotonic()

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, answered: int) -> None:
        if self._progress is None:
            return
        elapsed = time.monotonic() - self._started
        done = elapsed if self._unit == "seconds" else answered
        rate = f"{answered / elapsed:,.0f} msg/s" if elapsed > 0 else ""
        self._progress.update(self._task, completed=done, rate=rate)
