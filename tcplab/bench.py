"""
C{tcplab bench}: a load generator for any echo server.

It opens N connections, keeps K messages in flight on each, checks every
reply byte for byte and reports messages/s, MB/s, latency percentiles, wrong
replies and failed connections.

The generator must not be what limits a measurement, so its cost is per
I{read}, never per message:

  - every message and every expected reply is built once, before the run: a
    period of distinct messages is repeated into one send buffer and one
    expected-reply buffer, so sending is one C{send} of a slice and checking
    is one C-level comparison of the bytes read with a slice of the expected
    stream;
  - replies have a known length, so the number of answered messages is an
    integer division of the bytes read, not a scan;
  - latency is recorded once per C{send} call (all the messages of one send
    share its timestamp), into a histogram keyed by microseconds;
  - the loop is a plain C{epoll} loop over non-blocking sockets, without a
    framework's per-event dispatch; C{--processes} splits the connections
    over several processes for servers faster than one core of Python.

Only when a read does not match is it examined message by message, to count
how many replies were wrong, or (raw framing with a suffix, one message in
flight) to follow a reply that came back split because the server read its
message in pieces.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from twisted.python import usage

from tcplab import coerce, defaults
from tcplab.endpoints import REQUIRED_FIELDS, requiredFields, splitEndpoint
from tcplab.framing import checkSuffix, encode
from tcplab.text import plural

#: Bytes asked of the kernel per read.  Reads go into one buffer allocated
#: once: a C{recv} of this size allocates a new buffer per call, above glibc's
#: 128 KiB mmap threshold, and under load that cost a page fault every two
#: reads (see docs/performance.md).
RECV_SIZE = 256 * 1024

#: Bytes handed to the kernel per C{send}, at most.
MAX_SEND = 1024 * 1024

#: How many distinct messages a period holds, at least (more when --pipeline is higher).
MIN_PERIOD = 64

#: The most bytes of distinct messages built before the run.
MAX_PERIOD_BYTES = 4 * 1024 * 1024

EXIT_OK = 0
EXIT_FAILURE = 1

#: The largest message: as long as the longest reply the client accepts.
MAX_SIZE = defaults.CLIENT_MAX_LENGTH

__all__ = ["BenchOptions", "BenchResult", "LoadPlan", "formatProblems", "formatSummary", "measure", "runBench"]


class BenchOptions(coerce.CommandOptions):
    """
    Options of C{tcplab bench}.
    """

    synopsis = "Usage: tcplab bench [options] [HOST PORT]"
    longdesc = (
        "Measure an echo server: open --connections connections to HOST PORT "
        f"(default {defaults.HOST} {defaults.PORT}) or to --connect ENDPOINT, keep "
        "--pipeline messages in flight on each, check every reply byte for byte, "
        "and print messages/s, MB/s, latency percentiles and errors. The server "
        "must echo each message followed by --suffix (tcplab's own framings). "
        "In raw framing the server suffixes each read: a message it reads in "
        "pieces comes back split, which is counted apart."
    )
    optFlags = [
        ["json", None, "Print one JSON object instead of the summary."],
        ["spin", None, "Poll without sleeping: quicker to see replies, but uses a whole CPU."],
    ]
    optParameters = [
        [
            "connect",
            "e",
            None,
            "Connect to this endpoint instead of HOST PORT: tcp:host=H:port=P, "
            "tcp6:host=H:port=P or unix:path=FILE, or Twisted's short forms "
            "tcp:H:P and unix:FILE; an IPv6 H is written plain (::1) or, as "
            "Twisted escapes colons, \\:\\:1. No TLS.",
        ],
        ["connections", "c", 10, "Connections to open.", coerce.positive],
        [
            "size",
            "s",
            64,
            f"Message payload size in bytes (without framing), at most {MAX_SIZE}.",
            coerce.size,
        ],
        ["duration", "d", None, "Run this many seconds [default: 5].", coerce.seconds],
        ["requests", "n", None, "Send this many messages in all, then stop.", coerce.positive],
        ["pipeline", "k", 1, "Messages in flight on each connection.", coerce.positive],
        [
            "framing",
            "f",
            defaults.FRAMING,
            "raw, line (\\n-terminated) or length (4-byte big-endian prefix).",
            coerce.framing,
        ],
        ["suffix", None, "", "Text the server appends to every reply (UTF-8)."],
        ["processes", "p", 1, "Load-generating processes.", coerce.positive],
        ["timeout", None, 10.0, "Give up after this many seconds connecting, or without a reply.", coerce.seconds],
    ]

    def getSynopsis(self) -> str:
        return self.synopsis

    def parseArgs(self, host: str | None = None, port: str | None = None, *extra: str) -> None:
        if extra:
            raise usage.UsageError(f"unexpected argument {extra[0]!r}: give HOST and PORT, or neither")
        if host is not None and port is None:
            raise usage.UsageError("give both HOST and PORT, or neither")
        self["host"] = host
        try:
            self["port"] = None if port is None else coerce.remotePort(port)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None

    def postOptions(self) -> None:
        if self["connect"] is not None and self["host"] is not None:
            raise usage.UsageError("give either --connect or HOST PORT, not both")
        if self["duration"] is not None and self["requests"] is not None:
            raise usage.UsageError("give either --duration or --requests, not both")
        if self["duration"] is None and self["requests"] is None:
            self["duration"] = 5.0
        if self["size"] > MAX_SIZE:
            raise usage.UsageError(f"--size must be at most {MAX_SIZE} bytes")
        if self["timeout"] == 0:
            raise usage.UsageError("--timeout must be more than 0 seconds")
        if self["duration"] == 0:
            raise usage.UsageError("--duration must be more than 0 seconds")
        if self["processes"] > self["connections"]:
            raise usage.UsageError("--processes must not exceed --connections")
        self["suffix"] = coerce.utf8(self["suffix"])
        try:
            checkSuffix(self["framing"], self["suffix"])
        except ValueError as error:
            raise usage.UsageError(f"--suffix: {error}") from None
        if self["framing"] == "raw" and self["suffix"] and self["pipeline"] > 1:
            raise usage.UsageError(
                "--suffix in raw framing needs --pipeline 1: the server suffixes "
                "each read, not each message, so the replies to several messages "
                "in flight cannot be checked"
            )
        try:
            self["address"] = (
                parseEndpoint(self["connect"])
                if self["connect"] is not None
                else tcpAddress(self["host"] or defaults.HOST, self["port"] or defaults.PORT)
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None


@dataclass(frozen=True)
class Address:
    """
    Where to connect: a socket family and a C{connect()} address.
    """

    family: int
    sockaddr: Any

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return str(self.sockaddr)
        host, port = self.sockaddr[:2]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


def tcpAddress(host: str, port: int, family: int = socket.AF_UNSPEC) -> Address:
    """
    @return: the first TCP address that C{host} and C{port} resolve to.
    @raise ValueError: if C{host} does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"cannot resolve {host!r}: {error.strerror or error}") from None
    family, _, _, _, sockaddr = infos[0]
    return Address(family, sockaddr)


def parseEndpoint(description: str) -> Address:
    """
    Parse a Twisted client endpoint string of the kinds a load generator can
    use directly, as C{tcplab client --connect} takes them:
    C{tcp:host=H:port=P} (or C{tcp:H:P}), C{tcp6:host=H:port=P} and
    C{unix:path=P} (or C{unix:P}).  Colons inside a value are escaped with a
    backslash, as in Twisted; an IPv6 host may also be written plain
    (C{host=::1}).

    @raise ValueError: with a one-line message, for any other endpoint (TLS
        included), a field other than these, or a missing host, port or path.
    """
    kind, positional, named = splitEndpoint(description)
    if kind in ("tls", "ssl"):
        raise ValueError(f"{kind}: endpoints are not supported: bench does not do TLS; use tcp, tcp6 or unix")
    if kind not in ("tcp", "tcp6", "unix"):
        raise ValueError(f"cannot benchmark over {kind!r} endpoints: use tcp, tcp6 or unix")
    names = REQUIRED_FIELDS[kind]
    for name in named:
        if name not in names:
            raise ValueError(f"endpoint {description!r}: {name}= is not supported (only {'= '.join(names)}=)")
    if len(positional) > len(names) - len(named):
        raise ValueError(f"endpoint {description!r} has too many fields")
    values = requiredFields(description, kind, positional, named)
    if kind == "unix":
        return Address(socket.AF_UNIX, values["path"])
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_UNSPEC
    return tcpAddress(values["host"], coerce.remotePort(values["port"]), family)


class LoadPlan:
    """
    The bytes of a run, built once: what is sent and what must come back.

    Messages are C{size} bytes of printable text, distinct within a period of
    C{period} messages, so that a reply out of order is noticed.  The request
    stream is that period repeated forever; so is the reply stream.

    @ivar requestLength: bytes of one framed request.
    @ivar replyLength: bytes of one framed reply.
    @ivar sendBuffer: the request stream, long enough that a send of up to
        L{MAX_SEND} bytes can start anywhere in the first period.
    @ivar expected: the reply stream, long enough that a read of up to
        L{RECV_SIZE} bytes can start anywhere in the first period.
    @ivar splittable: whether a reply may come back split: in raw framing
        the server suffixes each read, so a message it reads in pieces is
        answered piece + suffix, piece + suffix.  The messages then never
        hold the suffix's first byte, so that a cut is always recognised.
    """

    def __init__(self, framing: str, size: int, suffix: bytes = b"", pipeline: int = 1) -> None:
        self.framing = framing
        self.size = size
        self.suffix = suffix
        self.pipeline = pipeline
        self.period = max(1, min(max(pipeline, MIN_PERIOD), MAX_PERIOD_BYTES // size))
        self.splittable = framing == "raw" and bool(suffix)
        payloads = [_payload(index, size) for index in range(self.period)]
        if self.splittable:
            # "A" is not in any payload: the replacement keeps them distinct.
            payloads = [payload.replace(suffix[:1], b"A") for payload in payloads]
        requests = b"".join([encode(framing, payload) for payload in payloads])
        replies = b"".join([encode(framing, payload + suffix) for payload in payloads])
        self.requestLength = len(requests) // self.period
        self.replyLength = len(replies) // self.period
        self.sendPeriod = len(requests)
        self.replyPeriod = len(replies)
        self.sendBuffer = requests * (2 + MAX_SEND // len(requests))
        self.expected = replies * (2 + RECV_SIZE // len(replies))

    def expectedAt(self, offset: int, length: int) -> bytes:
        """
        @return: the C{length} reply bytes expected at C{offset} of a
            connection's reply stream (C{length} at most L{RECV_SIZE}).
        """
        start = offset % self.replyPeriod
        return self.expected[start : start + length]


def _payload(index: int, size: int) -> bytes:
    # Printable, no newline, and different for every index of a period.
    stamp = b"%d:" % (index,)
    alphabet = bytes(range(97, 123))
    body = alphabet[index % 26 :] + alphabet[: index % 26]
    return (stamp + body * (size // 26 + 1))[:size]


@dataclass
class BenchResult:
    """
    What a run measured.

    @ivar messages: messages whose reply came back (right or wrong).
    @ivar errors: replies that differ from the expected bytes, plus extra bytes.
    @ivar split: replies (raw framing with a suffix) that came back in pieces,
        each with its suffix: the server read the message in pieces.  Neither
        right nor wrong, and not counted in C{errors}.
    @ivar unanswered: messages sent whose reply never came.
    @ivar latencies: histogram of round-trip times: microseconds to count.
    """

    connections: int = 0
    failedConnections: int = 0
    messages: int = 0
    requestBytes: int = 0
    errors: int = 0
    split: int = 0
    unanswered: int = 0
    seconds: float = 0.0
    latencies: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def merge(self, other: BenchResult) -> None:
        """
        Add the counts of C{other}, measured at the same time by another process.
        """
        self.connections += other.connections
        self.failedConnections += other.failedConnections
        self.messages += other.messages
        self.requestBytes += other.requestBytes
        self.errors += other.errors
        self.split += other.split
        self.unanswered += other.unanswered
        self.seconds = max(self.seconds, other.seconds)
        for micros, count in other.latencies.items():
            self.latencies[micros] = self.latencies.get(micros, 0) + count
        self.failures.extend(other.failures)

    def percentile(self, fraction: float) -> float | None:
        """
        @return: the round-trip time in milliseconds that C{fraction} of the
            answered messages did not exceed, or L{None} if none was answered.
        """
        total = sum(self.latencies.values())
        if not total:
            return None
        rank, seen = math.ceil(fraction * total), 0
        for micros in sorted(self.latencies):
            seen += self.latencies[micros]
            if seen >= rank:
                return micros / 1000
        return max(self.latencies) / 1000

    def summary(self, plan: LoadPlan) -> dict[str, Any]:
        """
        @return: the JSON-ready summary of the run.
        """
        seconds = self.seconds or float("nan")
        return {
            "framing": plan.framing,
            "size": plan.size,
            "suffix": plan.suffix.decode("utf-8", "replace"),
            "pipeline": plan.pipeline,
            "connections": self.connections,
            "failedConnections": self.failedConnections,
            "messages": self.messages,
            "seconds": round(self.seconds, 6),
            "messagesPerSecond": round(self.messages / seconds, 1) if self.seconds else 0.0,
            "megabytesPerSecond": round(self.requestBytes / seconds / 1e6, 3) if self.seconds else 0.0,
            "latencyMs": {
                "p50": self.percentile(0.50),
                "p90": self.percentile(0.90),
                "p99": self.percentile(0.99),
                "max": max(self.latencies) / 1000 if self.latencies else None,
            },
            "errors": self.errors,
            "split": self.split,
            "unanswered": self.unanswered,
        }


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


def _worker(
    address: Address,
    plan: LoadPlan,
    connections: int,
    duration: float | None,
    requests: int | None,
    timeout: float,
    spin: bool,
    barrier: Any,
    answered: Any,
    results: Any,
) -> None:
    # One load-generating process of --processes: connect, wait for the
    # others, run, and send the result back.
    sockets, failures = connectAll(address, connections, timeout)
    barrier.wait()

    def progress(count: int) -> None:
        answered.value = count

    result = runLoad(sockets, plan, duration, requests, timeout, progress, spin)
    result.connections += len(failures)
    result.failedConnections += len(failures)
    result.failures[:0] = failures
    results.put(result)


def measure(
    address: Address,
    plan: LoadPlan,
    connections: int,
    duration: float | None = None,
    requests: int | None = None,
    processes: int = 1,
    timeout: float = 10.0,
    progress: Callable[[int], None] | None = None,
    spin: bool = False,
) -> BenchResult:
    """
    Connect, run the load and gather the result, in this process or split
    over C{processes} processes (connections and requests shared out).
    """
    if processes == 1:
        sockets, failures = connectAll(address, connections, timeout)
        result = runLoad(sockets, plan, duration, requests, timeout, progress, spin)
        result.connections += len(failures)
        result.failedConnections += len(failures)
        result.failures[:0] = failures
        return result
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    counters = [context.Value("q", 0, lock=False) for _ in range(processes)]
    workers = [
        context.Process(
            target=_worker,
            args=(
                address,
                plan,
                _share(connections, processes, index),
                duration,
                None if requests is None else _share(requests, processes, index),
                timeout,
                spin,
                barrier,
                counters[index],
                results,
            ),
            daemon=True,
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    total = BenchResult()
    gathered = 0
    while gathered < processes:
        try:
            total.merge(results.get(timeout=0.1))
            gathered += 1
        except Exception:  # queue.Empty: no result yet
            if not any(worker.is_alive() for worker in workers) and results.empty():
                total.failures.append("a load-generating process died")
                break
        if progress is not None:
            progress(sum(counter.value for counter in counters))
    for worker in workers:
        worker.join()
    return total


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def formatSummary(summary: dict[str, Any]) -> str:
    """
    @return: the human-readable summary of a run, several lines.
    """

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} ms"

    latency = summary["latencyMs"]
    return "\n".join(
        [
            f"load          {plural(summary['connections'], 'connection')} x {summary['pipeline']:,} "
            f"in flight, {summary['size']:,}-byte {summary['framing']} messages"
            + (f", suffix {summary['suffix']!r}" if summary["suffix"] else ""),
            f"messages      {summary['messages']:,} in {summary['seconds']:.2f} s",
            f"throughput    {summary['messagesPerSecond']:,.0f} messages/s, "
            f"{summary['megabytesPerSecond']:,.2f} MB/s"
            + (" (counted from bytes: with wrong replies, not meaningful)" if summary["errors"] else ""),
            f"latency       p50 {ms(latency['p50'])}  p90 {ms(latency['p90'])}  "
            f"p99 {ms(latency['p99'])}  max {ms(latency['max'])}",
            f"errors        {plural(summary['errors'], 'wrong reply', 'wrong replies')}, "
            + (
                f"{plural(summary['split'], 'split reply', 'split replies')}, "
                if summary["framing"] == "raw" and summary["suffix"]
                else ""
            )
            + f"{summary['unanswered']:,} unanswered",
            f"connections   {summary['failedConnections']:,} failed",
        ]
    )


def formatProblems(result: BenchResult) -> str | None:
    """
    @return: what went wrong in a run, in one line, or L{None} if every
        connection was made and every reply was right.
    """
    problems = []
    if result.errors:
        problems.append(
            f"{plural(result.errors, 'wrong reply', 'wrong replies')} (do --framing and --suffix match the server's?)"
        )
    if result.split:
        problems.append(
            f"{plural(result.split, 'split reply', 'split replies')} (the server read a message in "
            "pieces and suffixed each: raw framing does not keep messages whole)"
        )
    if result.unanswered:
        problems.append(plural(result.unanswered, "unanswered message"))
    if result.failedConnections:
        problems.append(f"{plural(result.failedConnections, 'failed connection')} ({result.failures[0]})")
    return "; ".join(problems) if problems else None


class _ProgressBar:
    """
    A live progress bar on a terminal (rich), or nothing at all.
    """

    def __init__(self, stream: IO[str], total: float, unit: str) -> None:
        self._progress: Any = None
        if not stream.isatty():
            return
        # Imported here: only a run on a terminal needs it.
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("bench"),
            BarColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self._task = self._progress.add_task("bench", total=total, rate="")
        self._unit = unit
        self._started = time.monotonic()

    def __enter__(self) -> _ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, answered: int) -> None:
        if self._progress is None:
            return
        elapsed = time.monotonic() - self._started
        done = elapsed if self._unit == "seconds" else answered
        rate = f"{answered / elapsed:,.0f} msg/s" if elapsed > 0 else ""
        self._progress.update(self._task, completed=done, rate=rate)


def runBench(options: BenchOptions, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """
    Run C{tcplab bench} with parsed C{options}, printing the summary (or
    JSON) to C{out} and a progress bar and failures to C{err}.

    @return: 0 if every connection was made and every reply was right, 1
        otherwise (with one line on C{err}).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    plan = LoadPlan(options["framing"], options["size"], options["suffix"], options["pipeline"])
    duration, requests = options["duration"], options["requests"]
    bar = _ProgressBar(
        err,
        duration if requests is None else requests,
        "seconds" if requests is None else "messages",
    )
    try:
        with bar:
            result = measure(
                options["address"],
                plan,
                options["connections"],
                duration=duration,
                requests=requests,
                processes=options["processes"],
                timeout=options["timeout"],
                progress=bar.update,
                spin=options["spin"],
            )
    except OSError as error:
        print(f"tcplab bench: {error.strerror or error}", file=err)
        return EXIT_FAILURE
    if result.connections and result.failedConnections == result.connections and not result.messages:
        print(f"tcplab bench: {result.failures[0]}", file=err)
        return EXIT_FAILURE
    summary = result.summary(plan)
    if options["json"]:
        print(json.dumps(summary), file=out)
    else:
        print(formatSummary(summary), file=out)
    problems = formatProblems(result)
    if problems is not None:
        print(f"tcplab bench: {problems}", file=err)
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{tcplab bench} from C{argv} (default: C{sys.argv[1:]}), for
    C{python -m tcplab.bench} until the C{tcplab} command has the subcommand.

    @return: the exit code (2 for a usage error).
    """
    options = BenchOptions()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as error:
        print(f"tcplab bench: {error}", file=sys.stderr)
        return 2
    return runBench(options)


if __name__ == "__main__":
    sys.exit(main())
