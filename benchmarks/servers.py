"""
The echo servers the benchmarks measure: tcplab in each framing and the
anchors a user would pick instead.  Every benchmark script takes its servers
from here.

Run one in the foreground with C{python -m benchmarks.servers NAME}: it
listens on 127.0.0.1, port 0, prints the port on one line and serves until
it is terminated.  L{ServerProcess} does that in a subprocess pinned to one
CPU.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

HOST = "127.0.0.1"

#: What the line and length servers append to every reply.
SUFFIX = b"SB"


@dataclass(frozen=True)
class Server:
    """
    One echo server: how to load it (framing and suffix of its replies) and
    how to run it.

    @ivar run: listens on C{HOST}, port 0, calls its argument with the port,
        then serves forever.
    """

    name: str
    label: str
    framing: str
    suffix: bytes
    run: Callable[[Callable[[int], None]], None]
    available: Callable[[], bool] = lambda: True


def _runTwisted(makeFactory: Callable[[], object], metrics: bool = False) -> Callable[[Callable[[int], None]], None]:
    """
    @param metrics: also serve C{/metrics} and C{/healthz} as C{twist
        tcplab --metrics} does (the factory's L{EchoCollector}, on a port
        of its own), scraped L{SCRAPES_PER_SECOND} times a second all along
        by another process (L{benchmarks.scraper}).
    """

    def run(ready: Callable[[int], None]) -> None:
        from twisted.internet import epollreactor

        epollreactor.install()
        from twisted.internet import reactor

        _logAsTwistDoes()

        factory = makeFactory()
        port = reactor.listenTCP(0, factory, backlog=1024, interface=HOST)
        if metrics:
            from benchmarks.harness import GENERATOR_CPU
            from tcplab.metrics import EchoCollector, Health, MetricsResource, metricsSite

            site = metricsSite(MetricsResource(EchoCollector(factory)), Health())  # type: ignore[arg-type]
            metricsPort = reactor.listenTCP(0, site, interface=HOST).getHost().port
            scraper = subprocess.Popen(
                pinned(
                    [sys.executable, "-m", "benchmarks.scraper", str(metricsPort), str(SCRAPES_PER_SECOND)],
                    GENERATOR_CPU,
                )
            )
            reactor.addSystemEventTrigger("before", "shutdown", scraper.terminate)
        ready(port.getHost().port)
        reactor.run()

    return run


#: How often the metrics servers are scraped while they are measured.
SCRAPES_PER_SECOND = 4


def _logAsTwistDoes() -> None:
    # Every Twisted server logs as `twist` does when its output is not a
    # terminal: JSON lines at level info and above, here to a temporary file
    # (removed when the server exits).  Without an observer, Twisted would
    # keep the events in memory instead.
    import tempfile

    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        jsonFileLogObserver,
    )

    logFile = tempfile.TemporaryFile("w", encoding="utf-8")
    observer = FilteringLogObserver(
        jsonFileLogObserver(logFile), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _tcplab(framing: str, suffix: bytes, **settings: object) -> Callable[[], object]:
    def makeFactory() -> object:
        import inspect

        from tcplab.server import EchoServerFactory

        # The idle scenario holds 10,000 connections: lift the server's
        # connection limit, where it has one; every other setting is the
        # default, unless named in settings.
        options = {"maxConnections": 0, **settings}
        accepted = inspect.signature(EchoServerFactory).parameters
        return EchoServerFactory(
            framing=framing, suffix=suffix, **{k: v for k, v in options.items() if k in accepted}
        )

    return makeFactory


def _wireEcho() -> object:
    from twisted.internet.protocol import Factory
    from twisted.protocols.wire import Echo

    return Factory.forProtocol(Echo)


def _lineReceiverEcho() -> object:
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    class LineEcho(LineReceiver):
        """
        The textbook line echo: one C{lineReceived} and one C{sendLine} per line.
        """

        delimiter = b"\n"
        MAX_LENGTH = 65536

        def lineReceived(self, line: bytes) -> None:
            self.sendLine(line + SUFFIX)

    return Factory.forProtocol(LineEcho)


def _int32Echo() -> object:
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import Int32StringReceiver

    class Int32Echo(Int32StringReceiver):
        """
        The textbook length-prefixed echo: one C{sendString} per frame.
        """

        MAX_LENGTH = 65536

        def stringReceived(self, string: bytes) -> None:
            self.sendString(string + SUFFIX)

    return Factory.forProtocol(Int32Echo)


class _AsyncioEcho(asyncio.Protocol):
    """
    The asyncio documentation's echo server protocol.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def _runAsyncio(useUvloop: bool) -> Callable[[Callable[[int], None]], None]:
    def run(ready: Callable[[int], None]) -> None:
        async def serve() -> None:
            server = await asyncio.get_running_loop().create_server(_AsyncioEcho, HOST, 0, backlog=1024)
            ready(server.sockets[0].getsockname()[1])
            await server.serve_forever()

        if useUvloop:
            import uvloop

            uvloop.run(serve())
        else:
            asyncio.run(serve())

    return run


def _hasUvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


SERVERS: dict[str, Server] = {
    server.name: server
    for server in [
        Server("tcplab-raw", "tcplab raw", "raw", b"", _runTwisted(_tcplab("raw", b""))),
        Server("tcplab-line", "tcplab line+SB", "line", SUFFIX, _runTwisted(_tcplab("line", SUFFIX))),
        Server("tcplab-length", "tcplab length+SB", "length", SUFFIX, _runTwisted(_tcplab("length", SUFFIX))),
        Server(
            "tcplab-raw-metrics",
            "tcplab raw --metrics",
            "raw",
            b"",
            _runTwisted(_tcplab("raw", b""), metrics=True),
        ),
        Server(
            "tcplab-raw-logged",
            "tcplab raw --log-connections",
            "raw",
            b"",
            _runTwisted(_tcplab("raw", b"", logConnections=True)),
        ),
        Server(
            "tcplab-raw-logged-all",
            "tcplab raw --log-connections-per-second 0",
            "raw",
            b"",
            _runTwisted(_tcplab("raw", b"", logConnections=True, logConnectionsPerSecond=0)),
        ),
        Server("wire-echo", "wire.Echo", "raw", b"", _runTwisted(_wireEcho)),
        Server("line-receiver", "LineReceiver+SB", "line", SUFFIX, _runTwisted(_lineReceiverEcho)),
        Server("int32-receiver", "Int32StringReceiver+SB", "length", SUFFIX, _runTwisted(_int32Echo)),
        Server("asyncio", "asyncio Protocol", "raw", b"", _runAsyncio(False)),
        Server("uvloop", "uvloop Protocol", "raw", b"", _runAsyncio(True), _hasUvloop),
    ]
}


def raiseFileLimit(wanted: int) -> int:
    """
    Raise this process's soft limit of open files towards C{wanted}, within
    the hard limit.

    @return: the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def pinned(command: list[str], cpu: int | None) -> list[str]:
    """
    @return: C{command} run by C{taskset} on C{cpu}, when there is a C{cpu},
        C{taskset} exists and the machine has more than one CPU.
    """
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return command
    return ["taskset", "-c", str(cpu), *command]


class ServerProcess:
    """
    One of L{SERVERS} running in its own subprocess, pinned to C{cpu}.

    Use as a context manager: it is listening on entry (L{port}), and
    terminated on exit.
    """

    def __init__(self, name: str, cpu: int | None = 0) -> None:
        self.server = SERVERS[name]
        self.cpu = cpu
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerProcess:
        command = pinned([sys.executable, "-m", "benchmarks.servers", self.server.name], self.cpu)
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline() if self._process.stdout else ""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"server {self.server.name} did not start")
        self.port = int(line)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def rss(self) -> int:
        """
        @return: the server's resident memory, in bytes.
        """
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def cpuSeconds(self) -> float:
        """
        @return: the CPU time (user and system) the server has used so far.
        """
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SERVERS:
        print(f"usage: python -m benchmarks.servers {{{','.join(SERVERS)}}}", file=sys.stderr)
        return 2
    raiseFileLimit(20000)

    def ready(port: int) -> None:
        print(port, flush=True)

    SERVERS[argv[0]].run(ready)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
