"""
Real tcplab servers for tests, each in a child process.

    with runningEchoServer(framing="line", suffix="SB") as server:
        with socket.create_connection(server.address) as client:
            ...
        assert server.stats().served == 1

A server runs in its own process, not in a thread of the test's: a process
has one global reactor, which cannot be restarted once stopped, and the test
may well be running it already (trial's C{TestCase}, pytest-twisted,
C{task.react}).  A reactor in a thread would fight that one; a child process
shares nothing with it, so the same server works under plain pytest, trial,
unittest and pytest-twisted alike.  The child runs the twistd plugin's own
service (L{tcplab.tap.buildService}, options parsed by L{tcplab.tap.Options}),
so every C{twist tcplab} option works, faults included.

The child answers on a control channel: its standard input takes commands
(C{stats}), its standard output carries one JSON line per answer, and the
end of its standard input stops it (draining, as SIGTERM does); so a test
process that dies takes its servers with it.  Its log goes to a temporary
file (L{EchoServerProcess.log}).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from twisted.python import usage

from tcplab.server import ServerStats

#: The listener a server gets unless told otherwise: loopback, a free port.
DEFAULT_LISTEN = "tcp:0:interface=127.0.0.1"

#: Seconds a server has to start.
START_TIMEOUT = 30.0


class DatagramStats(NamedTuple):
    """
    What a server's UDP echo has done so far.
    """

    datagrams: int
    """Datagrams answered (or, with faults, passed on to the echo)."""
    bytesIn: int
    """Bytes received."""
    bytesOut: int
    """Bytes of replies sent."""
    dropped: int
    """Datagrams dropped by C{udpDrop} (or over the delay's hold limit)."""


class ServerFailed(RuntimeError):
    """
    A server process could not start, or stopped answering.  The message
    ends with what it logged.
    """


def serverArguments(options: Mapping[str, object]) -> list[str]:
    """
    Turn keyword options into C{twist tcplab} arguments, and check them.

    A keyword is the option's name in camelCase (C{maxLength} for
    C{--max-length}; C{max_length} works too).  Flags take C{True} or
    C{False}; L{None} leaves an option out; C{bytes} (a suffix) are passed as
    they are; C{udp=True} listens for UDP on a free port of C{udpInterface};
    C{listen} is an endpoint string or a list of them (default: a free port
    on 127.0.0.1).

    @raise TypeError: for an option C{twist tcplab} does not have.
    @raise ValueError: for a value it refuses (the message names the option).
    """
    from tcplab.tap import Options

    known = Options()
    flags = {long for long, _, _ in known.optFlags}
    parameters = {parameter[0] for parameter in known.optParameters} | {"listen"}
    listen = options.get("listen", DEFAULT_LISTEN)
    arguments = [f"--listen={description}" for description in ([listen] if isinstance(listen, str) else listen)]
    for key, value in options.items():
        name = _optionName(key)
        if name == "listen":
            continue
        if name not in flags | parameters:
            raise TypeError(f"tcplab has no option {key!r} (--{name}); see twist tcplab --help")
        if name == "udp" and isinstance(value, bool):
            value = 0 if value else None
        if name in flags:
            if value:
                arguments.append(f"--{name}")
        elif value is not None:
            if isinstance(value, bytes):
                value = value.decode("utf-8", "surrogateescape")
            arguments.append(f"--{name}={value}")
    try:
        Options().parseOptions(arguments)
    except usage.UsageError as error:
        raise ValueError(str(error)) from None
    return arguments


def _optionName(key: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in key).replace("_", "-")


class EchoServerProcess:
    """
    A tcplab server running in a child process, for one test or many.

    @ivar host: the address of its first TCP listener (L{None} if it has none).
    @ivar port: that listener's port.
    @ivar address: C{(host, port)}, for C{socket.create_connection}.
    @ivar endpoint: a client endpoint string for it, for
        C{EchoClient.connect(reactor, server.endpoint)} or
        C{tcplab client --connect}; a UNIX listener's if it has no TCP one.
    @ivar udpAddress: C{(host, port)} of its UDP echo, if it has one.
    @ivar listeners: every listener, as the start-up lines describe them:
        dicts with C{address}, C{kind} and, for IP listeners, C{host} and C{port}.
    @ivar pid: the process id.
    @ivar returncode: the exit status, once it has stopped.
    """

    host: str | None = None
    port: int | None = None
    udpAddress: tuple[str, int] | None = None

    def __init__(self, *, timeout: float = START_TIMEOUT, **options: object) -> None:
        """
        Start a server and wait until it listens.

        @param options: C{twist tcplab} options as keywords (see
            L{serverArguments}), e.g. C{framing="line", suffix="SB",
            maxLength=1024, idleTimeout=5, udp=True, delay=0.3}.
        @raise TypeError: for an unknown option.
        @raise ValueError: for an invalid value.
        @raise ServerFailed: if it does not start within C{timeout} seconds,
            or cannot listen.
        """
        self.arguments = serverArguments(options)
        self._logFile = tempfile.TemporaryFile(prefix="tcplab-server-", suffix=".log")
        self._lock = threading.Lock()
        self._buffer = b""
        self.returncode: int | None = None
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tcplab.testing.serve", *self.arguments],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._logFile,
            env=_environment(), close_fds=True,
        )
        self.pid = self._process.pid
        try:
            started = self._receive(timeout)
        except ServerFailed:
            self.stop()
            raise
        if "error" in started:
            self.stop()
            raise ServerFailed(f"{started['error']}\n{self.log()}")
        self.listeners: list[dict[str, Any]] = started["listening"]
        self._locate()

    def _locate(self) -> None:
        tcp = [listener for listener in self.listeners if listener["kind"] == "TCP" and "port" in listener]
        udp = [listener for listener in self.listeners if listener["kind"] == "UDP"]
        if tcp:
            self.host, self.port = tcp[0]["host"], tcp[0]["port"]
        if udp:
            self.udpAddress = (udp[0]["host"], udp[0]["port"])
        unix = [listener for listener in self.listeners if listener["kind"] == "UNIX"]
        if tcp:
            # Twisted's "tcp:" client endpoint takes IPv6 literals too (escaped).
            host = tcp[0]["host"].replace(":", "\\:")
            self.endpoint = f"tcp:host={host}:port={tcp[0]['port']}"
        elif unix:
            self.endpoint = f"unix:path={unix[0]['address']}"
        else:
            self.endpoint = ""

    @property
    def address(self) -> tuple[str, int]:
        if self.host is None or self.port is None:
            raise AttributeError("this server has no TCP listener")
        return (self.host, self.port)

    def stats(self, timeout: float = 10.0) -> ServerStats:
        """
        @return: what the server's TCP (and TLS, UNIX) connections have done
            so far, as L{tcplab.server.EchoServerFactory.stats} counts it.
        @raise ServerFailed: if the server does not answer.
        """
        return ServerStats(**self._ask("stats", timeout)["stats"])

    def datagramStats(self, timeout: float = 10.0) -> DatagramStats | None:
        """
        @return: what the server's UDP echo has done so far; L{None} if it
            has none.
        """
        datagrams = self._ask("stats", timeout)["datagrams"]
        return None if datagrams is None else DatagramStats(**datagrams)

    def log(self) -> str:
        """
        @return: everything the server has logged so far.
        """
        with open(self._logFile.fileno(), "rb", closefd=False) as log:
            log.seek(0)
            return log.read().decode("utf-8", "replace")

    def signal(self, number: int = signal.SIGTERM) -> None:
        """
        Send the server a signal: SIGTERM (or SIGINT, SIGHUP) makes it stop
        accepting, finish what it is echoing, and exit.
        """
        if self._process.poll() is None:
            self._process.send_signal(number)

    def wait(self, timeout: float = 30.0) -> int:
        """
        Wait for the server to exit (after L{signal}, C{once=True}...).

        @return: its exit status.
        """
        self.returncode = self._process.wait(timeout)
        return self.returncode

    def stop(self, grace: float = 2.0, timeout: float = 30.0) -> int:
        """
        Stop the server as SIGTERM does: it stops listening and finishes what
        it is echoing for at most C{grace} seconds; then what is left open is
        aborted, as a second SIGTERM does (a test that ends with connections
        open waits no longer); the process is killed if it has not exited
        C{timeout} seconds later.  Stopping twice is harmless.

        @return: its exit status.
        """
        process = self._process
        if process.poll() is None and self._tell("stop"):
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                self._tell("abort")
        self._close(process.stdin)
        try:
            self.returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            self.returncode = process.wait()
        self._close(process.stdout)
        return self.returncode

    def _tell(self, command: str) -> bool:
        stdin = self._process.stdin
        if stdin is None or stdin.closed:
            return False
        try:
            stdin.write(command.encode() + b"\n")
            stdin.flush()
        except OSError:
            return False
        return True

    @staticmethod
    def _close(stream: Any) -> None:
        if stream is not None and not stream.closed:
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> EchoServerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.port is not None else self.endpoint
        return f"<EchoServerProcess pid={self.pid} {where} {' '.join(self.arguments[1:])}>"

    # The control channel.

    def _ask(self, command: str, timeout: float) -> dict[str, Any]:
        with self._lock:
            if self._process.poll() is not None or not self._tell(command):
                raise ServerFailed(f"the server has stopped (status {self._process.poll()})\n{self.log()}")
            return self._receive(timeout)

    def _receive(self, timeout: float) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServerFailed(f"the server did not answer within {timeout:g} s\n{self.log()}")
            readable, _, _ = select.select([stdout], [], [], left)
            if readable:
                data = os.read(stdout.fileno(), 65536)
                if not data:
                    self._process.wait(10)
                    raise ServerFailed(
                        f"the server exited with status {self._process.returncode}\n{self.log()}"
                    )
                self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


def _environment() -> dict[str, str]:
    # The child imports the very tcplab this process has imported.
    environment = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, environment.get("PYTHONPATH")]))
    return environment


@contextmanager
def runningEchoServer(**options: object) -> Iterator[EchoServerProcess]:
    """
    A tcplab server for the duration of a C{with} block, for unittest and
    trial tests (pytest tests have the C{echo_server} and
    C{make_echo_server} fixtures)::

        with runningEchoServer(framing="line", suffix="SB") as server:
            ...

    @param options: as for L{EchoServerProcess}.
    """
    server = EchoServerProcess(**options)
    try:
        yield server
    finally:
        server.stop()
