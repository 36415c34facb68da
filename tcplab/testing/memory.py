"""
In-memory connections for trial-style tests: a client protocol (an
L{EchoClient}, or code built on one) and a server factory's protocol (an
L{EchoServerFactory}'s, faults and all) joined by two L{StringTransport}s,
with a pump you flush and a L{Clock} for time.  Nothing touches a socket or
the reactor, and every run is the same.

    clock = Clock()
    server = InMemoryServer(EchoServerFactory(framing="line", suffix=b"SB", reactor=clock), clock)
    client = EchoClient(clock, framing="line")
    server.connect(client)
    reply = client.request(b"hi")
    server.flush()
    assert self.successResultOf(reply) == b"hiSB"

Twisted's own pumps are either private (C{twisted.test.iosim}) or run on the
global reactor (C{twisted.protocols.loopback.loopbackAsync}); this one is a
small loop over the public L{StringTransport}.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

#: The address the server side of an in-memory connection is at.
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8081)


class MemoryTransport(StringTransport):
    """
    A L{StringTransport} that can also shut down its write side, as a TCP
    transport can (C{loseWriteConnection}); it never refuses a
    C{resumeProducing} after a close.

    @ivar writeClosed: whether C{loseWriteConnection} was called.
    """

    writeClosed = False

    def __init__(self, hostAddress: IPv4Address, peerAddress: IPv4Address) -> None:
        super().__init__(hostAddress, peerAddress, lenient=True)

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


class MemoryConnection:
    """
    A server protocol and a client protocol connected in memory.

    Bytes written on either side stay in its transport until L{flush}, which
    hands them to the other side's C{dataReceived}, as one read, unless that
    side has paused its transport (as a protocol does to stop reading).  A
    side that calls C{loseConnection} is disconnected, both sides then
    getting C{connectionLost}, once what it wrote is delivered; one that
    calls C{loseWriteConnection} half-closes (the peer's C{readConnectionLost}
    if it implements L{IHalfCloseableProtocol}, else a full close); one that
    calls C{abortConnection} is disconnected at the next flush, after what it
    wrote before is delivered (like a reset behind its data), and what its
    peer wrote is lost.  No transport pauses its producer by itself: in
    memory, every buffer is big enough.

    @ivar server: the server's protocol.
    @ivar client: the client's protocol.
    @ivar serverTransport: the server's transport (its C{value()} is what
        the server wrote and the client has not been given yet).
    @ivar clientTransport: the client's transport.
    @ivar clock: the time both sides see, advanced by L{advance}.
    @ivar connected: whether the connection is still open.
    """

    def __init__(
        self,
        server: IProtocol,
        client: IProtocol,
        clock: Clock | None = None,
        clientAddress: IPv4Address | None = None,
        serverAddress: IPv4Address = SERVER_ADDRESS,
    ) -> None:
        if clientAddress is None:
            clientAddress = IPv4Address("TCP", "127.0.0.1", 40001)
        self.server = server
        self.client = client
        self.clock = Clock() if clock is None else clock
        self.serverTransport = MemoryTransport(serverAddress, clientAddress)
        self.clientTransport = MemoryTransport(clientAddress, serverAddress)
        self.connected = True
        self._halfClosed: set[MemoryTransport] = set()
        server.makeConnection(self.serverTransport)
        client.makeConnection(self.clientTransport)

    def flush(self) -> bool:
        """
        Deliver what each side has written, then what that makes them write,
        and so on until neither has anything left to send; run what the clock
        has due now (C{callLater(0, ...)}), but let no time pass.

        @return: whether anything was delivered or closed.
        """
        moved = False
        while self.connected:
            self.clock.advance(0)
            step = self._deliver(self.clientTransport, self.server, self.serverTransport)
            step = self._deliver(self.serverTransport, self.client, self.clientTransport) or step
            step = self._close() or step
            if not step:
                break
            moved = True
        return moved

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass, flushing at every moment something was due, so
        that each timer sees what was delivered before it.
        """
        advance(self.clock, seconds, self.flush)

    def _deliver(self, source: MemoryTransport, target: IProtocol, targetTransport: MemoryTransport) -> bool:
        data = source.value()
        # What a side wrote before it aborted is on its way; it receives nothing more.
        if not data or targetTransport.disconnected or targetTransport.producerState != "producing":
            return False
        source.clear()
        target.dataReceived(data)
        return True

    def _close(self) -> bool:
        sides = ((self.serverTransport, self.server, self.client), (self.clientTransport, self.client, self.server))
        for transport, protocol, peer in sides:
            if transport.disconnected:
                self._end({protocol: ConnectionAborted(), peer: ConnectionLost("Connection reset by peer")})
                return True
        for transport, protocol, peer in sides:
            if transport.value() or transport in self._halfClosed:
                continue
            if transport.disconnecting:
                self._end({protocol: ConnectionDone(), peer: ConnectionDone()})
                return True
            if transport.writeClosed:
                self._halfClosed.add(transport)
                if len(self._halfClosed) == 2 or not IHalfCloseableProtocol.providedBy(peer):
                    self._end({protocol: ConnectionDone(), peer: ConnectionDone()})
                    return True
                if IHalfCloseableProtocol.providedBy(protocol):
                    protocol.writeConnectionLost()
                peer.readConnectionLost()
                return True
        return False

    def _end(self, reasons: dict[IProtocol, Exception]) -> None:
        self.connected = False
        for transport in (self.serverTransport, self.clientTransport):
            transport.connected = False
            transport.disconnecting = True
            transport.clear()
            producer, transport.producer = transport.producer, None
            if producer is not None:
                producer.stopProducing()
        for protocol, reason in reasons.items():
            protocol.connectionLost(Failure(reason))


@implementer(IStreamClientEndpoint)
class _MemoryClientEndpoint:
    def __init__(self, server: InMemoryServer) -> None:
        self._server = server

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        client = protocolFactory.buildProtocol(self._server.nextClientAddress())
        assert client is not None
        self._server.connect(client)
        return succeed(client)


class InMemoryServer:
    """
    A server factory to connect client protocols to in memory, each over a
    L{MemoryConnection}, all on one clock.

    @ivar factory: builds the server side of each connection.
    @ivar clock: the time every connection sees (give the same clock to the
        factory, e.g. C{EchoServerFactory(reactor=clock)}, and to the client).
    @ivar connections: every connection made, in order.
    """

    def __init__(self, factory: Factory, clock: Clock | None = None) -> None:
        self.factory = factory
        self.clock = Clock() if clock is None else clock
        self.connections: list[MemoryConnection] = []
        self._clientPort = 40000

    def nextClientAddress(self) -> IPv4Address:
        """
        @return: the address the next client connects from.
        """
        return IPv4Address("TCP", "127.0.0.1", self._clientPort + 1)

    def connect(self, client: IProtocol) -> MemoryConnection:
        """
        Connect C{client} to a new protocol of the factory.  A factory that
        refuses the connection (its C{buildProtocol} returns L{None}) closes
        it at once, as a listening port does.

        @return: the connection.
        """
        address = self.nextClientAddress()
        self._clientPort += 1
        server = self.factory.buildProtocol(address)
        if server is None:
            server = _Refused()
        connection = MemoryConnection(server, client, self.clock, clientAddress=address)
        self.connections.append(connection)
        return connection

    def endpoint(self) -> IStreamClientEndpoint:
        """
        @return: a client endpoint that connects to this server, for code
            that takes one, such as C{EchoClient.connect(clock, endpoint)}.
        """
        return _MemoryClientEndpoint(self)

    def flush(self) -> bool:
        """
        L{MemoryConnection.flush} every connection until none moves.

        @return: whether anything moved.
        """
        moved = False
        while any([connection.flush() for connection in self.connections]):
            moved = True
        return moved

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass on every connection (see L{MemoryConnection.advance}).
        """
        advance(self.clock, seconds, self.flush)


class _Refused(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


def connectInMemory(factory: Factory, client: IProtocol, clock: Clock | None = None) -> MemoryConnection:
    """
    Connect C{client} to a protocol of C{factory} in memory.

    @param clock: the time both sides see; give the same one to the factory
        (C{EchoServerFactory(reactor=clock)}) and the client
        (C{EchoClient(clock)}).  A new L{Clock} if L{None}.
    @return: the connection: L{MemoryConnection.flush} it to move bytes,
        L{MemoryConnection.advance} it to let time pass.
    """
    return InMemoryServer(factory, clock).connect(client)


def advance(clock: Clock, seconds: float, flush: Callable[[], object]) -> None:
    """
    Advance C{clock} by C{seconds}, stopping at each delayed call due on the
    way, and call C{flush} before and after each stop.
    """
    end = clock.seconds() + seconds
    flush()
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= end]
        if not due:
            break
        _advanceTo(clock, max(min(due), clock.seconds()))
        flush()
    _advanceTo(clock, end)
    flush()


def _advanceTo(clock: Clock, when: float) -> None:
    step = when - clock.seconds()
    # Floating point: now + (when - now) may fall short of when by a hair.
    while clock.seconds() + step < when:
        step = math.nextafter(step, math.inf)
    clock.advance(step)
