"""
tcplab itself, as a learner runs it: C{twist tcplab} and C{tcplab client} in
child processes, on 127.0.0.1 port 0.

The lab runs tcplab's server in a child process rather than on a reactor in
one of its own threads: it is the server a user starts, options and all; its
event loop does not share the lab's interpreter (and its lock) with the
blocking sockets that time it, so the times the lab measures are the
server's; and each experiment gets a fresh server, where a reactor, once
stopped, cannot run again in the same process (the test suite runs every
experiment in one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import tcplab

#: The directory that holds the C{tcplab} package (and C{twisted/plugins}),
#: so that a child process runs this same tcplab.
_ROOT = str(Path(tcplab.__file__).resolve().parent.parent)

#: A listener's start-up line: "tcplab listening on 127.0.0.1:PORT (TCP over IPv4; ...".
_LISTENING = re.compile(r"tcplab listening on 127\.0\.0\.1:(\d+) \((TCP|UDP) ")


def environment() -> dict[str, str]:
    """
    The environment of a child process that runs this tcplab.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    return env


class TcplabServer:
    """
    C{twist tcplab --listen tcp:0:interface=127.0.0.1 ARGS} in a child
    process.  It starts at once; L{ready} waits until it listens.  Use it as
    a context manager: on the way out the server is stopped (SIGTERM, as a
    user would) and reaped.

    @ivar port: its TCP port, once L{ready}.
    @ivar udpPort: its UDP port (given C{--udp 0}), once L{ready}.
    """

    def __init__(self, *args: str) -> None:
        self._wantUDP = "--udp" in args
        self.port: int | None = None
        self.udpPort: int | None = None
        self.output: list[str] = []
        self._listening = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "tcplab",
             "--listen", "tcp:0:interface=127.0.0.1", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=environment(),
        )
        # Read the log all along: a full pipe would block the server.
        self._reader = threading.Thread(target=self._read, name="tcplab-server-log", daemon=True)
        self._reader.start()

    def __enter__(self) -> TcplabServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ready(self, timeout: float = 20.0) -> TcplabServer:
        """
        Wait until the server listens.

        @return: this server.
        @raise RuntimeError: if it did not start within C{timeout} seconds,
            with what it logged.
        """
        if not self._listening.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError("tcplab's server did not start:\n" + "".join(self.output))
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """
        Stop the server (SIGTERM) if it still runs, and reap it.

        @return: its exit code.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = _LISTENING.search(line)
            if match:
                port = int(match.group(1))
                if match.group(2) == "TCP":
                    self.port = port
                else:
                    self.udpPort = port
                if self.port is not None and (self.udpPort is not None or not self._wantUDP):
                    self._listening.set()
        self._listening.set()


def runClient(*args: str, stdin: bytes = b"", timeout: float = 15.0) -> subprocess.CompletedProcess[bytes]:
    """
    Run C{tcplab client ARGS} to its end, with C{stdin} piped in.
    """
    return subprocess.run(
        [sys.executable, "-m", "tcplab", "client", *args],
        input=stdin, capture_output=True, timeout=timeout, env=environment(),
    )
