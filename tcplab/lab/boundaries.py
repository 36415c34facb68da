"""
C{tcplab lab boundaries}: TCP is a stream.  Two quick sends arrive in one
C{recv}, a 3000-byte message comes back from C{recv(1024)} in pieces, and
tcplab's line and length framings keep every message whole.
"""

from __future__ import annotations

import time

from tcplab.framing import decoderFor, encode, stripLineEnding
from tcplab.lab import lesson
from tcplab.lab.processes import TcplabServer
from tcplab.lab.record import Experiment, Record
from tcplab.lab.texts import Text

FIRST = b"hello"
SECOND = b"world"

#: The size of the long message: more than one recv(1024).
SIZE = 3000

#: How long the lesson's server stays busy (does not read) while the two messages arrive.
BUSY = 0.2

SUMMARY = Text(
    en="TCP is a stream: two quick messages reach the lesson's server in one recv and get one SB, a 3000-byte one comes back in pieces; tcplab's line and length framings keep every message whole",
    zh="TCP 是流：连发的两条消息被课文的服务端一次 recv 收下，只回一个 SB；3000 字节的消息被拆成几块送回；tcplab 的 line 和 length 分帧让每条消息保持完整",
)
WHERE = Text(
    en="note 17 (TCP is a stream protocol, SOCK_STREAM), note 22 (recv(1024): 1024 is the most bytes one call returns)",
    zh="第 17 条（TCP 是流式协议，SOCK_STREAM）、第 22 条（recv(1024) 的 1024 是一次最多收的字节数）",
)
STARTED = Text(
    en="Started the lesson's server on 127.0.0.1:{port}; it accepts only {busy:.1f} s after the client has sent, as if it were busy.",
    zh="在 127.0.0.1:{port} 上启动了课文的服务端；客户端发完 {busy:.1f} 秒后它才开始 accept，就像它正忙着别的事。",
)
TWO_SENT = Text(
    en="The client sent {first!r} and {second!r} with two send() calls.",
    zh="客户端用两次 send() 分别发了 {first!r} 和 {second!r}。",
)
ONE_RECV = Text(
    en="The server's first recv(1024) returned {data!r}; the client got back {reply!r}.",
    zh="服务端第一次 recv(1024) 返回的是 {data!r}；客户端收到的回复是 {reply!r}。",
)
BIG_SENT = Text(
    en="The client sent one message of {size} bytes with one sendall().",
    zh="客户端用一次 sendall() 发了一条 {size} 字节的消息。",
)
PIECES = Text(
    en="The server's recv(1024) returned it in {count} pieces of {sizes} bytes; the client got back {total} bytes with {suffixes} × SB in them.",
    zh="服务端的 recv(1024) 分 {count} 次收下它，每次分别是 {sizes} 字节；客户端收回 {total} 字节，其中有 {suffixes} 个 SB。",
)
TCPLAB_STARTED = Text(
    en="Started tcplab's servers with --suffix SB: line framing on 127.0.0.1:{line}, length framing on 127.0.0.1:{length}.",
    zh="启动了 tcplab 的两个服务端，都带 --suffix SB：127.0.0.1:{line} 用 line 分帧，127.0.0.1:{length} 用 length 分帧。",
)
LINE_RUN = Text(
    en="Line framing: one write of {sent!r} ({messages} lines) came back as {replies} replies: {shown!r}.",
    zh="line 分帧：一次写出 {sent!r}（{messages} 行），收回 {replies} 条回复：{shown!r}。",
)
LENGTH_RUN = Text(
    en="Length framing: one write of {messages} frames with payloads of {sizes} bytes came back as {replies} replies with payloads of {replySizes} bytes.",
    zh="length 分帧：一次写出 {messages} 个帧，负载分别是 {sizes} 字节；收回 {replies} 条回复，负载分别是 {replySizes} 字节。",
)
MERGED = Text(
    en="Two sends arrived in one recv, so the lesson's server answered both with a single SB.",
    zh="两次 send 的内容在一次 recv 里一起到达，所以课文的服务端对这两条消息只回了一个 SB。",
)
SPLIT = Text(
    en="The {size}-byte message came back in {count} pieces, each with its own SB.",
    zh="这条 {size} 字节的消息被拆成 {count} 块送回，每块后面各有一个 SB。",
)
FRAMED = Text(
    en="tcplab's line and length framings kept every message whole: one reply per message, in order.",
    zh="tcplab 的 line 和 length 分帧让每条消息保持完整：一条消息对应一条回复，顺序不变。",
)
MEANING = Text(
    en=(
        "SOCK_STREAM delivers a stream of bytes: the kernel keeps no trace of where one send() ended, "
        "so a recv returns whatever has arrived, up to its limit: two messages glued together, or part "
        "of one. recv(1024) does not mean 'one message of up to 1024 bytes' but 'at most 1024 bytes of "
        "the stream, now'. A protocol on TCP must therefore mark where its messages end: tcplab's line "
        "framing ends each with \\n, its length framing puts a 4-byte length before each. The lesson's "
        "echo only seems to work while messages are small and far apart."
    ),
    zh=(
        "SOCK_STREAM 交付的是一串字节流：内核不会记住每次 send() 在哪里结束，recv 只是把已经到达的字节（不超过上限）交给你，"
        "可能是粘在一起的两条消息，也可能只是半条。这就是常说的“粘包”。recv(1024) 的意思不是“收一条最长 1024 字节的消息”，"
        "而是“现在从流里取最多 1024 个字节”。所以基于 TCP 的协议必须自己标出消息的边界：tcplab 的 line 分帧在每条消息后面加 \\n，"
        "length 分帧在每条消息前面加 4 字节的长度。课文那样原样回显，只有在消息又小、间隔又长的时候才看起来没问题。"
    ),
)


def readMessages(port: int, framing: str, data: bytes, count: int, timeout: float = 5.0) -> list[bytes]:
    """
    Write C{data} in one go to a tcplab server in C{framing}, and read
    replies until C{count} messages have come (or C{timeout} seconds).

    @return: the replies' messages, cut out by tcplab's own decoder.
    """
    decoder = decoderFor(framing, 1 << 20)
    messages: list[bytes] = []
    deadline = time.monotonic() + timeout
    with lesson.connect(port, timeout) as sock:
        sock.sendall(data)
        while len(messages) < count and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            messages += decoder.feed(chunk)
    return [stripLineEnding(m) for m in messages] if framing == "line" else messages


def _piecesRead(served: lesson.Served, size: int, timeout: float = 5.0) -> list[int]:
    # The sizes of the server's recv(1024)s after the first, once they add up to size.
    deadline = time.monotonic() + timeout
    while sum(pieces := [len(data) for data in served.received[1:]]) < size and time.monotonic() < deadline:
        time.sleep(0.01)
    return pieces


def run(record: Record) -> None:
    """
    The lesson's server on two quick messages and a long one, then tcplab's
    line and length servers.
    """
    with TcplabServer("--framing", "line", "--suffix", "SB") as lineServer, \
            TcplabServer("--framing", "length", "--suffix", "SB") as lengthServer:
        with lesson.LessonServer(accepting=False) as server:
            record.say(STARTED, port=server.port, busy=BUSY)
            with lesson.connect(server.port) as phone:
                phone.send(FIRST)
                phone.send(SECOND)
                record.say(TWO_SENT, first=FIRST.decode(), second=SECOND.decode())
                time.sleep(BUSY)
                server.start()
                reply = b"".join(lesson.receiveUntilQuiet(phone, len(FIRST + SECOND) + 2))
                served = server.served[0] if server.served else lesson.Served()
                firstRead = served.received[0] if served.received else b""
                record.say(ONE_RECV, data=firstRead.decode(), reply=reply.decode())
                phone.sendall(b"a" * SIZE)
                record.say(BIG_SENT, size=SIZE)
                pieces = _piecesRead(served, SIZE)
                # One SB per piece: wait for all of them, then for any more.
                answer = lesson.receiveUntilQuiet(phone, SIZE + len(lesson.SUFFIX) * len(pieces), quiet=0.2)
                total = sum(map(len, answer))
                suffixes = b"".join(answer).count(b"SB")
                record.say(
                    PIECES, count=len(pieces), sizes=" + ".join(map(str, pieces)),
                    total=total, suffixes=suffixes,
                )
        lineServer.ready()
        lengthServer.ready()
        assert lineServer.port is not None and lengthServer.port is not None
        record.say(TCPLAB_STARTED, line=lineServer.port, length=lengthServer.port)
        lineSent = encode("line", FIRST) + encode("line", SECOND)
        lineReplies = readMessages(lineServer.port, "line", lineSent, 2)
        record.say(
            LINE_RUN, sent=lineSent.decode(), messages=2, replies=len(lineReplies),
            shown=[m.decode() for m in lineReplies],
        )
        payloads = [b"a" * SIZE, FIRST]
        lengthReplies = readMessages(
            lengthServer.port, "length", b"".join(encode("length", p) for p in payloads), 2
        )
        record.say(
            LENGTH_RUN, messages=len(payloads), sizes=" + ".join(str(len(p)) for p in payloads),
            replies=len(lengthReplies), replySizes=" + ".join(str(len(m)) for m in lengthReplies),
        )
    record.observe(
        firstRecv=firstRead.decode("utf-8", "replace"),
        mergedReply=reply.decode("utf-8", "replace"),
        pieces=pieces,
        bytesBack=total,
        suffixesBack=suffixes,
        lineReplies=[m.decode("utf-8", "replace") for m in lineReplies],
        lengthReplySizes=[len(m) for m in lengthReplies],
    )
    record.expect(firstRead == FIRST + SECOND and reply == FIRST + SECOND + b"SB", MERGED)
    record.expect(
        len(pieces) > 1 and max(pieces) <= lesson.RECV_SIZE and sum(pieces) == SIZE
        and suffixes == len(pieces) and total == SIZE + 2 * len(pieces),
        SPLIT, size=SIZE, count=len(pieces),
    )
    record.expect(
        lineReplies == [FIRST + b"SB", SECOND + b"SB"]
        and lengthReplies == [p + b"SB" for p in payloads],
        FRAMED,
    )
    record.explain(MEANING)


EXPERIMENT = Experiment("boundaries", SUMMARY, WHERE, run)
