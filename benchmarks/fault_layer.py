"""
What fault injection costs when it is off: C{twist tcplab} of this tree with
no fault set, against C{twist tcplab} of another revision (before faults
existed), and with the fault layer in place but never firing
(C{--close-after} of a million million replies).

Each server is C{python -m twisted tcplab} in its own subprocess, pinned to
CPU 0, on 127.0.0.1 port 0; the load generator (C{tcplab.bench}, which checks
every reply byte for byte) runs pinned to CPU 1.  Cases go round-robin, each
run against a fresh server; the best of C{--repeat} runs counts.

Run from the project root::

    .venv/bin/python -m benchmarks.fault_layer --baseline b157748 [--duration 3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import SERVER_CPU, Load, bench, machine, rate, table
from benchmarks.servers import pinned

ROOT = Path(__file__).resolve().parent.parent

#: A fault layer that is in place on every connection and never fires.
INERT_FAULT = ["--close-after", str(10**12)]

LOADS = {
    "ping-pong 10 x 64 B": Load(10, 64, 1, 3.0),
    "pipelined 10 x 64 B x 100": Load(10, 64, 100, 3.0),
}


@dataclass(frozen=True)
class _Spec:
    name: str
    framing: str = "raw"
    suffix: bytes = b""


class TwistServer:
    """
    C{twist tcplab ARGS} from the source tree C{tree}, pinned to C{cpu}, as
    L{benchmarks.harness.bench} wants a server: C{server}, C{port},
    C{cpuSeconds()}.
    """

    def __init__(self, name: str, tree: Path, arguments: list[str], cpu: int = SERVER_CPU) -> None:
        self.server = _Spec(name)
        env = dict(os.environ, PYTHONPATH=str(tree))
        command = [sys.executable, "-m", "twisted", "--log-format=text", "tcplab", "-l", "tcp:0:interface=127.0.0.1"]
        self._process = subprocess.Popen(
            pinned([*command, *arguments], cpu), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env, cwd=tree,
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            match = re.search(r"tcplab listening on \S+:(\d+) \(", line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError(f"{name} did not start")
        # The log is not read any more: send it nowhere so the pipe never fills.
        self._drain = subprocess.Popen(["cat"], stdin=self._process.stdout, stdout=subprocess.DEVNULL)

    def cpuSeconds(self) -> float:
        with open(f"/proc/{self._process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> TwistServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._drain.wait(5)


def checkout(revision: str, destination: Path) -> Path:
    """
    Extract C{revision} of this repository into C{destination}.
    """
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision], capture_output=True, check=True
    ).stdout
    destination.mkdir(parents=True)
    archivePath = destination.with_suffix(".tar")
    archivePath.write_bytes(archive)
    with tarfile.open(archivePath) as tar:
        tar.extractall(destination, filter="data")
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the git revision to compare with (before faults)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run [3]")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best counts [3]")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tcplab-baseline-") as work:
        baseline = checkout(args.baseline, Path(work) / "tree")
        cases = [
            (f"{args.baseline} (no fault layer)", baseline, []),
            ("this tree, no fault set", ROOT, []),
            ("this tree, inert fault layer", ROOT, INERT_FAULT),
        ]
        info = machine()
        print(f"{info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, Twisted {info['twisted']}")
        for title, load in LOADS.items():
            load = Load(load.connections, load.size, load.pipeline, args.duration)
            runs: dict[str, list[dict]] = {name: [] for name, _, _ in cases}
            for _ in range(args.repeat):
                for name, tree, arguments in cases:
                    with TwistServer(name, tree, arguments) as server:
                        runs[name].append(bench(server, load))  # type: ignore[arg-type]
            rows = []
            for name, _, _ in cases:
                best = max(runs[name], key=lambda summary: summary["messagesPerSecond"])
                rates = [summary["messagesPerSecond"] for summary in runs[name]]
                every = ", ".join(f"{value:,.0f}" for value in rates)
                # Per CPU-second of the server: less sensitive to a machine
                # whose other work takes CPU from the server.
                perCpu = max(summary["messagesPerSecond"] / max(summary["serverCpu"], 1e-9) for summary in runs[name])
                rows.append(
                    [name, rate(best), f"{statistics.median(rates):,.0f}", every, f"{best['serverCpu']:.0%}", f"{perCpu:,.0f}"]
                )
            print(f"\n### {title}\n")
            print(table(["server", "best msg/s", "median", "every run", "server CPU", "best msg per server CPU-s"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
