"""
Tests for the twistd plugin as users run it: discovery, C{twist tcplab} and
C{twistd -n tcplab} in child processes, on 127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import TWISTD, ServerProcess, assertLessonOnce, environment, twist


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
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            result = twist("--listen", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.strip().splitlines()[-1],
            f"tcplab: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use",
        )
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_lessonOnce(self) -> None:
        """
        C{--suffix SB --once} answers like the lesson's first server (C{你好}
        becomes C{你好SB}), logs the message, and exits 0 after that one
        connection.
        """
        server = ServerProcess("--suffix", "SB", "--once", "--log-messages")
        assertLessonOnce(self, server)
        output = "".join(server.output)
        self.assertIn("connection from 127.0.0.1:", output)
        self.assertIn("message from 127.0.0.1:", output)
        self.assertIn("你好", output)

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
