"""
The UDP echo: every datagram is answered, to its sender, with itself plus a
suffix, unless the sender looks like another echo service, a forged address
or a flood.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from tcplab import defaults
from tcplab.address import formatAddress
from tcplab.messagelog import MessageLog
from tcplab.text import plural

#: Pass this as C{maxPacketSize} to C{listenUDP}: Twisted's default (8192)
#: silently truncates larger datagrams.
MAX_PACKET_SIZE = 65535

#: The largest payload of a UDP datagram over IPv4.
MAX_DATAGRAM = 65507

#: The longest suffix a UDP echo appends.  A forged datagram makes the echo
#: send its reply to whoever the forger names, so the reply must not be much
#: larger than the datagram: with 64 bytes of suffix, the smallest datagram
#: (28 bytes of IPv4 and UDP headers, no payload) gets a 92-byte reply, about
#: 3.3 times its size; a 1-byte datagram, 3.2 times.
MAX_SUFFIX = 64

#: Why a datagram was not answered, as the summary and the log say it, after
#: a count ("3 from a port below 1024").
OWN_PORT = "from the echo's own port"
LOW_PORT = "from a port below 1024"
BAD_SOURCE = "from a broadcast, multicast or unspecified address"
OVER_RATE = "over the per-source rate (--udp-rate)"
REPLY_TOO_LONG = "with a reply too long to send"
REPLY_FAILED = "with a reply the network refused ({reason})"

#: Source networks no real sender has: "this network", multicast, and the
#: reserved block that holds the limited broadcast address.
_BAD_IPV4 = tuple(
    ipaddress.IPv4Network(network) for network in ("0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")
)


def isBadSource(host: str) -> bool:
    """
    @param host: the source address of a datagram, as the socket gave it.
    @return: whether it cannot be the address of a real sender: not an IP
        address, unspecified (C{0.0.0.0}, C{::}), in C{0.0.0.0/8},
        multicast, or broadcast (C{240.0.0.0/4}, which holds
        C{255.255.255.255}; a subnet's broadcast address cannot be known
        without the interfaces' netmasks and is not caught).  An IPv4-mapped
        IPv6 address (C{::ffff:a.b.c.d}, what a dual-stack socket gives) is
        judged by its IPv4 address.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        if address.is_multicast or address.is_unspecified:
            return True
        if address.ipv4_mapped is None:
            return False
        address = address.ipv4_mapped
    return any(address in network for network in _BAD_IPV4)


class DatagramEcho(DatagramProtocol):
    """
    Answer each datagram with C{datagram + suffix}, sent back to its sender.

    Listen with C{maxPacketSize=MAX_PACKET_SIZE} so that datagrams up to
    L{MAX_DATAGRAM} bytes echo whole.

    UDP senders can be forged, so, as FreeBSD's and NetBSD's inetd do, a
    datagram is not answered (it is counted and dropped) when its source:

      - has the port this echo listens on, whatever its host: it is this
        echo itself, or another echo service on the same port, and
        answering would start a loop that never ends;
      - has a port below 1024, where other echo, chargen, daytime, time or
        DNS services listen (port 0 too);
      - is not a real sender's address (see L{isBadSource});
      - has sent more than C{burst} datagrams at once or more than C{rate}
        per second on average (per source host, a token bucket).  A loop
        with another echo service on an ordinary port, started by one
        forged datagram, therefore dies once the bucket is empty, after
        about C{burst} exchanges.

    The rate-limiting state is one float per source host, at most
    C{maxSources} of them: a source whose bucket is full again is forgotten
    when room is needed, and while the table holds C{maxSources} active
    sources every new one shares one more bucket.  A reply that cannot be
    sent (too long once the suffix is added, or refused by the network) is
    dropped too.  Dropped datagrams are counted by reason (L{dropped},
    L{summary}) and logged in one line at most every C{logInterval} seconds.

    The suffix is at most L{MAX_SUFFIX} bytes, so that a reply is never
    much larger than the datagram it answers (a forged datagram would
    otherwise make this echo an amplifier).

    @ivar datagrams: datagrams received, answered or not.
    @ivar bytesIn: bytes received.
    @ivar bytesOut: bytes of replies sent.
    @ivar dropped: datagrams not answered, by reason (L{OWN_PORT}...).
    """

    _log = Logger()

    def __init__(
        self,
        suffix: bytes = b"",
        logMessages: bool = False,
        *,
        rate: float = defaults.UDP_RATE,
        burst: int = defaults.UDP_BURST,
        maxSources: int = defaults.UDP_MAX_SOURCES,
        logInterval: float = defaults.UDP_LOG_INTERVAL,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param suffix: bytes appended to every reply, at most L{MAX_SUFFIX}.
        @param logMessages: log datagrams received: at most
            L{defaults.UDP_LOG_MESSAGES} per C{logInterval}, each escaped
            and cut to L{defaults.UDP_LOG_BYTES} bytes, then one line
            saying how many more were not logged.
        @param rate: datagrams per second one source host is answered, on
            average; 0 for no limit.
        @param burst: datagrams one source host is answered at once.
        @param maxSources: source hosts to keep rate-limiting state for.
        @param logInterval: seconds between two log lines about dropped
            datagrams (or datagrams not logged).
        @param clock: the clock for the rate limit and the log intervals;
            the global reactor if L{None}.
        @raise ValueError: for a suffix over L{MAX_SUFFIX} bytes or an
            impossible limit.
        """
        if not isinstance(suffix, bytes):
            raise TypeError(f"suffix must be bytes, not {type(suffix).__name__}")
        if len(suffix) > MAX_SUFFIX:
            raise ValueError(f"a UDP suffix must be at most {MAX_SUFFIX} bytes, got {len(suffix)}")
        if not 0 <= rate < float("inf"):
            raise ValueError(f"rate must be a finite number >= 0, got {rate}")
        if burst < 1 or maxSources < 1:
            raise ValueError("burst and maxSources must be at least 1")
        if not 0 < logInterval < float("inf"):
            raise ValueError(f"logInterval must be a finite number > 0, got {logInterval}")
        self.suffix = suffix
        self.logMessages = logMessages
        self.rate = rate
        self.burst = burst
        self.maxSources = maxSources
        self.logInterval = logInterval
        self.datagrams = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.dropped: dict[str, int] = {}
        self._clock = clock
        self._seconds: Callable[[], float] = self._resolveClock if clock is None else clock.seconds
        self._ownPort = -1
        # The token bucket as a "generic cell rate algorithm": each source
        # host maps to the time its bucket is full again (advanced by
        # _interval per datagram answered); a datagram is over the rate when
        # that time is more than _tolerance ahead of now.  With no rate
        # limit, every source is always full again and nothing is over.
        self._interval = 1 / rate if rate else 0.0
        self._tolerance = (burst - 1) / rate if rate else float("inf")
        # The longest a bucket takes to fill again after it was emptied.
        self._refill = burst / rate if rate else 0.0
        self._full: dict[str, float] = {}
        self._overflowFull = 0.0
        self._nextSweep = 0.0
        # What the next log line will report, and the call that writes it.
        self._report: IDelayedCall | None = None
        self._unreported: dict[str, int] = {}
        self._latestDropped: tuple[str, int] | None = None
        # Made by the first datagram logged (it needs the clock).
        self._messageLog: MessageLog | None = None

    @property
    def clock(self) -> IReactorTime:
        """
        The clock given to the constructor, else the global reactor.
        """
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor  # type: ignore[assignment]
            self._seconds = reactor.seconds  # type: ignore[attr-defined]
        return self._clock  # type: ignore[return-value]

    def _resolveClock(self) -> float:
        return self.clock.seconds()

    def startProtocol(self) -> None:
        # The port this echo listens on (a fake transport may not say).
        getHost = getattr(self.transport, "getHost", None)
        self._ownPort = getattr(getHost(), "port", -1) if getHost is not None else -1

    def stopProtocol(self) -> None:
        if self._report is not None and self._report.active():
            self._report.cancel()
        self._writeReport(reopen=False)
        if self._messageLog is not None:
            self._messageLog.flush()

    def summary(self) -> str:
        """
        @return: what this echo has done, in one line: datagrams, bytes,
            and how many were not answered and why.
        """
        text = (
            f"{plural(self.datagrams, 'datagram')}; "
            f"{plural(self.bytesIn, 'byte')} in, {plural(self.bytesOut, 'byte')} out"
        )
        if self.dropped:
            text += f"; {sum(self.dropped.values()):,} not answered: {_reasons(self.dropped)}"
        return text

    # The hot path: two compares for the ports, then (per source host) one
    # dict lookup and a float compare; all the rest is on the rare paths.
    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.datagrams += 1
        self.bytesIn += len(datagram)
        port = addr[1]
        if port < 1024 or port == self._ownPort:
            self._drop(OWN_PORT if port == self._ownPort else LOW_PORT, addr)
            return
        host = addr[0]
        now = self._seconds()
        full = self._full.get(host)
        if full is None:
            if not self._admitNew(host, now, addr):
                return
        elif full - now > self._tolerance:
            self._drop(OVER_RATE, addr)
            return
        else:
            self._full[host] = (full if full > now else now) + self._interval
        if self.logMessages:
            self._logDatagram(datagram, addr)
        reply = datagram + self.suffix
        try:
            self.transport.write(reply, addr)
            self.bytesOut += len(reply)
        except MessageLengthError:
            self._drop(REPLY_TOO_LONG, addr)
        except OSError as error:
            self._drop(REPLY_FAILED.format(reason=error.strerror or error), addr)

    def _admitNew(self, host: str, now: float, addr: tuple[str, int]) -> bool:
        """
        A datagram from a host not in the table: check its address, then
        give it a bucket, or the shared one if the table is full.

        @return: whether to answer it.
        """
        if isBadSource(host):
            self._drop(BAD_SOURCE, addr)
            return False
        if len(self._full) >= self.maxSources and now >= self._nextSweep:
            # A source whose bucket is full again is the same as one never
            # seen: forget them, at most once per time it takes to refill.
            self._full = {source: full for source, full in self._full.items() if full > now}
            self._nextSweep = now + self._refill
        if len(self._full) < self.maxSources:
            self._full[host] = now + self._interval
            return True
        if self._overflowFull - now > self._tolerance:
            self._drop(OVER_RATE, addr)
            return False
        self._overflowFull = max(self._overflowFull, now) + self._interval
        return True

    def _drop(self, reason: str, addr: tuple[str, int]) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self._unreported[reason] = self._unreported.get(reason, 0) + 1
        self._latestDropped = addr
        if self._report is None:
            self._writeReport()

    def _logDatagram(self, datagram: bytes, addr: tuple[str, int]) -> None:
        log = self._messageLog
        if log is None:
            log = self._messageLog = MessageLog(
                self._log,
                self.clock,
                defaults.UDP_LOG_MESSAGES,
                defaults.UDP_LOG_BYTES,
                interval=self.logInterval,
                what="datagram",
            )
        if log.admit(1):
            log.write([datagram], formatAddress(addr))

    def _writeReport(self, reopen: bool = True) -> None:
        """
        Log the datagrams dropped since the last report, if any; unless told
        not to, wait C{logInterval} before the next report if there were.
        """
        self._report = None
        if self._unreported:
            self._log.warn(
                "UDP: {count} not answered: {reasons} (latest from {peer}); "
                "the next such line in {interval} s at the earliest",
                count=plural(sum(self._unreported.values()), "datagram"),
                reasons=_reasons(self._unreported),
                peer=formatAddress(self._latestDropped),
                interval=f"{self.logInterval:g}",
            )
            self._unreported = {}
            if reopen:
                self._report = self.clock.callLater(self.logInterval, self._writeReport)


def _reasons(counts: dict[str, int]) -> str:
    """
    @return: C{"3 over the per-source rate, 1 from a port below 1024"}: the
        counts, largest first.
    """
    return ", ".join(f"{count:,} {reason}" for reason, count in sorted(counts.items(), key=lambda item: -item[1]))
