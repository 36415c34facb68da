"""
The UDP echo: every datagram is answered, to its sender, with itself plus a suffix.
"""

from __future__ import annotations

from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from tcplab.address import formatAddress

#: Pass this as C{maxPacketSize} to C{listenUDP}: Twisted's default (8192)
#: silently truncates larger datagrams.
MAX_PACKET_SIZE = 65535

#: The largest payload of a UDP datagram over IPv4.
MAX_DATAGRAM = 65507


class DatagramEcho(DatagramProtocol):
    """
    Answer each datagram with C{datagram + suffix}, sent back to its sender.

    Listen with C{maxPacketSize=MAX_PACKET_SIZE} so that datagrams up to
    L{MAX_DATAGRAM} bytes echo whole.  A reply that cannot be sent (too long
    once the suffix is added, or refused by the network) is logged and dropped.

    @ivar datagrams: datagrams received.
    @ivar bytesIn: bytes received.
    @ivar bytesOut: bytes of replies sent.
    """

    _log = Logger()

    def __init__(self, suffix: bytes = b"", logMessages: bool = False) -> None:
        self.suffix = suffix
        self.logMessages = logMessages
        self.datagrams = 0
        self.bytesIn = 0
        self.bytesOut = 0

    def summary(self) -> str:
        """
        @return: what this echo has done, in one line.
        """
        return (
            f"{self.datagrams} datagram{'' if self.datagrams == 1 else 's'}; "
            f"{self.bytesIn} bytes in, {self.bytesOut} bytes out"
        )

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.logMessages:
            self._log.info(
                "datagram from {peer}: {text}",
                peer=formatAddress(addr),
                text=datagram.decode("utf-8", "replace"),
            )
        assert self.transport is not None
        self.datagrams += 1
        self.bytesIn += len(datagram)
        reply = datagram + self.suffix
        try:
            self.transport.write(reply, addr)
            self.bytesOut += len(reply)
        except (MessageLengthError, OSError) as error:
            self._log.warn(
                "reply of {size} bytes to {peer} dropped: {error}",
                size=len(datagram) + len(self.suffix),
                peer=formatAddress(addr),
                error=error,
            )
