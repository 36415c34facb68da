"""
The TCP echo server: one protocol per framing, and the factory that builds them.

Every protocol works over any L{ITransport}: a TCP or UNIX socket, TLS, or a
L{twisted.internet.testing.StringTransport} in a unit test.
"""

from __future__ import annotations

import typing
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tcplab import defaults
from tcplab.address import formatAddress
from tcplab.framing import (
    MAX_FRAME_PAYLOAD,
    MessageTooLong,
    checkFraming,
    checkSuffix,
    decoderFor,
    headers,
    stripLineEnding,
)
from tcplab.histogram import DurationHistogram
from tcplab.messagelog import LogBudget, MessageLog
from tcplab.text import plural


@implementer(IHalfCloseableProtocol, IPushProducer)
class EchoProtocol(Protocol):
    """
    Write every message back to its sender, followed by C{suffix}.

    This base class runs the connection, whatever the framing:

      - backpressure: it is its transport's producer, so reading pauses while
        the transport's write buffer is full and a peer that never reads
        cannot grow it;
      - half-close: a peer that shuts down its write side still receives its
        whole echo, then EOF;
      - the message-size limit and logging (the factory closes idle
        connections);
      - closing without losing replies: the write side is shut once every
        reply is flushed, and whatever the peer still sends is read and
        dropped until it closes, so that no reset destroys replies in flight;
        a peer that never closes is aborted after C{closeTimeout} seconds
        (C{refuseTimeout} for a connection turned away by a limit, which was
        sent nothing but its notice).

    A subclass names its C{framing} and builds the replies in L{replyTo}.

    @ivar suffix: bytes appended to every reply.
    @ivar maxLength: the longest message accepted (line and length framings).
    @ivar logMessages: log every message received (escaped and cut to
        C{logMessageBytes} bytes, at most C{logMessagesPerSecond} a second;
        see L{MessageLog}).
    @ivar logConnections: log every connection served, in one line when it
        closes: how long it lasted, the bytes in and out, and why it closed
        (a refused one is logged either way).
    @ivar clock: for the timers of closing and draining; none if L{None}.
    @ivar closeTimeout: seconds a closing connection gets to deliver its
        last replies (and its peer to close) before it is aborted.
    @ivar bytesIn: bytes received on this connection.
    @ivar bytesOut: bytes of replies written on this connection.
    @ivar messages: messages answered on this connection (in raw framing,
        reads answered): counted per read, by the batch, never per message.
    """

    framing = "raw"
    refuseTimeout = defaults.REFUSE_TIMEOUT
    drainQuiet = defaults.DRAIN_QUIET
    logMessageBytes = defaults.LOG_MESSAGE_BYTES
    factory: EchoServerFactory | None = None
    _log = Logger()
    # Made by the first message logged (see _getMessageLog).
    _messageLog: MessageLog | None = None

    def __init__(
        self,
        suffix: bytes = b"",
        maxLength: int = defaults.MAX_LENGTH,
        logMessages: bool = False,
        clock: IReactorTime | None = None,
        closeTimeout: float = defaults.CLOSE_TIMEOUT,
        logMessagesPerSecond: int = defaults.LOG_MESSAGES_PER_SECOND,
        logConnections: bool = False,
    ) -> None:
        self.suffix = suffix
        self.maxLength = maxLength
        self.logMessages = logMessages
        self.logConnections = logConnections
        self.logMessagesPerSecond = logMessagesPerSecond
        self.clock = clock
        self.closeTimeout = closeTimeout
        self.bytesIn = 0
        self.bytesOut = 0
        self.messages = 0
        self._decoder = decoderFor(self.framing, maxLength)
        # Every attribute is set here, always in this order: CPython then
        # shares one key table between all the protocols' dictionaries, which
        # an attribute first set later, in an order that depends on events,
        # would undo (about 0.7 KiB more per idle connection).
        self._direct = False
        self._closing = False
        self._draining = False
        self._paused = False
        self._timer: IDelayedCall | None = None
        self._refusal: str | None = None
        # Times the transport resumed reading: its write buffer drained, so
        # replies are flowing out even when nothing comes in.
        self._resumes = 0
        # What the idle check saw last (bytes in plus resumes), and when it changed.
        self._seenActivity = 0
        self._activeAt = 0.0
        # What the drain check saw last of bytesIn.
        self._seenBytesIn = 0
        # When the connection was made (clock seconds), for the connection
        # log and the factory's histogram of durations.
        self._connectedAt: float | None = None

    @property
    def peer(self) -> str:
        """
        The peer's address, for logs.
        """
        return formatAddress(self.transport.getPeer()) if self.transport else "unknown peer"

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.clock is None and self.factory is not None:
            self.clock = self.factory.reactor
        if self.clock is not None:
            self._activeAt = self.clock.seconds()
        self._direct = _canSendDirectly(self.transport)
        self.transport.registerProducer(self, True)
        if self._refusal is None and self.factory is not None:
            self._refusal = self.factory.admit(self)
        if self._refusal is not None:
            self._log.info("refused {peer}: {reason}", peer=self.peer, reason=self._refusal)
            # Nothing but the notice is in flight: a moment to read it is enough.
            self._closeWith(self._refusal, self.refuseTimeout)
            return
        if self.clock is not None:
            self._connectedAt = self._activeAt

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            # Read only so that the kernel does not reset the connection
            # under our last replies.
            return
        self.bytesIn += len(data)
        try:
            batch = self._takeBatch(data)
        except MessageTooLong as error:
            self._answer(error.messages)
            self._rejectTooLong(error)
            return
        if batch:
            self._answerBatch(batch)

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
        self._resumes += 1
        assert self.transport is not None
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        assert self.transport is not None
        self.transport.stopProducing()

    def readConnectionLost(self) -> None:
        """
        The peer shut down its write side: answer what is still pending, let
        the transport flush every reply, then close.
        """
        transport = self.transport
        assert transport is not None
        if self._closing:
            transport.loseConnection()
            return
        messages, dropped = self._decoder.finish()
        self._answer(messages)
        if dropped:
            self._log.warn(
                "{peer} closed its side mid-message; {droppedBytes} of an incomplete frame dropped",
                peer=self.peer,
                dropped=dropped,
                droppedBytes=plural(dropped, "byte"),
            )
        self._closing = True
        if self.factory is not None:
            # It has sent its last message: its slot goes to the next connection.
            self.factory.release(self)
        transport.unregisterProducer()
        if self._direct and not (transport.dataBuffer or transport._tempDataLen):
            # Every reply is with the kernel already, which delivers it
            # before the FIN: close now, in this reactor turn, as Twisted
            # closes a connection whose protocol does not half-close
            # (IFileDescriptor.connectionLost).  loseConnection() would wait
            # a turn for writability, and a lingering peer for the timer.
            transport.connectionLost(connectionDone)
            return
        transport.loseConnection()
        self._abortLater()

    def writeConnectionLost(self) -> None:
        """
        Our write side is shut (see L{close}); keep reading until the peer closes.
        """

    def checkIdle(self, now: float, timeout: float) -> None:
        """
        Close the connection if it has had no traffic for C{timeout} seconds:
        nothing received, and no replies drained from a full write buffer.
        The factory calls this periodically.
        """
        activity = self.bytesIn + self._resumes
        if activity != self._seenActivity:
            self._seenActivity, self._activeAt = activity, now
        elif now - self._activeAt >= timeout and not (self._closing or self._draining):
            self._log.info("{peer} idle for {seconds} seconds; closing", peer=self.peer, seconds=timeout)
            if self.factory is not None:
                self.factory.idleTimeouts += 1
            self.close()

    def drain(self) -> None:
        """
        Finish this connection because the server is stopping: go on echoing
        while the peer sends, and close once it has sent nothing for
        C{drainQuiet} seconds while not paused (so every reply is flushed or
        on its way).
        """
        if self._closing or self._draining:
            return
        self._draining = True
        if self.clock is None:
            self.close()
            return
        self._seenBytesIn = self.bytesIn
        self._timer = self.clock.callLater(self.drainQuiet, self._closeWhenQuiet)

    def _closeWhenQuiet(self) -> None:
        assert self.clock is not None
        self._timer = None
        if self.bytesIn == self._seenBytesIn and not self._paused:
            self.close()
            return
        self._seenBytesIn = self.bytesIn
        self._timer = self.clock.callLater(self.drainQuiet, self._closeWhenQuiet)

    def close(self, timeout: float | None = None) -> None:
        """
        Close the connection once every reply written so far is delivered.

        @param timeout: seconds before the connection is aborted if it has not
            closed by then; C{closeTimeout} if L{None}.
        """
        if self._closing:
            return
        self._closing = True
        self._stopTimer()
        if self.factory is not None:
            # Closing, it is served no more: its slot goes to the next connection.
            self.factory.release(self)
        assert self.transport is not None
        # A registered producer would hold the close back forever.
        self.transport.unregisterProducer()
        # Half-close only a transport that implements it itself: a wrapper
        # (Twisted's TLS) finds the TCP socket's loseWriteConnection through
        # ProtocolWrapper.__getattr__, which would shut TCP under TLS, before
        # the handshake, the notice and TLS's own close.
        if getattr(type(self.transport), "loseWriteConnection", None) is None:
            self.transport.loseConnection()
        else:
            # Shut our side once the replies are flushed, and keep reading
            # (dropping what comes) until the peer closes: closing with unread
            # input would reset the connection and could destroy the replies
            # the peer has not read yet.
            self.transport.loseWriteConnection()  # type: ignore[attr-defined]
            self.transport.resumeProducing()
        self._abortLater(timeout)

    def abort(self) -> None:
        """
        Drop the connection now, whatever is still unsent.
        """
        assert self.transport is not None
        self._closing = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        self._direct = False
        self._stopTimer()
        if self._messageLog is not None:
            self._messageLog.flush()
        if self.logConnections and self._refusal is None:
            self._logConnection(reason)
        if self.factory is not None:
            self.factory.connectionClosed(self)

    def _logConnection(self, reason: Failure) -> None:
        # One line per connection, when it ends (as HAProxy's TCP log does):
        # a log event costs about as much as the rest of a short
        # connection's life, so there is none when it starts.
        log = self.factory.connectionLog() if self.factory is not None else _ConnectionLog(self._log, self.clock, 0)
        if log.admit(1):
            log.write(self, reason)

    def _takeBatch(self, data: bytes) -> Sequence[bytes]:
        # What one read completes, as the framing answers it best: here the
        # list of complete messages.
        return self._decoder.feed(data)

    def _answerBatch(self, messages: Sequence[bytes]) -> None:
        self._answer(messages)

    def _answer(self, messages: Sequence[bytes]) -> None:
        if messages:
            self.messages += len(messages)
            if self.logMessages:
                self._logMessages(messages)
            # Batching: one write carries the replies to every message of this read.
            self._send(self.replyTo(messages))

    def _send(self, data: bytes) -> None:
        # Hot path.  Twisted's write() always buffers and sends on the next
        # reactor turn: two epoll_ctl calls and a wake-up per reply.  On a
        # plain TCP connection with nothing queued, send straight to the
        # socket, and queue through write() whatever it does not take, so
        # ordering, backpressure and closing work as usual.
        self.bytesOut += len(data)
        transport = self.transport
        assert transport is not None
        if not self._direct or transport.dataBuffer or transport._tempDataLen or transport.disconnecting:
            transport.write(data)
            return
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Let Twisted meet the error on its own path and close properly.
            transport.write(data)
            return
        if sent < len(data):
            transport.write(data[sent:])

    def _abortLater(self, timeout: float | None = None) -> None:
        self._stopTimer()
        if self.clock is not None:
            self._timer = self.clock.callLater(
                self.closeTimeout if timeout is None else timeout, self.abort
            )

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _getMessageLog(self) -> MessageLog:
        log = self._messageLog
        if log is None:
            log = self._messageLog = MessageLog(
                self._log, self.clock, self.logMessagesPerSecond, self.logMessageBytes, source=lambda: self.peer
            )
        return log

    def _logMessages(self, messages: Sequence[bytes]) -> None:
        log = self._getMessageLog()
        log.write(messages[: log.admit(len(messages))])

    def _rejectTooLong(self, error: MessageTooLong) -> None:
        if self.factory is not None:
            self.factory.tooLong += 1
        self._log.warn(
            "{peer} sent a message of {lengthBytes} or more, over the "
            "{maxLength}-byte limit; closing the connection",
            peer=self.peer,
            length=error.length,
            lengthBytes=plural(error.length, "byte"),
            maxLength=error.maxLength,
        )
        self._closeWith(f"line longer than {error.maxLength} bytes; closing")

    def _closeWith(self, text: str, timeout: float | None = None) -> None:
        # The peer is told why (if the framing has room), after every reply
        # already written, then the connection closes (see close).
        notice = self.notice(text)
        if notice:
            assert self.transport is not None
            self.transport.write(notice)
        self.close(timeout)


class _ConnectionLog(LogBudget):
    """
    The server's connection log (C{logConnections}): one line per
    connection, when it closes, within a budget of lines a second (see
    L{LogBudget}); 0 lines a second for no budget.
    """

    __slots__ = ()

    def admit(self, count: int) -> int:
        return count if not self._perInterval else super().admit(count)

    def write(self, protocol: EchoProtocol, reason: Failure) -> None:
        """
        Log that C{protocol}'s connection closed, for C{reason}: its peer,
        how long it lasted, its bytes in and out.
        """
        # The text after the peer is written here, in one field: each field
        # the format names costs the JSON observer a flattening pass.  The
        # numbers are fields of their own too.
        connectedAt = protocol._connectedAt
        milliseconds = None
        lasted = ""
        if connectedAt is not None and self._clock is not None:
            milliseconds = (self._clock.seconds() - connectedAt) * 1000
            lasted = f" after {milliseconds:,.1f} ms"
        why = reason.getErrorMessage()
        self._log.info(
            "{peer} {closed}",
            peer=protocol.peer,
            closed=f"disconnected{lasted}, {protocol.bytesIn:,} B in, {protocol.bytesOut:,} B out: {why}",
            milliseconds=milliseconds,
            bytesIn=protocol.bytesIn,
            bytesOut=protocol.bytesOut,
            reason=why,
        )

    def _report(self, count: int) -> None:
        self._log.info("{more} not logged", more=plural(count, "more connection closed", "more connections closed"), count=count)


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
        if self.logMessages:
            self._logMessages([data])
        self.bytesIn += len(data)
        self.messages += 1
        self._send(data + self.suffix)


class LineEchoProtocol(EchoProtocol):
    """
    Answer every C{\\n}-terminated line with C{line + suffix}, ended the way
    the peer ended it (C{\\r\\n} or C{\\n}).  A line over C{maxLength} bytes
    gets a one-line error, and the connection is closed.
    """

    framing = "line"

    # Hot path: the lines a read completes are taken and answered as one
    # block, with C-level bytes operations and no Python call per line.

    def _takeBatch(self, data: bytes) -> bytes:  # type: ignore[override]
        return self._decoder.feedBlock(data)  # type: ignore[union-attr]

    def _answerBatch(self, block: bytes) -> None:  # type: ignore[override]
        if self.logMessages:
            self._logBlock(block)
        reply = self.replyToBlock(block)
        suffix = len(self.suffix)
        if suffix:
            # Each line's reply is one suffix longer than the line: the
            # lengths count the lines, for nothing.
            self.messages += (len(reply) - len(block)) // suffix
        elif self.factory is not None and self.factory.metered:
            # Without a suffix only a count of the block's "\n" does: a
            # C-level pass over the block (about 0.3 ns a byte), so only when
            # the counts are read (EchoServerFactory.meter).
            self.messages += block.count(b"\n")
        self._send(reply)

    def replyToBlock(self, block: bytes) -> bytes:
        """
        @param block: complete lines, each followed by its C{\\n} (a C{\\r\\n}
            ending still has its C{\\r}).
        @return: the replies to every line of C{block}.
        """
        suffix = self.suffix
        if not suffix:
            return block
        reply = block.replace(b"\n", suffix + b"\n")
        if b"\r" not in block:  # (a one-byte search is far quicker than one for "\r\n")
            return reply
        # A line's message never ends in \r, and a suffix never holds \n nor
        # ends in \r (see checkSuffix), so "\r" + suffix + "\n" is always a
        # \r\n line whose suffix went inside its ending.
        return reply.replace(b"\r" + suffix + b"\n", suffix + b"\r\n")

    def replyTo(self, lines: Sequence[bytes]) -> bytes:
        return self.replyToBlock(b"\n".join(lines) + b"\n") if lines else b""

    def notice(self, text: str) -> bytes:
        return b"error: " + text.encode("utf-8") + b"\n"

    def _logMessages(self, lines: Sequence[bytes]) -> None:
        log = self._getMessageLog()
        log.write(map(stripLineEnding, lines[: log.admit(len(lines))]))

    def _logBlock(self, block: bytes) -> None:
        # Counting the lines is C-speed; only those within the budget are cut
        # out of the block (a flood of empty lines is never split).
        log = self._getMessageLog()
        logged = log.admit(block.count(b"\n"))
        if logged:
            log.write(map(stripLineEnding, block.split(b"\n", logged)[:logged]))


class LengthEchoProtocol(EchoProtocol):
    """
    Answer every length-prefixed frame with a frame whose payload is
    C{payload + suffix}.  A header announcing more than C{maxLength} bytes
    closes the connection at once.
    """

    framing = "length"

    def _answerBatch(self, payloads: Sequence[bytes]) -> None:
        length = self._decoder.uniformLength  # type: ignore[union-attr]
        if length is None or self.logMessages:
            self._answer(payloads)
            return
        # Hot path for fixed-size records: every frame of this read has one
        # length, so one header serves them all and one join lays them out.
        self.messages += len(payloads)
        suffix = self.suffix
        framed = headers(len(suffix))(length)
        self._send(framed + (suffix + framed).join(payloads) + suffix)

    def replyTo(self, payloads: Sequence[bytes]) -> bytes:
        # Hot path: header, payload, suffix for every frame, laid out with
        # C-level maps and slice assignments and joined into one buffer; no
        # Python-level call per frame.  Headers come from a shared cache.
        suffix = self.suffix
        parts = [suffix] * (3 * len(payloads))
        parts[0::3] = map(headers(len(suffix)), map(len, payloads))
        parts[1::3] = payloads
        return b"".join(parts)


class SharedLimits(typing.Protocol):
    """
    Connection limits counted across processes (L{tcplab.workers}).
    """

    def acquire(self, host: str | None) -> str | None:
        """
        Count one more connection from C{host} (L{None} unless C{maxPerPeer}
        is set), if the limits allow it.

        @return: L{None} if counted; else C{"busy"} (C{maxConnections}
            reached) or C{"peer"} (C{maxPerPeer} reached for C{host}).
        """

    def release(self, host: str | None) -> None:
        """
        Count one connection from C{host} less.
        """


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
            f"served {plural(self.served, 'connection')} "
            f"({self.refused} refused, {self.open} open); "
            f"{plural(self.bytesIn, 'byte')} in, {plural(self.bytesOut, 'byte')} out"
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
    @ivar refusedBy: connections turned away, by reason: C{"busy"}
        (C{maxConnections}), C{"peer"} (C{maxPerPeer}), C{"once"} (after
        C{maxServed}), and what wrappers count with L{countRefused}
        (C{"proxy-header"}, C{"proxy-busy"}).
    @ivar tooLong: connections closed for a line or frame over C{maxLength}.
    @ivar idleTimeouts: connections closed for idling C{idleTimeout} seconds.
    @ivar metered: whether L{meter} was called: the counts that cost
        something are kept too.
    @ivar durations: how long the connections served lasted, once L{meter}
        was called; L{None} before.
    """

    protocols: dict[str, type[EchoProtocol]] = {
        "raw": RawEchoProtocol,
        "line": LineEchoProtocol,
        "length": LengthEchoProtocol,
    }
    # Listening is logged by the plugin, with the address and its family.
    noisy = False
    _log = Logger()

    def __init__(
        self,
        framing: str = defaults.FRAMING,
        suffix: bytes = b"",
        maxLength: int = defaults.MAX_LENGTH,
        logMessages: bool = False,
        logMessagesPerSecond: int = defaults.LOG_MESSAGES_PER_SECOND,
        idleTimeout: float = defaults.IDLE_TIMEOUT,
        maxConnections: int = defaults.MAX_CONNECTIONS,
        maxPerPeer: int = defaults.MAX_PER_PEER,
        maxServed: int | None = None,
        closeTimeout: float = defaults.CLOSE_TIMEOUT,
        reactor: IReactorTime | None = None,
        logConnections: bool = False,
        logConnectionsPerSecond: int = defaults.LOG_CONNECTIONS_PER_SECOND,
        sharedLimits: SharedLimits | None = None,
    ) -> None:
        """
        @param framing: C{"raw"}, C{"line"} or C{"length"}.
        @param suffix: bytes appended to every reply.
        @param maxLength: the longest message accepted, in bytes (line and
            length framings); a longer one closes its connection.
        @param logMessages: log every message received, escaped and cut to
            C{defaults.LOG_MESSAGE_BYTES} bytes.
        @param logMessagesPerSecond: with C{logMessages}, messages logged a
            second at most per connection; each second over the budget ends
            in one line saying how many more were not logged.
        @param logConnections: log every connection served, in one line when
            it closes ("PEER disconnected after 1.2 ms, 64 B in, 64 B out:
            REASON").  Off by default: a log event costs about as much as
            the rest of a short connection's life.  Refused connections,
            errors and idle closes are logged either way, and L{stats}
            counts every connection.
        @param logConnectionsPerSecond: with C{logConnections}, connections
            logged a second at most (0: no limit); each second over the
            budget ends in one line saying how many more were not logged.
        @param idleTimeout: seconds without traffic after which a connection
            is closed; 0 for never.
        @param maxConnections: connections open at once; a connection beyond
            that is closed at once (0: no limit).
        @param maxPerPeer: connections one peer address may hold open at once;
            0 for no limit.
        @param maxServed: accept this many connections in all, then refuse
            (close at once) every later one; L{whenServed} fires once they
            are all closed.  L{None}: no limit.
        @param closeTimeout: seconds a connection the server closes (idle,
            overlong message, drain) gets to take its last replies and close
            its side before it is aborted.  A closing connection no longer
            counts against C{maxConnections} or C{maxPerPeer}: it is served
            no more, and it is gone within this time.
        @param reactor: the clock for timeouts; the global reactor if L{None}.
        @param sharedLimits: C{maxConnections} and C{maxPerPeer} as other
            processes count them too (L{tcplab.workers}): a connection within
            this factory's own counts must be admitted by them as well.
        @raise ValueError: for an unknown framing, a suffix that breaks it
            (see L{checkSuffix}), or an impossible limit.
        """
        checkFraming(framing)
        if not isinstance(suffix, bytes):
            raise TypeError(f"suffix must be bytes, not {type(suffix).__name__}")
        checkSuffix(framing, suffix)
        if not 1 <= maxLength <= MAX_FRAME_PAYLOAD - len(suffix):
            raise ValueError(f"maxLength must be between 1 and {MAX_FRAME_PAYLOAD - len(suffix)}")
        if maxServed is not None and maxServed < 1:
            raise ValueError("maxServed must be at least 1")
        if idleTimeout < 0 or maxConnections < 0 or maxPerPeer < 0 or closeTimeout < 0:
            raise ValueError("timeouts and limits must not be negative")
        self.framing = framing
        self.protocol = self.protocols[framing]
        self.suffix = suffix
        self.maxLength = maxLength
        self.logMessages = logMessages
        if logMessagesPerSecond < 0:
            raise ValueError("logMessagesPerSecond must not be negative")
        self.logMessagesPerSecond = logMessagesPerSecond
        self.logConnections = logConnections
        if logConnectionsPerSecond < 0:
            raise ValueError("logConnectionsPerSecond must not be negative")
        self.logConnectionsPerSecond = logConnectionsPerSecond
        self._connectionLog: _ConnectionLog | None = None
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
        self.maxPerPeer = maxPerPeer
        self.maxServed = maxServed
        self.closeTimeout = closeTimeout
        self._reactor = reactor
        self.sharedLimits = sharedLimits
        self.connections: set[EchoProtocol] = set()
        self.served = 0
        self.refused = 0
        self.refusedBy: dict[str, int] = {}
        self.tooLong = 0
        self.idleTimeouts = 0
        self.metered = False
        self.durations: DurationHistogram | None = None
        self._perPeer: Counter[str] = Counter()
        # The peer host of each connection that holds a slot (open and not
        # closing), as counted when it was admitted; None when no per-peer
        # limit is set (no count is kept then).
        self._hosts: dict[EchoProtocol, str | None] = {}
        self._closedBytesIn = 0
        self._closedBytesOut = 0
        self._closedMessages = 0
        self._servedWaiters: list[Deferred[None]] = []
        self._closedWaiters: list[Deferred[None]] = []
        self._idleSweep: LoopingCall | None = None

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
            self.countRefused("once")
            self._log.info(
                "refusing {peer}: already served {served}",
                peer=formatAddress(addr),
                served=plural(self.served, "connection"),
            )
            return None
        protocol = self.protocol(
            suffix=self.suffix,
            maxLength=self.maxLength,
            logMessages=self.logMessages,
            clock=self._reactor,
            closeTimeout=self.closeTimeout,
            logMessagesPerSecond=self.logMessagesPerSecond,
            logConnections=self.logConnections,
        )
        protocol.factory = self
        return protocol

    def connectionLog(self) -> _ConnectionLog:
        """
        @return: the log of the connections served (C{logConnections}),
            with its budget of lines a second.
        """
        if self._connectionLog is None:
            self._connectionLog = _ConnectionLog(EchoProtocol._log, self.reactor, self.logConnectionsPerSecond)
        return self._connectionLog

    def startFactory(self) -> None:
        """
        Listening starts: watch for idle connections.  One periodic check
        serves every connection, rather than a timer per connection reset on
        every read; a connection is closed between C{idleTimeout} and
        C{1.1 * idleTimeout} seconds (at most 5 s more) after its last read.
        """
        if self.idleTimeout and self._idleSweep is None:
            self._idleSweep = LoopingCall(self._sweepIdle)
            self._idleSweep.clock = self.reactor
            self._idleSweep.start(min(self.idleTimeout / 10, 5.0), now=False)

    def stopFactory(self) -> None:
        """
        Listening stops: idle connections are no longer watched (stopping
        drains the rest, see L{drain}).
        """
        if self._idleSweep is not None:
            self._idleSweep.stop()
            self._idleSweep = None
        if self._connectionLog is not None:
            self._connectionLog.flush()

    def admit(self, protocol: EchoProtocol) -> str | None:
        """
        Called by each protocol when its connection is made: count it, as
        served or refused, by the limits and the address its transport gives
        now (behind a PROXY-protocol listener, the client's).

        @return: L{None} if the connection is served, else why it is refused.
        """
        assert protocol.transport is not None
        host = _hostOf(protocol.transport.getPeer()) if self.maxPerPeer else None
        reason = self._refusal(host)
        if reason is None and self.sharedLimits is not None:
            reason = self.sharedLimits.acquire(host)
        if reason is not None:
            self.refused += 1
            self.countRefused(reason)
            return self._reasons[reason]
        self.served += 1
        self.connections.add(protocol)
        self._hosts[protocol] = host
        if host is not None:
            self._perPeer[host] += 1
        return None

    def release(self, protocol: EchoProtocol) -> None:
        """
        Called by each protocol when it starts closing, and when its
        connection is lost: it no longer holds a slot of the limits.
        """
        if protocol not in self._hosts:
            return
        # The host is only known (None otherwise) when --max-per-peer counts it.
        host = self._hosts.pop(protocol)
        if host is not None:
            self._perPeer[host] -= 1
            if not self._perPeer[host]:
                del self._perPeer[host]
        if self.sharedLimits is not None:
            self.sharedLimits.release(host)

    def connectionClosed(self, protocol: EchoProtocol) -> None:
        """
        Called by each protocol when its connection is lost.
        """
        if protocol not in self.connections:
            return
        self.connections.remove(protocol)
        self.release(protocol)
        self._closedBytesIn += protocol.bytesIn
        self._closedBytesOut += protocol.bytesOut
        self._closedMessages += protocol.messages
        if self.durations is not None and protocol._connectedAt is not None:
            self.durations.observe(self.reactor.seconds() - protocol._connectedAt)
        if not self.connections:
            waiters = self._closedWaiters
            if self._isServed():
                waiters += self._servedWaiters
                self._servedWaiters = []
            self._closedWaiters = []
            for waiter in waiters:
                waiter.callback(None)

    def countRefused(self, reason: str) -> None:
        """
        Count one connection turned away for C{reason} (see L{refusedBy}):
        by this factory, or by a wrapper before it reached this factory (a
        PROXY header missing or bad).
        """
        self.refusedBy[reason] = self.refusedBy.get(reason, 0) + 1

    def messagesAnswered(self) -> int:
        """
        @return: messages answered so far (in raw framing, reads answered),
            on every connection, open or closed.
        """
        return self._closedMessages + sum(protocol.messages for protocol in self.connections)

    def meter(self) -> DurationHistogram:
        """
        Keep, from now on, the counts that cost something, for metrics
        (L{tcplab.metrics.EchoCollector} calls this): how long each
        connection lasts (one clock reading and one bisection when it
        closes), and in line framing without a suffix the lines of each
        read (a C-level count; with a suffix, and in the other framings,
        the messages are always counted, for nothing).  Call it before
        serving, for counts that are exact from the first connection.

        @return: the histogram of durations (L{durations}).
        """
        self.metered = True
        if self.durations is None:
            self.durations = DurationHistogram()
        return self.durations

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
            deadline = self.reactor.callLater(timeout, self.abortAll)

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

    def _sweepIdle(self) -> None:
        now = self.reactor.seconds()
        for protocol in list(self.connections):
            protocol.checkIdle(now, self.idleTimeout)

    def abortAll(self) -> None:
        """
        Drop every open connection now, whatever is still unsent (what
        L{drain} does once its timeout has passed).
        """
        if not self.connections:
            return
        self._log.warn("aborting {count}", count=plural(len(self.connections), "open connection"))
        for protocol in list(self.connections):
            protocol.abort()

    def _refusal(self, host: str | None) -> str | None:
        # A closing connection gives up its slot but stays open until its
        # peer closes or closeTimeout passes: open ones are capped as well,
        # at twice the limit, so that closing ones cannot pile up.
        if self.maxConnections and (
            len(self._hosts) >= self.maxConnections or len(self.connections) >= 2 * self.maxConnections
        ):
            return "busy"
        if host is not None and self._perPeer.get(host, 0) >= self.maxPerPeer:
            return "peer"
        return None

    @property
    def _reasons(self) -> dict[str, str]:
        # What a refused peer is told, by the limit that refused it.
        return {
            "busy": f"server busy ({plural(self.maxConnections, 'connection')}); try again later",
            "peer": f"too many connections from your address (limit {self.maxPerPeer})",
        }

    def _isServed(self) -> bool:
        return self.maxServed is not None and self.served >= self.maxServed and not self.connections

    def __repr__(self) -> str:
        return f"<EchoServerFactory framing={self.framing!r} suffix={self.suffix!r}>"


def _hostOf(address: IAddress) -> str:
    # The per-peer limit counts by host; UNIX sockets all count as one peer.
    return str(getattr(address, "host", "local"))


def _canSendDirectly(transport: ITransport) -> bool:
    """
    Whether replies may go straight to C{transport}'s socket: only a plain TCP
    connection, whose buffer we know how to inspect.  TLS, PROXY protocol, UNIX
    sockets and test transports always use C{write()}.
    """
    if type(transport) is not tcp.Server or not hasattr(transport, "_tempDataLen"):
        return False
    # Each reply is a whole batch: Nagle's algorithm would only hold a second
    # small reply back until the first is acknowledged.
    transport.setTcpNoDelay(True)
    return True
