"""
What one message costs the server's protocol, in process: tcplab's line and
length echoes against the Twisted idioms they replace (a C{LineReceiver} echo,
an C{Int32StringReceiver} echo), with suffix C{SB}, over a transport that
discards what is written.  No sockets and no reactor: this isolates the
per-message Python work that the socket benchmarks (C{run_all}) measure
together with system calls and the reactor.

Each read holds 100 messages, either all of one size (64 bytes, as
C{tcplab bench} sends them) or of mixed sizes (16-111 bytes), since the
length echo has a fast path for runs of equal-length frames.

Run from the project root::

    .venv/bin/python -m benchmarks.framing_cost
"""

from __future__ import annotations

import argparse
import random
import timeit

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import Int32StringReceiver, LineReceiver

from benchmarks.harness import table
from tcplab.framing import encode
from tcplab.server import EchoServerFactory

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
MESSAGES = 100


class DiscardingTransport:
    """
    Just enough of a transport for an echo protocol: writes are dropped.
    """

    disconnecting = False

    def write(self, data: bytes) -> None:
        pass

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def getPeer(self) -> IPv4Address:
        return PEER

    def getHost(self) -> IPv4Address:
        return PEER


class LineReceiverEcho(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line + b"SB")


class Int32Echo(Int32StringReceiver):
    def stringReceived(self, string: bytes) -> None:
        self.sendString(string + b"SB")


def nanoseconds(protocol: Protocol, read: bytes, reads: int) -> float:
    """
    @return: the best time per message, in nanoseconds, of C{protocol}
        answering C{read} (which holds L{MESSAGES} messages) C{reads} times.
    """
    protocol.makeConnection(DiscardingTransport())  # type: ignore[arg-type]
    best = min(timeit.repeat(lambda: protocol.dataReceived(read), number=reads, repeat=5))
    return best / reads / MESSAGES * 1e9


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=2000, help="reads per timing [2000]")
    reads = parser.parse_args(argv).reads
    rng = random.Random(5)
    sizes = {"64 B each": [64] * MESSAGES, "16-111 B mixed": [rng.randrange(16, 112) for _ in range(MESSAGES)]}
    rows = []
    for label, lengths in sizes.items():
        for framing, anchor, anchorName in [
            ("line", LineReceiverEcho, "LineReceiver+SB"),
            ("length", Int32Echo, "Int32StringReceiver+SB"),
        ]:
            read = b"".join(encode(framing, bytes([97 + n % 26]) * size) for n, size in enumerate(lengths))
            ours = nanoseconds(EchoServerFactory(framing=framing, suffix=b"SB").buildProtocol(PEER), read, reads)
            theirs = nanoseconds(anchor(), read, reads)
            rows.append(
                [f"tcplab {framing}+SB vs {anchorName}", label, f"{ours:.0f}", f"{theirs:.0f}", f"{theirs / ours:.1f}x"]
            )
    print(f"in process, {MESSAGES} messages per read, best of 5 x {reads} reads")
    print(table(["case", "messages", "tcplab ns/msg", "Twisted ns/msg", "ratio"], rows))


if __name__ == "__main__":
    main()
