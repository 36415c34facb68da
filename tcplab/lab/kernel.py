"""
The kernel's view of TCP connections on 127.0.0.1: Linux's C{/proc/net/tcp}
(and C{ss}, when it is installed).

Each line of C{/proc/net/tcp} is one socket: its local and remote address
as C{HEXADDR:HEXPORT}, its state as a hexadecimal code (C{01} ESTABLISHED,
C{0A} LISTEN, ...), and its queues.  For a listening socket C{rx_queue} is
the accept queue's length: connections whose handshake is complete and that
the program has not yet taken with C{accept()}.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from tcplab.lab.record import Unavailable
from tcplab.lab.texts import NO_PROC

PROC_NET_TCP = Path("/proc/net/tcp")

#: The kernel's TCP states (include/net/tcp_states.h), by their code in /proc/net/tcp.
STATES = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
    0x0C: "NEW_SYN_RECV",
}

#: The codes of the states, by name.
CODES = {name: code for code, name in STATES.items()}

#: What L{stateOf} gives for a connection the kernel does not list.
GONE = "none"


class Socket(NamedTuple):
    """
    One line of /proc/net/tcp.

    @ivar code: the state's code, as the kernel writes it (C{"0A"}).
    @ivar txQueue: bytes sent and not yet acknowledged (or not yet sent).
    @ivar rxQueue: bytes received and not yet read; for a listening socket,
        connections waiting to be accepted.
    @ivar timer: seconds until the socket's timer fires (for a socket in
        TIME_WAIT: until the kernel forgets it), or 0 if none runs.
    """

    localPort: int
    remotePort: int
    code: str
    txQueue: int
    rxQueue: int
    timer: float = 0.0

    @property
    def state(self) -> str:
        """
        The state's name, such as C{"ESTABLISHED"}.
        """
        return STATES.get(int(self.code, 16), f"0x{self.code}")


def requireProc() -> None:
    """
    @raise Unavailable: if this system has no /proc/net/tcp.
    """
    if not PROC_NET_TCP.exists():
        raise Unavailable(NO_PROC)


def sockets(port: int | None = None) -> list[Socket]:
    """
    @param port: only the sockets from or to this port; a machine busy with
        tens of thousands of connections lists them in a fraction of the
        time all of them take.
    @return: the IPv4 TCP sockets of this machine's network namespace on
        127.0.0.1 (the lab's), as the kernel lists them now.
    @raise Unavailable: if there is no /proc/net/tcp.
    """
    try:
        lines = PROC_NET_TCP.read_text().splitlines()[1:]
    except OSError:
        raise Unavailable(NO_PROC) from None
    if port is not None:
        # A port is written as ":HHHH " (local and remote alike).
        mark = f":{port:04X} "
        lines = [line for line in lines if mark in line]
    table = list(_parse(lines))
    if port is not None:
        table = [s for s in table if port in (s.localPort, s.remotePort)]
    return table


def _parse(lines: Iterable[str]) -> Iterable[Socket]:
    loopback = "0100007F"  # 127.0.0.1, in the kernel's (little-endian) byte order
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        local, remote, code, queues, timer = fields[1:6]
        localHost, localPort = local.split(":")
        if localHost != loopback:
            continue
        tx, rx = queues.split(":")
        active, when = timer.split(":")
        yield Socket(
            int(localPort, 16), int(remote.split(":")[1], 16), code, int(tx, 16), int(rx, 16),
            int(when, 16) / ticks if int(active, 16) else 0.0,
        )


def find(localPort: int, remotePort: int) -> Socket | None:
    """
    @return: the socket from C{localPort} to C{remotePort} (0 for a
        listener) on 127.0.0.1, or L{None} if the kernel lists none.
    """
    for socket in sockets(localPort):
        if socket.localPort == localPort and socket.remotePort == remotePort:
            return socket
    return None


def stateOf(localPort: int, remotePort: int) -> str:
    """
    @return: the state's name of the socket from C{localPort} to
        C{remotePort}, or L{GONE} if there is none.
    """
    socket = find(localPort, remotePort)
    return GONE if socket is None else socket.state


def waitForState(
    localPort: int, remotePort: int, wanted: str, timeout: float = 3.0
) -> tuple[str, float]:
    """
    Watch one connection until the kernel shows it in state C{wanted}.

    @return: the state seen last (C{wanted}, unless C{timeout} seconds
        passed first) and how long it took to see it.
    """
    start = time.monotonic()
    while True:
        state = stateOf(localPort, remotePort)
        elapsed = time.monotonic() - start
        if state == wanted or elapsed > timeout:
            return state, elapsed
        time.sleep(0.005)


def inState(port: int, state: str) -> tuple[list[Socket], list[Socket]]:
    """
    @return: the sockets in C{state} that have C{port} as their local port
        (the server's side of its connections), and those that have it as
        their remote port (the clients' sides).
    """
    table = [s for s in sockets(port) if s.state == state]
    return [s for s in table if s.localPort == port], [s for s in table if s.remotePort == port]


def ssListening(port: int) -> tuple[int, int] | None:
    """
    The listener on C{port} as C{ss -ltn} shows it.

    @return: its C{Recv-Q} (connections waiting to be accepted) and
        C{Send-Q} (the most it may queue: the backlog), or L{None} if C{ss}
        is not installed or does not list it.
    """
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        output = subprocess.run(
            [ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in output.splitlines():
        fields = line.split()
        # State Recv-Q Send-Q Local-Address:Port Peer-Address:Port
        if len(fields) >= 4 and fields[0] == "LISTEN" and fields[3].endswith(f":{port}"):
            return int(fields[1]), int(fields[2])
    return None
