"""
What the benchmark scripts share besides the servers: running the load
generator (C{python -m tcplab.bench}) pinned to its own CPU against a
L{benchmarks.servers.ServerProcess}, describing the machine, and printing
tables.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.servers import HOST, ServerProcess, pinned

#: The CPU the servers run on, and the one the load generator runs on.
SERVER_CPU = 0
GENERATOR_CPU = 1


@dataclass(frozen=True)
class Load:
    """
    One load to apply: C{connections} x C{pipeline} messages of C{size}
    bytes in flight, for C{duration} seconds; with C{reconnect}, each
    connection is closed after that many messages and replaced.
    """

    connections: int
    size: int
    pipeline: int
    duration: float
    reconnect: int | None = None
    #: Local addresses to connect from, comma-separated (tcplab bench --bind).
    bind: str | None = None


def bench(server: ServerProcess, load: Load, processes: int = 1) -> dict[str, Any]:
    """
    Apply C{load} to C{server} from a separate process (pinned to
    L{GENERATOR_CPU}) that checks every reply.

    @return: the generator's JSON summary.
    @raise RuntimeError: if the generator fails or sees a wrong reply.
    """
    spec = server.server
    command = [
        sys.executable,
        "-m",
        "tcplab.bench",
        "--json",
        "--spin",
        f"--framing={spec.framing}",
        f"--suffix={spec.suffix.decode()}",
        f"--connections={load.connections}",
        f"--size={load.size}",
        f"--pipeline={load.pipeline}",
        f"--duration={load.duration}",
        f"--processes={processes}",
        *([f"--reconnect={load.reconnect}"] if load.reconnect else []),
        *([f"--bind={load.bind}"] if load.bind else []),
        HOST,
        str(server.port),
    ]
    cpu = None if processes > 1 else GENERATOR_CPU
    serverBefore = server.cpuSeconds()
    done = subprocess.run(pinned(command, cpu), capture_output=True, text=True)
    serverCpu = server.cpuSeconds() - serverBefore
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"bench of {spec.name} failed: {done.stderr.strip() or done.stdout.strip()}")
    summary = json.loads(lines[-1])
    # CPU use over the measured load: a server well under 100% was not the limit.
    summary["serverCpu"] = serverCpu / max(summary["seconds"], 1e-9)
    # ... and per connection made, what the server spent on each.
    summary["serverCpuPerConnection"] = serverCpu / max(summary["connectionsMade"], 1)
    return summary


def machine() -> dict[str, str]:
    """
    @return: what the figures were measured on.
    """
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import twisted

    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "kernel": platform.release(),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """
    @return: a Markdown table, columns padded to line up in a terminal.
    """
    cells = [[str(cell) for cell in headers]] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def rate(summary: dict[str, Any]) -> str:
    """
    @return: the messages/s of a bench summary, with thousands separators.
    """
    return f"{summary['messagesPerSecond']:,.0f}"


def ratio(numerator: dict[str, Any], denominator: dict[str, Any]) -> str:
    """
    @return: the ratio of two bench summaries' messages/s, e.g. C{"5.12x"}.
    """
    return f"{numerator['messagesPerSecond'] / max(denominator['messagesPerSecond'], 1e-9):.2f}x"
