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
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from tcplab import defaults
from tcplab.address import formatAddress
from tcplab.framing import MessageTooLong, decoderFor, encode, stripLineEnding
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


class ReplyTimeout(Exception):
    """
    No reply arrived in time.  Later replies can no longer be matched to
    their requests, so every request still waiting fails with this too.

    @ivar timeout: the time allowed, in seconds.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no reply within {timeout:g} s")
        self.timeout = timeout


class _Expected:
    """
    A request whose reply has not arrived yet.

    @ivar data: the request as sent (framed).
    @ivar deferred: fires with the reply.
    """

    __slots__ = ("data", "deferred")

    def __init__(self, data: bytes) -> None:
        self.data = data
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

    def expect(self, data: bytes) -> _Expected:
        """
        Add a request, and send it as C{data} now or, one at a time, once the
        requests before it are answered.  If sending fails, so does the
        request, at once.
        """
        expected = _Expected(data)
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
    the server closes the connection.

    When a reply does not arrive within C{timeout} seconds, every waiting
    request fails with L{ReplyTimeout} and the connection is aborted.  When
    the connection is lost, every waiting request fails with the reason.

    @ivar framing: C{"raw"}, C{"line"} or C{"length"}.
    @ivar answered: replies delivered so far.
    @ivar unexpected: bytes received that answer no request (data when none
        waits, or an incomplete reply at the end): a sign that the server's
        framing is not C{framing}.
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
        @param maxLength: the longest reply accepted (line and length framings).
        @raise ValueError: for an unknown framing.
        """
        self._decoder = decoderFor(framing, maxLength)
        self.framing = framing
        self._clock = clock
        self._quietPeriod = quietPeriod
        self._replies = _ReplyQueue(
            clock, timeout, self._abort, self._write, oneAtATime=framing == "raw"
        )
        # Raw framing: the reply received so far to the request at the head.
        self._raw: list[bytes] = []
        self._rawLength = 0
        self._quietTimer: IDelayedCall | None = None
        self._closed: Failure | None = None
        self._lost = False
        self.answered = 0
        self.unexpected = 0
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
            such as C{"tcp:host=127.0.0.1:port=8081"}.
        @param timeout: seconds allowed to connect, and for each reply; L{None}
            for no limit.
        @return: a L{Deferred} that fires with the connected L{EchoClient}, or
            fails with the reason the connection could not be made
            (L{twisted.internet.defer.TimeoutError} after C{timeout}).
        @raise ValueError: for an unknown framing or an invalid endpoint string.
        """
        client = cls(reactor, framing, timeout, quietPeriod, maxLength)
        if isinstance(endpoint, str):
            endpoint = clientFromString(reactor, endpoint)
        return _withTimeout(connectProtocol(endpoint, client), timeout, reactor)

    def request(self, message: bytes) -> Deferred[bytes]:
        """
        Send C{message} (framed) and get its reply.

        @return: a L{Deferred} that fires with the reply (without its framing),
            or fails with L{ReplyTimeout}, the reason the connection was lost,
            L{MessageTooLong} for an over-long reply, or L{ValueError} for a
            message the framing cannot carry (an empty raw message, a line
            message with a newline).
        """
        if self._closed is not None or self.transport is None:
            return fail(self._closed or ConnectionDone("not connected"))
        if self.framing == "raw" and not message:
            return fail(ValueError("raw framing cannot send an empty message"))
        try:
            data = encode(self.framing, message)
        except ValueError as error:
            return fail(error)
        return self._replies.expect(data).deferred

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
        if self.framing == "raw":
            self._rawReceived(data)
            return
        try:
            replies = self._decoder.feed(data)
        except MessageTooLong as error:
            self._deliver(error.messages)
            self._replies.failAll(Failure(error))
            self._abort(error)
            return
        self._deliver(replies)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._closed is None:
            self._closed = reason
        self._stopQuietTimer()
        if self.framing == "raw":
            # The server closing the connection ends the reply in progress.
            if self._raw and self._replies.head is not None:
                self._completeRaw()
        else:
            replies, dropped = self._decoder.finish()
            self._deliver(replies)
            if dropped:
                self.unexpected += dropped
                self._log.warn("{dropped} bytes of an incomplete reply dropped", dropped=dropped)
        self._replies.failAll(self._closed)
        self._lost = True
        waiters, self._disconnectWaiters = self._disconnectWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _deliver(self, replies: list[bytes]) -> None:
        for reply in replies:
            if self._replies.head is None:
                self.unexpected += len(reply)
                self._log.warn("unexpected reply dropped: {reply!r}", reply=reply)
                continue
            self.answered += 1
            self._replies.complete(stripLineEnding(reply) if self.framing == "line" else reply)

    def _rawReceived(self, data: bytes) -> None:
        head = self._replies.head
        if head is None:
            self.unexpected += len(data)
            self._log.warn("unexpected data dropped: {data!r}", data=data)
            return
        self._raw.append(data)
        self._rawLength += len(data)
        # The reply holds at least the message; it is complete once the
        # server has been quiet for a while.  Every new byte restarts the wait.
        if self._rawLength >= len(head.data):
            self._stopQuietTimer()
            self._quietTimer = self._clock.callLater(self._quietPeriod, self._completeRaw)

    def _completeRaw(self) -> None:
        self._quietTimer = None
        reply = b"".join(self._raw)
        self._raw = []
        self._rawLength = 0
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

    def _abort(self, error: Exception) -> None:
        # The stream is out of step with the requests: give up on it.
        self._stopQuietTimer()
        if self._closed is None:
            self._closed = Failure(error)
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
