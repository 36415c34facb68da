"""
Listening behind a proxy that speaks the PROXY protocol (HAProxy's v1 text
header or v2 binary header): the C{haproxy:} endpoints of C{twist tcplab}.

Twisted's own wrapper (L{twisted.protocols.haproxy.proxyEndpoint}) connects
the wrapped protocol before the header is read, so the protocol's
C{connectionMade} sees the proxy's address and the real client's only later
(twisted#12501); it closes on a bad header without saying why, waits for a
header for ever, does not forward half-close, and gives up on a header whose
first read is shorter than 8 bytes.  L{ProxyHeaderFactory} reads the header
first, with a deadline, and only then builds and connects the wrapped
protocol, for the client's address: limits, counts and every log line see
the real client.  Of Twisted's PROXY support it uses only the parsers of
complete headers.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger

# Twisted's parsers: private modules, but the PROXY protocol's only parsers in
# Twisted; tests/test_proxy.py fails at import if a release moves them.
from twisted.protocols.haproxy._exceptions import InvalidProxyHeader
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from tcplab import defaults
from tcplab.address import formatAddress
from tcplab.text import escape
from tcplab.wrapper import HalfCloseableWrapper

#: The first bytes of each version's header.
_V2_SIGNATURE = V2Parser.PREFIX
_V1_SIGNATURE = b"PROXY "

#: A v2 header's fixed part: signature, version and command, family, length.
_V2_FIXED = 16

#: The longest v1 header, its CRLF included (the PROXY protocol's limit).
_V1_LONGEST = 107

#: How much of a bad header a log line shows.
_SHOWN = 64


class ProxyHeaderProtocol(HalfCloseableWrapper):
    """
    Read a PROXY header, then build the wrapped protocol for the client the
    header names and hand it the connection: its C{getPeer()} and
    C{getHost()} are the header's addresses from its first call.  A header
    without addresses (C{PROXY UNKNOWN}, a v2 C{LOCAL} command: a proxy's own
    health check) leaves the proxy's.

    A connection whose header is missing, invalid or not complete within the
    factory's C{headerTimeout} is logged with the reason and closed; no
    wrapped protocol is ever built for it.
    """

    factory: ProxyHeaderFactory
    _log = Logger()

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self._info: ProxyInfo | None = None
        self._header = bytearray()
        self._done = False
        self._timer: Any = None

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper does, but the wrapped protocol waits for the header.
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(self.factory.headerTimeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._done:
            return
        header = self._header
        header += data
        try:
            parsed = self._parse(header)
        except _BadHeader as error:
            self._reject(str(error), bytes(header))
            return
        if parsed is not None:
            info, end = parsed
            rest = bytes(header[end:])
            self._header = bytearray()
            self._connect(info, rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        self.factory.unregisterProtocol(self)
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.connectionLost(reason)
        elif not self._done:
            self._log.info("{proxy} closed before sending a PROXY header", proxy=self._proxy())

    def loseWriteConnection(self) -> None:
        # Half-close, explicitly: the echo half-closes only a transport that
        # implements it (not one that finds it through __getattr__, as TLS
        # would), and the socket under this wrapper does.
        self.transport.loseWriteConnection()

    def getPeer(self) -> IAddress:
        if self._info is not None and self._info.source is not None:
            return self._info.source
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        if self._info is not None and self._info.destination is not None:
            return self._info.destination
        return self.transport.getHost()

    def logPrefix(self) -> str:
        return self.factory.logPrefix()

    def _parse(self, header: bytearray) -> tuple[ProxyInfo, int] | None:
        # The whole header and where it ends, once it is all there; None
        # while it is not.  Each version's header is bounded: v1 to 107
        # bytes, v2 to its announced length, at most 16 + 65535.
        start = bytes(header[:_V2_FIXED])
        if start.startswith(_V2_SIGNATURE[: len(start)]):
            if len(start) < _V2_FIXED:
                return None
            if start[12] & 0xF0 != 0x20:
                raise _BadHeader(f"unsupported PROXY protocol version {start[12] >> 4}")
            end = _V2_FIXED + struct.unpack_from("!H", start, 14)[0]
            if len(header) < end:
                return None
            return _checked(V2Parser.parse, bytes(header[:end]), "v2"), end
        if start.startswith(_V1_SIGNATURE[: len(start)]):
            end = header.find(b"\r\n", 0, _V1_LONGEST)
            if end < 0:
                if len(header) >= _V1_LONGEST:
                    raise _BadHeader(f"PROXY v1 header longer than {_V1_LONGEST} bytes")
                return None
            line = bytes(header[:end])
            if line == b"PROXY UNKNOWN":
                # HAProxy's own health checks; Twisted's parser wants more.
                return ProxyInfo(line, None, None), end + 2
            return _checked(V1Parser.parse, line, "v1"), end + 2
        raise _BadHeader("no PROXY header")

    def _connect(self, info: ProxyInfo, rest: bytes) -> None:
        self._stopTimer()
        self._done = True
        self._info = info
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            # Turned away (the wrapped factory says why).
            self.transport.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if rest:
            protocol.dataReceived(rest)

    def _reject(self, reason: str, data: bytes) -> None:
        self._done = True
        self._stopTimer()
        self.factory.countRefused("proxy-header")
        self._log.warn(
            "{proxy}: {reason}, got '{start}'; closing",
            proxy=self._proxy(),
            reason=reason,
            start=escape(data, limit=_SHOWN),
        )
        self.transport.loseConnection()

    def _timedOut(self) -> None:
        self._timer = None
        self._done = True
        self.factory.countRefused("proxy-header")
        self._log.warn(
            "{proxy}: no complete PROXY header within {seconds:g} s; closing",
            proxy=self._proxy(),
            seconds=self.factory.headerTimeout,
        )
        self.transport.abortConnection()

    def _proxy(self) -> str:
        return formatAddress(self.transport.getPeer())

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class _BadHeader(Exception):
    """
    A connection's first bytes are not a valid PROXY header; the message says why.
    """


def _checked(parse: Callable[[bytes], ProxyInfo], header: bytes, version: str) -> ProxyInfo:
    # Twisted's parsers raise InvalidProxyHeader (or a subclass) for what
    # they check, and a bare ValueError (UnicodeDecodeError, int()) for an
    # address or port they do not; nor do they check that an address is one.
    try:
        info = parse(header)
    except (InvalidProxyHeader, ValueError) as error:
        raise _BadHeader(f"invalid PROXY {version} header ({type(error).__name__})") from None
    for address in (info.source, info.destination):
        host = getattr(address, "host", None)
        if host is None:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise _BadHeader(f"invalid PROXY {version} header (bad address)") from None
        if not 0 <= address.port <= 65535:  # type: ignore[union-attr]
            raise _BadHeader(f"invalid PROXY {version} header (bad port)")
    return info


class ProxyHeaderFactory(WrappingFactory):
    """
    Wrap every connection of C{wrappedFactory} in a L{ProxyHeaderProtocol}.

    @ivar headerTimeout: seconds a connection has to send its whole header.
    @ivar maxPending: connections waiting for their header at once; more are
        closed at once (they hold no slot of the wrapped factory's limits).
    @ivar clock: schedules that deadline.
    """

    protocol = ProxyHeaderProtocol
    noisy = False
    _log = Logger()

    def __init__(
        self,
        wrappedFactory: Factory,
        clock: IReactorTime,
        headerTimeout: float = defaults.PROXY_HEADER_TIMEOUT,
        maxPending: int = defaults.MAX_CONNECTIONS,
    ) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.headerTimeout = headerTimeout
        self.maxPending = maxPending

    def buildProtocol(self, addr: IAddress) -> ProxyHeaderProtocol | None:  # type: ignore[override]
        pending = sum(1 for protocol in self.protocols if protocol.wrappedProtocol is None)
        if self.maxPending and pending >= self.maxPending:
            self.countRefused("proxy-busy")
            self._log.warn(
                "{proxy}: {pending} connections already wait for their PROXY header; closing",
                proxy=formatAddress(addr),
                pending=pending,
            )
            return None
        return self.protocol(self)

    def countRefused(self, reason: str) -> None:
        """
        Count a connection closed before the echo saw it (its header bad,
        missing or late: C{"proxy-header"}; too many waiting for theirs:
        C{"proxy-busy"}) with the echo's refusals
        (L{tcplab.server.EchoServerFactory.countRefused}), through any
        wrapping factory in between (the fault layer).
        """
        factory = self.wrappedFactory
        while not hasattr(factory, "countRefused") and hasattr(factory, "wrappedFactory"):
            factory = factory.wrappedFactory
        count = getattr(factory, "countRefused", None)
        if count is not None:
            count(reason)

    def logPrefix(self) -> str:
        return f"{self.wrappedFactory.logPrefix()} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    Listen on C{endpoint} for connections that each start with a PROXY header.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, clock: IReactorTime, **settings: Any) -> None:
        """
        @param settings: L{ProxyHeaderFactory}'s C{headerTimeout} and C{maxPending}.
        """
        self._endpoint = endpoint
        self._clock = clock
        self._settings = settings

    def listen(self, factory: Factory) -> Any:
        """
        @return: a L{Deferred} firing with the L{IListeningPort}.
        """
        return self._endpoint.listen(ProxyHeaderFactory(factory, self._clock, **self._settings))
