"""
C{tcplab lab backlog}: what C{listen(5)} limits.  Against a server that never
calls C{accept}, the kernel completes the handshake of a few connections and
queues them; the rest wait, their SYNs unanswered, until there is room.
"""

from __future__ import annotations

import select
import socket
import time
from contextlib import ExitStack

from tcplab.lab import kernel, lesson
from tcplab.lab.record import Experiment, Record
from tcplab.lab.texts import Text

#: How many more connections than the backlog the lab tries.
EXTRA = 3

#: How long each connection is given to complete its handshake, in seconds.
CONNECT_WAIT = 0.2

#: How long the waiting connections are given once the server has accepted,
#: in seconds: Linux resends an unanswered SYN after 1 s, then every second or more
#: (linearly for the first few since Linux 6.5, doubling before).
RETRY_WAIT = 8.0

SUMMARY = Text(
    en="what listen(5) limits: against a server that never accepts, backlog + 1 connections complete the handshake and the rest wait",
    zh="listen(5) 限制的是什么：服务端一直不 accept 时，只有 backlog + 1 个连接能完成握手，其余的都在等",
)
WHERE = Text(
    en="note 21 (listen(5): 5 is how many requests may wait at once, not how many connections)",
    zh="第 21 条（listen(5)：5 指的是同时最多可以有多少个请求在等，而不是连接数）",
)
STARTED = Text(
    en="Made a listening socket like the lesson's, listen({backlog}) on 127.0.0.1:{port}, that never calls accept().",
    zh="照课文建了一个监听套接字，127.0.0.1:{port} 上 listen({backlog})，但始终不调用 accept()。",
)
CONNECTED = Text(
    en="Opened {tried} non-blocking connections, one after another (each given {wait:.1f} s): {done} completed the handshake, {waiting} did not.",
    zh="一个接一个地发起了 {tried} 个非阻塞连接（每个给 {wait:.1f} 秒）：{done} 个完成了握手，{waiting} 个没有。",
)
CLIENT_STATES = Text(
    en="The kernel's view of the clients' sockets (/proc/net/tcp): {states}.",
    zh="内核眼中这些客户端套接字的状态（/proc/net/tcp）：{states}。",
)
QUEUE = Text(
    en="The listener's accept queue (rx_queue in /proc/net/tcp): {queued} connections waiting for accept().",
    zh="监听套接字的全连接队列（/proc/net/tcp 的 rx_queue）：{queued} 个连接在等 accept()。",
)
SS_QUEUE = Text(
    en="ss -ltn shows the listener with Recv-Q {recvQ} (connections queued) and Send-Q {sendQ} (the backlog).",
    zh="ss -ltn 显示这个监听套接字 Recv-Q 为 {recvQ}（排队的连接数），Send-Q 为 {sendQ}（也就是 backlog）。",
)
NO_SS = Text(
    en="(ss is not installed: the queue's limit, Send-Q, is not shown.)",
    zh="（没有安装 ss，看不到队列的上限 Send-Q。）",
)
ACCEPTED = Text(
    en="The server now accepted the {count} queued connections.",
    zh="现在服务端把排队的 {count} 个连接都 accept 了。",
)
LATE = Text(
    en="Then the {waiting} waiting connections completed too, {times} s after they had started (the kernel resent their SYNs).",
    zh="随后那 {waiting} 个在等的连接也完成了握手，分别是发起后 {times} 秒（内核重发了它们的 SYN）。",
)
STILL = Text(
    en="Of the {waiting} waiting connections, {late} completed within {timeout:.0f} s.",
    zh="那 {waiting} 个在等的连接里，有 {late} 个在 {timeout:.0f} 秒内完成了握手。",
)
HELD = Text(
    en="With listen({backlog}), {done} connections completed the handshake without any accept() (backlog + 1 on Linux) and the accept queue held {queued}; the other {waiting} stayed in SYN_SENT.",
    zh="listen({backlog}) 时，没有任何 accept() 就有 {done} 个连接完成了握手（Linux 上是 backlog + 1），全连接队列里有 {queued} 个；其余 {waiting} 个停在 SYN_SENT。",
)
NOT_A_LIMIT = Text(
    en="Once accepted, connections leave the queue: all {total} connections were made in the end, more than the backlog of {backlog}.",
    zh="连接一旦被 accept 就离开了队列：最后 {total} 个连接全都建立了，比 backlog 的 {backlog} 还多。",
)
MEANING = Text(
    en=(
        "The kernel, not the program, answers the handshake. listen(n) sizes the queue of connections "
        "whose handshake is complete and that the program has not yet accepted (Linux lets n + 1 in). "
        "While it is full, the kernel drops new SYNs without a word, and the clients resend them after "
        "1 s, then again at intervals of a second or more: their connect() waits rather than fails. "
        "So listen(5) does not limit how many clients a server has, only how many may queue while it "
        "is busy: a server that accepts quickly "
        "(as tcplab does, with a backlog of 1024) rarely needs more."
    ),
    zh=(
        "三次握手是内核完成的，不是程序。listen(n) 设定的是“全连接队列”的大小：握手已经完成、但程序还没 accept 的连接都排在这里"
        "（Linux 上能排 n + 1 个）。队列满了以后，内核会一声不响地丢掉新来的 SYN，客户端 1 秒后重发，之后每隔一秒或更久再发，"
        "所以它的 connect() 是在等，而不是失败。可见 listen(5) 限制的不是服务端能有多少个客户端，而是它忙的时候能有多少个排队："
        "accept 得快的服务端（比如 tcplab，backlog 是 1024）很少需要更多。"
    ),
)


def _connected(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 and bool(
        select.select([], [sock], [], 0)[1]
    )


def _settle(clients: list[socket.socket]) -> list[socket.socket]:
    # The connections whose handshake completed, once no more has for
    # CONNECT_WAIT seconds (a loaded machine can be slow to answer).
    done = [c for c in clients if _connected(c)]
    while pending := [c for c in clients if c not in done]:
        select.select([], pending, [], CONNECT_WAIT)
        newly = [c for c in pending if _connected(c)]
        if not newly:
            break
        done = [c for c in clients if c in done or c in newly]
    return done


def run(record: Record, backlog: int = lesson.BACKLOG) -> None:
    """
    Connect C{backlog + EXTRA} clients to a listener that does not accept,
    then accept and watch the rest come in.
    """
    kernel.requireProc()
    with ExitStack() as stack:
        phone = stack.enter_context(lesson.listener(backlog))
        port = phone.getsockname()[1]
        record.say(STARTED, backlog=backlog, port=port)
        clients: list[socket.socket] = []
        started: dict[socket.socket, float] = {}
        for _ in range(backlog + 1 + EXTRA):
            client = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            client.setblocking(False)
            started[client] = time.monotonic()
            client.connect_ex((lesson.HOST, port))
            select.select([], [client], [], CONNECT_WAIT)
            clients.append(client)
        done = _settle(clients)
        waiting = [c for c in clients if c not in done]
        record.say(CONNECTED, tried=len(clients), done=len(done), waiting=len(waiting), wait=CONNECT_WAIT)
        table = {(s.localPort, s.remotePort): s.state for s in kernel.sockets(port)}
        states = [table.get((c.getsockname()[1], port), kernel.GONE) for c in clients]
        record.say(CLIENT_STATES, states=record.join(states))
        listening = kernel.find(port, 0)
        queued = listening.rxQueue if listening is not None else -1
        record.say(QUEUE, queued=queued)
        ss = kernel.ssListening(port)
        if ss is None:
            record.say(NO_SS)
        else:
            record.say(SS_QUEUE, recvQ=ss[0], sendQ=ss[1])
        accepted = 0
        phone.settimeout(1)
        for _ in done:
            stack.enter_context(phone.accept()[0])
            accepted += 1
        record.say(ACCEPTED, count=accepted)
        late: dict[socket.socket, float] = {}
        deadline = time.monotonic() + RETRY_WAIT
        while len(late) < len(waiting) and time.monotonic() < deadline:
            pending = [c for c in waiting if c not in late]
            ready = select.select([], pending, [], 0.05)[1]
            for client in ready:
                if _connected(client):
                    late[client] = time.monotonic() - started[client]
                    stack.enter_context(phone.accept()[0])
        times = sorted(late.values())
        if len(late) == len(waiting):
            record.say(LATE, waiting=len(waiting), times=record.join(f"{t:.2f}" for t in times))
        else:
            record.say(STILL, waiting=len(waiting), late=len(late), timeout=RETRY_WAIT)
    record.observe(
        backlog=backlog,
        tried=len(clients),
        completed=len(done),
        waiting=len(waiting),
        clientStates=states,
        acceptQueue=queued,
        ssRecvQ=None if ss is None else ss[0],
        ssSendQ=None if ss is None else ss[1],
        lateConnectTimes=[round(t, 3) for t in times],
    )
    record.expect(
        len(done) == backlog + 1 and queued == len(done)
        and states == ["ESTABLISHED"] * len(done) + ["SYN_SENT"] * len(waiting)
        and (ss is None or ss == (len(done), backlog)),
        HELD, backlog=backlog, done=len(done), queued=queued, waiting=len(waiting),
    )
    record.expect(len(late) == len(waiting), NOT_A_LIMIT, total=len(clients), backlog=backlog)
    record.explain(MEANING)


EXPERIMENT = Experiment("backlog", SUMMARY, WHERE, run)
