"""
A worker process: C{python -m tcplab.workers PLAN}, started by the
L{tcplab.workers.supervisor.Supervisor}, never by hand.

PLAN (JSON) carries the server's options and, for each listener, the
descriptor of the socket the supervisor passed down.  The worker serves
them as C{twist tcplab} would (the same L{tcplab.tap} building blocks, the
sockets adopted instead of bound), and talks to the supervisor over its
standard descriptors:

  - 0, from the supervisor: C{stop} (drain), C{abort} (drop what is open),
    C{metrics ID} (with C{--metrics}: report the counts now);
    end of file (the supervisor is gone) is a C{stop};
  - 1, to the supervisor: its log events, as JSON records
    (L{twisted.logger.jsonFileLogObserver}), which the supervisor logs;
    sent together every L{LOG_BATCH_SECONDS} (L{BatchedOutput});
  - 2: anything written to stderr (a traceback before logging starts);
  - the status descriptor: one JSON line when it serves (C{ready}) and one
    with its L{ServerStats} when it has drained (C{stopped}); with
    C{--metrics}, its counts (L{tcplab.counts.snapshot}) as C{counts} in
    the C{stopped} line, in the answer to each C{metrics ID} (with that
    C{id}), and every L{REPORT_SECONDS} (so that a worker killed outright
    loses at most that much from the totals).

SIGINT and SIGHUP are the supervisor's to handle (a terminal sends them to
every process of its group), so they are ignored; SIGTERM drains, and a
second aborts, as for the single-process server.
"""

from __future__ import annotations

import json
import os
import select
import signal
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.internet.task import LoopingCall
from twisted.logger import globalLogBeginner, jsonFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from tcplab.faults import Faults, FaultyDatagramProtocol, applyFaults
from tcplab.server import ServerStats
from tcplab.tap import EchoService, buildDatagramEcho, buildFactory, listenerService, udpDescription
from tcplab.udp import MAX_PACKET_SIZE
from tcplab.workers.limits import ConnectionTable, WorkerLimits
from tcplab.workers.sockets import adoptingEndpoint


def encodeOptions(config: Any) -> dict[str, Any]:
    """
    @return: parsed options as JSON can carry them (bytes as C{{"hex": ...}}).
    """
    return {key: {"hex": value.hex()} if isinstance(value, bytes) else value for key, value in dict(config).items()}


def decodeOptions(encoded: dict[str, Any]) -> dict[str, Any]:
    """
    @return: the options L{encodeOptions} encoded.
    """
    return {
        key: bytes.fromhex(value["hex"]) if isinstance(value, dict) and set(value) == {"hex"} else value
        for key, value in encoded.items()
    }


class WorkerService(EchoService):
    """
    The single-process server's service, reporting to the supervisor: it
    says nothing of listening (the supervisor does, once for all workers),
    and its stop summary goes to the supervisor, which logs one for all.
    """

    stopSignals = (signal.SIGTERM,)

    def __init__(self, *args: Any, status: int, metrics: bool = False, **kwargs: Any) -> None:
        """
        @param status: the descriptor of the status lines.
        @param metrics: report the counts to the supervisor (C{--metrics}).
        """
        super().__init__(*args, **kwargs)
        self._status = status
        self._reporting: LoopingCall | None = None
        if metrics:
            self.factory.meter()
            self._reporting = LoopingCall(self.reportCounts)
            self._reporting.clock = self._reactor  # type: ignore[assignment]

    def report(self, **message: Any) -> None:
        """
        Send the supervisor one status line (whole: this process alone
        writes there; blocking: it goes out even while the reactor shuts
        down).
        """
        view = memoryview(json.dumps(message).encode() + b"\n")
        while view:
            view = view[os.write(self._status, view) :]

    def reportCounts(self, query: int | None = None) -> None:
        """
        Send the supervisor this worker's counts, as the answer to its
        C{query} if given, if the status pipe has room for them now: a
        supervisor that stops reading (stopped, or blocked on its own
        output) must not stop the echo, as a blocking write to a full pipe
        would.  A report left out loses nothing (each holds every count so
        far): the supervisor shows the last one it has, as for a late worker.
        """
        from tcplab.counts import snapshot

        _, writable, _ = select.select([], [self._status], [], 0)
        if writable:  # At least PIPE_BUF bytes free: a report fits, whole.
            self.report(counts=snapshot(self.factory, self.datagramEcho), id=query)

    def startService(self) -> None:
        super().startService()
        self.report(ready=os.getpid())
        if self._reporting is not None:
            self._reporting.start(REPORT_SECONDS, now=False)

    def stopService(self) -> Any:
        if self._reporting is not None and self._reporting.running:
            self._reporting.stop()
        return super().stopService()

    def _logListening(self, port: IListeningPort, where: str) -> IListeningPort:
        return port

    def _logSummary(self, stats: ServerStats) -> None:
        udp = self.datagramEcho.summary() if self.datagramEcho is not None else None
        if self._reporting is None:
            self.report(stopped=list(stats), udp=udp)
            return
        from tcplab.counts import snapshot

        self.report(stopped=list(stats), udp=udp, counts=snapshot(self.factory, self.datagramEcho))


class AdoptedDatagramService(Service):
    """
    Serve a UDP protocol on an inherited UDP socket.
    """

    def __init__(self, reactor: Any, fileno: int, family: int, protocol: Any) -> None:
        self._reactor = reactor
        self._fileno = fileno
        self._family = family
        self._protocol = protocol
        self._port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        self._port = self._reactor.adoptDatagramPort(self._fileno, self._family, self._protocol, MAX_PACKET_SIZE)
        os.close(self._fileno)

    def stopService(self) -> Any:
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        return None


@implementer(IReadDescriptor)
class ControlReader:
    """
    Read the supervisor's commands from descriptor 0.
    """

    def __init__(self, service: WorkerService) -> None:
        self._service = service
        self._buffer = b""

    def fileno(self) -> int:
        return 0

    def logPrefix(self) -> str:
        return "tcplab worker control"

    def doRead(self) -> Any:
        data = os.read(0, 4096)
        if not data:
            return Failure(EOFError())  # The reactor calls connectionLost.
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line == b"stop":
                self._service._stopReactor()
            elif line == b"abort":
                self._service.abortAll()
            elif line.startswith(b"metrics "):
                self._service.reportCounts(int(line.split()[1]))
        return None

    def connectionLost(self, reason: Failure) -> None:
        # The supervisor is gone (or stopping): finish, as for "stop".
        self._service._reactor.removeReader(self)  # type: ignore[attr-defined]
        self._service._stopReactor()


def buildWorkerService(plan: dict[str, Any], reactor: Any) -> WorkerService:
    """
    @return: the service of the worker C{plan} describes.
    """
    config = decodeOptions(plan["options"])
    limits = plan["limits"]
    extra: dict[str, Any] = {}
    if limits is not None:
        table = ConnectionTable(
            limits["fd"], plan["workers"], config["max-connections"], config["max-per-peer"], limits["capacity"]
        )
        extra["sharedLimits"] = WorkerLimits(table, plan["index"])
    factory = buildFactory(config, reactor, **extra)
    service = WorkerService(
        factory,
        reactor,
        drainTimeout=config["drain-timeout"],
        status=plan["status"],
        metrics=config.get("metrics") is not None,
    )
    for listener in plan["listeners"]:
        parse = adoptingEndpoint(listener["fd"], listener["family"])
        description = listener["description"]
        service.addListener(description, listenerService(reactor, description, config, factory, parse=parse))
    faults = Faults.fromOptions(config)
    udp = plan["udp"]
    if udp is not None:
        service.datagramEcho = buildDatagramEcho(config, reactor)
        protocol: Any = service.datagramEcho
        if faults.datagram:
            protocol = FaultyDatagramProtocol(protocol, faults, reactor)
        adopted = AdoptedDatagramService(reactor, udp["fd"], udp["family"], protocol)
        service.addListener(udpDescription(config), adopted)
    # Stream listeners get the fault layer as in one process (the adopted UDP
    # socket above is not a UDPServer that applyFaults would find).
    applyFaults(service, faults, reactor)
    return service


def main(argv: list[str]) -> None:
    """
    Run the worker that C{argv[1]} (JSON) describes, until told to stop.
    """
    # A terminal's SIGINT and SIGHUP go to every process of its group: the
    # supervisor handles them (it drains the workers).  Ignored from the
    # first moment, not once the reactor runs: the supervisor announces a
    # worker as soon as it reports ready, which is before that.
    for number in (signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    plan = json.loads(argv[1])
    from twisted.internet import reactor

    output = BatchedOutput(1)
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(output)], redirectStandardIO=False)
    flushing = LoopingCall(output.send)
    flushing.clock = reactor
    flushing.start(LOG_BATCH_SECONDS, now=False)
    service = buildWorkerService(plan, reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.addSystemEventTrigger("after", "shutdown", output.send)
    reactor.addReader(ControlReader(service))
    try:
        # The reactor leaves an ignored SIGINT ignored; SIGTERM is the
        # service's (EchoService._handleSignals).
        reactor.run()
    finally:
        output.send()


#: Seconds between two reports of a worker's counts (with C{--metrics}).
REPORT_SECONDS = 1.0

#: Seconds a worker's log events wait to be sent to the supervisor together.
LOG_BATCH_SECONDS = 0.05


class BatchedOutput:
    """
    The worker's log output: events written at once (the log observer
    flushes each) are sent in one write every L{LOG_BATCH_SECONDS}, or
    sooner past 32 KiB, so that a busy worker wakes its supervisor a few
    times a second rather than twice per connection.
    """

    limit = 32 * 1024

    def __init__(self, fileno: int) -> None:
        self._fileno = fileno
        self._pending: list[bytes] = []
        self._size = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self._pending.append(data)
        self._size += len(data)
        if self._size > self.limit:
            self.send()

    def flush(self) -> None:
        # Each event is flushed: that is what batching leaves out.
        pass

    def send(self) -> None:
        """
        Write what is pending (blocking: it goes out even at exit).
        """
        if self._pending:
            data, self._pending, self._size = b"".join(self._pending), [], 0
            view = memoryview(data)
            while view:
                view = view[os.write(self._fileno, view) :]
