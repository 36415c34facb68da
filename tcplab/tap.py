"""
The twistd plugin's options and service: C{twist tcplab} / C{twistd -n tcplab}.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.application.internet import StreamServerEndpointService, UDPServer
from twisted.application.service import IService, MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorCore, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.python import usage

from tcplab import coerce, defaults
from tcplab.address import formatAddress
from tcplab.endpoints import splitEndpoint
from tcplab.faults import Faults, applyFaults
from tcplab.framing import MAX_FRAME_PAYLOAD, checkSuffix
from tcplab.proxy import ProxyHeaderEndpoint
from tcplab.server import EchoServerFactory, ServerStats
from tcplab.udp import MAX_PACKET_SIZE, MAX_SUFFIX, DatagramEcho

if TYPE_CHECKING:
    from tcplab.metrics import Health


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
        [
            "log-messages",
            None,
            "Log the messages received: escaped, cut to "
            f"{defaults.LOG_MESSAGE_BYTES} bytes, at most {defaults.LOG_MESSAGES_PER_SECOND} "
            "a second per connection.",
        ],
        [
            "log-connections",
            None,
            "Log every connection served, in one line when it closes: how long it lasted, "
            "the bytes in and out, and why it closed (refusals, errors and the stop "
            "summary are always logged).",
        ],
    ]
    optParameters = [
        ["udp", None, None, "Also echo UDP datagrams on this port", coerce.port],
        ["udp-interface", None, defaults.HOST, "The address the UDP echo binds to."],
        [
            "metrics",
            None,
            None,
            "Serve /metrics (Prometheus) and /healthz (200, 503 once stopping) over HTTP on this "
            "Twisted server endpoint, e.g. tcp:9108:interface=127.0.0.1 (default: off); with --workers, "
            "the sum of all workers.",
        ],
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
            "log-connections-per-second",
            None,
            defaults.LOG_CONNECTIONS_PER_SECOND,
            "With --log-connections, connections logged a second at most (0: no limit); "
            "one line a second counts the others.",
            coerce.count,
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
            "Connections open at once; more are refused (0: no limit); with --workers, in all workers together.",
            coerce.count,
        ],
        [
            "max-per-peer",
            None,
            defaults.MAX_PER_PEER,
            "Connections one peer address may hold open at once (0: no limit); with --workers, in all workers together.",
            coerce.count,
        ],
        [
            "drain-timeout",
            None,
            defaults.DRAIN_TIMEOUT,
            "On SIGTERM, SIGINT or SIGHUP, seconds to finish echoing before aborting what is left.",
            coerce.seconds,
        ],
        [
            "close-timeout",
            None,
            defaults.CLOSE_TIMEOUT,
            "Seconds a connection the server closes (idle, overlong message, "
            "drain) gets to take its last replies before it is aborted.",
            coerce.seconds,
        ],
        [
            "workers",
            None,
            1,
            "Worker processes serving every TCP listener, each its own SO_REUSEPORT socket "
            "(UNIX and systemd sockets shared), under a supervisor that replaces one that dies "
            "(0 or auto: one per CPU; 1: no supervisor).",
            coerce.workers,
        ],
        [
            "proxy-header-timeout",
            None,
            defaults.PROXY_HEADER_TIMEOUT,
            "haproxy: listeners: seconds a connection has to send its PROXY header.",
            coerce.seconds,
        ],
        # Fault injection (tcplab.faults): a server that misbehaves on purpose.
        ["delay", None, None, "Fault: send each reply this many seconds late (TCP and UDP).", coerce.seconds],
        ["jitter", None, None, "Fault: up to this many more seconds per reply, at random; never reordered.", coerce.seconds],
        ["chunk", None, None, "Fault: write replies in pieces of at most this many bytes.", coerce.size],
        ["chunk-delay", None, None, "Fault: seconds between two pieces (with --chunk).", coerce.seconds],
        ["close-after", None, None, "Fault: close each connection cleanly after this many replies.", coerce.count],
        ["reset-after", None, None, "Fault: reset each connection (TCP RST) after this many replies.", coerce.count],
        ["udp-drop", None, None, "Fault: drop this fraction (0-1) of the UDP datagrams.", coerce.fraction],
        ["seed", None, None, "Fault: seed every random choice (jitter, drops), for runs that repeat.", coerce.count],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        if description.startswith("haproxy:") and endpointKind(description) in ("ssl", "tls"):
            raise usage.UsageError(
                f"invalid endpoint {description!r}: haproxy: cannot wrap {endpointKind(description)}: "
                "a proxy sends its PROXY header before TLS begins (let the proxy end TLS, or pass TLS "
                "through to a plain ssl: listener)"
            )
        _checkEndpoint(description)
        self["listen"].append(description)

    opt_listen.__doc__ = (
        "Listen on this Twisted server endpoint (tcp:, tcp6:, unix:, ssl:, tls:, "
        "systemd:, or haproxy: before tcp:, tcp6:, unix: or systemd: for connections that start with a PROXY "
        f"header); repeatable; TCP and UNIX listeners get backlog={defaults.BACKLOG} unless "
        f"they name one [default: {defaults.LISTEN}]."
    )

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
        if self["metrics"] is not None:
            try:
                _checkEndpoint(self["metrics"])
            except usage.UsageError as error:
                raise usage.UsageError(f"--metrics: {error}") from None
        longest = MAX_FRAME_PAYLOAD - len(self["suffix"])
        if self["max-length"] > longest:
            raise usage.UsageError(f"--max-length must be at most {longest}")
        try:
            Faults.fromOptions(self)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if self["workers"] > 1:
            from tcplab.workers import checkWorkerOptions

            checkWorkerOptions(self)


def _checkEndpoint(description: str) -> None:
    # Parsing needs a reactor but must not install the global one before
    # twistd has chosen it; a memory reactor parses just as well.
    try:
        coerce.checkEndpointPort(serverFromString(MemoryReactor(), description))
    except Exception as error:
        reason = str(error)
        if isinstance(error, (IndexError, KeyError)) and endpointKind(description) == "systemd":
            # Twisted's bare "list index out of range" or "'echo'".
            from tcplab import systemd

            reason = systemd.explain(description)
        raise usage.UsageError(f"invalid endpoint {description!r}: {reason}") from None


class ListenFailed(Exception):
    """
    A listener could not start; the message names its address and the reason.

    twistd catches an L{Exception} raised while it starts the application:
    it removes its pidfile and, when daemonizing, tells the waiting parent,
    which exits 1.  (A L{SystemExit} would escape that path: the parent
    would wait for ever and the pidfile would stay.)
    """


class DrainingService(MultiService):
    """
    A service that SIGTERM, SIGINT and SIGHUP stop by stopping the reactor
    (which stops the service: a drain), and that a second signal hurries up
    by calling L{abortAll}.  Both the single-process server (L{EchoService})
    and the supervisor of worker processes (L{tcplab.workers}) are one.
    """

    #: The signals that stop the server with a drain.
    stopSignals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    _log = Logger()

    def __init__(self, reactor: IReactorCore) -> None:
        super().__init__()
        self._reactor = reactor
        self._signalled = False
        #: The C{--metrics} listener, if any: started after the echo's
        #: listeners, and stopped only once the drain is over.
        self.metrics: IService | None = None
        self._metricsDescription = ""
        self._health: Health | None = None

    def setMetrics(self, description: str, service: IService, health: Health) -> None:
        """
        Serve metrics with C{service}, which listens on C{description}; on
        stopping, C{health} is told at once (L{tcplab.metrics} is imported
        only when metrics are served).
        """
        self.metrics = service
        self._metricsDescription = description
        self._health = health

    def _startListening(self, listen: Callable[[], None], privileged: bool) -> None:
        """
        Call C{listen}, then start the metrics listener, if any: under
        twistd (C{privileged}, before it sheds privileges) or under twist.
        A listener that fails ends the start in one line (L{_failStart}).
        """
        try:
            listen()
            self._startMetrics(privileged)
        except ListenFailed as failure:
            self._failStart(failure, privileged)

    def _failStart(self, failure: ListenFailed, privileged: bool) -> NoReturn:
        """
        End a start that failed: under twistd (C{privileged}) with an
        exception, which twistd reports and which ends in one line (see
        L{ListenFailed}); under twist, where only a SystemExit ends the
        process from the running reactor, with one.
        """
        if privileged:
            _reportOnExit(failure)
            raise failure from None
        raise SystemExit(f"tcplab: {failure}") from None

    def _startMetrics(self, privileged: bool) -> None:
        if self.metrics is None:
            return
        start = self.metrics.privilegedStartService if privileged else self.metrics.startService
        try:
            start()
        except Exception as error:
            raise ListenFailed(f"cannot listen on {self._metricsDescription}: {_reason(error)}") from None

    def _drainStarts(self) -> None:
        # /healthz fails from now on: a load balancer stops sending
        # connections while the open ones are finished.
        if self._health is not None:
            self._health.drain()

    def _stopMetrics(self, result: object) -> object:
        # After the drain: the metrics stay up until the very end.
        if self.metrics is None or not self.metrics.running:
            return result
        stopped: Deferred[Any] = self.metrics.stopService()  # type: ignore[assignment]
        return stopped.addCallback(lambda _: result)

    def abortAll(self) -> None:
        """
        Drop what is still open: asked twice to stop, the user does not want to wait.
        """
        raise NotImplementedError

    def _handleSignals(self) -> None:
        # The reactor's own handlers make twist/twistd re-raise the signal
        # once stopped (exit status 143 or 130; SIGHUP is not handled at all
        # and kills at once); a drained stop is a success.
        if threading.current_thread() is threading.main_thread():
            for number in self.stopSignals:
                signal.signal(number, self._stopOnSignal)

    def _stopOnSignal(self, number: int, frame: object) -> None:
        name = signal.Signals(number).name
        if self._signalled:
            # Asked again while draining: the user does not want to wait.
            self._log.info("received {signal} again: aborting open connections", signal=name)
            self._reactor.callFromThread(self.abortAll)  # type: ignore[attr-defined]
            return
        self._signalled = True
        self._log.info("received {signal}: finishing open connections", signal=name)
        self._reactor.callFromThread(self._stopReactor)  # type: ignore[attr-defined]

    def _stopReactor(self) -> None:
        try:
            self._reactor.stop()  # type: ignore[attr-defined]
        except ReactorNotRunning:
            pass  # Already stopping (--once): the drain is under way.


class EchoService(DrainingService):
    """
    The tcplab server: every listener, and the factory they share.

    A listener that cannot start ends the process, with status 1, and one
    line naming the address and the reason, instead of a traceback.
    Stopping (SIGTERM, SIGINT, or SIGHUP: the terminal went away) stops
    accepting, finishes echoing what was received, logs a one-line summary,
    and exits 0; a second signal aborts what is still open.

    @ivar factory: the L{EchoServerFactory} serving every TCP listener.
    @ivar drainTimeout: seconds to finish echoing when stopping.
    """

    _log = Logger()

    def __init__(
        self, factory: EchoServerFactory, reactor: IReactorCore, drainTimeout: float = defaults.DRAIN_TIMEOUT
    ) -> None:
        super().__init__(reactor)
        self.factory = factory
        self.drainTimeout = drainTimeout
        self._descriptions: dict[IService, str] = {}
        #: The UDP echo, if there is one.
        self.datagramEcho: DatagramEcho | None = None

    def addListener(self, description: str, service: IService) -> None:
        """
        Add a listening service, described for error messages.
        """
        self._descriptions[service] = description
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        # twistd: listen before shedding privileges; a failure is an
        # Exception, which twistd reports (see ListenFailed).
        Service.privilegedStartService(self)
        self._startListening(functools.partial(self._startChildren, True), True)

    def startService(self) -> None:
        # twist (and twistd, once listening): twist starts the service from
        # the running reactor, where only a SystemExit ends the process.
        Service.startService(self)
        self._startListening(functools.partial(self._startChildren, False), False)
        self._reactor.callWhenRunning(self._handleSignals)

    def stopService(self) -> Deferred[None]:
        self._drainStarts()
        stopped: Deferred[Any] = super().stopService()  # type: ignore[assignment]
        stopped.addCallback(lambda _: self.factory.drain(self.drainTimeout))
        stopped.addCallback(self._logSummary)
        return stopped.addCallback(self._stopMetrics)

    def _logSummary(self, stats: ServerStats) -> None:
        summary = str(stats)
        if self.datagramEcho is not None:
            summary += f"; UDP: {self.datagramEcho.summary()}"
        self._log.info("tcplab stopped: {summary}", summary=summary)

    def abortAll(self) -> None:
        self.factory.abortAll()

    def _startChildren(self, privileged: bool) -> None:
        for child in self:
            self._start(child, child.privilegedStartService if privileged else child.startService)

    def _start(self, child: IService, start: Callable[[], object]) -> None:
        where = self._descriptions.get(child, repr(child))
        try:
            start()
        except Exception as error:
            raise ListenFailed(f"cannot listen on {where}: {_reason(error)}") from None
        self._announce(child, where)

    def _announce(self, child: IService, where: str) -> None:
        # One line per listener once it listens: the address it is bound to
        # (a port 0 shows the port chosen) and what it speaks.
        waiting = getattr(child, "_waitingForPort", None)
        if waiting is not None:
            if not getattr(child, "_announced", False):
                child._announced = True  # type: ignore[attr-defined]
                waiting.addCallback(self._logListening, where)
            return
        port = getattr(child, "_port", None)
        if port is not None and not getattr(child, "_announced", False):
            child._announced = True  # type: ignore[attr-defined]
            self._logListening(port, where)

    def _logListening(self, port: IListeningPort, where: str) -> IListeningPort:
        self._log.info(LISTENING, **listeningFields(where, port.getHost(), self.factory.framing, self.factory.suffix))
        return port


#: The start-up line of each listener, with the fields of L{listeningFields}.
LISTENING = "tcplab listening on {address} ({kind}; {framing} framing{suffix}{extra})"


def listeningFields(where: str, address: IAddress, framing: str, suffix: bytes, extra: str = "") -> dict[str, str]:
    """
    @return: the fields of a listener's start-up line (L{LISTENING}), which
        reads C{"tcplab listening on 127.0.0.1:8081 (TCP over IPv4; raw
        framing, suffix 'SB')"}, with C{extra} (C{"; 2 workers"}) before the
        closing parenthesis; C{address} and C{kind} are also for programs
        that read the JSON log (L{tcplab.testing}).
    """
    return {
        "address": formatAddress(address),
        "kind": _describe(where, address),
        "framing": "datagram" if where.startswith("udp:") else framing,
        "suffix": f", suffix {suffix.decode('utf-8', 'replace')!r}" if suffix else "",
        "extra": extra,
    }


def _describe(description: str, address: object) -> str:
    """
    @return: what a listener speaks, for its start-up line: the transport
        and the address family, e.g. C{"TCP over IPv4"}, C{"TLS over TCP
        over IPv6, PROXY protocol"}, C{"UNIX socket"}.
    """
    proxied = description.startswith("haproxy:")
    kind = endpointKind(description)
    if isinstance(address, UNIXAddress):
        text = "UNIX socket"
    else:
        family = "IPv6" if isinstance(address, IPv6Address) else "IPv4" if isinstance(address, IPv4Address) else "?"
        protocol = "UDP" if kind == "udp" else "TLS over TCP" if kind in ("ssl", "tls") else "TCP"
        text = f"{protocol} over {family}"
    if kind == "systemd":
        text += ", from systemd"
    return text + (", PROXY protocol" if proxied else "")


def _reportOnExit(failure: ListenFailed) -> None:
    # twistd re-raises the failure once it has cleaned up; at the top level
    # it is this one line, not a traceback: in twistd's log (which has taken
    # over sys.stderr) and on the terminal twistd was started from, if any.
    # (A daemonizing parent prints its own line, from the status pipe, where
    # twistd keeps the first 100 bytes of "ListenFailed: <message>".)
    previous = sys.excepthook

    def oneLine(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
        if value is not failure:
            previous(kind, value, traceback)
            return
        line = f"tcplab: {failure}\n"
        for stream in {id(s): s for s in (sys.stderr, sys.__stderr__) if s is not None}.values():
            try:
                stream.write(line)
                stream.flush()
            except (OSError, ValueError):
                pass

    sys.excepthook = oneLine


def _reason(error: BaseException) -> str:
    if isinstance(error, CannotListenError) and isinstance(error.socketError, OSError):
        socketError = error.socketError
        return socketError.strerror or str(socketError)
    return str(error) or type(error).__name__


class _Listener(StreamServerEndpointService):
    # Report a failure to listen at once rather than log it later.
    _raiseSynchronously = True


#: Endpoint kinds whose parsers take a C{backlog=}.
_BACKLOG_KINDS = ("tcp", "tcp6", "ssl", "tls", "unix")


def endpointKind(description: str) -> str:
    """
    @return: the kind of listener C{description} names (C{"tcp"},
        C{"unix"}, ...), behind a C{haproxy:} prefix if there is one.
    """
    return description.removeprefix("haproxy:").split(":", 1)[0].lower()


def withBacklog(description: str, backlog: int = defaults.BACKLOG) -> str:
    """
    @return: C{description} with C{backlog=} added if it is a TCP, TLS or
        UNIX listener (also behind C{haproxy:}) that names none: Twisted's
        default of 50 makes a burst of connects wait for SYN retransmits.
    """
    if endpointKind(description) not in _BACKLOG_KINDS:
        return description
    _, _, named = splitEndpoint(description.removeprefix("haproxy:"))
    if "backlog" in named or (len(description) - len(description.rstrip("\\"))) % 2:
        # Named already, or a trailing backslash would escape the colon added.
        return description
    return f"{description}:backlog={backlog}"


def listenerEndpoint(
    reactor: IReactorCore,
    description: str,
    headerTimeout: float = defaults.PROXY_HEADER_TIMEOUT,
    maxPending: int = defaults.MAX_CONNECTIONS,
    parse: Callable[[Any, str], IStreamServerEndpoint] = serverFromString,
) -> IStreamServerEndpoint:
    """
    @return: the endpoint C{description} names, with tcplab's default backlog
        (L{withBacklog}); a C{haproxy:} prefix reads each connection's PROXY
        header before the echo sees it (L{tcplab.proxy}), with at most
        C{maxPending} connections waiting for theirs.  C{parse} makes the
        endpoint of a description (a worker's adopts its inherited socket).
    """
    description = withBacklog(description)
    if description.startswith("haproxy:"):
        inner = parse(reactor, description.removeprefix("haproxy:"))
        return ProxyHeaderEndpoint(inner, reactor, headerTimeout=headerTimeout, maxPending=maxPending)  # type: ignore[arg-type]
    return parse(reactor, description)


def buildFactory(config: usage.Options | dict[str, Any], reactor: IReactorCore, **extra: Any) -> EchoServerFactory:
    """
    @return: the L{EchoServerFactory} that parsed L{Options} describe, with
        C{extra} arguments (the workers' C{sharedLimits}).
    """
    return EchoServerFactory(
        framing=config["framing"],
        suffix=config["suffix"],
        maxLength=config["max-length"],
        logMessages=bool(config["log-messages"]),
        logConnections=bool(config["log-connections"]),
        logConnectionsPerSecond=config["log-connections-per-second"],
        idleTimeout=config["idle-timeout"],
        maxConnections=config["max-connections"],
        maxPerPeer=config["max-per-peer"],
        maxServed=1 if config["once"] else None,
        closeTimeout=config["close-timeout"],
        reactor=reactor,
        **extra,
    )


def listenerService(
    reactor: IReactorCore,
    description: str,
    config: usage.Options | dict[str, Any],
    factory: EchoServerFactory,
    parse: Callable[[Any, str], IStreamServerEndpoint] = serverFromString,
) -> IService:
    """
    @return: the service that listens on C{description} with C{factory}
        (see L{listenerEndpoint}).
    """
    endpoint = listenerEndpoint(
        reactor,
        description,
        config["proxy-header-timeout"],
        config["max-connections"] or defaults.MAX_CONNECTIONS,
        parse=parse,
    )
    return _Listener(endpoint, factory)


def buildDatagramEcho(config: usage.Options | dict[str, Any], reactor: IReactorCore) -> DatagramEcho:
    """
    @return: the UDP echo that parsed L{Options} describe.
    """
    return DatagramEcho(
        suffix=config["suffix"],
        logMessages=bool(config["log-messages"]),
        rate=config["udp-rate"],
        burst=config["udp-burst"],
        clock=reactor,  # type: ignore[arg-type]
    )


def udpDescription(config: usage.Options | dict[str, Any]) -> str:
    """
    @return: how the UDP listener is named in messages.
    """
    return f"udp:{config['udp']}:interface={config['udp-interface']}"


def buildService(config: usage.Options | dict[str, Any], reactor: IReactorCore) -> EchoService:
    """
    Build the tcplab service from parsed L{Options}, listening with C{reactor}.
    """
    factory = buildFactory(config, reactor)
    service = EchoService(factory, reactor, drainTimeout=config["drain-timeout"])
    for description in config["listen"]:
        service.addListener(description, listenerService(reactor, description, config, factory))
    if config["udp"] is not None:
        service.datagramEcho = buildDatagramEcho(config, reactor)
        udp = UDPServer(
            config["udp"],
            service.datagramEcho,
            interface=config["udp-interface"],
            maxPacketSize=MAX_PACKET_SIZE,
            reactor=reactor,
        )
        service.addListener(udpDescription(config), udp)
    applyFaults(service, Faults.fromOptions(config), reactor)
    if config["metrics"] is not None:
        from tcplab.metrics import EchoCollector, MetricsResource

        addMetrics(service, config, reactor, MetricsResource(EchoCollector(factory, service.datagramEcho)))
    if config["once"]:
        factory.whenServed().addCallback(lambda _: reactor.stop())
    return service


def addMetrics(
    service: DrainingService, config: usage.Options | dict[str, Any], reactor: IReactorCore, metrics: Any
) -> None:
    """
    Give C{service} the C{--metrics} listener of C{config}, serving
    C{metrics} (a L{tcplab.metrics.MetricsResource}) and C{/healthz}.
    """
    from tcplab.metrics import BoundedFactory, Health, MetricsService, metricsSite

    health = Health()
    endpoint = serverFromString(reactor, config["metrics"])
    site = BoundedFactory(metricsSite(metrics, health), reactor)  # type: ignore[arg-type]
    service.setMetrics(config["metrics"], MetricsService(endpoint, site), health)


def makeService(config: Options) -> IService:
    """
    The twistd entry point: L{buildService} with the global reactor, or,
    with C{--workers} above 1, the supervisor of that many processes that
    each run it (L{tcplab.workers}).
    """
    from twisted.internet import reactor

    if config["workers"] > 1:
        from tcplab.workers import Supervisor

        return Supervisor(config, reactor)  # type: ignore[arg-type]
    return buildService(config, reactor)  # type: ignore[arg-type]
