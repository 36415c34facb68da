"""
unittest and trial tests: the context manager for a real server, and the
in-memory helpers with a Clock.
"""

import socket
import unittest

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tcplab import EchoClient, EchoServerFactory
from tcplab.faults import Faults, FaultyFactory
from tcplab.testing import InMemoryServer, runningEchoServer


class RunningServerTests(unittest.TestCase):
    def test_lineServer(self):
        """
        runningEchoServer is a server for a with block.
        """
        with runningEchoServer(framing="line", suffix="SB") as server:
            with socket.create_connection(server.address, timeout=10) as client:
                client.sendall(b"hi\n")
                self.assertEqual(client.recv(100), b"hiSB\n")
        self.assertEqual(server.returncode, 0)


class InMemoryTests(SynchronousTestCase):
    def test_request(self):
        """
        An EchoClient against an EchoServerFactory, in memory.
        """
        clock = Clock()
        server = InMemoryServer(EchoServerFactory(framing="line", suffix=b"SB", reactor=clock), clock)
        client = EchoClient(clock, framing="line")
        server.connect(client)
        reply = client.request(b"hi")
        server.flush()
        self.assertEqual(self.successResultOf(reply), b"hiSB")

    def test_timeoutAgainstSlowServer(self):
        """
        A delayed server makes the client's timeout fire, without waiting.
        """
        clock = Clock()
        factory = FaultyFactory(EchoServerFactory(framing="line", reactor=clock), Faults(delay=5))
        server = InMemoryServer(factory, clock)
        client = self.successResultOf(EchoClient.connect(clock, server.endpoint(), framing="line", timeout=1))
        reply = client.request(b"hi")
        server.advance(1)
        self.assertEqual(type(self.failureResultOf(reply).value).__name__, "ReplyTimeout")
