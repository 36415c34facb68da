"""
Framing: how a byte stream is cut into messages, and how a message is framed.

Three framings are supported, by name:

  - C{"raw"}: no framing (RFC 862); every chunk read is a message.
  - C{"line"}: a message is a line ended by C{\\n} (a C{\\r} before the
    C{\\n} belongs to the line ending, not the message).
  - C{"length"}: a message is a 4-byte big-endian unsigned length followed by
    that many bytes of payload.

Decoders are incremental and bounded: a message longer than C{maxLength} raises
L{MessageTooLong} as soon as it is detected, without buffering its whole
announced size, and the decoder must not be fed again after that.  Both the
server and the client use them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import lru_cache
from operator import itemgetter

from tcplab import defaults

FRAMINGS = ("raw", "line", "length")

#: The length prefix of the "length" framing.
HEADER = struct.Struct(">I")

#: The largest payload a 4-byte length prefix can announce.
MAX_FRAME_PAYLOAD = 2**32 - 1


class _Headers(dict[int, bytes]):
    """
    Length prefixes already packed, by payload length (plus C{extra}): the
    frames of a stream mostly repeat a few lengths, and a dictionary look-up
    is quicker than C{HEADER.pack}.  Bounded: it starts afresh after 4096
    lengths.
    """

    def __init__(self, extra: int = 0) -> None:
        super().__init__()
        self.extra = extra

    def __missing__(self, length: int) -> bytes:
        if len(self) >= 4096:
            self.clear()
        packed = self[length] = HEADER.pack(length + self.extra)
        return packed


def headers(extra: int = 0) -> Callable[[int], bytes]:
    """
    @return: a function from a payload length C{n} to C{HEADER.pack(n + extra)},
        shared by every caller with the same C{extra}.
    """
    cache = _HEADERS.get(extra)
    if cache is None:
        cache = _HEADERS[extra] = _Headers(extra)
    return cache.__getitem__


_HEADERS: dict[int, _Headers] = {}

#: C{header(n)} is C{HEADER.pack(n)}, for 0 <= n <= MAX_FRAME_PAYLOAD.
header = headers(0)


class MessageTooLong(Exception):
    """
    A message is longer than the decoder's C{maxLength}.

    @ivar length: the message's length, or a lower bound if it is incomplete.
    @ivar maxLength: the limit that was exceeded.
    @ivar messages: the complete messages decoded before the offending one, in
        order; they are valid and should still be answered.
    """

    def __init__(self, length: int, maxLength: int, messages: list[bytes]) -> None:
        super().__init__(f"message of {length} bytes or more exceeds {maxLength}")
        self.length = length
        self.maxLength = maxLength
        self.messages = messages


class RawDecoder:
    """
    Every non-empty chunk is a message.
    """

    __slots__ = ("maxLength",)

    def __init__(self, maxLength: int = defaults.MAX_LENGTH) -> None:
        self.maxLength = maxLength

    def feed(self, data: bytes) -> list[bytes]:
        """
        @return: C{[data]}, or C{[]} for an empty chunk.
        """
        return [data] if data else []

    def finish(self) -> tuple[list[bytes], int]:
        """
        End of stream: nothing is ever pending.

        @return: C{([], 0)}.
        """
        return [], 0


class LineDecoder:
    """
    Cuts C{\\n}-terminated lines out of a byte stream.

    Lines are returned without the C{\\n}, but with the C{\\r} of a C{\\r\\n}
    ending still attached, so that a caller can answer in the peer's own line
    ending; use L{stripLineEnding} to get the message itself.  A line is too
    long when its message (without C{\\r\\n} or C{\\n}) has more than
    C{maxLength} bytes.
    """

    __slots__ = ("maxLength", "_pending")

    def __init__(self, maxLength: int = defaults.MAX_LENGTH) -> None:
        self.maxLength = maxLength
        # The unterminated line so far, in one buffer that the reads are
        # appended to: a peer that dribbles a line a byte per read costs
        # about its length, not an object per read.
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data} to the stream.

        @return: the lines completed by C{data}, in order.
        @raise MessageTooLong: if a line, complete or not, is too long.
        """
        block = self.feedBlock(data)
        if not block:
            return []
        lines = block.split(b"\n")
        lines.pop()
        return lines

    def feedBlock(self, data: bytes) -> bytes:
        """
        Add C{data} to the stream, and take the lines it completes as one
        block of bytes, each line still followed by its C{\n}: for a caller
        that can answer a whole block at once (C{bytes.replace} on the block
        rather than a call per line).

        @return: the completed lines, with their endings; C{b""} for none.
        @raise MessageTooLong: if a line, complete or not, is too long.
        """
        pending = self._pending
        if b"\n" not in data:
            pending += data
            if len(pending) > self.maxLength:
                self._checkPending()
            return b""
        if pending:
            data = b"".join((pending, data))
            pending.clear()
        end = data.rfind(b"\n") + 1
        if end == len(data):
            block = data
        else:
            block = data[:end]
            pending += memoryview(data)[end:]
        # Cheap bound first: only look at each line when the block could hold a long one.
        if len(block) > self.maxLength and len(block) - block.count(b"\n") > self.maxLength:
            lines = block.split(b"\n")
            lines.pop()
            for index, line in enumerate(lines):
                if self._tooLong(line):
                    raise MessageTooLong(len(line), self.maxLength, lines[:index])
        if len(pending) > self.maxLength:
            self._checkPending(lambda: block.split(b"\n")[:-1])
        return block

    def finish(self) -> tuple[list[bytes], int]:
        """
        End of stream: an unterminated last line still counts as a line.

        @return: C{([line], 0)} for a pending unterminated line, else C{([], 0)}.
        """
        rest = bytes(self._pending)
        self._pending.clear()
        return ([rest] if rest else []), 0

    def _tooLong(self, line: bytes) -> bool:
        return self._exceeds(len(line), line.endswith(b"\r"))

    def _exceeds(self, length: int, endsWithCR: bool) -> bool:
        # One byte over is still fine when it is the \r of a \r\n ending.
        excess = length - self.maxLength
        return excess > 1 or (excess == 1 and not endsWithCR)

    def _checkPending(self, completed: Callable[[], list[bytes]] | None = None) -> None:
        # completed: the lines completed along with this pending one, which
        # are valid and still to be answered (built only if needed).
        pending = self._pending
        if len(pending) > self.maxLength and self._exceeds(len(pending), pending.endswith(b"\r")):
            raise MessageTooLong(len(pending), self.maxLength, completed() if completed else [])


class LengthPrefixDecoder:
    """
    Cuts 4-byte big-endian length-prefixed frames out of a byte stream.

    A header announcing more than C{maxLength} bytes is rejected as soon as it
    arrives; the payload it announces is never buffered.

    @ivar uniformLength: the payload length of every frame that the last
        L{feed} returned, when they were all one run of equal-length frames
        (then one header fits them all); L{None} otherwise.
    """

    __slots__ = ("maxLength", "uniformLength", "_pending", "_needed")

    def __init__(self, maxLength: int = defaults.MAX_LENGTH) -> None:
        self.maxLength = maxLength
        self.uniformLength: int | None = None
        # The incomplete frame so far, in one buffer (see LineDecoder).
        self._pending = bytearray()
        # How many buffered bytes the next frame (header or header + payload) needs.
        self._needed = HEADER.size

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data} to the stream.

        @return: the payloads of the frames completed by C{data}, in order.
        @raise MessageTooLong: if a header announces more than C{maxLength}.
        """
        self.uniformLength = None
        pending = self._pending
        if len(pending) + len(data) < self._needed:
            pending += data
            return []
        if pending:
            data = b"".join((pending, data))
            pending.clear()
        messages: list[bytes] = []
        unpack = HEADER.unpack_from
        offset, start, end = 0, 0, len(data)
        last = end - 4
        # Fast path: frames of one length (fixed-size records) tile the data
        # at a fixed stride, so a run of them is checked and cut at C speed:
        # every 4-byte header of the run must equal the first one.
        # (Mixed lengths are turned away by the second header, at once.)
        length = unpack(data)[0]
        stride = length + 4
        count = end // stride
        first = data[:4]
        if count >= _MIN_RUN and length <= self.maxLength and data[stride : stride + 4] == first:
            run = data[: count * stride]
            if all(run[i::stride] == first[i : i + 1] * count for i in range(4)):
                messages = list(map(_first, _runOf(length).iter_unpack(run)))
                offset = count * stride
                self.uniformLength = length
        # Hot path otherwise: one pass over the frames that only slices them
        # out, with everything it uses local; the size checks come after, at
        # C speed.  A header announcing more than there is makes a short last
        # slice (never a large buffer) and ends the pass.
        ran = len(messages)
        append = messages.append
        while offset <= last:
            start = offset + 4
            offset = start + unpack(data, offset)[0]
            append(data[start:offset])
        if offset > end:
            # The last frame is incomplete: keep it, header and all, for later.
            messages.pop()
            offset = start - 4
        if len(messages) != ran:
            # The pass cut frames of other lengths after the run.
            self.uniformLength = None
        maxLength = self.maxLength
        # Cheap bound first: only look at each frame when one could be too long.
        if end - 4 * len(messages) > maxLength:
            for index, message in enumerate(messages):
                if len(message) > maxLength:
                    raise MessageTooLong(len(message), maxLength, messages[:index])
        if offset < end:
            pending += memoryview(data)[offset:]
        self._needed = 4 + unpack(pending)[0] if len(pending) >= 4 else 4
        if self._needed - 4 > maxLength:
            raise MessageTooLong(self._needed - 4, maxLength, messages)
        return messages

    def finish(self) -> tuple[list[bytes], int]:
        """
        End of stream: an incomplete frame cannot be delivered.

        @return: C{([], n)} where C{n} is the number of bytes of the incomplete
            frame that are dropped.
        """
        dropped = len(self._pending)
        self._pending.clear()
        self._needed = 4
        return [], dropped


#: The fewest equal-length frames worth the length decoder's fast path.
_MIN_RUN = 4

_first = itemgetter(0)


@lru_cache(maxsize=64)
def _runOf(length: int) -> struct.Struct:
    # One frame of a run: its header skipped, its payload taken.
    return struct.Struct(f"4x{length}s")


Decoder = RawDecoder | LineDecoder | LengthPrefixDecoder

_DECODERS: dict[str, type[Decoder]] = {
    "raw": RawDecoder,
    "line": LineDecoder,
    "length": LengthPrefixDecoder,
}


def checkFraming(framing: str) -> str:
    """
    @return: C{framing} if it names a framing.
    @raise ValueError: with a one-line message naming the valid framings.
    """
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r} (choose from {', '.join(FRAMINGS)})")
    return framing


def checkSuffix(framing: str, suffix: bytes) -> bytes:
    """
    A reply is its message plus C{suffix}, framed as the message was: in line
    framing a suffix holding C{\\n} would split the reply into two lines, and
    one ending in C{\\r} would turn the reply's C{\\n} into a C{\\r\\n} ending
    that takes the C{\\r} away from it.

    @return: C{suffix} if every reply that carries it still decodes as one
        message in C{framing}.
    @raise ValueError: with a one-line message saying why not.
    """
    if framing == "line":
        if b"\n" in suffix:
            raise ValueError("a line framing suffix cannot contain a newline (\\n): it would split every reply in two")
        if suffix.endswith(b"\r"):
            raise ValueError("a line framing suffix cannot end in \\r: with the line's \\n it would read as a \\r\\n ending")
    return suffix


def decoderFor(framing: str, maxLength: int = defaults.MAX_LENGTH) -> Decoder:
    """
    @return: a new decoder for the named framing.
    @raise ValueError: for an unknown framing.
    """
    return _DECODERS[checkFraming(framing)](maxLength)


def stripLineEnding(line: bytes) -> bytes:
    """
    @return: a line from L{LineDecoder} without the C{\\r} of a C{\\r\\n} ending.
    """
    return line[:-1] if line.endswith(b"\r") else line


def frame(payload: bytes) -> bytes:
    """
    @return: C{payload} with its 4-byte big-endian length prefix.
    @raise ValueError: if C{payload} is longer than a prefix can announce.
    """
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is too long to frame")
    return header(len(payload)) + payload


def encode(framing: str, message: bytes) -> bytes:
    """
    @return: C{message} framed for sending: as is (raw), followed by C{\\n}
        (line), or length-prefixed (length).
    @raise ValueError: for an unknown framing, a line message containing
        C{\\n}, or a payload too long to frame.
    """
    if framing == "line":
        if b"\n" in message:
            raise ValueError("a line message cannot contain a newline")
        return message + b"\n"
    if framing == "length":
        return frame(message)
    checkFraming(framing)
    return message
