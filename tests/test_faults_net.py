"""
Every fault measured from a plain socket client against a real server:
time, number of reads, EOF, reset, drop ratio.  Bounds are generous (the
machine is shared): a 0.3 s delay is at least 0.3 s and under 3 s.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import tempfile
import time
from pathlib import Path

import trustme
from twisted.trial.unittest import SynchronousTestCase

from tcplab.framing import encode
from tcplab.testing import runningEchoServer
from tests.serverprocess import ServerProcess


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=10)


def readAll(client: socket.socket, size: int) -> list[bytes]:
    """
    @return: the reads that bring C{size} bytes, each as it came.
    """
    reads: list[bytes] = []
    while sum(map(len, reads)) < size:
        data = client.recv(65536)
        if not data:
            break
        reads.append(data)
    return reads


def timed(action) -> tuple[object, float]:
    started = time.monotonic()
    result = action()
    return result, time.monotonic() - started


class DelayTests(SynchronousTestCase):
    """
    C{delay} and C{jitter}.
    """

    def test_delay(self) -> None:
        """
        Each reply comes at least C{delay} seconds after its request.
        """
        with runningEchoServer(delay=0.3) as server, connect(server.address) as client:
            for message in (b"one", b"two"):
                client.sendall(message)
                reply, elapsed = timed(lambda: client.recv(100))
                self.assertEqual(reply, message)
                self.assertTrue(0.3 <= elapsed < 3, elapsed)

    def test_jitterInOrder(self) -> None:
        """
        With jitter, pipelined replies still come in order, each between
        C{delay} and C{delay + jitter} (plus slack) late.
        """
        lines = b"".join(b"%d\n" % index for index in range(30))
        with runningEchoServer(framing="line", delay=0.1, jitter=0.4, seed=5) as server, connect(server.address) as client:
            started = time.monotonic()
            for index in range(30):
                client.sendall(b"%d\n" % index)
                time.sleep(0.01)
            first = client.recv(100)
            self.assertGreaterEqual(time.monotonic() - started, 0.1)
            reply = first + b"".join(readAll(client, len(lines) - len(first)))
            self.assertEqual(reply, lines)
            self.assertLess(time.monotonic() - started, 5)

    def test_udpDelay(self) -> None:
        """
        UDP replies come C{delay} seconds late.
        """
        with runningEchoServer(udp=True, delay=0.3) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"ping", server.udpAddress)
            (reply, _), elapsed = timed(lambda: udp.recvfrom(100))
            self.assertEqual(reply, b"ping")
            self.assertTrue(0.3 <= elapsed < 3, elapsed)


class ChunkTests(SynchronousTestCase):
    """
    C{chunk} and C{chunkDelay}.
    """

    def test_pieces(self) -> None:
        """
        A 100-byte reply in pieces of 10 bytes, 0.05 s apart, takes many
        reads and at least 0.45 s.
        """
        with runningEchoServer(chunk=10, chunkDelay=0.05) as server, connect(server.address) as client:
            client.sendall(bytes(range(100)))
            reads, elapsed = timed(lambda: readAll(client, 100))
            self.assertEqual(b"".join(reads), bytes(range(100)))
            self.assertGreaterEqual(len(reads), 5)
            self.assertLessEqual(min(map(len, reads)), 10)
            self.assertTrue(0.45 <= elapsed < 5, elapsed)

    def test_linesCut(self) -> None:
        """
        In line framing the pieces cut lines apart: a client must reassemble.
        """
        with runningEchoServer(framing="line", suffix="SB", chunk=3, chunkDelay=0.05) as server, connect(server.address) as client:
            client.sendall(b"hello\n")
            reads = readAll(client, 8)
            self.assertEqual(b"".join(reads), b"helloSB\n")
            self.assertGreater(len(reads), 1)

    def test_overTLS(self) -> None:
        """
        Faults apply over TLS too: each piece is a TLS record of its own.
        """
        authority = trustme.CA()
        certificate = authority.issue_cert("localhost")
        folder = Path(tempfile.mkdtemp(prefix="tcplab-"))
        self.addCleanup(shutil.rmtree, folder)
        key, chain = folder / "key.pem", folder / "chain.pem"
        certificate.private_key_pem.write_to_path(str(key))
        certificate.cert_chain_pems[0].write_to_path(str(chain))
        listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={chain}"
        with runningEchoServer(listen=listen, chunk=4, chunkDelay=0.05) as server:
            [listener] = server.listeners
            context = ssl.create_default_context()
            authority.configure_trust(context)
            with connect((listener["host"], listener["port"])) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as client:
                    client.sendall(b"0123456789ab")
                    reads = readAll(client, 12)
            self.assertEqual(b"".join(reads), b"0123456789ab")
            self.assertGreater(len(reads), 1)


class CloseAndResetTests(SynchronousTestCase):
    """
    C{closeAfter} and C{resetAfter}.
    """

    def test_closeAfter(self) -> None:
        """
        After two replies the client reads EOF, not a reset.
        """
        with runningEchoServer(closeAfter=2) as server, connect(server.address) as client:
            for message in (b"one", b"two"):
                client.sendall(message)
                self.assertEqual(client.recv(100), message)
            client.sendall(b"three")
            self.assertEqual(client.recv(100), b"")

    def test_closeAfterFrames(self) -> None:
        """
        In length framing, three pipelined frames get two replies, then EOF.
        """
        with runningEchoServer(framing="length", closeAfter=2) as server, connect(server.address) as client:
            client.sendall(b"".join(encode("length", message) for message in (b"a", b"b", b"c")))
            reply = b"".join(readAll(client, 100))
            self.assertEqual(reply, encode("length", b"a") + encode("length", b"b"))

    def test_closeAfterZero(self) -> None:
        """
        C{closeAfter=0}: accepted, then closed at once.
        """
        with runningEchoServer(closeAfter=0) as server, connect(server.address) as client:
            self.assertEqual(client.recv(100), b"")

    def test_resetAfter(self) -> None:
        """
        After one reply the client's next read fails with a connection reset.
        """
        with runningEchoServer(resetAfter=1) as server, connect(server.address) as client:
            client.sendall(b"one")
            self.assertEqual(client.recv(100), b"one")
            client.sendall(b"two")
            self.assertRaises(ConnectionResetError, lambda: [client.recv(100) for _ in range(10)])

    def test_resetAfterLargeReply(self) -> None:
        """
        The reset waits until the last reply has left: a client that reads
        slowly, with a small receive buffer, still gets a whole 4 MiB reply
        before the reset (which would destroy what its kernel has not taken).
        """
        size = 4 * 1024 * 1024
        with runningEchoServer(framing="line", maxLength=size, resetAfter=1) as server, socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.settimeout(10)
            client.connect(server.address)
            client.sendall(b"x" * size + b"\n")
            time.sleep(0.5)
            received = 0
            try:
                while chunk := client.recv(65536):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            else:
                self.fail("no reset")
            self.assertEqual(received, size + 1)

class CompositionTests(SynchronousTestCase):
    """
    Faults compose with the limits and with every listener kind.
    """

    def test_limitsWithDelay(self) -> None:
        """
        A connection over the limit is still refused, and told why after the delay.
        """
        with runningEchoServer(framing="line", maxConnections=1, delay=0.2) as server:
            with connect(server.address) as first, connect(server.address) as second:
                first.sendall(b"hi\n")
                self.assertEqual(first.recv(100), b"hi\n")
                self.assertTrue(second.recv(100).startswith(b"error: server busy"))

    def test_unixListener(self) -> None:
        """
        On a UNIX socket, C{closeAfter} closes after the reply.
        """
        folder = Path(tempfile.mkdtemp(prefix="tcplab-"))
        self.addCleanup(shutil.rmtree, folder)
        path = str(folder / "echo.sock")
        with runningEchoServer(listen=f"unix:{path}", closeAfter=1, suffix="SB") as server, socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(path)
            client.sendall(b"hi")
            self.assertEqual(b"".join(readAll(client, 100)), b"hiSB")
            self.assertEqual(server.stats().served, 1)

    def test_proxyListener(self) -> None:
        """
        Behind a PROXY-protocol listener the fault layer sees the connection
        after its header, and the log names the client's address.
        """
        with runningEchoServer(listen="haproxy:tcp:0:interface=127.0.0.1", delay=0.2, logMessages=True) as server:
            with connect(server.address) as client:
                client.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nhello")
                reply, elapsed = timed(lambda: client.recv(100))
                self.assertEqual(reply, b"hello")
                self.assertTrue(0.2 <= elapsed < 3, elapsed)
            self.assertIn("message from 192.0.2.7:5555: hello", server.log())


class DropTests(SynchronousTestCase):
    """
    C{udpDrop}.
    """

    def answered(self, **faults: object) -> set[int]:
        """
        Send 200 numbered datagrams; @return: the numbers answered.
        """
        with runningEchoServer(udp=True, **faults) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            replies: set[int] = set()
            udp.settimeout(0.02)
            for index in range(200):
                udp.sendto(b"%d" % index, server.udpAddress)
                try:
                    replies.add(int(udp.recv(100)))
                except TimeoutError:
                    pass
            udp.settimeout(1)
            try:
                while True:
                    replies.add(int(udp.recv(100)))
            except TimeoutError:
                pass
            self.assertEqual(server.datagramStats().dropped, 200 - len(replies))
        return replies

    def test_dropRatio(self) -> None:
        """
        About 30% of the datagrams go unanswered, and with a seed, the very
        same ones on another server.
        """
        first = self.answered(udpDrop=0.3, seed=11)
        self.assertTrue(100 <= len(first) <= 180, len(first))
        self.assertEqual(self.answered(udpDrop=0.3, seed=11), first)


class DrainTests(SynchronousTestCase):
    """
    Faults and stopping, with C{twist tcplab} itself.
    """

    def test_delayedReplyDuringDrain(self) -> None:
        """
        On SIGTERM, a reply delayed by C{--delay 1} still goes out, then the
        connection closes and the server exits 0.
        """
        server = ServerProcess("--delay", "1", "--log-messages")
        self.addCleanup(server.stop)
        with connect(("127.0.0.1", server.port)) as client:
            started = time.monotonic()
            client.sendall(b"in flight")
            server.waitForLog("message from")
            server.process.send_signal(signal.SIGTERM)
            self.assertEqual(b"".join(readAll(client, 100)), b"in flight")
            self.assertTrue(1 <= time.monotonic() - started < 8)
        self.assertEqual(server.wait(), 0)
        self.assertIn("tcplab stopped: served 1 connection", server.log())

    def test_everyFaultIsAnOption(self) -> None:
        """
        C{twist tcplab --help} lists every fault.
        """
        from tests.serverprocess import twist

        help = twist("--help").stdout
        for option in ("--delay", "--jitter", "--chunk=", "--chunk-delay", "--close-after", "--reset-after", "--udp-drop", "--seed"):
            self.assertIn(option, help)
