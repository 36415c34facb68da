"""
The twistd plugin's options and service: C{twist tcplab} / C{twistd -n tcplab}.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService, UDPServer
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IReactorCore
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage

from tcplab import coerce, defaults
from tcplab.framing import MAX_FRAME_PAYLOAD, checkSuffix
from tcplab.server import EchoServerFactory, ServerStats
from tcplab.udp import MAX_PACKET_SIZE, MAX_SUFFIX, DatagramEcho


class Options(coerce.CommandOptions):
    """
    Options of the tcplab twistd plugin.
    """

    synopsis = "[options]"
    longdesc = (
        "A TCP echo server (and optionally a UDP one): every message comes back "
        "followed by --suffix. By default it listens on "
        f"{defaults.LISTEN}, like the lesson's server."
    )
    optFlags = [
        ["once", None, "Serve exactly one connection, then stop."],
        ["log-messages", None, "Log every message received."],
    ]
    optParameters = [
        ["udp", None, None, "Also echo UDP datagrams on this port", coerce.port],
        ["udp-interface", None, defaults.HOST, "The address the UDP echo binds to."],
        [
            "udp-rate",
            None,
            defaults.UDP_RATE,
            "UDP datagrams per second answered to one source host, on average (0: no limit).",
            coerce.count,
        ],
        [
            "udp-burst",
            None,
            defaults.UDP_BURST,
            "UDP datagrams answered to one source host at once, before --udp-rate applies.",
            coerce.positive,
        ],
        [
            "framing",
            None,
            defaults.FRAMING,
            "How messages are delimited: raw (RFC 862), line (\\n-terminated) "
            "or length (4-byte big-endian prefix)",
            coerce.framing,
        ],
        ["suffix", None, None, "Text appended to every reply (UTF-8), e.g. SB."],
        [
            "max-length",
            None,
            defaults.MAX_LENGTH,
            "Longest message in bytes (line and length framings).",
            coerce.size,
        ],
        [
            "idle-timeout",
            None,
            defaults.IDLE_TIMEOUT,
            "Close a connection after this many seconds without traffic (0: never).",
            coerce.seconds,
        ],
        [
            "max-connections",
            None,
            defaults.MAX_CONNECTIONS,
            "Connections open at once; more are refused (0: no limit).",
            coerce.count,
        ],
        [
            "max-per-peer",
            None,
            defaults.MAX_PER_PEER,
            "Connections one peer address may hold open at once (0: no limit).",
            coerce.count,
        ],
        [
            "drain-timeout",
            None,
            defaults.DRAIN_TIMEOUT,
            "On SIGTERM/SIGINT, seconds to finish echoing before aborting what is left.",
            coerce.seconds,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        _checkEndpoint(description)
        self["listen"].append(description)

    opt_listen.__doc__ = f"Listen on this Twisted server endpoint; repeatable [default: {defaults.LISTEN}]."

    opt_l = opt_listen

    def postOptions(self) -> None:
        self["suffix"] = coerce.utf8(self["suffix"] or "")
        try:
            checkSuffix(self["framing"], self["suffix"])
        except ValueError as error:
            raise usage.UsageError(f"--suffix: {error}") from None
        if self["udp"] is not None and len(self["suffix"]) > MAX_SUFFIX:
            raise usage.UsageError(
                f"--suffix: at most {MAX_SUFFIX} bytes with --udp (a UDP reply must not be much "
                f"larger than the datagram it answers), got {len(self['suffix'])}"
            )
        if not self["listen"]:
            self["listen"] = [defaults.LISTEN]
        longest = MAX_FRAME_PAYLOAD - len(self["suffix"])
        if self["max-length"] > longest:
            raise usage.UsageError(f"--max-length must be at most {longest}")


def _checkEndpoint(description: str) -> None:
    # Parsing needs a reactor but must not install the global one before
    # twistd has chosen it; a memory reactor parses just as well.
    try:
        coerce.checkEndpointPort(serverFromString(MemoryReactor(), description))
    except Exception as error:
        raise usage.UsageError(f"invalid endpoint {description!r}: {error}") from None


class EchoService(MultiService):
    """
    The tcplab server: every listener, and the factory they share.

    A listener that cannot start ends the process with one line naming the
    address and the reason, instead of a traceback.  Stopping (SIGTERM or
    SIGINT) stops accepting, finishes echoing what was received, logs a
    one-line summary, and exits 0; a second signal aborts what is still open.

    @ivar factory: the L{EchoServerFactory} serving every TCP listener.
    @ivar drainTimeout: seconds to finish echoing when stopping.
    """

    _log = Logger()

    def __init__(
        self, factory: EchoServerFactory, reactor: IReactorCore, drainTimeout: float = defaults.DRAIN_TIMEOUT
    ) -> None:
        super().__init__()
        self.factory = factory
        self.drainTimeout = drainTimeout
        self._reactor = reactor
        self._descriptions: dict[IService, str] = {}
        self._signalled = False
        #: The UDP echo, if there is one.
        self.datagramEcho: DatagramEcho | None = None

    def addListener(self, description: str, service: IService) -> None:
        """
        Add a listening service, described for error messages.
        """
        self._descriptions[service] = description
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        for child in self:
            self._start(child, child.privilegedStartService)

    def startService(self) -> None:
        Service.startService(self)
        for child in self:
            self._start(child, child.startService)
        self._reactor.callWhenRunning(self._handleSignals)

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[Any] = super().stopService()  # type: ignore[assignment]
        stopped.addCallback(lambda _: self.factory.drain(self.drainTimeout))
        return stopped.addCallback(self._logSummary)

    def _logSummary(self, stats: ServerStats) -> None:
        summary = str(stats)
        if self.datagramEcho is not None:
            summary += f"; UDP: {self.datagramEcho.summary()}"
        self._log.info("tcplab stopped: {summary}", summary=summary)

    def _handleSignals(self) -> None:
        # The reactor's own handlers make twist/twistd re-raise the signal
        # once stopped (exit status 143 or 130); a drained stop is a success.
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                signal.signal(number, self._stopOnSignal)

    def _stopOnSignal(self, number: int, frame: object) -> None:
        name = signal.Signals(number).name
        if self._signalled:
            # Asked again while draining: the user does not want to wait.
            self._log.info("received {signal} again: aborting open connections", signal=name)
            self._reactor.callFromThread(self.factory.abortAll)  # type: ignore[attr-defined]
            return
        self._signalled = True
        self._log.info("received {signal}: finishing open connections", signal=name)
        self._reactor.callFromThread(self._stopReactor)  # type: ignore[attr-defined]

    def _stopReactor(self) -> None:
        try:
            self._reactor.stop()  # type: ignore[attr-defined]
        except ReactorNotRunning:
            pass  # Already stopping (--once): the drain is under way.

    def _start(self, child: IService, start: Callable[[], object]) -> None:
        try:
            start()
        except Exception as error:
            where = self._descriptions.get(child, repr(child))
            raise SystemExit(f"tcplab: cannot listen on {where}: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        socketError = error.socketError
        return socketError.strerror or str(socketError)
    return str(error) or type(error).__name__


class _Listener(StreamServerEndpointService):
    # Report a failure to listen at once rather than log it later.
    _raiseSynchronously = True


def buildService(config: usage.Options | dict[str, Any], reactor: IReactorCore) -> EchoService:
    """
    Build the tcplab service from parsed L{Options}, listening with C{reactor}.
    """
    factory = EchoServerFactory(
        framing=config["framing"],
        suffix=config["suffix"],
        maxLength=config["max-length"],
        logMessages=bool(config["log-messages"]),
        idleTimeout=config["idle-timeout"],
        maxConnections=config["max-connections"],
        maxPerPeer=config["max-per-peer"],
        maxServed=1 if config["once"] else None,
        reactor=reactor,
    )
    service = EchoService(factory, reactor, drainTimeout=config["drain-timeout"])
    for description in config["listen"]:
        endpoint = serverFromString(reactor, description)
        service.addListener(description, _Listener(endpoint, factory))
    if config["udp"] is not None:
        service.datagramEcho = DatagramEcho(
            suffix=config["suffix"],
            logMessages=bool(config["log-messages"]),
            rate=config["udp-rate"],
            burst=config["udp-burst"],
            clock=reactor,  # type: ignore[arg-type]
        )
        udp = UDPServer(
            config["udp"],
            service.datagramEcho,
            interface=config["udp-interface"],
            maxPacketSize=MAX_PACKET_SIZE,
            reactor=reactor,
        )
        service.addListener(f"udp:{config['udp']}:interface={config['udp-interface']}", udp)
    if config["once"]:
        factory.whenServed().addCallback(lambda _: reactor.stop())
    return service


def makeService(config: Options) -> EchoService:
    """
    The twistd entry point: L{buildService} with the global reactor.
    """
    from twisted.internet import reactor

    return buildService(config, reactor)  # type: ignore[arg-type]
