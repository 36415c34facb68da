"""
Tests for how the server protects itself and its clients, in memory: idle
timeouts, connection limits, closing without losing replies, and draining.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcplab import defaults
from tcplab.server import EchoProtocol, EchoServerFactory


def address(host: str = "127.0.0.1", port: int = 40000) -> IPv4Address:
    return IPv4Address("TCP", host, port)


class HalfCloseableTransport(StringTransport):
    """
    A L{StringTransport} that, like TCP, can shut its write side only.
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


def connect(factory: EchoServerFactory, peer: IPv4Address | None = None, transportType=StringTransport):
    peer = peer or address()
    protocol = factory.buildProtocol(peer)
    transport = transportType(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol: EchoProtocol) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


class IdleTimeoutTests(SynchronousTestCase):
    """
    A connection with no traffic for C{idleTimeout} seconds is closed.
    """

    def test_idleConnectionClosed(self) -> None:
        """
        Traffic postpones the timeout; silence for the whole timeout closes,
        within a tenth of the timeout (the factory checks all connections
        periodically rather than resetting a timer on every read).
        """
        clock = Clock()
        factory = EchoServerFactory(idleTimeout=30, reactor=clock)
        factory.doStart()
        protocol, transport = connect(factory)
        clock.pump([1] * 29)
        protocol.dataReceived(b"still here")
        clock.pump([1] * 29)
        self.assertFalse(transport.disconnecting)
        clock.pump([1] * 4)
        self.assertTrue(transport.disconnecting)

    def test_drainingRepliesAreTraffic(self) -> None:
        """
        A connection paused on a full write buffer, whose replies go on
        draining to a slow reader (the transport resumes it), is not idle;
        one whose peer reads nothing at all is.
        """
        clock = Clock()
        factory = EchoServerFactory(idleTimeout=30, reactor=clock)
        factory.doStart()
        draining, drainingTransport = connect(factory)
        stuck, stuckTransport = connect(factory, address(port=40001))
        draining.dataReceived(b"a large echo")
        stuck.dataReceived(b"a large echo")
        draining.pauseProducing()
        stuck.pauseProducing()
        for _ in range(5):
            clock.pump([1] * 20)
            draining.resumeProducing()
            draining.pauseProducing()
        self.assertFalse(drainingTransport.disconnecting)
        self.assertTrue(stuckTransport.disconnecting)

    def test_disabled(self) -> None:
        """
        An idle timeout of 0 never closes.
        """
        clock = Clock()
        factory = EchoServerFactory(idleTimeout=0, reactor=clock)
        factory.doStart()
        protocol, transport = connect(factory)
        clock.advance(10 * defaults.IDLE_TIMEOUT)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timersStop(self) -> None:
        """
        Nothing stays scheduled once the connection is lost and the factory
        has stopped listening.
        """
        clock = Clock()
        factory = EchoServerFactory(idleTimeout=30, reactor=clock)
        factory.doStart()
        protocol, _ = connect(factory)
        protocol.close()
        lose(protocol)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        factory.doStop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_notWatchedUntilListening(self) -> None:
        """
        A factory that is not listening (as in unit tests) schedules nothing.
        """
        clock = Clock()
        connect(EchoServerFactory(reactor=clock))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_oneCheckForAllConnections(self) -> None:
        """
        However many connections are open, one periodic check watches them.
        """
        clock = Clock()
        factory = EchoServerFactory(idleTimeout=30, reactor=clock)
        factory.doStart()
        for port in range(100):
            connect(factory, address(port=port))
        self.assertEqual(len(clock.getDelayedCalls()), 1)


class WrappingTransport(StringTransport):
    """
    A L{StringTransport} that, like Twisted's TLS transport (a
    C{ProtocolWrapper}), finds the attributes it lacks on the transport under
    it, C{loseWriteConnection} included.
    """

    underneathClosed = False

    def __getattr__(self, name: str) -> object:
        if name == "loseWriteConnection":
            return self._shutUnderneath
        raise AttributeError(name)

    def _shutUnderneath(self) -> None:
        self.underneathClosed = True


class CloseTests(SynchronousTestCase):
    """
    Closing delivers every reply, and never waits forever.
    """

    def test_wrapperClosesItself(self) -> None:
        """
        On a wrapping transport (TLS), closing asks the wrapper to close (TLS
        then sends its notice and its close), and never shuts the socket
        under it directly: that cut TLS connections before their handshake,
        so a client turned away over TLS never read why.
        """
        protocol, transport = connect(EchoServerFactory(framing="line", reactor=Clock()), transportType=WrappingTransport)
        protocol.close()
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.underneathClosed)

    def test_lingeringClose(self) -> None:
        """
        On a transport that can shut its write side, closing shuts it, keeps
        reading (dropping what arrives), and closes fully on the peer's EOF.
        """
        clock = Clock()
        protocol, transport = connect(EchoServerFactory(reactor=clock), transportType=HalfCloseableTransport)
        protocol.dataReceived(b"answered")
        protocol.pauseProducing()
        protocol.close()
        self.assertTrue(transport.writeClosed)
        self.assertFalse(transport.disconnecting)
        self.assertIsNone(transport.producer)
        # Reading resumes, even if it was paused, so that the peer's EOF is seen.
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"dropped")
        self.assertEqual(transport.value(), b"answered")
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)

    def test_peerHalfClosedWithRepliesUnsent(self) -> None:
        """
        A peer that shuts its write side down, on a transport whose queue
        cannot be seen (anything but plain TCP): the transport is asked to
        close once its replies are flushed, and the connection is aborted
        if it is not closed within C{closeTimeout} (a peer that never reads).
        """
        clock = Clock()
        protocol, transport = connect(EchoServerFactory(reactor=clock, closeTimeout=3))
        protocol.dataReceived(b"reply")
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        self.assertEqual([call.getTime() for call in clock.getDelayedCalls()], [3.0])
        clock.advance(3)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertTrue(protocol._closing)

    def test_tooLongKeepsItsRepliesInFlight(self) -> None:
        """
        After an overlong line, the replies to the lines before it may still
        be on their way to a peer that has not read them: the connection
        lingers for the full C{closeTimeout}, reading and dropping whatever
        the peer sends meanwhile, not the short C{refuseTimeout}.
        """
        clock = Clock()
        factory = EchoServerFactory(framing="line", maxLength=4, reactor=clock)
        protocol, transport = connect(factory, transportType=HalfCloseableTransport)
        protocol.dataReceived(b"ok\n" * 1000 + b"toolong\n")
        for _ in range(100):
            protocol.dataReceived(b"more pipelined input\n" * 100)
        clock.advance(defaults.CLOSE_TIMEOUT - 1)
        self.assertFalse(transport.disconnected)
        self.assertEqual(transport.value(), b"ok\n" * 1000 + b"error: line longer than 4 bytes; closing\n")
        clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_abortAfterCloseTimeout(self) -> None:
        """
        A peer that never lets the close finish is aborted after
        C{closeTimeout} seconds.
        """
        clock = Clock()
        protocol, transport = connect(EchoServerFactory(reactor=clock))
        protocol.close()
        clock.advance(defaults.CLOSE_TIMEOUT - 1)
        self.assertFalse(transport.disconnected)
        clock.advance(1)
        self.assertTrue(transport.disconnected)


class LimitTests(SynchronousTestCase):
    """
    C{maxConnections} and C{maxPerPeer} turn excess connections away.
    """

    def test_maxConnections(self) -> None:
        """
        A connection beyond the limit is closed at once, in line framing after
        one error line; admitted connections go on being served.
        """
        factory = EchoServerFactory(framing="line", maxConnections=2, reactor=Clock())
        first, firstTransport = connect(factory)
        connect(factory)
        refused, refusedTransport = connect(factory, address(port=40001))
        self.assertEqual(refusedTransport.value(), b"error: server busy (2 connections); try again later\n")
        self.assertTrue(refusedTransport.disconnecting)
        refused.dataReceived(b"ignored\n")
        self.assertEqual(len(refusedTransport.value().splitlines()), 1)
        first.dataReceived(b"hello\n")
        self.assertEqual(firstTransport.value(), b"hello\n")
        self.assertEqual((factory.stats().served, factory.stats().refused, factory.stats().open), (2, 1, 2))

    def test_refusedConnectionGoesSoon(self) -> None:
        """
        A refused connection gets C{refuseTimeout} seconds to read its error
        line, not the full C{closeTimeout}, and never holds a slot.
        """
        clock = Clock()
        factory = EchoServerFactory(framing="line", maxConnections=1, reactor=clock)
        connect(factory)
        _, transport = connect(factory, address(port=40001), transportType=HalfCloseableTransport)
        self.assertTrue(transport.writeClosed)
        clock.advance(EchoProtocol.refuseTimeout)
        self.assertTrue(transport.disconnected)
        self.assertEqual(factory.stats().open, 1)

    def test_closingReleasesItsSlot(self) -> None:
        """
        A connection the server is closing (here: idle) is served no more:
        its slot of C{maxConnections} and C{maxPerPeer} goes to the next
        connection at once, not after its close timeout; it still counts as
        open until it is gone.
        """
        clock = Clock()
        factory = EchoServerFactory(framing="line", maxConnections=1, maxPerPeer=1, idleTimeout=10, reactor=clock)
        factory.startFactory()
        self.addCleanup(factory.stopFactory)
        _, idleTransport = connect(factory, transportType=HalfCloseableTransport)
        clock.advance(11)
        self.assertTrue(idleTransport.writeClosed)
        self.assertFalse(idleTransport.disconnected)
        second, secondTransport = connect(factory, address(port=40001))
        second.dataReceived(b"served\n")
        self.assertEqual(secondTransport.value(), b"served\n")
        self.assertEqual((factory.stats().served, factory.stats().refused, factory.stats().open), (2, 0, 2))

    def test_halfClosedReleasesItsSlot(self) -> None:
        """
        A connection whose peer has shut down its write side has sent its
        last message: while its replies drain, its slot goes to the next
        connection.
        """
        clock = Clock()
        factory = EchoServerFactory(framing="line", maxConnections=1, reactor=clock)
        first, _ = connect(factory, transportType=HalfCloseableTransport)
        first.dataReceived(b"last\n")
        first.readConnectionLost()
        second, secondTransport = connect(factory, address(port=40001))
        second.dataReceived(b"next\n")
        self.assertEqual(secondTransport.value(), b"next\n")

    def test_openConnectionsCapped(self) -> None:
        """
        Closing connections give up their slots but stay open until their
        peers close: at twice C{maxConnections} open, new ones are refused
        even though no slot is held, so that closing ones cannot pile up.
        """
        clock = Clock()
        factory = EchoServerFactory(framing="line", maxConnections=1, idleTimeout=0, reactor=clock)
        for port in (40001, 40002):
            protocol, transport = connect(factory, address(port=port), transportType=HalfCloseableTransport)
            protocol.close()
            self.assertFalse(transport.disconnected)
        _, refusedTransport = connect(factory, address(port=40003))
        self.assertEqual(refusedTransport.value(), b"error: server busy (1 connection); try again later\n")
        self.assertEqual(factory.stats().open, 2)

    def test_closeTimeout(self) -> None:
        """
        C{closeTimeout} sets how long a closing connection may linger.
        """
        clock = Clock()
        protocol, transport = connect(EchoServerFactory(closeTimeout=3, reactor=clock))
        protocol.close()
        clock.advance(2.9)
        self.assertFalse(transport.disconnected)
        clock.advance(0.1)
        self.assertTrue(transport.disconnected)

    def test_rawRefusalSaysNothing(self) -> None:
        """
        In raw framing a refused connection is closed without a word.
        """
        factory = EchoServerFactory(maxConnections=1, reactor=Clock())
        connect(factory)
        _, transport = connect(factory)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_slotFreedOnClose(self) -> None:
        """
        When a connection closes, its slot is free again.
        """
        factory = EchoServerFactory(maxConnections=1, reactor=Clock())
        protocol, _ = connect(factory)
        lose(protocol)
        _, transport = connect(factory)
        self.assertFalse(transport.disconnecting)

    def test_maxPerPeer(self) -> None:
        """
        One address may hold at most C{maxPerPeer} connections; other
        addresses are unaffected.
        """
        factory = EchoServerFactory(framing="line", maxPerPeer=1, reactor=Clock())
        connect(factory, address("10.0.0.1", 1))
        _, refused = connect(factory, address("10.0.0.1", 2))
        _, other = connect(factory, address("10.0.0.2", 1))
        self.assertEqual(refused.value(), b"error: too many connections from your address (limit 1)\n")
        self.assertFalse(other.disconnecting)

    def test_perPeerCountsTheOpeningAddress(self) -> None:
        """
        A connection is counted against the address it opened from, and
        released from the same one, even if its transport later reports
        another peer (as a PROXY-protocol transport does once the header is
        read).
        """
        factory = EchoServerFactory(maxPerPeer=1, reactor=Clock())
        proxy, client = address("10.0.0.9", 1), address("192.0.2.7", 5)
        protocol, transport = connect(factory, proxy)
        transport.peerAddr = client
        lose(protocol)
        _, again = connect(factory, address("10.0.0.9", 2))
        self.assertFalse(again.disconnecting)
        self.assertEqual(factory._perPeer, {"10.0.0.9": 1})

    def test_noPerPeerCountWithoutTheLimit(self) -> None:
        """
        Without a per-peer limit no per-peer count is kept, and the
        connection limit still counts every connection open.
        """
        factory = EchoServerFactory(maxConnections=2, reactor=Clock())
        first, _ = connect(factory, address("10.0.0.1", 1))
        connect(factory, address("10.0.0.1", 2))
        _, refused = connect(factory, address("10.0.0.2", 1))
        self.assertEqual(factory._perPeer, {})
        self.assertTrue(refused.disconnecting)
        lose(first)
        _, again = connect(factory, address("10.0.0.2", 2))
        self.assertFalse(again.disconnecting)
        self.assertEqual((factory.served, factory.refused), (3, 1))

    def test_sharedLimitsRefuse(self) -> None:
        """
        Within its own limits, a factory with C{sharedLimits} (other
        processes' counts) serves only what they admit, and tells the peer
        which limit refused it.
        """
        shared = RecordingLimits(answers=["peer", "busy"])
        factory = EchoServerFactory(framing="line", maxConnections=5, maxPerPeer=2, reactor=Clock(), sharedLimits=shared)
        _, perPeer = connect(factory, address("10.0.0.1", 1))
        _, busy = connect(factory, address("10.0.0.1", 2))
        self.assertEqual(perPeer.value(), b"error: too many connections from your address (limit 2)\n")
        self.assertEqual(busy.value(), b"error: server busy (5 connections); try again later\n")
        self.assertEqual((factory.refused, shared.held), (2, []))

    def test_sharedLimitsCounted(self) -> None:
        """
        A connection served is counted in C{sharedLimits} by its host, and
        released from them when it closes.
        """
        shared = RecordingLimits(answers=[None])
        factory = EchoServerFactory(maxPerPeer=3, reactor=Clock(), sharedLimits=shared)
        protocol, _ = connect(factory, address("10.0.0.1", 1))
        self.assertEqual(shared.held, ["10.0.0.1"])
        lose(protocol)
        self.assertEqual(shared.held, [])

    def test_sharedLimitsCountedWithoutPerPeer(self) -> None:
        """
        Without C{maxPerPeer} a connection is counted in C{sharedLimits}
        without its host (no per-peer count is kept), and still released.
        """
        shared = RecordingLimits(answers=[None])
        factory = EchoServerFactory(reactor=Clock(), sharedLimits=shared)
        protocol, _ = connect(factory, address("10.0.0.1", 1))
        self.assertEqual(shared.held, [None])
        lose(protocol)
        self.assertEqual(shared.held, [])


class RecordingLimits:
    """
    A L{tcplab.server.SharedLimits} giving set answers and recording what it holds.
    """

    def __init__(self, answers: list[str | None]) -> None:
        self.answers = answers
        self.held: list[str | None] = []

    def acquire(self, host: str | None) -> str | None:
        answer = self.answers.pop(0)
        if answer is None:
            self.held.append(host)
        return answer

    def release(self, host: str | None) -> None:
        self.held.remove(host)


class DrainTests(SynchronousTestCase):
    """
    L{EchoServerFactory.drain} finishes every connection without losing replies.
    """

    def test_quietConnectionsClosed(self) -> None:
        """
        A connection quiet for C{drainQuiet} seconds is closed; one that keeps
        sending is still answered until it goes quiet.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        quiet, quietTransport = connect(factory)
        busy, busyTransport = connect(factory, address(port=40001))
        drained = factory.drain(timeout=10)
        clock.advance(EchoProtocol.drainQuiet / 2)
        busy.dataReceived(b"more")
        clock.advance(EchoProtocol.drainQuiet / 2)
        self.assertTrue(quietTransport.disconnecting)
        self.assertEqual(busyTransport.value(), b"more")
        self.assertFalse(busyTransport.disconnecting)
        clock.advance(EchoProtocol.drainQuiet)
        self.assertTrue(busyTransport.disconnecting)
        self.assertNoResult(drained)
        lose(quiet)
        lose(busy)
        stats = self.successResultOf(drained)
        self.assertEqual((stats.served, stats.open, stats.bytesIn, stats.bytesOut), (2, 0, 4, 4))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_pausedConnectionWaits(self) -> None:
        """
        A connection paused because its peer is not reading is not quiet: it
        is closed only after it resumes and then goes quiet.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        protocol, transport = connect(factory)
        protocol.pauseProducing()
        factory.drain(timeout=10)
        clock.advance(5 * EchoProtocol.drainQuiet)
        self.assertFalse(transport.disconnecting)
        protocol.resumeProducing()
        clock.advance(EchoProtocol.drainQuiet)
        self.assertTrue(transport.disconnecting)

    def test_abortAfterTimeout(self) -> None:
        """
        Connections still open after the drain timeout are aborted.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        protocol, transport = connect(factory)
        protocol.pauseProducing()
        drained = factory.drain(timeout=3)
        clock.advance(3)
        self.assertTrue(transport.disconnected)
        lose(protocol)
        self.assertEqual(self.successResultOf(drained).open, 0)

    def test_abortAll(self) -> None:
        """
        C{abortAll} drops every open connection at once (a second SIGTERM).
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        transports = [connect(factory, address(port=port))[1] for port in (1, 2)]
        factory.abortAll()
        self.assertEqual([t.disconnected for t in transports], [True, True])

    def test_nothingOpen(self) -> None:
        """
        With no connection open, draining is immediate.
        """
        self.assertEqual(self.successResultOf(EchoServerFactory(reactor=Clock()).drain()).open, 0)
