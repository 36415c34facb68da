"""
Tests for L{tcplab.faults}, in memory: every fault measured on a
L{StringTransport} with a L{Clock}, deterministically (tests/test_faults_net.py
measures them from plain sockets).
"""

from __future__ import annotations

from twisted.application.internet import UDPServer
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from tcplab.faults import (
    HOLD_LIMIT,
    Faults,
    FaultyDatagramProtocol,
    FaultyFactory,
    FaultyProtocol,
    _allSent,
    _ReplyCounter,
    applyFaults,
)
from tcplab.framing import encode
from tcplab.server import EchoServerFactory
from tcplab.tap import Options, buildService
from tcplab.udp import DatagramEcho
from tests.test_udp import FakeDatagramTransport

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
SENDER = ("127.0.0.1", 50000)


class WriteRecorder(StringTransport):
    """
    A L{StringTransport} that keeps every write apart, with the time it came.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(peerAddress=PEER)
        self.clock = clock
        self.writes: list[tuple[float, bytes]] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.writes.append((self.clock.seconds(), data))


def connect(faults: Faults, **options: object) -> tuple[FaultyProtocol, WriteRecorder, Clock, EchoServerFactory]:
    """
    Connect a faulty echo protocol to a recording transport.
    """
    clock = Clock()
    echo = EchoServerFactory(reactor=clock, **options)  # type: ignore[arg-type]
    protocol = FaultyFactory(echo, faults).buildProtocol(PEER)
    assert protocol is not None
    transport = WriteRecorder(clock)
    protocol.makeConnection(transport)
    return protocol, transport, clock, echo


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class FaultsTests(SynchronousTestCase):
    """
    Tests for L{Faults}, the description of what goes wrong.
    """

    def test_offByDefault(self) -> None:
        """
        No fault is set by default: neither streams nor datagrams are touched.
        """
        self.assertFalse(Faults().stream)
        self.assertFalse(Faults().datagram)
        self.assertEqual(str(Faults()), "no faults")

    def test_whatApplies(self) -> None:
        """
        Delays apply to both; chunks, closes and resets to streams; drops to datagrams.
        """
        self.assertEqual((Faults(delay=1).stream, Faults(delay=1).datagram), (True, True))
        self.assertEqual((Faults(chunk=1).stream, Faults(chunk=1).datagram), (True, False))
        self.assertEqual((Faults(closeAfter=0).stream, Faults(resetAfter=2).stream), (True, True))
        self.assertEqual((Faults(udpDrop=0.5).stream, Faults(udpDrop=0.5).datagram), (False, True))

    def test_invalid(self) -> None:
        """
        Impossible faults are refused with a message naming the field.
        """
        for faults, message in [
            ({"delay": -1}, "delay must be a finite number of seconds >= 0"),
            ({"jitter": float("inf")}, "jitter must be a finite number of seconds >= 0"),
            ({"chunk": 0}, "chunk must be at least 1"),
            ({"chunkDelay": 0.1}, "chunkDelay needs chunk"),
            ({"closeAfter": -1}, "closeAfter must be at least 0"),
            ({"closeAfter": 1, "resetAfter": 1}, "closeAfter and resetAfter cannot both be set"),
            ({"udpDrop": 1.5}, "udpDrop must be a fraction from 0 to 1"),
        ]:
            error = self.assertRaises(ValueError, Faults, **faults)
            self.assertEqual(str(error), message)

    def test_options(self) -> None:
        """
        Each fault is a C{twist tcplab} option.
        """
        config = parse(
            "--delay", "0.5", "--jitter", "0.25", "--chunk", "3", "--chunk-delay", "0.1",
            "--reset-after", "2", "--udp", "0", "--udp-drop", "0.3", "--seed", "7",
        )
        self.assertEqual(
            Faults.fromOptions(config),
            Faults(delay=0.5, jitter=0.25, chunk=3, chunkDelay=0.1, resetAfter=2, udpDrop=0.3, seed=7),
        )
        self.assertEqual(Faults.fromOptions(parse()), Faults())
        self.assertEqual(Faults.fromOptions({}), Faults())

    def test_badOptions(self) -> None:
        """
        A bad fault option is a usage error that names the option.
        """
        for argv, message in [
            (["--chunk-delay", "1"], "--chunk-delay needs --chunk"),
            (["--close-after", "1", "--reset-after", "1"], "--close-after and --reset-after cannot both be set"),
            (["--udp-drop", "0.5"], "--udp-drop needs --udp"),
            (["--udp", "0", "--udp-drop", "2"], "--udp-drop: fraction must be from 0 to 1, got 2"),
            (["--chunk", "0"], "--chunk: must be at least 1, got 0"),
            (["--delay", "soon"], "--delay: invalid duration 'soon': expected a number of seconds"),
        ]:
            error = self.assertRaises(UsageError, parse, *argv)
            self.assertEqual(str(error), message)

    def test_seededRandom(self) -> None:
        """
        With a seed, each key's random choices repeat; without, they differ.
        """
        seeded = Faults(seed=4)
        self.assertEqual(
            [seeded.randomFor("tcp", 1).random() for _ in range(2)],
            [seeded.randomFor("tcp", 1).random() for _ in range(2)],
        )
        self.assertNotEqual(seeded.randomFor("tcp", 1).random(), seeded.randomFor("tcp", 2).random())
        self.assertNotEqual(Faults().randomFor("tcp", 1).random(), Faults().randomFor("tcp", 1).random())


class DelayTests(SynchronousTestCase):
    """
    C{delay} and C{jitter}: each reply goes out late, in order.
    """

    def test_delay(self) -> None:
        """
        A reply goes out C{delay} seconds after the echo wrote it.
        """
        protocol, transport, clock, _ = connect(Faults(delay=0.3))
        protocol.dataReceived(b"hello")
        clock.advance(0.29)
        self.assertEqual(transport.value(), b"")
        clock.advance(0.01)
        self.assertEqual(transport.value(), b"hello")

    def test_eachReplyItsOwnDelay(self) -> None:
        """
        Replies written at different times go out at different times.
        """
        protocol, transport, clock, _ = connect(Faults(delay=1), suffix=b"SB")
        protocol.dataReceived(b"a")
        clock.advance(0.5)
        protocol.dataReceived(b"b")
        clock.advance(0.5)
        clock.advance(0.5)
        self.assertEqual(transport.writes, [(1.0, b"aSB"), (1.5, b"bSB")])

    def test_jitterWithinRangeAndInOrder(self) -> None:
        """
        Jitter adds up to C{jitter} seconds to each reply, and replies never
        overtake one another.
        """
        protocol, transport, clock, _ = connect(Faults(delay=0.1, jitter=0.5, seed=1), framing="line")
        sent = {}
        for index in range(50):
            message = b"%d\n" % index
            sent[message] = clock.seconds()
            protocol.dataReceived(message)
            clock.advance(0.01)
        for _ in range(100):
            clock.advance(0.01)
        self.assertEqual(transport.value(), b"".join(sent))
        lateness = [when - sent[data] for when, data in transport.writes]
        self.assertTrue(all(0.1 - 1e-9 <= late <= 0.6 + 0.01 for late in lateness), lateness)
        self.assertGreater(max(lateness) - min(lateness), 0.1)

    def test_seedRepeats(self) -> None:
        """
        With a seed, the same connection of another server gets the same delays.
        """

        def timeline() -> list[tuple[float, bytes]]:
            protocol, transport, clock, _ = connect(Faults(jitter=1, seed=9))
            for message in (b"a", b"b", b"c"):
                protocol.dataReceived(message)
            clock.pump([0.001] * 2000)
            return transport.writes

        self.assertEqual(timeline(), timeline())

    def test_backpressure(self) -> None:
        """
        While the fault layer holds more than L{HOLD_LIMIT} bytes, the echo
        is paused, so that a client that floods a delayed server cannot grow
        its memory; it resumes once the replies have gone out.
        """
        protocol, transport, clock, _ = connect(Faults(delay=1))
        protocol.dataReceived(b"x" * (HOLD_LIMIT // 2))
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"x" * HOLD_LIMIT)
        self.assertEqual(transport.producerState, "paused")
        clock.advance(1)
        self.assertEqual(len(transport.value()), HOLD_LIMIT * 3 // 2)
        self.assertEqual(transport.producerState, "producing")

    def test_backpressureWithTransport(self) -> None:
        """
        The echo resumes only when neither the transport's buffer nor the
        fault layer is full.
        """
        protocol, transport, clock, _ = connect(Faults(delay=1))
        gate = transport.producer
        gate.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        protocol.dataReceived(b"x" * (HOLD_LIMIT + 1))
        gate.resumeProducing()
        self.assertEqual(transport.producerState, "paused")
        clock.advance(1)
        self.assertEqual(transport.producerState, "producing")

    def test_closeWaitsForDelayedReplies(self) -> None:
        """
        A close (here, the peer half-closing) waits until the delayed replies
        have gone out.
        """
        protocol, transport, clock, _ = connect(Faults(delay=1))
        protocol.dataReceived(b"last")
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertEqual(transport.value(), b"last")
        self.assertTrue(transport.disconnecting)

    def test_drainDeliversDelayedReplies(self) -> None:
        """
        A delayed reply still goes out when the server drains, then the
        connection closes.
        """
        protocol, transport, clock, factory = connect(Faults(delay=1))
        protocol.dataReceived(b"late")
        stats = []
        factory.drain().addCallback(stats.append)
        clock.advance(0.5)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.5)
        self.assertEqual(transport.value(), b"late")
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.assertEqual(stats[0].bytesOut, 4)


class ChunkTests(SynchronousTestCase):
    """
    C{chunk} and C{chunkDelay}: replies go out in small pieces.
    """

    def test_pieces(self) -> None:
        """
        A reply goes out in pieces of at most C{chunk} bytes, C{chunkDelay} apart.
        """
        protocol, transport, clock, _ = connect(Faults(chunk=3, chunkDelay=0.1))
        protocol.dataReceived(b"abcdefgh")
        clock.pump([0.1] * 3)
        self.assertEqual(transport.writes, [(0.0, b"abc"), (0.1, b"def"), (0.2, b"gh")])

    def test_spacedAcrossReplies(self) -> None:
        """
        The first piece of a reply waits until C{chunkDelay} has passed since
        the last piece of the one before.
        """
        protocol, transport, clock, _ = connect(Faults(chunk=4, chunkDelay=1))
        protocol.dataReceived(b"ab")
        clock.advance(0.5)
        protocol.dataReceived(b"cd")
        clock.advance(0.5)
        clock.advance(2)
        protocol.dataReceived(b"ef")
        self.assertEqual(transport.writes, [(0.0, b"ab"), (1.0, b"cd"), (3.0, b"ef")])

    def test_noChunkDelay(self) -> None:
        """
        With no C{chunkDelay}, each piece goes out on a turn of its own.
        """
        protocol, transport, clock, _ = connect(Faults(chunk=1))
        protocol.dataReceived(b"abc")
        self.assertEqual(transport.value(), b"a")
        clock.advance(0)
        clock.advance(0)
        self.assertEqual([data for _, data in transport.writes], [b"a", b"b", b"c"])

    def test_delayThenPieces(self) -> None:
        """
        Faults compose: a delayed reply is then cut into pieces.
        """
        protocol, transport, clock, _ = connect(Faults(delay=1, chunk=2, chunkDelay=0.5), suffix=b"SB")
        protocol.dataReceived(b"hi")
        clock.pump([0.5] * 4)
        self.assertEqual(transport.writes, [(1.0, b"hi"), (1.5, b"SB")])

    def test_linesInPieces(self) -> None:
        """
        In line framing, the pieces cut across lines: the stream has no
        message boundaries.
        """
        protocol, transport, clock, _ = connect(Faults(chunk=4, chunkDelay=0.1), framing="line", suffix=b"!")
        protocol.dataReceived(b"one\ntwo\n")
        clock.pump([0.1] * 3)
        self.assertEqual([data for _, data in transport.writes], [b"one!", b"\ntwo", b"!\n"])


class CloseAndResetTests(SynchronousTestCase):
    """
    C{closeAfter} and C{resetAfter}.
    """

    def test_closeAfter(self) -> None:
        """
        After C{closeAfter} replies the connection closes cleanly, and later
        messages are not answered.
        """
        protocol, transport, clock, factory = connect(Faults(closeAfter=2))
        protocol.dataReceived(b"a")
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"b")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        protocol.dataReceived(b"c")
        self.assertEqual(transport.value(), b"ab")
        self.assertEqual(factory.stats().open, 1)

    def test_closeAfterCountsLines(self) -> None:
        """
        In line framing each line is a reply: a read of five lines gets three
        replies with C{closeAfter=3}.
        """
        protocol, transport, clock, _ = connect(Faults(closeAfter=3), framing="line", suffix=b"SB")
        protocol.dataReceived(b"1\n2\n3\n4\n5\n")
        self.assertEqual(transport.value(), b"1SB\n2SB\n3SB\n")
        self.assertTrue(transport.disconnecting)

    def test_closeAfterCountsFrames(self) -> None:
        """
        In length framing each frame is a reply.
        """
        protocol, transport, clock, _ = connect(Faults(closeAfter=2), framing="length")
        protocol.dataReceived(b"".join(encode("length", message) for message in (b"a", b"bb", b"ccc")))
        self.assertEqual(transport.value(), encode("length", b"a") + encode("length", b"bb"))
        self.assertTrue(transport.disconnecting)

    def test_closeAfterZero(self) -> None:
        """
        C{closeAfter=0} closes each connection as soon as it is made.
        """
        protocol, transport, clock, _ = connect(Faults(closeAfter=0))
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"a")
        self.assertEqual(transport.value(), b"")

    def test_closeAfterDelayed(self) -> None:
        """
        The close waits for the last reply's delay.
        """
        protocol, transport, clock, _ = connect(Faults(closeAfter=1, delay=1))
        protocol.dataReceived(b"a")
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertEqual(transport.value(), b"a")
        self.assertTrue(transport.disconnecting)

    def test_resetAfter(self) -> None:
        """
        After C{resetAfter} replies, once they have gone out, the connection
        is aborted, and nothing more is read.
        """
        protocol, transport, clock, _ = connect(Faults(resetAfter=1, chunk=1, chunkDelay=0.1))
        protocol.dataReceived(b"ab")
        protocol.dataReceived(b"c")
        self.assertFalse(transport.disconnected)
        clock.advance(0.1)
        self.assertEqual(transport.value(), b"ab")
        self.assertTrue(transport.disconnected)
        self.assertEqual(protocol.replies, 1)

    def test_resetAfterZero(self) -> None:
        """
        C{resetAfter=0} resets each connection as soon as it is made.
        """
        protocol, transport, clock, _ = connect(Faults(resetAfter=0))
        self.assertTrue(transport.disconnected)

    def test_resetIgnoresCloses(self) -> None:
        """
        Once a reset is decided, a close asked by the echo (the peer
        half-closed) does not turn it into a clean close.
        """
        protocol, transport, clock, _ = connect(Faults(resetAfter=1, delay=1))
        protocol.dataReceived(b"a")
        protocol.readConnectionLost()
        clock.advance(1)
        self.assertTrue(transport.disconnected)


class ReplyCounterTests(SynchronousTestCase):
    """
    Tests for L{_ReplyCounter}: where replies end in each framing.
    """

    def test_raw(self) -> None:
        """
        In raw framing every write is one reply.
        """
        self.assertEqual(_ReplyCounter("raw").cut(b"abc", 5), (1, 3))

    def test_lines(self) -> None:
        """
        In line framing a reply ends at each newline.
        """
        counter = _ReplyCounter("line")
        self.assertEqual(counter.cut(b"a\nb", 5), (1, 3))
        self.assertEqual(counter.cut(b"\nc\nd\n", 2), (2, 3))

    def test_framesAcrossWrites(self) -> None:
        """
        In length framing, a frame's header and payload may come in any pieces.
        """
        counter = _ReplyCounter("length")
        stream = encode("length", b"hello") + encode("length", b"") + encode("length", b"xy")
        counts = [counter.cut(stream[i : i + 1], 10)[0] for i in range(len(stream))]
        self.assertEqual(sum(counts), 3)
        self.assertEqual([i for i, n in enumerate(counts) if n], [8, 12, 18])


class FactoryTests(SynchronousTestCase):
    """
    Tests for L{FaultyFactory}, L{applyFaults} and the listeners.
    """

    def test_limitsStillApply(self) -> None:
        """
        The echo's limits count the wrapped connections: one over
        C{maxConnections} is refused, and told so after the delay.
        """
        clock = Clock()
        echo = EchoServerFactory(framing="line", maxConnections=1, reactor=clock)
        factory = FaultyFactory(echo, Faults(delay=0.5))
        transports = []
        for port in (1, 2):
            protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
            transports.append(StringTransport())
            protocol.makeConnection(transports[-1])
        self.assertEqual((echo.stats().served, echo.stats().refused), (1, 1))
        clock.advance(0.5)
        self.assertTrue(transports[1].value().startswith(b"error: server busy"))

    def test_refusedByWrappedFactory(self) -> None:
        """
        A connection the wrapped factory refuses (L{None}) is refused.
        """
        echo = EchoServerFactory(maxServed=1, reactor=Clock())
        factory = FaultyFactory(echo, Faults(delay=1))
        self.assertIsNotNone(factory.buildProtocol(PEER))
        echo.served = 1
        self.assertIsNone(factory.buildProtocol(PEER))

    def test_clockFromWrappedFactory(self) -> None:
        """
        The fault layer takes its clock from the echo factory.
        """
        clock = Clock()
        self.assertIs(FaultyFactory(EchoServerFactory(reactor=clock), Faults(delay=1)).clock, clock)

    def test_noFaultsNoLayer(self) -> None:
        """
        With no fault set, the plugin's listeners serve the echo factory
        itself: the code path is exactly the one without faults.
        """
        service = buildService(parse("--udp", "0"), MemoryReactorClock())
        listeners = list(service)
        self.assertIs(listeners[0].factory, service.factory)
        self.assertIs(listeners[1].args[1], service.datagramEcho)

    def test_faultsWrapEveryListener(self) -> None:
        """
        With faults, every stream listener's factory and the UDP protocol are wrapped.
        """
        reactor = MemoryReactorClock()
        config = parse("-l", "tcp:0", "-l", "unix:/tmp/x.sock", "--delay", "1", "--udp", "0", "--udp-drop", "0.5")
        service = buildService(config, reactor)
        streams = [child for child in service if not isinstance(child, UDPServer)]
        [udp] = [child for child in service if isinstance(child, UDPServer)]
        self.assertEqual(len(streams), 2)
        for child in streams:
            self.assertIsInstance(child.factory, FaultyFactory)
            self.assertIs(child.factory.wrappedFactory, service.factory)
            self.assertIs(child.factory.clock, reactor)
        self.assertIsInstance(udp.args[1], FaultyDatagramProtocol)
        self.assertIs(udp.args[1].wrapped, service.datagramEcho)

    def test_datagramFaultsOnlyWrapUDP(self) -> None:
        """
        A UDP-only fault leaves the stream listeners alone, and the reverse.
        """
        service = buildService(parse("--udp", "0", "--udp-drop", "0.1"), MemoryReactorClock())
        stream, udp = list(service)
        self.assertIs(stream.factory, service.factory)
        self.assertIsInstance(udp.args[1], FaultyDatagramProtocol)
        service = buildService(parse("--udp", "0", "--chunk", "1"), MemoryReactorClock())
        stream, udp = list(service)
        self.assertIsInstance(stream.factory, FaultyFactory)
        self.assertIs(udp.args[1], service.datagramEcho)

    def test_logged(self) -> None:
        """
        A server with faults says so in its log, once.
        """
        with capturedLogs() as events:
            buildService(parse("--delay", "0.5", "--seed", "3"), MemoryReactor())
            buildService(parse(), MemoryReactor())
        self.assertEqual(
            [formatEvent(event) for event in events if "faults" in formatEvent(event)],
            ["tcplab injects faults: --delay 0.5 --seed 3"],
        )

    def test_applyNothing(self) -> None:
        """
        L{applyFaults} with no fault changes nothing.
        """
        service = buildService(parse(), MemoryReactor())
        applyFaults(service, Faults(), MemoryReactor())  # type: ignore[arg-type]
        self.assertIs(list(service)[0].factory, service.factory)


class TwistedInternalsTests(SynchronousTestCase):
    """
    A reset waits for the connection's write buffer to drain, which it reads
    from Twisted's L{FileDescriptor} attributes; fail loudly if they change.
    """

    def test_bufferAttributes(self) -> None:
        """
        C{dataBuffer}, C{offset} and C{_tempDataLen} are where L{_allSent}
        looks for them.
        """
        self.assertTrue(issubclass(tcp.Server, FileDescriptor))
        descriptor = FileDescriptor(reactor=MemoryReactor())
        self.assertIn("_tempDataLen", vars(descriptor))
        self.assertTrue(hasattr(FileDescriptor, "dataBuffer"))
        self.assertEqual(descriptor.offset, 0)
        self.assertTrue(_allSent(descriptor))
        descriptor._tempDataLen = 1
        self.assertFalse(_allSent(descriptor))

    def test_memoryTransportAllSent(self) -> None:
        """
        A transport without a buffer of its own has always sent everything.
        """
        self.assertTrue(_allSent(StringTransport()))


class DatagramFaultTests(SynchronousTestCase):
    """
    Tests for L{FaultyDatagramProtocol}.
    """

    def faulty(self, faults: Faults) -> tuple[FaultyDatagramProtocol, FakeDatagramTransport, Clock]:
        clock = Clock()
        protocol = FaultyDatagramProtocol(DatagramEcho(suffix=b"!"), faults, clock)
        transport = FakeDatagramTransport()
        protocol.makeConnection(transport)
        return protocol, transport, clock

    def test_dropFraction(self) -> None:
        """
        About C{udpDrop} of the datagrams go unanswered; with a seed, the
        very same ones every time.
        """

        def answered() -> list[bytes]:
            protocol, transport, _ = self.faulty(Faults(udpDrop=0.25, seed=3))
            for index in range(1000):
                protocol.datagramReceived(b"%d" % index, SENDER)
            self.assertEqual(protocol.dropped + len(transport.written), 1000)
            return [datagram for datagram, _ in transport.written]

        first = answered()
        self.assertTrue(650 <= len(first) <= 850, len(first))
        self.assertEqual(answered(), first)

    def test_dropNoneOrAll(self) -> None:
        """
        0 drops nothing, 1 drops everything.
        """
        for fraction, expected in ((0.0, 10), (1.0, 0)):
            protocol, transport, _ = self.faulty(Faults(udpDrop=fraction, delay=fraction))
            for _ in range(10):
                protocol.datagramReceived(b"x", SENDER)
            self.assertEqual(len(transport.written), expected)

    def test_delay(self) -> None:
        """
        Replies go out C{delay} seconds late, in order.
        """
        protocol, transport, clock = self.faulty(Faults(delay=0.5, jitter=0.5, seed=1))
        for index in range(20):
            protocol.datagramReceived(b"%d" % index, SENDER)
        clock.advance(0.49)
        self.assertEqual(transport.written, [])
        clock.advance(0.52)
        self.assertEqual(transport.written, [(b"%d!" % index, SENDER) for index in range(20)])

    def test_holdLimit(self) -> None:
        """
        Delayed replies beyond the hold limit are dropped, not held.
        """
        protocol, transport, clock = self.faulty(Faults(delay=1))
        for _ in range(20):
            protocol.datagramReceived(b"x" * 60000, SENDER)
        clock.advance(1)
        self.assertEqual(len(transport.written), 17)
        self.assertEqual(protocol.dropped, 3)

    def test_stop(self) -> None:
        """
        Stopping stops the wrapped protocol and cancels delayed replies.
        """
        protocol, transport, clock = self.faulty(Faults(delay=1))
        protocol.datagramReceived(b"x", SENDER)
        protocol.doStop()
        self.assertIsNone(protocol.wrapped.transport)
        self.assertEqual(clock.getDelayedCalls(), [])
