"""
Tests for L{tcplab.udp}.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcplab.udp import MAX_DATAGRAM, MAX_PACKET_SIZE, DatagramEcho

SENDER = ("127.0.0.1", 50000)


class FakeDatagramTransport:
    """
    Records datagrams written, or refuses them with C{error}.
    """

    def __init__(self, error: Exception | None = None) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.error = error

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((datagram, addr))


def echoWith(transport: FakeDatagramTransport, **kwargs) -> DatagramEcho:
    protocol = DatagramEcho(**kwargs)
    protocol.transport = transport
    return protocol


class DatagramEchoTests(SynchronousTestCase):
    """
    Tests for L{DatagramEcho} over a fake transport.
    """

    def test_answersSender(self) -> None:
        """
        Each datagram goes back to its sender with the suffix appended.
        """
        transport = FakeDatagramTransport()
        echoWith(transport, suffix=b"SB").datagramReceived("你好".encode(), SENDER)
        self.assertEqual(transport.written, [("你好SB".encode(), SENDER)])

    def test_unsendableReplyLogged(self) -> None:
        """
        A reply the transport refuses is logged and dropped, not raised.
        """
        protocol = echoWith(FakeDatagramTransport(MessageLengthError("too long")), suffix=b"SB")
        with capturedLogs() as events:
            protocol.datagramReceived(b"x" * MAX_DATAGRAM, SENDER)
        self.assertEqual([e["size"] for e in events if "size" in e], [MAX_DATAGRAM + 2])

    def test_logMessages(self) -> None:
        """
        With C{logMessages}, each datagram is logged with its sender.
        """
        protocol = echoWith(FakeDatagramTransport(), logMessages=True)
        with capturedLogs() as events:
            protocol.datagramReceived(b"hello", SENDER)
        self.assertEqual([(e["peer"], e["text"]) for e in events if "text" in e], [("127.0.0.1:50000", "hello")])


class Collector(DatagramProtocol):
    """
    Fires C{received} with the first datagram that arrives.
    """

    def __init__(self) -> None:
        self.received: Deferred[bytes] = Deferred()

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        self.received.callback(datagram)


class DatagramEchoSocketTests(TestCase):
    """
    L{DatagramEcho} over real UDP sockets on 127.0.0.1.
    """

    timeout = 10

    def test_largestDatagramEchoesWhole(self) -> None:
        """
        A datagram of the largest IPv4 UDP size comes back whole: the server
        listens with a packet size large enough not to truncate it.
        """
        server = reactor.listenUDP(0, DatagramEcho(), interface="127.0.0.1", maxPacketSize=MAX_PACKET_SIZE)
        self.addCleanup(server.stopListening)
        collector = Collector()
        client = reactor.listenUDP(0, collector, interface="127.0.0.1", maxPacketSize=MAX_PACKET_SIZE)
        self.addCleanup(client.stopListening)
        payload = bytes(range(256)) * (MAX_DATAGRAM // 256) + b"z" * (MAX_DATAGRAM % 256)
        client.write(payload, ("127.0.0.1", server.getHost().port))
        return collector.received.addCallback(self.assertEqual, payload)
