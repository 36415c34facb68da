"""
The TCP echo server: one protocol per framing, and the factory that builds them.

Every protocol works over any L{ITransport}: a TCP or UNIX socket, TLS, or a
L{twisted.internet.testing.StringTransport} in a unit test.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
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


@implementer(IHalfCloseableProtocol)
class EchoProtocol(Protocol):
    """
    Write every message back to its sender, followed by C{suffix}.

    This base class runs the connection: backpressure (reading pauses while
    the transport's write buffer is full), half-close (a peer that shuts down
    its write side still receives its whole echo, then EOF), the message-size
    limit and logging.  A subclass names its C{framing} and builds the replies
    in L{replyTo}.

    @ivar suffix: bytes appended to every reply.
    @ivar maxLength: the longest message accepted (line and length framings).
    @ivar logMessages: log every message received.
    """

    framing = "raw"
    factory: EchoServerFactory | None = None
    _log = Logger()

    def __init__(
        self,
        suffix: bytes = b"",
        maxLength: int = defaults.MAX_LENGTH,
        logMessages: bool = False,
    ) -> None:
        self.suffix = suffix
        self.maxLength = maxLength
        self.logMessages = logMessages
        self.peer = "unknown peer"
        self._decoder = decoderFor(self.framing, maxLength)
        self._closing = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.peer = formatAddress(self.transport.getPeer())
        # Backpressure: the transport stops reading from the peer while its own
        # write buffer is full, so a peer that never reads cannot grow it.
        self.transport.registerProducer(self.transport, True)
        self._log.info("connection from {peer}", peer=self.peer)
        if self.factory is not None:
            self.factory.connectionOpened(self)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
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

    def tooLongNotice(self, error: MessageTooLong) -> bytes:
        """
        @return: what to write to a peer whose message is too long, just
            before its connection is closed; nothing by default.
        """
        return b""

    def readConnectionLost(self) -> None:
        """
        The peer shut down its write side: answer what is still pending, let
        the transport flush every reply, then close.
        """
        messages, dropped = self._decoder.finish()
        self._answer(messages)
        if dropped:
            self._log.warn(
                "{peer} closed its side mid-message; {dropped} bytes of an "
                "incomplete frame were dropped",
                peer=self.peer,
                dropped=dropped,
            )
        self.close()

    def writeConnectionLost(self) -> None:
        """
        Never called for TCP; nothing to do.
        """

    def close(self) -> None:
        """
        Close the connection once every reply written so far is sent.
        """
        if self._closing:
            return
        self._closing = True
        assert self.transport is not None
        # A registered producer would hold loseConnection back forever.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
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
            self.transport.write(self.replyTo(messages))

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
        notice = self.tooLongNotice(error)
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
        if self.logMessages:
            self._logMessages([data])
        assert self.transport is not None
        self.transport.write(data + self.suffix)


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

    def tooLongNotice(self, error: MessageTooLong) -> bytes:
        return b"error: line longer than %d bytes; closing\n" % (error.maxLength,)

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


class EchoServerFactory(Factory):
    """
    Builds the echo protocol for one framing, with one suffix and size limit.

    C{EchoServerFactory(framing="line", suffix=b"SB")} answers every line with
    the line plus C{SB}.  Embed it with any stream server endpoint::

        endpoint = TCP4ServerEndpoint(reactor, 8081, interface="127.0.0.1")
        endpoint.listen(EchoServerFactory(suffix=b"SB"))

    @ivar connections: the protocols of the connections now open.
    @ivar served: how many connections this factory has accepted.
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
        maxServed: int | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param framing: C{"raw"}, C{"line"} or C{"length"}.
        @param suffix: bytes appended to every reply.
        @param maxLength: the longest message accepted, in bytes (line and
            length framings); a longer one closes its connection.
        @param logMessages: log every message received.
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
        self.framing = framing
        self.protocol = self.protocols[framing]
        self.suffix = suffix
        self.maxLength = maxLength
        self.logMessages = logMessages
        self.maxServed = maxServed
        self._reactor = reactor
        self.connections: set[EchoProtocol] = set()
        self.served = 0
        self._servedWaiters: list[Deferred[None]] = []

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
        self.served += 1
        protocol = self.protocol(
            suffix=self.suffix, maxLength=self.maxLength, logMessages=self.logMessages
        )
        protocol.factory = self
        return protocol

    def connectionOpened(self, protocol: EchoProtocol) -> None:
        """
        Called by each protocol when its connection is made.
        """
        self.connections.add(protocol)

    def connectionClosed(self, protocol: EchoProtocol) -> None:
        """
        Called by each protocol when its connection is lost.
        """
        self.connections.discard(protocol)
        if self._isServed():
            waiters, self._servedWaiters = self._servedWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenServed(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once C{maxServed} connections have
            been accepted and all of them are closed.
        @raise ValueError: if this factory has no C{maxServed}.
        """
        if self.maxServed is None:
            raise ValueError("whenServed needs maxServed")
        waiter: Deferred[None] = Deferred()
        if self._isServed():
            waiter.callback(None)
        else:
            self._servedWaiters.append(waiter)
        return waiter

    def _isServed(self) -> bool:
        return self.maxServed is not None and self.served >= self.maxServed and not self.connections

    def __repr__(self) -> str:
        return f"<EchoServerFactory framing={self.framing!r} suffix={self.suffix!r}>"
