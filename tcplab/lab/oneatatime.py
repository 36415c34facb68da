"""
C{tcplab lab one-at-a-time}: the lesson's server makes a second client wait
until the first leaves; tcplab answers both at once.
"""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

from tcplab.lab import lesson
from tcplab.lab.processes import TcplabServer
from tcplab.lab.record import Experiment, Record
from tcplab.lab.texts import Text

#: How long the first client stays connected, in seconds.
HOLD = 1.0

FIRST_MESSAGE = "你好1"
SECOND_MESSAGE = "你好2"

SUMMARY = Text(
    en="a server written like the lesson's serves one client at a time; tcplab serves them all at once",
    zh="照课文写的服务端一次只能服务一个客户端；tcplab 同时服务所有客户端",
)
WHERE = Text(
    en="part 3 (the connection loop around the communication loop), note 21 (listen(5))",
    zh="第三部分（连接循环套着通信循环）、第 21 条（listen(5)）",
)
LESSON_STARTED = Text(
    en="Started the lesson's server on 127.0.0.1:{port}: listen(5), an accept loop, and inside it a blocking recv/send loop for one client.",
    zh="在 127.0.0.1:{port} 上启动了课文的服务端：listen(5)，连接循环里套着阻塞的收发循环，一次只管一个客户端。",
)
TCPLAB_STARTED = Text(
    en="Started tcplab's server (twist tcplab --suffix SB, in a child process) on 127.0.0.1:{port}.",
    zh="在 127.0.0.1:{port} 上启动了 tcplab 的服务端（twist tcplab --suffix SB，在子进程里运行）。",
)
FIRST = Text(
    en="Client 1 sent {message!r} and got {reply!r} after {time:.1f} ms; it stays connected for {hold:.1f} s.",
    zh="客户端 1 发了 {message!r}，{time:.1f} 毫秒后收到 {reply!r}；它会保持连接 {hold:.1f} 秒。",
)
SECOND = Text(
    en="Client 2 connected in {connect:.1f} ms and sent {message!r}.",
    zh="客户端 2 用 {connect:.1f} 毫秒连上，发了 {message!r}。",
)
REPLY_AFTER = Text(
    en="Client 2 got {reply!r} {wait:.1f} ms after sending it, {gap:.1f} ms after client 1 left.",
    zh="客户端 2 发出消息 {wait:.1f} 毫秒后才收到 {reply!r}，那是客户端 1 离开之后 {gap:.1f} 毫秒。",
)
REPLY_BEFORE = Text(
    en="Client 2 got {reply!r} {wait:.1f} ms after sending it, {gap:.1f} ms before client 1 left.",
    zh="客户端 2 发出消息 {wait:.1f} 毫秒后就收到 {reply!r}，那时离客户端 1 离开还有 {gap:.1f} 毫秒。",
)
NO_REPLY = Text(
    en="Client 2 got no reply within {timeout:.0f} s.",
    zh="客户端 2 在 {timeout:.0f} 秒内没收到回复。",
)
LESSON_WAITED = Text(
    en="The lesson's server kept client 2 waiting {wait:.1f} ms, until client 1 left (client 1 held it {hold:.1f} s).",
    zh="课文的服务端让客户端 2 等了 {wait:.1f} 毫秒，一直等到客户端 1 离开（客户端 1 占着它 {hold:.1f} 秒）。",
)
TCPLAB_AT_ONCE = Text(
    en="tcplab answered client 2 in {wait:.1f} ms, while client 1 was still connected.",
    zh="tcplab 只用 {wait:.1f} 毫秒就回复了客户端 2，那时客户端 1 还连着。",
)
MEANING = Text(
    en=(
        "The lesson's server has one thread, and it stays inside the communication loop of the "
        "client it accepted: recv blocks until that client speaks again. The next client's connect "
        "succeeds at once, because the kernel does the handshake and queues the connection (that "
        "queue is what listen(5) sizes), but nobody reads it until the first client leaves and the "
        "loop goes back to accept(). tcplab is event-driven (Twisted): one loop watches every "
        "connection at once and answers whichever has data, so no client waits for another."
    ),
    zh=(
        "课文的服务端只有一个线程，它一直待在已接受的那个客户端的通信循环里：recv 阻塞着，等这个客户端再发消息。"
        "下一个客户端的 connect 马上就成功了，因为握手是内核完成的，连接放进了队列（listen(5) 设的就是这个队列的大小），"
        "可是在第一个客户端离开、循环回到 accept() 之前，没有人去读它。tcplab 是事件驱动的（Twisted）："
        "一个循环同时盯着所有连接，哪个有数据就回复哪个，谁也不用等谁。"
    ),
)


class TwoClients(NamedTuple):
    """
    What two clients of one server saw.

    @ivar firstReply: client 1's reply, and how long it took.
    @ivar connect: how long client 2 took to connect.
    @ivar reply: client 2's reply, or L{None} if none came.
    @ivar wait: seconds from client 2's message to its reply.
    @ivar gap: seconds from client 1 leaving to client 2's reply
        (negative: before client 1 left).
    """

    firstReply: str
    firstTime: float
    connect: float
    reply: str | None
    wait: float
    gap: float


def twoClients(port: int, hold: float = HOLD, timeout: float = 5.0) -> TwoClients:
    """
    Client 1 connects, is answered, and stays connected C{hold} seconds;
    meanwhile client 2 connects and waits for its own reply.
    """
    start = time.monotonic()
    first = lesson.connect(port)
    leftAt: list[float] = []

    def leave() -> None:
        time.sleep(max(0.0, start + hold - time.monotonic()))
        # The time it starts to leave: the server may see the close (and
        # answer client 2) before close() has even returned here.
        leftAt.append(time.monotonic())
        first.close()

    leaving = threading.Thread(target=leave, name="client-1", daemon=True)
    try:
        first.sendall(FIRST_MESSAGE.encode())
        firstReply = first.recv(1024).decode("utf-8", "replace")
        firstTime = time.monotonic() - start
        leaving.start()
        before = time.monotonic()
        with lesson.connect(port, timeout) as second:
            connected = time.monotonic()
            second.sendall(SECOND_MESSAGE.encode())
            sent = time.monotonic()
            try:
                reply: str | None = second.recv(1024).decode("utf-8", "replace")
            except TimeoutError:
                reply = None
            answered = time.monotonic()
    finally:
        if leaving.is_alive():
            leaving.join()
        else:
            first.close()
    left = leftAt[0] if leftAt else answered
    return TwoClients(firstReply, firstTime, connected - before, reply, answered - sent, answered - left)


def _report(record: Record, clients: TwoClients, timeout: float = 5.0) -> None:
    # Milliseconds: tcplab's times are well under one.
    record.say(FIRST, message=FIRST_MESSAGE, reply=clients.firstReply, time=clients.firstTime * 1000, hold=HOLD)
    record.say(SECOND, connect=clients.connect * 1000, message=SECOND_MESSAGE)
    if clients.reply is None:
        record.say(NO_REPLY, timeout=timeout)
    elif clients.gap >= 0:
        record.say(REPLY_AFTER, reply=clients.reply, wait=clients.wait * 1000, gap=clients.gap * 1000)
    else:
        record.say(REPLY_BEFORE, reply=clients.reply, wait=clients.wait * 1000, gap=-clients.gap * 1000)


def run(record: Record) -> None:
    """
    Two clients against the lesson's server, then against tcplab's.
    """
    # tcplab's server starts in its own process while the lesson's runs.
    with TcplabServer("--suffix", "SB") as tcplabServer:
        with lesson.LessonServer() as server:
            record.say(LESSON_STARTED, port=server.port)
            slow = twoClients(server.port)
        _report(record, slow)
        tcplabServer.ready()
        record.say(TCPLAB_STARTED, port=tcplabServer.port)
        assert tcplabServer.port is not None
        fast = twoClients(tcplabServer.port)
        _report(record, fast)
    record.observe(
        hold=HOLD,
        lessonWait=round(slow.wait, 4),
        lessonGapAfterFirstLeft=round(slow.gap, 4),
        lessonReply=slow.reply,
        tcplabWait=round(fast.wait, 4),
        tcplabGapAfterFirstLeft=round(fast.gap, 4),
        tcplabReply=fast.reply,
    )
    record.expect(
        slow.reply == SECOND_MESSAGE + "SB" and slow.gap >= 0 and slow.wait >= HOLD / 2,
        LESSON_WAITED, wait=slow.wait * 1000, hold=HOLD,
    )
    record.expect(
        fast.reply == SECOND_MESSAGE + "SB" and fast.gap < 0, TCPLAB_AT_ONCE, wait=fast.wait * 1000
    )
    record.explain(MEANING)


EXPERIMENT = Experiment("one-at-a-time", SUMMARY, WHERE, run)
