"""
The TCP echo server: one protocol per framing, and the factory that builds them.

Every protocol works over any L{ITransport}: a TCP or UNIX socket, TLS, or a
L{twisted.internet.testing.StringTransport} in a unit test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from tcplab import defaults
from tcplab.address import formatAddress
from tcplab.framing import (
    HEADER,
    MAX_FRAME_PAYLOAD,
    MessageTooLong,
    checkFraming,
    decoderFor,
    stripLineEnding,
)


@implementer(IHalfCloseableProtocol, IPushProducer)
class EchoProtocol(Protocol, TimeoutMixin):
    """
    Write every message back to its sender, followed by C{suffix}.

    This base class runs the connection, whatever the framing:

      - backpressure: it is its transport's producer, so reading pauses while
        the transport's write buffer is full and a peer that never reads
        cannot grow it;
      - half-close: a peer that shuts down its write side still receives its
        whole echo, then EOF;
      - idle timeout, the message-size limit, and logging;
      - closing without losing replies: the write side is shut once every
        reply is flushed, and whatever the peer still sends is read and
        dropped until it closes, so that no reset destroys replies in flight;
        a peer that never closes is aborted after C{closeTimeout} seconds.

    A subclass names its C{framing} and builds the replies in L{replyTo}.

    @ivar suffix: bytes appended to every reply.
    @ivar maxLength: the longest message accepted (line and length framings).
    @ivar logMessages: log every message received.
    @ivar idleTimeout: seconds without traffic before the connection is
        closed; 0 for never.
    @ivar bytesIn: bytes received on this connection.
    @ivar bytesOut: bytes of replies written on this connection.
    """

    framing = "raw"
    closeTimeout = defaults.CLOSE_TIMEOUT
    drainQuiet = defaults.DRAIN_QUIET
    factory: EchoServerFactory | None = None
    _log = Logger()

    def __init__(
        self,
        suffix: bytes = b"",
        maxLength: int = defaults.MAX_LENGTH,
        logMessages: bool = False,
        idleTimeout: float = 0,
        clock: IReactorTime | None = None,
    ) -> None:
        self.suffix = suffix
        self.maxLength = maxLength
        self.logMessages = logMessages
        self.idleTimeout = idleTimeout
        self.clock = clock
        self.peer = "unknown peer"
        self.bytesIn = 0
        self.bytesOut = 0
        self._decoder = decoderFor(self.framing, maxLength)
        self._closing = False
        self._draining = False
        self._paused = False
        self._abortCall: IDelayedCall | None = None
        self._refusal: str | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = formatAddress(self.transport.getPeer())
        if self.clock is None and self.factory is not None:
            self.clock = self.factory.reactor
        if self.clock is not None:
            self.callLater = self.clock.callLater
            self.setTimeout(self.idleTimeout or None)
        self.transport.registerProducer(self, True)
        if self._refusal is not None:
            self._log.info("refused {peer}: {reason}", peer=self.peer, reason=self._refusal)
            self._closeWith(self._refusal)
            return
        self._log.info("connection from {peer}", peer=self.peer)
        if self.factory is not None:
            self.factory.connectionOpened(self)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.bytesIn += len(data)
        self.resetTimeout()
        try:
            messages = self._decoder.feed(data)
        except MessageTooLong as error:
            self._answer(error.messages)
            self._rejectTooLong(error)
            return
        self._answer(messages)

    def replyTo(self, messages: Sequence[bytes]) -> bytes:
        """
        Build the replies to C{messages}, all in one buffer.

        @param messages: complete messages as the framing's decoder returns
            them, in order.
        @return: the bytes to write back.
        """
        suffix = self.suffix
        return b"".join([message + suffix for message in messages])

    def notice(self, text: str) -> bytes:
        """
        @return: how to tell the peer C{text}, an error after which its
            connection is closed; nothing by default, since raw and length
            replies have no room for an out-of-band message.
        """
        return b""

    def refuse(self, reason: str) -> None:
        """
        Turn this connection away: once made, it is told C{reason} (where the
        framing allows) and closed, without echoing anything.
        """
        self._refusal = reason

    # IPushProducer: the transport pauses us while its write buffer is full.

    def pauseProducing(self) -> None:
        self._paused = True
        assert self.transport is not None
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        assert self.transport is not None
        self.transport.resumeProducing()
        if self._draining and not self._closing:
            # Quiet is measured again from now: the peer is reading again.
            self.setTimeout(self.drainQuiet)

    def stopProducing(self) -> None:
        assert self.transport is not None
        self.transport.stopProducing()

    def readConnectionLost(self) -> None:
        """
        The peer shut down its write side: answer what is still pending, let
        the transport flush every reply, then close.
        """
        assert self.transport is not None
        if self._closing:
            self.transport.loseConnection()
            return
        messages, dropped = self._decoder.finish()
        self._answer(messages)
        if dropped:
            self._log.warn(
                "{peer} closed its side mid-message; {dropped} bytes of an "
                "incomplete frame were dropped",
                peer=self.peer,
                dropped=dropped,
            )
        self._stopTimers()
        self._closing = True
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._abortLater()

    def writeConnectionLost(self) -> None:
        """
        Our write side is shut (see L{close}); keep reading until the peer closes.
        """

    def timeoutConnection(self) -> None:
        if self._draining:
            if not self._paused:
                self.close()
            return
        self._log.info(
            "{peer} idle for {seconds} seconds; closing", peer=self.peer, seconds=self.idleTimeout
        )
        self.close()

    def drain(self) -> None:
        """
        Finish this connection because the server is stopping: go on echoing
        while the peer sends, and close once it has been quiet for
        C{drainQuiet} seconds with every reply flushed.
        """
        self._draining = True
        if self.clock is None:
            self.close()
        else:
            self.setTimeout(self.drainQuiet)

    def close(self) -> None:
        """
        Close the connection once every reply written so far is delivered.
        """
        if self._closing:
            return
        self._closing = True
        self.setTimeout(None)
        assert self.transport is not None
        # A registered producer would hold the close back forever.
        self.transport.unregisterProducer()
        loseWriteConnection = getattr(self.transport, "loseWriteConnection", None)
        if loseWriteConnection is None:
            self.transport.loseConnection()
        else:
            # Shut our side once the replies are flushed, and keep reading
            # (dropping what comes) until the peer closes: closing with unread
            # input would reset the connection and could destroy the replies
            # the peer has not read yet.
            loseWriteConnection()
            self.transport.resumeProducing()
        self._abortLater()

    def abort(self) -> None:
        """
        Drop the connection now, whatever is still unsent.
        """
        assert self.transport is not None
        self._closing = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        self._stopTimers()
        if self._refusal is None:
            self._log.info(
                "{peer} disconnected: {reason}", peer=self.peer, reason=reason.getErrorMessage()
            )
        if self.factory is not None:
            self.factory.connectionClosed(self)

    def _answer(self, messages: Sequence[bytes]) -> None:
        if messages:
            if self.logMessages:
                self._logMessages(messages)
            assert self.transport is not None
            # Batching: one write carries the replies to every message of this read.
            reply = self.replyTo(messages)
            self.bytesOut += len(reply)
            self.transport.write(reply)

    def _abortLater(self) -> None:
        if self.clock is not None and self._abortCall is None:
            self._abortCall = self.clock.callLater(self.closeTimeout, self.abort)

    def _stopTimers(self) -> None:
        self.setTimeout(None)
        if self._abortCall is not None and self._abortCall.active():
            self._abortCall.cancel()

    def _logMessages(self, messages: Sequence[bytes]) -> None:
        for message in messages:
            self._log.info(
                "message from {peer}: {text}",
                peer=self.peer,
                text=message.decode("utf-8", "replace"),
            )

    def _rejectTooLong(self, error: MessageTooLong) -> None:
        self._log.warn(
            "{peer} sent a message of {length} bytes or more, over the "
            "{maxLength}-byte limit; closing the connection",
            peer=self.peer,
            length=error.length,
            maxLength=error.maxLength,
        )
        self._closeWith(f"line longer than {error.maxLength} bytes; closing")

    def _closeWith(self, text: str) -> None:
        notice = self.notice(text)
        if notice:
            assert self.transport is not None
            self.transport.write(notice)
        self.close()


class RawEchoProtocol(EchoProtocol):
    """
    As soon as any data is received, write it back followed by the suffix
    (RFC 862 when the suffix is empty).
    """

    framing = "raw"

    def dataReceived(self, data: bytes) -> None:
        # Hot path: each read is answered by exactly one write.
        if self._closing:
            return
        self.resetTimeout()
        if self.logMessages:
            self._logMessages([data])
        reply = data + self.suffix
        self.bytesIn += len(data)
        self.bytesOut += len(reply)
        assert self.transport is not None
        self.transport.write(reply)


class LineEchoProtocol(EchoProtocol):
    """
    Answer every C{\\n}-terminated line with C{line + suffix}, ended the way
    the peer ended it (C{\\r\\n} or C{\\n}).  A line over C{maxLength} bytes
    gets a one-line error, and the connection is closed.
    """

    framing = "line"

    def replyTo(self, lines: Sequence[bytes]) -> bytes:
        # Hot path: the common cases are a few C-level joins, not a Python
        # call per line.  A line still carries the \r of a \r\n ending.
        suffix = self.suffix
        if not suffix:
            return b"\n".join(lines) + b"\n"
        ending = suffix + b"\n"
        reply = ending.join(lines) + ending
        if b"\r" + ending not in reply:
            return reply
        crlf = suffix + b"\r\n"
        return b"".join(
            [line[:-1] + crlf if line.endswith(b"\r") else line + ending for line in lines]
        )

    def notice(self, text: str) -> bytes:
        return b"error: " + text.encode("utf-8") + b"\n"

    def _logMessages(self, lines: Sequence[bytes]) -> None:
        super()._logMessages([stripLineEnding(line) for line in lines])


class LengthEchoProtocol(EchoProtocol):
    """
    Answer every length-prefixed frame with a frame whose payload is
    C{payload + suffix}.  A header announcing more than C{maxLength} bytes
    closes the connection at once.
    """

    framing = "length"

    def replyTo(self, payloads: Sequence[bytes]) -> bytes:
        # Hot path: one header per reply, all joined into a single write.
        suffix, pack = self.suffix, HEADER.pack
        extra = len(suffix)
        return b"".join([pack(len(payload) + extra) + payload + suffix for payload in payloads])


class ServerStats(NamedTuple):
    """
    What a server has done so far.
    """

    served: int
    """Connections accepted."""
    refused: int
    """Connections turned away by a limit."""
    open: int
    """Connections open now."""
    bytesIn: int
    """Bytes received."""
    bytesOut: int
    """Bytes of replies written."""

    def __str__(self) -> str:
        return (
            f"served {self.served} connections ({self.refused} refused, {self.open} open); "
            f"{self.bytesIn} bytes in, {self.bytesOut} bytes out"
        )


class EchoServerFactory(Factory):
    """
    Builds the echo protocol for one framing, with one suffix and size limit.

    C{EchoServerFactory(framing="line", suffix=b"SB")} answers every line with
    the line plus C{SB}.  Embed it with any stream server endpoint::

        endpoint = TCP4ServerEndpoint(reactor, 8081, interface="127.0.0.1")
        endpoint.listen(EchoServerFactory(suffix=b"SB"))

    To stop without losing replies, stop listening, then wait for L{drain}.

    @ivar connections: the protocols of the connections now open.
    @ivar served: how many connections this factory has accepted.
    @ivar refused: how many connections a limit turned away.
    """

    protocols: dict[str, type[EchoProtocol]] = {
        "raw": RawEchoProtocol,
        "line": LineEchoProtocol,
        "length": LengthEchoProtocol,
    }
    _log = Logger()

    def __init__(
        self,
        framing: str = defaults.FRAMING,
        suffix: bytes = b"",
        maxLength: int = defaults.MAX_LENGTH,
        logMessages: bool = False,
        idleTimeout: float = defaults.IDLE_TIMEOUT,
        maxConnections: int = defaults.MAX_CONNECTIONS,
        maxPerPeer: int = defaults.MAX_PER_PEER,
        maxServed: int | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param framing: C{"raw"}, C{"line"} or C{"length"}.
        @param suffix: bytes appended to every reply.
        @param maxLength: the longest message accepted, in bytes (line and
            length framings); a longer one closes its connection.
        @param logMessages: log every message received.
        @param idleTimeout: seconds without traffic after which a connection
            is closed; 0 for never.
        @param maxConnections: connections open at once; a connection beyond
            that is closed at once (0: no limit).
        @param maxPerPeer: connections one peer address may hold open at once;
            0 for no limit.
        @param maxServed: accept this many connections in all, then refuse
            (close at once) every later one; L{whenServed} fires once they
            are all closed.  L{None}: no limit.
        @param reactor: the clock for timeouts; the global reactor if L{None}.
        @raise ValueError: for an unknown framing or an impossible limit.
        """
        checkFraming(framing)
        if not isinstance(suffix, bytes):
            raise TypeError(f"suffix must be bytes, not {type(suffix).__name__}")
        if not 1 <= maxLength <= MAX_FRAME_PAYLOAD - len(suffix):
            raise ValueError(f"maxLength must be between 1 and {MAX_FRAME_PAYLOAD - len(suffix)}")
        if maxServed is not None and maxServed < 1:
            raise ValueError("maxServed must be at least 1")
        if idleTimeout < 0 or maxConnections < 0 or maxPerPeer < 0:
            raise ValueError("timeouts and limits must not be negative")
        self.framing = framing
        self.protocol = self.protocols[framing]
        self.suffix = suffix
        self.maxLength = maxLength
        self.logMessages = logMessages
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.maxPerPeer = maxPerPeer
        self.maxServed = maxServed
        self._reactor = reactor
        self.connections: set[EchoProtocol] = set()
        self.served = 0
        self.refused = 0
        self._perPeer: Counter[str] = Counter()
        self._closedBytesIn = 0
        self._closedBytesOut = 0
        self._servedWaiters: list[Deferred[None]] = []
        self._closedWaiters: list[Deferred[None]] = []

    @property
    def reactor(self) -> IReactorTime:
        """
        The reactor given to the constructor, else the global one.
        """
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor  # type: ignore[assignment]
        return self._reactor  # type: ignore[return-value]

    def buildProtocol(self, addr: IAddress) -> EchoProtocol | None:  # type: ignore[override]
        if self.maxServed is not None and self.served >= self.maxServed:
            self._log.info(
                "refusing {peer}: already served {served} connection(s)",
                peer=formatAddress(addr),
                served=self.served,
            )
            return None
        protocol = self.protocol(
            suffix=self.suffix,
            maxLength=self.maxLength,
            logMessages=self.logMessages,
            idleTimeout=self.idleTimeout,
            clock=self._reactor,
        )
        protocol.factory = self
        reason = self._refusal(addr)
        if reason is None:
            self.served += 1
        else:
            self.refused += 1
            protocol.refuse(reason)
        return protocol

    def connectionOpened(self, protocol: EchoProtocol) -> None:
        """
        Called by each admitted protocol when its connection is made.
        """
        self.connections.add(protocol)
        assert protocol.transport is not None
        self._perPeer[_hostOf(protocol.transport.getPeer())] += 1

    def connectionClosed(self, protocol: EchoProtocol) -> None:
        """
        Called by each protocol when its connection is lost.
        """
        if protocol not in self.connections:
            return
        self.connections.remove(protocol)
        assert protocol.transport is not None
        host = _hostOf(protocol.transport.getPeer())
        self._perPeer[host] -= 1
        if not self._perPeer[host]:
            del self._perPeer[host]
        self._closedBytesIn += protocol.bytesIn
        self._closedBytesOut += protocol.bytesOut
        if not self.connections:
            waiters = self._closedWaiters
            if self._isServed():
                waiters += self._servedWaiters
                self._servedWaiters = []
            self._closedWaiters = []
            for waiter in waiters:
                waiter.callback(None)

    def stats(self) -> ServerStats:
        """
        @return: what this factory's connections have done so far.
        """
        return ServerStats(
            served=self.served,
            refused=self.refused,
            open=len(self.connections),
            bytesIn=self._closedBytesIn + sum(p.bytesIn for p in self.connections),
            bytesOut=self._closedBytesOut + sum(p.bytesOut for p in self.connections),
        )

    def drain(self, timeout: float = defaults.DRAIN_TIMEOUT) -> Deferred[ServerStats]:
        """
        Finish every open connection: each goes on echoing while its peer
        sends, and closes once the peer is quiet and every reply is flushed.
        Connections still open after C{timeout} seconds are aborted.

        Stop listening first, or new connections will keep it waiting.

        @return: a L{Deferred} that fires with the final L{ServerStats} once
            no connection is open.
        """
        for protocol in list(self.connections):
            protocol.drain()
        closed = self._whenNoConnections()
        if self.connections:
            deadline = self.reactor.callLater(timeout, self._abortAll)

            def cancelDeadline(result: object) -> object:
                if deadline.active():
                    deadline.cancel()
                return result

            closed.addBoth(cancelDeadline)
        return closed.addCallback(lambda _: self.stats())

    def whenServed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once C{maxServed} connections have
            been accepted and all of them are closed.
        @raise ValueError: if this factory has no C{maxServed}.
        """
        if self.maxServed is None:
            raise ValueError("whenServed needs maxServed")
        if self._isServed():
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._servedWaiters.append(waiter)
        return waiter

    def _whenNoConnections(self) -> Deferred[None]:
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def _abortAll(self) -> None:
        self._log.warn(
            "aborting {count} connection(s) still open after the drain timeout",
            count=len(self.connections),
        )
        for protocol in list(self.connections):
            protocol.abort()

    def _refusal(self, addr: IAddress) -> str | None:
        if self.maxConnections and len(self.connections) >= self.maxConnections:
            return f"server busy ({self.maxConnections} connections); try again later"
        if self.maxPerPeer and self._perPeer[_hostOf(addr)] >= self.maxPerPeer:
            return f"too many connections from your address (limit {self.maxPerPeer})"
        return None

    def _isServed(self) -> bool:
        return self.maxServed is not None and self.served >= self.maxServed and not self.connections

    def __repr__(self) -> str:
        return f"<EchoServerFactory framing={self.framing!r} suffix={self.suffix!r}>"


def _hostOf(address: IAddress) -> str:
    # The per-peer limit counts by host; UNIX sockets all count as one peer.
    return str(getattr(address, "host", "local"))
