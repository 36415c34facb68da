"""
The echo client: send messages to an echo server and get each one's reply.

L{EchoClient} speaks over any stream (TCP, UNIX, TLS) in one of the framings
of L{tcplab.framing}; L{DatagramEchoClient} speaks UDP.  Both offer the same
two calls, C{request(message)} and C{close()}, and the C{tcplab client}
command is built on them::

    client = await EchoClient.connect(reactor, "tcp:host=127.0.0.1:port=8081")
    reply = await client.request("你好".encode("utf-8"))   # b"\\xe4...SB"
    await client.close()

Neither class touches the global reactor: both take it (or a clock) as an
argument.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, TimeoutError, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP6ClientEndpoint, clientFromString, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcplab import coerce, defaults
from tcplab.address import formatAddress
from tcplab.endpoints import requiredFields, splitEndpoint
from tcplab.framing import MessageTooLong, decoderFor, encode, stripLineEnding
from tcplab.text import escape, plural
from tcplab.udp import MAX_PACKET_SIZE

_T = TypeVar("_T")


def _withTimeout(d: Deferred[_T], timeout: float | None, clock: IReactorTime) -> Deferred[_T]:
    """
    Cancel C{d} after C{timeout} seconds (unless L{None}); it then fails with
    L{TimeoutError}, whatever error its canceller chose (endpoints choose
    L{twisted.internet.error.ConnectingCancelledError}).
    """
    if timeout is None:
        return d

    def timedOut(result: object, timeout: float) -> object:
        if isinstance(result, Failure):
            return Failure(TimeoutError(f"timed out after {timeout:g} s"))
        return result

    return d.addTimeout(timeout, clock, onTimeoutCancel=timedOut)


def clientEndpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """
    Make a stream client endpoint from a Twisted client endpoint string, and
    one more kind: C{tcp:host=H:port=P}, C{tcp6:host=H:port=P} (which
    Twisted's parser lacks; its other keywords are C{timeout} and
    C{bindAddress}), C{unix:path=P}, C{tls:H:P} and any other kind Twisted
    knows.  An IPv6 address may be written plainly (C{host=::1:port=8081})
    or with its colons escaped as Twisted needs (C{host=\\:\\:1}).

    @raise ValueError: with a one-line message, for an unknown kind, or one
        that lacks a host, a port or a path, or whose port is not 1-65535.
    @raise ImportError: for C{tls:} without TLS support installed.
    """
    kind, positional, named = splitEndpoint(description)
    # Positional values stand for the required fields not named, in order.
    requiredFields(description, kind, positional if kind != "tcp6" else [], named)
    if kind == "tcp6":
        if positional:
            raise ValueError(f"endpoint {description!r}: tcp6 takes host=H:port=P only")
        unknown = set(named) - {"host", "port", "timeout", "bindAddress"}
        if unknown:
            raise ValueError(f"endpoint {description!r}: unknown tcp6 parameter {sorted(unknown)[0]!r}")
        port = _endpointPort(description, named["port"])
        timeout = named.get("timeout")
        bindAddress = named.get("bindAddress")
        return TCP6ClientEndpoint(
            reactor,
            named["host"],
            port,
            30 if timeout is None else coerce.seconds(timeout),
            None if bindAddress is None else (bindAddress, 0),
        )
    if "port" in named:
        _endpointPort(description, named["port"])
    # Twisted's own parser takes it from here, with IPv6 colons escaped.
    fields = [_escapeField(value) for value in positional]
    fields += [f"{key}={_escapeField(value)}" for key, value in named.items()]
    try:
        endpoint = clientFromString(reactor, ":".join([kind, *fields]))
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(f"invalid endpoint {description!r}: {error}") from None
    try:
        coerce.checkEndpointPort(endpoint, lowest=1)
    except ValueError as error:
        raise ValueError(f"invalid endpoint {description!r}: {error}") from None
    return endpoint


def _endpointPort(description: str, text: str) -> int:
    try:
        return coerce.remotePort(text)
    except ValueError as error:
        raise ValueError(f"invalid endpoint {description!r}: {error}") from None


def _escapeField(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


class ReplyTimeout(Exception):
    """
    No reply arrived in time.  Later replies can no longer be matched to
    their requests, so every request still waiting fails with this too.

    @ivar timeout: the time allowed, in seconds.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no reply within {timeout:g} s")
        self.timeout = timeout


class WrongReply(Exception):
    """
    A reply that does not start with its request: whatever answered is not
    an echo server, or not in the client's framing.  The stream is out of
    step for good, so every request still waiting fails with this too.

    @ivar request: the message the reply should have started with.
    @ivar reply: the reply, or as much of it as had arrived when it was
        found wrong (at most L{EchoClient.maxLength} bytes).
    """

    def __init__(self, request: bytes, reply: bytes) -> None:
        super().__init__(f"wrong reply: the {len(reply)}-byte reply does not start with its message")
        self.request = request
        self.reply = reply


class ServerError(Exception):
    """
    The server refused a request with its own error notice (in line
    framing, a line starting with C{error: }, such as C{error: server busy
    (...)}); it closes the connection after it, so every request still
    waiting fails with this too.

    @ivar notice: the server's line, without its line ending.
    """

    def __init__(self, notice: bytes) -> None:
        super().__init__("the server refused the request")
        self.notice = notice


#: How a line server starts its error notices (see L{tcplab.server}).
ERROR_PREFIX = b"error: "

#: In raw framing, how much of a reply must match its request.  A server that
#: answers every read as it comes (the lesson's answers each C{recv(1024)}
#: with its suffix) splits a long request into pieces, each followed by the
#: suffix: only the first piece is the request's start.
RAW_PIECE = 1024

#: How many of the first bytes of a connection are kept (L{EchoClient.firstBytes}).
FIRST_BYTES = 16


class _Expected:
    """
    A request whose reply has not arrived yet.

    @ivar data: the request as sent (framed).
    @ivar message: the request without its framing: its reply starts with it.
    @ivar deferred: fires with the reply.
    """

    __slots__ = ("data", "message", "deferred")

    def __init__(self, data: bytes, message: bytes | None = None) -> None:
        self.data = data
        self.message = data if message is None else message
        # Cancelling only gives up on the reply; its slot stays in the queue
        # so that later replies still match their requests.
        self.deferred: Deferred[bytes] = Deferred(lambda d: None)


class _ReplyQueue:
    """
    Requests waiting for their replies, oldest first, and the timer of the
    oldest one: replies come back in the order the requests were sent, and
    the requests' L{Deferred}s fire in that order too.

    Pipelined, every request goes out as soon as it is made.  One at a time
    (raw streams, whose replies cannot be told apart, and datagrams), a
    request goes out once the one before it is answered.

    When the oldest reply does not come in time, a stream is out of step for
    good: every request fails and C{onTimeout} is told.  Datagrams are
    independent (C{independent=True}): only the oldest request fails, and the
    next one goes out.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float | None,
        onTimeout: Callable[[ReplyTimeout], None],
        send: Callable[[bytes], object],
        oneAtATime: bool = False,
        independent: bool = False,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._onTimeout = onTimeout
        self._send = send
        self._oneAtATime = oneAtATime
        self._independent = independent
        self._waiting: deque[_Expected] = deque()
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def head(self) -> _Expected | None:
        """
        The oldest request still waiting, if any.
        """
        return self._waiting[0] if self._waiting else None

    def expect(self, data: bytes, message: bytes | None = None) -> _Expected:
        """
        Add a request, and send it as C{data} (C{message} framed) now or, one
        at a time, once the requests before it are answered.  If sending
        fails, so does the request, at once.
        """
        expected = _Expected(data, message)
        if self._oneAtATime and self._waiting:
            self._waiting.append(expected)
            return expected
        failure = self._transmit(expected)
        if failure is None:
            self._waiting.append(expected)
            if len(self._waiting) == 1:
                self._startTimer()
        else:
            expected.deferred.errback(failure)
        return expected


    def failAll(self, reason: Failure) -> None:
        """
        Fail every request still waiting with C{reason}.
        """
        self._stopTimer()
        waiting, self._waiting = self._waiting, deque()
        for expected in waiting:
            if not expected.deferred.called:
                expected.deferred.errback(reason)

    def complete(self, result: bytes | Failure) -> None:
        """
        The oldest request is done: fire its L{Deferred} with C{result} (its
        reply, or the L{Failure} of a datagram that timed out), and send and
        time the next one.
        """
        expected = self._waiting.popleft()
        self._stopTimer()
        unsent: list[tuple[_Expected, Failure]] = []
        if self._oneAtATime:
            # The next request goes out before this reply's callbacks run,
            # so that a request they make waits its turn behind it.
            while self._waiting:
                failure = self._transmit(self._waiting[0])
                if failure is None:
                    break
                unsent.append((self._waiting.popleft(), failure))
        if self._waiting:
            self._startTimer()
        # In order: this request, then any that could not be sent after it.
        for done, outcome in [(expected, result), *unsent]:
            if not done.deferred.called:
                if isinstance(outcome, Failure):
                    done.deferred.errback(outcome)
                else:
                    done.deferred.callback(outcome)

    def _transmit(self, expected: _Expected) -> Failure | None:
        try:
            self._send(expected.data)
        except Exception:
            return Failure()
        return None

    def _startTimer(self) -> None:
        if self._timeout is not None:
            self._timer = self._clock.callLater(self._timeout, self._timedOut)

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        error = ReplyTimeout(self._timeout or 0)
        if self._independent:
            self.complete(Failure(error))
            return
        self.failAll(Failure(error))
        self._onTimeout(error)


class EchoClient(Protocol):
    """
    Send requests to an echo server over a stream and match each reply to
    its request, in order.

    In the C{line} and C{length} framings requests are pipelined: each is
    written at once, and the server's replies are cut out of the stream by
    the framing's decoder.  C{raw} framing has no delimiter, so requests are
    sent one at a time, and a reply is complete once at least as many bytes
    as were sent have arrived and then no more for C{quietPeriod} seconds, or
    the server closes the connection.  Once a reply has shown the server's
    suffix (the reply minus its request), a later reply is complete as soon
    as exactly its request and that suffix have arrived, without the wait;
    one that does not fit the suffix (more bytes, or others) waits the quiet
    period, and teaches the suffix afresh.

    Every reply must start with its request (in raw framing, its first
    L{RAW_PIECE} bytes): one that does not fails with L{WrongReply} as soon
    as its first bytes differ, or, in line framing, with L{ServerError} if
    it is the server's C{error: } notice.  A reply longer than C{maxLength}
    fails with L{MessageTooLong}.  After any of these, and when a reply does
    not arrive within C{timeout} seconds (L{ReplyTimeout}), the stream is
    out of step: every waiting request fails with the same error and the
    connection is aborted.  When the connection is lost, every waiting
    request fails with the reason.

    @ivar framing: C{"raw"}, C{"line"} or C{"length"}.
    @ivar maxLength: the longest reply accepted.
    @ivar answered: replies delivered so far.
    @ivar unexpected: bytes received that answer no request (data when none
        waits, or an incomplete reply at the end): a sign that the server's
        framing is not C{framing}.
    @ivar firstBytes: the first L{FIRST_BYTES} bytes the server sent, for
        telling what it speaks when it does not answer as an echo (a TLS
        server's alert starts with C{0x15 0x03}).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        framing: str = defaults.FRAMING,
        timeout: float | None = defaults.CLIENT_TIMEOUT,
        quietPeriod: float = defaults.QUIET_PERIOD,
        maxLength: int = defaults.CLIENT_MAX_LENGTH,
    ) -> None:
        """
        @param clock: schedules the reply timeout and the raw quiet period.
        @param framing: must match the server's.
        @param timeout: seconds allowed for each reply, or L{None} for no limit.
        @param quietPeriod: raw framing: how long the server must stay quiet
            before a reply counts as complete.
        @param maxLength: the longest reply accepted, in bytes (without its
            framing).
        @raise ValueError: for an unknown framing.
        """
        self._decoder = decoderFor(framing, maxLength)
        self.framing = framing
        self.maxLength = maxLength
        self._clock = clock
        self._quietPeriod = quietPeriod
        self._replies = _ReplyQueue(
            clock, timeout, self._abort, self._write, oneAtATime=framing == "raw"
        )
        # Raw framing: the reply received so far to the request at the head,
        # how many of its first bytes were found to match the request, and
        # the server's suffix once a reply has shown it (None: not known).
        self._raw: list[bytes] = []
        self._rawLength = 0
        self._rawChecked = 0
        self._suffix: bytes | None = None
        # Line framing: the start of the line in progress (as much of it as
        # its check needs).
        self._partial = b""
        self._quietTimer: IDelayedCall | None = None
        self._closed: Failure | None = None
        self._aborted = False
        self._lost = False
        self.answered = 0
        self.unexpected = 0
        self.firstBytes = b""
        self._disconnectWaiters: list[Deferred[None]] = []

    @classmethod
    def connect(
        cls,
        reactor: Any,
        endpoint: IStreamClientEndpoint | str,
        framing: str = defaults.FRAMING,
        timeout: float | None = defaults.CLIENT_TIMEOUT,
        quietPeriod: float = defaults.QUIET_PERIOD,
        maxLength: int = defaults.CLIENT_MAX_LENGTH,
    ) -> Deferred[EchoClient]:
        """
        Connect to an echo server.

        @param reactor: the reactor to connect with; also the clock.
        @param endpoint: a stream client endpoint, or a client endpoint string
            as L{clientEndpoint} takes, such as C{"tcp:host=127.0.0.1:port=8081"}.
        @param timeout: seconds allowed to connect, and for each reply; L{None}
            for no limit.
        @return: a L{Deferred} that fires with the connected L{EchoClient}, or
            fails with the reason the connection could not be made
            (L{twisted.internet.defer.TimeoutError} after C{timeout}).
        @raise ValueError: for an unknown framing or an invalid endpoint string.
        """
        client = cls(reactor, framing, timeout, quietPeriod, maxLength)
        if isinstance(endpoint, str):
            endpoint = clientEndpoint(reactor, endpoint)
        return _withTimeout(connectProtocol(endpoint, client), timeout, reactor)

    def request(self, message: bytes) -> Deferred[bytes]:
        """
        Send C{message} (framed) and get its reply.

        @return: a L{Deferred} that fires with the reply (without its framing),
            or fails with L{ReplyTimeout}, the reason the connection was lost,
            L{MessageTooLong} for an over-long reply, L{WrongReply} for one
            that does not start with C{message}, L{ServerError} for the
            server's refusal, or L{ValueError} for a message the framing
            cannot carry (an empty raw message, a line message with a
            newline).
        """
        if self._closed is not None or self.transport is None:
            return fail(self._closed or ConnectionDone("not connected"))
        if self.framing == "raw" and not message:
            return fail(ValueError("raw framing cannot send an empty message"))
        try:
            data = encode(self.framing, message)
        except ValueError as error:
            return fail(error)
        return self._replies.expect(data, message).deferred

    def close(self) -> Deferred[None]:
        """
        Close the connection now; requests still waiting fail with
        L{ConnectionDone}.

        @return: a L{Deferred} that fires once the connection is closed.
        """
        if self._closed is None:
            self._closed = Failure(ConnectionDone("closed by the client"))
            if self.transport is not None:
                self.transport.loseConnection()
        return self.whenDisconnected()

    def whenDisconnected(self) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once the connection is lost, for any
            reason.
        """
        if self._lost:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._disconnectWaiters.append(waiter)
        return waiter

    def dataReceived(self, data: bytes) -> None:
        if len(self.firstBytes) < FIRST_BYTES:
            self.firstBytes += data[: FIRST_BYTES - len(self.firstBytes)]
        if self._aborted:
            return
        if self.framing == "raw":
            self._rawReceived(data)
            return
        try:
            replies = self._decoder.feed(data)
        except MessageTooLong as error:
            if self._deliver(error.messages):
                self._giveUp(error)
            return
        if self._deliver(replies) and self.framing == "line":
            self._checkPartialLine(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._closed is None:
            self._closed = reason
        self._stopQuietTimer()
        if not self._aborted:
            if self.framing == "raw":
                # The server closing the connection ends the reply in progress.
                if self._raw and self._replies.head is not None:
                    self._completeRaw()
            else:
                replies, dropped = self._decoder.finish()
                self._deliver(replies)
                if dropped:
                    self.unexpected += dropped
                    self._log.warn(
                        "{dropped} of an incomplete reply dropped", dropped=plural(dropped, "byte")
                    )
        self._replies.failAll(self._closed)
        self._lost = True
        waiters, self._disconnectWaiters = self._disconnectWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _deliver(self, replies: list[bytes]) -> bool:
        """
        Hand out complete replies, in order, each to its request.

        @return: whether the stream is still in step (no wrong reply).
        """
        for reply in replies:
            head = self._replies.head
            if head is None:
                self.unexpected += len(reply)
                self._log.warn("unexpected reply dropped: {reply}", reply=escape(reply, limit=200))
                continue
            if self.framing == "line":
                reply = stripLineEnding(reply)
            if not reply.startswith(head.message):
                self._giveUp(self._wrong(head.message, reply))
                return False
            self.answered += 1
            self._replies.complete(reply)
        return True

    def _wrong(self, message: bytes, reply: bytes) -> Exception:
        # A line server's refusal is not an echo of a message that itself
        # starts with "error: " (that reply did start with its message).
        if self.framing == "line" and reply.startswith(ERROR_PREFIX):
            return ServerError(reply)
        return WrongReply(message, reply)

    def _checkPartialLine(self, data: bytes) -> None:
        # A line that does not start as its request's does is wrong before
        # its end arrives (a server that streams without newlines, a TLS
        # alert): check the start of the line in progress.
        head = self._replies.head
        if head is None:
            return
        end = data.rfind(b"\n")
        need = max(len(head.message), len(ERROR_PREFIX))
        if end >= 0:
            self._partial = data[end + 1 : end + 1 + need]
        elif len(self._partial) < need:
            self._partial += data[: need - len(self._partial)]
        else:
            return
        start = self._partial[: len(head.message)]
        if head.message.startswith(start) or ERROR_PREFIX.startswith(self._partial[: len(ERROR_PREFIX)]):
            return
        self._giveUp(WrongReply(head.message, self._partial))

    def _rawReceived(self, data: bytes) -> None:
        # Raw framing's hot path: one call per read of a reply.
        head = self._replies.head
        if head is None:
            self.unexpected += len(data)
            self._log.warn("unexpected data dropped: {data}", data=escape(data, limit=200))
            return
        request = head.data
        checked = self._rawChecked
        if checked < RAW_PIECE and checked < len(request):
            # Wrong as soon as its first bytes differ from the request's.
            piece = data[: min(len(request), RAW_PIECE) - checked]
            if request[checked : checked + len(piece)] != piece:
                self._giveUp(WrongReply(request, b"".join(self._raw) + data[: self.maxLength]))
                return
            self._rawChecked += len(piece)
        self._raw.append(data)
        self._rawLength += len(data)
        if self._rawLength > self.maxLength:
            self._giveUp(MessageTooLong(self._rawLength, self.maxLength, []))
            return
        if self._rawLength < len(request):
            return
        suffix = self._suffix
        if suffix is not None and self._rawLength == len(request) + len(suffix):
            # Exactly the request and the suffix the server has shown: complete now.
            reply = b"".join(self._raw)
            if reply.startswith(request) and reply.endswith(suffix):
                self._stopQuietTimer()
                self._completeRaw(reply)
                return
        # The reply holds at least the message; it is complete once the
        # server has been quiet for a while.  Every new byte restarts the wait.
        self._stopQuietTimer()
        self._quietTimer = self._clock.callLater(self._quietPeriod, self._completeRaw)

    def _completeRaw(self, reply: bytes | None = None) -> None:
        # reply: given when it fits the learnt suffix; else the reply ended
        # by the quiet period or a close, which shows the suffix afresh.
        self._quietTimer = None
        if reply is None:
            reply = b"".join(self._raw)
            request = self._replies.head.data if self._replies.head is not None else b""
            self._suffix = reply[len(request) :] if reply.startswith(request) else None
        self._raw = []
        self._rawLength = 0
        self._rawChecked = 0
        self.answered += 1
        self._replies.complete(reply)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        if self._closed is None:
            self.transport.write(data)

    def _stopQuietTimer(self) -> None:
        if self._quietTimer is not None:
            if self._quietTimer.active():
                self._quietTimer.cancel()
            self._quietTimer = None

    def _giveUp(self, error: Exception) -> None:
        # A reply that is wrong or too long: nothing later can be matched.
        failure = Failure(error)
        self._abort(error)
        self._replies.failAll(failure)

    def _abort(self, error: Exception) -> None:
        # The stream is out of step with the requests: give up on it.
        self._stopQuietTimer()
        self._aborted = True
        if self._closed is None:
            self._closed = Failure(error)
        self._raw = []
        self._rawLength = 0
        if self.transport is not None:
            self.transport.abortConnection()


class DatagramEchoClient(DatagramProtocol):
    """
    Send each request as one datagram to an echo server, one at a time: the
    next datagram goes out once the previous one is answered or has timed
    out.  A datagram answers the request in flight only if it starts with
    that request (an echo's reply does), so a lost datagram fails only its own
    request, and a late reply is dropped rather than taken for a later one.

    UDP gives no end of stream: a reply that does not arrive within
    C{timeout} seconds fails with L{ReplyTimeout}, and so does every request
    still waiting.  An ICMP "port unreachable" fails them with
    L{ConnectionRefusedError}.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float | None = defaults.CLIENT_TIMEOUT) -> None:
        self._replies = _ReplyQueue(
            clock, timeout, lambda error: None, self._write, oneAtATime=True, independent=True
        )
        self._closing = False
        self._closeReason: Failure = Failure(ConnectionDone("not connected"))
        self._port: Any = None

    @classmethod
    def connect(
        cls,
        reactor: Any,
        host: str,
        port: int,
        timeout: float | None = defaults.CLIENT_TIMEOUT,
    ) -> Deferred[DatagramEchoClient]:
        """
        Resolve C{host}, then bind a UDP port that sends to and receives from
        C{(host, port)} only.

        @param timeout: seconds allowed to resolve C{host}, and for each
            reply; L{None} for no limit.
        @return: a L{Deferred} that fires with the L{DatagramEchoClient}, or
            fails if C{host} cannot be resolved.
        """

        def bind(address: str) -> DatagramEchoClient:
            client = cls(reactor, timeout)
            interface = "::" if ":" in address else "0.0.0.0"
            reactor.listenUDP(0, client, interface=interface, maxPacketSize=MAX_PACKET_SIZE)
            assert client.transport is not None
            client.transport.connect(address, port)
            return client

        resolving: Deferred[str] = reactor.resolve(host) if ":" not in host else succeed(host)
        return _withTimeout(resolving, timeout, reactor).addCallback(bind)

    def request(self, message: bytes) -> Deferred[bytes]:
        """
        Send C{message} as one datagram.

        @return: a L{Deferred} that fires with the datagram that answers it,
            or fails with L{ReplyTimeout}, L{ConnectionRefusedError}, or the
            error that prevented sending.
        """
        if self.transport is None or self._closing:
            return fail(self._closeReason)
        return self._replies.expect(message).deferred

    def close(self) -> Deferred[None]:
        """
        Stop listening; requests still waiting fail with L{ConnectionDone}.

        @return: a L{Deferred} that fires once the port is closed.
        """
        stopping = None
        if not self._closing and self.transport is not None:
            self._closing = True
            self._closeReason = Failure(ConnectionDone("closed by the client"))
            self._replies.failAll(self._closeReason)
            stopping = self.transport.stopListening()
        # UDP ports stop at once; maybeDeferred covers any that do not.
        return maybeDeferred(lambda: stopping).addCallback(lambda _: None)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        head = self._replies.head
        # An echo's reply starts with the request: anything else (such as a
        # late reply to a request that timed out) answers no waiting request.
        if head is None or not datagram.startswith(head.data):
            self._log.warn("unexpected datagram from {peer} dropped", peer=formatAddress(addr))
            return
        self._replies.complete(datagram)

    def _write(self, datagram: bytes) -> None:
        assert self.transport is not None
        self.transport.write(datagram)

    def startProtocol(self) -> None:
        # Twisted forgets the transport before calling stopProtocol.
        self._port = self.transport

    def connectionRefused(self) -> None:
        self._replies.failAll(Failure(ConnectionRefusedError("port unreachable")))

    def stopProtocol(self) -> None:
        # The epoll reactor closes a UDP port whose socket reports an error
        # (such as an ICMP "port unreachable") without calling
        # connectionRefused: read the error while the socket is still open.
        if self._closing:
            return
        self._closing = True
        try:
            code = self._port.getHandle().getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except (AttributeError, OSError):
            code = 0
        if code == errno.ECONNREFUSED:
            error: Exception = ConnectionRefusedError("port unreachable")
        else:
            error = ConnectionLost(os.strerror(code) if code else "the UDP port closed")
        self._closeReason = Failure(error)
        self._replies.failAll(self._closeReason)
