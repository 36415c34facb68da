"""
Tests for L{tcplab.testing}: the in-memory connections, and the servers in
child processes that the pytest fixtures hand out (tests/test_external.py
runs the fixtures themselves, through the installed entry point).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tcplab import EchoClient, EchoServerFactory, defaults
from tcplab.client import ReplyTimeout, ServerError
from tcplab.faults import Faults, FaultyFactory
from tcplab.server import ServerStats
from tcplab.testing import (
    DatagramStats,
    EchoServerProcess,
    InMemoryServer,
    ServerFailed,
    connectInMemory,
    runningEchoServer,
)
from tcplab.testing.process import serverArguments


@implementer(IHalfCloseableProtocol)
class Recorder(Protocol):
    """
    Keeps what it receives, and how its connection ended.
    """

    def __init__(self) -> None:
        self.received = b""
        self.readClosed = False
        self.reason = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.readClosed = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason=None) -> None:
        self.reason = reason


class MemoryConnectionTests(SynchronousTestCase):
    """
    Tests for L{connectInMemory} and L{MemoryConnection}.
    """

    def test_lineRequest(self) -> None:
        """
        An L{EchoClient} gets its replies from an L{EchoServerFactory} once
        the connection is flushed.
        """
        clock = Clock()
        client = EchoClient(clock, framing="line")
        connection = connectInMemory(EchoServerFactory(framing="line", suffix=b"SB", reactor=clock), client, clock)
        replies = [client.request(b"one"), client.request(b"two")]
        self.assertNoResult(replies[0])
        self.assertTrue(connection.flush())
        self.assertEqual([self.successResultOf(reply) for reply in replies], [b"oneSB", b"twoSB"])
        self.assertFalse(connection.flush())

    def test_rawNeedsTime(self) -> None:
        """
        A raw reply is complete once the server has been quiet for the
        client's quiet period: time, which L{MemoryConnection.advance} lets pass.
        """
        clock = Clock()
        client = EchoClient(clock)
        connection = connectInMemory(EchoServerFactory(reactor=clock), client, clock)
        reply = client.request(b"raw")
        connection.flush()
        self.assertNoResult(reply)
        connection.advance(defaults.QUIET_PERIOD)
        self.assertEqual(self.successResultOf(reply), b"raw")

    def test_advanceStopsAtEachTimer(self) -> None:
        """
        Advancing delivers what each timer makes a side write before the next
        timer runs: pieces 0.1 s apart arrive within the raw client's 0.2 s
        quiet period, and make one reply.
        """
        clock = Clock()
        client = EchoClient(clock)
        factory = FaultyFactory(EchoServerFactory(reactor=clock), Faults(chunk=2, chunkDelay=0.1))
        connection = connectInMemory(factory, client, clock)
        reply = client.request(b"abcdefgh")
        connection.advance(1)
        self.assertEqual(self.successResultOf(reply), b"abcdefgh")

    def test_clientCloses(self) -> None:
        """
        Closing the client disconnects both sides.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        client = EchoClient(clock)
        connection = connectInMemory(factory, client, clock)
        self.assertEqual(factory.stats().open, 1)
        closed = client.close()
        connection.flush()
        self.successResultOf(closed)
        self.assertFalse(connection.connected)
        self.assertEqual(factory.stats().open, 0)

    def test_serverClosesIdle(self) -> None:
        """
        The server's idle timeout runs on the clock.
        """
        clock = Clock()
        client = EchoClient(clock)
        connection = connectInMemory(EchoServerFactory(idleTimeout=5, reactor=clock), client, clock)
        connection.server.factory.startFactory()
        disconnected = client.whenDisconnected()
        connection.advance(4)
        self.assertNoResult(disconnected)
        connection.advance(2)
        self.successResultOf(disconnected)

    def test_halfClose(self) -> None:
        """
        A client that shuts its write side still gets its whole echo, then
        the server closes.
        """
        recorder = Recorder()
        connection = connectInMemory(EchoServerFactory(framing="line", reactor=Clock()), recorder)
        connection.clientTransport.write(b"a\nunterminated")
        connection.clientTransport.loseWriteConnection()
        connection.flush()
        self.assertEqual(recorder.received, b"a\nunterminated\n")
        self.assertFalse(connection.connected)
        recorder.reason.trap(ConnectionDone)

    def test_pausedSideIsNotFed(self) -> None:
        """
        A side that paused its transport (stopped reading) gets nothing until
        it resumes.
        """
        recorder = Recorder()
        connection = connectInMemory(EchoServerFactory(reactor=Clock()), recorder)
        connection.clientTransport.pauseProducing()
        connection.clientTransport.write(b"hi")
        connection.flush()
        self.assertEqual(recorder.received, b"")
        connection.clientTransport.resumeProducing()
        connection.flush()
        self.assertEqual(recorder.received, b"hi")
        connection.serverTransport.pauseProducing()
        connection.clientTransport.write(b"there")
        connection.flush()
        self.assertEqual(recorder.received, b"hi")
        connection.serverTransport.resumeProducing()
        connection.flush()
        self.assertEqual(recorder.received, b"hithere")

    def test_reset(self) -> None:
        """
        A server that aborts (here, a reset fault) loses the client's
        connection, not cleanly.
        """
        recorder = Recorder()
        factory = FaultyFactory(EchoServerFactory(reactor=Clock()), Faults(resetAfter=1))
        connection = connectInMemory(factory, recorder)
        connection.clientTransport.write(b"x")
        connection.flush()
        self.assertEqual(recorder.received, b"x")
        recorder.reason.trap(ConnectionLost)
        self.assertEqual(factory.wrappedFactory.stats().open, 0)

    def test_clientAborts(self) -> None:
        """
        A side that aborts receives nothing more (the echo of what it wrote
        before is lost); it sees L{ConnectionAborted}.
        """
        recorder = Recorder()
        connection = connectInMemory(EchoServerFactory(reactor=Clock()), recorder)
        connection.clientTransport.write(b"lost")
        connection.clientTransport.abortConnection()
        connection.flush()
        self.assertEqual(recorder.received, b"")
        recorder.reason.trap(ConnectionAborted)


class InMemoryServerTests(SynchronousTestCase):
    """
    Tests for L{InMemoryServer}.
    """

    def test_endpoint(self) -> None:
        """
        Code that connects through an endpoint connects in memory.
        """
        clock = Clock()
        server = InMemoryServer(EchoServerFactory(framing="length", suffix=b"!", reactor=clock), clock)
        client = self.successResultOf(EchoClient.connect(clock, server.endpoint(), framing="length"))
        reply = client.request(b"frame")
        server.flush()
        self.assertEqual(self.successResultOf(reply), b"frame!")

    def test_manyClients(self) -> None:
        """
        Each client comes from its own port of 127.0.0.1, so per-peer limits
        count them all as one peer.
        """
        clock = Clock()
        factory = EchoServerFactory(framing="line", maxPerPeer=2, reactor=clock)
        server = InMemoryServer(factory, clock)
        clients = [EchoClient(clock, framing="line") for _ in range(3)]
        for client in clients:
            server.connect(client)
        peers = {connection.clientTransport.getHost().port for connection in server.connections}
        self.assertEqual(len(peers), 3)
        replies = [client.request(b"hi") for client in clients]
        server.flush()
        self.assertEqual([self.successResultOf(reply) for reply in replies[:2]], [b"hi", b"hi"])
        refusal = self.failureResultOf(replies[2], ServerError).value
        self.assertEqual(refusal.notice, b"error: too many connections from your address (limit 2)")
        self.assertEqual((factory.stats().served, factory.stats().refused), (2, 1))

    def test_refused(self) -> None:
        """
        A connection the factory refuses (L{None}) is closed at once.
        """
        clock = Clock()
        factory = EchoServerFactory(maxServed=1, reactor=clock)
        server = InMemoryServer(factory, clock)
        server.connect(EchoClient(clock))
        late = EchoClient(clock)
        server.connect(late)
        disconnected = late.whenDisconnected()
        server.flush()
        self.successResultOf(disconnected)

    def test_slowServerTimesOut(self) -> None:
        """
        A delay fault makes the client's timeout fire, and no time is waited.
        """
        clock = Clock()
        factory = FaultyFactory(EchoServerFactory(framing="line", reactor=clock), Faults(delay=5))
        server = InMemoryServer(factory, clock)
        client = self.successResultOf(EchoClient.connect(clock, server.endpoint(), framing="line", timeout=1))
        reply = client.request(b"hi")
        server.advance(1)
        self.failureResultOf(reply, ReplyTimeout)


class ServerArgumentsTests(SynchronousTestCase):
    """
    Tests for L{serverArguments}: keywords to C{twist tcplab} options.
    """

    def test_keywords(self) -> None:
        """
        camelCase (or snake_case) keywords name options; flags take booleans,
        bytes pass as they are, L{None} is left out, C{udp=True} is a free port.
        """
        self.assertEqual(
            serverArguments({
                "framing": "line", "suffix": b"S\xffB", "maxLength": 1024, "idle_timeout": 5, "udp": True,
                "logMessages": True, "once": False, "delay": 0.25, "closeAfter": 0, "jitter": None,
            }),
            [
                "--listen=tcp:0:interface=127.0.0.1", "--framing=line", "--suffix=S\udcffB", "--max-length=1024",
                "--idle-timeout=5", "--udp=0", "--log-messages", "--delay=0.25", "--close-after=0",
            ],
        )

    def test_listen(self) -> None:
        """
        C{listen} takes one endpoint or a list.
        """
        self.assertEqual(serverArguments({"listen": "tcp:0"}), ["--listen=tcp:0"])
        self.assertEqual(serverArguments({"listen": ["tcp:0", "unix:/x"]}), ["--listen=tcp:0", "--listen=unix:/x"])

    def test_unknown(self) -> None:
        """
        An option C{twist tcplab} does not have is a L{TypeError}.
        """
        error = self.assertRaises(TypeError, serverArguments, {"colour": "blue"})
        self.assertIn("no option 'colour'", str(error))

    def test_badValue(self) -> None:
        """
        A value C{twist tcplab} refuses is a L{ValueError} naming the option.
        """
        for options, message in [
            ({"framing": "xml"}, "--framing"),
            ({"chunkDelay": 1}, "--chunk-delay needs --chunk"),
            ({"suffix": "S\nB", "framing": "line"}, "--suffix"),
        ]:
            self.assertIn(message, str(self.assertRaises(ValueError, serverArguments, options)))


def exchange(address: tuple[str, int], message: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(message)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return received


def waitUntil(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


class EchoServerProcessTests(SynchronousTestCase):
    """
    Tests for L{EchoServerProcess} and L{runningEchoServer}.
    """

    def test_defaults(self) -> None:
        """
        By default: raw echo, no suffix, on 127.0.0.1 on a free port.
        """
        with runningEchoServer() as server:
            self.assertEqual(server.address, ("127.0.0.1", server.port))
            self.assertEqual(server.endpoint, f"tcp:host=127.0.0.1:port={server.port}")
            self.assertIsNone(server.udpAddress)
            self.assertEqual(server.stats(), ServerStats(0, 0, 0, 0, 0))
            self.assertEqual(exchange(server.address, "你好".encode()), "你好".encode())
            waitUntil(lambda: server.stats().open == 0)
            self.assertEqual(server.stats(), ServerStats(1, 0, 0, 6, 6))
            self.assertIsNone(server.datagramStats())
            # Connections are logged only with logConnections (--log-connections).
            self.assertNotIn("127.0.0.1:", server.log().split("(TCP over IPv4", 1)[1])
        self.assertEqual(server.returncode, 0)
        self.assertIn("tcplab stopped: served 1 connection", server.log())

    def test_options(self) -> None:
        """
        The server's own options, as keywords.
        """
        with runningEchoServer(framing="line", suffix="SB", maxLength=4) as server:
            self.assertEqual(exchange(server.address, b"hi\n"), b"hiSB\n")
            self.assertEqual(exchange(server.address, b"hello\n"), b"error: line longer than 4 bytes; closing\n")

    def test_udp(self) -> None:
        """
        C{udp=True} adds a UDP echo on a free port; its counts are
        C{datagramStats()}.
        """
        with runningEchoServer(udp=True, suffix="!") as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"ping", server.udpAddress)
            self.assertEqual(udp.recvfrom(100), (b"ping!", server.udpAddress))
            self.assertEqual(server.datagramStats(), DatagramStats(1, 4, 5, 0))

    def test_unixListener(self) -> None:
        """
        A server on a UNIX socket only has a UNIX endpoint, and no address.
        """
        folder = Path(tempfile.mkdtemp(prefix="tcplab-"))
        self.addCleanup(shutil.rmtree, folder)
        with runningEchoServer(listen=f"unix:{folder / 'echo.sock'}") as server:
            self.assertEqual(server.endpoint, f"unix:path={folder / 'echo.sock'}")
            self.assertIsNone(server.port)
            self.assertRaises(AttributeError, lambda: server.address)

    def test_cannotListen(self) -> None:
        """
        A server that cannot listen fails to start, saying why.
        """
        with runningEchoServer() as first:
            error = self.assertRaises(ServerFailed, EchoServerProcess, listen=f"tcp:{first.port}:interface=127.0.0.1")
            self.assertIn("cannot listen on", str(error))
            self.assertIn("Address already in use", str(error))

    def test_signal(self) -> None:
        """
        SIGTERM makes the server drain and exit 0.
        """
        with runningEchoServer() as server:
            server.signal(signal.SIGTERM)
            self.assertEqual(server.wait(), 0)
            self.assertRaises(ServerFailed, server.stats)
        self.assertIn("received SIGTERM", server.log())

    def test_stopAbortsWhatIsLeft(self) -> None:
        """
        Stopping gives what is in flight C{grace} seconds, then aborts it:
        a test that leaves a connection waiting does not hold up the next.
        """
        server = EchoServerProcess(delay=60)
        with socket.create_connection(server.address, timeout=10) as client:
            client.sendall(b"never answered")
            waitUntil(lambda: server.stats().bytesIn)
            started = time.monotonic()
            self.assertEqual(server.stop(grace=0.5), 0)
            self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(server.stop(), 0)

    def test_parentGoes(self) -> None:
        """
        When its standard input closes (the test process died), the server stops.
        """
        server = EchoServerProcess()
        self.addCleanup(server.stop)
        server._process.stdin.close()
        self.assertEqual(server.wait(), 0)

    def test_noReactorInstalled(self) -> None:
        """
        Loading the pytest plugin installs no reactor: pytest-twisted, or the
        test itself, chooses it.
        """
        result = subprocess.run(
            [sys.executable, "-c", "import sys, tcplab.testing.plugin; print('twisted.internet.reactor' in sys.modules)"],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.stdout.strip(), "False", result.stderr)


class TwistedClientTests(TestCase):
    """
    A trial test whose reactor runs in the test process talks to a server in
    its child process.
    """

    async def test_echoClient(self) -> None:
        """
        L{EchoClient} connects to C{server.endpoint}.
        """
        server = EchoServerProcess(framing="line", suffix="SB")
        self.addCleanup(server.stop)
        client = await EchoClient.connect(reactor, server.endpoint, framing="line")
        self.assertEqual(await client.request(b"hi"), b"hiSB")
        await client.close()

    async def test_ipv6(self) -> None:
        """
        On IPv6, C{endpoint} is a C{tcp:} client string with the address escaped.
        """
        server = EchoServerProcess(listen="tcp6:0:interface=\\:\\:1")
        self.addCleanup(server.stop)
        self.assertEqual(server.address, ("::1", server.port))
        self.assertEqual(server.endpoint, f"tcp:host=\\:\\:1:port={server.port}")
        client = await EchoClient.connect(reactor, server.endpoint)
        self.assertEqual(await client.request(b"v6"), b"v6")
        await client.close()
