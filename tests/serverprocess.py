"""
Run the tcplab server in a child process, as a user would, for tests.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase as TestCase

from tcplab import defaults

ROOT = Path(__file__).resolve().parent.parent

#: C{twist} and C{twistd} as this interpreter runs them.
TWIST = [sys.executable, "-m", "twisted", "--log-format=text"]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

#: The start-up line of a TCP listener: "tcplab listening on 127.0.0.1:PORT (...)".
_PORT = re.compile(r"tcplab listening on \S+:(\d+) \(")


def environment() -> dict[str, str]:
    """
    The environment for a child process that uses this source tree.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def freePorts(count: int, kind: int = socket.SOCK_STREAM) -> list[int]:
    """
    C{count} distinct ports on 127.0.0.1 that nothing uses (just now), for
    a program that takes fixed ports: bound all at once, so that no two are
    the same (two probes one after the other may get one port twice).
    """
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, kind)) for _ in range(count)]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]


def freePort(kind: int = socket.SOCK_STREAM) -> int:
    """
    A port on 127.0.0.1 that nothing uses (just now).
    """
    [port] = freePorts(1, kind)
    return port


@contextlib.contextmanager
def takenPort() -> Iterator[int]:
    """
    A port on 127.0.0.1 that another socket listens on, for as long as the
    context lasts.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield taken.getsockname()[1]


def twist(*args: str, timeout: float = 20, runner: list[str] = TWIST) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m twisted tcplab ARGS} (or C{runner tcplab ARGS}) to completion.
    """
    return subprocess.run(
        [*runner, "tcplab", *args],
        capture_output=True, text=True, env=environment(), timeout=timeout, stdin=subprocess.DEVNULL,
    )


class LoggedProcess:
    """
    A child process whose output (stdout and stderr) is read all along.
    """

    def __init__(self, command: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=environment() if env is None else env, cwd=cwd, stdin=subprocess.DEVNULL,
        )
        self.output: list[str] = []
        # Read the log all along: a full pipe would block the process.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lineReceived(line)
        self.lineReceived(None)

    def lineReceived(self, line: str | None) -> None:
        """
        Called with each line of output, then with L{None} at its end.
        """

    def log(self) -> str:
        """
        Everything the process has written so far.
        """
        return "".join(self.output)

    def waitForLog(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        """
        Wait until the log matches C{pattern}; return the match.
        """
        deadline = time.monotonic() + timeout
        while (match := re.search(pattern, self.log())) is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"{pattern!r} never logged:\n{self.log()}")
            time.sleep(0.05)
        return match

    def wait(self, timeout: float = 10) -> int:
        """
        Wait for the process to exit; return its exit code.
        """
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        """
        Terminate the process if it still runs, and reap it.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)


class ServerProcess(LoggedProcess):
    """
    C{python -m twisted tcplab ARGS} listening on 127.0.0.1 on a free port.

    @ivar port: the TCP port it listens on.
    @ivar started: for a listener with no TCP port of its own (a UNIX socket,
        an inherited one), text of the log line that shows it has started.
    """

    port: int | None = None

    def __init__(
        self,
        *args: str,
        listen: str = f"tcp:0:interface=127.0.0.1:backlog={defaults.BACKLOG}",
        twistd: bool = False,
        runner: list[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float = 20,
        started: str | None = None,
    ) -> None:
        self.startedText = started
        self._started = threading.Event()
        if runner is None:
            runner = TWISTD + ["--pidfile=", "--logfile=-", "-n"] if twistd else TWIST
        super().__init__([*runner, "tcplab", "--listen", listen, *args], env=env, cwd=cwd)
        if not self._started.wait(timeout) or (self.port is None and started is None):
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.output))

    def lineReceived(self, line: str | None) -> None:
        if line is None:
            self._started.set()
        elif self.port is None:
            match = _PORT.search(line)
            if match:
                self.port = int(match.group(1))
                self._started.set()
            elif self.startedText is not None and self.startedText in line:
                self._started.set()


def assertLessonOnce(test: TestCase, server: ServerProcess) -> None:
    """
    Talk to a C{--suffix SB --once} server as the lesson's client does: send
    C{你好}, expect C{你好SB}; then the server must exit 0.
    """
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall("你好".encode())
            test.assertEqual(client.recv(1024).decode(), "你好SB")
        test.assertEqual(server.wait(), 0)
    finally:
        server.stop()
