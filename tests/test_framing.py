"""
Tests for L{tcplab.framing}.
"""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tcplab.framing import (
    LengthPrefixDecoder,
    LineDecoder,
    MessageTooLong,
    RawDecoder,
    checkSuffix,
    decoderFor,
    encode,
    frame,
    stripLineEnding,
)
from tests.streams import cutAt


def feedAll(decoder, chunks: list[bytes]) -> list[bytes]:
    """
    Feed C{chunks} to C{decoder}; every message it returns must be C{bytes}
    (a C{bytearray} would compare equal, and then change under its reader).
    """
    messages = []
    for chunk in chunks:
        messages.extend(decoder.feed(chunk))
    assert all(type(message) is bytes for message in messages), messages
    return messages


def dribble(size: int) -> list[bytes]:
    """
    @return: C{size} single-byte reads, as a peer that sends a byte at a time
        with C{TCP_NODELAY} makes them.
    """
    return [bytes([97 + n % 26]) for n in range(size)]


lines = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=20)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)


class LineDecoderTests(SynchronousTestCase):
    """
    Tests for L{LineDecoder}.
    """

    def test_splitsOnNewline(self) -> None:
        """
        Each C{\\n}-terminated line is a message; the tail waits for more.
        """
        decoder = LineDecoder()
        self.assertEqual(decoder.feed(b"one\ntwo\nthr"), [b"one", b"two"])
        self.assertEqual(decoder.feed(b"ee\n"), [b"three"])

    def test_keepsCarriageReturn(self) -> None:
        """
        The C{\\r} of a C{\\r\\n} ending stays on the line, and
        L{stripLineEnding} removes it.
        """
        [line] = LineDecoder().feed(b"hello\r\n")
        self.assertEqual(line, b"hello\r")
        self.assertEqual(stripLineEnding(line), b"hello")

    def test_emptyLines(self) -> None:
        """
        An empty line is a message too.
        """
        self.assertEqual(LineDecoder().feed(b"\n\n"), [b"", b""])

    def test_lineAtLimit(self) -> None:
        """
        A line of exactly C{maxLength} bytes is accepted, with either ending.
        """
        decoder = LineDecoder(maxLength=4)
        self.assertEqual(decoder.feed(b"abcd\nabcd\r\n"), [b"abcd", b"abcd\r"])

    def test_completeLineTooLong(self) -> None:
        """
        A complete line over the limit raises L{MessageTooLong} carrying the
        lines before it.
        """
        decoder = LineDecoder(maxLength=4)
        with self.assertRaises(MessageTooLong) as caught:
            decoder.feed(b"ok\nabcde\nnever\n")
        self.assertEqual(caught.exception.messages, [b"ok"])
        self.assertEqual(caught.exception.maxLength, 4)

    def test_pendingLineTooLong(self) -> None:
        """
        An unterminated line is rejected as soon as it passes the limit,
        without waiting for its end.
        """
        decoder = LineDecoder(maxLength=4)
        self.assertEqual(decoder.feed(b"abcd"), [])
        self.assertRaises(MessageTooLong, decoder.feed, b"e")

    def test_pendingCarriageReturnAtLimit(self) -> None:
        """
        A pending line one byte over the limit is still fine when that byte is
        the C{\\r} of a C{\\r\\n} ending.
        """
        decoder = LineDecoder(maxLength=4)
        self.assertEqual(decoder.feed(b"abcd\r"), [])
        self.assertEqual(decoder.feed(b"\n"), [b"abcd\r"])

    def test_finishReturnsUnterminatedLine(self) -> None:
        """
        At end of stream, an unterminated last line is delivered.
        """
        decoder = LineDecoder()
        decoder.feed(b"a\nb")
        self.assertEqual(decoder.finish(), ([b"b"], 0))
        self.assertEqual(decoder.finish(), ([], 0))

    @given(lines, cuts)
    def test_anyChunking(self, messages: list[bytes], offsets: list[int]) -> None:
        """
        However the stream is cut, the decoded lines are exactly the lines sent.
        """
        stream = b"".join(message + b"\n" for message in messages)
        self.assertEqual(feedAll(LineDecoder(), cutAt(stream, offsets)), messages)


class LengthPrefixDecoderTests(SynchronousTestCase):
    """
    Tests for L{LengthPrefixDecoder}.
    """

    def test_frames(self) -> None:
        """
        Each frame's payload is a message, including an empty one.
        """
        decoder = LengthPrefixDecoder()
        self.assertEqual(decoder.feed(frame(b"abc") + frame(b"") + frame(b"xy")[:3]), [b"abc", b""])
        self.assertEqual(decoder.feed(frame(b"xy")[3:]), [b"xy"])

    def test_headerTooLong(self) -> None:
        """
        A header announcing more than C{maxLength} is rejected at once, before
        any of its payload arrives.
        """
        decoder = LengthPrefixDecoder(maxLength=10)
        with self.assertRaises(MessageTooLong) as caught:
            decoder.feed(frame(b"ok") + b"\x00\x00\x00\x0b")
        self.assertEqual(caught.exception.messages, [b"ok"])
        self.assertEqual(caught.exception.length, 11)

    def test_hugeHeaderNotBuffered(self) -> None:
        """
        A header announcing 4 GiB is rejected without buffering anything.
        """
        self.assertRaises(MessageTooLong, LengthPrefixDecoder().feed, b"\xff\xff\xff\xff")

    def test_finishReportsDroppedBytes(self) -> None:
        """
        At end of stream an incomplete frame is dropped, and its size reported.
        """
        decoder = LengthPrefixDecoder()
        decoder.feed(frame(b"abcdef")[:7])
        self.assertEqual(decoder.finish(), ([], 7))

    @given(st.lists(st.binary(max_size=300), max_size=20), cuts)
    def test_anyChunking(self, messages: list[bytes], offsets: list[int]) -> None:
        """
        However the stream is cut, the decoded payloads are exactly those sent.
        """
        stream = b"".join(frame(message) for message in messages)
        self.assertEqual(feedAll(LengthPrefixDecoder(), cutAt(stream, offsets)), messages)


class LengthRunTests(SynchronousTestCase):
    """
    Runs of equal-length frames take the length decoder's fast path; the
    result is the same as frame by frame.
    """

    @given(
        st.lists(st.sampled_from([b"", b"a", b"abc", b"abc", b"abc", b"\x00\x00\x00\x03", b"xyz"]), max_size=40),
        cuts,
    )
    def test_anyChunking(self, messages: list[bytes], offsets: list[int]) -> None:
        """
        However the stream is cut, the decoded payloads are exactly those
        sent, including payloads that look like headers.
        """
        stream = b"".join(frame(message) for message in messages)
        self.assertEqual(feedAll(LengthPrefixDecoder(), cutAt(stream, offsets)), messages)

    def test_uniformLength(self) -> None:
        """
        C{uniformLength} is the payload length when every frame returned was
        one run of equal-length frames, even if an incomplete frame follows;
        L{None} when lengths differ.
        """
        decoder = LengthPrefixDecoder()
        self.assertEqual(decoder.feed(frame(b"abc") * 5 + frame(b"de")[:3]), [b"abc"] * 5)
        self.assertEqual(decoder.uniformLength, 3)
        self.assertEqual(decoder.feed(frame(b"de")[3:] + frame(b"abc") * 5), [b"de"] + [b"abc"] * 5)
        self.assertIsNone(decoder.uniformLength)

    def test_runOverTheLimit(self) -> None:
        """
        A run of frames over C{maxLength} is rejected like a single one.
        """
        decoder = LengthPrefixDecoder(maxLength=2)
        with self.assertRaises(MessageTooLong) as caught:
            decoder.feed(frame(b"abc") * 6)
        self.assertEqual(caught.exception.messages, [])


class EncodeTests(SynchronousTestCase):
    """
    Tests for L{encode}, L{decoderFor} and L{RawDecoder}.
    """

    def test_encode(self) -> None:
        """
        Raw is unchanged, line gets C{\\n}, length gets a big-endian prefix.
        """
        self.assertEqual(encode("raw", b"hi"), b"hi")
        self.assertEqual(encode("line", b"hi"), b"hi\n")
        self.assertEqual(encode("length", b"hi"), b"\x00\x00\x00\x02hi")

    def test_lineWithNewline(self) -> None:
        """
        A line message cannot contain a newline.
        """
        self.assertRaises(ValueError, encode, "line", b"a\nb")

    def test_unknownFraming(self) -> None:
        """
        An unknown framing is a L{ValueError} naming the valid ones.
        """
        with self.assertRaises(ValueError) as caught:
            decoderFor("xml")
        self.assertIn("raw, line, length", str(caught.exception))

    def test_raw(self) -> None:
        """
        Raw decoding passes every non-empty chunk through.
        """
        decoder = decoderFor("raw")
        self.assertIsInstance(decoder, RawDecoder)
        self.assertEqual(decoder.feed(b"abc"), [b"abc"])
        self.assertEqual(decoder.feed(b""), [])


def decodeUntilTooLong(decoder, chunks: list[bytes]) -> tuple[list[bytes], MessageTooLong | None, int]:
    """
    Feed C{chunks} until the decoder rejects a message.

    @return: every message decoded (including those the error carries), the
        error if any, and the most bytes the decoder held pending at once.
    """
    messages: list[bytes] = []
    held = 0
    for chunk in chunks:
        try:
            messages.extend(decoder.feed(chunk))
        except MessageTooLong as error:
            return messages + error.messages, error, held
        held = max(held, len(decoder._pending))
    return messages, None, held


def untilTooLong(messages: list[bytes], maxLength: int) -> list[bytes]:
    """
    @return: the messages before the first one over C{maxLength}.
    """
    for index, message in enumerate(messages):
        if len(message) > maxLength:
            return messages[:index]
    return messages


class SizeLimitPropertyTests(SynchronousTestCase):
    """
    Whatever the chunking, a decoder answers exactly the messages before the
    first one over C{maxLength}, rejects that one, and never holds more than
    about C{maxLength} bytes pending.
    """

    @given(
        st.lists(st.one_of(st.integers(min_value=0, max_value=120), st.sampled_from([7, 7, 7])), max_size=16),
        st.integers(min_value=1, max_value=100),
        cuts,
    )
    def test_length(self, sizes: list[int], maxLength: int, offsets: list[int]) -> None:
        """
        Length framing.
        """
        messages = [bytes([index % 256]) * size for index, size in enumerate(sizes)]
        stream = b"".join(frame(message) for message in messages)
        decoded, error, held = decodeUntilTooLong(LengthPrefixDecoder(maxLength), cutAt(stream, offsets))
        allowed = untilTooLong(messages, maxLength)
        self.assertEqual(decoded, allowed)
        self.assertEqual(error is None, len(allowed) == len(messages))
        self.assertLessEqual(held, maxLength + 4)

    @given(
        st.lists(st.tuples(st.binary(max_size=40), st.sampled_from([b"\n", b"\r\n"])), max_size=20),
        st.integers(min_value=1, max_value=30),
        cuts,
    )
    def test_line(self, pairs: list[tuple[bytes, bytes]], maxLength: int, offsets: list[int]) -> None:
        """
        Line framing, with C{\\n} and C{\\r\\n} endings: the C{\\r} of a
        C{\\r\\n} belongs to the ending (the decoder leaves it on the line),
        so it never counts against C{maxLength}.
        """
        # Only a \r\n ending lets a message end in \r ("a\r" + "\n" would read as "a" + "\r\n").
        pairs = [
            (message.replace(b"\n", b"").rstrip(b"\r") if ending == b"\n" else message.replace(b"\n", b""), ending)
            for message, ending in pairs
        ]
        stream = b"".join(message + ending for message, ending in pairs)
        decoded, error, held = decodeUntilTooLong(LineDecoder(maxLength), cutAt(stream, offsets))
        allowed = untilTooLong([message for message, _ in pairs], maxLength)
        self.assertEqual([stripLineEnding(line) for line in decoded], allowed)
        self.assertEqual(decoded, [message + ending[:-1] for message, ending in pairs[: len(allowed)]])
        self.assertEqual(error is None, len(allowed) == len(pairs))
        self.assertLessEqual(held, maxLength + 1)


class PendingMemoryTests(SynchronousTestCase):
    """
    An incomplete message is held in one buffer of about its size, however
    many reads brought it: not in an object per read (300 connections
    dribbling 15,000 bytes each once cost 58 bytes of memory per pending byte).
    """

    def assertOneBuffer(self, decoder, size: int) -> None:
        """
        C{decoder} holds C{size} pending bytes in one object of about that size.
        """
        pending = decoder._pending
        self.assertIsInstance(pending, (bytes, bytearray))
        self.assertEqual(len(pending), size)
        self.assertLess(sys.getsizeof(pending), size * 1.2 + 100)

    def test_lineDribbled(self) -> None:
        """
        A line dribbled a byte per read is one buffer until its C{\n}, then
        one C{bytes} message, and the buffer is released.
        """
        decoder = LineDecoder()
        reads = dribble(15_000)
        self.assertEqual(feedAll(decoder, reads), [])
        self.assertOneBuffer(decoder, 15_000)
        self.assertEqual(feedAll(decoder, [b"\nnext"]), [b"".join(reads)])
        self.assertOneBuffer(decoder, 4)
        self.assertEqual(decoder.finish(), ([b"next"], 0))
        self.assertOneBuffer(decoder, 0)

    def test_frameDribbled(self) -> None:
        """
        A frame dribbled a byte per read, header included, is one buffer
        until its last byte, then one C{bytes} payload.
        """
        decoder = LengthPrefixDecoder()
        payload = b"".join(dribble(15_000))
        reads = [bytes([byte]) for byte in frame(payload)]
        self.assertEqual(feedAll(decoder, reads[:-1]), [])
        self.assertOneBuffer(decoder, 15_003)
        self.assertEqual(feedAll(decoder, reads[-1:] + [frame(b"ab")[:5]]), [payload])
        self.assertOneBuffer(decoder, 5)
        self.assertEqual(decoder.finish(), ([], 5))
        self.assertOneBuffer(decoder, 0)


class CheckSuffixTests(SynchronousTestCase):
    """
    Tests for L{checkSuffix}: a suffix must not break the framing of the
    replies that carry it.
    """

    def test_lineNewline(self) -> None:
        """
        A line suffix holding C{\\n} is refused: every reply would be two lines.
        """
        with self.assertRaisesRegex(ValueError, "newline"):
            checkSuffix("line", b"a\nb")

    def test_lineTrailingCR(self) -> None:
        """
        A line suffix ending in C{\\r} is refused: the reply would end in
        C{\\r\\n}, whose C{\\r} a reader takes away.
        """
        with self.assertRaisesRegex(ValueError, "end in"):
            checkSuffix("line", b"SB\r")

    def test_accepted(self) -> None:
        """
        Any suffix suits raw and length framing; in line framing one with a
        C{\\r} inside is fine.
        """
        for framing in ("raw", "length"):
            self.assertEqual(checkSuffix(framing, b"a\nb\r"), b"a\nb\r")
        self.assertEqual(checkSuffix("line", b"S\rB"), b"S\rB")
