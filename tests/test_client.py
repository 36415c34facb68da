"""
Tests for L{tcplab.client}: the echo clients against tcplab's server, in
memory (no sockets, no reactor; every timeout on a L{Clock}).
"""

from __future__ import annotations

import errno

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.endpoints import TCP6ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcplab import EchoClient, defaults
from tcplab.client import (
    RAW_PIECE,
    DatagramEchoClient,
    ReplyTimeout,
    ServerError,
    WrongReply,
    clientEndpoint,
)
from tcplab.framing import MessageTooLong, encode
from tcplab.server import EchoServerFactory
from tests.streams import cutAt

QUIET = defaults.QUIET_PERIOD
TIMEOUT = defaults.CLIENT_TIMEOUT


class Pump:
    """
    Two protocols connected through two L{StringTransport}s: L{flush} carries
    the bytes each one wrote to the other until neither has anything more to
    say, then delivers a close once its side's bytes are all across.  As with
    a Twisted TCP transport, a side that is closing reads no more.
    """

    def __init__(self, client: Protocol, server: Protocol) -> None:
        self.client, self.server = client, server
        self.clientTransport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 50000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 8081),
        )
        self.serverTransport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8081),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.closed = False
        client.makeConnection(self.clientTransport)
        server.makeConnection(self.serverTransport)

    def flush(self) -> None:
        """
        Deliver everything written so far, and then any close.
        """
        moved = True
        while moved and not self.closed:
            moved = False
            for transport, receiver, receiving in (
                (self.clientTransport, self.server, self.serverTransport),
                (self.serverTransport, self.client, self.clientTransport),
            ):
                data = transport.value()
                if data:
                    transport.clear()
                    if not receiving.disconnecting:
                        receiver.dataReceived(data)
                    moved = True
        if not self.closed and (self.clientTransport.disconnecting or self.serverTransport.disconnecting):
            self.closed = True
            aborted = self.clientTransport.disconnected or self.serverTransport.disconnected
            reason = ConnectionLost() if aborted else ConnectionDone()
            self.client.connectionLost(Failure(reason))
            self.server.connectionLost(Failure(reason))


def connect(
    framing: str, suffix: bytes = b"SB", maxLength: int = defaults.MAX_LENGTH, **clientArgs: object
) -> tuple[EchoClient, Pump, Clock]:
    """
    An L{EchoClient} connected in memory to tcplab's server.
    """
    clock = Clock()
    client = EchoClient(clock, framing=framing, **clientArgs)  # type: ignore[arg-type]
    factory = EchoServerFactory(framing=framing, suffix=suffix, maxLength=maxLength, reactor=clock)
    server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    assert server is not None
    return client, Pump(client, server), clock


def alone(framing: str, **clientArgs: object) -> tuple[EchoClient, StringTransport, Clock]:
    """
    An L{EchoClient} on a L{StringTransport}, to play the server by hand.
    """
    clock = Clock()
    client = EchoClient(clock, framing=framing, **clientArgs)  # type: ignore[arg-type]
    transport = StringTransport()
    client.makeConnection(transport)
    return client, transport, clock


class FramedClientTestsMixin:
    """
    Tests that hold for every framing with a delimiter; C{framing} names it.
    """

    framing = "line"

    def test_requestGetsItsReply(self) -> None:
        """
        The reply to a request is the server's answer without its framing.
        """
        client, pump, clock = connect(self.framing)
        reply = client.request("你好".encode())
        pump.flush()
        self.assertEqual(self.successResultOf(reply), "你好SB".encode())

    def test_pipelinedRepliesMatchInOrder(self) -> None:
        """
        Requests are written at once, without waiting for earlier replies, and
        each reply goes to its own request.
        """
        client, pump, clock = connect(self.framing)
        replies = [client.request(message) for message in (b"one", b"", b"three")]
        self.assertEqual(
            pump.clientTransport.value(),
            b"".join(encode(self.framing, m) for m in (b"one", b"", b"three")),
        )
        pump.flush()
        self.assertEqual(
            [self.successResultOf(reply) for reply in replies], [b"oneSB", b"SB", b"threeSB"]
        )

    def test_replySplitAcrossReads(self) -> None:
        """
        A reply that arrives one byte at a time is delivered once, whole.
        """
        client, transport, clock = alone(self.framing)
        reply = client.request(b"hi")
        for byte in encode(self.framing, b"hiSB"):
            self.assertNoResult(reply)
            client.dataReceived(bytes([byte]))
        self.assertEqual(self.successResultOf(reply), b"hiSB")

    def test_serverClosingEarlyFailsUnansweredRequests(self) -> None:
        """
        When the server closes the connection (here because the second
        message is over its limit), the replies it sent are delivered and the
        requests it did not answer fail with the reason.
        """
        client, pump, clock = connect(self.framing, maxLength=4)
        first = client.request(b"hi")
        second = client.request(b"far too long")
        third = client.request(b"ho")
        pump.flush()
        self.assertEqual(self.successResultOf(first), b"hiSB")
        if self.framing == "line":
            # The line server explains itself, in a line: the answer to
            # "second", which fails with it, and so does "third".
            error = self.failureResultOf(second, ServerError).value
            self.assertEqual(error.notice, b"error: line longer than 4 bytes; closing")
            self.failureResultOf(third, ServerError)
        else:
            self.failureResultOf(second, ConnectionDone)
            self.failureResultOf(third, ConnectionDone)

    def test_wrongReplyFailsEveryRequest(self) -> None:
        """
        A reply that does not start with its request fails with
        L{WrongReply}, carrying the reply; the requests after it fail too,
        and the connection is aborted.
        """
        client, transport, clock = alone(self.framing)
        first, second = client.request(b"hi"), client.request(b"ho")
        client.dataReceived(encode(self.framing, b"nope") + encode(self.framing, b"hoSB"))
        error = self.failureResultOf(first, WrongReply).value
        self.assertEqual((error.request, error.reply), (b"hi", b"nope"))
        self.failureResultOf(second, WrongReply)
        self.assertTrue(transport.disconnected)

    def test_incompleteReplyFailsOnClose(self) -> None:
        """
        A connection lost in the middle of a length-prefixed reply fails its
        request; in line framing an unterminated last line is the reply.
        """
        client, transport, clock = alone(self.framing)
        reply = client.request(b"hi")
        client.dataReceived(encode(self.framing, b"hiSB")[:-1])
        client.connectionLost(Failure(ConnectionDone()))
        if self.framing == "line":
            self.assertEqual(self.successResultOf(reply), b"hiSB")
        else:
            self.failureResultOf(reply, ConnectionDone)

    def test_replyTooLong(self) -> None:
        """
        A reply over C{maxLength} fails every waiting request with
        L{MessageTooLong} and aborts the connection.
        """
        client, transport, clock = alone(self.framing, maxLength=8)
        first, second = client.request(b"a"), client.request(b"b")
        client.dataReceived(encode(self.framing, b"aSB") + encode(self.framing, b"b" * 20))
        self.assertEqual(self.successResultOf(first), b"aSB")
        self.failureResultOf(second, MessageTooLong)
        self.assertTrue(transport.disconnected)

    def test_timeoutRestartsForEachReply(self) -> None:
        """
        Each reply gets the full timeout, counted from the previous reply.
        """
        client, transport, clock = alone(self.framing, timeout=10)
        first, second = client.request(b"a"), client.request(b"b")
        clock.advance(9)
        client.dataReceived(encode(self.framing, b"a"))
        clock.advance(9)
        self.assertNoResult(second)
        clock.advance(1)
        self.assertEqual(self.successResultOf(first), b"a")
        self.assertEqual(self.failureResultOf(second, ReplyTimeout).value.timeout, 10)


class LineClientTests(FramedClientTestsMixin, SynchronousTestCase):
    """
    L{EchoClient} in line framing.
    """

    framing = "line"

    def test_trailingBytesAreUnexpected(self) -> None:
        """
        A raw server's suffix after the newline (the framings do not match)
        is left over at the end, and counted as unexpected.
        """
        client, transport, clock = alone("line")
        reply = client.request(b"one")
        client.dataReceived(b"one\nSB")
        self.assertEqual(self.successResultOf(reply), b"one")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((client.answered, client.unexpected), (1, 2))

    def test_crlfRepliesAreStripped(self) -> None:
        """
        A reply ended by C{\\r\\n} is delivered without the C{\\r}.
        """
        client, transport, clock = alone("line")
        reply = client.request(b"hi")
        client.dataReceived(b"hiSB\r\n")
        self.assertEqual(self.successResultOf(reply), b"hiSB")

    def test_serverErrorLine(self) -> None:
        """
        A line that does not start with its request but with C{error: } is
        the server's refusal: the request fails with L{ServerError} holding
        the line, and so do the others.
        """
        client, transport, clock = alone("line")
        first, second = client.request(b"hi"), client.request(b"ho")
        client.dataReceived(b"error: server busy (1 connection); try again later\r\n")
        error = self.failureResultOf(first, ServerError).value
        self.assertEqual(error.notice, b"error: server busy (1 connection); try again later")
        self.failureResultOf(second, ServerError)
        self.assertTrue(transport.disconnected)

    def test_echoOfAnErrorMessageIsAReply(self) -> None:
        """
        The echo of a message that itself starts with C{error: } is its reply.
        """
        client, pump, clock = connect("line")
        reply = client.request(b"error: mine")
        pump.flush()
        self.assertEqual(self.successResultOf(reply), b"error: mineSB")

    def test_wrongLineFailsBeforeItsEnd(self) -> None:
        """
        A line whose first bytes are neither its request's nor C{error: }
        fails at once, before its newline arrives (a server that streams
        without newlines, or answers in TLS).
        """
        client, transport, clock = alone("line")
        ok, reply = client.request(b"one"), client.request(b"two")
        client.dataReceived(b"oneSB\ntw")
        self.assertEqual(self.successResultOf(ok), b"oneSB")
        self.assertNoResult(reply)
        client.dataReceived(b"x")
        self.assertEqual(self.failureResultOf(reply, WrongReply).value.reply, b"twx")
        self.assertTrue(transport.disconnected)

    def test_startOfAnErrorLineWaits(self) -> None:
        """
        A line in progress that may be the start of the server's error
        notice waits for its end.
        """
        client, transport, clock = alone("line")
        reply = client.request(b"hi")
        client.dataReceived(b"err")
        client.dataReceived(b"or: server busy")
        self.assertNoResult(reply)
        client.dataReceived(b"\n")
        self.failureResultOf(reply, ServerError)

    def test_firstBytesAreKept(self) -> None:
        """
        The first bytes the server sent are kept in C{firstBytes}, at most
        16 of them, for telling what the server speaks.
        """
        client, transport, clock = alone("line")
        reply = client.request(b"hi")
        client.dataReceived(b"\x15\x03\x03\x00\x02\x02\n" + b"x" * 20)
        self.assertEqual(client.firstBytes, b"\x15\x03\x03\x00\x02\x02\n" + b"x" * 9)
        self.failureResultOf(reply, WrongReply)
        self.failureResultOf(client.request(b"ho"), WrongReply)

    def test_messageWithNewlineIsRejected(self) -> None:
        """
        A line message cannot hold a newline: its request fails with
        L{ValueError} and nothing is sent.
        """
        client, transport, clock = alone("line")
        self.failureResultOf(client.request(b"a\nb"), ValueError)
        self.assertEqual(transport.value(), b"")


class LengthClientTests(FramedClientTestsMixin, SynchronousTestCase):
    """
    L{EchoClient} in length-prefixed framing.
    """

    framing = "length"


class RawClientTests(SynchronousTestCase):
    """
    L{EchoClient} in raw framing: a reply is complete once at least as many
    bytes as were sent have arrived and the server then stays quiet.
    """

    def test_replyCompletesAfterQuietPeriod(self) -> None:
        """
        The reply is delivered once the server has been quiet for the quiet
        period, not before.
        """
        client, pump, clock = connect("raw")
        reply = client.request("你好".encode())
        pump.flush()
        clock.advance(QUIET - 0.01)
        self.assertNoResult(reply)
        clock.advance(0.01)
        self.assertEqual(self.successResultOf(reply), "你好SB".encode())

    def test_shortReplyIsNotComplete(self) -> None:
        """
        Fewer bytes than were sent never make a reply, however long the
        server is quiet; the rest does.
        """
        client, transport, clock = alone("raw")
        reply = client.request(b"hello")
        client.dataReceived(b"hel")
        clock.advance(5)
        self.assertNoResult(reply)
        client.dataReceived(b"loSB")
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(reply), b"helloSB")

    def test_moreDataRestartsQuietPeriod(self) -> None:
        """
        Every read restarts the quiet period, so a suffix sent a little
        after the echo is part of the reply.
        """
        client, transport, clock = alone("raw")
        reply = client.request(b"hi")
        client.dataReceived(b"hi")
        clock.advance(QUIET * 0.75)
        client.dataReceived(b"SB")
        clock.advance(QUIET * 0.75)
        self.assertNoResult(reply)
        clock.advance(QUIET * 0.25)
        self.assertEqual(self.successResultOf(reply), b"hiSB")

    def test_quietPeriodIsConfigurable(self) -> None:
        """
        C{quietPeriod} sets the wait.
        """
        client, transport, clock = alone("raw", quietPeriod=2)
        reply = client.request(b"hi")
        client.dataReceived(b"hi")
        clock.advance(1.9)
        self.assertNoResult(reply)
        clock.advance(0.1)
        self.assertEqual(self.successResultOf(reply), b"hi")

    def test_serverCloseEndsReply(self) -> None:
        """
        The server closing the connection completes the reply in progress at
        once, however short it is.
        """
        client, transport, clock = alone("raw")
        reply = client.request(b"hello")
        client.dataReceived(b"he")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.successResultOf(reply), b"he")

    def test_requestsAreSentOneAtATime(self) -> None:
        """
        Raw replies cannot be told apart, so the next request is sent only
        once the previous reply is complete; each still gets its own reply.
        """
        client, pump, clock = connect("raw")
        first, second = client.request(b"one"), client.request(b"two")
        self.assertEqual(pump.clientTransport.value(), b"one")
        pump.flush()
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(first), b"oneSB")
        self.assertEqual(pump.clientTransport.value(), b"two")
        pump.flush()
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(second), b"twoSB")

    def test_serverClosingEarlyFailsUnsentRequests(self) -> None:
        """
        Requests still queued when the server closes fail with the reason.
        """
        client, pump, clock = connect("raw")
        first, second = client.request(b"one"), client.request(b"two")
        pump.flush()
        assert pump.server.transport is not None
        pump.server.transport.loseConnection()
        pump.flush()
        self.assertEqual(self.successResultOf(first), b"oneSB")
        self.failureResultOf(second, ConnectionDone)

    def test_emptyMessageIsRejected(self) -> None:
        """
        An empty raw message would never be answered: its request fails with
        L{ValueError}.
        """
        client, transport, clock = alone("raw")
        self.failureResultOf(client.request(b""), ValueError)

    def test_unexpectedDataIsDropped(self) -> None:
        """
        Bytes that arrive when no request waits are dropped, not taken as
        the next reply; they are counted in C{unexpected}, and replies in
        C{answered}.
        """
        client, transport, clock = alone("raw")
        client.dataReceived(b"hello?")
        reply = client.request(b"hi")
        client.dataReceived(b"hi")
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(reply), b"hi")
        self.assertEqual((client.answered, client.unexpected), (1, 6))

    def test_replyOverMaxLengthFails(self) -> None:
        """
        A reply longer than C{maxLength} (a server that streams without end)
        fails with L{MessageTooLong} as soon as it is too long, with no
        timeout needed, and the connection is aborted.
        """
        client, transport, clock = alone("raw", timeout=None, maxLength=10)
        reply, queued = client.request(b"hi"), client.request(b"ho")
        client.dataReceived(b"hi" + b"x" * 8)
        self.assertNoResult(reply)
        client.dataReceived(b"x")
        error = self.failureResultOf(reply, MessageTooLong).value
        self.assertEqual((error.length, error.maxLength), (11, 10))
        self.failureResultOf(queued, MessageTooLong)
        self.assertTrue(transport.disconnected)
        client.dataReceived(b"x" * 100)
        self.assertEqual(client._raw, [])

    def test_wrongReplyFailsAtOnce(self) -> None:
        """
        A reply whose first bytes are not its request's fails with
        L{WrongReply} as soon as they arrive, without the quiet period; the
        requests after it fail too, and the connection is aborted.
        """
        client, transport, clock = alone("raw")
        reply, queued = client.request(b"hello"), client.request(b"two")
        client.dataReceived(b"he")
        self.assertNoResult(reply)
        client.dataReceived(b"y!")
        error = self.failureResultOf(reply, WrongReply).value
        self.assertEqual((error.request, error.reply), (b"hello", b"hey!"))
        self.failureResultOf(queued, WrongReply)
        self.assertTrue(transport.disconnected)

    def test_longRequestAnsweredInPieces(self) -> None:
        """
        A server that answers each read of a long request with its suffix
        (the lesson's answers every C{recv(1024)}) is still an echo: only the
        reply's first L{RAW_PIECE} bytes must be the request's.
        """
        client, transport, clock = alone("raw")
        message = b"x" * 3000
        reply = client.request(message)
        pieces = [message[:RAW_PIECE], message[RAW_PIECE : 2 * RAW_PIECE], message[2 * RAW_PIECE :]]
        answer = b"".join(piece + b"SB" for piece in pieces)
        client.dataReceived(answer)
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(reply), answer)

    def test_learntSuffixEndsLaterReplies(self) -> None:
        """
        Once a reply has shown the server's suffix, a later reply is
        complete as soon as its request and that suffix have arrived, even
        in several reads, without waiting for the quiet period.
        """
        client, transport, clock = alone("raw")
        first = client.request(b"one")
        client.dataReceived(b"oneSB")
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(first), b"oneSB")
        second = client.request(b"two")
        for chunk in (b"tw", b"oS"):
            client.dataReceived(chunk)
            self.assertNoResult(second)
        client.dataReceived(b"B")
        self.assertEqual(self.successResultOf(second), b"twoSB")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_learntEmptySuffix(self) -> None:
        """
        An echo with no suffix (RFC 862) is learnt too.
        """
        client, transport, clock = alone("raw")
        first = client.request(b"one")
        client.dataReceived(b"one")
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(first), b"one")
        second = client.request(b"two")
        client.dataReceived(b"two")
        self.assertEqual(self.successResultOf(second), b"two")

    def test_replyNotFittingTheSuffixWaits(self) -> None:
        """
        A later reply longer than its request and the learnt suffix, or with
        other bytes in their place, waits for the quiet period as the first
        did, and shows the suffix afresh.
        """
        client, transport, clock = alone("raw")
        first = client.request(b"one")
        client.dataReceived(b"oneSB")
        clock.advance(QUIET)
        second = client.request(b"two")
        client.dataReceived(b"twoXY")
        self.assertNoResult(second)
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(second), b"twoXY")
        third = client.request(b"three")
        client.dataReceived(b"threeXY!")
        self.assertNoResult(third)
        clock.advance(QUIET)
        self.assertEqual(self.successResultOf(third), b"threeXY!")
        self.assertEqual(self.successResultOf(first), b"oneSB")

    def test_bytesPastALearntReplyAreAWrongReply(self) -> None:
        """
        Bytes a server sends after a reply that fitted the learnt suffix
        (its suffix grew) are taken for the next reply, which then does not
        start with its request: it fails as a wrong reply rather than being
        printed wrong.
        """
        client, transport, clock = alone("raw")
        first, second, third = client.request(b"one"), client.request(b"two"), client.request(b"six")
        client.dataReceived(b"oneSB")
        clock.advance(QUIET)
        client.dataReceived(b"twoSB")
        self.assertEqual(self.successResultOf(second), b"twoSB")
        client.dataReceived(b"!")
        self.assertEqual(self.failureResultOf(third, WrongReply).value.reply, b"!")
        self.assertEqual(self.successResultOf(first), b"oneSB")

    @given(
        suffix=st.sampled_from([b"", b"SB", "好".encode()]),
        messages=st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=6),
        cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    )
    def test_learntSuffixUnderAnyChunking(
        self, suffix: bytes, messages: list[bytes], cuts: list[int]
    ) -> None:
        """
        However each reply is cut into reads, every reply after the first
        is complete, and right, without the clock moving.
        """
        client, transport, clock = alone("raw")
        for index, message in enumerate(messages):
            reply = client.request(message)
            for chunk in cutAt(message + suffix, cuts):
                client.dataReceived(chunk)
            if index == 0:
                clock.advance(QUIET)
            self.assertEqual(self.successResultOf(reply), message + suffix)


class EchoClientTests(SynchronousTestCase):
    """
    L{EchoClient}'s lifetime: connecting, timeouts, closing, cancelling.
    """

    def test_replyTimeoutFailsEveryWaitingRequest(self) -> None:
        """
        When a reply does not arrive in time, every waiting request fails
        with L{ReplyTimeout} and the connection is aborted.
        """
        client, transport, clock = alone("line")
        first, second = client.request(b"a"), client.request(b"b")
        clock.advance(TIMEOUT)
        self.failureResultOf(first, ReplyTimeout)
        self.failureResultOf(second, ReplyTimeout)
        self.assertTrue(transport.disconnected)
        self.failureResultOf(client.request(b"c"), ReplyTimeout)

    def test_noTimeout(self) -> None:
        """
        With C{timeout=None} a request waits as long as it takes.
        """
        client, transport, clock = alone("line", timeout=None)
        reply = client.request(b"a")
        clock.advance(TIMEOUT * 100)
        client.dataReceived(b"a\n")
        self.assertEqual(self.successResultOf(reply), b"a")

    def test_closeFailsWaitingRequests(self) -> None:
        """
        C{close} closes the connection; waiting requests fail with
        L{ConnectionDone}, later ones too, and the returned L{Deferred} fires
        once the connection is lost.
        """
        client, pump, clock = connect("line")
        waiting = client.request(b"a")
        closed = client.close()
        self.assertNoResult(closed)
        self.failureResultOf(client.request(b"b"), ConnectionDone)
        pump.flush()
        self.successResultOf(closed)
        self.failureResultOf(waiting, ConnectionDone)
        self.successResultOf(client.whenDisconnected())

    def test_cancelledRequestKeepsItsSlot(self) -> None:
        """
        Cancelling a request gives up its reply; the next request still gets
        its own.
        """
        client, pump, clock = connect("line")
        first, second = client.request(b"a"), client.request(b"b")
        first.cancel()
        pump.flush()
        self.failureResultOf(first, CancelledError)
        self.assertEqual(self.successResultOf(second), b"bSB")

    def test_worksWithAwait(self) -> None:
        """
        Requests can be awaited one after another in a coroutine, in every
        framing; each message is sent exactly once.
        """
        for framing in ("raw", "line", "length"):
            replies, sent = self._awaitTwo(framing)
            self.assertEqual(replies, [b"oneSB", b"twoSB"], framing)
            self.assertEqual(sent, [encode(framing, b"one"), encode(framing, b"two")], framing)

    def _awaitTwo(self, framing: str) -> tuple[list[bytes], list[bytes]]:
        """
        Await two requests in turn; return the replies and what was sent.
        """
        client, pump, clock = connect(framing)
        sent: list[bytes] = []
        write = pump.clientTransport.write
        pump.clientTransport.write = lambda data: (sent.append(data), write(data))  # type: ignore[method-assign]

        async def talk() -> list[bytes]:
            return [await client.request(b"one"), await client.request(b"two")]

        replies = ensureDeferred(talk())
        for _ in range(2):
            pump.flush()
            clock.advance(QUIET)
        return self.successResultOf(replies), sent

    def test_requestFromAReplyCallbackWaitsItsTurn(self) -> None:
        """
        In raw framing, a request made by the callback of a reply, while
        others are queued, goes out after them, once each.
        """
        client, transport, clock = alone("raw")
        third: list[Deferred[bytes]] = []
        first = client.request(b"one")
        first.addCallback(lambda reply: third.append(client.request(b"three")))
        second = client.request(b"two")
        for message in (b"one", b"two", b"three"):
            self.assertEqual(transport.value(), message)
            transport.clear()
            client.dataReceived(message + b"SB")
            clock.advance(QUIET)
        self.assertEqual(self.successResultOf(second), b"twoSB")
        self.assertEqual(self.successResultOf(third[0]), b"threeSB")

    def test_connectWithEndpointString(self) -> None:
        """
        C{EchoClient.connect} connects to a client endpoint string and fires
        with the connected client, in the framing asked for.
        """
        reactor = MemoryReactorClock()
        connecting = EchoClient.connect(reactor, "tcp:host=127.0.0.1:port=8081", framing="length")
        host, port, factory, timeout, bindAddress = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 8081))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(StringTransport())
        client = self.successResultOf(connecting)
        self.assertIsInstance(client, EchoClient)
        self.assertEqual(client.framing, "length")

    def test_connectTimeout(self) -> None:
        """
        A connection not made within C{timeout} seconds fails with
        L{TimeoutError}.
        """
        reactor = MemoryReactorClock()
        connecting = EchoClient.connect(reactor, "tcp:host=127.0.0.1:port=8081", timeout=3)
        reactor.advance(3)
        self.failureResultOf(connecting, TimeoutError)

    def test_unknownFraming(self) -> None:
        """
        An unknown framing is refused with L{ValueError}.
        """
        self.assertRaises(ValueError, EchoClient, Clock(), framing="xml")


class ClientEndpointTests(SynchronousTestCase):
    """
    L{clientEndpoint} takes every endpoint form the client's help shows.
    """

    def endpoint(self, description: str) -> object:
        return clientEndpoint(MemoryReactorClock(), description)

    def test_tcp(self) -> None:
        """
        C{tcp:host=H:port=P}, and Twisted's C{tcp:H:P}.
        """
        for description in ("tcp:host=127.0.0.1:port=8081", "tcp:127.0.0.1:8081"):
            endpoint = self.endpoint(description)
            self.assertEqual((endpoint._host, endpoint._port), ("127.0.0.1", 8081))  # type: ignore[attr-defined]

    def test_tcp6(self) -> None:
        """
        C{tcp6:host=H:port=P} makes a L{TCP6ClientEndpoint}, with the IPv6
        address written plainly or with its colons escaped.
        """
        for description in ("tcp6:host=::1:port=8081", r"tcp6:host=\:\:1:port=8081", "tcp6:port=8081:host=::1"):
            endpoint = self.endpoint(description)
            self.assertIsInstance(endpoint, TCP6ClientEndpoint)
            self.assertEqual((endpoint._host, endpoint._port), ("::1", 8081))  # type: ignore[attr-defined]
        endpoint = self.endpoint("tcp6:host=fe80::1:port=9:timeout=3")
        self.assertEqual((endpoint._host, endpoint._timeout), ("fe80::1", 3))  # type: ignore[attr-defined]

    def test_unix(self) -> None:
        """
        C{unix:path=P}.
        """
        self.assertEqual(self.endpoint("unix:path=/tmp/echo.sock")._path, "/tmp/echo.sock")  # type: ignore[attr-defined]

    def test_missingParts(self) -> None:
        """
        A host, port or path left out is named in a one-line L{ValueError}.
        """
        for description, message in [
            ("tcp:host=127.0.0.1", "needs a port (port=...)"),
            ("tcp6:host=::1", "needs a port"),
            ("tcp6:port=8081", "needs a host"),
            ("tcp:", "needs a host"),
            ("unix:path=", "needs a path"),
            ("tcp6:host=::1:port=70000", "port 70000 is out of range"),
            ("tcp:host=a:port=0", "cannot connect to port 0"),
            ("tcp6:host=::1:port=1:colour=red", "unknown tcp6 parameter 'colour'"),
            ("nonsense:x", "Unknown endpoint type"),
        ]:
            error = self.assertRaises(ValueError, self.endpoint, description)
            self.assertIn(message, str(error), description)
            self.assertNotIn("\n", str(error))


class PipeliningPropertyTests(SynchronousTestCase):
    """
    Pipelined replies match their requests however the stream is cut.
    """

    @given(
        framing=st.sampled_from(["line", "length"]),
        messages=st.lists(st.binary(max_size=40).filter(lambda m: b"\n" not in m), max_size=8),
        cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    )
    def test_anyChunking(self, framing: str, messages: list[bytes], cuts: list[int]) -> None:
        """
        Whatever the sizes of the reads, each request gets its own reply.
        """
        client, transport, clock = alone(framing)
        replies = [client.request(message) for message in messages]
        stream = b"".join(encode(framing, message + b"SB") for message in messages)
        for chunk in cutAt(stream, cuts):
            client.dataReceived(chunk)
        self.assertEqual(
            [self.successResultOf(reply) for reply in replies],
            [message + b"SB" for message in messages],
        )


class FakeSocket:
    """
    A socket with a pending error.
    """

    def __init__(self, error: int) -> None:
        self.error = error

    def getsockopt(self, level: int, option: int) -> int:
        return self.error


class FakeDatagramTransport:
    """
    A connected UDP transport that records what is written.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.stopped = False
        self.socket = FakeSocket(0)

    def getHandle(self) -> FakeSocket:
        return self.socket

    def write(self, datagram: bytes) -> None:
        self.written.append(datagram)

    def stopListening(self) -> Deferred[None]:
        self.stopped = True
        return Deferred()


class DatagramEchoClientTests(SynchronousTestCase):
    """
    L{DatagramEchoClient}: one datagram per request, replies in order.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.client = DatagramEchoClient(self.clock, timeout=5)
        self.transport = FakeDatagramTransport()
        self.client.makeConnection(self.transport)  # type: ignore[arg-type]

    def test_oneDatagramAtATime(self) -> None:
        """
        Each message goes out as one datagram, the next only once the one
        before it is answered; each gets its own reply.
        """
        first, second = self.client.request(b"a"), self.client.request(b"b")
        self.assertEqual(self.transport.written, [b"a"])
        self.client.datagramReceived(b"aSB", ("127.0.0.1", 8081))
        self.assertEqual(self.successResultOf(first), b"aSB")
        self.assertEqual(self.transport.written, [b"a", b"b"])
        self.assertNoResult(second)
        self.client.datagramReceived(b"bSB", ("127.0.0.1", 8081))
        self.assertEqual(self.successResultOf(second), b"bSB")

    def test_lostDatagramFailsItsOwnRequest(self) -> None:
        """
        A datagram that is never answered fails alone with L{ReplyTimeout};
        the next request is sent then, and a late reply to the lost one is
        dropped rather than taken for the next one's.
        """
        first, second = self.client.request(b"a"), self.client.request(b"b")
        self.clock.advance(5)
        self.failureResultOf(first, ReplyTimeout)
        self.assertEqual(self.transport.written, [b"a", b"b"])
        self.client.datagramReceived(b"aSB", ("127.0.0.1", 8081))
        self.assertNoResult(second)
        self.client.datagramReceived(b"bSB", ("127.0.0.1", 8081))
        self.assertEqual(self.successResultOf(second), b"bSB")

    def test_repliesFireInOrder(self) -> None:
        """
        When the request after a reply cannot be sent, the reply still fires
        first, then that request's failure.
        """
        fired: list[object] = []
        first, second = self.client.request(b"a"), self.client.request(b"b")
        first.addBoth(fired.append)
        second.addErrback(lambda failure: fired.append(failure.type))

        def refuse(datagram: bytes) -> None:
            raise OSError(errno.EMSGSIZE, "Message too long")

        self.transport.write = refuse  # type: ignore[method-assign]
        self.client.datagramReceived(b"a", ("127.0.0.1", 8081))
        self.assertEqual(fired, [b"a", OSError])

    def test_sendErrorFailsTheRequest(self) -> None:
        """
        A datagram the transport refuses to send fails its request at once;
        the next request is sent as usual.
        """

        def refuse(datagram: bytes) -> None:
            raise OSError(errno.EMSGSIZE, "Message too long")

        self.transport.write = refuse  # type: ignore[method-assign]
        self.failureResultOf(self.client.request(b"x" * 70000), OSError)
        del self.transport.write
        reply = self.client.request(b"a")
        self.assertEqual(self.transport.written, [b"a"])
        self.client.datagramReceived(b"a", ("127.0.0.1", 8081))
        self.assertEqual(self.successResultOf(reply), b"a")

    def test_timeout(self) -> None:
        """
        A datagram not answered in time fails with L{ReplyTimeout}.
        """
        reply = self.client.request(b"a")
        self.clock.advance(5)
        self.failureResultOf(reply, ReplyTimeout)

    def test_refused(self) -> None:
        """
        An ICMP "port unreachable" fails the waiting requests with
        L{ConnectionRefusedError}.
        """
        reply = self.client.request(b"a")
        self.client.connectionRefused()
        self.failureResultOf(reply, ConnectionRefusedError)

    def test_portClosedByAnError(self) -> None:
        """
        When the reactor closes the port because its socket reports an error
        (what the epoll reactor does with an ICMP "port unreachable"), the
        waiting requests and later ones fail with that error.
        """
        reply = self.client.request(b"a")
        self.transport.socket.error = errno.ECONNREFUSED
        self.client.doStop()
        self.failureResultOf(reply, ConnectionRefusedError)
        self.client.transport = self.transport  # type: ignore[assignment]
        self.failureResultOf(self.client.request(b"b"), ConnectionRefusedError)

    def test_close(self) -> None:
        """
        C{close} stops listening and fails waiting and later requests.
        """
        reply = self.client.request(b"a")
        self.client.close()
        self.assertTrue(self.transport.stopped)
        self.failureResultOf(reply, ConnectionDone)
        self.failureResultOf(self.client.request(b"b"), ConnectionDone)

    def test_unexpectedDatagramIsDropped(self) -> None:
        """
        A datagram when no request waits is dropped.
        """
        self.client.datagramReceived(b"stray", ("127.0.0.1", 8081))
        reply = self.client.request(b"a")
        self.assertNoResult(reply)
