"""
Tests for L{tcplab.metrics}: the counts the echo keeps, as the collector
shows them, against in-memory connections; the web resources; the
supervisor's sum of its workers.
"""

from __future__ import annotations

import json

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

import tcplab
from tcplab.counts import added, nothing, retired, snapshot
from tcplab.framing import frame
from tcplab.histogram import BUCKETS, DurationHistogram, cumulative
from tcplab.metrics import BoundedFactory, EchoCollector, Health, MetricsResource, metricsSite
from tcplab.proxy import ProxyHeaderFactory
from tcplab.server import EchoServerFactory
from tcplab.tap import Options
from tcplab.udp import DatagramEcho
from tcplab.workers.supervisor import SCRAPE_TIMEOUT, STATUS_FD, Supervisor, WorkerProcess
from tests.test_hardening import HalfCloseableTransport
from tests.test_proxy import v1
from tests.test_udp import FakeDatagramTransport

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """
    @return: every sample of Prometheus text C{text}, parsed by
        C{prometheus_client}'s parser, by name and sorted labels.
    """
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def collected(collector: object) -> Samples:
    """
    @return: the samples C{collector} gives, as a scrape would show them.
    """
    return parse(generate_latest(collector).decode())  # type: ignore[arg-type]


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def peer(port: int, host: str = "127.0.0.1") -> IPv4Address:
    return IPv4Address("TCP", host, port)


def connect(factory: EchoServerFactory, port: int = 40000, host: str = "127.0.0.1"):
    protocol = factory.buildProtocol(peer(port, host))
    transport = HalfCloseableTransport(peerAddress=peer(port, host))
    if protocol is not None:
        protocol.makeConnection(transport)
    return protocol, transport


def lose(protocol) -> None:
    protocol.connectionLost(Failure(ConnectionDone()))


#: The counters every TCP scrape has, by name.
TCP_COUNTERS = (
    "tcplab_connections_accepted_total",
    "tcplab_connections_open",
    "tcplab_bytes_received_total",
    "tcplab_bytes_sent_total",
    "tcplab_messages_total",
    "tcplab_messages_too_long_total",
    "tcplab_idle_timeouts_total",
)


def tcpFigures(samples: Samples) -> dict[str, float]:
    return {name: value(samples, name) for name in TCP_COUNTERS}


class ExactCountTests(SynchronousTestCase):
    """
    After a known exchange, every counter equals the traffic, in each framing.
    """

    def exchange(self, framing: str, requests: list[bytes], suffix: bytes = b"SB", connections: int = 3):
        """
        Make C{connections} connections, feed each the reads C{requests},
        then close them.

        @return: the collector's samples, and the clock.
        """
        clock = Clock()
        factory = EchoServerFactory(framing=framing, suffix=suffix, reactor=clock)
        collector = EchoCollector(factory)
        opened = []
        for n in range(connections):
            protocol, transport = connect(factory, 40000 + n)
            for data in requests:
                protocol.dataReceived(data)
            opened.append((protocol, transport))
        self.assertEqual(value(collected(collector), "tcplab_connections_open"), connections)
        clock.advance(0.25)
        for protocol, _ in opened:
            lose(protocol)
        return collected(collector), [transport.value() for _, transport in opened]

    def test_raw(self) -> None:
        """
        Raw framing: a message is a read answered; bytes out are the
        replies, suffix included.
        """
        samples, replies = self.exchange("raw", [b"hello", b"world!", b"x"])
        self.assertEqual(replies, [b"helloSBworld!SBxSB"] * 3)
        self.assertEqual(
            tcpFigures(samples),
            {
                "tcplab_connections_accepted_total": 3,
                "tcplab_connections_open": 0,
                "tcplab_bytes_received_total": 3 * 12,
                "tcplab_bytes_sent_total": 3 * 18,
                "tcplab_messages_total": 9,
                "tcplab_messages_too_long_total": 0,
                "tcplab_idle_timeouts_total": 0,
            },
        )

    def test_line(self) -> None:
        """
        Line framing: every line answered counts, however the reads cut
        them, several in one read or one over several.
        """
        reads = [b"one\ntwo\nthr", b"ee\r\n", b"\n", b"four"]
        samples, replies = self.exchange("line", reads)
        self.assertEqual(replies[0], b"oneSB\ntwoSB\nthreeSB\r\nSB\n")
        figures = tcpFigures(samples)
        self.assertEqual(figures["tcplab_messages_total"], 3 * 4)
        self.assertEqual(figures["tcplab_bytes_received_total"], 3 * len(b"".join(reads)))
        self.assertEqual(figures["tcplab_bytes_sent_total"], 3 * len(replies[0]))

    def test_lineWithoutSuffix(self) -> None:
        """
        Without a suffix the lines are counted too (by the metered factory:
        the collector meters it).
        """
        samples, replies = self.exchange("line", [b"one\ntwo\r\nth", b"ree\n"], suffix=b"")
        self.assertEqual(replies[0], b"one\ntwo\r\nthree\n")
        self.assertEqual(value(samples, "tcplab_messages_total"), 3 * 3)

    def test_lineAfterHalfClose(self) -> None:
        """
        An unterminated last line, answered when the peer shuts its write
        side, counts as a message.
        """
        factory = EchoServerFactory(framing="line", reactor=Clock())
        collector = EchoCollector(factory)
        protocol, transport = connect(factory)
        protocol.dataReceived(b"a\nb")
        protocol.readConnectionLost()
        self.assertEqual(transport.value(), b"a\nb\n")
        self.assertEqual(value(collected(collector), "tcplab_messages_total"), 2)

    def test_length(self) -> None:
        """
        Length framing: frames of one size (one header for the batch) and
        of mixed sizes both count one message each.
        """
        uniform = frame(b"abcd") * 5
        mixed = frame(b"a") + frame(b"bcdef") + frame(b"")
        samples, replies = self.exchange("length", [uniform, mixed[:3], mixed[3:]])
        self.assertEqual(replies[0], frame(b"abcdSB") * 5 + frame(b"aSB") + frame(b"bcdefSB") + frame(b"SB"))
        figures = tcpFigures(samples)
        self.assertEqual(figures["tcplab_messages_total"], 3 * 8)
        self.assertEqual(figures["tcplab_bytes_sent_total"], 3 * len(replies[0]))

    def test_durations(self) -> None:
        """
        The histogram counts each connection served once, when it closes,
        in the bucket of its duration, and adds up the durations.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        collector = EchoCollector(factory)
        short, _ = connect(factory, 40000)
        long, _ = connect(factory, 40001)
        clock.advance(0.002)
        lose(short)
        clock.advance(2.0)
        lose(long)
        samples = collected(collector)
        self.assertEqual(value(samples, "tcplab_connection_duration_seconds_count"), 2)
        self.assertAlmostEqual(value(samples, "tcplab_connection_duration_seconds_sum"), 2.004)
        bucket = "tcplab_connection_duration_seconds_bucket"
        self.assertEqual(value(samples, bucket, le="0.001"), 0)
        self.assertEqual(value(samples, bucket, le="0.005"), 1)
        self.assertEqual(value(samples, bucket, le="1.0"), 1)
        self.assertEqual(value(samples, bucket, le="5.0"), 2)
        self.assertEqual(value(samples, bucket, le="+Inf"), 2)

    def test_buildInfo(self) -> None:
        """
        C{tcplab_build_info} names the version and the framing.
        """
        samples = collected(EchoCollector(EchoServerFactory(framing="length", reactor=Clock())))
        self.assertEqual(value(samples, "tcplab_build_info", version=tcplab.__version__, framing="length"), 1)


class RefusalTests(SynchronousTestCase):
    """
    Connections turned away are counted by a stable C{reason} label.
    """

    def refused(self, collector: EchoCollector) -> dict[str, float]:
        return {
            dict(labels)["reason"]: count
            for (name, labels), count in collected(collector).items()
            if name == "tcplab_connections_refused_total"
        }

    def test_busyAndPeer(self) -> None:
        """
        Over C{maxConnections}: C{busy}; over C{maxPerPeer}: C{peer}.  A
        refused connection is not counted as accepted.
        """
        factory = EchoServerFactory(maxConnections=2, maxPerPeer=1, reactor=Clock())
        collector = EchoCollector(factory)
        connect(factory, 40000, "127.0.0.2")
        connect(factory, 40001, "127.0.0.2")
        connect(factory, 40002, "127.0.0.3")
        connect(factory, 40003, "127.0.0.4")
        self.assertEqual(
            self.refused(collector), {"busy": 1, "peer": 1, "once": 0, "proxy-header": 0, "proxy-busy": 0}
        )
        self.assertEqual(value(collected(collector), "tcplab_connections_accepted_total"), 2)

    def test_once(self) -> None:
        """
        After C{maxServed} connections: C{once}.
        """
        factory = EchoServerFactory(maxServed=1, reactor=Clock())
        collector = EchoCollector(factory)
        connect(factory, 40000)
        protocol, _ = connect(factory, 40001)
        self.assertIsNone(protocol)
        self.assertEqual(self.refused(collector)["once"], 1)

    def test_proxyHeader(self) -> None:
        """
        Behind a PROXY-protocol listener, a bad header and a header that
        never comes count as C{proxy-header}, a connection over the limit
        of those waiting for their header as C{proxy-busy}; a good header
        reaches the echo, which counts the connection as accepted.
        """
        clock = Clock()
        factory = EchoServerFactory(reactor=clock)
        collector = EchoCollector(factory)
        wrapper = ProxyHeaderFactory(factory, clock, headerTimeout=5, maxPending=1)
        bad = wrapper.buildProtocol(peer(50000))
        bad.makeConnection(StringTransport())
        bad.dataReceived(b"GET / HTTP/1.0\r\n")
        bad.connectionLost(Failure(ConnectionDone()))
        late = wrapper.buildProtocol(peer(50001))
        late.makeConnection(StringTransport())
        self.assertIsNone(wrapper.buildProtocol(peer(50002)))
        clock.advance(5)
        late.connectionLost(Failure(ConnectionDone()))
        good = wrapper.buildProtocol(peer(50003))
        good.makeConnection(HalfCloseableTransport())
        good.dataReceived(v1("192.0.2.7", 1234) + b"hi")
        refused = self.refused(collector)
        self.assertEqual((refused["proxy-header"], refused["proxy-busy"]), (2, 1))
        self.assertEqual(value(collected(collector), "tcplab_connections_accepted_total"), 1)


class ClosingTests(SynchronousTestCase):
    """
    Connections the server closes: for a message too long, for idling.
    """

    def test_tooLong(self) -> None:
        """
        A line over C{maxLength} is counted, and the lines before it in the
        same read are answered and counted.
        """
        factory = EchoServerFactory(framing="line", maxLength=4, reactor=Clock())
        collector = EchoCollector(factory)
        protocol, transport = connect(factory)
        protocol.dataReceived(b"ok\nfine\nmuch too long\n")
        samples = collected(collector)
        self.assertEqual(value(samples, "tcplab_messages_too_long_total"), 1)
        self.assertEqual(value(samples, "tcplab_messages_total"), 2)
        self.assertTrue(transport.value().startswith(b"ok\nfine\nerror: "))

    def test_idleTimeout(self) -> None:
        """
        A connection closed for idling is counted once.
        """
        clock = Clock()
        factory = EchoServerFactory(idleTimeout=10, reactor=clock)
        collector = EchoCollector(factory)
        factory.doStart()
        self.addCleanup(factory.doStop)
        connect(factory)
        for _ in range(30):
            clock.advance(1)
        self.assertEqual(value(collected(collector), "tcplab_idle_timeouts_total"), 1)


class DatagramTests(SynchronousTestCase):
    """
    The UDP echo's counts: datagrams, bytes, drops by reason.
    """

    def test_counts(self) -> None:
        """
        Every datagram received is counted; those not answered by a stable
        C{reason} label (a reply the network refused: C{reply-failed}).
        """
        transport = FakeDatagramTransport()
        echo = DatagramEcho(suffix=b"SB", clock=Clock(), burst=2, rate=1)
        echo.makeConnection(transport)
        collector = EchoCollector(EchoServerFactory(reactor=Clock()), echo)
        for _ in range(3):
            echo.datagramReceived(b"hello", ("127.0.0.1", 50000))
        echo.datagramReceived(b"x", ("127.0.0.1", 53))
        echo.datagramReceived(b"x", ("127.0.0.1", transport.port))
        echo.datagramReceived(b"x", ("0.0.0.0", 50000))
        transport.error = OSError(101, "Network is unreachable")
        echo.datagramReceived(b"y", ("127.0.0.9", 50000))
        samples = collected(collector)
        self.assertEqual(value(samples, "tcplab_udp_datagrams_total"), 7)
        self.assertEqual(value(samples, "tcplab_udp_bytes_received_total"), 15 + 4)
        self.assertEqual(value(samples, "tcplab_udp_bytes_sent_total"), 2 * 7)
        dropped = {
            dict(labels)["reason"]: count
            for (name, labels), count in samples.items()
            if name == "tcplab_udp_dropped_total"
        }
        self.assertEqual(
            dropped,
            {"over-rate": 1, "low-port": 1, "own-port": 1, "bad-source": 1, "reply-failed": 1, "reply-too-long": 0},
        )

    def test_noDatagramEcho(self) -> None:
        """
        Without a UDP echo, no UDP metric is shown.
        """
        samples = collected(EchoCollector(EchoServerFactory(reactor=Clock())))
        self.assertFalse([name for name, _ in samples if name.startswith("tcplab_udp")])


class SumTests(SynchronousTestCase):
    """
    Snapshots of several processes add up.
    """

    def test_added(self) -> None:
        """
        Numbers, reasons and histogram buckets add up; a missing UDP part
        counts as nothing.
        """
        one = EchoServerFactory(reactor=Clock(), maxConnections=1)
        one.meter().observe(0.5)
        connect(one, 40000)
        connect(one, 40001)
        other = EchoServerFactory(reactor=Clock())
        other.meter().observe(20)
        echo = DatagramEcho(clock=Clock())
        echo.makeConnection(FakeDatagramTransport())
        echo.datagramReceived(b"x", ("127.0.0.1", 50000))
        total = added(snapshot(one), snapshot(other, echo))
        self.assertEqual((total["accepted"], total["open"], total["refused"]), (1, 1, {"busy": 1}))
        self.assertEqual(total["durations"]["counts"][BUCKETS.index(0.5)], 1)
        self.assertEqual(total["durations"]["counts"][BUCKETS.index(30.0)], 1)
        self.assertEqual(total["durations"]["microseconds"], 20_500_000)
        self.assertEqual(total["udp"]["datagrams"], 1)

    def test_retired(self) -> None:
        """
        The counts of a process that ended keep every count, and no
        connection open.
        """
        factory = EchoServerFactory(reactor=Clock())
        connect(factory)
        counts = retired(snapshot(factory))
        self.assertEqual((counts["accepted"], counts["open"]), (1, 0))

    def test_sumInAnyOrder(self) -> None:
        """
        The sum of durations is kept in whole microseconds: added up in any
        order (the workers' and the ended ones'), it is the same, so that the
        total a supervisor shows never goes down when a worker is replaced.
        """
        parts = []
        for seconds in (0.1, 0.2, 0.30000001, 96.0667):
            histogram = DurationHistogram()
            histogram.observe(seconds)
            parts.append(histogram.microseconds)
        self.assertEqual((parts[0] + parts[1]) + parts[2], parts[0] + (parts[2] + parts[1]))
        self.assertEqual(parts, [100_000, 200_000, 300_000, 96_066_700])

    def test_cumulative(self) -> None:
        """
        Prometheus buckets count every duration up to their bound.
        """
        histogram = DurationHistogram()
        for seconds in (0.0005, 0.001, 0.003, 7200):
            histogram.observe(seconds)
        buckets = dict(cumulative(histogram.counts))
        self.assertEqual((buckets[0.001], buckets[0.005], buckets[3600.0], buckets[float("inf")]), (2, 3, 3, 4))


def render(site, path: bytes, method: bytes = b"GET") -> DummyRequest:
    """
    @return: the request for C{path} once C{site} has answered it.
    """
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = method
    resource = getChildForRequest(site.resource, request)
    body = resource.render(request)
    if isinstance(body, bytes):
        request.write(body)
        request.finish()
    return request


class ResourceTests(SynchronousTestCase):
    """
    The web site of C{--metrics}.
    """

    def setUp(self) -> None:
        self.factory = EchoServerFactory(reactor=Clock())
        self.health = Health()
        self.site = metricsSite(MetricsResource(EchoCollector(self.factory)), self.health)

    def test_metrics(self) -> None:
        """
        C{/metrics} is Prometheus' text format, with its content type.
        """
        connect(self.factory)
        request = render(self.site, b"/metrics")
        self.assertEqual(request.responseCode or 200, 200)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"content-type"), [b"text/plain; version=0.0.4; charset=utf-8"]
        )
        samples = parse(b"".join(request.written).decode())
        self.assertEqual(value(samples, "tcplab_connections_open"), 1)

    def test_healthz(self) -> None:
        """
        C{/healthz}: 200 while serving, 503 once the drain has started.
        """
        request = render(self.site, b"/healthz")
        self.assertEqual((request.responseCode or 200, b"".join(request.written)), (200, b"serving\n"))
        self.health.drain()
        request = render(self.site, b"/healthz")
        self.assertEqual((request.responseCode, b"".join(request.written)), (503, b"draining\n"))

    def test_healthzHead(self) -> None:
        """
        C{HEAD /healthz} answers the same status.
        """
        self.health.drain()
        self.assertEqual(render(self.site, b"/healthz", method=b"HEAD").responseCode, 503)

    def test_otherPaths(self) -> None:
        """
        Any other path is not found.
        """
        for path in (b"/", b"/foo", b"/metricsx", b"/metrics/x", b"/healthz/x"):
            self.assertEqual(render(self.site, path).responseCode, 404, path)

    def test_noAccessLog(self) -> None:
        """
        The site writes no access log line for a request.
        """
        events: list[dict] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.site.timeOut = None  # No idle timer on the global reactor.
        self.site.startFactory()
        self.addCleanup(self.site.stopFactory)
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"serving", transport.value())
        self.assertEqual(events, [])

    def test_collectorOrGather(self) -> None:
        """
        The resource takes a collector or a function that gathers one, not both.
        """
        self.assertRaises(TypeError, MetricsResource)
        self.assertRaises(TypeError, MetricsResource, EchoCollector(self.factory), gather=lambda: None)


class RecordingProcessTransport:
    """
    What the supervisor writes to a worker's control pipe.
    """

    pid = 1234

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class SupervisorSumTests(SynchronousTestCase):
    """
    The supervisor asks each worker for its counts on every scrape and
    shows their sum; counts of ended workers stay in it.
    """

    def setUp(self) -> None:
        config = Options()
        config.parseOptions(["--workers", "2", "--metrics", "tcp:0:interface=127.0.0.1"])
        self.clock = MemoryReactorClock()
        self.supervisor = Supervisor(config, self.clock)
        self.workers = []
        for index in range(2):
            worker = WorkerProcess(self.supervisor, index)
            worker.makeConnection(RecordingProcessTransport())
            worker.readyAt = 0.0
            self.supervisor.workers[index] = worker
            self.workers.append(worker)

    def answer(self, worker: WorkerProcess, accepted: int, query: int | None) -> None:
        counts = nothing()
        counts["accepted"] = accepted
        counts["open"] = 1
        line = json.dumps({"counts": counts, "id": query}).encode() + b"\n"
        worker.childDataReceived(STATUS_FD, line)

    def scrape(self) -> tuple[list[Samples], object]:
        results: list[Samples] = []
        gathering = self.supervisor.gatherMetrics()
        gathering.addCallback(lambda collector: results.append(collected(collector)))
        return results, gathering

    def test_sum(self) -> None:
        """
        Each worker is asked (C{metrics ID} on its control pipe); once all
        have answered, the page shows the sum.
        """
        results, _ = self.scrape()
        self.assertEqual([worker.transport.written for worker in self.workers], [[b"metrics 1\n"]] * 2)
        self.answer(self.workers[0], 3, 1)
        self.assertEqual(results, [])
        self.answer(self.workers[1], 4, 1)
        [samples] = results
        self.assertEqual(value(samples, "tcplab_connections_accepted_total"), 7)
        self.assertEqual(value(samples, "tcplab_connections_open"), 2)
        self.assertEqual(value(samples, "tcplab_workers", state="answered"), 2)

    def test_late(self) -> None:
        """
        A worker that does not answer within L{SCRAPE_TIMEOUT} is shown with
        the counts it reported last, and counted as late.
        """
        self.answer(self.workers[1], 5, None)
        results, _ = self.scrape()
        self.answer(self.workers[0], 3, 1)
        self.clock.advance(SCRAPE_TIMEOUT)
        [samples] = results
        self.assertEqual(value(samples, "tcplab_connections_accepted_total"), 8)
        self.assertEqual(value(samples, "tcplab_workers", state="late"), 1)
        self.assertEqual(value(samples, "tcplab_workers", state="answered"), 1)

    def test_endedWorkerKept(self) -> None:
        """
        A worker that ends while a scrape waits for it no longer holds the
        scrape up, and its last counts stay in the totals (its open
        connections do not); counters never go down.
        """
        self.answer(self.workers[0], 3, None)
        results, _ = self.scrape()
        self.answer(self.workers[1], 4, 1)
        self.supervisor._stopping = True
        self.workers[0].processEnded(Failure(ConnectionDone()))
        [samples] = results
        self.assertEqual(value(samples, "tcplab_connections_accepted_total"), 7)
        self.assertEqual(value(samples, "tcplab_connections_open"), 1)
        self.assertEqual(value(samples, "tcplab_workers", state="down"), 1)


class BoundedFactoryTests(SynchronousTestCase):
    """
    The metrics listener's connections are capped in number and in time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.site = metricsSite(MetricsResource(EchoCollector(EchoServerFactory(reactor=Clock()))), Health())
        self.site.timeOut = None  # No idle timer on the global reactor.
        self.factory = BoundedFactory(self.site, self.clock, maxConnections=2, lifetime=30)

    def connect(self) -> tuple[object, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        if protocol is not None:
            protocol.makeConnection(transport)
        return protocol, transport

    def test_cap(self) -> None:
        """
        Past C{maxConnections} open at once, a connection is refused (no
        protocol: the reactor closes it); once one closes, another is served.
        """
        first, _ = self.connect()
        self.connect()
        refused, _ = self.connect()
        self.assertIsNone(refused)
        first.connectionLost(Failure(ConnectionDone()))
        again, _ = self.connect()
        self.assertIsNotNone(again)

    def test_lifetime(self) -> None:
        """
        A connection still open after C{lifetime} seconds, a slow request
        included, is aborted; one that closed before leaves no timer.
        """
        slow, transport = self.connect()
        slow.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x")
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        done, _ = self.connect()
        done.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([call for call in self.clock.getDelayedCalls() if call.active()], [])

    def test_bodyCutOff(self) -> None:
        """
        A request body is not kept: past 64 KiB of one, the client is cut
        off, however much more it sends.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        protocol.dataReceived(b"x" * 60000)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"x" * 60000)
        self.assertTrue(transport.disconnecting)

    def test_served(self) -> None:
        """
        Within the bounds, the site answers as it does alone.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertIn(b"serving", transport.value())


class WorkerReportTests(SynchronousTestCase):
    """
    A worker's reports of its counts never block its echo.
    """

    def setUp(self) -> None:
        import os

        from tcplab.workers.worker import WorkerService

        read, self.write = os.pipe()
        self.read = read
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, self.write)
        self.service = WorkerService(
            EchoServerFactory(reactor=Clock()), MemoryReactorClock(), status=self.write, metrics=True
        )

    def test_reported(self) -> None:
        """
        With room in the status pipe, the counts go out, whole.
        """
        import os

        self.service.reportCounts(7)
        message = json.loads(os.read(self.read, 65536))
        self.assertEqual((message["id"], message["counts"]["accepted"]), (7, 0))

    def test_fullPipeSkipped(self) -> None:
        """
        A full status pipe (a supervisor that stopped reading) makes the
        worker leave a report out rather than wait: the call returns, and
        nothing half-written is left in the pipe.
        """
        import os

        os.set_blocking(self.write, False)
        written = 0
        try:
            while True:
                written += os.write(self.write, b"x" * 4096)
        except BlockingIOError:
            pass
        os.set_blocking(self.write, True)
        self.service.reportCounts(8)  # Would block for ever if it wrote.
        left = b""
        while len(left) < written:
            left += os.read(self.read, 65536)
        self.assertEqual(left, b"x" * written)
