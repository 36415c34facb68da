"""
What C{twist tcplab --workers N} costs and how evenly it spreads connections,
measured as honestly as a 2-CPU machine allows (docs/performance.md):

  1. balance: 400 connections to C{--workers 2}, counted per worker from the
     stop summary, with one C{SO_REUSEPORT} socket per worker (C{tcp:}) and
     with one socket shared by the workers (C{systemd:}, the socket passed by
     C{systemd-socket-activate}), connections made one at a time and 400 at
     once;
  2. echo on one connection with 1 and 2 workers (C{tcplab bench}, line
     framing, 1000 messages in flight): the per-message path is the same
     code, and the supervisor's CPU stays near zero;
  3. connection churn (connect, one echo, close, one at a time) with 1 and 2
     workers: server CPU per connection, the supervisor's share (it logs
     each worker's events) and the shared connection counts' share;
  4. the shared connection counts alone, in process: one connect and one
     close counted (C{ConnectionTable.acquire} + C{release}).

For 2 to 4 the servers run pinned to CPU 0 (all workers on it: this
measures cost, not scaling), load generators to CPU 1; for 1 nothing is
pinned, so that each worker may run on a CPU of its own, as in use.  Run from the project root::

    .venv/bin/python -m benchmarks.workers [--runs 5] [--duration 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from benchmarks.harness import GENERATOR_CPU, SERVER_CPU, machine, table
from benchmarks.servers import pinned

_PORT = re.compile(r"tcplab listening on 127\.0\.0\.1:(\d+) \(")
_BY_WORKER = re.compile(r"served by worker: ([\d,]+(?: / [\d,]+)*)")

#: The churn client: connect, echo, close, one at a time, for argv[2] seconds.
_CHURN = """
import socket, sys, time
port, duration = int(sys.argv[1]), float(sys.argv[2])
count, deadline = 0, time.monotonic() + duration
while time.monotonic() < deadline:
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"hi\\n")
        client.recv(100)
    count += 1
print(count)
"""


def environment() -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


class Server:
    """
    C{twist tcplab ARGS} (under C{prefix}, e.g. systemd-socket-activate),
    pinned to L{SERVER_CPU}; its log kept.
    """

    def __init__(
        self, *args: str, prefix: list[str] | None = None, port: int | None = None, cpu: int | None = SERVER_CPU
    ) -> None:
        command = pinned([*(prefix or []), sys.executable, "-m", "twisted", "--log-format=text", "tcplab", *args], cpu)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment())
        self.lines: list[str] = []
        self.port = port
        # Read the log all along: a full pipe would block the server.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not self._started():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("server did not start:\n" + self.log())
            if port is not None and prefix:
                # Socket activation: the server starts on the first connection.
                _echo(port)
            time.sleep(0.05)

    def _started(self) -> bool:
        text = self.log()
        single = "--workers 1 " in " ".join(map(str, self.process.args)) + " "
        if "tcplab workers:" in text or (single and "tcplab listening on" in text):
            if self.port is None:
                self.port = int(_PORT.search(text).group(1))  # type: ignore[union-attr]
            return True
        return False

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def pids(self) -> tuple[int, list[int]]:
        """
        @return: the pid of the process that supervises (or serves alone),
            and its workers'.
        """
        top = self.process.pid  # taskset and systemd-socket-activate exec what they run.
        with open(f"/proc/{top}/task/{top}/children") as children:
            return top, [int(pid) for pid in children.read().split()]

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        return self.log()


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _echo(port: int) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"hi\n")
            client.recv(100)
    except OSError:
        pass


def balance(mechanism: str, pattern: str, connections: int = 400) -> list[int]:
    """
    @return: the connections each of 2 workers served, out of C{connections}.
    """
    if mechanism == "reuseport":
        # Not pinned: each worker may run on its own CPU, as in use.
        server = Server("--workers", "2", "-l", "tcp:0:interface=127.0.0.1", cpu=None)
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        activate = shutil.which("systemd-socket-activate")
        if activate is None:
            raise RuntimeError("systemd-socket-activate is needed for the shared-socket case")
        prefix = [activate, "-l", f"127.0.0.1:{port}", "--fdname=echo"]
        server = Server("--workers", "2", "-l", "systemd:domain=INET:name=echo", prefix=prefix, port=port, cpu=None)
    assert server.port is not None
    made = 0
    if mechanism == "shared":
        made = 1  # The activating connection.
    if pattern == "one at a time":
        for _ in range(connections - made):
            _echo(server.port)
    else:
        clients = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(connections - made)]
        for client in clients:
            client.sendall(b"hi\n")
        for client in clients:
            client.recv(100)
            client.close()
    log = server.stop()
    [counts] = _BY_WORKER.findall(log)
    return [int(count.replace(",", "")) for count in counts.split(" / ")]


def echoOnOneConnection(workers: int, duration: float) -> dict[str, Any]:
    """
    @return: C{tcplab bench} on one connection against C{--workers workers},
        with the CPU the serving processes and the supervisor used.
    """
    server = Server("--framing", "line", "--workers", str(workers), "-l", "tcp:0:interface=127.0.0.1")
    top, children = server.pids()
    before = {pid: cpuSeconds(pid) for pid in [top, *children]}
    command = pinned(
        [sys.executable, "-m", "tcplab.bench", "--json", "--spin", "--framing", "line", "-c", "1", "-k", "1000",
         "-s", "64", "-d", str(duration), "127.0.0.1", str(server.port)],
        GENERATOR_CPU,
    )
    done = subprocess.run(command, capture_output=True, text=True, env=environment())
    used = {pid: cpuSeconds(pid) - before[pid] for pid in before}
    server.stop()
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = summary["seconds"]
    serving = max(used[pid] for pid in (children or [top]))
    return {
        "rate": summary["messagesPerSecond"],
        "serving": serving / seconds,
        "perMessage": serving / max(summary["messagesPerSecond"] * seconds, 1) * 1e9,
        "supervisor": used[top] / seconds if children else None,
    }


def churn(workers: int, duration: float) -> dict[str, Any]:
    """
    @return: connections a second, made one at a time against C{--workers
        workers}, and the server's CPU per connection.
    """
    server = Server("--framing", "line", "--workers", str(workers), "-l", "tcp:0:interface=127.0.0.1")
    top, children = server.pids()
    before = {pid: cpuSeconds(pid) for pid in [top, *children]}
    command = pinned([sys.executable, "-c", _CHURN, str(server.port), str(duration)], GENERATOR_CPU)
    done = subprocess.run(command, capture_output=True, text=True)
    used = {pid: cpuSeconds(pid) - before[pid] for pid in before}
    server.stop()
    count = int(done.stdout.strip())
    return {
        "rate": count / duration,
        "perConnection": sum(used.values()) / count * 1e6,
        "supervisor": used[top] / count * 1e6 if children else None,
    }


def sharedCounts(rounds: int = 20000) -> dict[str, float]:
    """
    @return: microseconds to count one connection in and out of a shared
        L{ConnectionTable}, with C{--max-connections} only and with
        C{--max-per-peer} too.
    """
    from tcplab.workers.limits import ConnectionTable

    result = {}
    for label, perPeer in (("max-connections", 0), ("max-connections + max-per-peer", 4)):
        table = ConnectionTable.create(2, 1000, perPeer)
        hosts = [f"10.0.{n // 256}.{n % 256}" for n in range(500)]
        started = time.perf_counter()
        for n in range(rounds):
            host = hosts[n % len(hosts)]
            table.acquire(n % 2, host)
            table.release(n % 2, host)
        result[label] = (time.perf_counter() - started) / rounds * 1e6
        table.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="balance runs per case [5]")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per echo or churn run [3]")
    parser.add_argument("--repeat", type=int, default=3, help="echo and churn runs per case; the best counts [3]")
    args = parser.parse_args(argv)
    info = machine()
    print(f"{info['cpus']} CPUs ({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, Twisted {info['twisted']}")

    rows = []
    for mechanism in ("reuseport", "shared"):
        for pattern in ("one at a time", "400 at once"):
            runs = [balance(mechanism, pattern) for _ in range(args.runs)]
            shares = [min(run) / sum(run) for run in runs]
            label = "SO_REUSEPORT, one socket per worker" if mechanism == "reuseport" else "one shared socket (systemd:)"
            rows.append([label, pattern, ", ".join(" / ".join(map(str, run)) for run in runs), f"{min(shares):.0%}"])
    print("\nBalance: 400 connections over 2 workers (served by each, per run)")
    print(table(["listener", "connections", "per worker, each run", "smallest share"], rows))

    rows = []
    for workers in (1, 2):
        result = max((echoOnOneConnection(workers, args.duration) for _ in range(args.repeat)), key=lambda r: r["rate"])
        supervisor = "-" if result["supervisor"] is None else f"{result['supervisor']:.1%}"
        rows.append(
            [workers, f"{result['rate']:,.0f}", f"{result['serving']:.0%}", f"{result['perMessage']:.0f}", supervisor]
        )
    print("\nEcho on one connection: line framing, 64-byte messages, 1000 in flight")
    print(table(["--workers", "messages/s", "CPU of the serving process", "its CPU ns per message", "CPU of the supervisor"], rows))

    rows = []
    for workers in (1, 2):
        result = max((churn(workers, args.duration) for _ in range(args.repeat)), key=lambda r: r["rate"])
        supervisor = "-" if result["supervisor"] is None else f"{result['supervisor']:.0f}"
        rows.append([workers, f"{result['rate']:,.0f}", f"{result['perConnection']:.0f}", supervisor])
    print("\nConnection churn: connect, one line echoed, close; one connection at a time")
    print(table(["--workers", "connections/s", "server CPU per connection (µs, all processes)", "of which the supervisor (µs)"], rows))

    counts = sharedCounts()
    print("\nShared connection counts, in process: one connection counted in and out")
    print(table(["limits", "µs per connection"], [[label, f"{value:.1f}"] for label, value in counts.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
