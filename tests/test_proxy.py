"""
Tests for L{tcplab.proxy}: connections that start with a PROXY header, as
HAProxy sends them with C{send-proxy} / C{send-proxy-v2}.
"""

from __future__ import annotations

import socket
import struct
import subprocess

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from tcplab import defaults
from tcplab.proxy import ProxyHeaderFactory
from tcplab.server import EchoServerFactory
from tests.serverprocess import ServerProcess
from tests.test_hardening import HalfCloseableTransport

PROXY = IPv4Address("TCP", "127.0.0.1", 50000)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(source: str, port: int, family: str = "TCP4") -> bytes:
    """
    @return: a PROXY v1 header for a client at C{source}:C{port}.
    """
    destination = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {source} {destination} {port} 8081\r\n".encode()


def v2(source: str, port: int) -> bytes:
    """
    @return: a PROXY v2 header (PROXY command, TCP over IPv4) for C{source}:C{port}.
    """
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 8081)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


def connect(
    factory: EchoServerFactory, clock: Clock, transportType: type[StringTransport] = HalfCloseableTransport
) -> tuple[object, StringTransport]:
    """
    Connect a PROXY-header wrapper around C{factory} to a transport from the proxy.
    """
    wrapper = ProxyHeaderFactory(factory, clock, headerTimeout=5)
    protocol = wrapper.buildProtocol(PROXY)
    transport = transportType(peerAddress=PROXY)
    protocol.makeConnection(transport)
    return protocol, transport


def messages(events: list[dict]) -> list[str]:
    return [formatEvent(event) for event in events]


class ProxyHeaderTests(SynchronousTestCase):
    """
    The echo sees the client the PROXY header names, from its first call on.
    """

    def test_v1ClientAddress(self) -> None:
        """
        After a v1 header, the echo's connection is made with the client's
        address: the log and the per-peer count use it, not the proxy's.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock, logConnections=True, maxPerPeer=10)
        with capturedLogs() as events:
            protocol, transport = connect(factory, clock)
            protocol.dataReceived(v1("192.0.2.7", 4242) + b"hello")
            self.assertEqual(factory._perPeer, {"192.0.2.7": 1})
            protocol.connectionLost(connectionDone)
        self.assertEqual(transport.value(), b"hello")
        self.assertIn("192.0.2.7:4242 disconnected after 0.0 ms, 5 B in, 5 B out: Connection was closed cleanly.", messages(events))

    def test_v2ClientAddress(self) -> None:
        """
        A v2 header delivered a byte at a time (a first read shorter than
        16 bytes, which Twisted's own wrapper gives up on) works as well.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock, maxPerPeer=10)
        protocol, transport = connect(factory, clock)
        for byte in v2("198.51.100.9", 5151) + b"hi":
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(transport.value(), b"hi")
        self.assertEqual(protocol.getPeer(), IPv4Address("TCP", "198.51.100.9", 5151))
        self.assertEqual(factory._perPeer, {"198.51.100.9": 1})

    def test_v1IPv6(self) -> None:
        """
        A TCP6 header gives an IPv6 client address.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        protocol, _ = connect(factory, clock)
        protocol.dataReceived(v1("2001:db8::5", 6000, "TCP6"))
        self.assertEqual(protocol.getPeer(), IPv6Address("TCP", "2001:db8::5", 6000))

    def test_perPeerLimitByClient(self) -> None:
        """
        C{maxPerPeer} counts the clients behind the proxy, each by its own
        address: two clients of one proxy are both served, a third
        connection of the same client is refused.
        """
        clock = Clock()
        factory = EchoServerFactory(framing="line", maxPerPeer=1, reactor=clock)
        first, firstTransport = connect(factory, clock)
        first.dataReceived(v1("192.0.2.1", 1000) + b"a\n")
        second, secondTransport = connect(factory, clock)
        second.dataReceived(v1("192.0.2.2", 1000) + b"b\n")
        third, thirdTransport = connect(factory, clock)
        with capturedLogs() as events:
            third.dataReceived(v1("192.0.2.1", 1001) + b"c\n")
        self.assertEqual((firstTransport.value(), secondTransport.value()), (b"a\n", b"b\n"))
        self.assertEqual(thirdTransport.value(), b"error: too many connections from your address (limit 1)\n")
        self.assertIn(
            "refused 192.0.2.1:1001: too many connections from your address (limit 1)", messages(events)
        )
        self.assertEqual((factory.served, factory.refused), (2, 1))

    def test_halfClose(self) -> None:
        """
        A client that shuts down its write side still gets its echo, then
        EOF: half-close is forwarded to the echo.
        """
        clock = Clock()
        factory = EchoServerFactory(framing="line", reactor=clock)
        protocol, transport = connect(factory, clock)
        protocol.dataReceived(v1("192.0.2.1", 1000) + b"last")
        protocol.readConnectionLost()
        self.assertEqual(transport.value(), b"last\n")
        self.assertTrue(transport.disconnecting)

    def test_noHeader(self) -> None:
        """
        A connection that does not start with a PROXY header is closed, and
        the log says why, with what it sent escaped.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        with capturedLogs() as events:
            protocol, transport = connect(factory, clock)
            protocol.dataReceived(b"GET /\x1b[2J HTTP/1.0\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        self.assertIn(
            "127.0.0.1:50000: no PROXY header, got 'GET /\\x1b[2J HTTP/1.0\\r\\n'; closing",
            messages(events),
        )
        self.assertEqual(factory.connections, set())

    def test_invalidV1(self) -> None:
        """
        A v1 header that does not parse is logged with the reason, escaped,
        and the connection closed; the echo never sees it.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        with capturedLogs() as events:
            protocol, transport = connect(factory, clock)
            protocol.dataReceived(b"PROXY SCTP \x07bad\r\n")
        self.assertTrue(transport.disconnecting)
        logged = " ".join(messages(events))
        self.assertIn("invalid PROXY v1 header (InvalidNetworkProtocol)", logged)
        self.assertIn("\\x07bad", logged)
        self.assertNotIn("\x07", logged)
        self.assertEqual((factory.served, factory.refused), (0, 0))

    def test_forgedAddress(self) -> None:
        """
        A v1 header's addresses are not checked by Twisted's parser: one that
        is not an IP address is refused, and its control characters reach
        the log escaped.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock, logConnections=True)
        with capturedLogs() as events:
            protocol, transport = connect(factory, clock)
            protocol.dataReceived(b"PROXY TCP4 1.2.3.4\x1b]0;owned\x07 127.0.0.1 1 2\r\n")
            protocol.connectionLost(connectionDone)
        logged = messages(events)
        self.assertTrue(transport.disconnecting)
        self.assertIn(
            "127.0.0.1:50000: invalid PROXY v1 header (bad address), "
            "got 'PROXY TCP4 1.2.3.4\\x1b]0;owned\\x07 127.0.0.1 1 2\\r\\n'; closing",
            logged,
        )
        self.assertFalse(any("\x1b" in line for line in logged))
        self.assertEqual(factory.connections, set())

    def test_badAddressOrPort(self) -> None:
        """
        A v1 address that is not UTF-8, or a port that is not a number or
        out of range, is a bad header with a reason, never a traceback.
        """
        for header, reason in [
            (b"PROXY TCP4 \xff 127.0.0.1 1 2\r\n", "(UnicodeDecodeError)"),
            (b"PROXY TCP4 192.0.2.1 127.0.0.1 abc 2\r\n", "(ValueError)"),
            (b"PROXY TCP4 192.0.2.1 127.0.0.1 70000 2\r\n", "(bad port)"),
        ]:
            clock = Clock()
            with capturedLogs() as events:
                protocol, transport = connect(EchoServerFactory(reactor=clock), clock)
                protocol.dataReceived(header)
            self.assertTrue(transport.disconnecting, header)
            self.assertIn(f"invalid PROXY v1 header {reason}", " ".join(messages(events)))

    def test_healthChecks(self) -> None:
        """
        HAProxy's health checks send C{PROXY UNKNOWN} (v1) or a v2 C{LOCAL}
        command, with no addresses: the connection is echoed, with the
        proxy's own address.
        """
        local = V2_SIGNATURE + b"\x20\x00\x00\x00"
        for header in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN anything\r\n", local):
            clock = Clock()
            protocol, transport = connect(EchoServerFactory(reactor=clock), clock)
            protocol.dataReceived(header + b"check")
            self.assertEqual(transport.value(), b"check", header)
            self.assertEqual(protocol.getPeer(), PROXY)

    def test_servedOnce(self) -> None:
        """
        With C{maxServed}, a connection after the last one is turned away by
        its client's address, without a traceback.
        """
        clock = Clock()
        factory = EchoServerFactory(maxServed=1, reactor=clock)
        first, _ = connect(factory, clock)
        first.dataReceived(v1("192.0.2.1", 1000))
        second, secondTransport = connect(factory, clock)
        with capturedLogs() as events:
            second.dataReceived(v1("192.0.2.2", 2000) + b"late")
        self.assertTrue(secondTransport.disconnecting)
        self.assertEqual(secondTransport.value(), b"")
        self.assertIn("refusing 192.0.2.2:2000: already served 1 connection", messages(events))
        second.connectionLost()

    def test_pendingBounded(self) -> None:
        """
        Connections waiting for their header hold no slot of the echo's
        limits, so their number has a bound of its own: past it, a new
        connection is closed at once.
        """
        clock = Clock()
        wrapper = ProxyHeaderFactory(EchoServerFactory(reactor=clock), clock, maxPending=2)
        for _ in range(2):
            wrapper.buildProtocol(PROXY).makeConnection(StringTransport(peerAddress=PROXY))
        with capturedLogs() as events:
            self.assertIsNone(wrapper.buildProtocol(PROXY))
        self.assertIn("127.0.0.1:50000: 2 connections already wait for their PROXY header; closing", messages(events))

    def test_headerTimeout(self) -> None:
        """
        A connection that does not complete its header in time is aborted
        and logged; it never took a slot.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        with capturedLogs() as events:
            protocol, transport = connect(factory, clock, StringTransport)
            protocol.dataReceived(b"PROXY TCP4 1.2")
            clock.advance(4.9)
            self.assertFalse(transport.disconnecting)
            clock.advance(0.1)
        self.assertIn("127.0.0.1:50000: no complete PROXY header within 5 s; closing", messages(events))
        self.assertEqual(factory.connections, set())

    def test_closedBeforeHeader(self) -> None:
        """
        A connection lost before its header is logged as such; the echo
        never sees it.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        with capturedLogs() as events:
            protocol, _ = connect(factory, clock)
            protocol.connectionLost()
        self.assertEqual(messages(events), ["127.0.0.1:50000 closed before sending a PROXY header"])
        self.assertFalse(clock.getDelayedCalls())


class ProxyListenerTests(SynchronousTestCase):
    """
    C{twist tcplab -l haproxy:tcp:...} with real sockets on 127.0.0.1.
    """

    def setUp(self) -> None:
        self.server = ServerProcess("--framing", "line", "--max-per-peer", "1", "--log-connections",
                                    listen="haproxy:tcp:0:interface=127.0.0.1")
        self.addCleanup(self.server.stop)

    def test_limitsAndLogsUseClientAddress(self) -> None:
        """
        Every log line of a proxied connection names the client, and the
        per-peer limit counts clients, not the proxy.
        """
        clients = []
        for header in (v1("192.0.2.10", 1111), v2("192.0.2.11", 2222), v1("192.0.2.10", 1112)):
            sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
            clients.append(sock)
            sock.sendall(header + b"ping\n")
        try:
            self.assertEqual(clients[0].recv(100), b"ping\n")
            self.assertEqual(clients[1].recv(100), b"ping\n")
            self.assertEqual(clients[2].recv(100), b"error: too many connections from your address (limit 1)\n")
        finally:
            for sock in clients:
                sock.close()
        self.server.waitForLog("192.0.2.11:2222 disconnected")
        self.server.waitForLog("192.0.2.10:1111 disconnected")
        log = self.server.log()
        self.assertIn("refused 192.0.2.10:1112: too many connections", log)
        self.assertIn("(TCP over IPv4, PROXY protocol; line framing)", log)
        self.assertNotRegex(log, r"connection from 127\.0\.0\.1")

    def test_plainConnectionLogged(self) -> None:
        """
        A client that connects straight to the listener, with no header, is
        closed and logged with the reason.
        """
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as sock:
            sock.sendall(b"hello\n" * 3)
            self.assertEqual(sock.recv(100), b"")
        self.server.waitForLog(r"no PROXY header, got 'hello\\nhello")


class ProxyOptionTests(SynchronousTestCase):
    """
    C{haproxy:} wraps plain stream listeners only.
    """

    def test_noTLS(self) -> None:
        """
        C{haproxy:ssl:} and C{haproxy:tls:} are usage errors saying why: the
        proxy sends its header in clear, before any TLS.
        """
        from twisted.python.usage import UsageError

        from tcplab.tap import Options

        for description in ("haproxy:ssl:0:privateKey=k.pem", "haproxy:tls:/tmp:port=0"):
            with self.assertRaises(UsageError) as caught:
                Options().parseOptions(["-l", description])
            self.assertIn("haproxy: cannot wrap", str(caught.exception))


class BacklogTests(SynchronousTestCase):
    """
    Every TCP and UNIX listener gets tcplab's backlog unless it names one.
    """

    def test_added(self) -> None:
        """
        C{backlog=} is added to TCP, TLS and UNIX listeners, also behind C{haproxy:}.
        """
        from tcplab.tap import withBacklog

        backlog = defaults.BACKLOG
        self.assertEqual(withBacklog("tcp:9000"), f"tcp:9000:backlog={backlog}")
        self.assertEqual(withBacklog("tcp6:9000:interface=\\:\\:1"), f"tcp6:9000:interface=\\:\\:1:backlog={backlog}")
        self.assertEqual(withBacklog("haproxy:tcp:9000"), f"haproxy:tcp:9000:backlog={backlog}")
        self.assertEqual(withBacklog("unix:/tmp/echo.sock"), f"unix:/tmp/echo.sock:backlog={backlog}")

    def test_namedInAnyForm(self) -> None:
        """
        A C{backlog=} key is found as Twisted parses it, not as text: a
        UNIX path holding C{backlog=} still gets one, and a trailing
        backslash (which would escape the colon added) is left alone.
        """
        from tcplab.tap import withBacklog

        self.assertEqual(
            withBacklog("unix:address=/tmp/backlog=1"), f"unix:address=/tmp/backlog=1:backlog={defaults.BACKLOG}"
        )
        self.assertEqual(withBacklog("unix:/tmp/s\\"), "unix:/tmp/s\\")

    def test_kept(self) -> None:
        """
        A backlog the user names is kept, and endpoints without a listen
        queue of their own (systemd) are left alone.
        """
        from tcplab.tap import withBacklog

        self.assertEqual(withBacklog("tcp:9000:backlog=5"), "tcp:9000:backlog=5")
        self.assertEqual(withBacklog("systemd:domain=INET:index=0"), "systemd:domain=INET:index=0")

    def test_listenQueue(self) -> None:
        """
        A real listener started from C{-l tcp:0:interface=127.0.0.1} has
        tcplab's backlog: the kernel reports it as the socket's queue limit.
        """
        from twisted.internet import reactor

        from tcplab.tap import listenerEndpoint

        port = None

        def listened(p: object) -> None:
            nonlocal port
            port = p

        listenerEndpoint(reactor, "tcp:0:interface=127.0.0.1").listen(EchoServerFactory()).addCallback(listened)
        self.assertIsNotNone(port)
        self.addCleanup(port.stopListening)
        limit = _listenQueueLimit(port.getHost().port)
        self.assertEqual(limit, min(defaults.BACKLOG, _somaxconn()))


def _somaxconn() -> int:
    with open("/proc/sys/net/core/somaxconn") as f:
        return int(f.read())


def _listenQueueLimit(port: int) -> int:
    # ss shows a listening socket's backlog limit as its Send-Q.
    output = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    fields = output.split()
    if not fields:
        raise AssertionError(f"port {port} is not listening")
    return int(fields[2])
