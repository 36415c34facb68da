"""
tcplab against the Twisted idioms it replaces, in one run on this machine:

  1. tcplab raw (C{EchoServerFactory()}) against C{twisted.protocols.wire.Echo};
  2. tcplab line framing with suffix C{SB} against a C{LineReceiver} echo
     (C{\\n} delimiter, C{sendLine(line + b"SB")}), 64-byte lines pipelined.

Each server runs in its own subprocess with the epoll reactor on 127.0.0.1,
port 0, pinned to CPU 0; the load generator (C{tcplab.bench}, which checks
every reply byte for byte) runs in another process pinned to CPU 1.

Run from the project root::

    .venv/bin/python -m benchmarks.compare_twisted [--duration 3] [--repeat 3] [--pipeline 1000]
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.harness import SERVER_CPU, Load, bench, machine, rate, ratio, table
from benchmarks.servers import ServerProcess

#: (tcplab server, Twisted server, target ratio)
PAIRS = [
    ("tcplab-raw", "wire-echo", 1.0),
    ("tcplab-line", "line-receiver", 5.0),
]


def best(name: str, load: Load, repeat: int) -> dict:
    """
    @return: the bench summary of the best of C{repeat} runs against a fresh
        server C{name}.
    """
    runs = []
    for _ in range(repeat):
        with ServerProcess(name, cpu=SERVER_CPU) as server:
            runs.append(bench(server, load))
    return max(runs, key=lambda summary: summary["messagesPerSecond"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per case [3]")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best counts [3]")
    parser.add_argument("--connections", type=int, default=10, help="connections [10]")
    parser.add_argument("--pipeline", type=int, default=1000, help="messages in flight per connection [1000]")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes [64]")
    args = parser.parse_args(argv)
    load = Load(args.connections, args.size, args.pipeline, args.duration)

    info = machine()
    print(
        f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, Twisted {info['twisted']}; "
        f"{load.connections} connections x {load.pipeline} in flight x {load.size}-byte messages, "
        f"{load.duration:g} s per case"
    )
    rows, failed = [], False
    for ours, theirs, target in PAIRS:
        try:
            mine, anchor = best(ours, load, args.repeat), best(theirs, load, args.repeat)
        except RuntimeError as error:
            print(f"compare_twisted: {error}", file=sys.stderr)
            return 1
        measured = mine["messagesPerSecond"] / max(anchor["messagesPerSecond"], 1e-9)
        met = measured >= target
        failed = failed or not met
        rows.append(
            [
                f"{ServerProcess(ours).server.label} vs {ServerProcess(theirs).server.label}",
                rate(mine),
                rate(anchor),
                ratio(mine, anchor),
                f">= {target:g}x {'met' if met else 'MISSED'}",
                f"{mine['serverCpu']:.0%} / {anchor['serverCpu']:.0%}",
            ]
        )
    print(
        table(
            ["case", "tcplab msg/s", "Twisted msg/s", "ratio", "target", "server CPU (tcplab / Twisted)"],
            rows,
        )
    )
    print("every reply was checked byte for byte by the generator: 0 wrong, 0 unanswered")
    return 0


if __name__ == "__main__":
    sys.exit(main())
