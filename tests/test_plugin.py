"""
Tests for the twistd plugin as users run it: discovery, C{twist tcplab} and
C{twistd -n tcplab} in child processes, on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import TWISTD, ServerProcess, assertLessonOnce, environment, takenPort, twist


class PluginDiscoveryTests(SynchronousTestCase):
    """
    Twisted's plugin system finds tcplab.
    """

    def test_getPlugins(self) -> None:
        """
        C{getPlugins} finds exactly one C{tcplab} service maker, pointing at
        L{tcplab.tap}.
        """
        [maker] = [p for p in getPlugins(IServiceMaker) if p.tapname == "tcplab"]
        self.assertEqual(maker.module, "tcplab.tap")

    def test_twistdHelpListsTcplab(self) -> None:
        """
        C{twistd --help} lists the tcplab subcommand.
        """
        result = subprocess.run(
            [*TWISTD, "--help"],
            capture_output=True, text=True, env=environment(), timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("tcplab", result.stdout)


class CommandLineTests(SynchronousTestCase):
    """
    C{twist tcplab} in a child process.
    """

    def test_help(self) -> None:
        """
        C{twist tcplab --help} documents every option.
        """
        result = twist("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--listen", "--udp", "--udp-interface", "--framing", "--suffix", "--max-length", "--once", "--log-messages"):
            self.assertIn(option, result.stdout)

    def test_badValueIsUsageError(self) -> None:
        """
        A bad value exits non-zero with an error line and no traceback.
        """
        result = twist("--udp", "99999")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("port 99999 is out of range (0-65535)", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_addressInUse(self) -> None:
        """
        Listening on a port that is taken prints one line and exits non-zero.
        """
        with takenPort() as port:
            result = twist("--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.strip().splitlines()[-1],
            f"tcplab: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use",
        )
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_twistdDaemonAddressInUse(self) -> None:
        """
        A daemonizing C{twistd} that cannot listen exits non-zero within
        seconds (it used to hang for ever), says why on stderr and in its
        log in one line, and leaves no pidfile.
        """
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        pidfile, logfile = directory / "twistd.pid", directory / "twistd.log"
        with takenPort() as port:
            result = twist(
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                runner=[*TWISTD, "--pidfile", str(pidfile), "--logfile", str(logfile)],
            )
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"cannot listen on tcp:{port}:interface=127.0.0.1: Address", result.stderr)
        # The parent exits as soon as the daemon reports the failure; the
        # daemon then removes its pidfile, writes its log and exits.
        deadline = time.monotonic() + 10
        while (pidfile.exists() or "cannot listen" not in logfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertFalse(pidfile.exists())
        log = logfile.read_text()
        self.assertEqual(log.count(f"tcplab: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use"), 1)
        self.assertNotIn("Traceback", log + result.stderr)

    def test_twistdNoDaemonAddressInUse(self) -> None:
        """
        C{twistd -n} that cannot listen exits 1 with the one line on stderr,
        no traceback, and no pidfile left behind.
        """
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        pidfile = directory / "twistd.pid"
        with takenPort() as port:
            result = twist(
                "--listen", f"tcp:{port}:interface=127.0.0.1",
                runner=[*TWISTD, "-n", "--pidfile", str(pidfile), "--logfile", str(directory / "log")],
            )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.strip().splitlines(),
            [f"tcplab: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use"],
        )
        self.assertFalse(pidfile.exists())

    def test_startupLine(self) -> None:
        """
        Each listener logs one start-up line with the address it is bound to,
        its transport and address family, and what it answers.
        """
        server = ServerProcess("--suffix", "SB", "--udp", "0", listen="tcp:0:interface=127.0.0.1")
        try:
            server.waitForLog("UDP over IPv4")
        finally:
            server.stop()
        log = server.log()
        self.assertIn(f"tcplab listening on 127.0.0.1:{server.port} (TCP over IPv4; raw framing, suffix 'SB')", log)
        self.assertRegex(log, r"tcplab listening on 127\.0\.0\.1:\d+ \(UDP over IPv4; datagram framing, suffix 'SB'\)")

    def test_lessonOnce(self) -> None:
        """
        C{--suffix SB --once} answers like the lesson's first server (C{你好}
        becomes C{你好SB}), logs the message and (with C{--log-connections})
        the connection, and exits 0 after that one connection.
        """
        server = ServerProcess("--suffix", "SB", "--once", "--log-messages", "--log-connections")
        assertLessonOnce(self, server)
        output = "".join(server.output)
        self.assertIn("message from 127.0.0.1:", output)
        self.assertIn("你好", output)
        self.assertRegex(
            output, r"127\.0\.0\.1:\d+ disconnected after [\d,.]+ ms, 6 B in, 8 B out: Connection was closed cleanly\."
        )

    def test_connectionsNotLoggedByDefault(self) -> None:
        """
        Without C{--log-connections} no line is logged per connection, and
        the stop summary still counts the connection served.
        """
        server = ServerProcess("--suffix", "SB", "--once")
        assertLessonOnce(self, server)
        output = "".join(server.output)
        self.assertNotIn("disconnected", output)
        self.assertIn("tcplab stopped: served 1 connection (0 refused, 0 open)", output)

    def test_twistd(self) -> None:
        """
        C{twistd -n tcplab} runs the same server.
        """
        server = ServerProcess("--framing", "line", "--suffix", "SB", "--once", twistd=True)
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
                client.sendall(b"hello\r\n")
                self.assertEqual(client.recv(1024), b"helloSB\r\n")
            self.assertEqual(server.wait(), 0)
        finally:
            server.stop()
