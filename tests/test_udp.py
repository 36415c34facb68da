"""
Tests for L{tcplab.udp}.
"""

from __future__ import annotations

import errno

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tcplab import defaults
from tcplab.tap import Options, buildService
from tcplab.udp import (
    BAD_SOURCE,
    LOW_PORT,
    MAX_DATAGRAM,
    MAX_PACKET_SIZE,
    MAX_SUFFIX,
    OVER_RATE,
    OWN_PORT,
    REPLY_FAILED,
    REPLY_TOO_LONG,
    DatagramEcho,
    isBadSource,
)

SENDER = ("127.0.0.1", 50000)
#: The port the echo under test listens on.
OWN = 7777


class FakeDatagramTransport:
    """
    Records datagrams written, or refuses them with C{error}.
    """

    def __init__(self, error: Exception | None = None, port: int = OWN) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.error = error
        self.port = port

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", self.port)

    def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.error is not None:
            raise self.error
        self.written.append((datagram, addr))


def echoWith(transport: FakeDatagramTransport, **kwargs) -> DatagramEcho:
    """
    A L{DatagramEcho} started on C{transport}, with a L{Clock} of its own
    unless C{clock} is given.
    """
    kwargs.setdefault("clock", Clock())
    protocol = DatagramEcho(**kwargs)
    protocol.makeConnection(transport)
    return protocol


def warnings(events: list[dict]) -> list[str]:
    """
    @return: the text of each warning among C{events}.
    """
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


class DatagramEchoTests(SynchronousTestCase):
    """
    Tests for L{DatagramEcho} over a fake transport.
    """

    def test_answersSender(self) -> None:
        """
        Each datagram goes back to its sender with the suffix appended.
        """
        transport = FakeDatagramTransport()
        echoWith(transport, suffix=b"SB").datagramReceived("你好".encode(), SENDER)
        self.assertEqual(transport.written, [("你好SB".encode(), SENDER)])

    def test_backwardsCompatible(self) -> None:
        """
        The constructor still takes C{suffix} and C{logMessages} by
        position, and every new argument has a default.
        """
        protocol = DatagramEcho(b"SB", True)
        self.assertEqual((protocol.suffix, protocol.logMessages), (b"SB", True))
        self.assertEqual((protocol.rate, protocol.burst), (defaults.UDP_RATE, defaults.UDP_BURST))

    def test_globalReactorByDefault(self) -> None:
        """
        Without a clock, the echo takes its time from the global reactor.
        """
        protocol = DatagramEcho()
        self.assertIs(protocol.clock, reactor)
        self.assertEqual(protocol._seconds, reactor.seconds)

    def test_ownPortDropped(self) -> None:
        """
        A datagram from the port the echo listens on, from any host, is not
        answered: it is the echo itself (a forged source) or another echo
        service on the same port, and answering would loop forever.
        """
        transport = FakeDatagramTransport()
        protocol = echoWith(transport)
        for host in ("127.0.0.1", "10.1.2.3", "::1"):
            protocol.datagramReceived(b"loop", (host, OWN))
        self.assertEqual(transport.written, [])
        self.assertEqual(protocol.dropped, {OWN_PORT: 3})

    def test_lowPortsDropped(self) -> None:
        """
        A datagram from a port below 1024 (echo, discard, daytime, chargen,
        time, DNS, NTP, port 0) is not answered; from 1024 it is.
        """
        transport = FakeDatagramTransport()
        protocol = echoWith(transport)
        for port in (0, 7, 9, 13, 19, 37, 53, 123, 1023, 1024):
            protocol.datagramReceived(b"x", ("192.0.2.1", port))
        self.assertEqual(transport.written, [(b"x", ("192.0.2.1", 1024))])
        self.assertEqual(protocol.dropped, {LOW_PORT: 9})

    def test_badSourcesDropped(self) -> None:
        """
        A datagram from an address no real sender has (unspecified,
        broadcast, multicast, C{0.0.0.0/8}, in IPv4, IPv6 and IPv4-mapped
        IPv6) is not answered, and its host takes no room in the table.
        """
        bad = [
            "0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "239.255.255.250", "240.0.0.1",
            "::", "ff02::1", "ff05::1:3", "::ffff:255.255.255.255", "::ffff:224.0.0.251",
            "::ffff:0.0.0.0", "not an address",
        ]
        transport = FakeDatagramTransport()
        protocol = echoWith(transport)
        for host in bad:
            protocol.datagramReceived(b"x", (host, 5000))
        self.assertEqual(transport.written, [])
        self.assertEqual(protocol.dropped, {BAD_SOURCE: len(bad)})
        self.assertEqual(protocol._full, {})

    def test_goodSources(self) -> None:
        """
        Ordinary unicast sources, loopback included, are real senders.
        """
        good = ["127.0.0.1", "10.0.0.255", "192.0.2.1", "::1", "2001:db8::1", "fe80::1%eth0", "::ffff:127.0.0.1"]
        self.assertEqual([h for h in good if isBadSource(h)], [])
        transport = FakeDatagramTransport()
        protocol = echoWith(transport)
        for host in good:
            protocol.datagramReceived(b"x", (host, 5000))
        self.assertEqual(len(transport.written), len(good))

    def test_rateLimitBurstThenRefill(self) -> None:
        """
        A source is answered C{burst} datagrams at once, then C{rate} per
        second; an idle source never saves up more than C{burst}.
        """
        clock = Clock()
        transport = FakeDatagramTransport()
        protocol = echoWith(transport, rate=10, burst=5, clock=clock)

        def send(count: int) -> int:
            before = len(transport.written)
            for _ in range(count):
                protocol.datagramReceived(b"x", SENDER)
            return len(transport.written) - before

        self.assertEqual(send(8), 5)
        clock.advance(0.1)
        self.assertEqual(send(3), 1)
        clock.advance(0.35)
        self.assertEqual(send(10), 3)
        clock.advance(3600)
        self.assertEqual(send(10), 5)
        self.assertEqual(protocol.dropped, {OVER_RATE: 17})

    def test_rateLimitPerSource(self) -> None:
        """
        One source over its rate does not take another's allowance.
        """
        transport = FakeDatagramTransport()
        protocol = echoWith(transport, rate=10, burst=2)
        for _ in range(5):
            protocol.datagramReceived(b"x", ("192.0.2.1", 5000))
        protocol.datagramReceived(b"y", ("192.0.2.2", 5000))
        self.assertEqual([d for d, _ in transport.written], [b"x", b"x", b"y"])

    def test_noRateLimit(self) -> None:
        """
        With C{rate=0}, every datagram from a good source is answered.
        """
        transport = FakeDatagramTransport()
        protocol = echoWith(transport, rate=0, burst=1)
        for _ in range(10000):
            protocol.datagramReceived(b"x", SENDER)
        self.assertEqual((len(transport.written), protocol.dropped), (10000, {}))

    def test_sourceTableBounded(self) -> None:
        """
        A flood from more sources than C{maxSources} keeps at most that many
        in the table; new sources beyond it share one more bucket.  Once the
        buckets are full again, their sources are forgotten and new ones
        take their place.
        """
        clock = Clock()
        transport = FakeDatagramTransport()
        protocol = echoWith(transport, rate=1, burst=2, maxSources=3, clock=clock)
        for n in range(1000):
            protocol.datagramReceived(b"x", (f"10.0.{n // 256}.{n % 256}", 5000))
            self.assertLessEqual(len(protocol._full), 3)
        # Three sources with their own bucket, two answered from the shared one.
        self.assertEqual(len(transport.written), 5)
        clock.advance(2)
        protocol.datagramReceived(b"x", ("192.0.2.1", 5000))
        self.assertIn("192.0.2.1", protocol._full)
        self.assertEqual(len(protocol._full), 1)
        self.assertEqual(len(transport.written), 6)

    def test_emptiedBucketNotForgotten(self) -> None:
        """
        A flood of new sources cannot make the echo forget a source whose
        bucket it emptied (which would let a loop with another echo go on).
        """
        clock = Clock()
        transport = FakeDatagramTransport()
        protocol = echoWith(transport, rate=1, burst=2, maxSources=2, clock=clock)
        for _ in range(3):
            protocol.datagramReceived(b"loop", SENDER)
        clock.advance(0.5)
        for n in range(100):
            protocol.datagramReceived(b"flood", (f"10.0.0.{n}", 5000))
        protocol.datagramReceived(b"loop", SENDER)
        self.assertEqual([d for d, _ in transport.written].count(b"loop"), 2)

    def test_loopWithAnotherEchoDiesOut(self) -> None:
        """
        Two echoes on ordinary ports, one forged datagram between them: the
        loop ends after about C{burst} exchanges.
        """
        clock = Clock()
        queue: list[tuple[DatagramEcho, bytes, tuple[str, int]]] = []
        echoes: dict[tuple[str, int], DatagramEcho] = {}

        class Wire(FakeDatagramTransport):
            def write(self, datagram: bytes, addr: tuple[str, int]) -> None:
                queue.append((echoes[addr], datagram, ("127.0.0.1", self.port)))

        for port in (5001, 5002):
            echoes["127.0.0.1", port] = echoWith(Wire(port=port), rate=100, burst=50, clock=clock)
        queue.append((echoes["127.0.0.1", 5002], b"forged", ("127.0.0.1", 5001)))
        delivered = 0
        while queue and delivered < 100000:
            echo, datagram, source = queue.pop(0)
            echo.datagramReceived(datagram, source)
            delivered += 1
            clock.advance(0.00002)
        self.assertEqual(queue, [])
        self.assertLessEqual(delivered, 2 * 50 + 2)
        self.assertEqual(sum(sum(e.dropped.values()) for e in echoes.values()), 1)

    def test_unsendableReply(self) -> None:
        """
        A reply the transport refuses as too long is counted and dropped,
        not raised.
        """
        protocol = echoWith(FakeDatagramTransport(MessageLengthError("too long")), suffix=b"SB")
        with capturedLogs() as events:
            protocol.datagramReceived(b"x" * MAX_DATAGRAM, SENDER)
        self.assertEqual(protocol.dropped, {REPLY_TOO_LONG: 1})
        self.assertEqual(len(warnings(events)), 1)
        self.assertEqual(protocol.bytesOut, 0)

    def test_replyRefusedByNetwork(self) -> None:
        """
        A reply the network refuses is counted under the system's reason.
        """
        error = OSError(errno.ENETUNREACH, "Network is unreachable")
        protocol = echoWith(FakeDatagramTransport(error))
        protocol.datagramReceived(b"x", SENDER)
        self.assertEqual(protocol.dropped, {REPLY_FAILED.format(reason="Network is unreachable"): 1})

    def test_dropsLoggedOncePerInterval(self) -> None:
        """
        The first datagram dropped is logged at once; the next ones are
        logged together, in one line, when C{logInterval} has passed; a
        quiet interval ends the cycle, so the next drop is logged at once.
        """
        clock = Clock()
        protocol = echoWith(FakeDatagramTransport(), logInterval=10, clock=clock)
        with capturedLogs() as events:
            for _ in range(1000):
                protocol.datagramReceived(b"x", ("192.0.2.1", 19))
            self.assertEqual(len(warnings(events)), 1)
            clock.advance(9.9)
            self.assertEqual(len(warnings(events)), 1)
            clock.advance(0.1)
            clock.advance(10)
            clock.advance(100)
            protocol.datagramReceived(b"x", ("192.0.2.1", 7))
        self.assertEqual(
            warnings(events),
            [
                "UDP: 1 datagram not answered: 1 from a port below 1024 (latest from 192.0.2.1:19); "
                "the next such line in 10 s at the earliest",
                "UDP: 999 datagrams not answered: 999 from a port below 1024 (latest from 192.0.2.1:19); "
                "the next such line in 10 s at the earliest",
                "UDP: 1 datagram not answered: 1 from a port below 1024 (latest from 192.0.2.1:7); "
                "the next such line in 10 s at the earliest",
            ],
        )

    def test_dropLogNamesEveryReason(self) -> None:
        """
        One drop line counts each reason, the most frequent first.
        """
        clock = Clock()
        protocol = echoWith(FakeDatagramTransport(), rate=1, burst=1, clock=clock)
        protocol.datagramReceived(b"x", ("192.0.2.1", 19))
        with capturedLogs() as events:
            for _ in range(3):
                protocol.datagramReceived(b"x", ("192.0.2.1", 5000))
            protocol.datagramReceived(b"x", ("192.0.2.1", OWN))
            protocol.datagramReceived(b"x", ("224.0.0.1", 5000))
            clock.advance(defaults.UDP_LOG_INTERVAL)
        self.assertEqual(
            warnings(events),
            [
                f"UDP: 4 datagrams not answered: 2 {OVER_RATE}, 1 {OWN_PORT}, 1 {BAD_SOURCE} "
                "(latest from 224.0.0.1:5000); the next such line in 10 s at the earliest"
            ],
        )

    def test_stopLogsWhatIsLeft(self) -> None:
        """
        Stopping logs the drops not yet reported and leaves no call pending.
        """
        clock = Clock()
        protocol = echoWith(FakeDatagramTransport(), clock=clock)
        with capturedLogs() as events:
            protocol.datagramReceived(b"x", ("192.0.2.1", 7))
            protocol.datagramReceived(b"x", ("192.0.2.1", 7))
            protocol.doStop()
        self.assertEqual(len(warnings(events)), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_suffixBounded(self) -> None:
        """
        A suffix that would make a reply much larger than the datagram it
        answers is refused; the lesson's C{SB} and L{MAX_SUFFIX} bytes are not.
        """
        with self.assertRaises(ValueError) as caught:
            DatagramEcho(suffix=b"x" * (MAX_SUFFIX + 1))
        self.assertEqual(str(caught.exception), f"a UDP suffix must be at most {MAX_SUFFIX} bytes, got {MAX_SUFFIX + 1}")
        DatagramEcho(suffix=b"x" * MAX_SUFFIX)
        transport = FakeDatagramTransport()
        echoWith(transport, suffix=b"SB").datagramReceived(b"", SENDER)
        self.assertEqual(transport.written, [(b"SB", SENDER)])

    def test_impossibleLimits(self) -> None:
        """
        A negative or infinite rate, a burst or table size below 1, or a log
        interval that is not a positive number is refused.
        """
        for kwargs in (
            {"rate": -1}, {"rate": float("inf")}, {"rate": float("nan")}, {"burst": 0},
            {"maxSources": 0}, {"logInterval": 0}, {"logInterval": float("inf")},
        ):
            self.assertRaises(ValueError, DatagramEcho, **kwargs)

    def test_logMessages(self) -> None:
        """
        With C{logMessages}, each datagram is logged with its sender.
        """
        protocol = echoWith(FakeDatagramTransport(), logMessages=True)
        with capturedLogs() as events:
            protocol.datagramReceived(b"hello", SENDER)
        self.assertEqual([(e["peer"], e["text"]) for e in events if "text" in e], [("127.0.0.1:50000", "hello")])

    def test_logMessagesEscapedAndCut(self) -> None:
        """
        A logged datagram cannot forge a log line or a terminal sequence,
        and is cut to L{defaults.UDP_LOG_BYTES} bytes.
        """
        protocol = echoWith(FakeDatagramTransport(), logMessages=True)
        with capturedLogs() as events:
            protocol.datagramReceived(b"a\nfake line\x1b[2J\\", SENDER)
            protocol.datagramReceived(b"y" * 5000, SENDER)
        texts = [e["text"] for e in events if "text" in e]
        self.assertEqual(texts[0], "a\\nfake line\\x1b[2J\\\\")
        self.assertEqual(texts[1], "y" * defaults.UDP_LOG_BYTES + f"... ({5000 - defaults.UDP_LOG_BYTES:,} more bytes)")

    def test_logMessagesBudget(self) -> None:
        """
        With C{logMessages}, at most L{defaults.UDP_LOG_MESSAGES} datagrams
        are logged per interval, then one line says how many were not.
        """
        clock = Clock()
        protocol = echoWith(FakeDatagramTransport(), logMessages=True, rate=0, clock=clock)
        extra = 50
        with capturedLogs() as events:
            for _ in range(defaults.UDP_LOG_MESSAGES + extra):
                protocol.datagramReceived(b"hi", SENDER)
            logged = len([e for e in events if "text" in e])
            clock.advance(defaults.UDP_LOG_INTERVAL)
            protocol.datagramReceived(b"again", SENDER)
        self.assertEqual(logged, defaults.UDP_LOG_MESSAGES)
        self.assertEqual(
            [formatEvent(e) for e in events if "text" not in e], [f"{extra} more datagrams not logged"]
        )
        self.assertEqual(events[-1].get("text"), "again")

    def test_summary(self) -> None:
        """
        The summary counts datagrams and bytes, then what was not answered
        and why, with the nouns in their right number.
        """
        transport = FakeDatagramTransport()
        protocol = echoWith(transport, suffix=b"SB")
        protocol.datagramReceived(b"hi", SENDER)
        self.assertEqual(protocol.summary(), "1 datagram; 2 bytes in, 4 bytes out")
        protocol.datagramReceived(b"hi", ("192.0.2.1", 53))
        protocol.datagramReceived(b"hi", ("192.0.2.1", 123))
        protocol.datagramReceived(b"hi", ("255.255.255.255", 5000))
        self.assertEqual(
            protocol.summary(),
            f"4 datagrams; 8 bytes in, 4 bytes out; 3 not answered: 2 {LOW_PORT}, 1 {BAD_SOURCE}",
        )


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class UDPOptionsTests(SynchronousTestCase):
    """
    The plugin's UDP options.
    """

    def test_defaults(self) -> None:
        """
        The rate and burst default to L{defaults.UDP_RATE} and
        L{defaults.UDP_BURST}.
        """
        options = parse()
        self.assertEqual((options["udp-rate"], options["udp-burst"]), (defaults.UDP_RATE, defaults.UDP_BURST))

    def test_rateAndBurst(self) -> None:
        """
        C{--udp-rate} and C{--udp-burst} reach the datagram echo, with the
        reactor as its clock.
        """
        from tests.test_tap import UDPMemoryReactor

        reactor = UDPMemoryReactor()
        service = buildService(parse("--udp", "9000", "--udp-rate", "0", "--udp-burst", "7"), reactor)
        echo = service.datagramEcho
        assert echo is not None
        self.assertEqual((echo.rate, echo.burst, echo.clock), (0, 7, reactor))

    def test_badValues(self) -> None:
        """
        A negative rate, a burst below 1 or a number that is not whole is
        named in the error.
        """
        for argv, message in [
            (("--udp-rate", "-1"), "--udp-rate: must be at least 0, got -1"),
            (("--udp-burst", "0"), "--udp-burst: must be at least 1, got 0"),
            (("--udp-rate", "fast"), "--udp-rate: invalid count 'fast': expected a whole number"),
        ]:
            with self.assertRaises(UsageError) as caught:
                parse(*argv)
            self.assertEqual(str(caught.exception), message)

    def test_suffixBoundedWithUDP(self) -> None:
        """
        With C{--udp}, a suffix over L{MAX_SUFFIX} bytes is refused (UTF-8
        bytes are counted); without it the TCP echo takes it; C{SB} is fine.
        """
        with self.assertRaises(UsageError) as caught:
            parse("--udp", "9000", "--suffix", "好" * 22)
        self.assertEqual(
            str(caught.exception),
            f"--suffix: at most {MAX_SUFFIX} bytes with --udp (a UDP reply must not be much "
            "larger than the datagram it answers), got 66",
        )
        self.assertEqual(len(parse("--suffix", "x" * 1000)["suffix"]), 1000)
        self.assertEqual(parse("--udp", "9000", "--suffix", "SB")["suffix"], b"SB")

    def test_summaryOnStopCountsDrops(self) -> None:
        """
        The stop summary says how many datagrams were not answered and why.
        """
        from tests.test_tap import UDPMemoryReactor

        reactor = UDPMemoryReactor()
        service = buildService(parse("--udp", "9000"), reactor)
        service.startService()
        echo = service.datagramEcho
        assert echo is not None
        echo.makeConnection(FakeDatagramTransport())
        echo.datagramReceived(b"hi", ("127.0.0.1", 5000))
        echo.datagramReceived(b"hi", ("127.0.0.1", 7))
        with capturedLogs() as events:
            self.successResultOf(service.stopService())
        [summary] = [e["summary"] for e in events if "summary" in e]
        self.assertTrue(
            summary.endswith(f"; UDP: 2 datagrams; 4 bytes in, 2 bytes out; 1 not answered: 1 {LOW_PORT}"),
            summary,
        )


class Collector(DatagramProtocol):
    """
    Fires C{received} with the first datagram that arrives.
    """

    def __init__(self) -> None:
        self.received: Deferred[bytes] = Deferred()

    def datagramReceived(self, datagram: bytes, addr: object) -> None:
        self.received.callback(datagram)


class DatagramEchoSocketTests(TestCase):
    """
    L{DatagramEcho} over real UDP sockets on 127.0.0.1.
    """

    timeout = 10

    def listen(self, protocol: DatagramProtocol) -> object:
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1", maxPacketSize=MAX_PACKET_SIZE)
        self.addCleanup(port.stopListening)
        return port

    def test_largestDatagramEchoesWhole(self) -> None:
        """
        A datagram of the largest IPv4 UDP size comes back whole: the server
        listens with a packet size large enough not to truncate it.
        """
        server = self.listen(DatagramEcho())
        collector = Collector()
        client = self.listen(collector)
        payload = bytes(range(256)) * (MAX_DATAGRAM // 256) + b"z" * (MAX_DATAGRAM % 256)
        client.write(payload, ("127.0.0.1", server.getHost().port))
        return collector.received.addCallback(self.assertEqual, payload)

    async def test_selfAddressedNotLooped(self) -> None:
        """
        A datagram whose source is the echo's own address (here the echo's
        own socket sends it) is not answered, so it cannot loop; a normal
        client is still answered.
        """
        echo = DatagramEcho(suffix=b"SB")
        server = self.listen(echo)
        own = ("127.0.0.1", server.getHost().port)
        server.write(b"forged", own)
        # Let the self-addressed datagram arrive (and, were it answered, loop).
        await deferLater(reactor, 0.2, lambda: None)
        collector = Collector()
        client = self.listen(collector)
        client.write(b"hi", own)
        self.assertEqual(await collector.received, b"hiSB")
        self.assertEqual((echo.datagrams, echo.dropped), (2, {OWN_PORT: 1}))

