"""
The load itself: connect, then one plain C{epoll} loop over non-blocking
sockets that sends from the prebuilt request stream and checks every read
against the expected reply stream.

Its cost is per I{read}, never per message: a send is one C{send} of a
slice, a check is one C-level comparison, answered messages are counted by
an integer division, and latency is recorded once per C{send}.  Only a read
that does not match is examined message by message (L{_readWrong},
L{_readSplittable}).
"""

from __future__ import annotations

import errno
import math
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from tcplab.bench.address import Address
from tcplab.bench.plan import MAX_SEND, RECV_SIZE, LoadPlan
from tcplab.bench.result import BenchResult

#: The last message of a connection that is never closed to make way for another.
_FOREVER = 1 << 62


class _Connection:
    """
    One connection's place in the request and reply streams.

    Counts are in messages and offsets in bytes, both from the start of the
    streams: a connection that starts further in (with C{--reconnect}) starts
    with them at its first message.
    """

    __slots__ = (
        "sock",
        "assigned",
        "sent",
        "received",
        "attributed",
        "sends",
        "lastWrong",
        "writing",
        "expected",
        "cut",
        "split",
        "last",
        "connecting",
    )

    def __init__(
        self, sock: socket.socket, plan: LoadPlan, first: int = 0, connecting: float | None = None
    ) -> None:
        self.sock = sock
        self.assigned = first  # messages this connection may send
        self.sent = first * plan.requestLength  # request bytes sent
        # Offset in the reply stream: bytes read, less the suffixes of cuts.
        self.received = first * plan.replyLength
        self.attributed = first  # answered messages whose latency is recorded
        self.sends: deque[tuple[int, float]] = deque()  # (messages sent, time)
        self.lastWrong = first - 1  # index of the last reply counted as wrong
        self.writing = False  # waiting for the socket to take more
        # What reads are checked against: the reply stream, or nothing (every
        # read takes the slow path) while a split reply is read.
        self.expected = plan.expected
        self.cut = 0  # bytes read of a cut's suffix (len(suffix): just after one)
        self.split = False  # the reply being read came back split
        # The message after the last one this connection sends (--reconnect).
        self.last = _FOREVER if plan.reconnect is None else first + plan.reconnect
        # When its connect() was called, until it is known to be made.
        self.connecting = connecting


class Connected(NamedTuple):
    """
    What L{connectAll} made.
    """

    sockets: list[socket.socket]
    """The connected non-blocking sockets."""
    failures: list[str]
    """Why, for each connection that could not be made."""
    latencies: dict[int, int]
    """How long each connection took to be made: microseconds to count."""


def connectAll(
    address: Address, count: int, timeout: float, clock: Callable[[], float] = time.perf_counter
) -> Connected:
    """
    Open C{count} connections to C{address}, one after the other, within
    C{timeout} seconds in all.
    """
    sockets, failures, latencies = [], [], {}
    deadline = time.monotonic() + timeout
    for index in range(count):
        try:
            sock = address.newSocket(index)
        except OSError as error:
            failures.append(f"cannot connect to {address}: {error.strerror or error}")
            continue
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            began = clock()
            sock.connect(address.sockaddr)
            micros = int((clock() - began) * 1e6)
        except OSError as error:
            sock.close()
            reason = "timed out" if isinstance(error, TimeoutError) else error.strerror
            failures.append(f"cannot connect to {address}: {reason or error}")
            continue
        latencies[micros] = latencies.get(micros, 0) + 1
        if address.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    return Connected(sockets, failures, latencies)


def runLoad(
    sockets: Sequence[socket.socket],
    plan: LoadPlan,
    duration: float | None = None,
    requests: int | None = None,
    timeout: float = 10.0,
    progress: Callable[[int], None] | None = None,
    spin: bool = False,
    clock: Callable[[], float] = time.perf_counter,
    address: Address | None = None,
) -> BenchResult:
    """
    Run the load over connected non-blocking C{sockets} until C{duration}
    seconds have passed or C{requests} messages are answered, then wait for
    the replies still in flight and close every socket.

    With C{plan.reconnect}, a connection is closed once its last message is
    answered, and a new one to C{address} takes its place; so is one that
    the server closed or lost (but not one that could not be made).

    @param progress: called about ten times a second with the number of
        messages answered so far.
    @param timeout: stop waiting after this many seconds without any reply.
    @param spin: poll without ever sleeping (uses a whole CPU).
    @return: what was measured; C{connections} counts only these sockets,
        C{connectionsMade} only those opened in their place.
    @raise ValueError: with C{plan.reconnect} but no C{address}.
    """
    reconnect = plan.reconnect
    if reconnect is not None and address is None:
        raise ValueError("reconnecting needs the address to connect to")
    poller = select.epoll() if hasattr(select, "epoll") else select.poll()
    pollScale = 1.0 if hasattr(select, "epoll") else 1000.0
    readable = select.EPOLLIN if hasattr(select, "epoll") else select.POLLIN
    writable = select.EPOLLOUT if hasattr(select, "epoll") else select.POLLOUT
    closedMask = (
        (select.EPOLLHUP | select.EPOLLERR) if hasattr(select, "epoll") else select.POLLHUP | select.POLLERR
    )
    result = BenchResult(connections=len(sockets))
    connections = {sock.fileno(): _Connection(sock, plan) for sock in sockets}
    for fd in connections:
        poller.register(fd, readable)

    size, pipeline = plan.requestLength, plan.pipeline
    replyLength = plan.replyLength
    sendPeriod, sendView = plan.sendPeriod, memoryview(plan.sendBuffer)
    replyPeriod = plan.replyPeriod
    mismatched = _readSplittable if plan.splittable else _readWrong
    latencies = result.latencies
    readBuffer = memoryview(bytearray(RECV_SIZE))
    remaining = requests if requests is not None else -1  # -1: no limit
    answered = 0
    stopping = False
    # --reconnect: connections opened so far (the next starts at that message
    # of the period), and connections closed whose replacement is not open yet.
    opened, toOpen = len(sockets), 0
    # A connection that sends all its messages at once has no use for
    # TCP_NODELAY (nothing of its own is unacknowledged when it sends).
    noDelay = address is not None and address.family != socket.AF_UNIX and not (
        reconnect is not None and reconnect <= pipeline
    )

    def fill(conn: _Connection, now: float) -> None:
        # Top the connection up to `pipeline` unanswered messages (and no
        # further than its last): one send call for all of them, from the
        # prebuilt request stream.
        nonlocal remaining
        if not stopping:
            want = conn.received // replyLength + pipeline
            if want > conn.last:
                want = conn.last
            want -= conn.assigned
            if want > 0:
                if remaining >= 0:
                    want = min(want, remaining)
                    remaining -= want
                conn.assigned += want
        target = conn.assigned * size
        while conn.sent < target:
            start = conn.sent % sendPeriod
            length = min(target - conn.sent, MAX_SEND)
            try:
                count = conn.sock.send(sendView[start : start + length])
            except OSError:
                # Full (or not connected yet); an error shows when reading.
                count = 0
            conn.sent += count
            if count:
                conn.sends.append((conn.sent // size, now))
            if count < length:
                if not conn.writing:
                    conn.writing = True
                    poller.modify(conn.sock.fileno(), readable | writable)
                return
        if conn.writing:
            conn.writing = False
            poller.modify(conn.sock.fileno(), readable)

    def made(conn: _Connection, now: float) -> None:
        micros = int((now - conn.connecting) * 1e6)  # type: ignore[operator]
        result.connectLatencies[micros] = result.connectLatencies.get(micros, 0) + 1
        result.connectionsMade += 1
        conn.connecting = None

    def connect() -> bool:
        # Open a connection in the place of one that closed.  False if it
        # must wait: a UNIX listener's queue is full.
        nonlocal opened
        assert address is not None
        try:
            sock = address.newSocket(opened, socket.SOCK_NONBLOCK)
        except OSError as error:
            result.fail(f"cannot connect to {address}: {error.strerror or error}")
            return True
        if noDelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        began = clock()
        error = sock.connect_ex(address.sockaddr)
        now = clock()
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            if error == errno.EAGAIN:
                return False
            result.fail(f"cannot connect to {address}: {os.strerror(error)}")
            return True
        conn = _Connection(sock, plan, opened % plan.period, began)
        opened += 1
        fd = sock.fileno()
        connections[fd] = conn
        poller.register(fd, readable)
        # Over loopback the connection is usually made by the time connect()
        # returns: send at once, and wait for it only if the send cannot go.
        sent = conn.sent
        fill(conn, now)
        if conn.sent > sent:
            made(conn, now)
        return True

    def close(fd: int, conn: _Connection, error: str | None) -> None:
        # The connection was closed by the server (error None) or lost.
        # (Closing a socket also takes it out of the poller.)
        nonlocal toOpen
        conn.sock.close()
        del connections[fd]
        outstanding = conn.assigned - conn.received // replyLength
        result.unanswered += max(0, outstanding)
        if conn.connecting is not None:
            result.fail(f"cannot connect to {address}: {error or 'closed by the server'}")
            return
        if error is not None:
            result.fail(f"connection lost: {error}")
        elif outstanding > 0:
            result.fail("the server closed a connection early")
        if reconnect is not None:
            toOpen += 1

    def finish(fd: int, conn: _Connection) -> None:
        # Its last message is answered: close it, and let another take its place.
        nonlocal toOpen
        conn.sock.close()
        del connections[fd]
        toOpen += 1

    start = clock()
    for conn in connections.values():
        fill(conn, start)
    deadline = start + duration if duration is not None else math.inf
    lastReply = nextTick = start
    # Spinning: never sleep in poll, so a reply is seen the moment it lands.
    wait = 0 if spin else 0.1 * pollScale
    try:
        while connections or toOpen:
            now = clock()
            if now >= nextTick:
                nextTick = now + 0.1
                if progress is not None:
                    progress(answered)
                if now >= deadline and not stopping:
                    stopping = True
                    remaining = 0
                if now - lastReply > timeout:
                    break
            if stopping or remaining == 0:
                # Done once every assigned message is answered.
                if all(c.received >= c.assigned * replyLength for c in connections.values()):
                    break
            while toOpen and not stopping and remaining != 0 and connect():
                toOpen -= 1
            events = poller.poll(wait)
            now = clock()
            for fd, mask in events:
                conn = connections.get(fd)
                if conn is None:
                    continue
                if mask & writable and not mask & closedMask:
                    if conn.connecting is not None:
                        made(conn, now)
                    fill(conn, now)
                if not mask & (readable | closedMask):
                    continue
                try:
                    got = conn.sock.recv_into(readBuffer)
                except BlockingIOError:
                    continue
                except OSError as error:
                    close(fd, conn, error.strerror or str(error))
                    continue
                if not got:
                    close(fd, conn, None)
                    continue
                # Hot path: one C-level comparison, without a copy, checks
                # every byte of this read.
                data = readBuffer[:got]
                if not conn.expected.startswith(data, conn.received % replyPeriod):
                    # Slow path: count what is wrong; got becomes the bytes
                    # of the reply stream that this read stands for.
                    got = mismatched(plan, conn, bytes(data), result)
                before = conn.received // replyLength
                conn.received += got
                done = conn.received // replyLength
                if done > before:
                    lastReply = now
                    answered += done - before
                    _recordLatency(conn, done, now, latencies)
                    if done >= conn.last:
                        finish(fd, conn)
                        continue
                fill(conn, now)
    except KeyboardInterrupt:
        result.failures.append("interrupted")
    end = clock()

    for conn in connections.values():
        outstanding = conn.assigned - conn.received // replyLength
        if conn.connecting is not None:
            result.fail(f"cannot connect to {address}: timed out")
        elif outstanding > 0:
            result.fail(f"no reply for {timeout:g} s")
        result.unanswered += max(0, outstanding)
        conn.sock.close()
    poller.close()
    if progress is not None:
        progress(answered)
    result.messages = answered
    result.requestBytes = answered * size
    result.seconds = end - start
    return result


def _recordLatency(conn: _Connection, done: int, now: float, latencies: dict[int, int]) -> None:
    # Every message of a send call gets that call's send time: one histogram
    # update per send, not per message.
    sends, attributed = conn.sends, conn.attributed
    while sends and attributed < done:
        sentUpTo, sentAt = sends[0]
        upTo = min(sentUpTo, done)
        if upTo > attributed:
            micros = int((now - sentAt) * 1e6)
            latencies[micros] = latencies.get(micros, 0) + upTo - attributed
            attributed = upTo
        if sentUpTo <= done:
            sends.popleft()
        else:
            break
    conn.attributed = attributed


def _readWrong(plan: LoadPlan, conn: _Connection, data: bytes, result: BenchResult) -> int:
    # A read that does not match: its bytes are still the next of the reply
    # stream, some of them wrong.
    result.errors += _countWrong(plan, conn, data, conn.received)
    return len(data)


def _countWrong(plan: LoadPlan, conn: _Connection, data: bytes, first: int) -> int:
    # Slow path, only for a read that does not match: count the requested
    # replies that differ in data (at reply stream offset first), each once
    # even when it spans two reads.  Bytes past the last requested reply
    # spoil that reply, so that a connection never counts more wrong replies
    # than it asked for.
    replyLength = plan.replyLength
    last = first + len(data)
    wrong = 0
    limit = conn.assigned * replyLength
    for index in range(first // replyLength, (last - 1) // replyLength + 1):
        begin = max(index * replyLength, first)
        end = min((index + 1) * replyLength, last)
        got = data[begin - first : end - first]
        extra = end > limit
        if extra or got != plan.expectedAt(begin, end - begin):
            wrong += _markWrong(conn, index)
    return wrong


def _markWrong(conn: _Connection, index: int) -> int:
    # Count reply index (at most the last requested one) as wrong, once.
    index = min(index, max(conn.assigned - 1, 0))
    if index > conn.lastWrong:
        conn.lastWrong = index
        return 1
    return 0


def _readSplittable(plan: LoadPlan, conn: _Connection, data: bytes, result: BenchResult) -> int:
    # Slow path of raw framing with a suffix (one message in flight), for a
    # read that is not the next bytes of the reply stream.  The server
    # answers each read with read + suffix, so a message that it read in
    # pieces comes back as piece + suffix, piece + suffix...  No message
    # holds the suffix's first byte, so every byte read is either the
    # message's next byte or the start of a cut's suffix; the cuts' suffixes
    # are left out of the reply stream.  A split reply is counted when it is
    # complete, as split; anything else is wrong, and the rest of the read is
    # then counted as the other framings count it.
    suffix, size, replyLength = plan.suffix, plan.size, plan.replyLength
    mark = suffix[0]
    at, offset = 0, conn.received
    while at < len(data):
        position = offset % replyLength
        if conn.cut == len(suffix):
            # Just after a cut: a piece is never empty.
            if data[at] == mark:
                break
            conn.cut = 0
        if conn.cut:
            # Inside a cut's suffix.
            piece = data[at : at + len(suffix) - conn.cut]
            if piece != suffix[conn.cut : conn.cut + len(piece)]:
                break
            conn.cut += len(piece)
            at += len(piece)
            continue
        if position < size and data[at] == mark:
            if position == 0:
                break  # a suffix before any of the message
            conn.cut, conn.split = 1, True
            at += 1
            continue
        if position < size:
            # The message's next bytes, up to a cut or its end.
            cut = data.find(mark, at, at + size - position)
            length = (cut if cut >= 0 else min(len(data), at + size - position)) - at
        else:
            length = min(len(data) - at, replyLength - position)
        if data[at : at + length] != plan.expectedAt(offset, length):
            break
        at += length
        offset += length
        if position + length == replyLength and conn.split:
            result.split += 1
            conn.split = False
    else:
        conn.expected = b"" if conn.split else plan.expected
        return offset - conn.received
    # Wrong: the reply being read, and whatever else the rest spoils.
    conn.cut, conn.split, conn.expected = 0, False, plan.expected
    result.errors += _markWrong(conn, offset // replyLength)
    result.errors += _countWrong(plan, conn, data[at:], offset)
    return offset - conn.received + len(data) - at
