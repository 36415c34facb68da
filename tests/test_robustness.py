"""
The server under hostile and unlucky clients, over real sockets on 127.0.0.1:
half-close, slow readers, garbage, resets, connection floods, and SIGTERM in
the middle of an echo.  Each test is bounded in bytes, connections and time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import threading
import time

import psutil
from twisted.trial.unittest import SynchronousTestCase

from tcplab.framing import encode
from tests.serverprocess import ServerProcess
from tests.streams import FLOODS, MiB


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def readAll(sock: socket.socket) -> bytes:
    """
    Read until EOF.
    """
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def readExactly(sock: socket.socket, size: int) -> bytes:
    """
    Read C{size} bytes, or until EOF if it comes first.
    """
    received = b""
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        if not chunk:
            break
        received += chunk
    return received


def sendInBackground(sock: socket.socket, data: bytes, halfClose: bool = True) -> threading.Thread:
    """
    Send C{data} from a thread (the server's echo must be read meanwhile),
    then shut down the write side.
    """

    def send() -> None:
        sock.sendall(data)
        if halfClose:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def pingPong(port: int, message: bytes = b"ping") -> bytes:
    with connect(port) as sock:
        sock.sendall(message)
        return sock.recv(1024)


class ServerProcessTestCase(SynchronousTestCase):
    """
    Base: start a server process per test, and check its log at the end.
    """

    serverArgs: tuple[str, ...] = ()

    def setUp(self) -> None:
        self.server = ServerProcess(*self.serverArgs)
        self.addCleanup(lambda: self.server.stop())

    def assertCleanLog(self) -> None:
        """
        Stop the server and check that nothing unexpected was logged.
        """
        self.server.stop()
        output = self.server.log()
        for bad in ("Traceback", "Unhandled", "CRITICAL", "#critical]", "#error]"):
            self.assertNotIn(bad, output)


class HalfCloseTests(ServerProcessTestCase):
    """
    A client that sends and then shuts down its write side gets its entire
    echo, then EOF, in every framing.
    """

    serverArgs = ("--suffix", "SB", "--max-length", str(MiB))

    def test_raw(self) -> None:
        """
        Raw: 4 MiB come back, each read with its suffix; stripping the
        suffixes leaves exactly what was sent.
        """
        data = os.urandom(4 * MiB).replace(b"SB", b"sb")
        with connect(self.server.port) as sock:
            sender = sendInBackground(sock, data)
            received = readAll(sock)
            sender.join(10)
        self.assertEqual(received.replace(b"SB", b""), data)

    def test_line(self) -> None:
        """
        Line: every line is answered, including an unterminated last one.
        """
        self.server.stop()
        self.server = ServerProcess("--framing", "line", "--suffix", "SB")
        lines = [b"%d" % i * 50 for i in range(20000)]
        data = b"\n".join(lines)
        with connect(self.server.port) as sock:
            sender = sendInBackground(sock, data)
            received = readAll(sock)
            sender.join(10)
        self.assertEqual(received, b"".join(line + b"SB\n" for line in lines))

    def test_length(self) -> None:
        """
        Length: every frame is answered.
        """
        self.server.stop()
        self.server = ServerProcess("--framing", "length", "--suffix", "SB")
        payloads = [os.urandom(size) for size in range(0, 60000, 97)]
        with connect(self.server.port) as sock:
            sender = sendInBackground(sock, b"".join(encode("length", p) for p in payloads))
            received = readAll(sock)
            sender.join(10)
        self.assertEqual(received, b"".join(encode("length", p + b"SB") for p in payloads))


class SlowReaderTests(SynchronousTestCase):
    """
    A client that sends without reading cannot grow the server's memory, and
    does not stop it serving others, in any framing.
    """

    def assertMemoryBounded(self, framing: str, chunk: bytes, ping: bytes, pong: bytes) -> None:
        """
        While one client pushes C{chunk} after C{chunk}, up to 256 MiB,
        without reading a byte, the server's RSS grows by less than 16 MiB
        and other clients are answered.  The push ends once the server has
        taken nothing for 2 s.
        """
        server = ServerProcess("--framing", framing, "--suffix", "SB")
        self.addCleanup(server.stop)
        process = psutil.Process(server.process.pid)
        before = process.memory_info().rss
        pushed, stalledSince = 0, None
        deadline = time.monotonic() + 10
        with connect(server.port) as hog:
            hog.settimeout(0.2)
            while pushed < 256 * MiB and time.monotonic() < deadline:
                try:
                    pushed += hog.send(chunk)
                    stalledSince = None
                except TimeoutError:
                    # The server has stopped reading: check others are served.
                    self.assertEqual(pingPong(server.port, ping), pong)
                    stalledSince = stalledSince or time.monotonic()
                    if time.monotonic() - stalledSince > 2:
                        break
            grown = process.memory_info().rss - before
        self.assertLess(grown, 16 * MiB, f"{framing}: RSS grew {grown / MiB:.1f} MiB after {pushed / MiB:.0f} MiB pushed")
        self.assertLess(pushed, 256 * MiB, f"{framing}: the server never pushed back")
        server.stop()
        self.assertNotIn("Traceback", server.log())

    def test_raw(self) -> None:
        """
        Raw: 1 MiB chunks.
        """
        self.assertMemoryBounded("raw", FLOODS["raw"], b"ping", b"pingSB")

    def test_line(self) -> None:
        """
        Line: 1 KiB lines, sent 1 MiB at a time.
        """
        self.assertMemoryBounded("line", FLOODS["line"], b"ping\n", b"pingSB\n")

    def test_length(self) -> None:
        """
        Length: 16 KiB frames, sent 1 MiB at a time.
        """
        self.assertMemoryBounded("length", FLOODS["length"], encode("length", b"ping"), encode("length", b"pingSB"))


class HostileInputTests(ServerProcessTestCase):
    """
    Garbage, resets and connection floods leave the server serving, with no
    unhandled error in its log.
    """

    serverArgs = ("--framing", "length", "--max-length", "1000")

    def test_hugeLengthHeader(self) -> None:
        """
        A header announcing 4 GiB closes the connection at once; nothing of
        the announced size is buffered.
        """
        with connect(self.server.port) as sock:
            sock.sendall(struct.pack(">I", 2**32 - 1) + b"a few bytes")
            self.assertEqual(readAll(sock), b"")
        self.assertEqual(pingPong(self.server.port, encode("length", b"hi")), encode("length", b"hi"))
        self.assertCleanLog()

    def test_garbageResetsAndFloods(self) -> None:
        """
        Random bytes, resets in the middle of a message, and rapid
        connect/close cycles are all survived.
        """
        for _ in range(50):
            with connect(self.server.port) as sock:
                sock.sendall(os.urandom(2000))
        for _ in range(50):
            sock = connect(self.server.port)
            sock.sendall(encode("length", b"x" * 900)[:500])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        for _ in range(300):
            connect(self.server.port).close()
        self.assertEqual(pingPong(self.server.port, encode("length", b"hi")), encode("length", b"hi"))
        self.assertCleanLog()


class LimitsTests(ServerProcessTestCase):
    """
    Connection limits over real sockets.
    """

    serverArgs = ("--framing", "line", "--max-connections", "3")

    def test_excessConnectionRefused(self) -> None:
        """
        The fourth connection gets one error line and is closed; the first
        three are still served.
        """
        admitted = [connect(self.server.port) for _ in range(3)]
        try:
            for sock in admitted:
                sock.sendall(b"hi\n")
                self.assertEqual(sock.recv(100), b"hi\n")
            with connect(self.server.port) as extra:
                self.assertEqual(readAll(extra), b"error: server busy (3 connections); try again later\n")
            admitted[0].sendall(b"still\n")
            self.assertEqual(admitted[0].recv(100), b"still\n")
        finally:
            for sock in admitted:
                sock.close()


class GracefulShutdownTests(ServerProcessTestCase):
    """
    SIGTERM stops accepting, finishes every echo, logs a summary, exits 0.
    """

    def test_sigtermMidEcho(self) -> None:
        """
        SIGTERM in the middle of an 8 MiB echo: every byte is still delivered,
        then EOF; the server logs its summary and exits 0.
        """
        self._signalMidEcho(signal.SIGTERM)

    def test_sighupMidEcho(self) -> None:
        """
        SIGHUP (the terminal went away) drains exactly as SIGTERM does; it
        used to kill the server at once, with exit status 129.
        """
        self._signalMidEcho(signal.SIGHUP)

    def _signalMidEcho(self, number: int) -> None:
        data = os.urandom(8 * MiB)
        received = bytearray()
        with connect(self.server.port) as sock:
            sender = sendInBackground(sock, data, halfClose=False)
            while len(received) < MiB and (chunk := sock.recv(1 << 16)):
                received += chunk
            os.kill(self.server.process.pid, number)
            sock.settimeout(15)
            while len(received) < len(data):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                received += chunk
            sender.join(10)
            self.assertEqual(bytes(received), data)
            self.assertEqual(readAll(sock), b"")
        self.assertEqual(self.server.wait(20), 0)
        output = self.server.log()
        self.assertIn(f"received {signal.Signals(number).name}: finishing open connections", output)
        self.assertIn(f"tcplab stopped: served 1 connection (0 refused, 0 open); {len(data):,} bytes in, {len(data):,} bytes out", output)
        self.assertNotIn("Traceback", output)

    def test_secondSignalAborts(self) -> None:
        """
        A second SIGTERM while a connection that never reads is being
        drained aborts it at once: the server exits 0 well before the drain
        timeout, with no error logged.
        """
        self.server.stop()
        self.server = ServerProcess("--drain-timeout", "60")
        with connect(self.server.port) as hog:
            hog.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                while True:
                    hog.send(b"x" * MiB)
            os.kill(self.server.process.pid, signal.SIGTERM)
            self.server.waitForLog("finishing open connections")
            os.kill(self.server.process.pid, signal.SIGTERM)
            self.assertEqual(self.server.wait(20), 0)
        output = self.server.log()
        self.assertIn("again: aborting open connections", output)
        self.assertIn("tcplab stopped: served 1 connection ", output)
        for bad in ("Traceback", "Unhandled", "#critical]", "#error]"):
            self.assertNotIn(bad, output)
