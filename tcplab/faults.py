"""
Fault injection: a server that misbehaves on purpose, so that the code under
test meets a slow, fragmenting or failing peer.

Faults come by composition, never by a branch in the echo's hot path: a
L{FaultyFactory} wraps an L{EchoServerFactory} (or any factory) and puts a
L{FaultyProtocol} between each of its protocols and the transport, as
L{twisted.protocols.policies.ProtocolWrapper} does; a
L{FaultyDatagramProtocol} wraps a datagram protocol the same way.  With no
fault set, nothing is wrapped (L{applyFaults} changes nothing), and the echo
runs exactly the code it runs without this module.

A I{reply} is what the wrapped protocol writes: in C{raw} framing each write,
in C{line} framing each line, in C{length} framing each frame.

    endpoint.listen(FaultyFactory(EchoServerFactory(), Faults(delay=0.3, chunk=4)))
"""

from __future__ import annotations

import math
import random
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from twisted.application.internet import StreamServerEndpointService, UDPServer
from twisted.application.service import IServiceCollection
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import DatagramProtocol, Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from tcplab import defaults
from tcplab.address import formatAddress
from tcplab.framing import HEADER
from tcplab.wrapper import HalfCloseableWrapper

#: Bytes a connection's fault layer may hold (replies waiting for their delay
#: or for their pieces to go out) before it pauses the echo, as a transport
#: pauses its producer; it resumes the echo once it holds half as much.
HOLD_LIMIT = 64 * 1024

#: Bytes of delayed UDP replies held at most; a reply beyond that is dropped
#: (UDP has no backpressure to apply).
DATAGRAM_HOLD_LIMIT = 1024 * 1024

#: How often a reset waits to see its last reply leave, in seconds.
RESET_POLL = 0.01

_log = Logger()

#: The command-line option of each field of L{Faults}.
OPTIONS = {
    "delay": "delay",
    "jitter": "jitter",
    "chunk": "chunk",
    "chunkDelay": "chunk-delay",
    "closeAfter": "close-after",
    "resetAfter": "reset-after",
    "udpDrop": "udp-drop",
    "seed": "seed",
}


class InvalidFaults(ValueError):
    """
    A combination of faults that cannot be applied.

    @ivar template: the message, with C{{}} for each field's name.
    @ivar names: the fields it is about.
    """

    def __init__(self, template: str, *names: str) -> None:
        super().__init__(template.format(*names))
        self.template = template
        self.names = names

    def naming(self, name: Callable[[str], str]) -> str:
        """
        @return: the message, each field named by C{name(field)}.
        """
        return self.template.format(*map(name, self.names))


@dataclass(frozen=True)
class Faults:
    """
    How a server misbehaves; every fault is off by default.

    @ivar delay: seconds each reply is held before it is sent (TCP and UDP).
    @ivar jitter: up to this many more seconds, uniformly at random, for each
        reply; replies never overtake each other.
    @ivar chunk: replies go out in pieces of at most this many bytes (TCP).
    @ivar chunkDelay: seconds between two pieces (with C{chunk}); 0 sends each
        piece on its own turn of the reactor.
    @ivar closeAfter: close the connection cleanly after this many replies
        (0: as soon as it is made).
    @ivar resetAfter: abort the connection with a TCP reset after this many
        replies (0: as soon as it is made).
    @ivar udpDrop: the fraction of datagrams dropped, from 0 to 1.
    @ivar seed: seeds every random choice (jitter, drops), for runs that
        repeat exactly; L{None}: different every run.
    """

    delay: float = 0.0
    jitter: float = 0.0
    chunk: int | None = None
    chunkDelay: float = 0.0
    closeAfter: int | None = None
    resetAfter: int | None = None
    udpDrop: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("delay", "jitter", "chunkDelay"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < math.inf):
                raise InvalidFaults("{} must be a finite number of seconds >= 0", name)
        if self.chunk is not None and self.chunk < 1:
            raise InvalidFaults("{} must be at least 1", "chunk")
        if self.chunkDelay and self.chunk is None:
            raise InvalidFaults("{} needs {}", "chunkDelay", "chunk")
        for name in ("closeAfter", "resetAfter"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidFaults("{} must be at least 0", name)
        if self.closeAfter is not None and self.resetAfter is not None:
            raise InvalidFaults("{} and {} cannot both be set", "closeAfter", "resetAfter")
        if not 0 <= self.udpDrop <= 1:
            raise InvalidFaults("{} must be a fraction from 0 to 1", "udpDrop")

    @property
    def stream(self) -> bool:
        """
        Whether any fault applies to stream (TCP, TLS, UNIX) connections.
        """
        return bool(
            self.delay or self.jitter or self.chunk is not None
            or self.closeAfter is not None or self.resetAfter is not None
        )

    @property
    def datagram(self) -> bool:
        """
        Whether any fault applies to datagrams.
        """
        return bool(self.delay or self.jitter or self.udpDrop)

    @property
    def delays(self) -> bool:
        """
        Whether replies are delayed.
        """
        return bool(self.delay or self.jitter)

    def randomFor(self, *key: object) -> random.Random:
        """
        @return: the random choices of one connection (C{key} tells it from
            the others), seeded from C{seed} and C{key} if C{seed} is set.
        """
        if self.seed is None:
            return random.Random()
        return random.Random(":".join(map(str, (self.seed, *key))))

    @classmethod
    def fromOptions(cls, config: Mapping[str, Any]) -> Faults:
        """
        @param config: the twistd plugin's options (or a dict like them);
            fault options that are absent are off.
        @return: the faults they ask for.
        @raise ValueError: for a combination that cannot be applied, naming
            the options (C{--chunk-delay needs --chunk}).
        """
        values = {field: config.get(option) for field, option in OPTIONS.items()}
        given = {field: value for field, value in values.items() if value is not None}
        try:
            faults = cls(**given)
        except InvalidFaults as error:
            raise ValueError(error.naming(lambda field: f"--{OPTIONS[field]}")) from None
        if faults.udpDrop and config.get("udp") is None:
            raise ValueError("--udp-drop needs --udp")
        return faults

    def __str__(self) -> str:
        default = Faults()
        shown = [
            f"--{OPTIONS[f.name]} {getattr(self, f.name):g}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]
        return " ".join(shown) or "no faults"


@implementer(IPushProducer)
class _Gate:
    """
    The producer a transport sees in place of the echo: it pauses the echo
    while the transport's buffer is full, or while the fault layer holds too
    much (or both), and resumes it once neither is the case.
    """

    def __init__(self, producer: IPushProducer) -> None:
        self._producer = producer
        self._closed: set[str] = set()

    def close(self, reason: str) -> None:
        if not self._closed:
            self._producer.pauseProducing()
        self._closed.add(reason)

    def open(self, reason: str) -> None:
        if reason in self._closed:
            self._closed.remove(reason)
            if not self._closed:
                self._producer.resumeProducing()

    def pauseProducing(self) -> None:
        self.close("transport")

    def resumeProducing(self) -> None:
        self.open("transport")

    def stopProducing(self) -> None:
        self._producer.stopProducing()


class _ReplyCounter:
    """
    Finds where replies end in what a protocol of one framing writes.
    """

    def __init__(self, framing: str) -> None:
        self._framing = framing
        # Length framing: the header read so far, and what is left of the
        # payload (None while in a header).
        self._header = b""
        self._left: int | None = None

    def cut(self, data: bytes, wanted: int) -> tuple[int, int]:
        """
        @return: how many replies end in C{data}, at most C{wanted}, and the
            offset just after the last of them if C{wanted} end in it (else
            C{len(data)}).
        """
        if self._framing == "line":
            count = data.count(b"\n")
            if count < wanted:
                return count, len(data)
            end = -1
            for _ in range(wanted):
                end = data.index(b"\n", end + 1)
            return wanted, end + 1
        if self._framing == "length":
            return self._cutFrames(data, wanted)
        return 1, len(data)

    def _cutFrames(self, data: bytes, wanted: int) -> tuple[int, int]:
        count, position, size = 0, 0, len(data)
        while position < size:
            if self._left is None:
                take = HEADER.size - len(self._header)
                self._header += data[position : position + take]
                position += take
                if len(self._header) < HEADER.size:
                    break
                (self._left,) = HEADER.unpack(self._header)
                self._header = b""
            take = min(self._left, size - position)
            self._left -= take
            position += take
            if self._left == 0:
                self._left = None
                count += 1
                if count == wanted:
                    return count, position
        return count, size


class FaultyProtocol(HalfCloseableWrapper):
    """
    Stands between a protocol and its transport, and delivers what the
    protocol writes late, in pieces, or not at all, as its factory's
    L{Faults} say.

    Its writes go through two stages, in order: the delay (each reply is held
    C{delay} plus up to C{jitter} seconds, never overtaking an earlier one),
    then the slicer (pieces of at most C{chunk} bytes, C{chunkDelay} apart).
    Backpressure holds across them: the protocol is paused while the
    transport's buffer is full, and while this layer holds more than
    L{HOLD_LIMIT} bytes.  Closing waits until every reply held has gone out,
    so that a delayed reply is still delivered when the server drains.

    After C{closeAfter} replies, the wrapped protocol's C{close()} is called
    (an L{EchoProtocol} closes cleanly: its write side once the replies are
    flushed, reading until the peer closes); after C{resetAfter} replies, the
    connection is reset once they have left (TCP: an RST, by C{SO_LINGER}
    0; other transports are aborted).  Replies after the last one are dropped.
    """

    factory: FaultyFactory
    _log = Logger()

    def __init__(self, factory: FaultyFactory, wrappedProtocol: IProtocol, random: random.Random) -> None:
        super().__init__(factory, wrappedProtocol)
        faults = self._faults = factory.faults
        self._clock = factory.clock
        self._random = random
        self._limit = faults.closeAfter if faults.closeAfter is not None else faults.resetAfter
        self._counter = (
            _ReplyCounter(getattr(wrappedProtocol, "framing", "raw")) if self._limit is not None else None
        )
        #: Replies written so far (counted only with closeAfter or resetAfter).
        self.replies = 0
        self._done = False
        self._resetting = False
        self._held = 0
        self._delayed: deque[tuple[float, bytes]] = deque()
        self._lastDue = -math.inf
        self._unsliced: deque[bytes] = deque()
        self._offset = 0
        self._delayTimer: IDelayedCall | None = None
        self._sliceTimer: IDelayedCall | None = None
        self._resetTimer: IDelayedCall | None = None
        self._resetDeadline = 0.0
        self._whenFlushed: Callable[[], object] | None = None
        self._gate: _Gate | None = None
        self._registered = False

    # The transport side, as the wrapped protocol sees it.

    def makeConnection(self, transport: Any) -> None:
        if getattr(transport, "loseWriteConnection", None) is not None:
            # Only if the transport has it: the protocol tells them apart.
            self.loseWriteConnection = self._loseWriteConnection
        super().makeConnection(transport)
        if self._limit == 0 and self.wrappedProtocol is not None:
            self._reachLimit()

    def write(self, data: bytes) -> None:
        if self._done or not data:
            return
        last = False
        if self._counter is not None:
            assert self._limit is not None
            count, end = self._counter.cut(data, self._limit - self.replies)
            self.replies += count
            if self.replies >= self._limit:
                data, last = data[:end], True
        self._hold(data)
        if last:
            self._reachLimit()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._resetting:
            return
        self.disconnecting = 1
        self._afterFlush(self.transport.loseConnection)

    def _loseWriteConnection(self) -> None:
        if self._resetting:
            return
        self._afterFlush(self.transport.loseWriteConnection)

    def abortConnection(self) -> None:
        self._discard()
        self.transport.abortConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._registered = True
        if not streaming:
            self.transport.registerProducer(producer, streaming)
            return
        self._gate = _Gate(producer)
        self.transport.registerProducer(self._gate, True)
        self._checkHeld()

    def unregisterProducer(self) -> None:
        if self._registered:
            self._registered = False
            self._gate = None
            self.transport.unregisterProducer()

    # The protocol side, as the transport sees it.

    def dataReceived(self, data: bytes) -> None:
        if not self._resetting:
            self.wrappedProtocol.dataReceived(data)

    def readConnectionLost(self) -> None:
        if not self._resetting:
            super().readConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._discard()
        self._stop(self._resetTimer)
        super().connectionLost(reason)

    # The stages.

    def _hold(self, data: bytes) -> None:
        self._held += len(data)
        if self._faults.delays:
            now = self._clock.seconds()
            due = now + self._faults.delay + self._faults.jitter * self._random.random()
            # Never before an earlier reply: replies do not overtake.
            due = self._lastDue = max(due, self._lastDue)
            self._delayed.append((due, data))
            if self._delayTimer is None:
                self._delayTimer = self._clock.callLater(due - now, self._releaseDue)
        else:
            self._slice(data)
        self._checkHeld()

    def _releaseDue(self) -> None:
        self._delayTimer = None
        now = self._clock.seconds()
        while self._delayed and self._delayed[0][0] <= now + 1e-9:
            self._slice(self._delayed.popleft()[1])
        if self._delayed and self._delayTimer is None:
            self._delayTimer = self._clock.callLater(self._delayed[0][0] - now, self._releaseDue)

    def _slice(self, data: bytes) -> None:
        if self._faults.chunk is None:
            self._send(data)
            return
        self._unsliced.append(data)
        if self._sliceTimer is None:
            self._sendPiece()

    def _sendPiece(self) -> None:
        # Pieces are at least chunkDelay apart, across replies too: after a
        # piece the slicer waits before the next, whenever that comes.
        self._sliceTimer = None
        if not self._unsliced:
            return
        piece = self._takePiece(self._faults.chunk or 1)
        self._sliceTimer = self._clock.callLater(self._faults.chunkDelay, self._sendPiece)
        self._send(piece)

    def _takePiece(self, size: int) -> bytes:
        parts = []
        while size and self._unsliced:
            head = self._unsliced[0]
            part = head[self._offset : self._offset + size]
            parts.append(part)
            size -= len(part)
            self._offset += len(part)
            if self._offset == len(head):
                self._unsliced.popleft()
                self._offset = 0
        return b"".join(parts)

    def _send(self, data: bytes) -> None:
        self._held -= len(data)
        self.transport.write(data)
        self._checkHeld()
        if not self._held and self._whenFlushed is not None:
            action, self._whenFlushed = self._whenFlushed, None
            action()

    def _checkHeld(self) -> None:
        if self._gate is None:
            return
        if self._held > HOLD_LIMIT:
            self._gate.close("held")
        elif self._held <= HOLD_LIMIT // 2:
            self._gate.open("held")

    def _afterFlush(self, action: Callable[[], object]) -> None:
        if self._held:
            self._whenFlushed = action
        else:
            action()

    def _discard(self) -> None:
        self._stop(self._delayTimer)
        self._stop(self._sliceTimer)
        self._delayTimer = self._sliceTimer = None
        self._delayed.clear()
        self._unsliced.clear()
        self._held = 0
        self._whenFlushed = None

    @staticmethod
    def _stop(timer: IDelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()

    # closeAfter and resetAfter.

    def _reachLimit(self) -> None:
        self._done = True
        if self._faults.closeAfter is not None:
            close = getattr(self.wrappedProtocol, "close", None)
            if callable(close):
                close()
            else:
                self.loseConnection()
            return
        # Nothing more is read, and no close may come first.
        self._resetting = True
        self._afterFlush(self._startReset)

    def _startReset(self) -> None:
        self._resetDeadline = self._clock.seconds() + getattr(
            self.wrappedProtocol, "closeTimeout", defaults.CLOSE_TIMEOUT
        )
        self._reset()

    def _reset(self) -> None:
        # The last replies must have left before the reset, which destroys
        # whatever is still unsent; a peer that never reads gets it anyway
        # once the close timeout has passed.
        self._resetTimer = None
        if not _allSent(self.transport) and self._clock.seconds() < self._resetDeadline:
            self._resetTimer = self._clock.callLater(RESET_POLL, self._reset)
            return
        handle = _socketOf(self.transport)
        if handle is not None and handle.family in (socket.AF_INET, socket.AF_INET6):
            # With a zero linger time, closing sends an RST, not a FIN.
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._log.info("{peer}: resetting after {count} replies", peer=_peer(self), count=self.replies)
        self.transport.abortConnection()


class FaultyFactory(WrappingFactory):
    """
    Wrap every connection of C{wrappedFactory} in a L{FaultyProtocol}.

    @ivar faults: what goes wrong.
    @ivar clock: schedules delays, pieces and resets.
    @ivar connections: how many connections it has wrapped; the I{n}th one's
        random choices are seeded from C{faults.seed} and I{n}.
    """

    protocol = FaultyProtocol
    noisy = False

    def __init__(self, wrappedFactory: Factory, faults: Faults, clock: IReactorTime | None = None) -> None:
        """
        @param clock: the clock for delays; if L{None}, the wrapped factory's
            C{reactor} (an L{EchoServerFactory}'s clock), else the global
            reactor.
        """
        super().__init__(wrappedFactory)
        self.faults = faults
        if clock is None:
            clock = getattr(wrappedFactory, "reactor", None)
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.connections = 0

    def buildProtocol(self, addr: IAddress) -> FaultyProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        self.connections += 1
        return self.protocol(self, wrapped, self.faults.randomFor("tcp", self.connections))

    def logPrefix(self) -> str:
        return f"{self.wrappedFactory.logPrefix()} (faults)"


class _DelayedDatagrams:
    """
    What a wrapped datagram protocol sees as its transport: C{write} goes
    through the fault layer, everything else to the real port.
    """

    def __init__(self, owner: FaultyDatagramProtocol) -> None:
        self._owner = owner

    def write(self, datagram: bytes, addr: Any = None) -> None:
        self._owner.reply(datagram, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner.transport, name)


class FaultyDatagramProtocol(DatagramProtocol):
    """
    Wrap a datagram protocol: drop a fraction (C{udpDrop}) of the datagrams
    it would receive, and send its replies C{delay} plus up to C{jitter}
    seconds late, in order.  Delayed replies held beyond
    L{DATAGRAM_HOLD_LIMIT} bytes are dropped.

    @ivar dropped: datagrams dropped so far (received, and replies over the
        hold limit).
    """

    noisy = False
    _log = Logger()

    def __init__(self, wrapped: DatagramProtocol, faults: Faults, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.wrapped = wrapped
        self.faults = faults
        self._clock: IReactorTime = clock  # type: ignore[assignment]
        self._random = faults.randomFor("udp")
        self.dropped = 0
        self._delayed: deque[tuple[float, bytes, Any]] = deque()
        self._held = 0
        self._lastDue = -math.inf
        self._timer: IDelayedCall | None = None

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.wrapped.makeConnection(_DelayedDatagrams(self))

    def doStop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._delayed.clear()
        super().doStop()
        self.wrapped.doStop()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self.faults.udpDrop and self._random.random() < self.faults.udpDrop:
            self.dropped += 1
            return
        self.wrapped.datagramReceived(datagram, addr)

    def connectionRefused(self) -> None:
        self.wrapped.connectionRefused()

    def reply(self, datagram: bytes, addr: Any) -> None:
        """
        Send C{datagram} to C{addr}, late if delays are set.
        """
        if not self.faults.delays:
            self.transport.write(datagram, addr)
            return
        if self._held + len(datagram) > DATAGRAM_HOLD_LIMIT:
            self.dropped += 1
            return
        now = self._clock.seconds()
        due = now + self.faults.delay + self.faults.jitter * self._random.random()
        due = self._lastDue = max(due, self._lastDue)
        self._delayed.append((due, datagram, addr))
        self._held += len(datagram)
        if self._timer is None:
            self._timer = self._clock.callLater(due - now, self._releaseDue)

    def _releaseDue(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        while self._delayed and self._delayed[0][0] <= now + 1e-9:
            _, datagram, addr = self._delayed.popleft()
            self._held -= len(datagram)
            try:
                self.transport.write(datagram, addr)
            except (MessageLengthError, OSError) as error:
                self._log.warn(
                    "delayed reply of {size} bytes to {peer} dropped: {error}",
                    size=len(datagram), peer=formatAddress(addr), error=error,
                )
        if self._delayed:
            self._timer = self._clock.callLater(self._delayed[0][0] - now, self._releaseDue)


def applyFaults(service: IServiceCollection, faults: Faults, clock: IReactorTime) -> None:
    """
    Put the fault layer between each listener of C{service} and what it
    serves: the factory of every stream listener (a
    L{StreamServerEndpointService}) is wrapped in a L{FaultyFactory}, the
    protocol of every L{UDPServer} in a L{FaultyDatagramProtocol}, and says
    so in the log (a server that misbehaves on purpose must not pass for a
    broken one).  Call it before the service starts.  With no fault set it
    changes nothing.
    """
    if faults.stream or faults.datagram:
        _log.warn("tcplab injects faults: {faults}", faults=str(faults))
    for child in service:
        if faults.stream and isinstance(child, StreamServerEndpointService):
            child.factory = FaultyFactory(child.factory, faults, clock)
        elif faults.datagram and isinstance(child, UDPServer):
            port, protocol, *rest = child.args
            child.args = (port, FaultyDatagramProtocol(protocol, faults, clock), *rest)


def _transports(transport: Any) -> list[Any]:
    # The chain of transports under a connection: wrappers (PROXY header,
    # TLS) each have the next one as their .transport.
    chain = []
    while transport is not None and len(chain) < 8:
        chain.append(transport)
        transport = transport.__dict__.get("transport") if hasattr(transport, "__dict__") else None
    return chain


def _allSent(transport: Any) -> bool:
    """
    Whether a connection has nothing left to send: Twisted's write buffer
    (the C{dataBuffer}, C{offset} and C{_tempDataLen} attributes of
    L{twisted.internet.abstract.FileDescriptor}; tests/test_faults.py fails
    if a release renames them) and, on Linux, the kernel's send queue, unsent
    or not yet acknowledged.  A transport without them has sent all.
    """
    for layer in _transports(transport):
        if hasattr(type(layer), "dataBuffer") and "_tempDataLen" in vars(layer):
            if len(layer.dataBuffer) - layer.offset + layer._tempDataLen:
                return False
    handle = _socketOf(transport)
    if handle is not None and sys.platform.startswith("linux") and handle.type == socket.SOCK_STREAM:
        import fcntl
        import termios

        try:
            (queued,) = struct.unpack("i", fcntl.ioctl(handle.fileno(), termios.TIOCOUTQ, b"\0" * 4))
        except OSError:
            return True
        return queued == 0
    return True


def _socketOf(transport: Any) -> socket.socket | None:
    """
    @return: the socket under a connection, if it has one.
    """
    for layer in _transports(transport):
        getHandle = getattr(type(layer), "getHandle", None)
        if getHandle is not None:
            try:
                handle = getHandle(layer)
            except Exception:
                continue
            if isinstance(handle, socket.socket):
                return handle
    return None


def _peer(protocol: ProtocolWrapper) -> str:
    try:
        return formatAddress(protocol.getPeer())
    except Exception:
        return "unknown peer"
