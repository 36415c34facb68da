"""
Why a C{systemd:} listener found no socket, in one line.

Twisted's C{systemd:} endpoint looks sockets up in C{LISTEN_FDS} and, since
Twisted 26, by name in C{LISTEN_FDNAMES}: a socket unit names its sockets
with C{FileDescriptorName=}, C{systemd-socket-activate} with C{--fdname}.
When what it looks for is missing it raises a bare C{IndexError} or
C{KeyError} ("list index out of range", "'echo'"); L{explain} says what
was passed and what is needed.  (Twisted removes C{LISTEN_PID} and
C{LISTEN_FDS} from the environment when it reads them, so the sockets are
counted by looking at the descriptors from 3 up.)
"""

from __future__ import annotations

import os
import socket
import stat

from tcplab.endpoints import splitEndpoint
from tcplab.text import plural

#: systemd passes its sockets from this descriptor up (SD_LISTEN_FDS_START).
FIRST_FD = 3


def inheritedListeningSockets(first: int = FIRST_FD, most: int = 64) -> int:
    """
    @return: how many listening sockets this process holds at consecutive
        descriptors from C{first} up: those systemd passed.
    """
    count = 0
    for fileno in range(first, first + most):
        try:
            if not stat.S_ISSOCK(os.fstat(fileno).st_mode):
                break
            with socket.socket(fileno=os.dup(fileno)) as probe:
                if not probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    break
        except OSError:
            break
        count += 1
    return count


def explain(description: str, environ: dict[str, str] | None = None, sockets: int | None = None) -> str:
    """
    @return: why the C{systemd:} listener C{description} found no socket,
        and what it needs.
    """
    environ = dict(os.environ) if environ is None else environ
    sockets = inheritedListeningSockets() if sockets is None else sockets
    names = [name for name in environ.get("LISTEN_FDNAMES", "").split(":") if name]
    _, _, named = splitEndpoint(description.removeprefix("haproxy:"))
    if not sockets:
        return (
            "systemd passed this process no listening socket: start it from a socket unit "
            "(deploy/tcplab.socket) or under systemd-socket-activate"
        )
    if not names:
        return (
            f"systemd passed {plural(sockets, 'socket')} without a name, and Twisted's systemd: endpoint "
            "finds sockets by the names in LISTEN_FDNAMES: set FileDescriptorName= in the socket unit, "
            "or systemd-socket-activate --fdname=NAME"
        )
    if len(names) != sockets:
        return (
            f"systemd named {plural(len(names), 'socket')} ({', '.join(names)}) but passed {sockets}: "
            "Twisted takes none when LISTEN_FDS and LISTEN_FDNAMES disagree"
        )
    if "name" in named:
        return f"systemd passed no socket named {named['name']!r} (it passed: {', '.join(names)})"
    return f"systemd passed {plural(sockets, 'socket')}: index= must be below {sockets}"
