"""
C{tcplab lab time-wait}: the side that closes first holds TIME_WAIT, and
while it lasts the server's port cannot be bound again without
C{SO_REUSEADDR}.
"""

from __future__ import annotations

import errno
import socket
import time
from typing import NamedTuple

from tcplab.lab import kernel, lesson
from tcplab.lab.processes import TcplabServer
from tcplab.lab.record import Experiment, Record
from tcplab.lab.texts import Text

#: Connections per case.
COUNT = 3

#: tcplab's --idle-timeout: it closes a silent connection first after this long.
IDLE = 0.5

#: What L{tryBind} returns when bind() succeeds.
BOUND = "OK"

SUMMARY = Text(
    en="the side that closes first holds TIME_WAIT; while it lasts, the server's port cannot be bound again without SO_REUSEADDR",
    zh="先关闭的一方进入 TIME_WAIT；在它持续期间，不设 SO_REUSEADDR 就无法再次绑定服务端的端口",
)
WHERE = Text(
    en="note 9 (whoever has finished sending closes first, usually the server), note 12 (TIME_WAIT piles up under high concurrency)",
    zh="第 9 条（谁先发完信息谁先断开，通常是服务端）、第 12 条（高并发时会出现大量 TIME_WAIT）",
)
SERVER_FIRST = Text(
    en="A listener like the lesson's (no SO_REUSEADDR) on 127.0.0.1:{port}: {count} connections, the server closing each one first.",
    zh="一个课文式的监听套接字（没设 SO_REUSEADDR），127.0.0.1:{port}，{count} 个连接，每个都由服务端先关闭。",
)
CLIENT_FIRST = Text(
    en="A listener like the lesson's on 127.0.0.1:{port}: {count} connections, the client closing each one first.",
    zh="一个课文式的监听套接字，127.0.0.1:{port}，{count} 个连接，每个都由客户端先关闭。",
)
TCPLAB_FIRST = Text(
    en="tcplab's server (twist tcplab --idle-timeout {idle}) on 127.0.0.1:{port}: {count} idle connections, which it closed first after {closed:.2f} s; then it was stopped with SIGTERM (exit status {code}).",
    zh="tcplab 的服务端（twist tcplab --idle-timeout {idle}），127.0.0.1:{port}，{count} 个空闲连接，{closed:.2f} 秒后由它先关闭；然后用 SIGTERM 停掉了它（退出码 {code}）。",
)
COUNTED = Text(
    en="TIME_WAIT sockets: {server} on the server's side (local port {port}), {client} on the clients' side.",
    zh="TIME_WAIT 套接字：服务端一侧（本地端口 {port}）有 {server} 个，客户端一侧有 {client} 个。",
)
LASTS = Text(
    en="The kernel keeps them another {left:.1f} s (TIME_WAIT lasts 60 s on Linux).",
    zh="内核还要再保留它们 {left:.1f} 秒（Linux 上 TIME_WAIT 持续 60 秒）。",
)
BIND = Text(
    en="bind(('127.0.0.1', {port})) again: without SO_REUSEADDR → {plain}; with SO_REUSEADDR → {reuse}.",
    zh="再次 bind(('127.0.0.1', {port}))：不设 SO_REUSEADDR → {plain}；设了 SO_REUSEADDR → {reuse}。",
)
BIND_OK = Text(en="OK", zh="成功")
LESSON_REUSE_FAILS = Text(
    en="Even SO_REUSEADDR on the new socket did not help: on Linux the sockets in TIME_WAIT must have had it too, so a server has to set it from its first run.",
    zh="新套接字设了 SO_REUSEADDR 也没用：在 Linux 上，处于 TIME_WAIT 的那些旧套接字当初也得设了它才行，所以服务端必须从第一次运行起就设置。",
)
SERVER_HOLDS = Text(
    en="When the server closed first, the {count} TIME_WAITs were on the server's side, and binding its port again without SO_REUSEADDR failed with EADDRINUSE.",
    zh="服务端先关闭时，{count} 个 TIME_WAIT 都在服务端一侧，不设 SO_REUSEADDR 再次绑定这个端口就失败，报 EADDRINUSE。",
)
CLIENT_HOLDS = Text(
    en="When the clients closed first, the {count} TIME_WAITs were on the clients' side, and the server's port could be bound again at once, even without SO_REUSEADDR.",
    zh="客户端先关闭时，{count} 个 TIME_WAIT 都在客户端一侧，服务端的端口马上就能再次绑定，不设 SO_REUSEADDR 也行。",
)
REUSE_HELPS = Text(
    en="tcplab's sockets have SO_REUSEADDR (Twisted sets it): of the {count} TIME_WAITs it left on its port, none stopped a new socket with SO_REUSEADDR from binding it, while one without it failed.",
    zh="tcplab 的套接字设了 SO_REUSEADDR（Twisted 会设）：它在自己端口上留下了 {count} 个 TIME_WAIT，设了 SO_REUSEADDR 的新套接字照样能绑定这个端口，没设的就失败。",
)
MEANING = Text(
    en=(
        "TIME_WAIT is the last state of the side that closed first. It keeps the connection's pair of "
        "addresses reserved for a while (60 s on Linux; two maximum segment lifetimes in the standard), "
        "so that a late packet of this connection cannot be taken for part of a new one, and so that the "
        "last ACK can be sent again if the peer's FIN comes again. Servers usually close first (note 9), "
        "so on a busy server TIME_WAITs pile up on its port (note 12); each costs a little kernel memory, "
        "no thread and no file descriptor. While they last, a restarted server cannot bind its port "
        "unless it set SO_REUSEADDR before bind(): that is why servers set it (Twisted's listenTCP, and so "
        "tcplab, always does on POSIX). It is safe: it lets a port held only by TIME_WAITs be reused, "
        "never one that another socket listens on."
    ),
    zh=(
        "TIME_WAIT 是先关闭一方的最后一个状态。它把这条连接的地址和端口组合保留一段时间（Linux 上是 60 秒，标准里是两倍的报文最大生存时间），"
        "免得这条连接迟到的报文被当成新连接的数据，而且如果对方的 FIN 重发过来，还能再回一次 ACK。通常是服务端先关闭（第 9 条），"
        "所以繁忙的服务端，端口上会堆起大量 TIME_WAIT（第 12 条）；每个只占一点内核内存，不占线程，也不占文件描述符。"
        "在它们消失之前，重启的服务端绑定不了原来的端口，除非它在 bind() 之前设置了 SO_REUSEADDR。这就是服务端都要设它的原因"
        "（Twisted 的 listenTCP 在 POSIX 系统上总会设置，tcplab 也就设了）。这样做是安全的：它只让被 TIME_WAIT 占着的端口可以重用，"
        "别的套接字正在监听的端口照样绑不上。"
    ),
)


class Case(NamedTuple):
    """
    What one way of closing left behind.

    @ivar server: TIME_WAIT sockets on the server's side (its port).
    @ivar client: TIME_WAIT sockets on the clients' side.
    @ivar left: seconds until the kernel forgets the last of them.
    @ivar plain: what bind() without SO_REUSEADDR gave (L{BOUND} or an errno name).
    @ivar reuse: what bind() with SO_REUSEADDR gave.
    """

    port: int
    server: int
    client: int
    left: float
    plain: str
    reuse: str


def tryBind(port: int, reuse: bool) -> str:
    """
    Bind a new TCP socket to 127.0.0.1 C{port}, then close it.

    @return: L{BOUND}, or the name of the error (C{"EADDRINUSE"}).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        if reuse:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((lesson.HOST, port))
        except OSError as error:
            return errno.errorcode.get(error.errno or 0, str(error))
    return BOUND


def _timeWaits(
    port: int, serverSide: int, clientSide: int
) -> tuple[list[kernel.Socket], list[kernel.Socket]]:
    # Wait (briefly) until the kernel shows the TIME_WAITs expected.
    deadline = time.monotonic() + 2
    while True:
        server, client = kernel.inState(port, "TIME_WAIT")
        if (len(server), len(client)) == (serverSide, clientSide) or time.monotonic() > deadline:
            return server, client
        time.sleep(0.01)


def _afterwards(port: int, serverSide: int, clientSide: int) -> Case:
    # Count the TIME_WAITs, then try to bind the server's port again.
    server, client = _timeWaits(port, serverSide, clientSide)
    left = max((s.timer for s in server + client), default=0.0)
    return Case(port, len(server), len(client), left, tryBind(port, False), tryBind(port, True))


def lessonCase(serverFirst: bool, count: int = COUNT) -> Case:
    """
    C{count} connections to a listener like the lesson's, closed by the
    server first (or by the client), then the listener closed.
    """
    with lesson.listener() as phone:
        port = phone.getsockname()[1]
        for _ in range(count):
            with lesson.connect(port) as client:
                conn, _ = phone.accept()
                with conn:
                    first, second = (conn, client) if serverFirst else (client, conn)
                    first.close()
                    second.settimeout(5)
                    second.recv(1024)  # b"": the peer's FIN
    return _afterwards(port, count if serverFirst else 0, 0 if serverFirst else count)


def tcplabCase(record: Record, count: int = COUNT) -> Case:
    """
    C{count} connections left idle until tcplab's server closes them, then
    the server stopped.
    """
    with TcplabServer("--idle-timeout", str(IDLE)) as server:
        server.ready()
        assert server.port is not None
        port = server.port
        start = time.monotonic()
        clients = [lesson.connect(port) for _ in range(count)]
        try:
            for client in clients:
                client.recv(1024)  # b"": the server closed first
            closed = time.monotonic() - start
        finally:
            for client in clients:
                client.close()
        _timeWaits(port, count, 0)
        code = server.stop()
    record.say(TCPLAB_FIRST, idle=IDLE, port=port, count=count, closed=closed, code=code)
    return _afterwards(port, count, 0)


def _report(record: Record, case: Case) -> None:
    record.say(COUNTED, server=case.server, client=case.client, port=case.port)
    if case.server or case.client:
        record.say(LASTS, left=case.left)
    ok = record.text(BIND_OK)
    record.say(
        BIND, port=case.port,
        plain=ok if case.plain == BOUND else case.plain,
        reuse=ok if case.reuse == BOUND else case.reuse,
    )


def run(record: Record) -> None:
    """
    Close connections server-first and client-first, count the TIME_WAITs
    and try to bind the server's port again; then the same with tcplab.
    """
    kernel.requireProc()
    serverFirst = lessonCase(serverFirst=True)
    record.say(SERVER_FIRST, port=serverFirst.port, count=COUNT)
    _report(record, serverFirst)
    if serverFirst.reuse != BOUND:
        record.say(LESSON_REUSE_FAILS)
    clientFirst = lessonCase(serverFirst=False)
    record.say(CLIENT_FIRST, port=clientFirst.port, count=COUNT)
    _report(record, clientFirst)
    withTcplab = tcplabCase(record)
    _report(record, withTcplab)
    record.observe(**{
        name: {
            "serverSide": case.server, "clientSide": case.client, "secondsLeft": round(case.left, 1),
            "bindWithout": case.plain, "bindWithReuseAddr": case.reuse,
        }
        for name, case in (("serverFirst", serverFirst), ("clientFirst", clientFirst), ("tcplab", withTcplab))
    })
    record.expect(
        (serverFirst.server, serverFirst.client, serverFirst.plain) == (COUNT, 0, "EADDRINUSE"),
        SERVER_HOLDS, count=serverFirst.server,
    )
    record.expect(
        (clientFirst.server, clientFirst.client, clientFirst.plain) == (0, COUNT, BOUND),
        CLIENT_HOLDS, count=clientFirst.client,
    )
    record.expect(
        (withTcplab.server, withTcplab.plain, withTcplab.reuse) == (COUNT, "EADDRINUSE", BOUND),
        REUSE_HELPS, count=withTcplab.server,
    )
    record.explain(MEANING)


EXPERIMENT = Experiment("time-wait", SUMMARY, WHERE, run)
