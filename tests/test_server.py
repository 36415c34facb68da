"""
Tests for L{tcplab.server}: the echo protocols over in-memory transports.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcplab.framing import frame
from tcplab.server import (
    EchoServerFactory,
    LengthEchoProtocol,
    LineEchoProtocol,
    RawEchoProtocol,
)
from tests.streams import cutAt

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def serverFactory(**kwargs) -> EchoServerFactory:
    """
    An L{EchoServerFactory} on a fake clock, so no timer reaches the reactor.
    """
    return EchoServerFactory(reactor=Clock(), **kwargs)


class CountingTransport(StringTransport):
    """
    A L{StringTransport} that counts calls to C{write}.
    """

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def connect(factory: EchoServerFactory):
    """
    Build a protocol from C{factory} and connect it to a L{CountingTransport}.
    """
    protocol = factory.buildProtocol(PEER)
    transport = CountingTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    return protocol, transport


suffixes = st.sampled_from([b"", b"SB", "好".encode()])
#: Line replies are built from whole blocks; a suffix holding \r takes another path.
lineSuffixes = st.one_of(
    suffixes,
    st.sampled_from([b"\rS", b"S\rB"]),
    st.binary(max_size=4).filter(lambda suffix: b"\n" not in suffix and not suffix.endswith(b"\r")),
)
cuts = st.lists(st.integers(min_value=0, max_value=5000), max_size=25)


class RawEchoTests(SynchronousTestCase):
    """
    Tests for the raw framing (RFC 862 plus a suffix).
    """

    def test_lesson(self) -> None:
        """
        With suffix C{SB}, the lesson's C{你好} comes back as C{你好SB}.
        """
        protocol, transport = connect(serverFactory(suffix=b"SB"))
        self.assertIsInstance(protocol, RawEchoProtocol)
        protocol.dataReceived("你好".encode())
        self.assertEqual(transport.value().decode(), "你好SB")

    def test_pureEcho(self) -> None:
        """
        Without a suffix every chunk comes back unchanged, one write per read.
        """
        protocol, transport = connect(serverFactory())
        protocol.dataReceived(b"abc")
        protocol.dataReceived(b"\x00\xff")
        self.assertEqual(transport.value(), b"abc\x00\xff")
        self.assertEqual(transport.writes, 2)

    @given(st.lists(st.binary(min_size=1, max_size=50), max_size=20), suffixes)
    def test_everyChunkAnswered(self, chunks: list[bytes], suffix: bytes) -> None:
        """
        Each chunk is answered by itself plus the suffix, in order.
        """
        protocol, transport = connect(serverFactory(suffix=suffix))
        for chunk in chunks:
            protocol.dataReceived(chunk)
        self.assertEqual(transport.value(), b"".join(chunk + suffix for chunk in chunks))


class LineEchoTests(SynchronousTestCase):
    """
    Tests for the line framing.
    """

    def test_suffixBeforeEnding(self) -> None:
        """
        The suffix goes after the line and before the peer's own line ending.
        """
        protocol, transport = connect(serverFactory(framing="line", suffix=b"SB"))
        self.assertIsInstance(protocol, LineEchoProtocol)
        protocol.dataReceived(b"hi\nthere\r\n")
        self.assertEqual(transport.value(), b"hiSB\nthereSB\r\n")

    def test_waitsForNewline(self) -> None:
        """
        Nothing is answered until the line is complete.
        """
        protocol, transport = connect(serverFactory(framing="line"))
        protocol.dataReceived(b"par")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"tial\n")
        self.assertEqual(transport.value(), b"partial\n")

    def test_batched(self) -> None:
        """
        All the replies to one read go out in a single write.
        """
        protocol, transport = connect(serverFactory(framing="line", suffix=b"!"))
        protocol.dataReceived(b"a\nb\r\nc\n" * 100)
        self.assertEqual(transport.writes, 1)
        self.assertEqual(transport.value(), b"a!\nb!\r\nc!\n" * 100)

    def test_tooLong(self) -> None:
        """
        Lines before an overlong one are answered, then one error line is
        written and the connection closes.
        """
        protocol, transport = connect(serverFactory(framing="line", maxLength=8))
        with capturedLogs() as events:
            protocol.dataReceived(b"fine\n" + b"x" * 9 + b"\nlost\n")
        self.assertEqual(transport.value(), b"fine\nerror: line longer than 8 bytes; closing\n")
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertEqual([e["length"] for e in events if e.get("maxLength") == 8], [9])

    def test_unterminatedTooLong(self) -> None:
        """
        An unterminated line is refused as soon as it passes the limit; later
        data is ignored.
        """
        protocol, transport = connect(serverFactory(framing="line", maxLength=8))
        protocol.dataReceived(b"x" * 9)
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"more\n")
        self.assertEqual(transport.value(), b"error: line longer than 8 bytes; closing\n")

    @given(
        st.lists(
            # A \r just before the \n belongs to the ending, so no message ends in \r;
            # a \r elsewhere, even just before a \r\n ending's \r, is the message's.
            st.tuples(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
                      st.sampled_from([b"\n", b"\r\n"])).map(
                lambda pair: (pair[0].rstrip(b"\r") if pair[1] == b"\n" else pair[0], pair[1])
            ),
            max_size=20,
        ),
        lineSuffixes,
        cuts,
    )
    def test_anyChunking(self, lines: list[tuple[bytes, bytes]], suffix: bytes, offsets: list[int]) -> None:
        """
        However the stream is cut, every line is answered exactly once, in
        order, with the suffix and the line's own ending.
        """
        protocol, transport = connect(serverFactory(framing="line", suffix=suffix))
        stream = b"".join(line + ending for line, ending in lines)
        for chunk in cutAt(stream, offsets):
            protocol.dataReceived(chunk)
        self.assertEqual(transport.value(), b"".join(line + suffix + ending for line, ending in lines))


class LengthEchoTests(SynchronousTestCase):
    """
    Tests for the length-prefixed framing.
    """

    def test_suffixInsideFrame(self) -> None:
        """
        The reply is one frame whose payload is the payload plus the suffix.
        """
        protocol, transport = connect(serverFactory(framing="length", suffix=b"SB"))
        self.assertIsInstance(protocol, LengthEchoProtocol)
        protocol.dataReceived(frame("你好".encode()))
        self.assertEqual(transport.value(), frame("你好SB".encode()))

    def test_fixedSizeRecords(self) -> None:
        """
        A read of equal-length frames is answered in one write, frame by
        frame, with or without logging.
        """
        for logMessages in (False, True):
            protocol, transport = connect(serverFactory(framing="length", suffix=b"SB", logMessages=logMessages))
            with capturedLogs() as events:
                protocol.dataReceived(frame(b"abc") * 5 + frame(b"xyz")[:5])
                protocol.dataReceived(frame(b"xyz")[5:])
            self.assertEqual(transport.value(), frame(b"abcSB") * 5 + frame(b"xyzSB"))
            self.assertEqual(len([e for e in events if "text" in e]), 6 if logMessages else 0)

    def test_headerTooLong(self) -> None:
        """
        A header over the limit closes the connection at once, after answering
        the frames before it; nothing is written for the bad frame.
        """
        protocol, transport = connect(serverFactory(framing="length", maxLength=100))
        protocol.dataReceived(frame(b"ok") + b"\x00\x00\x01\x00")
        self.assertEqual(transport.value(), frame(b"ok"))
        self.assertTrue(transport.disconnecting)

    @given(
        st.lists(st.one_of(st.binary(max_size=200), st.sampled_from([b"abc", b"abc", b"xyz", b""])), max_size=30),
        suffixes,
        cuts,
    )
    def test_anyChunking(self, payloads: list[bytes], suffix: bytes, offsets: list[int]) -> None:
        """
        However the stream is cut, every frame is answered exactly once, in order.
        """
        protocol, transport = connect(serverFactory(framing="length", suffix=suffix))
        for chunk in cutAt(b"".join(frame(p) for p in payloads), offsets):
            protocol.dataReceived(chunk)
        self.assertEqual(transport.value(), b"".join(frame(p + suffix) for p in payloads))


class ConnectionTests(SynchronousTestCase):
    """
    Tests for what every framing shares: backpressure, half-close, logging.
    """

    def test_registersTransportAsProducer(self) -> None:
        """
        The protocol is its transport's streaming producer, and pausing it
        pauses the transport's reading.
        """
        for framing in ("raw", "line", "length"):
            protocol, transport = connect(serverFactory(framing=framing))
            self.assertIs(transport.producer, protocol)
            self.assertTrue(transport.streaming)
            protocol.pauseProducing()
            self.assertEqual(transport.producerState, "paused")
            protocol.resumeProducing()
            self.assertEqual(transport.producerState, "producing")

    def test_halfCloseAnswersPendingLine(self) -> None:
        """
        When the peer shuts down its write side, an unterminated last line is
        still answered, then the connection closes.
        """
        protocol, transport = connect(serverFactory(framing="line", suffix=b"SB"))
        self.assertTrue(IHalfCloseableProtocol.providedBy(protocol))
        protocol.dataReceived(b"one\ntw")
        protocol.readConnectionLost()
        self.assertEqual(transport.value(), b"oneSB\ntwSB\n")
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)

    def test_halfCloseMidFrame(self) -> None:
        """
        An incomplete frame at half-close is dropped with a warning; complete
        ones were already answered.
        """
        protocol, transport = connect(serverFactory(framing="length"))
        with capturedLogs() as events:
            protocol.dataReceived(frame(b"whole") + frame(b"partial")[:5])
            protocol.readConnectionLost()
        self.assertEqual(transport.value(), frame(b"whole"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e["dropped"] for e in events if "dropped" in e], [5])

    def test_logsConnection(self) -> None:
        """
        With C{logConnections}, each connection is logged in one line when it
        closes: the peer's address, how long it lasted, the bytes in and
        out and why it closed, each also a field of the event.
        """
        factory = serverFactory(logConnections=True)
        with capturedLogs() as events:
            protocol, transport = connect(factory)
            protocol.dataReceived(b"x" * 1500)
            factory.reactor.advance(1.25)
            protocol.connectionLost(Failure(ConnectionDone()))
        [event] = events
        self.assertEqual(
            formatEvent(event),
            "127.0.0.1:40000 disconnected after 1,250.0 ms, 1,500 B in, 1,500 B out: Connection was closed cleanly.",
        )
        self.assertEqual(
            (event["peer"], event["milliseconds"], event["bytesIn"], event["bytesOut"]),
            ("127.0.0.1:40000", 1250.0, 1500, 1500),
        )

    def test_connectionLogBudget(self) -> None:
        """
        At most C{logConnectionsPerSecond} connections are logged a second;
        the others are counted, and one line says how many once the second
        is over; stopping says it at once.
        """
        factory = serverFactory(logConnections=True, logConnectionsPerSecond=2)

        def serveOne() -> None:
            protocol, _ = connect(factory)
            protocol.connectionLost(Failure(ConnectionDone()))

        with capturedLogs() as events:
            for _ in range(5):
                serveOne()
            self.assertEqual(len(events), 2)
            factory.reactor.advance(1)
            serveOne()
            serveOne()
            serveOne()
            factory.stopFactory()
        lines = [formatEvent(e) for e in events]
        self.assertEqual(lines[2], "3 more connections closed not logged")
        self.assertEqual(events[2]["count"], 3)
        self.assertEqual(len([line for line in lines if "disconnected" in line]), 4)
        self.assertEqual(lines[-1], "1 more connection closed not logged")
        self.assertEqual(factory.reactor.getDelayedCalls(), [])

    def test_connectionLogUnlimited(self) -> None:
        """
        With C{logConnectionsPerSecond=0} every connection is logged.
        """
        factory = serverFactory(logConnections=True, logConnectionsPerSecond=0)
        with capturedLogs() as events:
            for _ in range(2000):
                protocol, _ = connect(factory)
                protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(events), 2000)

    def test_connectionsNotLoggedByDefault(self) -> None:
        """
        By default a connection served logs nothing, but it is counted.
        """
        factory = serverFactory()
        with capturedLogs() as events:
            protocol, transport = connect(factory)
            protocol.dataReceived(b"hello")
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(events, [])
        self.assertEqual(factory.stats(), (1, 0, 0, 5, 5))

    def test_refusalsLoggedByDefault(self) -> None:
        """
        A connection refused by a limit is logged even when connections are
        not, and counted as refused.
        """
        factory = serverFactory(framing="line", maxConnections=1)
        first, _ = connect(factory)
        with capturedLogs() as events:
            connect(factory)
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["refused 127.0.0.1:40000: server busy (1 connection); try again later"],
        )
        self.assertEqual((factory.served, factory.refused), (1, 1))

    def test_logMessages(self) -> None:
        """
        With C{logMessages}, each message is logged, decoded as UTF-8.
        """
        protocol, transport = connect(serverFactory(framing="line", logMessages=True))
        with capturedLogs() as events:
            protocol.dataReceived("你好\r\nbye\n".encode())
        self.assertEqual([e["text"] for e in events if "text" in e], ["你好", "bye"])


class EchoServerFactoryTests(SynchronousTestCase):
    """
    Tests for L{EchoServerFactory}.
    """

    def test_badSettings(self) -> None:
        """
        An unknown framing, a non-bytes suffix, a suffix that breaks the
        framing or an impossible limit is refused.
        """
        self.assertRaises(ValueError, EchoServerFactory, framing="xml")
        self.assertRaises(TypeError, EchoServerFactory, suffix="SB")
        self.assertRaises(ValueError, EchoServerFactory, framing="line", suffix=b"a\nb")
        self.assertRaises(ValueError, EchoServerFactory, maxLength=0)
        self.assertRaises(ValueError, EchoServerFactory, framing="length", maxLength=2**32)

    def test_tracksConnections(self) -> None:
        """
        Open connections are tracked until they are lost.
        """
        factory = serverFactory()
        protocol, _ = connect(factory)
        self.assertEqual(factory.connections, {protocol})
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.connections, set())
        self.assertEqual(factory.served, 1)

    def test_maxServed(self) -> None:
        """
        After C{maxServed} connections, later ones are refused, and
        C{whenServed} fires once the served ones are closed.
        """
        factory = serverFactory(maxServed=1)
        served = factory.whenServed()
        protocol, _ = connect(factory)
        self.assertIsNone(factory.buildProtocol(PEER))
        self.assertNoResult(served)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(served)
        self.successResultOf(factory.whenServed())

    def test_whenServedNeedsLimit(self) -> None:
        """
        C{whenServed} without C{maxServed} is an error, not a Deferred that
        never fires.
        """
        self.assertRaises(ValueError, serverFactory().whenServed)
