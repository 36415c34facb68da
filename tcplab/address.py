"""
Human-readable network addresses, for logs and error messages.

An address may come from the wire (a PROXY header names any host it likes),
so every part of it is escaped (L{tcplab.text.escape}).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from tcplab.text import escape


def formatAddress(address: object) -> str:
    """
    @return: C{host:port} for IPv4, C{[host]:port} for IPv6, the path of a
        UNIX socket, or C{str(address)} for anything else.
    """
    if isinstance(address, IPv4Address):
        return f"{escape(address.host)}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{escape(address.host)}]:{address.port}"
    if isinstance(address, UNIXAddress):
        return escape(address.name or "") or "unix socket"
    if isinstance(address, tuple) and len(address) == 2:
        host, port = map(str, address)
        return f"[{escape(host)}]:{escape(port)}" if ":" in host else f"{escape(host)}:{escape(port)}"
    return escape(str(address))
