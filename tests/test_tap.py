"""
Tests for L{tcplab.tap}: the twistd plugin's options and service.
"""

from __future__ import annotations

import errno
import io
import os
import sys

from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tcplab import defaults
from tcplab.server import EchoServerFactory
from tcplab.tap import ListenFailed, Options, buildService
from tcplab.udp import MAX_PACKET_SIZE, DatagramEcho
from tests.test_udp import FakeDatagramTransport

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class UDPMemoryReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} that also records C{listenUDP} calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: list[tuple] = []

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        self.udpPorts.append((port, protocol, interface, maxPacketSize))
        return _StoppablePort(IPv4Address("UDP", interface, port))


class _StoppablePort:
    def __init__(self, address: IPv4Address) -> None:
        self.address = address

    def getHost(self) -> IPv4Address:
        return self.address

    def stopListening(self) -> None:
        pass


class FailingReactor(MemoryReactor):
    """
    A reactor on which every TCP listen fails with C{errno}.
    """

    def __init__(self, code: int) -> None:
        super().__init__()
        self.code = code

    def listenTCP(self, port, factory, backlog=50, interface=""):
        raise CannotListenError(interface, port, OSError(self.code, os.strerror(self.code)))


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{Options}.
    """

    def test_defaults(self) -> None:
        """
        By default: raw echo, no suffix, on the lesson's address.
        """
        options = parse()
        self.assertEqual(options["listen"], [defaults.LISTEN])
        self.assertEqual(options["framing"], "raw")
        self.assertEqual(options["suffix"], b"")
        self.assertEqual(options["max-length"], defaults.MAX_LENGTH)
        self.assertIsNone(options["udp"])
        self.assertFalse(options["once"])
        self.assertFalse(buildService(options, MemoryReactorClock()).factory.logConnections)

    def test_values(self) -> None:
        """
        Every option is parsed into its final type; C{--listen} repeats.
        """
        options = parse(
            "--listen", "tcp:0:interface=127.0.0.1", "-l", "tcp6:0:interface=\\:\\:1",
            "--framing", "line", "--suffix", "好", "--max-length", "10",
            "--udp", "9000", "--once", "--log-messages", "--close-timeout", "2.5",
            "--proxy-header-timeout", "4", "--log-connections",
        )
        self.assertEqual(options["listen"], ["tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1"])
        self.assertEqual(options["framing"], "line")
        self.assertEqual(options["suffix"], "好".encode())
        self.assertEqual(options["max-length"], 10)
        self.assertEqual(options["udp"], 9000)
        self.assertTrue(options["once"])
        self.assertTrue(options["log-messages"])
        self.assertEqual((options["close-timeout"], options["proxy-header-timeout"]), (2.5, 4.0))
        factory = buildService(options, MemoryReactorClock()).factory
        self.assertEqual((factory.closeTimeout, factory.logConnections), (2.5, True))
        self.assertEqual(factory.logConnectionsPerSecond, defaults.LOG_CONNECTIONS_PER_SECOND)
        unlimited = parse("--log-connections", "--log-connections-per-second", "0")
        self.assertEqual(buildService(unlimited, MemoryReactorClock()).factory.logConnectionsPerSecond, 0)

    def test_badValues(self) -> None:
        """
        Bad values are one-line usage errors that say what was expected.
        """
        cases = {
            ("--udp", "70000"): "out of range",
            ("--udp", "-1"): "out of range",
            ("--framing", "xml"): "unknown framing",
            ("--max-length", "-5"): "--max-length: must be at least 1, got -5",
            ("--max-length", "lots"): "--max-length: invalid size 'lots': expected a whole number",
            ("--listen", "tcp:notaport"): "invalid endpoint",
            ("--listen", "carrier-pigeon:1"): "invalid endpoint",
            ("--listen", "tcp:99999"): "port 99999 is out of range (0-65535)",
            ("--framing", "length", "--suffix", "SB", "--max-length", str(2**32)): "at most",
            ("--framing", "line", "--suffix", "a\nb"): "--suffix: a line framing suffix cannot contain a newline",
            ("--framing", "line", "--suffix", "SB\r"): "--suffix: a line framing suffix cannot end in",
        }
        for argv, expected in cases.items():
            with self.assertRaises(UsageError, msg=argv) as caught:
                parse(*argv)
            message = str(caught.exception)
            self.assertIn(expected, message)
            self.assertNotIn("\n", message)


class BuildServiceTests(SynchronousTestCase):
    """
    Tests for L{buildService}.
    """

    def test_listensWithOneFactory(self) -> None:
        """
        Every C{--listen} endpoint serves one factory built from the options.
        """
        reactor = MemoryReactor()
        service = buildService(parse("-l", "tcp:0:interface=127.0.0.1", "-l", "tcp:0", "--framing", "line", "--suffix", "SB"), reactor)
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 2)
        factory = reactor.tcpServers[0][1]
        self.assertIsInstance(factory, EchoServerFactory)
        self.assertIs(reactor.tcpServers[1][1], factory)
        self.assertEqual((factory.framing, factory.suffix), ("line", b"SB"))
        self.assertEqual(reactor.tcpServers[0][3], "127.0.0.1")

    def test_defaultAddress(self) -> None:
        """
        Without C{--listen}, the server listens on 127.0.0.1:8081.
        """
        reactor = MemoryReactor()
        buildService(parse(), reactor).startService()
        [(port, _, backlog, interface)] = reactor.tcpServers
        self.assertEqual((interface, port, backlog), (defaults.HOST, defaults.PORT, defaults.BACKLOG))

    def test_udp(self) -> None:
        """
        C{--udp} adds a datagram echo that does not truncate large datagrams.
        """
        reactor = UDPMemoryReactor()
        buildService(parse("--udp", "9000", "--suffix", "SB"), reactor).startService()
        [(port, protocol, interface, maxPacketSize)] = reactor.udpPorts
        self.assertEqual((port, interface, maxPacketSize), (9000, "127.0.0.1", MAX_PACKET_SIZE))
        self.assertIsInstance(protocol, DatagramEcho)
        self.assertEqual(protocol.suffix, b"SB")

    def test_summaryOnStop(self) -> None:
        """
        Stopping logs one summary line: TCP connections and bytes, and the
        UDP echo's datagrams when there is one.
        """
        reactor = UDPMemoryReactor()
        service = buildService(parse("--udp", "9000", "--suffix", "SB"), reactor)
        service.startService()
        [(_, protocol, _, _)] = reactor.udpPorts
        protocol.transport = FakeDatagramTransport()
        protocol.datagramReceived(b"hi", ("127.0.0.1", 5000))
        with capturedLogs() as events:
            self.successResultOf(service.stopService())
        [summary] = [e["summary"] for e in events if "summary" in e]
        self.assertEqual(
            summary,
            "served 0 connections (0 refused, 0 open); 0 bytes in, 0 bytes out; "
            "UDP: 1 datagram; 2 bytes in, 4 bytes out",
        )

    def test_onceStopsReactor(self) -> None:
        """
        With C{--once}, the reactor stops when the one connection is closed.
        """
        reactor = MemoryReactorClock()
        service = buildService(parse("--once"), reactor)
        service.startService()
        factory = service.factory
        protocol = factory.buildProtocol(PEER)
        protocol.makeConnection(StringTransport(peerAddress=PEER))
        self.assertIsNone(factory.buildProtocol(PEER))
        self.assertFalse(reactor.hasStopped)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(reactor.hasStopped)

    def test_listenFailureIsOneLine(self) -> None:
        """
        A listen failure under twist (which starts the service from the
        running reactor) ends the process with one line naming the endpoint
        and the reason, not a traceback.
        """
        for code, reason in [(errno.EADDRINUSE, "Address already in use"), (errno.EACCES, "Permission denied")]:
            service = buildService(parse("-l", "tcp:80"), FailingReactor(code))
            with self.assertRaises(SystemExit) as caught:
                service.startService()
            self.assertEqual(str(caught.exception.code), f"tcplab: cannot listen on tcp:80: {reason}")

    def test_privilegedListenFailureIsAnException(self) -> None:
        """
        Under twistd, which listens in C{privilegedStartService}, a listen
        failure is an L{Exception} (twistd removes its pidfile and tells a
        daemonizing parent, which a L{SystemExit} would bypass), and at the
        top level it prints one line, not a traceback.
        """
        self.patch(sys, "excepthook", sys.excepthook)
        self.patch(sys, "stderr", io.StringIO())
        self.patch(sys, "__stderr__", None)
        service = buildService(parse("-l", "tcp:80"), FailingReactor(errno.EADDRINUSE))
        with self.assertRaises(ListenFailed) as caught:
            service.privilegedStartService()
        self.assertEqual(str(caught.exception), "cannot listen on tcp:80: Address already in use")
        sys.excepthook(ListenFailed, caught.exception, None)
        self.assertEqual(sys.stderr.getvalue(), "tcplab: cannot listen on tcp:80: Address already in use\n")
