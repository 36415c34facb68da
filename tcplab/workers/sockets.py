"""
The listening sockets of a server with worker processes: the supervisor
binds them (L{bindListener}, L{bindDatagram}), each worker adopts the ones
it is given (L{adoptingEndpoint}).

Why the supervisor binds, and why one C{SO_REUSEPORT} socket per worker.
Two ways let N processes serve one port: they share one listening socket
(one accept queue, every worker woken for every connection, the first to
call accept() wins), or each has a socket of its own bound to the same
address with C{SO_REUSEPORT} (one accept queue each; the kernel picks the
socket by a hash of the connection's addresses and ports).  Measured here
with 2 workers and 400 connections, 10 runs each, made one at a time or 400
at once (benchmarks/workers.py, docs/performance.md): with C{SO_REUSEPORT}
the smaller share was never under 45%; with one shared socket it fell to
27% in a burst (and to 20% in a first experiment with bare Twisted
processes).  So TCP listeners get one C{SO_REUSEPORT} socket per worker.
The supervisor, not the worker, makes them and keeps them open: errors
(address in use, permission denied) are reported once, before any worker
starts; a port 0 is chosen once for all; and while a dead worker is being
replaced, the connections the kernel gives its socket wait in that socket's
queue instead of being reset with it.

UNIX sockets have no C{SO_REUSEPORT}, and a socket inherited from systemd is
one socket: those are shared by every worker, and spread as wake-ups fall.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.abstract import isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import execute
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from zope.interface import implementer

from tcplab.tap import endpointKind, withBacklog

#: The listener kinds workers can serve, and how they share them.
REUSEPORT_KINDS = ("tcp", "tcp6", "ssl", "tls")
SHARED_KINDS = ("unix", "systemd")


def checkWorkerListener(description: str) -> None:
    """
    @raise ValueError: saying why C{description} cannot be served by workers.
    """
    kind = endpointKind(description)
    if kind not in REUSEPORT_KINDS + SHARED_KINDS:
        raise ValueError(
            f"{description!r}: --workers serves tcp:, tcp6:, ssl:, tls:, unix: and systemd: listeners "
            f"(each also behind haproxy:), not {kind}: (the supervisor must make or inherit the socket)"
        )
    if kind == "unix" and "lockfile=1" in description.replace(" ", ""):
        raise ValueError(
            f"{description!r}: lockfile=1 is not supported with --workers (the supervisor holds the "
            "socket for its whole life; run one supervisor per socket)"
        )


@dataclass
class ListenerSockets:
    """
    What the supervisor holds for one listener.

    @ivar description: the listener's endpoint string.
    @ivar family: the sockets' address family.
    @ivar sockets: one per worker (C{SO_REUSEPORT}), or one shared by all.
    @ivar path: a UNIX socket's file, removed when the listener closes.
    """

    description: str
    family: int
    sockets: list[socket.socket]
    path: str | None = None
    shared: bool = field(init=False)

    def __post_init__(self) -> None:
        self.shared = len(self.sockets) == 1

    @property
    def kind(self) -> str:
        return endpointKind(self.description)

    def socketFor(self, worker: int) -> socket.socket:
        """
        @return: the socket worker number C{worker} listens on.
        """
        return self.sockets[0 if self.shared else worker]

    def address(self) -> IAddress:
        """
        @return: the address the listener is bound to.
        """
        name = self.sockets[0].getsockname()
        if self.family == socket.AF_UNIX:
            return UNIXAddress(name if isinstance(name, str) else name.decode("utf-8", "replace"))
        if self.family == socket.AF_INET6:
            return IPv6Address("TCP", name[0], name[1])
        return IPv4Address("TCP", name[0], name[1])

    def close(self) -> None:
        """
        Stop listening (the workers' copies close as they stop).
        """
        for each in self.sockets:
            each.close()
        if self.path is not None:
            try:
                if stat.S_ISSOCK(os.stat(self.path).st_mode):
                    os.unlink(self.path)
            except OSError:
                pass
            self.path = None


def bindListener(description: str, workers: int) -> ListenerSockets:
    """
    Make (or, for C{systemd:}, take over) the sockets C{workers} workers
    serve C{description} with.  What to bind comes from Twisted's own
    parsing of the description: its endpoint listens on a L{MemoryReactor},
    which records the call a real reactor would get.

    @raise CannotListenError: as Twisted would raise it.
    @raise ValueError: for a description workers cannot serve.
    """
    checkWorkerListener(description)
    inner = withBacklog(description.removeprefix("haproxy:"))
    recorder = MemoryReactor()
    endpoint = serverFromString(recorder, inner)
    if isinstance(endpoint, AdoptedStreamServerEndpoint):
        # systemd: the inherited socket, as it is (not listened on here:
        # that endpoint would close the descriptor).
        inherited = socket.socket(endpoint.addressFamily, socket.SOCK_STREAM, fileno=os.dup(endpoint.fileno))
        os.close(endpoint.fileno)
        inherited.setblocking(False)
        return ListenerSockets(description, endpoint.addressFamily, [inherited])
    endpoint.listen(Factory())
    if recorder.unixServers:
        address, _, backlog, mode, _ = recorder.unixServers[0]
        return ListenerSockets(description, socket.AF_UNIX, [_bindUNIX(address, backlog, mode)], path=address)
    if recorder.tcpServers:
        port, _, backlog, interface = recorder.tcpServers[0]
    elif recorder.sslServers:
        port, _, _, backlog, interface = recorder.sslServers[0]
    else:
        raise ValueError(f"{description!r}: not a listener --workers can serve")
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    return ListenerSockets(description, family, _bindReusePort(family, interface, port, backlog, workers))


def _bindReusePort(family: int, interface: str, port: int, backlog: int, count: int) -> list[socket.socket]:
    if port:
        # SO_REUSEPORT would also let this group join another server's on
        # the same port (of the same user): check first that it is free, as
        # a plain listener would find it.
        _bindInet(family, interface, port, 0, reusePort=False).close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(_bindInet(family, interface, port, backlog, reusePort=True))
            port = sockets[0].getsockname()[1]
    except BaseException:
        for each in sockets:
            each.close()
        raise
    return sockets


def _bindInet(family: int, interface: str, port: int, backlog: int, reusePort: bool) -> socket.socket:
    # As twisted.internet.tcp.Port binds: SO_REUSEADDR, IPv6 scope ids resolved.
    listener = socket.socket(family, socket.SOCK_STREAM)
    with _failingAs(listener, interface, port):
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reusePort:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            address = socket.getaddrinfo(interface, port, 0, 0, 0, socket.AI_NUMERICHOST)[0][4]
        else:
            address = (interface, port)
        listener.bind(address)
        if backlog:
            listener.listen(backlog)
    return listener


def _bindUNIX(path: str, backlog: int, mode: int) -> socket.socket:
    # As twisted.internet.unix.Port binds (without a lock file).
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with _failingAs(listener, None, path):
        listener.bind(path)
        if path[:1] != "\0":
            os.chmod(path, mode)
        listener.listen(backlog)
    return listener


def bindDatagram(interface: str, port: int) -> socket.socket:
    """
    @return: a UDP socket bound as C{reactor.listenUDP} binds it.
    @raise CannotListenError: as Twisted would raise it.
    """
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    with _failingAs(udp, interface, port):
        udp.bind((interface, port))
    return udp


@contextlib.contextmanager
def _failingAs(made: socket.socket, interface: str | None, port: int | str) -> Iterator[None]:
    # Set up a socket: non-blocking once done (the workers' reactors need
    # it so), or closed, with the error Twisted raises, if that fails.
    try:
        yield
        made.setblocking(False)
    except OSError as error:
        made.close()
        raise CannotListenError(interface, port, error) from None


class _SharedUNIXPort(unix.Port):
    """
    An adopted UNIX listening port that leaves the socket to the others
    when it stops.  Twisted's, even adopted, removes the socket file and
    calls C{shutdown()} on the socket (its TCP port skips that for an
    adopted socket, its UNIX port does not): with workers sharing it, the
    first to stop (or one being replaced) would stop it for all.  The
    supervisor removes the file (L{ListenerSockets.close}).

    Relies on Twisted internals: C{unix.Port._fromListeningDescriptor} (the
    constructor Twisted's own C{adoptStreamPort} uses) and the
    C{_shouldShutdown} flag of its sockets' closer;
    C{ListenerKindTests.test_unix} replaces a worker while the others serve
    the socket, and fails if a Twisted release changes them.
    """

    _shouldShutdown = False

    def connectionLost(self, reason: Any) -> None:
        tcp.Port.connectionLost(self, reason)


def adopt(reactor: Any, fileno: int, family: int, factory: Factory) -> IListeningPort:
    """
    Listen with C{factory} on the inherited listening socket C{fileno}, then
    close C{fileno} (the port has its own copy, which it closes when it
    stops: only then does this process stop accepting).
    """
    if family == socket.AF_UNIX:
        port = _SharedUNIXPort._fromListeningDescriptor(reactor, fileno, factory)
        port.startListening()
    else:
        port = reactor.adoptStreamPort(fileno, family, factory)
    os.close(fileno)
    return port


class AdoptingReactor:
    """
    A reactor whose C{listenTCP}, C{listenSSL} and C{listenUNIX} adopt one
    inherited listening socket instead of
    binding: Twisted's endpoints, given it, serve that socket with
    everything their description says (TLS certificates, SNI, ...); all
    else goes to the real reactor.
    """

    def __init__(self, reactor: Any, fileno: int, family: int) -> None:
        self._reactor = reactor
        self._fileno = fileno
        self._family = family

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: Any, factory: Factory, backlog: int = 50, interface: str = "") -> IListeningPort:
        return adopt(self._reactor, self._fileno, self._family, factory)

    def listenSSL(
        self, port: Any, factory: Factory, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        # As the reactor's listenSSL does: TLS in memory, over TCP.  (Imported
        # here: it needs pyOpenSSL, the optional "tls" extra.)
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return adopt(self._reactor, self._fileno, self._family, TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(
        self, address: Any, factory: Factory, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> IListeningPort:
        return adopt(self._reactor, self._fileno, self._family, factory)


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """
    Listen on an inherited listening socket (a worker's C{systemd:} listener).
    """

    def __init__(self, reactor: Any, fileno: int, family: int) -> None:
        self._reactor = reactor
        self._fileno = fileno
        self._family = family

    def listen(self, factory: Factory) -> Any:
        return execute(adopt, self._reactor, self._fileno, self._family, factory)


def adoptingEndpoint(fileno: int, family: int) -> Any:
    """
    @return: the C{parse} argument of L{tcplab.tap.listenerEndpoint} for a
        worker whose listener is the inherited socket C{fileno}: the
        description's own endpoint, listening on that socket.
    """

    def parse(reactor: Any, description: str) -> IStreamServerEndpoint:
        if endpointKind(description) == "systemd":
            return InheritedEndpoint(reactor, fileno, family)
        return serverFromString(AdoptingReactor(reactor, fileno, family), description)

    return parse
