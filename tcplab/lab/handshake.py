"""
C{tcplab lab handshake}: the states of one TCP connection, read live from
the kernel (/proc/net/tcp) as the experiment steps it from its first SYN to
TIME_WAIT.

Some states last only microseconds on loopback; the experiment holds each
one long enough to read it, with the kernel's own rules:

  - SYN_SENT: the listener's accept queue is full, so the kernel drops the
    client's SYN, and the client waits to send it again;
  - SYN_RECV: the listener has C{TCP_DEFER_ACCEPT}, so the server's side
    of the handshake stays half-open until the client sends data;
  - FIN_WAIT1 and LAST_ACK: the closing side still has data the peer has
    no room for, and its FIN waits behind that data.
"""

from __future__ import annotations

import select
import socket
import time
from contextlib import ExitStack
from typing import NamedTuple

from tcplab.lab import kernel, lesson
from tcplab.lab.record import Experiment, Record
from tcplab.lab.texts import Text

#: Small socket buffers, so that a few kilobytes fill them.
BUFFER = 4096

#: The steps, and the states of the client's and the server's side that each should show.
EXPECTED = [
    ("SYN_SENT", kernel.GONE),
    ("ESTABLISHED", "SYN_RECV"),
    ("ESTABLISHED", "ESTABLISHED"),
    ("FIN_WAIT1", "ESTABLISHED"),
    ("FIN_WAIT2", "CLOSE_WAIT"),
    ("FIN_WAIT2", "LAST_ACK"),
    ("TIME_WAIT", kernel.GONE),
]

SUMMARY = Text(
    en="the states of a TCP connection, read live from the kernel: SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT1, FIN_WAIT2 and CLOSE_WAIT, LAST_ACK, TIME_WAIT",
    zh="一个 TCP 连接经历的状态，从内核里实时读出来：SYN_SENT、SYN_RECV、ESTABLISHED、FIN_WAIT1、FIN_WAIT2 和 CLOSE_WAIT、LAST_ACK、TIME_WAIT",
)
WHERE = Text(
    en="notes 6 and 7 (the three-way handshake, SYN and ACK), 8 (SYN_RECV), 9 and 10 (the four-way close, FIN: whoever has finished sending closes first), 11 (FIN_WAIT_1 is the side that closes first)",
    zh="第 6、7 条（三次握手，SYN 和 ACK）、第 8 条（SYN_RECV）、第 9、10 条（四次挥手，FIN：谁先发完信息谁先断开）、第 11 条（FIN_WAIT_1 是主动断开的一方）",
)
STATE = Text(
    en="{what} → client {client}, server {server}",
    zh="{what} → 客户端 {client}，服务端 {server}",
)
NO_SOCKET = Text(en="(no socket)", zh="无套接字")
LISTENING = Text(
    en="A listener on 127.0.0.1:{port} with listen(0) (its accept queue holds one connection) and TCP_DEFER_ACCEPT; another client already fills its queue. The client we follow is 127.0.0.1:{client}.",
    zh="在 127.0.0.1:{port} 上监听，listen(0)（全连接队列只能放一个连接），并设了 TCP_DEFER_ACCEPT；队列已经被另一个客户端占满。我们跟踪的客户端是 127.0.0.1:{client}。",
)
S_CONNECT = Text(
    en="connect(): the client sent its SYN; the queue is full, the kernel dropped it",
    zh="connect()：客户端发出 SYN；队列已满，内核把它丢了",
)
S_RETRY = Text(
    en="the server accepted the other client; {retry:.2f} s later the client resent its SYN, got SYN+ACK and answered ACK",
    zh="服务端 accept 了另一个客户端；{retry:.2f} 秒后客户端重发 SYN，收到 SYN+ACK，回了 ACK",
)
S_DATA = Text(
    en="the client sent {message!r}; the server's side became a connection, and accept() returned it",
    zh="客户端发了 {message!r}；服务端这一侧成了完整的连接，accept() 把它交了出来",
)
S_SHUTDOWN = Text(
    en="the client sent {sent} bytes the server does not read, then shutdown(SHUT_WR): its FIN waits behind them",
    zh="客户端发了 {sent} 字节服务端没读的数据，然后 shutdown(SHUT_WR)：它的 FIN 排在这些数据后面",
)
S_READ = Text(
    en="the server read them all and then b'' (the FIN); the server's kernel ACKed it",
    zh="服务端把数据全读完，又读到 b''（也就是 FIN）；服务端的内核回了 ACK",
)
S_CLOSE = Text(
    en="the server sent {sent} bytes the client does not read, then close(): its FIN waits behind them",
    zh="服务端发了 {sent} 字节客户端没读的数据，然后 close()：它的 FIN 排在这些数据后面",
)
S_DRAIN = Text(
    en="the client read them all and then b'' (the server's FIN), and ACKed it; the server's side is gone",
    zh="客户端读完数据，又读到 b''（服务端的 FIN），回了 ACK；服务端这一侧就没了",
)
IN_ORDER = Text(
    en="Every state appeared, in order: {states}.",
    zh="所有状态都按顺序出现了：{states}。",
)
FIRST_FIN = Text(
    en="The client sent the first FIN, so it went through FIN_WAIT1 and FIN_WAIT2 and holds TIME_WAIT; the server, which closed second, went through CLOSE_WAIT and LAST_ACK.",
    zh="第一个 FIN 是客户端发的，所以它经历了 FIN_WAIT1、FIN_WAIT2，最后停在 TIME_WAIT；后关闭的服务端经历的是 CLOSE_WAIT 和 LAST_ACK。",
)
MEANING = Text(
    en=(
        "The handshake: SYN (client: SYN_SENT), SYN+ACK (server: SYN_RECV), ACK (both ESTABLISHED); "
        "the kernel does it all before accept() returns. The close takes four messages because each "
        "direction is closed on its own: the side that is done sending sends FIN (FIN_WAIT1), the other "
        "ACKs it (FIN_WAIT2 / CLOSE_WAIT) and may still send, then sends its own FIN (LAST_ACK), which "
        "the first side ACKs before waiting in TIME_WAIT. Whoever closes first, server or client, takes "
        "the FIN_WAIT path and ends in TIME_WAIT (see 'tcplab lab time-wait'). SYN_RECV is seen in "
        "numbers only when SYNs come faster than handshakes complete, as in a SYN flood."
    ),
    zh=(
        "三次握手：SYN（客户端进入 SYN_SENT）、SYN+ACK（服务端 SYN_RECV）、ACK（双方 ESTABLISHED），这些都是内核在 accept() 返回之前做完的。"
        "断开要四次挥手，是因为两个方向各自关闭：先发完数据的一方发 FIN（进入 FIN_WAIT1），另一方回 ACK（于是变成 FIN_WAIT2 / CLOSE_WAIT），"
        "它还可以继续发数据，发完再发自己的 FIN（进入 LAST_ACK），先关闭的一方回 ACK 后进入 TIME_WAIT 等一会儿。"
        "不管是服务端还是客户端，谁先关闭，谁就走 FIN_WAIT 这条路，最后停在 TIME_WAIT（见 'tcplab lab time-wait'）。"
        "只有 SYN 来得比握手完成得还快的时候（比如 SYN 洪水攻击），才会看到大量 SYN_RECV。"
    ),
)


class Step(NamedTuple):
    """
    What the kernel showed after one step.
    """

    what: str
    client: str
    server: str


def _shrinkBuffers(sock: socket.socket) -> None:
    # Small, fixed buffers (an accepted socket inherits its listener's).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)


def _fill(sock: socket.socket) -> int:
    # Send until the peer's receive buffer and our send buffer are full.
    sock.setblocking(False)
    sent = 0
    try:
        while True:
            sent += sock.send(b"x" * BUFFER)
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return sent


def _drain(sock: socket.socket) -> int:
    # Read until the peer's FIN (b"").
    sock.settimeout(5)
    read = 0
    while data := sock.recv(65536):
        read += len(data)
    return read


def follow(record: Record) -> list[Step]:
    """
    Step one connection through its life, reading both its sides' states
    after each step.
    """
    steps: list[Step] = []
    with ExitStack() as stack:
        phone = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        _shrinkBuffers(phone)
        phone.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 10)
        phone.bind((lesson.HOST, 0))
        phone.listen(0)
        port = phone.getsockname()[1]
        # Another client fills the accept queue (data, or TCP_DEFER_ACCEPT keeps it out).
        other = stack.enter_context(socket.create_connection((lesson.HOST, port), timeout=5))
        other.send(b".")
        _waitForQueue(port, 1)
        client = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        _shrinkBuffers(client)
        client.bind((lesson.HOST, 0))
        clientPort = client.getsockname()[1]
        record.say(LISTENING, port=port, client=clientPort)

        def look(text: Text, client: str, server: str, **values: object) -> None:
            # Wait (briefly) for the states this step should bring, and write what was seen.
            seenClient = kernel.waitForState(clientPort, port, client, timeout=1.0)[0]
            seenServer = kernel.waitForState(port, clientPort, server, timeout=1.0)[0]
            step = Step(record.text(text, **values), seenClient, seenServer)
            steps.append(step)
            record.say(STATE, what=step.what, client=_shown(step.client, record), server=_shown(step.server, record))

        expected = iter(EXPECTED)
        client.setblocking(False)
        connectedAt = time.monotonic()
        client.connect_ex((lesson.HOST, port))
        look(S_CONNECT, *next(expected))
        stack.enter_context(phone.accept()[0])
        select.select([], [client], [], 5)
        retry = time.monotonic() - connectedAt
        look(S_RETRY, *next(expected), retry=retry)
        client.setblocking(True)
        client.settimeout(5)
        client.send("你好".encode())
        phone.settimeout(5)
        conn = stack.enter_context(phone.accept()[0])
        look(S_DATA, *next(expected), message="你好")
        conn.recv(1024)
        sent = _fill(client)
        client.shutdown(socket.SHUT_WR)
        look(S_SHUTDOWN, *next(expected), sent=sent)
        _drain(conn)
        look(S_READ, *next(expected))
        sent = _fill(conn)
        conn.close()
        look(S_CLOSE, *next(expected), sent=sent)
        _drain(client)
        look(S_DRAIN, *next(expected))
    record.observe(retrySeconds=round(retry, 3))
    return steps


def _shown(state: str, record: Record) -> str:
    # The state's name and its code in /proc/net/tcp: "SYN_SENT (02)".
    if state == kernel.GONE:
        return record.text(NO_SOCKET)
    code = kernel.CODES.get(state)
    return state if code is None else f"{state} ({code:02X})"


def _waitForQueue(port: int, length: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = kernel.find(port, 0)
        if listening is not None and listening.rxQueue >= length:
            return
        time.sleep(0.005)


def run(record: Record) -> None:
    """
    Follow one connection from SYN to TIME_WAIT.
    """
    kernel.requireProc()
    steps = follow(record)
    seen = [(step.client, step.server) for step in steps]
    record.observe(
        states=[{"client": client, "server": server} for client, server in seen],
        expected=[{"client": client, "server": server} for client, server in EXPECTED],
        firstFin="client",
        timeWait="client" if seen and seen[-1][0] == "TIME_WAIT" else None,
    )
    order = []
    for client, server in EXPECTED:
        for state in (client, server):
            if state != kernel.GONE and state not in order:
                order.append(state)
    record.expect(seen == EXPECTED, IN_ORDER, states=" → ".join(order))
    record.expect(seen[3:] == EXPECTED[3:], FIRST_FIN)
    record.explain(MEANING)


EXPERIMENT = Experiment("handshake", SUMMARY, WHERE, run)
