"""
C{tcplab lab empty-message}: the lesson's client sends nothing for an empty
line and then waits for a reply that cannot come; tcplab's client skips
empty lines.
"""

from __future__ import annotations

import time

from tcplab.lab import lesson
from tcplab.lab.processes import runClient
from tcplab.lab.record import Experiment, Record
from tcplab.lab.texts import Text

#: How long the lab lets the lesson's client wait for its reply.
WAIT = 1.0

#: What is piped into C{tcplab client}: three lines, the middle one empty.
PIPED = "你好\n\n再见\n"

SUMMARY = Text(
    en="the lesson's client sends nothing for an empty line, then waits for ever for a reply; tcplab's client skips empty lines",
    zh="课文的客户端遇到空行什么也发不出去，然后一直傻等回复；tcplab 的客户端会跳过空行",
)
WHERE = Text(
    en="part 3, the client's loop: msg=input('>>>: ').strip(), then send and recv (not a numbered note)",
    zh="第三部分客户端的循环：msg=input('>>>: ').strip()，然后 send、recv（没有对应的编号注释）",
)
STARTED = Text(
    en="Started the lesson's server on 127.0.0.1:{port}.",
    zh="在 127.0.0.1:{port} 上启动了课文的服务端。",
)
SENT_EMPTY = Text(
    en="The lesson's client read an empty line: phone.send(b'') returned {sent} (the number of bytes sent).",
    zh="课文的客户端读到一个空行：phone.send(b'') 返回 {sent}（也就是发出的字节数）。",
)
WAITED = Text(
    en="Then phone.recv(1024) waited {waited:.2f} s and got nothing (the lab gave up after {timeout:.1f} s; the lesson's client waits for ever).",
    zh="接着 phone.recv(1024) 等了 {waited:.2f} 秒，什么也没收到（实验等 {timeout:.1f} 秒就放弃了，课文的客户端会一直等下去）。",
)
GOT_REPLY = Text(
    en="Then phone.recv(1024) returned {reply!r} after {waited:.2f} s.",
    zh="接着 phone.recv(1024) 过了 {waited:.2f} 秒返回了 {reply!r}。",
)
SERVER_GOT = Text(
    en="Meanwhile the server's recv(1024) returned {count} times.",
    zh="这段时间里，服务端的 recv(1024) 返回了 {count} 次。",
)
THEN = Text(
    en="Next the client sent {message!r} and got {reply!r} in {time:.1f} ms: the connection was fine all along.",
    zh="然后客户端发了 {message!r}，{time:.1f} 毫秒就收到 {reply!r}：连接一直是好的。",
)
PIPED_RUN = Text(
    en="Piped {lines} lines, {input!r}, into 'tcplab client 127.0.0.1 {port}': it exited with {code} and printed {output!r}.",
    zh="用管道把 {lines} 行输入 {input!r} 交给 'tcplab client 127.0.0.1 {port}'：退出码 {code}，输出 {output!r}。",
)
SERVER_RECEIVED = Text(
    en="The server received {messages!r} from tcplab's client.",
    zh="服务端从 tcplab 的客户端收到的是 {messages!r}。",
)
STUCK = Text(
    en="The lesson's client sent no byte for the empty line, so the server received nothing, no reply came, and the client's recv blocked ({waited:.2f} s here).",
    zh="课文的客户端为空行发出了 0 个字节，所以服务端什么也没收到，也就没有回复，客户端的 recv 一直阻塞（这里等了 {waited:.2f} 秒）。",
)
SKIPPED = Text(
    en="tcplab's client skipped the empty line: {replies} replies for {lines} lines, and exit status 0.",
    zh="tcplab 的客户端跳过了空行：{lines} 行输入得到 {replies} 条回复，退出码 0。",
)
MEANING = Text(
    en=(
        "TCP carries bytes, not messages: sending zero bytes puts nothing on the wire, so the server "
        "has nothing to receive and nothing to answer, and a client that then waits for a reply waits "
        "for ever. For the same reason the lesson's server never receives an empty message: its recv "
        "returns b'' only once the client has closed (see 'tcplab lab reset'). tcplab's client does "
        "not send an empty line in raw framing, where it would be no bytes at all: it skips it (at the "
        ">>>: prompt too) and goes on with the next line. In line or length framing an empty message "
        "is a real one (a lone \\n, or a frame of length 0), and tcplab sends it."
    ),
    zh=(
        "TCP 传的是字节，不是一条条消息：发送 0 个字节，网络上什么都没有，服务端没有东西可收，也就没有东西可回；"
        "客户端接着等回复，就会永远等下去。同样的道理，课文的服务端永远收不到“空消息”："
        "只有客户端关闭连接以后，recv 才会返回 b''（见 'tcplab lab reset'）。"
        "在 raw 分帧下空行就是零个字节，tcplab 的客户端不会去发它，而是跳过（在 >>>: 提示符下也一样），接着处理下一行。"
        "在 line 或 length 分帧下，空消息是一条真正的消息（一个单独的 \\n，或长度为 0 的帧），tcplab 会照常发送。"
    ),
)


def run(record: Record) -> None:
    """
    The lesson's client on an empty line, then tcplab's client on piped input.
    """
    with lesson.LessonServer() as server:
        record.say(STARTED, port=server.port)
        with lesson.connect(server.port, timeout=WAIT) as phone:
            msg = ""  # input('>>>: ').strip() of an empty line
            sent = phone.send(msg.encode("utf-8"))  # the lesson's send
            record.say(SENT_EMPTY, sent=sent)
            start = time.monotonic()
            try:
                reply: bytes | None = phone.recv(1024)
            except TimeoutError:
                reply = None
            waited = time.monotonic() - start
            if reply is None:
                record.say(WAITED, waited=waited, timeout=WAIT)
            else:
                record.say(GOT_REPLY, reply=reply.decode("utf-8", "replace"), waited=waited)
            serverReads = len(server.served[0].received) if server.served else 0
            record.say(SERVER_GOT, count=serverReads)
            start = time.monotonic()
            phone.settimeout(5)
            phone.send("你好".encode())
            followUp = phone.recv(1024).decode("utf-8", "replace")
            record.say(THEN, message="你好", reply=followUp, time=(time.monotonic() - start) * 1000)
        result = runClient("127.0.0.1", str(server.port), stdin=PIPED.encode())
        server.waitServed(2)
        output = result.stdout.decode("utf-8", "replace")
        replies = output.splitlines()
        record.say(
            PIPED_RUN, lines=PIPED.count("\n"), input=PIPED, port=server.port,
            code=result.returncode, output=output,
        )
        received = server.served[1].received if len(server.served) > 1 else []
        messages = [data.decode("utf-8", "replace") for data in received if data]
        record.say(SERVER_RECEIVED, messages=messages)
    record.observe(
        sent=sent,
        waited=round(waited, 4),
        replyToEmpty=None if reply is None else reply.decode("utf-8", "replace"),
        serverReadsMeanwhile=serverReads,
        followUpReply=followUp,
        clientExitCode=result.returncode,
        clientReplies=replies,
        serverReceived=messages,
    )
    record.expect(sent == 0 and reply is None and serverReads == 0, STUCK, waited=waited)
    record.expect(
        result.returncode == 0 and replies == ["你好SB", "再见SB"] and messages == ["你好", "再见"],
        SKIPPED, replies=len(replies), lines=PIPED.count("\n"),
    )
    record.explain(MEANING)


EXPERIMENT = Experiment("empty-message", SUMMARY, WHERE, run)
