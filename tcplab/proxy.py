"""
Listening behind a proxy that speaks the PROXY protocol (HAProxy's v1 text
header or v2 binary header): the C{haproxy:} endpoints of C{twist tcplab}.

Twisted's own wrapper (L{twisted.protocols.haproxy.proxyEndpoint}) connects
the wrapped protocol before the header is read, so the protocol's
C{connectionMade} sees the proxy's address and the real client's only later
(twisted#12501); it closes on a bad header without saying why, waits for a
header for ever, does not forward half-close, and gives up on a header whose
first read is shorter than 8 bytes.  L{ProxyHeaderFactory} reads the header
first, with a deadline, and only then connects the wrapped protocol, whose
transport then reports the client's address from its very first call:
limits, counts and every log line see the real client.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IProtocol,
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
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from tcplab import defaults
from tcplab.address import formatAddress
from tcplab.text import escape

#: The first bytes of each version's header.
_V2_SIGNATURE = V2Parser.PREFIX
_V1_SIGNATURE = b"PROXY "

#: A v2 header's fixed part: signature, version and command, family, length.
_V2_FIXED = 16

#: How much of a bad header a log line shows.
_SHOWN = 64


@implementer(IHalfCloseableProtocol)
class ProxyHeaderProtocol(ProtocolWrapper):
    """
    Read a PROXY header, then hand the connection to the wrapped protocol,
    whose C{getPeer()} and C{getHost()} are the addresses the header gives.

    A connection whose header is missing, invalid or not complete within the
    factory's C{headerTimeout} is logged with the reason and closed; the
    wrapped protocol never sees it.
    """

    factory: ProxyHeaderFactory
    _log = Logger()

    def __init__(self, factory: ProxyHeaderFactory, wrappedProtocol: IProtocol) -> None:
        super().__init__(factory, wrappedProtocol)
        self._info: ProxyInfo | None = None
        self._parser: V1Parser | V2Parser | None = None
        self._start = b""
        self._connected = False
        self._refused = False
        self._timer: Any = None

    def makeConnection(self, transport: Any) -> None:
        # As ProtocolWrapper does, but the wrapped protocol waits for the header.
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(self.factory.headerTimeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self._info is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if self._refused:
            return
        if self._parser is None:
            data = self._start + data
            self._parser = self._choose(data)
            if self._parser is None:
                # Fewer than 16 bytes: enough to tell the versions apart.
                self._start = data
                return
            self._start = b""
        try:
            info, rest = self._parser.feed(data)
        except InvalidProxyHeader as error:
            version = "v1" if isinstance(self._parser, V1Parser) else "v2"
            self._reject(f"invalid PROXY {version} header ({type(error).__name__})", data)
            return
        if info is None:
            return
        self._info = info
        self._stopTimer()
        self._connected = True
        self.wrappedProtocol.makeConnection(self)
        if rest:
            self.wrappedProtocol.dataReceived(rest)

    def readConnectionLost(self) -> None:
        if not self._connected:
            self.loseConnection()
            return
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        if self._connected and IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stopTimer()
        self.factory.unregisterProtocol(self)
        if self._connected:
            self.wrappedProtocol.connectionLost(reason)
        elif not self._refused:
            self._log.info(
                "{proxy} closed before sending a PROXY header", proxy=formatAddress(self.transport.getPeer())
            )

    def getPeer(self) -> IAddress:
        if self._info is not None and self._info.source is not None:
            return self._info.source
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        if self._info is not None and self._info.destination is not None:
            return self._info.destination
        return self.transport.getHost()

    def _choose(self, start: bytes) -> V1Parser | V2Parser | None:
        # Which header this is, as soon as its first bytes tell; None while
        # they could still begin either.  Anything else is no header at all.
        if start.startswith(_V2_SIGNATURE[: len(start)]):
            if len(start) < _V2_FIXED:
                return None
            if start[12] & 0xF0 != 0x20:
                self._reject(f"unsupported PROXY protocol version {start[12] >> 4}", start)
                return None
            return V2Parser()
        if start.startswith(_V1_SIGNATURE[: len(start)]):
            return V1Parser() if len(start) >= len(_V1_SIGNATURE) else None
        self._reject("no PROXY header", start)
        return None

    def _reject(self, reason: str, data: bytes) -> None:
        self._refused = True
        self._stopTimer()
        self._log.warn(
            "{proxy}: {reason}, got {start}; closing",
            proxy=formatAddress(self.transport.getPeer()),
            reason=reason,
            start=repr(escape(data, limit=_SHOWN)),
        )
        self.transport.loseConnection()

    def _timedOut(self) -> None:
        self._timer = None
        self._refused = True
        self._log.warn(
            "{proxy}: no complete PROXY header within {seconds:g} s; closing",
            proxy=formatAddress(self.transport.getPeer()),
            seconds=self.factory.headerTimeout,
        )
        self.transport.abortConnection()

    def _stopTimer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class ProxyHeaderFactory(WrappingFactory):
    """
    Wrap every connection of C{wrappedFactory} in a L{ProxyHeaderProtocol}.

    @ivar headerTimeout: seconds a connection has to send its whole header.
    @ivar clock: schedules that deadline.
    """

    protocol = ProxyHeaderProtocol
    noisy = False

    def __init__(
        self,
        wrappedFactory: Factory,
        clock: IReactorTime,
        headerTimeout: float = defaults.PROXY_HEADER_TIMEOUT,
    ) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.headerTimeout = headerTimeout

    def logPrefix(self) -> str:
        return f"{self.wrappedFactory.logPrefix()} (PROXY)"


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    Listen on C{endpoint} for connections that each start with a PROXY header.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        clock: IReactorTime,
        headerTimeout: float = defaults.PROXY_HEADER_TIMEOUT,
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self._headerTimeout = headerTimeout

    def listen(self, factory: Factory) -> Any:
        """
        @return: a L{Deferred} firing with the L{IListeningPort}.
        """
        return self._endpoint.listen(ProxyHeaderFactory(factory, self._clock, self._headerTimeout))
