"""
Tests for L{tcplab.bench}: the load generator behind C{tcplab bench}.

The runs are short and bounded by C{--requests}; they load a real echo
server listening in this process on 127.0.0.1, port 0, while the generator
runs in a thread.  They check what is reported, never how fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
from io import StringIO

from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcplab import cli
from tcplab.bench import (
    RECV_SIZE,
    BenchOptions,
    BenchResult,
    LoadPlan,
    formatProblems,
    formatSummary,
    parseEndpoint,
    runBench,
)
from tcplab.server import EchoServerFactory

SUMMARY_FIELDS = {
    "framing",
    "size",
    "suffix",
    "pipeline",
    "reconnect",
    "connections",
    "connectionsMade",
    "connectionsPerSecond",
    "connectLatencyMs",
    "failedConnections",
    "messages",
    "seconds",
    "messagesPerSecond",
    "megabytesPerSecond",
    "latencyMs",
    "errors",
    "split",
    "unanswered",
}


class CorruptingEcho(Protocol):
    """
    Echo every byte back, except that the byte at stream offset
    C{corruptAt} is replaced by C{"!"}.
    """

    corruptAt = 100

    def connectionMade(self) -> None:
        self.offset = 0

    def dataReceived(self, data: bytes) -> None:
        start, self.offset = self.offset, self.offset + len(data)
        if start <= self.corruptAt < self.offset:
            index = self.corruptAt - start
            data = data[:index] + b"!" + data[index + 1 :]
        self.transport.write(data)


class DelayedEcho(Protocol):
    """
    Echo every read back after C{delay} seconds.
    """

    delay = 0.05

    def dataReceived(self, data: bytes) -> None:
        reactor.callLater(self.delay, self.transport.write, data)


class ClosingEcho(Protocol):
    """
    Echo the first read, then close the connection.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.loseConnection()


class SplittingEcho(Protocol):
    """
    Answer every read as if it had come in two: the first C{cutAt} bytes
    with C{suffix}, then the rest with C{suffix}; the reply goes out in
    writes cut at the offsets C{writeCuts}, a little apart, so that the
    generator may read it in pieces cut there.  C{wrong} replaces the last
    byte of the second piece.
    """

    suffix = b"SB"
    cutAt = 10
    writeCuts: tuple[int, ...] = ()
    wrong = False

    def dataReceived(self, data: bytes) -> None:
        second = data[self.cutAt :]
        if self.wrong:
            second = second[:-1] + b"!"
        reply = data[: self.cutAt] + self.suffix + second + self.suffix
        cuts = [0, *self.writeCuts, len(reply)]
        for index, (start, end) in enumerate(zip(cuts, cuts[1:], strict=False)):
            reactor.callLater(0.005 * index, self.transport.write, reply[start:end])


class FirstMessages(Protocol):
    """
    Echo every byte back, and keep the first read of each connection in
    C{firsts}.
    """

    firsts: list[bytes] = []

    def connectionMade(self) -> None:
        self.first = True

    def dataReceived(self, data: bytes) -> None:
        if self.first:
            self.firsts.append(data)
            self.first = False
        self.transport.write(data)


class TerminalStream(StringIO):
    """
    A text stream that says it is a terminal.
    """

    def isatty(self) -> bool:
        return True


def parse(*argv: str) -> BenchOptions:
    """
    @return: L{BenchOptions} parsed from C{argv}.
    """
    options = BenchOptions()
    options.parseOptions(list(argv))
    return options


class ServerTestCase(TestCase):
    """
    Runs L{runBench} against servers listening in this process.
    """

    def listen(self, factory: Factory, interface: str = "127.0.0.1") -> str:
        """
        Listen with C{factory} on C{interface}, port 0, until the test ends.

        @return: the port number, as text.
        """
        port = reactor.listenTCP(0, factory, interface=interface)
        if isinstance(factory, EchoServerFactory):
            # Runs after stopListening: wait for the server side of every
            # connection to close, so that no timer outlives the test.
            self.addCleanup(factory.drain)
        self.addCleanup(port.stopListening)
        return str(port.getHost().port)

    async def bench(self, *argv: str) -> tuple[int, str, str]:
        """
        Run L{runBench} with C{argv} in a thread while the reactor serves.

        @return: the exit code, what it printed and what it printed to stderr.
        """
        out, err = StringIO(), StringIO()
        code = await threads.deferToThread(runBench, parse(*argv), out, err)
        return code, out.getvalue(), err.getvalue()


class BenchRunTests(ServerTestCase):
    """
    L{runBench} against a server in this process.
    """

    async def test_jsonFields(self) -> None:
        """
        C{--json} prints one JSON object with the throughput, the latency
        percentiles and the error counts; every requested message is
        answered and none is wrong.
        """
        port = self.listen(EchoServerFactory(framing="line", suffix=b"SB"))
        code, out, err = await self.bench(
            "--json", "-f", "line", "--suffix", "SB", "-c", "3", "-k", "8", "-n", "3000", "127.0.0.1", port
        )
        self.assertEqual((code, err), (0, ""))
        summary = json.loads(out)
        self.assertEqual(set(summary), SUMMARY_FIELDS)
        self.assertEqual(set(summary["latencyMs"]), {"p50", "p90", "p99", "max"})
        self.assertEqual(summary["messages"], 3000)
        self.assertEqual(
            (summary["connections"], summary["failedConnections"], summary["errors"], summary["unanswered"]),
            (3, 0, 0, 0),
        )
        seconds = summary["seconds"]
        self.assertTrue(0 < seconds < 60)
        # (The summary rounds the seconds and the rates.)
        self.assertLess(abs(summary["messagesPerSecond"] / (3000 / seconds) - 1), 1e-3)
        # MB/s counts the request bytes: 64-byte messages plus their newline.
        self.assertLess(abs(summary["megabytesPerSecond"] / (3000 * 65 / seconds / 1e6) - 1), 1e-2)
        latency = summary["latencyMs"]
        self.assertTrue(0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] < seconds * 1000)

    async def test_latencyMeasured(self) -> None:
        """
        Against a server that answers every read 50 ms late, every latency
        figure is at least 50 ms, and not absurdly more.
        """
        port = self.listen(Factory.forProtocol(DelayedEcho))
        code, out, err = await self.bench("--json", "-c", "2", "-n", "20", "127.0.0.1", port)
        self.assertEqual((code, err), (0, ""))
        latency = json.loads(out)["latencyMs"]
        self.assertGreaterEqual(latency["p50"], DelayedEcho.delay * 1000)
        self.assertLess(latency["max"], 2000)

    async def test_connectionClosedEarly(self) -> None:
        """
        A server that closes a connection with messages still unanswered:
        the connection counts as failed, the messages as unanswered, and the
        run exits 1 with one line on stderr.
        """
        port = self.listen(Factory.forProtocol(ClosingEcho))
        code, out, err = await self.bench("--json", "-f", "line", "-c", "1", "-k", "1", "-n", "10", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, summary["failedConnections"], summary["messages"]), (1, 1, 1))
        self.assertGreater(summary["unanswered"], 0)
        self.assertIn("closed a connection early", err)
        self.assertEqual(len(err.splitlines()), 1)

    async def test_progressBarOnATerminal(self) -> None:
        """
        On a terminal, a live progress bar with the rate goes to stderr; the
        summary still goes to the output.
        """
        port = self.listen(EchoServerFactory())
        out, err = StringIO(), TerminalStream()
        code = await threads.deferToThread(runBench, parse("-d", "0.5", "127.0.0.1", port), out, err)
        self.assertEqual(code, 0)
        self.assertIn("bench", err.getvalue())
        self.assertIn("msg/s", err.getvalue())
        self.assertIn("messages/s", out.getvalue())

    async def test_summary(self) -> None:
        """
        Without C{--json} the summary names messages/s, MB/s, the latency
        percentiles, errors and failed connections.
        """
        port = self.listen(EchoServerFactory(framing="length", suffix=b"SB"))
        code, out, err = await self.bench(
            "-f", "length", "--suffix", "SB", "-c", "2", "-k", "4", "-n", "500", "127.0.0.1", port
        )
        self.assertEqual((code, err), (0, ""))
        for text in [
            "500 in",
            "messages/s",
            "MB/s",
            "p50",
            "p90",
            "p99",
            "max",
            "0 wrong replies",
            "0 failed",
        ]:
            self.assertIn(text, out)

    async def test_duration(self) -> None:
        """
        C{--duration} bounds the run by time and every message still in
        flight at the end is waited for.
        """
        port = self.listen(EchoServerFactory())
        code, out, err = await self.bench("--json", "-d", "0.3", "-k", "4", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, err, summary["unanswered"]), (0, "", 0))
        self.assertGreater(summary["messages"], 0)
        self.assertTrue(0.3 <= summary["seconds"] < 5)

    async def test_processes(self) -> None:
        """
        C{--processes} shares the connections and requests out over several
        processes and adds up what they measured.
        """
        port = self.listen(EchoServerFactory())
        code, out, err = await self.bench("--json", "-p", "2", "-c", "3", "-n", "301", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual((summary["connections"], summary["messages"]), (3, 301))

    async def test_wrongByteCounted(self) -> None:
        """
        A reply with one wrong byte counts as one error; the run still
        reports, and exits 1 with one line on stderr.
        """
        port = self.listen(Factory.forProtocol(CorruptingEcho))
        code, out, err = await self.bench(
            "--json", "-f", "line", "-c", "1", "-k", "5", "-n", "50", "127.0.0.1", port
        )
        summary = json.loads(out)
        self.assertEqual((code, summary["errors"], summary["messages"]), (1, 1, 50))
        self.assertIn("not meaningful", formatSummary(summary))
        self.assertEqual(err, "tcplab bench: 1 wrong reply (do --framing and --suffix match the server's?)\n")

    async def test_wrongSuffixCountsEveryReplyOnce(self) -> None:
        """
        Against a server whose replies are longer than expected (a suffix
        the generator was not told of), every reply is wrong, and no more
        wrong replies are counted than messages were sent.
        """
        port = self.listen(EchoServerFactory(framing="line", suffix=b"SB"))
        code, out, err = await self.bench("--json", "-f", "line", "-c", "2", "-k", "5", "-n", "40", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, summary["messages"], summary["errors"]), (1, 40, 40))
        self.assertEqual(err, "tcplab bench: 40 wrong replies (do --framing and --suffix match the server's?)\n")

    async def test_messagesLongerThanARead(self) -> None:
        """
        Messages longer than the generator's read buffer are checked across
        reads: clean replies count no error, and one wrong byte far into the
        stream (in a later read than the first) counts as one.
        """
        size = str(RECV_SIZE + RECV_SIZE // 2)
        port = self.listen(EchoServerFactory(framing="length", maxLength=2 * RECV_SIZE))
        code, out, err = await self.bench("--json", "-f", "length", "-s", size, "-c", "2", "-n", "6", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, err, summary["messages"], summary["errors"]), (0, "", 6, 0))

        corrupting = Factory.forProtocol(CorruptingEcho)
        # Well inside a 64 KiB block (reads tend to start on those
        # boundaries), past the first read whatever the cuts.
        self.patch(CorruptingEcho, "corruptAt", 2 * RECV_SIZE + 30_000)
        port = self.listen(corrupting)
        code, out, err = await self.bench("--json", "-f", "raw", "-s", size, "-c", "1", "-n", "3", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, summary["messages"], summary["errors"]), (1, 3, 1))
        self.assertEqual(err, "tcplab bench: 1 wrong reply (do --framing and --suffix match the server's?)\n")

    async def test_endpointForms(self) -> None:
        """
        Every form of C{--connect} (short option C{-e}) that its help shows
        reaches the server it names: TCP over IPv4 and IPv6 (C{::1} plain or
        escaped as Twisted escapes colons), and a UNIX socket.
        """
        factory = EchoServerFactory()
        port4, port6 = self.listen(factory), self.listen(factory, interface="::1")
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "echo.sock")
        self.addCleanup(reactor.listenUNIX(path, factory).stopListening)
        for option, endpoint in [
            ("--connect", f"tcp:host=127.0.0.1:port={port4}"),
            ("-e", f"tcp:127.0.0.1:{port4}"),
            ("-e", f"tcp6:host=::1:port={port6}"),
            ("-e", f"tcp6:host=\\:\\:1:port={port6}"),
            ("-e", f"tcp:host=::1:port={port6}"),
            ("-e", f"unix:path={path}"),
            ("-e", f"unix:{path}"),
        ]:
            code, out, err = await self.bench("--json", "-c", "2", "-n", "10", option, endpoint)
            self.assertEqual((code, err, json.loads(out)["messages"]), (0, "", 10), endpoint)

    async def test_rawSuffix(self) -> None:
        """
        In raw framing with a suffix and one message in flight, a reply is
        the message and the suffix: the lesson's server (raw, C{SB}) is
        measured without error, and the summary counts split replies.
        """
        port = self.listen(EchoServerFactory(suffix=b"SB"))
        code, out, err = await self.bench("--suffix", "SB", "-c", "3", "-n", "300", "127.0.0.1", port)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("300 in", out)
        self.assertIn("0 wrong replies, 0 split replies, 0 unanswered", out)

    async def test_splitReplies(self) -> None:
        """
        A message the server read in two pieces comes back as two pieces,
        each with its suffix: the reply is counted as split, never as right
        nor as wrong, the next replies stay in step, and the run exits 1
        saying why.  Whether the generator reads the reply at once, cut
        inside a cut's suffix, or just after it.
        """
        port = self.listen(Factory.forProtocol(SplittingEcho))
        for writeCuts in [(), (11,), (12,), (5, 11, 13)]:
            self.patch(SplittingEcho, "writeCuts", writeCuts)
            code, out, err = await self.bench("--json", "-s", "20", "--suffix", "SB", "-c", "2", "-n", "6", "127.0.0.1", port)
            summary = json.loads(out)
            self.assertEqual(
                (code, summary["messages"], summary["split"], summary["errors"], summary["unanswered"]),
                (1, 6, 6, 0, 0),
                writeCuts,
            )
            self.assertEqual(
                err,
                "tcplab bench: 6 split replies (the server read a message in pieces and suffixed each: "
                "raw framing does not keep messages whole)\n",
            )

    async def test_splitReplyWrong(self) -> None:
        """
        A split reply with a wrong byte is a wrong reply, not a split one.
        """
        self.patch(SplittingEcho, "wrong", True)
        self.patch(SplittingEcho, "writeCuts", (11,))
        port = self.listen(Factory.forProtocol(SplittingEcho))
        code, out, err = await self.bench(
            "--json", "-s", "20", "--suffix", "SB", "-c", "1", "-n", "1", "--timeout", "2", "127.0.0.1", port
        )
        summary = json.loads(out)
        self.assertEqual((code, summary["split"], summary["errors"]), (1, 0, 1))
        self.assertIn("1 wrong reply", err)

    async def test_refused(self) -> None:
        """
        When no connection can be made, one line on stderr and exit code 1,
        without a traceback.
        """
        unused = socket.socket()
        unused.bind(("127.0.0.1", 0))
        port = str(unused.getsockname()[1])
        unused.close()
        code, out, err = await self.bench("-n", "10", "127.0.0.1", port)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("cannot connect to 127.0.0.1:", err)


class ReconnectTests(ServerTestCase):
    """
    C{--reconnect N}: each connection is closed after N messages and a new
    one takes its place; the connection rate and connect latency are
    reported, and every reply is still checked.
    """

    async def test_counts(self) -> None:
        """
        Every message is answered, each connection sends C{N} of them (the
        server sees as many connections as were made), and the JSON summary
        has the connection rate and the connect-latency percentiles.
        """
        # (With several connections, those open at the end share the last
        # messages: one connection at a time makes the counts exact.)
        for connections, reconnect, pipeline, requests, made in [
            ("2", "1", "1", 30, 30),
            ("1", "4", "2", 40, 10),
            ("1", "3", "5", 10, 4),
        ]:
            factory = EchoServerFactory(framing="line")
            port = self.listen(factory)
            code, out, err = await self.bench(
                "--json", "-f", "line", "-c", connections, "-k", pipeline, "--reconnect", reconnect,
                "-n", str(requests), "127.0.0.1", port,
            )
            self.assertEqual((code, err), (0, ""), reconnect)
            summary = json.loads(out)
            self.assertEqual(
                (summary["messages"], summary["connections"], summary["connectionsMade"], summary["reconnect"]),
                (requests, int(connections), made, int(reconnect)),
            )
            self.assertEqual((summary["failedConnections"], summary["errors"], summary["unanswered"]), (0, 0, 0))
            self.assertEqual(factory.served, made)
            self.assertLess(abs(summary["connectionsPerSecond"] / (made / summary["seconds"]) - 1), 1e-3)
            latency = summary["connectLatencyMs"]
            self.assertEqual(set(latency), {"p50", "p90", "p99", "max"})
            self.assertTrue(0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] < 10_000)

    async def test_processes(self) -> None:
        """
        With C{--processes}, the connections made and their latencies are
        added up over the processes.
        """
        factory = EchoServerFactory()
        port = self.listen(factory)
        code, out, err = await self.bench("--json", "-p", "2", "-c", "2", "--reconnect", "1", "-n", "21", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, err, summary["messages"], summary["connectionsMade"]), (0, "", 21, 21))
        self.assertEqual(factory.served, 21)
        self.assertIsNotNone(summary["connectLatencyMs"]["p99"])

    async def test_sourceAddresses(self) -> None:
        """
        C{--bind} connects from each of its addresses in turn: the first
        connections and those that take their places.
        """
        peers: list[str] = []

        class RecordingFactory(EchoServerFactory):
            def buildProtocol(self, addr):
                peers.append(addr.host)
                return super().buildProtocol(addr)

        port = self.listen(RecordingFactory())
        code, out, err = await self.bench(
            "--json", "-c", "2", "--reconnect", "1", "-n", "8", "--bind", "127.0.0.2, 127.0.0.3", "127.0.0.1", port
        )
        self.assertEqual((code, err, json.loads(out)["connectionsMade"]), (0, "", 8))
        self.assertEqual(sorted(set(peers)), ["127.0.0.2", "127.0.0.3"])
        self.assertEqual(peers.count("127.0.0.2"), 4)

    async def test_summary(self) -> None:
        """
        The summary says how many messages each connection sends, how many
        connections were made and how fast, and their connect latency.
        """
        port = self.listen(EchoServerFactory())
        code, out, err = await self.bench("--reconnect", "1", "-c", "2", "-n", "20", "127.0.0.1", port)
        self.assertEqual((code, err), (0, ""))
        self.assertIn("each connection closed after 1 message", out)
        self.assertRegex(out, r"connections   20 made \([\d,]+/s\), 0 failed")
        self.assertRegex(out, r"connect       p50 [\d.]+ ms  p90")

    async def test_withoutReconnect(self) -> None:
        """
        Without C{--reconnect}, the connections are made before the run:
        their connect latency is reported, but no connection rate.
        """
        port = self.listen(EchoServerFactory())
        code, out, err = await self.bench("--json", "-c", "3", "-n", "30", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, summary["reconnect"], summary["connectionsMade"]), (0, None, 3))
        self.assertIsNone(summary["connectionsPerSecond"])
        self.assertIsNotNone(summary["connectLatencyMs"]["max"])

    async def test_framingsAndEndpoints(self) -> None:
        """
        Every framing (raw with a suffix included) and every endpoint kind
        (TCP over IPv4 and IPv6, UNIX sockets) reconnects.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "echo.sock")
        unix = EchoServerFactory(framing="length", suffix=b"SB")
        self.addCleanup(unix.drain)
        self.addCleanup(reactor.listenUNIX(path, unix).stopListening)
        cases = [
            (EchoServerFactory(), "127.0.0.1", []),
            (EchoServerFactory(suffix=b"SB"), "127.0.0.1", ["--suffix", "SB"]),
            (EchoServerFactory(framing="line", suffix=b"SB"), "::1", ["-f", "line", "--suffix", "SB"]),
            (EchoServerFactory(framing="length", suffix=b"SB"), "127.0.0.1", ["-f", "length", "--suffix", "SB"]),
        ]
        for factory, host, options in cases:
            port = self.listen(factory, interface=host)
            kind = "tcp6" if ":" in host else "tcp"
            endpoint = f"{kind}:host={host}:port={port}"
            code, out, err = await self.bench("--json", "-c", "2", "--reconnect", "1", "-n", "12", "-e", endpoint, *options)
            summary = json.loads(out)
            self.assertEqual((code, err, summary["messages"], summary["connectionsMade"]), (0, "", 12, 12), options)
            self.assertEqual(factory.served, 12)
        code, out, err = await self.bench(
            "--json", "-c", "1", "--reconnect", "2", "-n", "12", "-e", f"unix:{path}", "-f", "length", "--suffix", "SB"
        )
        summary = json.loads(out)
        self.assertEqual((code, err, summary["messages"], summary["connectionsMade"]), (0, "", 12, 6))
        self.assertEqual(unix.served, 6)

    async def test_distinctMessages(self) -> None:
        """
        Each new connection starts one message further into the period, so
        that connections open at once do not all send the same message.
        """
        self.patch(FirstMessages, "firsts", [])
        port = self.listen(Factory.forProtocol(FirstMessages))
        code, out, err = await self.bench("--json", "-c", "1", "--reconnect", "1", "-n", "5", "127.0.0.1", port)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(len(set(FirstMessages.firsts)), 5)

    async def test_serverClosesAfterEachReply(self) -> None:
        """
        With C{--reconnect 1}, a server that closes the connection once it
        has answered does nothing wrong.
        """
        port = self.listen(Factory.forProtocol(ClosingEcho))
        code, out, err = await self.bench("--json", "-c", "2", "--reconnect", "1", "-n", "20", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, err, summary["messages"], summary["failedConnections"]), (0, "", 20, 0))

    async def test_serverClosesEarly(self) -> None:
        """
        A server that closes a connection before its last reply: that
        connection counts as failed, its message in flight as unanswered,
        and a new connection takes its place.
        """
        port = self.listen(Factory.forProtocol(ClosingEcho))
        code, out, err = await self.bench(
            "--json", "-c", "1", "-k", "1", "--reconnect", "3", "-n", "9", "127.0.0.1", port
        )
        summary = json.loads(out)
        # Each connection: one reply, then its second message unanswered;
        # the ninth message goes to a fifth connection, answered.
        self.assertEqual(
            (code, summary["messages"], summary["unanswered"], summary["failedConnections"], summary["connectionsMade"]),
            (1, 5, 4, 4, 5),
        )
        self.assertEqual(len(err.splitlines()), 1)
        self.assertIn("4 failed connections", err)

    async def test_wrongByte(self) -> None:
        """
        A wrong byte in a reply counts as one wrong reply, on every
        connection that gets one.
        """
        port = self.listen(Factory.forProtocol(CorruptingEcho))
        # Stream offset 100: the second 64-byte reply of each connection.
        code, out, err = await self.bench(
            "--json", "-c", "1", "--reconnect", "2", "-n", "10", "127.0.0.1", port
        )
        summary = json.loads(out)
        self.assertEqual((code, summary["messages"], summary["errors"], summary["connectionsMade"]), (1, 10, 5, 5))
        self.assertEqual(err, "tcplab bench: 5 wrong replies (do --framing and --suffix match the server's?)\n")

    async def test_serverGone(self) -> None:
        """
        Once the server stops listening, a connection that cannot be made
        is not replaced: the run ends without waiting for its duration, and
        exits 1.
        """
        listening = []

        class StopAfterThree(Factory):
            protocol = ClosingEcho
            served = 0

            def buildProtocol(self, addr):
                self.served += 1
                if self.served == 3:
                    listening[0].stopListening()
                return super().buildProtocol(addr)

        listening.append(reactor.listenTCP(0, StopAfterThree(), interface="127.0.0.1"))
        port = str(listening[0].getHost().port)
        code, out, err = await self.bench("--json", "-c", "1", "--reconnect", "1", "-d", "20", "127.0.0.1", port)
        summary = json.loads(out)
        self.assertEqual((code, summary["messages"]), (1, 3))
        self.assertLess(summary["seconds"], 10)
        self.assertGreaterEqual(summary["failedConnections"], 1)
        self.assertEqual(len(err.splitlines()), 1)


class BenchOptionsTests(SynchronousTestCase):
    """
    L{BenchOptions} checks the command line.
    """

    def command(self, *argv: str) -> tuple[int, str]:
        """
        Run C{tcplab bench ARGV} as the C{tcplab} command does.

        @return: the exit code and what it printed to stderr.
        """
        err = StringIO()
        self.patch(sys, "stderr", err)
        return cli.main(["bench", *argv]), err.getvalue()

    def test_suffixBreakingLineFraming(self) -> None:
        """
        In line framing, a suffix with a newline inside or a trailing C{\\r}
        would make every reply two lines or a C{\\r\\n} ending: it is refused
        in one line with C{checkSuffix}'s reason, as the server refuses it,
        and the command exits 2.
        """
        for suffix, reason in [
            ("a\nb", "a line framing suffix cannot contain a newline (\\n): it would split every reply in two"),
            ("SB\r", "a line framing suffix cannot end in \\r: with the line's \\n it would read as a \\r\\n ending"),
        ]:
            self.assertEqual(self.command("-f", "line", "--suffix", suffix), (2, f"tcplab bench: --suffix: {reason}\n"))

    def test_defaults(self) -> None:
        """
        With no option, 10 connections send one 64-byte raw message at a
        time each to 127.0.0.1:8081 for 5 seconds.
        """
        options = parse()
        self.assertEqual(
            (options["connections"], options["size"], options["pipeline"], options["framing"]),
            (10, 64, 1, "raw"),
        )
        self.assertEqual((options["duration"], options["requests"]), (5.0, None))
        self.assertEqual(str(options["address"]), "127.0.0.1:8081")

    def test_connect(self) -> None:
        """
        C{--connect}, or C{-e}, takes a Twisted client endpoint string; C{-c}
        is still C{--connections}.
        """
        self.assertEqual(str(parse("--connect", "tcp:host=127.0.0.1:port=9000")["address"]), "127.0.0.1:9000")
        options = parse("-e", "tcp:host=127.0.0.1:port=9000", "-c", "3")
        self.assertEqual((str(options["address"]), options["connections"]), ("127.0.0.1:9000", 3))
        self.assertEqual(str(parseEndpoint("unix:path=/tmp/echo.sock")), "/tmp/echo.sock")

    def test_endpointAddresses(self) -> None:
        """
        An IPv6 host may be written plain or with its colons escaped, in
        C{tcp6:} or C{tcp:}; fields may come in any order, a port may follow
        a named host, the endpoint type's case does not matter, and an
        escaped colon belongs to the value.
        """
        for endpoint, family, address in [
            ("tcp6:host=::1:port=9000", socket.AF_INET6, "[::1]:9000"),
            ("tcp6:host=\\:\\:1:port=9000", socket.AF_INET6, "[::1]:9000"),
            ("tcp6:port=9000:host=::1", socket.AF_INET6, "[::1]:9000"),
            ("tcp6:host=0\\:0::1:port=9000", socket.AF_INET6, "[::1]:9000"),
            ("tcp:host=::1:port=9000", socket.AF_INET6, "[::1]:9000"),
            ("tcp:host=127.0.0.1:9000", socket.AF_INET, "127.0.0.1:9000"),
            ("TCP:host=127.0.0.1:port=9000", socket.AF_INET, "127.0.0.1:9000"),
            ("unix:/tmp/a\\:b", socket.AF_UNIX, "/tmp/a:b"),
        ]:
            parsed = parseEndpoint(endpoint)
            self.assertEqual((parsed.family, str(parsed)), (family, address), endpoint)

    def test_connectHelp(self) -> None:
        """
        The help of C{--connect} lists the endpoint forms that work, each of
        which parses, and says that TLS is not supported.
        """
        [text] = [option[3] for option in BenchOptions.optParameters if option[0] == "connect"]
        forms = re.findall(r"\b(?:tcp6?|unix):[^\s,;()]+", text)
        self.assertEqual(
            sorted(forms), ["tcp6:host=H:port=P", "tcp:H:P", "tcp:host=H:port=P", "unix:FILE", "unix:path=FILE"]
        )
        for form in forms:
            host = "::1" if form.startswith("tcp6") else "127.0.0.1"
            endpoint = form.replace("H", host).replace("P", "9000").replace("FILE", "/tmp/echo.sock")
            self.assertIn(str(parse("--connect", endpoint)["address"]), ("127.0.0.1:9000", "[::1]:9000", "/tmp/echo.sock"))
        self.assertIn("::1", text)
        self.assertIn("\\:\\:1", text)
        self.assertIn("No TLS", text)

    def test_rejected(self) -> None:
        """
        Contradictory or impossible options are usage errors.
        """
        for argv, expected in [
            (["--suffix", "SB", "-k", "2"], "--suffix in raw framing needs --pipeline 1: the server suffixes each read"),
            (["-d", "1", "-n", "5"], "not both"),
            (["-c", "0"], "--connections: must be at least 1, got 0"),
            (["--reconnect", "0"], "--reconnect: must be at least 1, got 0"),
            (["-e", "unix:/tmp/echo.sock", "--bind", "127.0.0.1"], "--bind: a UNIX socket has no source address"),
            (["--bind", "::1"], "--bind: cannot connect from '::1' to an IPv4 address"),
            (["--bind", "192.0.2.1"], "--bind: cannot connect from '192.0.2.1' to an IPv4 address"),
            (["-k", "many"], "--pipeline: invalid number 'many'"),
            (["-c", "2", "-p", "3"], "--processes must not exceed --connections"),
            (["--size", str(2**40)], "--size must be at most"),
            (["--timeout", "0"], "--timeout must be more than 0"),
            (["--connect", "ssl:host=127.0.0.1:port=1"], "endpoints are not supported: bench does not do TLS"),
            (["-e", "tls:127.0.0.1:1"], "endpoints are not supported: bench does not do TLS"),
            (["-e", "udp:127.0.0.1:1"], "cannot benchmark over 'udp' endpoints: use tcp, tcp6 or unix"),
            (["--connect", "tcp:host=127.0.0.1"], "needs a port (port=...)"),
            (["-e", "tcp:host=:port=1"], "needs a host (host=...)"),
            (["-e", "tcp:host=127.0.0.1:port=0"], "cannot connect to port 0"),
            (["-e", "tcp:host=127.0.0.1:port=1:bindAddress=127.0.0.1"], "bindAddress= is not supported (only host= port=)"),
            (["-e", "tcp:127.0.0.1:1:2"], "too many fields"),
            (["-e", "tcp:host=127.0.0.1:host=127.0.0.2:port=1"], "host= twice"),
            (["-e", "tcp6:host=127.0.0.1:port=1"], "cannot resolve '127.0.0.1'"),
            (["-e", "unix:"], "needs a path (path=...)"),
            (["--connect", "tcp:host=127.0.0.1:port=1", "127.0.0.1", "1"], "not both"),
            (["127.0.0.1", "70000"], "out of range"),
            (["127.0.0.1", "0"], "port 0"),
            (["-d", "0"], "--duration must be more than 0"),
            (["127.0.0.1", "1", "extra"], "unexpected argument 'extra'"),
        ]:
            error = self.assertRaises(usage.UsageError, parse, *argv)
            self.assertIn(expected, str(error), argv)


class LoadPlanTests(SynchronousTestCase):
    """
    L{LoadPlan} builds the request and expected-reply streams.
    """

    def test_lengths(self) -> None:
        """
        Requests and replies are framed: a newline for lines, a 4-byte
        header for length framing, the suffix inside the reply.
        """
        self.assertEqual(
            (LoadPlan("line", 64, b"SB").requestLength, LoadPlan("line", 64, b"SB").replyLength), (65, 67)
        )
        self.assertEqual(
            (LoadPlan("length", 10, b"SB").requestLength, LoadPlan("length", 10, b"SB").replyLength), (14, 16)
        )
        self.assertEqual((LoadPlan("raw", 7).requestLength, LoadPlan("raw", 7).replyLength), (7, 7))

    def test_rawSuffixMessages(self) -> None:
        """
        In raw framing with a suffix, no message holds the suffix's first
        byte (so that a cut is always recognised), and the messages of a
        period still differ.
        """
        for suffix in [b"a", b"1x", b":", b"SB"]:
            plan = LoadPlan("raw", 40, suffix)
            self.assertTrue(plan.splittable)
            messages = [plan.sendBuffer[index * 40 : (index + 1) * 40] for index in range(plan.period)]
            self.assertNotIn(suffix[:1], b"".join(messages), suffix)
            self.assertEqual(len(set(messages)), plan.period)
            self.assertEqual(plan.expected[: 40 + len(suffix)], messages[0] + suffix)
        self.assertFalse(LoadPlan("raw", 40).splittable)
        self.assertFalse(LoadPlan("line", 40, b"SB").splittable)

    def test_distinctMessages(self) -> None:
        """
        The messages of a period differ, so a reordered reply is wrong.
        """
        plan = LoadPlan("line", 16, b"", pipeline=100)
        messages = plan.sendBuffer[: plan.sendPeriod].split(b"\n")[:-1]
        self.assertEqual(len(messages), 100)
        self.assertEqual(len(set(messages)), 100)

    def test_expectedAt(self) -> None:
        """
        The expected reply bytes at any offset follow the periodic reply stream.
        """
        plan = LoadPlan("line", 5, b"SB")
        stream = plan.expected[: plan.replyPeriod] * 3
        offset = plan.replyPeriod + 3
        self.assertEqual(plan.expectedAt(offset, 20), stream[offset : offset + 20])

    def test_percentile(self) -> None:
        """
        Percentiles come from the histogram of microseconds, in milliseconds.
        """
        result = BenchResult(latencies={100: 50, 200: 40, 5000: 10})
        self.assertEqual(
            [result.percentile(0.5), result.percentile(0.9), result.percentile(0.99)], [0.1, 0.2, 5.0]
        )
        self.assertIsNone(BenchResult().percentile(0.5))


class SummaryTests(SynchronousTestCase):
    """
    The summary and the problem line count with thousands separators and
    nouns in the right number.
    """

    def test_largeCounts(self) -> None:
        """
        Counts of thousands are written C{1,234}.
        """
        result = BenchResult(
            connections=1_200, failedConnections=1_001, messages=1_234_567, errors=1_234, unanswered=2_000,
            seconds=2.0, failures=["the server closed a connection early"],
        )
        summary = formatSummary(result.summary(LoadPlan("line", 64, pipeline=1_000)))
        for text in [
            "1,200 connections x 1,000 in flight",
            "1,234,567 in 2.00 s",
            "1,234 wrong replies, 2,000 unanswered",
            "1,001 failed",
        ]:
            self.assertIn(text, summary)
        self.assertEqual(
            formatProblems(result),
            "1,234 wrong replies (do --framing and --suffix match the server's?); 2,000 unanswered messages; "
            "1,001 failed connections (the server closed a connection early)",
        )

    def test_singular(self) -> None:
        """
        One of a thing is singular.
        """
        result = BenchResult(
            connections=1, failedConnections=1, messages=1, errors=1, unanswered=1, seconds=1.0,
            failures=["connection lost: Connection reset by peer"],
        )
        summary = formatSummary(result.summary(LoadPlan("line", 64)))
        self.assertIn("1 connection x 1 in flight", summary)
        self.assertIn("1 wrong reply, 1 unanswered", summary)
        self.assertEqual(
            formatProblems(result),
            "1 wrong reply (do --framing and --suffix match the server's?); 1 unanswered message; "
            "1 failed connection (connection lost: Connection reset by peer)",
        )
        self.assertIsNone(formatProblems(BenchResult(connections=1, messages=1, seconds=1.0)))
