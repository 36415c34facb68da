"""
tcplab behind a real HAProxy (Debian's package), configured by the
repository's own C{deploy/haproxy.cfg}: the test runs that file with free
ports on 127.0.0.1 in place of 8081, 9001 and 9002, so the file shipped is
the file tested.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ROOT, LoggedProcess, ServerProcess, freePort
from tests.test_listeners import temporaryDirectory
from tests.test_robustness import readAll, readExactly, sendInBackground

CONFIG = ROOT / "deploy" / "haproxy.cfg"

#: The tcplab command line the configuration's comment gives for each
#: instance: its options, its metrics port, its echo port.
_INSTANCE = re.compile(
    r"#\s+twist tcplab (.*) --metrics tcp:(910[12]):interface=127\.0\.0\.1 -l haproxy:tcp:(900[12]):interface=127\.0\.0\.1"
)

#: An instance's metrics listener, from its start-up line.
_METRICS_PORT = r"tcplab metrics on 127\.0\.0\.1:(\d+) "


def haproxyPath() -> str:
    """
    @return: the C{haproxy} command (Debian puts it in /usr/sbin); without
        it the tests fail: .ci/run installs it.
    """
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if path is None:
        raise AssertionError("haproxy is needed (Debian package haproxy; .ci/run installs it)")
    return path


def configFor(frontend: int, backends: list[int], checks: list[int]) -> str:
    """
    @return: C{deploy/haproxy.cfg} with C{frontend} for port 8081,
        C{backends} for 9001 and 9002 and C{checks} for their check ports
        9101 and 9102, each replaced exactly once.
    """
    text = CONFIG.read_text()
    servers = zip((9001, 9002), backends, (9101, 9102), checks, strict=True)
    for old, new in [("bind 127.0.0.1:8081", f"bind 127.0.0.1:{frontend}")] + [
        (
            f"server echo{n} 127.0.0.1:{port} check port {check}",
            f"server echo{n} 127.0.0.1:{newPort} check port {newCheck}",
        )
        for n, (port, newPort, check, newCheck) in enumerate(servers, 1)
    ]:
        if text.count(old) != 1:
            raise AssertionError(f"deploy/haproxy.cfg should hold {old!r} once")
        text = text.replace(old, new)
    return text


def connectFrom(source: str, port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def lineEcho(source: str, port: int, line: bytes = b"hi\n") -> bytes:
    with connectFrom(source, port) as client:
        client.sendall(line)
        return client.recv(1024)


class HAProxyTests(SynchronousTestCase):
    """
    Two tcplab instances, started as the configuration's comment says,
    behind HAProxy with PROXY protocol v2 and health checks of their
    C{/healthz}.
    """

    def setUp(self) -> None:
        haproxy = haproxyPath()
        comment = _INSTANCE.findall(CONFIG.read_text())
        self.assertEqual([ports for _, *ports in comment], [["9101", "9001"], ["9102", "9002"]])
        self.instances = []
        checks = []
        for arguments, _, _ in comment:
            # --log-messages: which instance serves which client shows in its log.
            instance = ServerProcess(
                *arguments.split(), "--metrics", "tcp:0:interface=127.0.0.1", "--log-messages",
                listen="haproxy:tcp:0:interface=127.0.0.1",
            )
            self.addCleanup(instance.stop)
            self.instances.append(instance)
            checks.append(int(instance.waitForLog(_METRICS_PORT).group(1)))
        self.port = freePort()
        directory = temporaryDirectory(self)
        config = directory / "haproxy.cfg"
        config.write_text(configFor(self.port, [instance.port for instance in self.instances], checks))
        self.haproxy = LoggedProcess([haproxy, "-f", str(config), "-db"], cwd=str(directory))
        self.addCleanup(self.haproxy.stop)
        # HAProxy listening.
        deadline = time.monotonic() + 20
        while True:
            try:
                self.assertEqual(lineEcho("127.0.0.1", self.port), b"hi\n")
                break
            except (ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("HAProxy never answered:\n" + self.haproxy.log()) from None
                time.sleep(0.1)

    def instanceServing(self, source: str) -> int:
        """
        @return: which instance (0 or 1) has logged a message from C{source}.
        """
        pattern = rf"message from {re.escape(source)}:\d+: "
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = [n for n, instance in enumerate(self.instances) if re.search(pattern, instance.log())]
            if found:
                [serving] = found
                return serving
            time.sleep(0.05)
        raise AssertionError(f"no instance logged {source}")

    def test_byteExactEcho(self) -> None:
        """
        Lines of every byte value but the newline come back through HAProxy
        exactly, and the instance logs the client's own address.
        """
        generator = random.Random(7)
        payload = bytes(b for b in generator.randbytes(600_000) if b != 10)
        lines = b"".join(payload[i : i + 997] + b"\n" for i in range(0, len(payload), 997))
        with connectFrom("127.0.0.2", self.port, timeout=30) as client:
            sender = sendInBackground(client, lines)
            self.assertEqual(readAll(client), lines)
            sender.join(10)
        self.instanceServing("127.0.0.2")

    def test_limitsByRealClientAddress(self) -> None:
        """
        With C{--max-per-peer 1}, 127.0.0.2 and 127.0.0.3 each get one
        connection, and a second from 127.0.0.2 is refused with tcplab's
        error line: the instance counts the address in the PROXY header,
        not HAProxy's (and C{balance source} sends a client's connections
        to one instance).
        """
        held = {source: connectFrom(source, self.port) for source in ("127.0.0.2", "127.0.0.3")}
        try:
            for client in held.values():
                client.sendall(b"mine\n")
                self.assertEqual(client.recv(100), b"mine\n")
            self.assertEqual(
                lineEcho("127.0.0.2", self.port), b"error: too many connections from your address (limit 1)\n"
            )
        finally:
            for client in held.values():
                client.close()

    def test_stoppedInstanceTakenOut(self) -> None:
        """
        SIGTERM to the instance serving a client: its C{/healthz} answers
        503 at once, and HAProxy marks it down for that 503 while the
        client's connection is still open and echoing (tcplab drains it);
        once the client is done, the instance exits 0, and the client's
        next connections are served by the other instance.
        """
        with connectFrom("127.0.0.2", self.port, timeout=30) as client:
            client.sendall(b"first\n")
            self.assertEqual(client.recv(100), b"first\n")
            serving = self.instanceServing("127.0.0.2")
            stopping, other = self.instances[serving], self.instances[1 - serving]
            os.kill(stopping.process.pid, signal.SIGTERM)
            # Talk all along, or the drain would close the quiet connection.
            down = rf"Server tcplab/echo{serving + 1} is DOWN, reason: Layer7 wrong status, code: 503"
            deadline = time.monotonic() + 20
            sent = 0
            while not re.search(down, self.haproxy.log()):
                if time.monotonic() > deadline:
                    raise AssertionError(f"HAProxy never took echo{serving + 1} out:\n{self.haproxy.log()}")
                line = b"%07d\n" % sent
                client.sendall(line)
                self.assertEqual(readExactly(client, len(line)), line)
                sent += 1
                time.sleep(0.05)
            # Taken out while still draining: the connection still echoes.
            self.assertIsNone(stopping.process.poll())
            client.sendall(b"last\n")
            self.assertEqual(readExactly(client, 5), b"last\n")
        self.assertGreater(sent, 0)
        self.assertEqual(stopping.wait(30), 0)
        # One client address each: --max-per-peer 1 would refuse a second
        # connection from one address that came before the first's close.
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            self.assertEqual(lineEcho(source, self.port), b"hi\n")
        self.assertRegex(other.log(), r"message from 127\.0\.0\.2:\d+: hi")
        self.assertIn("tcplab stopped: served", stopping.log())


class HAProxyConfigurationTests(SynchronousTestCase):
    """
    The shipped file as it is.
    """

    def test_valid(self) -> None:
        """
        C{haproxy -c} accepts it.
        """
        result = subprocess.run([haproxyPath(), "-c", "-f", str(CONFIG)], capture_output=True, text=True, timeout=30)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

