"""
Prometheus metrics and a health check for the echo: C{twist tcplab
--metrics ENDPOINT} serves C{/metrics} and C{/healthz} over C{twisted.web}.

Nothing here is on the echo's path.  The factory, its protocols and the
UDP echo keep plain integer counts (per read or per batch, never per
message in Python); L{EchoCollector} reads them when Prometheus scrapes, as
a custom collector of C{prometheus_client}, so that the figures are exact
and serving costs nothing between scrapes.  (C{prometheus_client}'s own
counters would cost a lock and a method call per increment, and its
multiprocess mode runs no custom collector: see L{tcplab.workers} for how
several processes are added up.)

The counts travel as a L{tcplab.counts.snapshot}, a JSON-able
dictionary, so that a supervisor can add up its workers' and render the
sum with the same L{families}.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

import tcplab
from tcplab.address import formatAddress
from tcplab.counts import REFUSALS, REPLY_FAILED, UDP_DROPS, snapshot
from tcplab.histogram import cumulative
from tcplab.server import EchoServerFactory
from tcplab.udp import DatagramEcho

#: The content type of C{/metrics}: Prometheus' text format 0.0.4, what
#: L{generate_latest} writes.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def families(counts: dict[str, Any], framing: str) -> Iterator[Metric]:
    """
    @param counts: a L{snapshot}, or several added up (L{tcplab.counts.added}).
    @param framing: the server's framing, for C{tcplab_build_info}.
    @return: the metric families that show C{counts}.
    """
    yield InfoMetricFamily(
        "tcplab_build", "tcplab's version and the framing it serves.", value={"version": tcplab.__version__, "framing": framing}
    )
    yield CounterMetricFamily(
        "tcplab_connections_accepted", "TCP connections accepted and served.", value=counts["accepted"]
    )
    refused = CounterMetricFamily(
        "tcplab_connections_refused",
        "TCP connections turned away: busy (--max-connections), peer (--max-per-peer), once (after --once), "
        "proxy-header (PROXY header bad, missing or late), proxy-busy (too many waiting for their PROXY header).",
        labels=["reason"],
    )
    for reason in sorted({*REFUSALS, *counts["refused"]}):
        refused.add_metric([reason], counts["refused"].get(reason, 0))
    yield refused
    yield GaugeMetricFamily("tcplab_connections_open", "TCP connections open now.", value=counts["open"])
    yield CounterMetricFamily(
        "tcplab_bytes_received", "Bytes received on TCP connections.", value=counts["bytesIn"]
    )
    yield CounterMetricFamily(
        "tcplab_bytes_sent", "Bytes of replies sent on TCP connections.", value=counts["bytesOut"]
    )
    yield CounterMetricFamily(
        "tcplab_messages",
        "Messages answered (lines, frames; in raw framing, reads answered).",
        value=counts["messages"],
    )
    yield CounterMetricFamily(
        "tcplab_messages_too_long",
        "Connections closed for a line or frame over --max-length.",
        value=counts["tooLong"],
    )
    yield CounterMetricFamily(
        "tcplab_idle_timeouts", "Connections closed for idling --idle-timeout seconds.", value=counts["idleTimeouts"]
    )
    durations = counts["durations"]
    if durations is not None:
        yield HistogramMetricFamily(
            "tcplab_connection_duration_seconds",
            "How long the TCP connections served lasted, counted when they closed.",
            buckets=[(floatToGoString(bound), count) for bound, count in cumulative(durations["counts"])],
            sum_value=durations["microseconds"] / 1_000_000,
        )
    udp = counts["udp"]
    if udp is not None:
        yield CounterMetricFamily("tcplab_udp_datagrams", "UDP datagrams received.", value=udp["datagrams"])
        dropped = CounterMetricFamily(
            "tcplab_udp_dropped",
            "UDP datagrams not answered: own-port, low-port, bad-source (broadcast, multicast, unspecified), "
            "over-rate (--udp-rate), reply-too-long, reply-failed.",
            labels=["reason"],
        )
        for reason in sorted({*UDP_DROPS.values(), REPLY_FAILED, *udp["dropped"]}):
            dropped.add_metric([reason], udp["dropped"].get(reason, 0))
        yield dropped
        yield CounterMetricFamily(
            "tcplab_udp_bytes_received", "Bytes of UDP datagrams received.", value=udp["bytesIn"]
        )
        yield CounterMetricFamily(
            "tcplab_udp_bytes_sent", "Bytes of UDP replies sent.", value=udp["bytesOut"]
        )


class EchoCollector:
    """
    A C{prometheus_client} collector of an L{EchoServerFactory} (and a
    L{DatagramEcho}): every scrape reads their counts, nothing else.

    Register it in a registry of its own (or serve it with
    L{MetricsResource})::

        registry = CollectorRegistry()
        registry.register(EchoCollector(factory))

    Making it meters the factory (L{EchoServerFactory.meter}): make it
    before the factory serves, for counts exact from the first connection.
    """

    def __init__(self, factory: EchoServerFactory, datagramEcho: DatagramEcho | None = None) -> None:
        self.factory = factory
        self.datagramEcho = datagramEcho
        factory.meter()

    def collect(self) -> Iterable[Metric]:
        return families(snapshot(self.factory, self.datagramEcho), self.factory.framing)


class Health:
    """
    Whether the server takes new connections: what C{/healthz} says.
    """

    def __init__(self) -> None:
        self.serving = True

    def drain(self) -> None:
        """
        The server is stopping: from now on C{/healthz} fails.
        """
        self.serving = False


class HealthResource(Resource):
    """
    C{/healthz}: 200 C{serving} while the server takes connections, 503
    C{draining} from the moment it starts to stop, so that a load balancer
    stops sending it connections before the open ones are closed.
    """

    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if self.health.serving:
            return b"serving\n"
        request.setResponseCode(503)
        return b"draining\n"

    render_HEAD = render_GET


class MetricsResource(Resource):
    """
    C{/metrics}: what C{collector} collects, in Prometheus' text format.

    The page is rendered on the reactor's thread (C{prometheus_client}'s
    own Twisted resource runs its WSGI application on the thread pool),
    so that counts read there are consistent and need no lock.

    @ivar gather: if given, called before each rendering: the page is
        rendered with the collector its L{Deferred} fires with (a
        supervisor's, once the workers answered).
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self, collector: Collector | None = None, gather: Callable[[], Deferred[Collector]] | None = None
    ) -> None:
        super().__init__()
        if (collector is None) == (gather is None):
            raise TypeError("give a collector or a gather function")
        if collector is not None:
            registry = CollectorRegistry()
            registry.register(collector)
            self.registry: Collector = registry
        self.gather = gather

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", CONTENT_TYPE.encode())
        if self.gather is None:
            return generate_latest(self.registry)
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def write(collector: Collector) -> None:
            if not gone:
                request.write(generate_latest(collector))
                request.finish()

        def fail(failure: Failure) -> None:
            self._log.failure("collecting the metrics failed", failure)
            if not gone:
                request.setResponseCode(500)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                request.write(b"collecting the metrics failed\n")
                request.finish()

        self.gather().addCallbacks(write, fail)
        return NOT_DONE_YET


class _Root(Resource):
    # Any other path: 404, with twisted.web.pages' page (Resource's default
    # child, NoResource, is deprecated); below /metrics and /healthz too
    # (both are leaves, which would serve /metrics/anything).
    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if request.postpath:
            return pages.notFound()  # type: ignore[return-value]
        return super().getChildWithDefault(path, request)  # type: ignore[no-any-return]

    def getChild(self, path: bytes, request: Request) -> Resource:
        return pages.notFound()  # type: ignore[return-value]


class _BodilessRequest(Request):
    """
    A request of the metrics site: C{/metrics} and C{/healthz} read no body,
    so none is kept (Twisted's own request spools a large one to a
    temporary file), and a client that sends more than L{maxBody} bytes of
    one is cut off.
    """

    maxBody = 64 * 1024

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self._bodyBytes = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._bodyBytes += len(data)
        if self._bodyBytes > self.maxBody:
            self.channel.forceAbortClient()


class _QuietSite(Site):
    """
    A L{Site} that writes no access log: a load balancer's health check
    every second would be 86,400 lines a day.
    """

    noisy = False
    requestFactory = _BodilessRequest  # type: ignore[assignment]

    def log(self, request: Request) -> None:
        pass


def metricsSite(metrics: MetricsResource, health: Health) -> Site:
    """
    @return: the web site of C{--metrics}: C{/metrics}, C{/healthz}, and
        404 for any other path.  It keeps no access log.
    """
    root = _Root()
    root.putChild(b"metrics", metrics)
    root.putChild(b"healthz", HealthResource(health))
    return _QuietSite(root)


#: Connections the metrics listener holds at once; more are closed at once.
#: Prometheus and a load balancer need a few; the cap keeps idle or slow
#: clients from taking the file descriptors the echo needs.
MAX_METRICS_CONNECTIONS = 64

#: Seconds a connection to the metrics listener may last, requests and
#: keep-alive included: a scrape takes milliseconds, and a client sending
#: its request a byte at a time (which the site's idle timeout does not
#: stop) is closed all the same.
METRICS_CONNECTION_LIFETIME = 30.0


class _BoundedConnection(ProtocolWrapper):
    def __init__(self, factory: BoundedFactory, wrappedProtocol: Any) -> None:
        super().__init__(factory, wrappedProtocol)
        self._expiry: Any = None

    def makeConnection(self, transport: Any) -> None:
        factory: BoundedFactory = self.factory  # type: ignore[assignment]
        self._expiry = factory.clock.callLater(factory.lifetime, transport.abortConnection)
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        super().connectionLost(reason)


class BoundedFactory(WrappingFactory):
    """
    Wrap a factory so that at most C{maxConnections} of its connections are
    open at once (another is closed as soon as it is accepted) and each
    lasts at most C{lifetime} seconds (then it is aborted).
    """

    protocol = _BoundedConnection  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        wrappedFactory: Any,
        clock: IReactorTime,
        maxConnections: int = MAX_METRICS_CONNECTIONS,
        lifetime: float = METRICS_CONNECTION_LIFETIME,
    ) -> None:
        super().__init__(wrappedFactory)
        self.clock = clock
        self.maxConnections = maxConnections
        self.lifetime = lifetime

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.protocols) >= self.maxConnections:
            return None
        return super().buildProtocol(addr)


class MetricsService(StreamServerEndpointService):
    """
    Serve a L{metricsSite} on an endpoint, and say where once it listens:
    C{tcplab metrics on 127.0.0.1:9108 (/metrics, /healthz)}.  A failure to
    listen is raised at once, from the start method.
    """

    _raiseSynchronously = True
    _log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, site: Any) -> None:
        super().__init__(endpoint, site)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._announce)

    def _announce(self, port: IListeningPort) -> IListeningPort:
        self._log.info("tcplab metrics on {address} (/metrics, /healthz)", address=formatAddress(port.getHost()))
        return port
