"""
Tests for C{tcplab client}: its options and console in memory, then the
command itself, as a user runs it, against real servers on 127.0.0.1.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import trustme
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcplab import EchoClient, __version__
from tcplab.cli import ClientOptions, ConsoleProtocol, OutputError, ReplyPrinter
from tcplab.client import ReplyTimeout
from tcplab.server import EchoServerFactory
from tests.seedserver import SeedServer
from tests.serverprocess import ROOT, ServerProcess, environment, freePort
from tests.test_client import QUIET, Pump

#: How long any one command may run before the test fails.
LIMIT = 20

DOCS = (ROOT / "docs" / "client.md").read_text(encoding="utf-8")


def parse(*args: str) -> ClientOptions:
    options = ClientOptions()
    options.parseOptions(list(args))
    return options


class ClientOptionsTests(SynchronousTestCase):
    """
    L{ClientOptions} checks everything before anything connects.
    """

    def test_defaults(self) -> None:
        """
        Without arguments the client talks to the lesson's address in raw
        framing, with a 10-second timeout.
        """
        options = parse()
        self.assertEqual(
            (options["host"], options["port"], options["framing"], options["timeout"]),
            ("127.0.0.1", 8081, "raw", 10.0),
        )
        self.assertEqual(options["address"], "127.0.0.1:8081")

    def test_messagesInOrder(self) -> None:
        """
        C{-m} and C{--message} add UTF-8 messages, in order.
        """
        options = parse("-m", "你好", "--message", "b", "::1", "9000")
        self.assertEqual(options["messages"], ["你好".encode(), b"b"])
        self.assertEqual(options["address"], "[::1]:9000")

    def test_optionsAfterAddress(self) -> None:
        """
        Options may follow HOST and PORT, and C{--} ends them.
        """
        options = parse("127.0.0.1", "9000", "-m", "a", "--framing", "line")
        self.assertEqual((options["port"], options["messages"], options["framing"]), (9000, [b"a"], "line"))
        self.assertEqual(parse("-m", "-x", "--", "::1")["messages"], [b"-x"])

    def test_connectShortOptionIsE(self) -> None:
        """
        C{-e} is C{--connect} (the endpoint), as in C{tcplab bench}; the
        client has no C{-c}.
        """
        options = parse("-e", "tcp6:host=::1:port=9000")
        self.assertEqual(options["connect"], options["address"])
        self.assertEqual(options["connect"], "tcp6:host=::1:port=9000")

    def test_zeroTimeoutMeansNone(self) -> None:
        """
        C{--timeout 0} means no limit.
        """
        self.assertIsNone(parse("--timeout", "0")["timeout"])

    def test_usageErrors(self) -> None:
        """
        Impossible combinations are usage errors, with a one-line message.
        """
        for args, message in [
            (["localhost", "70000"], "out of range"),
            (["localhost", "0"], "port 0"),
            (["localhost", "eighty"], "whole number"),
            (["--framing", "xml"], "unknown framing"),
            (["--timeout", "-1"], "duration"),
            (["--udp", "--framing", "line"], "raw"),
            (["--connect", "tcp:host=a:port=1", "localhost"], "not both"),
            (["--udp", "--connect", "tcp:host=a:port=1"], "--udp"),
            (["--connect", "nonsense:x"], "invalid endpoint"),
            (["--connect", "tcp:host=127.0.0.1:port=70000"], "port 70000 is out of range"),
            (["localhost", "1", "extra"], "unexpected argument 'extra'"),
            (["--timeout", "soon"], "--timeout: invalid duration"),
            (["-m", ""], "empty"),
            (["--framing", "line", "-m", "a\nb"], "newline"),
            (["--connect", "tcp:host=127.0.0.1"], "needs a port (port=...)"),
            (["--connect", "tcp6:host=::1"], "needs a port"),
            (["--connect", "unix:path="], "needs a path"),
            (["-c", "tcp:host=a:port=1"], "option -c not recognized"),
        ]:
            error = self.assertRaises(usage.UsageError, parse, *args)
            self.assertIn(message, str(error), args)
            self.assertNotIn("\n", str(error))


class ConsoleTestsMixin:
    """
    Builds a L{ConsoleProtocol} on a L{StringTransport}, talking through an
    in-memory L{EchoClient} to tcplab's line server with suffix C{SB}.
    """

    def console(
        self, framing: str = "line", interactive: bool = False, hexReplies: bool = False
    ) -> ConsoleProtocol:
        self.clock = Clock()
        self.client = EchoClient(self.clock, framing=framing)
        server = EchoServerFactory(framing=framing, suffix=b"SB", reactor=self.clock).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 50000)
        )
        assert server is not None
        self.pump = Pump(self.client, server)
        self.output = StringTransport()
        printer = ReplyPrinter(
            self.client.request,
            self.output.write,
            hexReplies,
            prompt=b">>>: " if interactive else b"",
        )
        console = ConsoleProtocol(printer, interactive, skipEmpty=framing == "raw")
        console.makeConnection(self.output)
        return console


class ConsoleProtocolTests(ConsoleTestsMixin, SynchronousTestCase):
    """
    L{ConsoleProtocol}: standard input lines in, replies out.
    """

    def test_pipedLinesAreMessages(self) -> None:
        """
        Each input line is a message without its line ending; each reply is
        written on its own line, in order.
        """
        console = self.console()
        console.dataReceived(b"one\r\ntw")
        console.dataReceived(b"o\n\nthree")
        console.readConnectionLost()
        self.pump.flush()
        self.assertEqual(self.output.value(), b"oneSB\ntwoSB\nSB\nthreeSB\n")

    def test_noReplyLostAfterEndOfInput(self) -> None:
        """
        The end of input closes the output only after the last reply, and
        C{finished} fires once the output is closed.
        """
        console = self.console()
        console.dataReceived(b"".join(b"%d\n" % n for n in range(100)))
        console.readConnectionLost()
        self.assertFalse(self.output.disconnecting)
        self.pump.flush()
        self.assertEqual(self.output.value().count(b"SB\n"), 100)
        self.assertTrue(self.output.disconnecting)
        self.assertNoResult(console.finished)
        console.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(console.finished)

    def test_rawSkipsEmptyLines(self) -> None:
        """
        In raw framing an empty line has nothing to send and is skipped; the
        lines around it are answered and the session succeeds.
        """
        console = self.console(framing="raw")
        console.dataReceived(b"\n\nx\n\n")
        self.pump.flush()
        self.clock.advance(QUIET)
        console.readConnectionLost()
        self.assertEqual(self.output.value(), b"xSB\n")
        self.assertTrue(self.output.disconnecting)
        console.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(console.finished)

    def test_interactive(self) -> None:
        """
        Interactive: a prompt first and after each reply, input stripped as
        by C{str.strip} (even of ideographic spaces), empty input skipped,
        and a newline at the end of input.
        """
        console = self.console(interactive=True)
        self.assertEqual(self.output.value(), b">>>: ")
        console.dataReceived("\u3000 你好 \n".encode())
        self.pump.flush()
        self.assertEqual(self.output.value(), ">>>: 你好SB\n>>>: ".encode())
        self.output.clear()
        console.dataReceived(b"   \n")
        self.assertEqual(self.output.value(), b">>>: ")
        console.readConnectionLost()
        self.assertEqual(self.output.value(), b">>>: \n")

    def test_hexReplies(self) -> None:
        """
        With C{hexReplies} replies are written as hexadecimal.
        """
        console = self.console(hexReplies=True)
        console.dataReceived("你好\n".encode())
        self.pump.flush()
        self.assertEqual(self.output.value(), b"e4bda0e5a5bd5342\n")

    def test_undecodableRepliesAreReplaced(self) -> None:
        """
        Bytes of a reply that are not UTF-8 are written as U+FFFD.
        """
        console = self.console()
        console.dataReceived(b"\xff\n")
        self.pump.flush()
        self.assertEqual(self.output.value(), "\ufffdSB\n".encode())

    def test_failureEndsSession(self) -> None:
        """
        A request that fails ends the session: the output closes and
        C{finished} fails with the reason.
        """
        console = self.console()
        console.dataReceived(b"one\n")
        self.clock.advance(10)
        self.assertTrue(self.output.disconnecting)
        console.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(console.finished, ReplyTimeout)

    def test_outputLostAfterEndOfInput(self) -> None:
        """
        If the last replies cannot be written (standard output fails after
        the input has ended), the session fails rather than succeeding.
        """
        console = self.console()
        console.dataReceived(b"one\n")
        console.readConnectionLost()
        self.pump.flush()
        console.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(console.finished, OutputError)

    def test_closedOutputEndsSession(self) -> None:
        """
        When standard output goes away, the session ends at once.
        """
        console = self.console()
        console.dataReceived(b"one\n")
        console.writeConnectionLost()
        self.failureResultOf(console.finished, OutputError)

    def test_tooLongInputLine(self) -> None:
        """
        An input line over the client's limit ends the session with an error
        instead of growing the buffer.
        """
        console = self.console()
        self.patch(console._lines, "maxLength", 8)
        console.dataReceived(b"short\n" + b"x" * 20)
        self.pump.flush()
        console.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.failureResultOf(console.finished, ValueError).check(ValueError), ValueError)


class ReplyPrinterTests(SynchronousTestCase):
    """
    L{ReplyPrinter} writes replies in request order and reports the first
    failure once.
    """

    def test_firstFailureOnly(self) -> None:
        """
        After the first failure nothing more is written, and later failures
        are consumed (no unhandled error).
        """
        requests: list[Deferred[bytes]] = []

        def request(message: bytes) -> Deferred[bytes]:
            requests.append(Deferred())
            return requests[-1]

        output: list[bytes] = []
        printer = ReplyPrinter(request, output.append)
        printer.send(b"a")
        printer.send(b"b")
        printer.send(b"c")
        printer.end()
        requests[0].errback(ReplyTimeout(1))
        requests[1].callback(b"b")
        requests[2].errback(ReplyTimeout(1))
        self.failureResultOf(printer.done, ReplyTimeout)
        self.assertEqual(output, [])

    def test_closedOutput(self) -> None:
        """
        An output that cannot be written (a closed pipe) fails the session
        instead of raising inside a callback.
        """

        def write(data: bytes) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        printer = ReplyPrinter(lambda message: Deferred.fromCoroutine(_reply(message)), write)
        printer.send(b"a")
        printer.end()
        self.assertEqual(
            str(self.failureResultOf(printer.done, OutputError).value),
            "cannot write to standard output: Broken pipe",
        )


async def _reply(message: bytes) -> bytes:
    return message


def run(*args: str, input: bytes | None = None, stdout: object = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    """
    Run C{python -m tcplab client ARGS} from the source tree, to completion.
    """
    return subprocess.run(
        [sys.executable, "-m", "tcplab", "client", *args],
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=environment(),
        timeout=LIMIT,
    )


class CommandTestsMixin:
    """
    Helpers for tests that run the command.
    """

    def server(self, *args: str) -> ServerProcess:
        """
        Start C{twist tcplab ARGS} on a free port; it stops after the test.
        """
        server = ServerProcess(*args)
        self.addCleanup(server.stop)  # type: ignore[attr-defined]
        return server

    def assertSucceeds(self, result: subprocess.CompletedProcess[bytes], stdout: str) -> None:
        self.assertEqual(  # type: ignore[attr-defined]
            (result.returncode, result.stdout.decode(), result.stderr.decode()), (0, stdout, "")
        )

    def assertFails(self, result: subprocess.CompletedProcess[bytes], code: int, *fragments: str) -> None:
        """
        The command exited with C{code} and one line on stderr holding every
        fragment.
        """
        stderr = result.stderr.decode()
        self.assertEqual(result.returncode, code, stderr)  # type: ignore[attr-defined]
        self.assertEqual(stderr.count("\n"), 1, stderr)  # type: ignore[attr-defined]
        self.assertTrue(stderr.startswith("tcplab client: "), stderr)  # type: ignore[attr-defined]
        for fragment in fragments:
            self.assertIn(fragment, stderr)  # type: ignore[attr-defined]


class ClientCommandTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{tcplab client} one-shot and piped, against C{twist tcplab}.
    """

    def test_oneShot(self) -> None:
        """
        Each C{-m} message is sent in order and its reply printed on its own
        line.
        """
        server = self.server("--suffix", "SB", "--framing", "line")
        result = run("--framing", "line", "-m", "你好", "-m", "", "-m", "b", "127.0.0.1", str(server.port))
        self.assertSucceeds(result, "你好SB\nSB\nbSB\n")

    def test_rawOneShot(self) -> None:
        """
        In raw framing the reply ends after the quiet period.
        """
        server = self.server("--suffix", "SB")
        self.assertSucceeds(run("-m", "你好", "127.0.0.1", str(server.port)), "你好SB\n")

    def test_lengthFramingWithConnect(self) -> None:
        """
        C{--connect} takes an endpoint string; length framing works end to end.
        """
        server = self.server("--suffix", "SB", "--framing", "length")
        endpoint = f"tcp:host=127.0.0.1:port={server.port}"
        result = run("--connect", endpoint, "-f", "length", "-m", "a", "-m", "b\nc")
        self.assertSucceeds(result, "aSB\nb\ncSB\n")

    def test_pipedNoReplyLost(self) -> None:
        """
        Piped input: every line is a message and every reply is printed,
        including all those that arrive after the end of input.
        """
        server = self.server("--suffix", "SB", "--framing", "line")
        lines = b"".join(b"line %d\n" % n for n in range(2000))
        result = run("--framing", "line", "127.0.0.1", str(server.port), input=lines)
        self.assertSucceeds(result, "".join(f"line {n}SB\n" for n in range(2000)))

    def test_pipedRaw(self) -> None:
        """
        Piped input in raw framing: empty lines are skipped, and an
        unterminated last line is still a message.
        """
        server = self.server("--suffix", "SB")
        result = run("127.0.0.1", str(server.port), input=b"one\n\ntwo")
        self.assertSucceeds(result, "oneSB\ntwoSB\n")

    def test_hex(self) -> None:
        """
        C{--hex} prints replies as hexadecimal.
        """
        server = self.server("--suffix", "SB")
        self.assertSucceeds(run("--hex", "-m", "你好", "127.0.0.1", str(server.port)), "e4bda0e5a5bd5342\n")

    def test_udp(self) -> None:
        """
        C{--udp} sends each message as a datagram, one-shot or piped.
        """
        server = self.server("--suffix", "SB", "--udp", "0")
        port = server.waitForLog(r"DatagramEcho starting on (\d+)").group(1)
        self.assertSucceeds(run("--udp", "-m", "a", "-m", "你好", "127.0.0.1", port), "aSB\n你好SB\n")
        lines = "".join(f"{n}\n" for n in range(500))
        self.assertSucceeds(run("--udp", "127.0.0.1", port, input=lines.encode()), lines.replace("\n", "SB\n"))

    def test_udpPipedUnderDefaultRate(self) -> None:
        """
        A piped UDP session of 8,000 lines, one datagram at a time as fast
        as the client goes, gets every reply from a server with the default
        per-source rate limit: the limit stops loops, not a client.
        """
        server = self.server("--udp", "0")
        port = server.waitForLog(r"tcplab listening on 127\.0\.0\.1:(\d+) \(UDP").group(1)
        lines = "".join(f"{n}\n" for n in range(8000))
        self.assertSucceeds(run("--udp", "127.0.0.1", port, input=lines.encode()), lines)
        self.assertNotIn("not answered", server.log())

    def test_refused(self) -> None:
        """
        A refused connection: status 1, one line naming the address and why.
        """
        port = freePort()
        self.assertFails(
            run("-m", "hi", "127.0.0.1", str(port)),
            1,
            f"cannot connect to 127.0.0.1:{port}",
            "connection refused",
        )

    def test_missingUnixSocket(self) -> None:
        """
        A UNIX socket that does not exist: status 1, one line.
        """
        path = "/nonexistent/tcplab.sock"
        self.assertFails(
            run("--connect", f"unix:path={path}", "-m", "hi"),
            1,
            f"cannot connect to unix:path={path}: No such file or directory",
        )

    def test_framingMismatch(self) -> None:
        """
        A client whose framing is not the server's fails with a hint rather
        than printing wrong replies or timing out in silence.
        """
        raw = self.server("--suffix", "SB")
        line = self.server("--suffix", "SB", "--framing", "line")
        self.assertFails(
            run("-f", "line", "-m", "one", "127.0.0.1", str(raw.port)),
            1,
            "2 bytes arrived that answer no message",
            "does the server's framing match --framing line?",
        )
        self.assertFails(
            run("--timeout", "0.5", "-m", "hi", "127.0.0.1", str(line.port)),
            1,
            "no reply within 0.5 s",
            "does the server's framing match --framing raw?",
        )

    def test_outputCannotBeWritten(self) -> None:
        """
        Replies that cannot be written (standard output is a full device, or
        closed): status 1 and one line, one-shot and piped, never a
        traceback or a hang.
        """
        server = self.server("--suffix", "SB", "--framing", "line")
        address = ["-f", "line", "127.0.0.1", str(server.port)]
        with open("/dev/full", "wb") as full:
            for input in (None, b"one\ntwo\n"):
                args = address if input else ["-m", "hi", *address]
                result = run(*args, input=input, stdout=full)
                self.assertFails(result, 1, "cannot write to standard output")
        closed = subprocess.run(
            ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "tcplab", "client", "-m", "hi", *address],
            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=environment(), timeout=LIMIT,
        )
        self.assertEqual((closed.returncode, closed.stderr), (1, b"tcplab: standard output is closed\n"))

    def test_replyTimeout(self) -> None:
        """
        A server that never answers: status 1 after C{--timeout} seconds.
        """
        with socket.create_server(("127.0.0.1", 0)) as silent:
            port = silent.getsockname()[1]
            started = time.monotonic()
            result = run("--timeout", "0.5", "-f", "line", "-m", "hi", "127.0.0.1", str(port))
        self.assertLess(time.monotonic() - started, LIMIT / 2)
        self.assertFails(result, 1, f"127.0.0.1:{port}", "no reply within 0.5 s")

    def test_serverCloses(self) -> None:
        """
        A server that closes before replying: status 1, one line.
        """
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.settimeout(LIMIT)
            port = listener.getsockname()[1]
            process = subprocess.Popen(
                [sys.executable, "-m", "tcplab", "client", "-m", "hi", "127.0.0.1", str(port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=ROOT, env=environment(),
            )
            connection, _ = listener.accept()
            with connection:
                connection.recv(1024)
            stdout, stderr = process.communicate(timeout=LIMIT)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        self.assertFails(result, 1, f"127.0.0.1:{port}", "connection closed by the server")

    def test_udpTimeout(self) -> None:
        """
        UDP has no end of stream: a datagram not answered in time is a
        failure.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            port = silent.getsockname()[1]
            result = run("--udp", "--timeout", "0.5", "-m", "hi", "127.0.0.1", str(port))
        self.assertFails(result, 1, f"127.0.0.1:{port}", "no reply within 0.5 s")

    def test_udpRefused(self) -> None:
        """
        A UDP port nothing listens on is refused (ICMP port unreachable).
        """
        port = freePort(socket.SOCK_DGRAM)
        self.assertFails(run("--udp", "-m", "hi", "127.0.0.1", str(port)), 1, "connection refused")

    def test_usageErrors(self) -> None:
        """
        A bad port or an unknown option: status 2, one line, no traceback.
        """
        self.assertFails(run("127.0.0.1", "70000"), 2, "port 70000 is out of range")
        self.assertFails(run("--bogus"), 2, "--bogus")

    def test_help(self) -> None:
        """
        C{--help} describes the command and exits 0.
        """
        result = run("--help")
        self.assertEqual(result.returncode, 0)
        self.assertIn(b"Usage: tcplab client [options] [HOST] [PORT]", result.stdout)
        version = run("--version")
        self.assertEqual((version.returncode, version.stdout.decode()), (0, f"tcplab {__version__}\n"))


class BadServerTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{tcplab client} against servers that do not answer as echo servers:
    one line on stderr, status 1, never a hang or unbounded memory.
    """

    def fake(self, answer: Callable[[socket.socket], None]) -> int:
        """
        A server on 127.0.0.1 that accepts one connection, reads once, and
        then lets C{answer} write what it likes; it stops after the test.
        """
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(LIMIT)
        self.addCleanup(listener.close)

        def serve() -> None:
            try:
                connection, _ = listener.accept()
                with connection:
                    connection.settimeout(LIMIT)
                    connection.recv(1024)
                    answer(connection)
            except OSError:
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        self.addCleanup(thread.join, LIMIT)
        return listener.getsockname()[1]

    def test_rawStreamWithoutEnd(self) -> None:
        """
        A raw server that streams without end (and so never goes quiet)
        ends the reply at the client's limit, even with no timeout.
        """

        def stream(connection: socket.socket) -> None:
            block = b"hi" + b"x" * 65534
            while True:
                connection.sendall(block)
                block = b"x" * 65536

        port = self.fake(stream)
        result = run("-t", "0", "-m", "hi", "127.0.0.1", str(port))
        self.assertFails(result, 1, f"127.0.0.1:{port}", "or more is over the 16777216-byte limit")

    def test_rawWrongReply(self) -> None:
        """
        A raw reply that does not start with the message is reported,
        escaped, with status 1, rather than printed.
        """
        port = self.fake(lambda connection: connection.sendall(b"no\x1b[2J echo here"))
        result = run("-m", "hi", "127.0.0.1", str(port))
        self.assertEqual(result.stdout, b"")
        self.assertFails(result, 1, "wrong reply (it does not start with the message): no\\x1b[2J echo here")

    def test_lineServerBusy(self) -> None:
        """
        A line server's refusal (over its connection limit) is an error,
        not a reply.
        """
        server = self.server("--framing", "line", "--max-connections", "1")
        with socket.create_connection(("127.0.0.1", server.port), timeout=LIMIT) as holder:
            holder.sendall(b"x\n")
            holder.recv(16)
            result = run("-f", "line", "-m", "hi", "127.0.0.1", str(server.port))
        self.assertFails(result, 1, "the server refused: error: server busy (1 connection")

    def test_lineTooLong(self) -> None:
        """
        A line server's notice of an overlong line is an error, not a reply;
        the replies before it are printed.
        """
        server = self.server("--framing", "line", "--max-length", "4", "--suffix", "SB")
        result = run("-f", "line", "-m", "ok", "-m", "too long", "127.0.0.1", str(server.port))
        self.assertEqual(result.stdout, b"okSB\n")
        self.assertFails(result, 1, "the server refused: error: line longer than 4 bytes; closing")

    def test_lineWrongReply(self) -> None:
        """
        A line reply that does not start with its message: status 1.
        """
        port = self.fake(lambda connection: connection.sendall(b"nope\n"))
        self.assertFails(run("-f", "line", "-m", "hi", "127.0.0.1", str(port)), 1, "wrong reply", ": nope")


class RawSuffixTests(CommandTestsMixin, SynchronousTestCase):
    """
    Piped raw sessions learn the server's suffix from the first reply.
    """

    def test_pipedRawIsQuick(self) -> None:
        """
        2000 piped lines against C{twist tcplab --suffix SB} (raw) finish in
        seconds, not one quiet period each, and every reply is right.
        """
        server = self.server("--suffix", "SB")
        lines = b"".join(b"line %d\n" % n for n in range(2000))
        started = time.monotonic()
        result = run("127.0.0.1", str(server.port), input=lines)
        self.assertLess(time.monotonic() - started, 30)
        self.assertSucceeds(result, "".join(f"line {n}SB\n" for n in range(2000)))

    def test_pipedRawWithoutSuffix(self) -> None:
        """
        A server with no suffix (RFC 862) too.
        """
        server = self.server()
        lines = b"".join(b"%d\n" % n for n in range(500))
        self.assertSucceeds(run("127.0.0.1", str(server.port), input=lines), lines.decode())


#: How C{twist tcplab} logs the start of any listening endpoint.
_STARTED = re.compile(r"EchoServerFactory (?:\(TLS\) )?starting on (\d+|'[^']*')")


class AnyServerProcess(ServerProcess):
    """
    A L{ServerProcess} on any endpoint: its start is logged otherwise on a
    TLS port or a UNIX socket (C{port} is 0 for a socket).
    """

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            match = _STARTED.search(line)
            if self.port is None and match:
                self.port = int(match.group(1)) if match.group(1).isdigit() else 0
                self._started.set()
        self._started.set()


class EndpointFormTests(CommandTestsMixin, SynchronousTestCase):
    """
    Every endpoint form the client's help shows works end to end: tcp,
    tcp6, unix (tls: see L{TLSTests}).
    """

    def test_help(self) -> None:
        """
        The help names the forms these tests try.
        """
        help = run("--help").stdout.decode()
        for form in ("tcp:host=", "tcp6:host=::1:port=", "unix:path=", "tls:", "-e, --connect="):
            self.assertIn(form, help)

    def test_tcp(self) -> None:
        """
        C{-e tcp:host=H:port=P}.
        """
        server = self.server("--suffix", "SB")
        self.assertSucceeds(run("-e", f"tcp:host=127.0.0.1:port={server.port}", "-m", "a"), "aSB\n")

    def test_tcp6(self) -> None:
        """
        C{--connect tcp6:host=::1:port=P}, written plainly or escaped.
        """
        # ::1 is there: .ci/run turns IPv6 on for the loopback if it is off
        # (test_listeners serves on it too).
        server = AnyServerProcess("--suffix", "SB", listen=r"tcp6:0:interface=\:\:1")
        self.addCleanup(server.stop)
        for endpoint in (f"tcp6:host=::1:port={server.port}", rf"tcp6:host=\:\:1:port={server.port}"):
            self.assertSucceeds(run("--connect", endpoint, "-m", "a"), "aSB\n")

    def test_unix(self) -> None:
        """
        C{--connect unix:path=P}.
        """
        directory = tempfile.mkdtemp(prefix="tcplab-client-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = f"{directory}/echo.sock"
        server = AnyServerProcess("--suffix", "SB", listen=f"unix:{path}")
        self.addCleanup(server.stop)
        self.assertSucceeds(run("--connect", f"unix:path={path}", "-m", "a"), "aSB\n")

    def test_missingPort(self) -> None:
        """
        An endpoint without its port: status 2, one line naming it.
        """
        self.assertFails(run("--connect", "tcp:host=127.0.0.1", "-m", "hi"), 2, "needs a port (port=...)")


class TLSTests(CommandTestsMixin, SynchronousTestCase):
    """
    Against C{twist tcplab} on a TLS port (a certificate for 127.0.0.1 from
    a C{trustme} CA): C{tls:} works, and plain text sent there is blamed on
    TLS, not on the framing.
    """

    def setUp(self) -> None:
        self.tls, self.roots = tlsServer(self, "--suffix", "SB")
        self.address = ["127.0.0.1", str(self.tls.port)]

    def test_tlsEndpoint(self) -> None:
        """
        C{--connect tls:H:P:trustRoots=DIR} talks TLS.
        """
        endpoint = f"tls:127.0.0.1:{self.tls.port}:trustRoots={self.roots}"
        self.assertSucceeds(run("--connect", endpoint, "-m", "你好"), "你好SB\n")

    def test_closedAtOnce(self) -> None:
        """
        A TLS server closes at once on plain text: in length framing only
        TLS explains that; in raw and line framing a length server would
        too, so the hint names both.
        """
        useTLS = f"use --connect tls:127.0.0.1:{self.tls.port}"
        self.assertFails(
            run("-f", "length", "-m", "hi", *self.address), 1, f"the server seems to speak TLS: {useTLS}"
        )
        for framing in ("raw", "line"):
            self.assertFails(
                run("-f", framing, "-m", "hello", *self.address),
                1,
                "connection closed by the server",
                f"does the server speak TLS ({useTLS}) or --framing length?",
            )

    def test_alert(self) -> None:
        """
        A TLS alert record in answer (what a TLS server sends to bytes that
        look like a broken handshake): the server speaks TLS, whatever the
        framing.
        """
        useTLS = f"use --connect tls:127.0.0.1:{self.tls.port}"
        # A handshake record of 257 bytes (no NUL: it goes in argv) that is no handshake.
        record = "\x16\x03\x01\x01\x01" + "h" * 257
        for framing in ("raw", "line"):
            result = run("-f", framing, "-m", record, *self.address)
            self.assertFails(result, 1, "wrong reply", f"the server seems to speak TLS: {useTLS}")


    def test_untrustedCertificate(self) -> None:
        """
        A certificate from an authority not in C{trustRoots=} is refused in
        one line that says so (it was OpenSSL's list of error tuples).
        """
        other = Path(tempfile.mkdtemp(prefix="tcplab-roots-"))
        self.addCleanup(shutil.rmtree, other, True)
        trustme.CA().cert_pem.write_to_path(str(other / "ca.pem"))
        result = run("--connect", f"tls:127.0.0.1:{self.tls.port}:trustRoots={other}", "-m", "hi")
        self.assertFails(
            result, 1, "TLS: the server's certificate is not trusted (certificate verify failed)", "trustRoots=DIR"
        )
        self.assertNotIn("SSL routines", result.stderr.decode())

    def test_wrongHost(self) -> None:
        """
        A certificate that does not name the host connected to is refused
        in one line naming it.
        """
        result = run("--connect", f"tls:localhost:{self.tls.port}:trustRoots={self.roots}", "-m", "hi")
        self.assertFails(result, 1, "TLS: the server's certificate is not valid for localhost (it names other hosts)")

    def test_plainTextClosedPromptly(self) -> None:
        """
        Plain text (a line, more than a TLS record header) sent to a TLS
        port is closed within a second or two, not left to the idle timeout.
        """
        with socket.create_connection(("127.0.0.1", self.tls.port), timeout=10) as client:
            started = time.monotonic()
            client.sendall(b"hello\n")
            while client.recv(1024):
                pass
            self.assertLess(time.monotonic() - started, 5)


class TLSLimitTests(CommandTestsMixin, SynchronousTestCase):
    """
    The limits and the idle timeout hold on a TLS listener as on plain TCP.
    """

    def test_maxConnections(self) -> None:
        """
        Over C{--max-connections 1}, a TLS client is told, over TLS, that
        the server is busy; the one admitted is still served.
        """
        server, roots = tlsServer(self, "--framing", "line", "--max-connections", "1")
        endpoint = f"tls:127.0.0.1:{server.port}:trustRoots={roots}"
        with tlsConnection(roots, server.port) as held:
            held.sendall(b"mine\n")
            self.assertEqual(held.recv(100), b"mine\n")
            self.assertFails(
                run("-f", "line", "--connect", endpoint, "-m", "hi"), 1, "the server refused: error: server busy (1 connection)"
            )
            held.sendall(b"still\n")
            self.assertEqual(held.recv(100), b"still\n")

    def test_maxPerPeer(self) -> None:
        server, roots = tlsServer(self, "--framing", "line", "--max-per-peer", "1")
        with tlsConnection(roots, server.port) as held:
            held.sendall(b"mine\n")
            self.assertEqual(held.recv(100), b"mine\n")
            with tlsConnection(roots, server.port) as second:
                self.assertEqual(second.recv(100), b"error: too many connections from your address (limit 1)\n")

    def test_idleTimeout(self) -> None:
        """
        A TLS connection silent for C{--idle-timeout} is closed, as a plain
        one is; so is one that never finishes its handshake.
        """
        server, roots = tlsServer(self, "--idle-timeout", "1")
        with tlsConnection(roots, server.port) as idle:
            started = time.monotonic()
            self.assertEqual(idle.recv(100), b"")
            self.assertLess(time.monotonic() - started, 15)
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as silent:
            # Mid-handshake, Twisted's TLS closes by aborting: a reset.
            try:
                self.assertEqual(silent.recv(100), b"")
            except ConnectionResetError:
                pass
        server.waitForLog(r"idle for 1\.0 seconds; closing")


def tlsServer(test: SynchronousTestCase, *args: str) -> tuple[ServerProcess, Path]:
    """
    Start C{twist tcplab ARGS} on an C{ssl:} port with a certificate for
    127.0.0.1 from a new trustme CA.

    @return: the server, and a directory holding the CA's certificate (for
        C{trustRoots=}).
    """
    directory = Path(tempfile.mkdtemp(prefix="tcplab-tls-"))
    test.addCleanup(shutil.rmtree, directory, True)
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    certificate.private_key_pem.write_to_path(str(directory / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    (directory / "roots").mkdir()
    authority.cert_pem.write_to_path(str(directory / "roots" / "ca.pem"))
    listen = f"ssl:0:interface=127.0.0.1:privateKey={directory / 'key.pem'}:certKey={directory / 'cert.pem'}"
    server = AnyServerProcess(*args, listen=listen)
    test.addCleanup(server.stop)
    return server, directory / "roots"


def tlsConnection(roots: Path, port: int) -> ssl.SSLSocket:
    """
    @return: a TLS connection to 127.0.0.1:C{port} that trusts the CA in C{roots}.
    """
    context = ssl.create_default_context(cafile=str(roots / "ca.pem"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


class SeedServerTests(CommandTestsMixin, SynchronousTestCase):
    """
    Raw framing against the lesson's own blocking server, which answers
    C{msg + b'SB'} and never closes.  It dies when a client leaves (it only
    catches C{ConnectionResetError}, not C{BrokenPipeError}), so each test
    starts its own.
    """

    def seed(self) -> SeedServer:
        server = SeedServer()
        self.addCleanup(server.stop)
        return server

    def test_oneShot(self) -> None:
        """
        C{tcplab client -m 你好} prints C{你好SB} and exits promptly.
        """
        server = self.seed()
        started = time.monotonic()
        result = run("-m", "你好", "127.0.0.1", str(server.port))
        self.assertSucceeds(result, "你好SB\n")
        self.assertLess(time.monotonic() - started, 5)

    def test_longMessage(self) -> None:
        """
        A message longer than the seed's C{recv(1024)} comes back in pieces,
        each with its C{SB}; the reply is all of them.
        """
        server = self.seed()
        result = run("-m", "x" * 3000, "127.0.0.1", str(server.port))
        self.assertSucceeds(result, "SB".join(["x" * 1024, "x" * 1024, "x" * 952]) + "SB\n")

    def test_piped(self) -> None:
        """
        Piped lines each get their reply.
        """
        server = self.seed()
        self.assertSucceeds(run("127.0.0.1", str(server.port), input=b"one\n\ntwo\n"), "oneSB\ntwoSB\n")


class InteractiveTests(CommandTestsMixin, SynchronousTestCase):
    """
    C{tcplab client} on a terminal (a pseudo-terminal driven by pexpect).
    """

    def spawn(self, port: int) -> pexpect.spawn:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "tcplab", "client", "127.0.0.1", str(port)],
            cwd=str(ROOT),
            env=environment(),
            timeout=LIMIT / 2,
            encoding="utf-8",
        )
        self.addCleanup(child.close, force=True)
        child.expect_exact(">>>: ")
        return child

    def assertExits(self, child: pexpect.spawn, code: int) -> None:
        child.expect(pexpect.EOF)
        child.close()
        self.assertNotIn("Traceback", child.before)
        self.assertEqual(child.exitstatus, code, child.before)

    def test_promptLoop(self) -> None:
        """
        Each stripped line is sent and its reply printed before the next
        prompt; empty input is skipped; Ctrl-D exits 0.
        """
        server = self.server("--suffix", "SB")
        child = self.spawn(server.port)
        child.sendline("  你好  ")
        child.expect_exact("你好SB\r\n>>>: ")
        child.sendline("")
        child.expect_exact(">>>: ")
        child.sendline("bye")
        child.expect_exact("byeSB\r\n>>>: ")
        child.sendeof()
        self.assertExits(child, 0)

    def test_ctrlC(self) -> None:
        """
        Ctrl-C at the prompt exits 0, quietly.
        """
        server = self.server("--suffix", "SB")
        child = self.spawn(server.port)
        child.sendintr()
        self.assertExits(child, 0)

    def test_seedServer(self) -> None:
        """
        The prompt loop works against the lesson's server.
        """
        server = SeedServer()
        self.addCleanup(server.stop)
        child = self.spawn(server.port)
        child.sendline("你好")
        child.expect_exact("你好SB\r\n>>>: ")
        child.sendeof()
        self.assertExits(child, 0)

    def test_serverGoesAway(self) -> None:
        """
        A server that closes the connection while the client waits for input
        ends the session: status 1, naming the address.
        """
        server = self.server("--suffix", "SB")
        child = self.spawn(server.port)
        server.stop()
        child.expect_exact(f"tcplab client: 127.0.0.1:{server.port}: connection closed by the server")
        self.assertExits(child, 1)


class DocsTests(CommandTestsMixin, SynchronousTestCase):
    """
    The commands and the library example in docs/client.md work as shown.
    """

    def test_commands(self) -> None:
        """
        Each shell example succeeds, and prints what its comment says, run
        against C{twist tcplab --suffix SB} (in the example's framing) on a
        free port.
        """
        servers = {
            framing: self.server("--suffix", "SB", "--framing", framing) for framing in ("raw", "line")
        }
        [block] = re.findall(r"```sh\n(.*?)```", DOCS, re.DOTALL)
        for line in block.splitlines():
            command, _, comment = line.partition("#")
            stdin = None
            if "|" in command:
                producer, command = command.split("|")
                stdin = subprocess.run(shlex.split(producer), capture_output=True).stdout
            words = shlex.split(command)
            self.assertEqual(words[:2], ["tcplab", "client"])
            port = str(servers["line" if "line" in words else "raw"].port)
            words = [port if word == "8081" else word for word in words]
            if port not in words:
                words += ["127.0.0.1", port]
            result = run(*words[2:], input=stdin)
            self.assertEqual(result.returncode, 0, (line, result.stderr))
            expected = re.search(r"prints (\S+)", comment)
            if expected:
                self.assertEqual(result.stdout.decode(), expected.group(1) + "\n")

    def test_library(self) -> None:
        """
        The library example prints the server's reply.
        """
        server = self.server("--suffix", "SB")
        [example] = re.findall(r"```python\n(.*?)```", DOCS, re.DOTALL)
        result = subprocess.run(
            [sys.executable, "-c", example.replace("8081", str(server.port))],
            capture_output=True, cwd=ROOT, env=environment(), timeout=LIMIT, stdin=subprocess.DEVNULL,
        )
        self.assertEqual((result.returncode, result.stdout.decode()), (0, "你好SB\n"), result.stderr)
