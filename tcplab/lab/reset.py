"""
C{tcplab lab reset}: when the lesson's C{ConnectionResetError} happens (a
peer closes with data it has not read, or aborts), and when it does not: a
clean close makes C{recv} return C{b""}, and the lesson's loop then goes on.
"""

from __future__ import annotations

import select
import socket
import struct
import threading

from tcplab.lab import lesson
from tcplab.lab.record import Experiment, Record
from tcplab.lab.texts import Text

#: How long the lab lets the lesson's loop go on after its first b"".
SPIN = 0.2

SUMMARY = Text(
    en="when the lesson's ConnectionResetError happens (unread data, an abort) and when it does not: after a clean close recv returns b'' and the lesson's loop goes on",
    zh="课文里的 ConnectionResetError 什么时候出现（有数据没读就关闭、强行中止），什么时候不出现：正常关闭后 recv 返回 b''，课文的循环会停不下来",
)
WHERE = Text(
    en="part 3 (the server's except ConnectionResetError: break), note 24 (conn.close() frees the system's resources)",
    zh="第三部分（服务端的 except ConnectionResetError: break）、第 24 条（conn.close() 回收系统资源）",
)
UNREAD = Text(
    en="Unread data: the client sent {message!r}; the server closed without reading it. The client's recv(1024) then raised {error}.",
    zh="有数据没读：客户端发了 {message!r}，服务端没读就关闭了。客户端接着 recv(1024)，抛出 {error}。",
)
ABORT = Text(
    en="Abort: the server set SO_LINGER to (on, 0 s) and closed. The client's recv(1024) raised {error}.",
    zh="强行中止：服务端把 SO_LINGER 设为（开，0 秒）再关闭。客户端的 recv(1024) 抛出 {error}。",
)
CLEAN = Text(
    en="Clean close: the client closed. The lesson's loop on the server: recv returned b'' in {empty} of {recvs} calls, {replies} of its send() calls went through, and the loop ended with {ended}.",
    zh="正常关闭：客户端关闭了连接。服务端上课文的循环：{recvs} 次 recv 里有 {empty} 次返回 b''，send() 成功了 {replies} 次，最后以 {ended} 结束。",
)
HALF = Text(
    en="Half close: the client called shutdown(SHUT_WR) and kept reading. The lesson's loop: recv returned b'' {empty} times in {seconds:.1f} s (the lab stopped it then), and the client received {bytes} bytes of SB.",
    zh="半关闭：客户端调用 shutdown(SHUT_WR)，但还在读。服务端上课文的循环：{seconds:.1f} 秒内 recv 返回了 {empty} 次 b''（然后被实验叫停），客户端收到了 {bytes} 字节的 SB。",
)
FIXED = Text(
    en="With the fix (if not msg: break): recv returned b'' once, the loop ended ({recvs} call) and the server closed the connection.",
    zh="加上修正（if not msg: break）：recv 只返回一次 b''，循环就结束了（共 {recvs} 次调用），服务端关闭了连接。",
)
RESETS = Text(
    en="A peer that closes with unread data, or aborts, sends a reset (RST): recv raises ConnectionResetError.",
    zh="对方有数据没读就关闭，或者强行中止时，会发出复位报文（RST）：recv 抛出 ConnectionResetError。",
)
NO_RESET = Text(
    en="A clean close raises nothing: recv returns b'', and the lesson's except ConnectionResetError does not end the loop (here it ended with {ended}; the lesson's server would {fate}).",
    zh="正常关闭什么异常也不抛：recv 返回 b''，课文的 except ConnectionResetError 结束不了循环（这里以 {ended} 结束；课文的服务端会{fate}）。",
)
FATE_CRASH = Text(en="crash with it", zh="因此崩溃")
FATE_SPIN = Text(en="spin for ever", zh="一直空转下去")
FATE_BREAK = Text(en="go back to accept()", zh="回到 accept()")
SPINS = Text(
    en="When the client only shuts down its sending side, the lesson's loop spins: {empty} empty recvs in {seconds:.1f} s.",
    zh="客户端只关闭发送方向时，课文的循环会空转：{seconds:.1f} 秒里有 {empty} 次空的 recv。",
)
FIX_WORKS = Text(
    en="The fix 'if not msg: break' ends the loop at the first b''.",
    zh="修正 'if not msg: break' 在第一次读到 b'' 时就结束了循环。",
)
MEANING = Text(
    en=(
        "ConnectionResetError means the peer's kernel sent RST: the peer closed while data it had not "
        "read was waiting (its kernel cannot deliver it any more, so it says so), or it aborted with "
        "SO_LINGER 0, or it was killed on a system that resets the connections of a dead process (the "
        "lesson, written on Windows, sees it when the client's window is closed). A clean close sends "
        "FIN instead, and then recv returns b'', again and again: it is the normal end of a TCP stream, "
        "not an error. The lesson's loop does not test for it, so after a clean close it answers nothing "
        "with 'SB' over and over; on Linux the second send to a closed socket raises BrokenPipeError, "
        "which the lesson does not catch either. The fix is one line: 'if not msg: break' after recv. "
        "tcplab's server treats the end of the stream as the end of the client (and answers everything "
        "it received before it)."
    ),
    zh=(
        "ConnectionResetError 的意思是对方的内核发来了 RST：对方关闭时还有没读的数据在等着（内核没法再交付它们，只好这样告诉你），"
        "或者对方用 SO_LINGER 0 强行中止，或者对方的进程被杀掉了，而系统会复位死掉进程的连接"
        "（课文是在 Windows 上写的，关掉客户端窗口时看到的就是它）。正常关闭发的是 FIN，之后 recv 返回 b''，而且一次又一次地返回："
        "这是 TCP 字节流的正常结束，不是错误。课文的循环没有判断它，所以正常关闭以后，服务端会一遍遍地对“什么都没有”回复 'SB'；"
        "在 Linux 上，第二次往已关闭的套接字 send 会抛出 BrokenPipeError，课文也没有捕获它。修正只要一行：recv 之后加上 'if not msg: break'。"
        "tcplab 的服务端把字节流结束当作客户端离开（在那之前收到的都会回复）。"
    ),
)


def _resetBy(close: str) -> str:
    """
    The server closes with unread data (C{close="unread"}) or aborts
    (C{"abort"}); what does the client's recv give?

    @return: the name of the exception it raised, or what it returned.
    """
    client, server = lesson.connectedPair()
    with client, server:
        if close == "unread":
            client.send("你好".encode())
            select.select([server], [], [], 5)  # the data has arrived, unread
        else:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        client.settimeout(5)
        try:
            return repr(client.recv(1024))
        except OSError as error:
            return type(error).__name__


def _loopAfter(halfClose: bool, breakOnEmpty: bool) -> tuple[lesson.Served, int]:
    """
    Run the lesson's loop on the server's side of a connection whose client
    closes (or only shuts down its sending side and keeps reading).

    @return: what the loop did, and how many bytes the client received.
    """
    client, server = lesson.connectedPair()
    received = [0]

    def read() -> None:
        client.settimeout(5)
        try:
            while data := client.recv(65536):
                received[0] += len(data)
        except OSError:
            pass

    reader = threading.Thread(target=read, name="half-closed-client", daemon=True)
    with client, server:
        if halfClose:
            client.shutdown(socket.SHUT_WR)
            reader.start()
        else:
            client.close()
        served = lesson.communicate(server, breakOnEmpty=breakOnEmpty, spinLimit=SPIN)
        server.close()
        if reader.is_alive():
            reader.join(10)
    return served, received[0]


def run(record: Record) -> None:
    """
    Two ways to get a reset, and two clean closes under the lesson's loop,
    without and with the fix.
    """
    unread = _resetBy("unread")
    record.say(UNREAD, message="你好", error=unread)
    abort = _resetBy("abort")
    record.say(ABORT, error=abort)
    clean, _ = _loopAfter(halfClose=False, breakOnEmpty=False)
    record.say(
        CLEAN, empty=clean.emptyReads, recvs=len(clean.received), replies=clean.replies, ended=clean.ended
    )
    spun, bytesBack = _loopAfter(halfClose=True, breakOnEmpty=False)
    record.say(HALF, empty=spun.emptyReads, seconds=SPIN, bytes=bytesBack)
    fixed, _ = _loopAfter(halfClose=True, breakOnEmpty=True)
    record.say(FIXED, recvs=len(fixed.received))
    record.observe(
        unreadData=unread,
        abort=abort,
        cleanClose={"recvs": len(clean.received), "emptyRecvs": clean.emptyReads, "ended": clean.ended},
        halfClose={
            "emptyRecvs": spun.emptyReads, "replies": spun.replies, "seconds": SPIN,
            "bytesToClient": bytesBack, "ended": spun.ended,
        },
        fixed={"recvs": len(fixed.received), "ended": fixed.ended},
    )
    record.expect(unread == abort == "ConnectionResetError", RESETS)
    if clean.ended == lesson.TIME_LIMIT:
        fate = FATE_SPIN
    elif clean.ended == "ConnectionResetError":
        fate = FATE_BREAK
    else:
        fate = FATE_CRASH
    record.expect(
        clean.received[:1] == [b""] and clean.ended != "ConnectionResetError",
        NO_RESET, ended=clean.ended, fate=record.text(fate),
    )
    # Still going when the lab stopped it: it spins (a loaded machine may
    # run it less often, but it never stops on its own).
    record.expect(
        spun.emptyReads > 1 and spun.ended == lesson.TIME_LIMIT, SPINS, empty=spun.emptyReads, seconds=SPIN
    )
    record.expect(fixed.received == [b""] and fixed.ended == lesson.CLIENT_LEFT, FIX_WORKS)
    record.explain(MEANING)


EXPERIMENT = Experiment("reset", SUMMARY, WHERE, run)
