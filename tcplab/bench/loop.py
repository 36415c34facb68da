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

import math
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence

from tcplab.bench.address import Address
from tcplab.bench.plan import MAX_SEND, RECV_SIZE, LoadPlan
from tcplab.bench.result import BenchResult


class _Connection:
    """
    One connection's place in the request and reply streams.
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
    )

    def __init__(self, sock: socket.socket, expected: bytes) -> None:
        self.sock = sock
        self.assigned = 0  # messages this connection may send
        self.sent = 0  # request bytes sent
        self.received = 0  # offset in the reply stream: bytes read, less the suffixes of cuts
        self.attributed = 0  # answered messages whose latency is recorded
        self.sends: deque[tuple[int, float]] = deque()  # (messages sent, time)
        self.lastWrong = -1  # index of the last reply counted as wrong
        self.writing = False  # waiting for the socket to take more
        # What reads are checked against: the reply stream, or nothing (every
        # read takes the slow path) while a split reply is read.
        self.expected = expected
        self.cut = 0  # bytes read of a cut's suffix (len(suffix): just after one)
        self.split = False  # the reply being read came back split


def connectAll(address: Address, count: int, timeout: float) -> tuple[list[socket.socket], list[str]]:
    """
    Open C{count} connections to C{address}, one after the other, within
    C{timeout} seconds in all.

    @return: the connected non-blocking sockets, and one message per
        connection that could not be made.
    """
    sockets, failures = [], []
    deadline = time.monotonic() + timeout
    for _ in range(count):
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(address.sockaddr)
        except OSError as error:
            sock.close()
            reason = "timed out" if isinstance(error, TimeoutError) else error.strerror
            failures.append(f"cannot connect to {address}: {reason or error}")
            continue
        if address.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sockets.append(sock)
    return sockets, failures


def runLoad(
    sockets: Sequence[socket.socket],
    plan: LoadPlan,
    duration: float | None = None,
    requests: int | None = None,
    timeout: float = 10.0,
    progress: Callable[[int], None] | None = None,
    spin: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> BenchResult:
    """
    Run the load over connected non-blocking C{sockets} until C{duration}
    seconds have passed or C{requests} messages are answered, then wait for
    the replies still in flight and close every socket.

    @param progress: called about ten times a second with the number of
        messages answered so far.
    @param timeout: stop waiting after this many seconds without any reply.
    @param spin: poll without ever sleeping (uses a whole CPU).
    @return: what was measured; C{connections} and C{failedConnections}
        count only these sockets.
    """
    poller = select.epoll() if hasattr(select, "epoll") else select.poll()
    pollScale = 1.0 if hasattr(select, "epoll") else 1000.0
    readable = select.EPOLLIN if hasattr(select, "epoll") else select.POLLIN
    writable = select.EPOLLOUT if hasattr(select, "epoll") else select.POLLOUT
    closedMask = (
        (select.EPOLLHUP | select.EPOLLERR) if hasattr(select, "epoll") else select.POLLHUP | select.POLLERR
    )
    result = BenchResult(connections=len(sockets))
    connections = {sock.fileno(): _Connection(sock, plan.expected) for sock in sockets}
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

    def fill(conn: _Connection, now: float) -> None:
        # Top the connection up to `pipeline` unanswered messages: one send
        # call for all of them, from the prebuilt request stream.
        nonlocal remaining
        if not stopping:
            want = conn.received // replyLength + pipeline - conn.assigned
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
            except BlockingIOError:
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

    def close(fd: int, conn: _Connection, failure: str | None) -> None:
        poller.unregister(fd)
        conn.sock.close()
        del connections[fd]
        outstanding = conn.assigned - conn.received // replyLength
        if failure is not None or outstanding > 0:
            result.failedConnections += 1
            result.failures.append(failure or "the server closed a connection early")
            result.unanswered += max(0, outstanding)

    start = clock()
    for conn in connections.values():
        fill(conn, start)
    deadline = start + duration if duration is not None else math.inf
    lastReply = nextTick = start
    # Spinning: never sleep in poll, so a reply is seen the moment it lands.
    wait = 0 if spin else 0.1 * pollScale
    try:
        while connections:
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
            events = poller.poll(wait)
            now = clock()
            for fd, mask in events:
                conn = connections.get(fd)
                if conn is None:
                    continue
                if mask & writable and not mask & closedMask:
                    fill(conn, now)
                if not mask & (readable | closedMask):
                    continue
                try:
                    got = conn.sock.recv_into(readBuffer)
                except BlockingIOError:
                    continue
                except OSError as error:
                    close(fd, conn, f"connection lost: {error.strerror or error}")
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
                fill(conn, now)
    except KeyboardInterrupt:
        result.failures.append("interrupted")
    end = clock()

    for fd, conn in list(connections.items()):
        outstanding = conn.assigned - conn.received // replyLength
        if outstanding > 0:
            result.unanswered += outstanding
            result.failedConnections += 1
            result.failures.append(f"no reply for {timeout:g} s")
        poller.unregister(fd)
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
