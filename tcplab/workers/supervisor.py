"""
The supervisor of C{twist tcplab --workers N}: it binds the listeners, runs
N worker processes (L{tcplab.workers.worker}) that serve them, replaces a
worker that dies, and on SIGTERM, SIGINT or SIGHUP drains them all and logs
one summary for all.

The supervisor is not on the echo's path: a worker accepts its connections
itself, on the socket it was handed, and answers them itself.  The
supervisor sees only each worker's log events (it logs them, so that
C{twist}'s or C{twistd}'s log options hold for all), one status line when a
worker serves and one when it stops.

With C{--metrics}, the supervisor serves C{/metrics} and C{/healthz} for
all the workers.  C{prometheus_client}'s multiprocess mode cannot serve
tcplab's counts (it runs no custom collector, and tcplab counts in plain
integers that only a collector reads), so the supervisor collects them
itself: on each scrape it asks every worker over its control pipe, each
answers with its counts on its status pipe, and the page shows their sum
(L{Supervisor.gatherMetrics}).  A worker that does not answer within
L{SCRAPE_TIMEOUT} is shown with the counts it reported last (workers also
report every second), and the page says how many were late.  The last
counts of a worker that ended are kept in the totals, so that counters
never go down when a worker is replaced.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorCore
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON
from twisted.python.failure import Failure

import tcplab
from tcplab.server import ServerStats
from tcplab.tap import (
    LISTENING,
    DrainingService,
    ListenFailed,
    _reason,
    addMetrics,
    listeningFields,
    udpDescription,
)
from tcplab.text import plural
from tcplab.workers.limits import ConnectionTable
from tcplab.workers.sockets import ListenerSockets, bindDatagram, bindListener
from tcplab.workers.worker import encodeOptions

#: The worker's descriptor for its status lines (0-2: control, log, stderr).
STATUS_FD = 3

#: Seconds before a dead worker's first replacement; each further death of
#: a worker that had not served for L{STEADY} seconds doubles it, up to
#: L{MAX_RESTART_DELAY}.
RESTART_DELAY = 0.25
MAX_RESTART_DELAY = 10.0
STEADY = 10.0

#: Seconds a stopping worker gets, beyond its drain and close timeouts,
#: before it is killed.
STOP_GRACE = 5.0

#: Seconds a scrape of C{/metrics} waits for every worker's counts.
SCRAPE_TIMEOUT = 1.0


class WorkerProcess(ProcessProtocol):
    """
    The supervisor's end of one worker process.

    @ivar index: the worker's number, 0 to N-1; a replacement takes the
        number (and the sockets) of the worker it replaces.
    @ivar stats: what the worker reported when it stopped, if it did.
    @ivar readyAt: when it started serving, if it did.
    """

    _log = Logger()

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.pid: int | None = None
        self.stats: ServerStats | None = None
        self.udpSummary: str | None = None
        self.readyAt: float | None = None
        self.lastError = ""
        #: The counts it reported last (with --metrics).
        self.counts: dict[str, Any] | None = None
        self._buffers: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def send(self, command: bytes) -> None:
        """
        Send the worker C{stop}, C{abort} or C{metrics ID}.
        """
        if self.transport is not None:
            try:
                self.transport.write(command + b"\n")
            except Exception:
                pass  # Its standard input is closed: it is exiting anyway.

    def kill(self) -> None:
        self.signal("KILL")

    def signal(self, name: str) -> None:
        if self.transport is not None:
            try:
                self.transport.signalProcess(name)
            except ProcessExitedAlready:
                pass

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, self._buffers[childFD] = (self._buffers.get(childFD, b"") + data).split(b"\n")
        for line in lines:
            self._lineReceived(childFD, line)

    def _lineReceived(self, childFD: int, line: bytes) -> None:
        if childFD == 1:
            # A log event, as jsonFileLogObserver wrote it.
            try:
                event = eventFromJSON(line.lstrip(b"\x1e").decode("utf-8"))
            except ValueError:
                return
            event["log_system"] = f"worker {self.index}"
            event["tcplab_worker"] = self.index
            self._log.observer(event)
        elif childFD == STATUS_FD:
            message = json.loads(line)
            if "counts" in message:
                self.counts = message["counts"]
                if message.get("id") is not None:
                    self.supervisor.workerAnswered(self, message["id"])
            if "ready" in message:
                self.readyAt = self.supervisor.clock.seconds()
                self.supervisor.workerReady(self)
            elif "stopped" in message:
                self.stats = ServerStats(*message["stopped"])
                self.udpSummary = message.get("udp")
        elif line.strip():
            text = line.decode("utf-8", "replace")
            self.lastError = text
            self._log.warn("{text}", text=text, log_system=f"worker {self.index}")

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.workerEnded(self, reason)


class Supervisor(DrainingService):
    """
    Run C{config["workers"]} worker processes, each serving every listener
    of C{config}.

    @ivar listeners: the sockets of each TCP listener.
    @ivar table: the shared connection counts, when there are limits.
    """

    _log = Logger()

    def __init__(self, config: Any, reactor: IReactorCore) -> None:
        super().__init__(reactor)
        self.config = config
        self.count: int = config["workers"]
        self.clock: Any = reactor
        self.listeners: list[ListenerSockets] = []
        self.udp: Any = None
        self.table: ConnectionTable | None = None
        self.workers: dict[int, WorkerProcess] = {}
        self._bound = False
        self._announced = False
        self._stopping = False
        self._failed = False
        self._deaths = 0
        self._served: list[list[ServerStats]] = [[] for _ in range(self.count)]
        self._udpSummary: str | None = None
        self._failures = [0] * self.count
        self._restarts: dict[int, IDelayedCall] = {}
        self._privileged = False
        self._allEnded: Deferred[None] | None = None
        self._deadline: IDelayedCall | None = None
        #: How a failed start-up sets the exit status (replaced in tests).
        self.exitWith = _exitWith
        # With --metrics: the counts of the worker processes that ended,
        # and the scrapes waiting for the workers' answers.
        self._retired: dict[str, Any] | None = None
        self._queries = 0
        self._gatherings: list[_Gathering] = []
        if config["metrics"] is not None:
            from tcplab.metrics import MetricsResource

            addMetrics(self, config, reactor, MetricsResource(gather=self.gatherMetrics))

    def privilegedStartService(self) -> None:
        # twistd: bind before shedding privileges (as EchoService does).
        Service.privilegedStartService(self)
        self._privileged = True
        self._startListening(self._bind, True)

    def startService(self) -> None:
        Service.startService(self)
        self._startListening(self._bind, False)
        for index in range(self.count):
            try:
                self._spawn(index)
            except OSError as error:
                # The first workers are not replaced: the server does not
                # start.  Those already started are stopped, not orphaned.
                self._stopStarted()
                self._closeSockets()
                self._failStart(StartFailed(f"cannot start worker {index}: {_strerror(error)}"), self._privileged)
        self._reactor.callWhenRunning(self._handleSignals)

    def _stopStarted(self) -> None:
        # Start-up failed before the reactor ran: stop the workers already
        # started (SIGTERM: a worker drains and exits, as does one that has
        # not set up yet), kill any still there after STOP_GRACE, and reap
        # them all before the supervisor exits.
        started = [worker for worker in self.workers.values() if worker.pid is not None]
        self.workers.clear()
        for worker in started:
            worker.signal("TERM")
        deadline = time.monotonic() + STOP_GRACE
        while started:
            started = [worker for worker in started if not _reaped(worker.pid)]
            if started and time.monotonic() > deadline:
                for worker in started:
                    worker.kill()
                deadline = float("inf")
            if started:
                time.sleep(0.01)

    def _bind(self) -> None:
        if self._bound:
            return
        self._bound = True
        config = self.config
        described = [(description, lambda d=description: bindListener(d, self.count)) for description in config["listen"]]
        if config["udp"] is not None:
            described.append((udpDescription(config), lambda: bindDatagram(config["udp-interface"], config["udp"])))
        for description, bind in described:
            try:
                bound = bind()
            except Exception as error:
                self._closeSockets()
                raise ListenFailed(f"cannot listen on {description}: {_reason(error)}") from None
            if isinstance(bound, ListenerSockets):
                self.listeners.append(bound)
            else:
                self.udp = bound
        if config["max-connections"] or config["max-per-peer"]:
            self.table = ConnectionTable.create(self.count, config["max-connections"], config["max-per-peer"])

    def _spawn(self, index: int) -> None:
        """
        Start worker C{index}.

        @raise OSError: if it cannot be started (no descriptors left for its
            pipes, no memory or process left to fork); then it is not in
            L{workers}, and nothing opened for it is left open (the
            reactor closes the pipes it made; the sockets it is handed
            are the supervisor's, kept for its next attempt).
        """
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: "r", STATUS_FD: "r"}

        def passed(fileno: int) -> int:
            number = max(childFDs) + 1
            os.set_inheritable(fileno, True)
            childFDs[number] = fileno
            return number

        listeners = [
            {"description": each.description, "family": each.family, "fd": passed(each.socketFor(index).fileno())}
            for each in self.listeners
        ]
        udp = None
        if self.udp is not None and index == 0:
            # One UDP socket, in worker 0 (its replacement inherits it).
            udp = {"family": self.udp.family, "fd": passed(self.udp.fileno())}
        limits = None
        if self.table is not None:
            limits = {"fd": passed(self.table.fileno), "capacity": self.table.capacity}
        plan = {
            "index": index,
            "workers": self.count,
            "options": encodeOptions(self.config),
            "listeners": listeners,
            "udp": udp,
            "limits": limits,
            "status": STATUS_FD,
        }
        worker = WorkerProcess(self, index)
        self.workers[index] = worker
        try:
            self._reactor.spawnProcess(  # type: ignore[attr-defined]
                worker,
                sys.executable,
                [sys.executable, "-m", "tcplab.workers", json.dumps(plan)],
                env=_environment(),
                childFDs=childFDs,
            )
        except BaseException:
            # No process: no phantom worker for the drain to wait for.
            if self.workers.get(index) is worker:
                del self.workers[index]
            raise

    def _restart(self, index: int) -> None:
        """
        Replace worker C{index} (after its back-off); if it cannot be
        started, log why and try again after the next back-off.
        """
        self._restarts.pop(index, None)
        if self._stopping:
            return
        try:
            self._spawn(index)
        except OSError as error:
            delay = self._backOff(index, steady=False)
            self._log.warn(
                "worker {index} could not be started: {reason}; trying again in {delay:g} s",
                index=index, reason=_strerror(error), delay=delay,
            )
            self._restarts[index] = self.clock.callLater(delay, self._restart, index)

    def _backOff(self, index: int, steady: bool) -> float:
        """
        @return: the seconds before worker C{index} is started again: the
            first delay if it had served steadily, else twice the last one.
        """
        self._failures[index] = 1 if steady else self._failures[index] + 1
        return min(RESTART_DELAY * 2 ** (self._failures[index] - 1), MAX_RESTART_DELAY)

    def workerReady(self, worker: WorkerProcess) -> None:
        """
        C{worker} serves: once all do, say what the server listens on.
        """
        if self._announced:
            self._log.info("worker {index} (pid {pid}) serves again", index=worker.index, pid=worker.pid)
            return
        if len(self.workers) < self.count or any(each.readyAt is None for each in self.workers.values()):
            return
        self._announced = True
        framing, suffix = self.config["framing"], self.config["suffix"]
        for listener in self.listeners:
            extra = f"; {self.count} workers" + (", one shared socket" if listener.shared else "")
            self._log.info(LISTENING, **listeningFields(listener.description, listener.address(), framing, suffix, extra))
        if self.udp is not None:
            from twisted.internet.address import IPv4Address, IPv6Address

            host, port = self.udp.getsockname()[:2]
            address = (IPv6Address if ":" in host else IPv4Address)("UDP", host, port)
            self._log.info(
                LISTENING, **listeningFields(udpDescription(self.config), address, framing, suffix, "; in worker 0")
            )
        self._log.info(
            "tcplab workers: {pids}",
            pids=", ".join(f"{index}: pid {self.workers[index].pid}" for index in sorted(self.workers)),
        )

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """
        C{worker} has exited: count what it served; unless the server is
        stopping, replace it (after a back-off) or, if the server never
        started serving, give up.
        """
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if worker.counts is not None:
            # Counters never go down: what it did stays in the totals.
            from tcplab.counts import added, retired

            self._retired = added(self._retired, retired(worker.counts))
            worker.counts = None
        for gathering in list(self._gatherings):
            gathering.answered(worker)
        if worker.stats is not None:
            self._served[worker.index].append(worker.stats)
        if worker.udpSummary is not None:
            self._udpSummary = worker.udpSummary
        if self._stopping:
            if not self.workers and self._allEnded is not None:
                self._allEnded.callback(None)
            return
        how = _howEnded(reason)
        if self.table is not None:
            self.table.forget(worker.index)
        if not self._announced:
            detail = f": {worker.lastError}" if worker.lastError else ""
            self._log.error(
                "tcplab: worker {index} {how} before it served{detail}", index=worker.index, how=how, detail=detail
            )
            self._failed = True
            self._stopReactor()
            return
        self._deaths += 1
        steady = worker.readyAt is not None and self.clock.seconds() - worker.readyAt >= STEADY
        delay = self._backOff(worker.index, steady)
        self._log.warn(
            "worker {index} (pid {pid}) {how}; starting another in {delay:g} s",
            index=worker.index, pid=worker.pid, how=how, delay=delay,
        )
        self._restarts[worker.index] = self.clock.callLater(delay, self._restart, worker.index)

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting at once, drain every worker, log one summary.
        """
        Service.stopService(self)
        self._drainStarts()
        self._stopping = True
        for restart in self._restarts.values():
            if restart.active():
                restart.cancel()
        self._restarts.clear()
        self._closeSockets()
        self._allEnded = Deferred()
        if not self.workers:
            self._allEnded.callback(None)
        else:
            for worker in self.workers.values():
                worker.send(b"stop")
            timeout = self.config["drain-timeout"] + self.config["close-timeout"] + STOP_GRACE
            self._deadline = self.clock.callLater(timeout, self._killAll)
        return self._allEnded.addCallback(self._finish).addCallback(self._stopMetrics)

    def gatherMetrics(self) -> Deferred[Any]:
        """
        Ask every worker that serves for its counts.

        @return: a L{Deferred} that fires, once all have answered (or ended)
            or after L{SCRAPE_TIMEOUT}, with the collector of the sum.
        """
        self._queries += 1
        asked = [worker for worker in self.workers.values() if worker.readyAt is not None]
        gathering = _Gathering(self._queries, asked, self)
        for worker in asked:
            worker.send(b"metrics %d" % self._queries)
        return gathering.done

    def workerAnswered(self, worker: WorkerProcess, query: int) -> None:
        """
        C{worker} has sent the counts that the scrape C{query} asked for.
        """
        for gathering in list(self._gatherings):
            if gathering.query <= query:
                gathering.answered(worker)

    def totals(self) -> dict[str, Any]:
        """
        @return: the counts of every worker, the ended ones' included.
        """
        from tcplab.counts import added, nothing

        counts = added(nothing(udp=self.config["udp"] is not None), self._retired)
        for worker in self.workers.values():
            counts = added(counts, worker.counts)
        return counts

    def abortAll(self) -> None:
        for worker in self.workers.values():
            worker.send(b"abort")

    def _killAll(self) -> None:
        self._deadline = None
        for worker in self.workers.values():
            self._log.warn("worker {index} (pid {pid}) did not stop; killing it", index=worker.index, pid=worker.pid)
            worker.kill()

    def _finish(self, _: object) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        if self.table is not None:
            self.table.close()
            self.table = None
        if self._failed:
            self.exitWith(1)
            return
        self._log.info("tcplab stopped: {summary}", summary=self.summary())

    def summary(self) -> str:
        """
        @return: the stop summary: every worker's L{ServerStats} added up,
            then what each worker served.
        """
        perWorker = [_added(stats) for stats in self._served]
        total = _added(perWorker)
        text = f"{total}; served by worker: {' / '.join(f'{stats.served:,}' for stats in perWorker)}"
        if self._deaths:
            were = "was" if self._deaths == 1 else "were"
            text += f"; {plural(self._deaths, 'worker')} died and {were} replaced (what they served is not counted)"
        if self._udpSummary is not None:
            text += f"; UDP: {self._udpSummary}"
        return text

    def _closeSockets(self) -> None:
        for listener in self.listeners:
            listener.close()
        if self.udp is not None:
            self.udp.close()


def _added(stats: list[ServerStats]) -> ServerStats:
    return ServerStats(*(sum(values) for values in zip(*stats, strict=True))) if stats else ServerStats(0, 0, 0, 0, 0)


def _howEnded(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exited"
    number = getattr(reason.value, "signal", None)
    if number:
        return f"was killed by {signal.Signals(number).name}"
    return f"exited with status {getattr(reason.value, 'exitCode', '?')}"


def _strerror(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def _reaped(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


class StartFailed(ListenFailed):
    """
    A worker could not be started with the server; the message names it
    and the reason.  (A L{ListenFailed}: twistd reports it the same way.)
    """


def _environment() -> dict[str, str]:
    # The workers run this very tcplab, wherever it was imported from.
    env = dict(os.environ)
    root = str(Path(tcplab.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _exitWith(status: int) -> None:
    # A failed start-up must end twist or twistd with a failure status, but
    # both exit 0 once the reactor stops, and no exception raised from a
    # reactor callback reaches them.  At interpreter exit (after twistd has
    # removed its pidfile), flush the log and exit with the status.
    def exit() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(status)

    atexit.register(exit)


class _Gathering:
    """
    One scrape waiting for the counts of the workers it asked.

    @ivar done: fires with a L{SupervisorCollector} once every worker asked
        has answered or ended, or after L{SCRAPE_TIMEOUT}.
    """

    def __init__(self, query: int, workers: list[WorkerProcess], supervisor: Supervisor) -> None:
        self.query = query
        self.done: Deferred[Any] = Deferred()
        self._waiting = set(workers)
        self._supervisor = supervisor
        supervisor._gatherings.append(self)
        self._timer = supervisor.clock.callLater(SCRAPE_TIMEOUT, self._fire)
        if not self._waiting:
            self._fire()

    def answered(self, worker: WorkerProcess) -> None:
        self._waiting.discard(worker)
        if not self._waiting:
            self._fire()

    def _fire(self) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self in self._supervisor._gatherings:
            self._supervisor._gatherings.remove(self)
            self.done.callback(SupervisorCollector(self._supervisor, late=len(self._waiting)))


class SupervisorCollector:
    """
    The counts of every worker added up, as one server's
    (L{tcplab.metrics.families}), and C{tcplab_workers} by state:
    C{answered} (its counts are the latest), C{late} (it did not answer in
    time: its counts are those it reported last), C{down} (ended, a
    replacement not serving yet).
    """

    def __init__(self, supervisor: Supervisor, late: int) -> None:
        self._supervisor = supervisor
        self._late = late

    def collect(self) -> Any:
        from prometheus_client.metrics_core import GaugeMetricFamily

        from tcplab.metrics import families

        supervisor = self._supervisor
        yield from families(supervisor.totals(), supervisor.config["framing"])
        serving = sum(1 for worker in supervisor.workers.values() if worker.readyAt is not None)
        workers = GaugeMetricFamily(
            "tcplab_workers",
            "Worker processes: answered (counts of this scrape), late (counts they reported last), "
            "down (ended; a replacement not serving yet).",
            labels=["state"],
        )
        workers.add_metric(["answered"], serving - self._late)
        workers.add_metric(["late"], self._late)
        workers.add_metric(["down"], supervisor.count - serving)
        yield workers
