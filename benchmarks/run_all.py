"""
Every benchmark of issue 5 in one run: tcplab (raw; line+SB; length+SB) and
the anchors (Twisted C{wire.Echo}, a C{LineReceiver} echo, an
C{Int32StringReceiver} echo, an asyncio C{Protocol} echo and, when uvloop is
installed, the same on uvloop) under the same loads:

  - ping-pong: 10 connections x 64 B, one message in flight on each;
  - bulk: 100 connections x 1 KiB, one message in flight on each;
  - pipelined: 10 connections x 64 B, 100 messages in flight on each;
  - churn: 50 connections in flight, each of which connects, exchanges one
    64-byte message and closes, to be replaced by a new one: connections/s,
    and the server's CPU time per connection (tcplab also with
    C{logConnections}, as C{--log-connections} runs it: at most 1000
    connections logged a second, and with no such budget);
  - idle: 10,000 connections that exchange one message and stay open:
    server RSS per connection.

C{--servers tcplab-raw,tcplab-raw-metrics} measures tcplab raw without and
with C{--metrics} (scraped 4 times a second all along), side by side, and
ends each table with the ratio of the two (the metrics server is measured
only when named).

Each server runs in its own subprocess (epoll reactor for Twisted) on
127.0.0.1, port 0, pinned to CPU 0; the load generator (C{tcplab.bench},
which checks every reply byte for byte) is pinned to CPU 1.  Each table
ends with the ratio of every tcplab server to every anchor.

Run from the project root::

    .venv/bin/python -m benchmarks.run_all [--duration 3] [--repeat 1] [--idle 10000] [--scenarios churn]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass

from benchmarks.harness import GENERATOR_CPU, SERVER_CPU, Load, bench, machine, rate, ratio, table
from benchmarks.servers import HOST, SERVERS, ServerProcess, raiseFileLimit
from tcplab.framing import encode

OURS = [
    "tcplab-raw",
    "tcplab-line",
    "tcplab-length",
    "tcplab-raw-metrics",
    "tcplab-raw-logged",
    "tcplab-raw-logged-all",
]
ANCHORS = ["wire-echo", "line-receiver", "int32-receiver", "asyncio", "uvloop"]

#: Servers measured only where connections are short (the settings they
#: change cost nothing per message).
CHURN_ONLY = ["tcplab-raw-logged", "tcplab-raw-logged-all"]

#: Servers measured only when C{--servers} names them.
NAMED_ONLY = ["tcplab-raw-metrics"]

#: Each server measured against the same server without one setting.
COMPARED = {"tcplab-raw-metrics": "tcplab-raw"}


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    connections: int
    size: int
    pipeline: int
    reconnect: int | None = None
    bind: str | None = None


#: One source address reaches at most about 14,000 connections a second to
#: one server address (its ephemeral ports are reused only after a second or
#: so in TIME_WAIT): the churn comes from four.
CHURN_SOURCES = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4"

SCENARIOS = [
    Scenario("ping-pong", "ping-pong 10 x 64 B", 10, 64, 1),
    Scenario("bulk", "bulk 100 x 1 KiB", 100, 1024, 1),
    Scenario("pipelined", "pipelined 10 x 64 B x 100 in flight", 10, 64, 100),
    Scenario("churn", "churn 50 in flight: connect, 64 B echo, close", 50, 64, 1, reconnect=1, bind=CHURN_SOURCES),
]


def throughput(names: list[str], scenario: Scenario, duration: float, repeat: int) -> dict[str, dict]:
    """
    @return: the best bench summary of each server under C{scenario}.
    """
    load = Load(scenario.connections, scenario.size, scenario.pipeline, duration, scenario.reconnect, scenario.bind)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    # Round-robin: every server runs once per round, so that the machine's
    # drift over minutes falls on all of them alike rather than on one.
    for _ in range(repeat):
        for name in names:
            with ServerProcess(name, cpu=SERVER_CPU) as server:
                runs[name].append(bench(server, load))
    return {name: max(done, key=lambda summary: summary["messagesPerSecond"]) for name, done in runs.items()}


def idleRss(name: str, connections: int) -> float:
    """
    Open C{connections} connections to a fresh server C{name}, exchange one
    16-byte message on each, and leave them open.

    @return: the growth of the server's RSS per connection, in bytes.
    """
    spec = SERVERS[name]
    request = encode(spec.framing, b"idle connection!")
    reply = encode(spec.framing, b"idle connection!" + spec.suffix)
    with ServerProcess(name, cpu=SERVER_CPU) as server:
        _exchange(server.port, request, reply, 50)  # warm up: imports, first buffers
        time.sleep(0.3)
        before = server.rss()
        sockets = _exchange(server.port, request, reply, connections)
        time.sleep(0.5)
        after = server.rss()
        for sock in sockets:
            sock.close()
    return (after - before) / connections


def _exchange(port: int, request: bytes, reply: bytes, count: int) -> list[socket.socket]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection((HOST, port), timeout=10)
            sockets.append(sock)
            sock.sendall(request)
            got = b""
            while len(got) < len(reply):
                chunk = sock.recv(len(reply) - len(got))
                if not chunk:
                    break
                got += chunk
            if got != reply:
                raise RuntimeError(f"wrong reply on an idle connection: {got!r}")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def ratios(results: dict[str, dict], ours: list[str], anchors: list[str]) -> str:
    """
    @return: a table of the messages/s of each tcplab server over each
        anchor's; nothing when no anchor was measured.
    """
    present = [name for name in anchors if name in results]
    if not present:
        return ""
    rows = [
        [SERVERS[name].label, *(ratio(results[name], results[anchor]) for anchor in present)]
        for name in ours
        if name in results
    ]
    return table(["tcplab / anchor", *(SERVERS[anchor].label for anchor in present)], rows)


def settingRatios(results: dict[str, dict], churn: bool) -> str:
    """
    @return: for each server of L{COMPARED} measured with the one it is
        compared to, a line giving the ratio of their messages/s (of their
        connections/s for C{churn}, and of the server CPU time per
        connection, the other's over this one's: more than 1x is cheaper).
    """
    key = "connectionsPerSecond" if churn else "messagesPerSecond"
    lines = []
    for name, other in COMPARED.items():
        if name in results and other in results:
            line = f"{SERVERS[name].label} / {SERVERS[other].label}: {results[name][key] / results[other][key]:.3f}x {key}"
            if churn:
                cost = results[other]["serverCpuPerConnection"] / results[name]["serverCpuPerConnection"]
                line += f", {cost:.3f}x server CPU per connection (without's / with's)"
            lines.append(line)
    return "\n".join(lines)


def churnTables(results: dict[str, dict], ours: list[str], anchors: list[str]) -> str:
    """
    @return: the connection rate, latencies and server CPU of each server,
        and the ratios of each tcplab server to each anchor: of connections/s,
        and of the server CPU time one connection costs (the anchor's over
        tcplab's, so that more than 1x is better for tcplab too), which is
        what to compare where the generator, not the server, was the limit.
    """
    rows = [
        [
            SERVERS[name].label,
            f"{summary['connectionsPerSecond']:,.0f}",
            f"{summary['latencyMs']['p50']:.3f}",
            f"{summary['latencyMs']['p99']:.3f}",
            f"{summary['connectLatencyMs']['p50']:.3f}",
            f"{summary['connectLatencyMs']['p99']:.3f}",
            f"{summary['serverCpu']:.0%}",
            f"{summary['serverCpuPerConnection'] * 1e6:.0f}",
        ]
        for name, summary in results.items()
    ]
    headers = ["server", "conn/s", "p50 ms", "p99 ms", "connect p50 ms", "connect p99 ms", "server CPU", "server us/conn"]
    present = [name for name in anchors if name in results]
    cost = [
        [
            SERVERS[name].label,
            *(
                f"{results[anchor]['serverCpuPerConnection'] / results[name]['serverCpuPerConnection']:.2f}x"
                for anchor in present
            ),
        ]
        for name in ours
        if name in results
    ]
    if not present:
        return table(headers, rows)
    return "\n\n".join(
        [
            table(headers, rows),
            "connections/s:\n\n" + ratios(results, ours, anchors),
            "server CPU per connection (anchor's / tcplab's):\n\n"
            + table(["tcplab / anchor", *(SERVERS[anchor].label for anchor in present)], cost),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per case [3]")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case; the best counts [1]")
    parser.add_argument(
        "--idle", type=int, default=10000, help="connections of the idle scenario; 0 skips it [10000]"
    )
    parser.add_argument("--servers", default=None, help="comma-separated server names [all available]")
    parser.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated scenarios, of {', '.join(s.key for s in SCENARIOS)} [all]; idle is --idle",
    )
    args = parser.parse_args(argv)
    scenarios = SCENARIOS
    if args.scenarios:
        wanted = args.scenarios.split(",")
        unknown = sorted(set(wanted) - {scenario.key for scenario in SCENARIOS})
        if unknown:
            parser.error(f"unknown scenario {unknown[0]!r}")
        scenarios = [scenario for scenario in SCENARIOS if scenario.key in wanted]
    names = [name for name, server in SERVERS.items() if server.available()]
    if args.servers:
        names = [name for name in args.servers.split(",") if name in names]
    else:
        names = [name for name in names if name not in NAMED_ONLY]
    missing = sorted(set(SERVERS) - set(names))

    info = machine()
    print(
        f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, Twisted {info['twisted']}, "
        f"Linux {info['kernel']}; servers on CPU {SERVER_CPU}, generator on CPU {GENERATOR_CPU}, "
        f"{args.duration:g} s per case, best of {args.repeat}"
    )
    if missing:
        print(f"not measured: {', '.join(missing)}")
    try:
        for scenario in scenarios:
            measured = [name for name in names if scenario.reconnect or name not in CHURN_ONLY]
            results = throughput(measured, scenario, args.duration, args.repeat)
            print(f"\n## {scenario.name}\n")
            compared = settingRatios(results, churn=bool(scenario.reconnect))
            if scenario.reconnect:
                print(churnTables(results, OURS, ANCHORS))
                if compared:
                    print(f"\n{compared}")
                continue
            rows = [
                [
                    SERVERS[name].label,
                    rate(summary),
                    f"{summary['megabytesPerSecond']:,.1f}",
                    f"{summary['latencyMs']['p50']:.3f}",
                    f"{summary['latencyMs']['p99']:.3f}",
                    f"{summary['serverCpu']:.0%}",
                ]
                for name, summary in results.items()
            ]
            print(table(["server", "msg/s", "MB/s", "p50 ms", "p99 ms", "server CPU"], rows))
            anchored = ratios(results, OURS, ANCHORS)
            if anchored:
                print(f"\n{anchored}")
            if compared:
                print(f"\n{compared}")
        if args.idle:
            # The generator's own sockets and the server's both need descriptors.
            limit = raiseFileLimit(args.idle + 100)
            if limit < args.idle + 100:
                print(f"\nidle scenario skipped: the open-file limit is {limit}")
                return 0
            if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
                os.sched_setaffinity(0, {GENERATOR_CPU})
            print(f"\n## idle: {args.idle:,} connections, server RSS per connection\n")
            perConnection = {name: idleRss(name, args.idle) for name in names if name not in CHURN_ONLY}
            wire = perConnection.get("wire-echo")
            rows = [
                [
                    SERVERS[name].label,
                    f"{size / 1024:.2f}",
                    f"{size / wire:.2f}x" if wire else "-",
                ]
                for name, size in perConnection.items()
            ]
            print(table(["server", "KiB per connection", "vs wire.Echo"], rows))
    except (RuntimeError, OSError) as error:
        print(f"run_all: {error}", file=sys.stderr)
        return 1
    print("\nevery reply was checked byte for byte by the generator: 0 wrong, 0 unanswered, 0 failed connections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
