"""
The bytes of a run, built before it starts: the request stream and the
reply stream expected back (see L{LoadPlan}).
"""

from __future__ import annotations

from tcplab.framing import encode

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


class LoadPlan:
    """
    The bytes of a run, built once: what is sent and what must come back.

    Messages are C{size} bytes of printable text, distinct within a period of
    C{period} messages, so that a reply out of order is noticed.  The request
    stream is that period repeated forever; so is the reply stream.  Each
    connection starts at the beginning of both, except with C{reconnect},
    where each new connection starts one message further into the period
    than the one before, so that the connections open at once send
    different messages and a reply sent to the wrong connection is noticed.

    @ivar requestLength: bytes of one framed request.
    @ivar replyLength: bytes of one framed reply.
    @ivar sendBuffer: the request stream, long enough that a send of up to
        L{MAX_SEND} bytes can start anywhere in the first period.
    @ivar expected: the reply stream, long enough that a read of up to
        L{RECV_SIZE} bytes can start anywhere in the first period.
    @ivar reconnect: messages each connection sends before it is closed and
        a new one takes its place; L{None} to keep every connection open.
    @ivar splittable: whether a reply may come back split: in raw framing
        the server suffixes each read, so a message it reads in pieces is
        answered piece + suffix, piece + suffix.  The messages then never
        hold the suffix's first byte, so that a cut is always recognised.
    """

    def __init__(
        self, framing: str, size: int, suffix: bytes = b"", pipeline: int = 1, reconnect: int | None = None
    ) -> None:
        self.framing = framing
        self.size = size
        self.suffix = suffix
        self.pipeline = pipeline
        self.reconnect = reconnect
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
