"""
The lesson's blocking server, written once for every experiment.

Part 3 of the lesson (加上通信循环与连接循环) serves like this::

    phone.listen(5)
    while True:                          # 连接循环
        conn, client_addr = phone.accept()
        while True:                      # 通信循环
            try:
                msg = conn.recv(1024)
                conn.send(msg + b'SB')
            except ConnectionResetError:
                break
        conn.close()

L{communicate} is its communication loop and L{LessonServer} its accept loop
around it, in a thread, on 127.0.0.1 port 0.  They behave as the lesson's
code does, with three differences that a reader can switch on or that only
bound the experiment:

  - C{breakOnEmpty} adds the fix the lesson lacks (C{if not msg: break}:
    C{recv} returns C{b""} once the client has closed);
  - a loop that keeps receiving C{b""} is stopped after C{spinLimit}
    seconds, and an error the lesson does not catch (such as
    C{BrokenPipeError}) ends the loop with its name instead of killing the
    thread: the lesson's server would crash there;
  - blocking calls wake up every few milliseconds to see whether the lab
    is stopping the server, which changes nothing about what they return.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

#: The lesson's address (its port is 8081; the lab asks for a free one).
HOST = "127.0.0.1"

#: The lesson's listen(5).
BACKLOG = 5

#: The lesson's recv(1024).
RECV_SIZE = 1024

#: What the lesson's server appends to every reply.
SUFFIX = b"SB"

#: How a loop that only receives C{b""} ends after C{spinLimit} seconds.
TIME_LIMIT = "time limit"

#: How the fixed loop ends: C{recv} returned C{b""}, the client has left.
CLIENT_LEFT = "client left"

#: How a loop ends when the lab stops the server.
STOPPED = "stopped"

# How often blocking calls look up to see whether the lab is stopping.
_POLL = 0.05

_T = TypeVar("_T")


def listener(backlog: int = BACKLOG) -> socket.socket:
    """
    The lesson's listening socket (C{socket(AF_INET, SOCK_STREAM)}, C{bind},
    C{listen(5)}), on 127.0.0.1 port 0, without C{SO_REUSEADDR}, like the
    lesson's.
    """
    phone = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        phone.bind((HOST, 0))
        phone.listen(backlog)
    except OSError:
        phone.close()
        raise
    return phone


def connectedPair() -> tuple[socket.socket, socket.socket]:
    """
    @return: a connected C{(client, server)} pair of TCP sockets on
        127.0.0.1, made through a listener that is closed at once.
    """
    with listener(1) as phone:
        client = socket.create_connection(phone.getsockname(), timeout=5)
        try:
            server, _ = phone.accept()
        except OSError:
            client.close()
            raise
    client.settimeout(None)
    return client, server


@dataclass
class Served:
    """
    One connection the lesson's communication loop served.

    @ivar received: what each C{recv(1024)} returned, in order.
    @ivar replies: how many replies it sent.
    @ivar ended: why the loop ended: L{CLIENT_LEFT}, L{TIME_LIMIT},
        L{STOPPED}, or the name of the exception (C{"ConnectionResetError"}
        is the one the lesson catches); empty while it runs.
    """

    received: list[bytes] = field(default_factory=list)
    replies: int = 0
    ended: str = ""

    @property
    def emptyReads(self) -> int:
        """
        How many times C{recv} returned C{b""}.
        """
        return sum(1 for data in self.received if not data)


def communicate(
    conn: socket.socket,
    breakOnEmpty: bool = False,
    spinLimit: float = 0.2,
    stopping: threading.Event | None = None,
    served: Served | None = None,
) -> Served:
    """
    The lesson's communication loop (通信循环) on C{conn}: every
    C{recv(1024)} answered with C{msg + b"SB"}, until a
    C{ConnectionResetError}.

    @param breakOnEmpty: add the fix: stop when C{recv} returns C{b""}.
    @param spinLimit: stop a loop that is still going this many seconds
        after C{recv} first returned C{b""}.
    @param stopping: set by the lab to stop the loop.
    @param served: where to write what happens (a new L{Served} if none).
    @return: what happened.
    """
    served = Served() if served is None else served
    stopping = threading.Event() if stopping is None else stopping
    conn.settimeout(_POLL)
    firstEmpty: float | None = None
    while True:
        try:
            msg = _blocking(partial(conn.recv, RECV_SIZE), stopping)
            served.received.append(msg)
            if not msg:
                if breakOnEmpty:
                    ended = CLIENT_LEFT
                    break
                now = time.monotonic()
                firstEmpty = now if firstEmpty is None else firstEmpty
                if now - firstEmpty > spinLimit:
                    ended = TIME_LIMIT
                    break
            _blocking(partial(conn.send, msg + SUFFIX), stopping)
            served.replies += 1
        except ConnectionResetError:
            ended = "ConnectionResetError"
            break
        except _Stopped:
            ended = STOPPED
            break
        except OSError as error:
            # Not caught by the lesson: its server would crash here.
            ended = type(error).__name__
            break
    served.ended = ended
    return served


class _Stopped(Exception):
    pass


def _blocking(call: Callable[[], _T], stopping: threading.Event) -> _T:
    # The call as if the socket were blocking, except that the lab can stop it.
    while True:
        try:
            return call()
        except TimeoutError:
            if stopping.is_set():
                raise _Stopped() from None


class LessonServer:
    """
    The lesson's server (the accept loop around L{communicate}) in a thread,
    on 127.0.0.1 port 0: one client at a time, every C{recv(1024)} answered
    with C{msg + b"SB"}.

    Use it as a context manager: the thread is stopped and joined, and every
    socket closed, on the way out.

    @ivar port: the port it listens on.
    @ivar served: the connections it has served (or is serving), in order.
    """

    def __init__(
        self, breakOnEmpty: bool = True, backlog: int = BACKLOG, accepting: bool = True
    ) -> None:
        """
        @param breakOnEmpty: give the communication loop the fix, so that a
            client that closes lets the next one in (see L{communicate}).
        @param backlog: the argument of C{listen}.
        @param accepting: start the accept loop on entering the context; if
            false, it starts when L{start} is called, and until then the
            kernel alone answers connections (the backlog).
        """
        self._listener = listener(backlog)
        self.port: int = self._listener.getsockname()[1]
        self.breakOnEmpty = breakOnEmpty
        self.served: list[Served] = []
        self._accepting = accepting
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lesson-server", daemon=True)

    def __enter__(self) -> LessonServer:
        if self._accepting:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """
        Start the accept loop (连接循环).
        """
        if not self._thread.is_alive():
            self._thread.start()

    def stop(self) -> None:
        """
        Stop serving, join the thread and close the listening socket.
        """
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._listener.close()

    def waitServed(self, count: int, timeout: float = 5.0) -> bool:
        """
        Wait until C{count} connections have been served to their end.

        @return: whether they had within C{timeout} seconds.
        """
        deadline = time.monotonic() + timeout
        while sum(1 for s in self.served if s.ended) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _serve(self) -> None:
        self._listener.settimeout(_POLL)
        while not self._stopping.is_set():  # 连接循环
            try:
                conn, _clientAddr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with conn:
                served = Served()
                self.served.append(served)
                communicate(conn, self.breakOnEmpty, stopping=self._stopping, served=served)


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    """
    The lesson's client: C{phone.connect(('127.0.0.1', port))}, with a
    C{timeout} for every later call, so that no experiment can hang.
    """
    return socket.create_connection((HOST, port), timeout=timeout)


def receiveUntilQuiet(
    sock: socket.socket, atLeast: int, quiet: float = 0.3, timeout: float = 5.0
) -> list[bytes]:
    """
    Read with C{recv(1024)} until C{atLeast} bytes have come and then none
    for C{quiet} seconds (or the peer closes, or C{timeout} seconds pass).

    @return: what each C{recv} returned.
    """
    pieces: list[bytes] = []
    received = 0
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return pieces
        sock.settimeout(quiet if received >= atLeast else remaining)
        try:
            data = sock.recv(RECV_SIZE)
        except TimeoutError:
            if received >= atLeast:
                return pieces
            continue
        if not data:
            return pieces
        pieces.append(data)
        received += len(data)
