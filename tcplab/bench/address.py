"""
Where C{tcplab bench} connects: a socket family and address, from HOST PORT
or from a Twisted client endpoint string.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from tcplab import coerce
from tcplab.endpoints import REQUIRED_FIELDS, requiredFields, splitEndpoint

#: Linux: a bind() to a local address leaves the port for connect() to pick,
#: one free for the whole address 4-tuple rather than for the local address.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


@dataclass(frozen=True)
class Address:
    """
    Where to connect: a socket family and a C{connect()} address, and the
    local addresses to connect from, in turn (none: the kernel's choice).
    """

    family: int
    sockaddr: Any
    sources: tuple[str, ...] = ()

    def newSocket(self, index: int, flags: int = 0) -> socket.socket:
        """
        @return: a new stream socket of this family (C{flags} added to its
            type), bound to the C{index}th source address in turn if there
            are any.
        @raise OSError: if it cannot be bound.
        """
        sock = socket.socket(self.family, socket.SOCK_STREAM | flags)
        if self.sources:
            try:
                if self.family == socket.AF_INET:
                    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.sources[index % len(self.sources)], 0))
            except OSError:
                sock.close()
                raise
        return sock

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return str(self.sockaddr)
        host, port = self.sockaddr[:2]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


def tcpAddress(host: str, port: int, family: int = socket.AF_UNSPEC) -> Address:
    """
    @return: the first TCP address that C{host} and C{port} resolve to.
    @raise ValueError: if C{host} does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"cannot resolve {host!r}: {error.strerror or error}") from None
    family, _, _, _, sockaddr = infos[0]
    return Address(family, sockaddr)


def parseEndpoint(description: str) -> Address:
    """
    Parse a Twisted client endpoint string of the kinds a load generator can
    use directly, as C{tcplab client --connect} takes them:
    C{tcp:host=H:port=P} (or C{tcp:H:P}), C{tcp6:host=H:port=P} and
    C{unix:path=P} (or C{unix:P}).  Colons inside a value are escaped with a
    backslash, as in Twisted; an IPv6 host may also be written plain
    (C{host=::1}).

    @raise ValueError: with a one-line message, for any other endpoint (TLS
        included), a field other than these, or a missing host, port or path.
    """
    kind, positional, named = splitEndpoint(description)
    if kind in ("tls", "ssl"):
        raise ValueError(f"{kind}: endpoints are not supported: bench does not do TLS; use tcp, tcp6 or unix")
    if kind not in ("tcp", "tcp6", "unix"):
        raise ValueError(f"cannot benchmark over {kind!r} endpoints: use tcp, tcp6 or unix")
    names = REQUIRED_FIELDS[kind]
    for name in named:
        if name not in names:
            raise ValueError(f"endpoint {description!r}: {name}= is not supported (only {'= '.join(names)}=)")
    if len(positional) > len(names) - len(named):
        raise ValueError(f"endpoint {description!r} has too many fields")
    values = requiredFields(description, kind, positional, named)
    if kind == "unix":
        return Address(socket.AF_UNIX, values["path"])
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_UNSPEC
    return tcpAddress(values["host"], coerce.remotePort(values["port"]), family)


def withSources(address: Address, sources: list[str]) -> Address:
    """
    @return: C{address}, to be connected to from each of C{sources} in turn.
    @raise ValueError: if C{address} is a UNIX socket, or a source is not a
        local address of its family.
    """
    if address.family == socket.AF_UNIX:
        raise ValueError("--bind: a UNIX socket has no source address")
    for source in sources:
        try:
            socket.inet_pton(address.family, source)
            with socket.socket(address.family, socket.SOCK_STREAM) as probe:
                probe.bind((source, 0))
        except OSError as error:
            family = "IPv6" if address.family == socket.AF_INET6 else "IPv4"
            raise ValueError(f"--bind: cannot connect from {source!r} to an {family} address: {error.strerror or error}") from None
    return Address(address.family, address.sockaddr, tuple(sources))
