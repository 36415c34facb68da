"""
The echo server over real TCP sockets on 127.0.0.1: many clients at once, every
byte checked.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    UNIXServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tcplab.framing import encode
from tcplab.server import EchoProtocol, EchoServerFactory
from tests.streams import cutAt

CLIENTS = 200


class ExpectingClient(Protocol):
    """
    Sends C{chunks}, then fires C{done} with everything received once
    C{expected} bytes have arrived.
    """

    def __init__(self, chunks: list[bytes], expected: int) -> None:
        self.chunks = chunks
        self.expected = expected
        self.received: list[bytes] = []
        self.count = 0
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        for chunk in self.chunks:
            self.transport.write(chunk)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.count += len(data)
        if self.count >= self.expected:
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.done.callback(b"".join(self.received))


def plan(framing: str, suffix: bytes, rng: random.Random) -> tuple[list[bytes], bytes]:
    """
    Random messages for one client: the chunks to send and the exact reply.
    """
    messages = [
        # A line's last \r would belong to its ending, so none ends in \r.
        bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))).replace(b"\n", b"").rstrip(b"\r")
        for _ in range(rng.randrange(1, 20))
    ]
    if framing == "raw":
        # Raw replies depend on how reads are cut: send one chunk, await its echo.
        message = b"".join(messages) or b"x"
        return [message], message + suffix
    stream = b"".join(encode(framing, m) for m in messages)
    chunks = [chunk for chunk in cutAt(stream, rng.sample(range(len(stream) + 1), min(5, len(stream) + 1))) if chunk]
    return chunks, b"".join(encode(framing, m + suffix) for m in messages)


class ConcurrentClientsTests(TestCase):
    """
    Many simultaneous clients, each in a framing, all answered exactly.
    """

    timeout = 60

    async def _serveMany(self, framing: str) -> None:
        suffix = b"SB"
        factory = EchoServerFactory(framing=framing, suffix=suffix)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        rng = random.Random(framing)
        clients, expected = [], []
        for _ in range(CLIENTS):
            chunks, reply = plan(framing, suffix, rng)
            client = ExpectingClient(chunks, len(reply))
            clients.append(endpoint.connect(Factory.forProtocol(lambda c=client: c)))
            expected.append((client, reply))
        await gatherResults(clients)
        replies = await gatherResults([client.done for client, _ in expected])
        for (_, reply), received in zip(expected, replies, strict=True):
            self.assertEqual(received, reply)
        await port.stopListening()
        stats = await factory.drain()
        self.assertEqual((stats.served, stats.open), (CLIENTS, 0))
        self.assertEqual(stats.bytesOut, sum(len(reply) for _, reply in expected))

    def test_raw(self) -> Deferred[None]:
        """
        200 clients at once in the raw framing.
        """
        return Deferred.fromCoroutine(self._serveMany("raw"))

    def test_line(self) -> Deferred[None]:
        """
        200 clients at once in the line framing.
        """
        return Deferred.fromCoroutine(self._serveMany("line"))

    def test_length(self) -> Deferred[None]:
        """
        200 clients at once in the length framing.
        """
        return Deferred.fromCoroutine(self._serveMany("length"))


class DirectSendTests(TestCase):
    """
    Replies go straight to the socket only on plain TCP connections.
    """

    timeout = 30

    async def _directFlags(self, serverEndpoint, connectTo) -> list[bool]:
        """
        Echo 300 KiB over one connection; return whether each server-side
        protocol took the direct path.
        """
        seen: list[bool] = []
        original = EchoServerFactory.admit

        def record(factory: EchoServerFactory, protocol) -> str | None:
            seen.append(protocol._direct)
            return original(factory, protocol)

        self.patch(EchoServerFactory, "admit", record)
        factory = EchoServerFactory()
        port = await serverEndpoint.listen(factory)
        payload = bytes(range(256)) * 1200
        client = ExpectingClient([payload], len(payload))
        await connectTo(port).connect(Factory.forProtocol(lambda: client))
        self.assertEqual(await client.done, payload)
        await port.stopListening()
        await factory.drain()
        return seen

    async def test_tcpSendsDirectly(self) -> None:
        """
        On TCP the direct path is taken.
        """
        seen = await self._directFlags(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            lambda port: TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        self.assertEqual(seen, [True])

    async def test_unixUsesWrite(self) -> None:
        """
        On a UNIX socket replies go through the transport's C{write()}.
        """
        # (trial's mktemp() would make a folder in the work tree under pytest.)
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "echo.sock")
        seen = await self._directFlags(UNIXServerEndpoint(reactor, path), lambda port: UNIXClientEndpoint(reactor, path))
        self.assertEqual(seen, [False])

    async def test_socketFullFallsBackToWrite(self) -> None:
        """
        When the socket takes only part of a reply (the client is not
        reading), the rest is queued through C{write()}, reading pauses, and
        once the client reads again every byte arrives, in order.
        """
        queued: list[bool] = []
        original = EchoProtocol._send

        def send(protocol: EchoProtocol, data: bytes) -> None:
            direct = protocol._direct and not protocol.transport.dataBuffer and not protocol.transport._tempDataLen
            original(protocol, data)
            if direct:
                queued.append(bool(protocol.transport.dataBuffer or protocol.transport._tempDataLen))

        self.patch(EchoProtocol, "_send", send)
        pauses: list[EchoProtocol] = []
        pause = EchoProtocol.pauseProducing
        self.patch(EchoProtocol, "pauseProducing", lambda protocol: (pauses.append(protocol), pause(protocol)))
        factory = EchoServerFactory()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        payload = random.Random(7).randbytes(16 * 1024 * 1024)
        client = ExpectingClient([payload], len(payload))
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(Factory.forProtocol(lambda: client))
        client.transport.pauseProducing()
        await deferLater(reactor, 0.5)
        client.transport.resumeProducing()
        self.assertEqual(await client.done, payload)
        await factory.drain()
        self.assertIn(True, queued, "no direct send was ever cut short")
        self.assertTrue(pauses, "reading never paused")


class HalfClosingClient(Protocol):
    """
    Sends C{payload}, shuts its write side, and fires C{done} with
    everything received once the server closes the connection.
    """

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason) -> None:
        self.done.callback(b"".join(self.received))


class HalfCloseTests(TestCase):
    """
    A client that shuts its write side down gets its whole echo, then EOF.
    """

    timeout = 30

    def setUp(self) -> None:
        self.closedDuringReadLost: list[bool] = []
        self.timers: list[EchoProtocol] = []
        readConnectionLost, abortLater = EchoProtocol.readConnectionLost, EchoProtocol._abortLater

        def recordClose(protocol: EchoProtocol) -> None:
            readConnectionLost(protocol)
            self.closedDuringReadLost.append(protocol.factory is not None and protocol not in protocol.factory.connections)

        def recordTimer(protocol: EchoProtocol, timeout: float | None = None) -> None:
            self.timers.append(protocol)
            abortLater(protocol, timeout)

        self.patch(EchoProtocol, "readConnectionLost", recordClose)
        self.patch(EchoProtocol, "_abortLater", recordTimer)

    async def echo(self, payload: bytes, pauseFor: float = 0.0) -> bytes:
        """
        @return: what a L{HalfClosingClient} sending C{payload} received,
            not reading for C{pauseFor} seconds first.
        """
        factory = EchoServerFactory()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = HalfClosingClient(payload)
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(Factory.forProtocol(lambda: client))
        if pauseFor:
            client.transport.pauseProducing()
            await deferLater(reactor, pauseFor)
            client.transport.resumeProducing()
        received = await client.done
        await factory.drain()
        return received

    async def test_repliesSentClosesAtOnce(self) -> None:
        """
        When every reply is with the kernel already, the server closes the
        connection in the same reactor turn as it reads the EOF (as Twisted
        closes a protocol that does not half-close): no turn waiting for
        writability, no abort timer.  This relies on Twisted's TCP
        transport (C{dataBuffer}, C{_tempDataLen}, C{connectionLost}): if a
        Twisted release changes them, this test fails.
        """
        self.assertEqual(await self.echo(b"hello"), b"hello")
        self.assertEqual((self.closedDuringReadLost, self.timers), ([True], []))

    async def test_notReadingThenHalfClosing(self) -> None:
        """
        A client that sends 8 MiB, shuts its write side and reads nothing
        for half a second (the server's replies fill the buffers, and its
        reading pauses) still gets every byte, then EOF.
        """
        payload = random.Random(3).randbytes(8 * 1024 * 1024)
        self.assertEqual(await self.echo(payload, pauseFor=0.5), payload)
