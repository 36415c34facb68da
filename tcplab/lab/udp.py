"""
C{tcplab lab udp}: datagrams keep their boundaries, C{recvfrom(1024)}
silently cuts a longer one, there is no handshake and no connection, and
tcplab's UDP echo answers every datagram whole.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from contextlib import ExitStack

from tcplab.lab import lesson
from tcplab.lab.processes import TcplabServer
from tcplab.lab.record import Experiment, Record
from tcplab.lab.texts import Text

FIRST = b"hello"
SECOND = b"world"
MARKER = b"next"

#: The long datagram: more than one recvfrom(1024).
SIZE = 3000

#: How long a socket waits for a datagram, in seconds.
TIMEOUT = 0.5

SUMMARY = Text(
    en="UDP keeps each datagram whole or cuts it: recvfrom(1024) silently truncates a 3000-byte datagram; no handshake, no connection; tcplab's UDP echo",
    zh="UDP 的数据报要么完整收到，要么被截断：recvfrom(1024) 会悄悄截掉 3000 字节数据报的后半段；没有握手，没有连接；以及 tcplab 的 UDP 回显",
)
WHERE = Text(
    en="notes 14 (UDP needs no connection: 'unreliable', quick), 18 (UDP is a datagram protocol, SOCK_DGRAM), 22 (recv(1024))",
    zh="第 14 条（UDP 不需要建连接，“不可靠传输”，效率高）、第 18 条（UDP 是数据报协议，SOCK_DGRAM）、第 22 条（recv(1024)）",
)
TWO = Text(
    en="Two sendto() calls, {first!r} and {second!r}: the server's two recvfrom(1024) returned {got!r}.",
    zh="两次 sendto()，分别发 {first!r} 和 {second!r}：服务端两次 recvfrom(1024) 收到的是 {got!r}。",
)
CUT = Text(
    en="A datagram of {size} bytes, then {marker!r}: recvfrom(1024) returned {first} bytes, and the next recvfrom returned {following!r}: the other {lost} bytes were thrown away, with no error.",
    zh="先发一个 {size} 字节的数据报，再发 {marker!r}：recvfrom(1024) 返回 {first} 字节，下一次 recvfrom 返回的是 {following!r}：剩下的 {lost} 字节被扔掉了，没有任何报错。",
)
FLAGS = Text(
    en="Only flags tell: recvmsg(1024) on another {size}-byte datagram returned {got} bytes with MSG_TRUNC {flag} in its flags, and recv_into(buffer, 1024, MSG_TRUNC) on a third returned its real length, {real}.",
    zh="只有标志位能看出来：对另一个 {size} 字节的数据报，recvmsg(1024) 返回 {got} 字节，flags 里 MSG_TRUNC {flag}；对第三个数据报，recv_into(buffer, 1024, MSG_TRUNC) 返回了它的真实长度 {real}。",
)
FLAG_SET = Text(en="set", zh="被置位")
FLAG_UNSET = Text(en="not set", zh="没有置位")
TCP_REFUSED = Text(
    en="TCP to a closed port (127.0.0.1:{port}): connect() raised {error} at once: TCP asks first (SYN), and the kernel answered with RST.",
    zh="TCP 连接一个没人监听的端口（127.0.0.1:{port}）：connect() 立刻抛出 {error}：TCP 要先握手（SYN），内核回了 RST。",
)
UDP_SENT = Text(
    en="UDP to a closed port (127.0.0.1:{port}): sendto() returned {sent} at once (no handshake, nobody is asked); recvfrom on that unconnected socket then got {result} within {timeout:.1f} s.",
    zh="UDP 发往一个没人监听的端口（127.0.0.1:{port}）：sendto() 立刻返回 {sent}（没有握手，不问任何人）；这个没有 connect 的套接字接着 recvfrom，{timeout:.1f} 秒内得到的是 {result}。",
)
NOTHING = Text(en="nothing", zh="什么也没有")
CONNECTED = Text(
    en="The same from a connected UDP socket (connect(), then send()): send() returned {sent}, and the next recv raised {result}: the ICMP 'port unreachable' came back as ECONNREFUSED.",
    zh="换成 connect 过的 UDP 套接字（先 connect() 再 send()）：send() 返回 {sent}，下一次 recv 得到 {result}：ICMP“端口不可达”变成了 ECONNREFUSED。",
)
TCPLAB_STARTED = Text(
    en="Started tcplab's UDP echo (twist tcplab --udp 0 --suffix SB) on 127.0.0.1:{port}.",
    zh="在 127.0.0.1:{port} 上启动了 tcplab 的 UDP 回显（twist tcplab --udp 0 --suffix SB）。",
)
TCPLAB_RUN = Text(
    en="tcplab's UDP echo answered {sent} datagrams of {sizes} bytes with {replies} datagrams of {replySizes} bytes; the first reply was {first!r}.",
    zh="tcplab 的 UDP 回显收到 {sent} 个数据报（{sizes} 字节），回了 {replies} 个数据报（{replySizes} 字节）；第一个回复是 {first!r}。",
)
KEPT = Text(
    en="Datagrams keep their boundaries: two sends, two receives, each exactly one message.",
    zh="数据报保留边界：发两次，收两次，每次正好一条消息。",
)
TRUNCATED = Text(
    en="recvfrom(1024) silently cut the {size}-byte datagram to {first} bytes and discarded the rest; MSG_TRUNC revealed its real length.",
    zh="recvfrom(1024) 悄悄地把 {size} 字节的数据报截成 {first} 字节，其余的丢掉了；MSG_TRUNC 能看出它本来的长度。",
)
NO_CONNECTION = Text(
    en="UDP has no handshake: sending to a closed port succeeds; only a connected socket hears of the refusal, as ECONNREFUSED.",
    zh="UDP 没有握手：往没人监听的端口发送也会成功；只有 connect 过的套接字才会得知被拒绝，表现为 ECONNREFUSED。",
)
TCPLAB_WHOLE = Text(
    en="tcplab's UDP echo answered every datagram whole and in order, SB added (it reads up to 65535 bytes).",
    zh="tcplab 的 UDP 回显把每个数据报完整地、按顺序回复了，后面加上 SB（它一次最多能读 65535 字节）。",
)
MEANING = Text(
    en=(
        "SOCK_DGRAM delivers messages, not a stream: each recvfrom returns exactly one datagram, so UDP "
        "needs no framing. But a buffer smaller than the datagram loses the rest for good, without an "
        "error (only MSG_TRUNC tells), so a UDP program must read with a buffer as large as the largest "
        "datagram it expects: up to 65507 bytes over IPv4. There is no connection: nothing is set up "
        "before the first datagram, and nothing tells the sender whether it arrived; that is why the "
        "lesson calls UDP unreliable, and why it is quick (note 14). connect() on a UDP socket only fixes "
        "its peer, which also lets the kernel report an ICMP error such as 'port unreachable' on the "
        "next call."
    ),
    zh=(
        "SOCK_DGRAM 交付的是一条条消息，而不是字节流：每次 recvfrom 正好返回一个数据报，所以 UDP 不需要分帧，也不会“粘包”。"
        "但缓冲区比数据报小的时候，多出的部分就永远丢了，而且不报错（只有 MSG_TRUNC 能看出来），"
        "所以 UDP 程序要用不小于最大数据报的缓冲区来读：IPv4 上最大是 65507 字节。UDP 没有连接：发第一个数据报之前什么都不用建立，"
        "也没有任何机制告诉发送方数据到了没有，这就是课文说它“不可靠”的原因，也是它效率高的原因（第 14 条）。"
        "对 UDP 套接字调用 connect() 只是固定了对端地址，这也让内核能在下一次调用时报告 ICMP 错误，比如“端口不可达”。"
    ),
)


def _udp(stack: ExitStack, bind: bool = True) -> socket.socket:
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.settimeout(TIMEOUT)
    if bind:
        sock.bind((lesson.HOST, 0))
    return sock


def _closedPort(kind: int) -> int:
    # A port nobody listens on: bound, then closed.
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((lesson.HOST, 0))
        return sock.getsockname()[1]


#: What L{_outcome} returns when nothing came.
NO_DATAGRAM = "timeout"


def _outcome(receive: Callable[[], object]) -> str:
    # What a receive gave: a datagram, nothing in TIMEOUT seconds, or an error.
    try:
        receive()
    except TimeoutError:
        return NO_DATAGRAM
    except OSError as error:
        return type(error).__name__
    return "datagram"


def _shown(outcome: str, record: Record) -> str:
    return record.text(NOTHING) if outcome == NO_DATAGRAM else outcome


def run(record: Record) -> None:
    """
    Boundaries, truncation and refusals with plain UDP sockets, then tcplab's UDP echo.
    """
    with TcplabServer("--udp", "0", "--suffix", "SB") as tcplab, ExitStack() as stack:
        server = _udp(stack)
        client = _udp(stack)
        address = server.getsockname()
        client.sendto(FIRST, address)
        client.sendto(SECOND, address)
        got = [server.recvfrom(1024)[0] for _ in range(2)]
        record.say(TWO, first=FIRST.decode(), second=SECOND.decode(), got=[g.decode() for g in got])

        client.sendto(b"a" * SIZE, address)
        client.sendto(MARKER, address)
        first = len(server.recvfrom(1024)[0])
        following = server.recvfrom(1024)[0]
        record.say(
            CUT, size=SIZE, marker=MARKER.decode(), first=first,
            following=following.decode("utf-8", "replace"), lost=SIZE - first,
        )
        client.sendto(b"a" * SIZE, address)
        data, _, flags, _ = server.recvmsg(1024)
        truncFlag = bool(flags & socket.MSG_TRUNC)
        client.sendto(b"a" * SIZE, address)
        real = server.recv_into(bytearray(1024), 1024, socket.MSG_TRUNC)
        record.say(
            FLAGS, size=SIZE, got=len(data), flag=record.text(FLAG_SET if truncFlag else FLAG_UNSET), real=real
        )

        tcpPort = _closedPort(socket.SOCK_STREAM)
        try:
            socket.create_connection((lesson.HOST, tcpPort), timeout=5).close()
            tcpError = "connected"
        except OSError as error:
            tcpError = type(error).__name__
        record.say(TCP_REFUSED, port=tcpPort, error=tcpError)
        udpPort = _closedPort(socket.SOCK_DGRAM)
        loose = _udp(stack, bind=False)
        sent = loose.sendto(FIRST, (lesson.HOST, udpPort))
        unconnected = _outcome(lambda: loose.recvfrom(1024))
        record.say(UDP_SENT, port=udpPort, sent=sent, result=_shown(unconnected, record), timeout=TIMEOUT)
        fixed = _udp(stack, bind=False)
        fixed.connect((lesson.HOST, udpPort))
        connectedSent = fixed.send(FIRST)
        connected = _outcome(lambda: fixed.recv(1024))
        record.say(CONNECTED, sent=connectedSent, result=_shown(connected, record))

        tcplab.ready()
        assert tcplab.udpPort is not None
        record.say(TCPLAB_STARTED, port=tcplab.udpPort)
        echo = _udp(stack, bind=False)
        echo.settimeout(5)
        echo.connect((lesson.HOST, tcplab.udpPort))
        messages = ["你好".encode(), b"a" * SIZE, FIRST]
        for message in messages:
            echo.send(message)
        replies = [echo.recv(65535) for _ in messages]
        record.say(
            TCPLAB_RUN, sent=len(messages), sizes=" + ".join(str(len(m)) for m in messages),
            replies=len(replies), replySizes=" + ".join(str(len(r)) for r in replies),
            first=replies[0].decode("utf-8", "replace"),
        )
    record.observe(
        received=[g.decode() for g in got],
        truncatedTo=first,
        nextDatagram=following.decode("utf-8", "replace"),
        msgTruncFlag=truncFlag,
        realLength=real,
        tcpConnectToClosedPort=tcpError,
        udpSendToClosedPort=sent,
        unconnectedRecv=unconnected,
        connectedRecv=connected,
        tcplabReplySizes=[len(r) for r in replies],
    )
    record.expect(got == [FIRST, SECOND], KEPT)
    record.expect(
        first == 1024 and following == MARKER and truncFlag and real == SIZE,
        TRUNCATED, size=SIZE, first=first,
    )
    record.expect(
        tcpError == "ConnectionRefusedError" and sent == len(FIRST)
        and unconnected == NO_DATAGRAM and connected == "ConnectionRefusedError",
        NO_CONNECTION,
    )
    record.expect(replies == [m + b"SB" for m in messages], TCPLAB_WHOLE)
    record.explain(MEANING)


EXPERIMENT = Experiment("udp", SUMMARY, WHERE, run)
