"""
C{twist tcplab --workers N}, run for real on loopback: connections spread
over the workers, a killed worker is replaced, a worker that cannot be
started is tried again (or, at start-up, ends the server in one line),
SIGTERM drains every worker into one summary, a second signal aborts, the
limits hold for all workers together, and every listener kind is served (or
refused, saying why).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcplab import coerce
from tcplab.tap import Options
from tcplab.workers.limits import ConnectionTable
from tcplab.workers.sockets import checkWorkerListener
from tcplab.workers.supervisor import STATUS_FD, StartFailed, Supervisor, WorkerProcess
from tests.serverprocess import TWIST, TWISTD, ServerProcess, environment
from tests.test_listeners import serverCertificate, socketActivation, temporaryDirectory, tlsEcho
from tests.test_robustness import MiB, connect, readAll, sendInBackground

#: The supervisor's line naming each worker's pid.
_PIDS = re.compile(r"tcplab workers: (.*)")

#: The summary's count of connections per worker.
_BY_WORKER = re.compile(r"served by worker: ([\d,]+(?: / [\d,]+)*)")


def workerPids(server: ServerProcess) -> dict[int, int]:
    """
    @return: each worker's pid, by worker number, from the start-up line.
    """
    text = server.waitForLog(_PIDS.pattern).group(1)
    return {int(index): int(pid) for index, pid in re.findall(r"(\d+): pid (\d+)", text)}


def servedByWorker(server: ServerProcess) -> list[int]:
    """
    @return: the connections each worker served, from the stop summary.
    """
    [match] = _BY_WORKER.findall(server.log())
    return [int(count.replace(",", "")) for count in match.split(" / ")]


def echo(port: int, message: bytes = b"hi", host: str = "127.0.0.1", source: str | None = None) -> bytes:
    sourceAddress = (source, 0) if source else None
    with socket.create_connection((host, port), timeout=10, source_address=sourceAddress) as client:
        client.sendall(message)
        return client.recv(1024)


def eventually(attempt: Callable[[], bytes], expected: bytes, timeout: float = 10) -> bytes:
    """
    @return: what C{attempt} returns once it is C{expected}, or when
        C{timeout} seconds have passed.
    """
    deadline = time.monotonic() + timeout
    while (result := attempt()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


class WorkerTestCase(SynchronousTestCase):
    def startServer(self, *args: str, **kwargs: object) -> ServerProcess:
        server = ServerProcess("--workers", "2", *args, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(server.stop)
        return server

    def stopServer(self, server: ServerProcess, number: int = signal.SIGTERM) -> str:
        """
        Signal C{server}, expect it to exit 0, and return its log.
        """
        os.kill(server.process.pid, number)
        self.assertEqual(server.wait(30), 0, server.log())
        output = server.log()
        for bad in ("Traceback", "Unhandled", "#critical]", "#error]"):
            self.assertNotIn(bad, output)
        return output


class BalanceTests(WorkerTestCase):
    """
    One C{SO_REUSEPORT} socket per worker: the kernel spreads connections
    between the workers by a hash of their addresses.
    """

    def test_fourHundredConnections(self) -> None:
        """
        Of 400 connections, each worker serves at least 30%; the stop
        summary counts them per worker.
        """
        server = self.startServer("--suffix", "SB")
        self.assertIn("(TCP over IPv4; raw framing, suffix 'SB'; 2 workers)", server.log())
        for _ in range(400):
            self.assertEqual(echo(server.port), b"hiSB")
        output = self.stopServer(server)
        counts = servedByWorker(server)
        self.assertEqual(sum(counts), 400, output)
        self.assertGreaterEqual(min(counts), 120, counts)
        self.assertEqual(output.count("tcplab stopped:"), 1)
        self.assertIn("tcplab stopped: served 400 connections (0 refused, 0 open); 800 bytes in, 1,600 bytes out", output)


class SupervisionTests(WorkerTestCase):
    """
    The supervisor replaces a worker that dies.
    """

    def test_killedWorkerReplaced(self) -> None:
        """
        A worker killed with SIGKILL is replaced (logged, with its back-off);
        the service answers all along, the connections that arrived for the
        dead worker's socket included, and the summary says a worker died.
        """
        server = self.startServer("--suffix", "SB")
        pids = workerPids(server)
        os.kill(pids[0], signal.SIGKILL)
        for _ in range(40):
            self.assertEqual(echo(server.port), b"hiSB")
        server.waitForLog(rf"worker 0 \(pid {pids[0]}\) was killed by SIGKILL; starting another in 0\.25 s")
        again = server.waitForLog(r"worker 0 \(pid (\d+)\) serves again")
        self.assertNotEqual(int(again.group(1)), pids[0])
        for _ in range(40):
            self.assertEqual(echo(server.port), b"hiSB")
        output = self.stopServer(server)
        self.assertIn("1 worker died and was replaced", output)
        self.assertEqual(sum(servedByWorker(server)), 80)

    def test_repeatedDeathsBackOff(self) -> None:
        """
        A worker that dies again soon after being replaced is replaced
        after twice the delay.
        """
        server = self.startServer()
        first = workerPids(server)[1]
        os.kill(first, signal.SIGKILL)
        second = int(server.waitForLog(r"worker 1 \(pid (\d+)\) serves again").group(1))
        os.kill(second, signal.SIGKILL)
        server.waitForLog(rf"worker 1 \(pid {second}\) was killed by SIGKILL; starting another in 0\.5 s")
        server.waitForLog(rf"worker 1 \(pid (?!{second})\d+\) serves again")
        self.assertEqual(echo(server.port), b"hi")
        self.stopServer(server)


    def test_terminalSignalsLeftToTheSupervisor(self) -> None:
        """
        SIGINT and SIGHUP, which a terminal sends to every process of its
        group, leave a worker serving: the supervisor handles them.
        """
        server = self.startServer()
        pids = workerPids(server)
        for number in (signal.SIGINT, signal.SIGHUP):
            os.kill(pids[0], number)
        time.sleep(1)
        for _ in range(10):
            self.assertEqual(echo(server.port), b"hi")
        output = self.stopServer(server)
        self.assertNotIn("starting another", output)

    def test_supervisorKilled(self) -> None:
        """
        Workers whose supervisor is killed (end of file on their control
        pipe) drain and exit, rather than serve on as orphans.
        """
        server = self.startServer()
        pids = workerPids(server)
        os.kill(server.process.pid, signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertFalse([pid for pid in pids.values() if _alive(pid)])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped by its dead parent yet) has exited.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


class StartFailureTests(SynchronousTestCase):
    """
    A worker that exits before the server has ever served ends the server
    with a failure, rather than being restarted for ever.
    """

    def test_workerFailsAtStart(self) -> None:
        from twisted.internet.error import ProcessTerminated
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import capturedLogs
        from twisted.python.failure import Failure

        from tcplab.workers.supervisor import Supervisor, WorkerProcess

        options = Options()
        options.parseOptions(["--workers", "2"])
        reactor = MemoryReactorClock()
        reactor.running = True
        supervisor = Supervisor(options, reactor)
        statuses: list[int] = []
        supervisor.exitWith = statuses.append
        worker = WorkerProcess(supervisor, 1)
        worker.pid, worker.lastError = 4321, "tcplab: cannot listen on ...: Permission denied"
        supervisor.workers = {1: worker}
        with capturedLogs() as events:
            supervisor.workerEnded(worker, Failure(ProcessTerminated(exitCode=1)))
        self.assertTrue(reactor.hasStopped)
        [event] = [event for event in events if event.get("log_level").name == "error"]
        self.assertEqual(
            event["log_format"].format(**event),
            "tcplab: worker 1 exited with status 1 before it served: tcplab: cannot listen on ...: Permission denied",
        )
        supervisor.stopService()
        self.assertEqual(statuses, [1])
        self.assertEqual(reactor.getDelayedCalls(), [])


#: What spawnProcess raises when the supervisor has no descriptors left.
EMFILE = OSError(errno.EMFILE, os.strerror(errno.EMFILE))


class FakeProcess:
    """
    The transport of a worker process that L{SpawningReactor} pretends to run.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list[bytes] = []
        self.signals: list[str] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class SpawningReactor(MemoryReactorClock):
    """
    A fake reactor whose C{spawnProcess} raises the errors in C{failures}
    first, then pretends to start the process.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[OSError] = []
        self.spawned: list[WorkerProcess] = []

    def spawnProcess(self, protocol: WorkerProcess, executable: str, args: list[str], **kwargs: Any) -> FakeProcess:
        if self.failures:
            raise self.failures.pop(0)
        # Never a real pid: a test must signal or reap no real process.
        transport = FakeProcess(pid=2**22 + 10 + len(self.spawned))
        self.spawned.append(protocol)
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        return transport


def ready(worker: WorkerProcess) -> None:
    worker.childDataReceived(STATUS_FD, b'{"ready": true}\n')


def messages(events: list[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


class RespawnFailureTests(SynchronousTestCase):
    """
    A replacement that cannot be started, in one process with a fake
    reactor (the listeners are real sockets on 127.0.0.1).
    """

    def serving(self) -> tuple[Supervisor, SpawningReactor, list[int]]:
        """
        @return: a supervisor whose two workers serve, its reactor, and the
            exit statuses it sets.
        """
        options = Options()
        options.parseOptions(["--workers", "2", "-l", "tcp:0:interface=127.0.0.1"])
        reactor = SpawningReactor()
        supervisor = Supervisor(options, reactor)
        self.addCleanup(supervisor._closeSockets)
        statuses: list[int] = []
        supervisor.exitWith = statuses.append
        supervisor.startService()
        for worker in list(reactor.spawned):
            ready(worker)
        self.assertEqual(sorted(supervisor.workers), [0, 1])
        return supervisor, reactor, statuses

    def failedReplacement(self, supervisor: Supervisor, reactor: SpawningReactor) -> list[str]:
        """
        Kill worker 1 and fail its replacement's spawn.

        @return: what the supervisor logged from the replacement's attempt.
        """
        supervisor.workers[1].processEnded(Failure(ProcessTerminated(signal=9)))
        self.assertNotIn(1, supervisor.workers)
        reactor.failures.append(EMFILE)
        with capturedLogs() as events:
            reactor.advance(0.25)
        self.assertEqual(reactor.failures, [])
        return messages(events)

    def test_retried(self) -> None:
        """
        The worker is not left in C{workers}; one warning says which worker
        and why; it is tried again after twice the delay, and once started,
        it serves.
        """
        supervisor, reactor, statuses = self.serving()
        logged = self.failedReplacement(supervisor, reactor)
        self.assertEqual(logged, ["worker 1 could not be started: Too many open files; trying again in 0.5 s"])
        self.assertEqual(sorted(supervisor.workers), [0])
        [retry] = reactor.getDelayedCalls()
        self.assertEqual(retry.getTime(), reactor.seconds() + 0.5)

        reactor.advance(0.5)
        replacement = supervisor.workers[1]
        self.assertIs(replacement, reactor.spawned[-1])
        self.assertEqual(len(reactor.spawned), 3)
        with capturedLogs() as events:
            ready(replacement)
        self.assertEqual(messages(events), [f"worker 1 (pid {replacement.pid}) serves again"])
        self.assertEqual(reactor.getDelayedCalls(), [])

        stopped = supervisor.stopService()
        for worker in list(supervisor.workers.values()):
            self.assertEqual(worker.transport.written, [b"stop\n"])  # type: ignore[union-attr]
            worker.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        self.assertEqual(statuses, [])

    def test_failuresBackOff(self) -> None:
        """
        Each further failure doubles the delay, up to 10 s.
        """
        supervisor, reactor, _ = self.serving()
        self.failedReplacement(supervisor, reactor)
        delays = []
        for _ in range(7):
            reactor.failures.append(EMFILE)
            [retry] = reactor.getDelayedCalls()
            delays.append(retry.getTime() - reactor.seconds())
            with capturedLogs() as events:
                reactor.advance(delays[-1])
            self.assertEqual(len(events), 1)
        self.assertEqual(delays, [0.5, 1, 2, 4, 8, 10, 10])
        self.assertNotIn(1, supervisor.workers)

    def test_stoppedWhileRetryPending(self) -> None:
        """
        Stopping while a retry is pending cancels it, and the drain waits
        only for the worker that runs: the summary is logged, with no
        failure status, nothing killed, and nothing left scheduled.
        """
        supervisor, reactor, statuses = self.serving()
        self.failedReplacement(supervisor, reactor)
        stopped = supervisor.stopService()
        [deadline] = reactor.getDelayedCalls()
        with capturedLogs() as events:
            supervisor.workers[0].processEnded(Failure(ProcessDone(0)))
        self.successResultOf(stopped)
        self.assertFalse(deadline.active())
        self.assertEqual(reactor.getDelayedCalls(), [])
        self.assertEqual(len(reactor.spawned), 2)
        self.assertEqual(statuses, [])
        [summary] = messages(events)
        self.assertTrue(summary.startswith("tcplab stopped: "), summary)
        self.assertIn("1 worker died and was replaced", summary)

    def test_noWorkerLeft(self) -> None:
        """
        With its only worker not started, a stop ends at once.
        """
        options = Options()
        options.parseOptions(["--workers", "1", "-l", "tcp:0:interface=127.0.0.1"])
        reactor = SpawningReactor()
        supervisor = Supervisor(options, reactor)
        self.addCleanup(supervisor._closeSockets)
        supervisor.exitWith = self.fail
        supervisor.startService()
        ready(reactor.spawned[0])
        supervisor.workers[0].processEnded(Failure(ProcessTerminated(signal=9)))
        reactor.failures.append(OSError(errno.EAGAIN, os.strerror(errno.EAGAIN)))
        with capturedLogs() as events:
            reactor.advance(0.25)
        self.assertEqual(
            messages(events), ["worker 0 could not be started: Resource temporarily unavailable; trying again in 0.5 s"]
        )
        self.assertEqual(supervisor.workers, {})
        self.successResultOf(supervisor.stopService())
        self.assertEqual(reactor.getDelayedCalls(), [])


class StartupSpawnFailureTests(SynchronousTestCase):
    """
    A worker that cannot be started with the server ends the server.
    """

    def supervisor(self) -> tuple[Supervisor, SpawningReactor]:
        options = Options()
        options.parseOptions(["--workers", "3", "-l", "tcp:0:interface=127.0.0.1"])
        reactor = SpawningReactor()
        supervisor = Supervisor(options, reactor)
        self.addCleanup(supervisor._closeSockets)
        original = reactor.spawnProcess

        def spawnProcess(protocol: WorkerProcess, *args: Any, **kwargs: Any) -> FakeProcess:
            if protocol.index == 2:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return original(protocol, *args, **kwargs)

        reactor.spawnProcess = spawnProcess  # type: ignore[method-assign]
        return supervisor, reactor

    def test_twist(self) -> None:
        """
        Under twist: a L{SystemExit} with the one line; the workers already
        started are sent SIGTERM; none is left in C{workers}.
        """
        supervisor, reactor = self.supervisor()
        with self.assertRaises(SystemExit) as caught:
            supervisor.startService()
        self.assertEqual(caught.exception.code, "tcplab: cannot start worker 2: Too many open files")
        self.assertEqual([worker.transport.signals for worker in reactor.spawned], [["TERM"], ["TERM"]])  # type: ignore[union-attr]
        self.assertEqual(supervisor.workers, {})
        self.assertEqual(reactor.whenRunningHooks, [])

    def test_twistd(self) -> None:
        """
        Under twistd (which started the service with privileges first): an
        L{Exception}, which twistd reports, printed as the one line.
        """
        self.patch(sys, "excepthook", sys.excepthook)
        self.patch(sys, "stderr", io.StringIO())
        self.patch(sys, "__stderr__", None)
        supervisor, reactor = self.supervisor()
        supervisor.privilegedStartService()
        with self.assertRaises(StartFailed) as caught:
            supervisor.startService()
        self.assertEqual(str(caught.exception), "cannot start worker 2: Too many open files")
        sys.excepthook(StartFailed, caught.exception, None)
        self.assertEqual(sys.stderr.getvalue(), "tcplab: cannot start worker 2: Too many open files\n")  # type: ignore[attr-defined]
        self.assertEqual(supervisor.workers, {})


def _withDescriptors(limit: int) -> None:
    # In the child before it runs: few file descriptors (the soft limit).
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def _processesMarked(mark: str) -> list[int]:
    """
    @return: the live processes whose environment holds C{mark}.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as environ:
                if mark.encode() not in environ.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(name))
    return found


class DescriptorsExhaustedTests(SynchronousTestCase):
    """
    For real: 12 workers with 40 file descriptors.  The supervisor runs out
    of descriptors for the pipes of a later worker.
    """

    def start(self, runner: list[str]) -> subprocess.CompletedProcess[str]:
        mark = f"TCPLAB_TEST_RUN={uuid.uuid4().hex}"
        env = environment()
        env.update([mark.split("=", 1)])
        result = subprocess.run(
            [*runner, "tcplab", "--workers", "12", "-l", "tcp:0:interface=127.0.0.1",
             "--metrics", "tcp:0:interface=127.0.0.1"],
            capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: _withDescriptors(40),
        )
        # The workers (which inherit the supervisor's environment) were
        # reaped before the supervisor exited.
        self.assertEqual(_processesMarked(mark), [], result.stdout + result.stderr)
        return result

    def test_twist(self) -> None:
        """
        Exit status 1, one line naming the worker and the reason, no
        traceback, no worker process left.
        """
        result = self.start(TWIST)
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(result.stdout, "")
        self.assertRegex(result.stderr, r"\Atcplab: cannot start worker ([1-9]|1[01]): Too many open files\n\Z")

    def test_twistd(self) -> None:
        """
        Under C{twistd -n}: status 1, the one line on stderr, no pidfile.
        """
        directory = temporaryDirectory(self)
        pidfile = directory / "twistd.pid"
        result = self.start([*TWISTD, "-n", "--pidfile", str(pidfile), "--logfile", str(directory / "log")])
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertRegex(result.stderr, r"\Atcplab: cannot start worker ([1-9]|1[01]): Too many open files\n\Z")
        self.assertFalse(pidfile.exists())


class DrainTests(WorkerTestCase):
    """
    SIGTERM, SIGINT or SIGHUP: every worker stops accepting at once,
    finishes its echoes, and the supervisor logs one summary for all.
    """

    def test_sigtermDrainsEveryWorker(self) -> None:
        """
        With a 4 MiB echo in flight on each of several connections (over
        both workers), SIGTERM refuses new connections at once, every echo
        completes byte for byte, and the server exits 0 with one summary.
        """
        # Generous: the drain must finish the echoes, not its timeout.
        server = self.startServer("--drain-timeout", "120")
        data = os.urandom(4 * MiB)
        clients = [connect(server.port, timeout=30) for _ in range(6)]
        try:
            senders = [sendInBackground(client, data, halfClose=False) for client in clients]
            received = [bytearray() for _ in clients]
            for client, buffer in zip(clients, received, strict=True):
                while len(buffer) < MiB:
                    buffer += client.recv(1 << 16)
            os.kill(server.process.pid, signal.SIGTERM)
            server.waitForLog("received SIGTERM: finishing open connections")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    connect(server.port, timeout=1).close()
                except ConnectionRefusedError:
                    break
                time.sleep(0.05)
            else:
                self.fail("still accepting after SIGTERM")
            for client, buffer, sender in zip(clients, received, senders, strict=True):
                while len(buffer) < len(data) and (chunk := client.recv(1 << 16)):
                    buffer += chunk
                sender.join(10)
                self.assertEqual(bytes(buffer), data)
                self.assertEqual(readAll(client), b"")
        finally:
            for client in clients:
                client.close()
        self.assertEqual(server.wait(30), 0)
        output = server.log()
        self.assertEqual(output.count("tcplab stopped:"), 1, output)
        total = 6 * len(data)
        self.assertIn(f"tcplab stopped: served 6 connections (0 refused, 0 open); {total:,} bytes in, {total:,} bytes out", output)
        self.assertEqual(sum(servedByWorker(server)), 6)
        self.assertNotIn("Traceback", output)

    def test_sigintAndSighup(self) -> None:
        """
        SIGINT and SIGHUP (sent to the supervisor only, as a terminal's
        Ctrl-C or hang-up reach it) drain the same way.
        """
        for number in (signal.SIGINT, signal.SIGHUP):
            server = self.startServer()
            self.assertEqual(echo(server.port), b"hi")
            output = self.stopServer(server, number)
            self.assertIn(f"received {signal.Signals(number).name}: finishing open connections", output)
            self.assertEqual(output.count("tcplab stopped: served 1 connection "), 1)

    def test_secondSignalAborts(self) -> None:
        """
        A second SIGTERM while connections that never read are being drained
        aborts them at once, in every worker: the server exits 0 well before
        the drain timeout.
        """
        server = self.startServer("--drain-timeout", "60")
        hogs = []
        try:
            for _ in range(4):
                hog = connect(server.port)
                hog.settimeout(0.5)
                with contextlib.suppress(TimeoutError):
                    while True:
                        hog.send(b"x" * MiB)
                hogs.append(hog)
            os.kill(server.process.pid, signal.SIGTERM)
            server.waitForLog("finishing open connections")
            started = time.monotonic()
            output = self.stopServer(server)
            self.assertLess(time.monotonic() - started, 30)
        finally:
            for hog in hogs:
                hog.close()
        self.assertIn("again: aborting open connections", output)
        self.assertIn("tcplab stopped: served 4 connections ", output)


class LimitTests(WorkerTestCase):
    """
    C{--max-connections} and C{--max-per-peer} hold for all the workers
    together, whichever worker the kernel gives a connection to.
    """

    def test_maxConnections(self) -> None:
        """
        With C{--max-connections 3}, 3 connections are served and the
        others refused, over both workers.
        """
        server = self.startServer("--framing", "line", "--max-connections", "3")
        admitted = [connect(server.port) for _ in range(3)]
        try:
            for client in admitted:
                client.sendall(b"hi\n")
                self.assertEqual(client.recv(100), b"hi\n")
            for _ in range(10):
                with connect(server.port) as extra:
                    self.assertEqual(readAll(extra), b"error: server busy (3 connections); try again later\n")
        finally:
            for client in admitted:
                client.close()
        self.assertEqual(eventually(lambda: echo(server.port, b"again\n"), b"again\n"), b"again\n")
        self.stopServer(server)

    def test_maxPerPeer(self) -> None:
        """
        With C{--max-per-peer 1}, each client address holds one connection
        in all; a second from the same address is refused whichever worker
        takes it.
        """
        server = self.startServer("--framing", "line", "--max-per-peer", "1")
        first = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.2", 0))
        other = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.3", 0))
        with first, other:
            for client in (first, other):
                client.sendall(b"hi\n")
                self.assertEqual(client.recv(100), b"hi\n")
            for _ in range(10):
                self.assertEqual(
                    echo(server.port, b"x\n", source="127.0.0.2"),
                    b"error: too many connections from your address (limit 1)\n",
                )
        # Once the worker that held it has seen it close (another worker
        # may be asked first): the address is free again.
        self.assertEqual(eventually(lambda: echo(server.port, b"free\n", source="127.0.0.2"), b"free\n"), b"free\n")
        self.stopServer(server)

    def test_deadWorkersConnectionsForgotten(self) -> None:
        """
        The connections of a worker that dies no longer count against the
        limits.
        """
        server = self.startServer("--framing", "line", "--max-connections", "1", "--log-messages")
        pids = workerPids(server)
        held = connect(server.port)
        held.sendall(b"hi\n")
        self.assertEqual(held.recv(100), b"hi\n")
        index = int(server.waitForLog(r"\[worker (\d)\] message from 127\.0\.0\.1:\d+: hi").group(1))
        os.kill(pids[index], signal.SIGKILL)
        self.assertEqual(readAll(held), b"")
        held.close()
        server.waitForLog(rf"worker {index} \(pid \d+\) serves again")
        self.assertEqual(echo(server.port, b"next\n"), b"next\n")
        self.stopServer(server)


class ListenerKindTests(WorkerTestCase):
    """
    Every listener kind is served by the workers.
    """

    def test_tcp6(self) -> None:
        server = self.startServer("--suffix", "SB", listen="tcp6:0:interface=\\:\\:1")
        self.assertEqual(echo(server.port, host="::1"), b"hiSB")
        self.assertIn("(TCP over IPv6; raw framing, suffix 'SB'; 2 workers)", server.log())
        self.stopServer(server)

    def test_unix(self) -> None:
        """
        A UNIX socket is shared by the workers; it stays while a worker is
        replaced, and is removed when the server stops.
        """
        path = temporaryDirectory(self) / "echo.sock"
        server = self.startServer(listen=f"unix:{path}", started="2 workers, one shared socket")

        def unixEcho() -> bytes:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(10)
                client.connect(str(path))
                client.sendall(b"hi")
                return client.recv(100)

        self.assertEqual(unixEcho(), b"hi")
        pids = workerPids(server)
        os.kill(pids[1], signal.SIGTERM)  # It drains and exits: its port stops listening.
        server.waitForLog(r"worker 1 \(pid \d+\) serves again")
        self.assertTrue(path.exists())
        for _ in range(10):
            self.assertEqual(unixEcho(), b"hi")
        self.stopServer(server)
        self.assertFalse(path.exists())

    def test_ssl(self) -> None:
        """
        C{ssl:} with certificates made by trustme, in each worker.
        """
        authority, key, chain = serverCertificate(self)
        server = self.startServer(listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={chain}")
        for _ in range(6):
            self.assertEqual(tlsEcho(authority, server.port), b"hi")
        self.assertIn("(TLS over TCP over IPv4; raw framing; 2 workers)", server.log())
        self.stopServer(server)

    def test_tls(self) -> None:
        """
        C{tls:} (a directory of PEM files, SNI) in each worker.
        """
        authority, key, chain = serverCertificate(self)
        directory = temporaryDirectory(self)
        (directory / "localhost.pem").write_bytes(key.read_bytes() + chain.read_bytes())
        server = self.startServer(listen=f"tls:{directory}:port=0:interface=127.0.0.1")
        for _ in range(6):
            self.assertEqual(tlsEcho(authority, server.port), b"hi")
        self.stopServer(server)

    def test_haproxyTCP(self) -> None:
        """
        C{haproxy:tcp:}: each worker reads the PROXY header, and logs the
        client it names.
        """
        server = self.startServer("--log-connections", listen="haproxy:tcp:0:interface=127.0.0.1")
        header = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
        for _ in range(6):
            self.assertEqual(echo(server.port, header + b"hi"), b"hi")
        server.waitForLog(r"\[worker \d\] 192\.0\.2\.7:5555 disconnected after")
        self.assertIn("(TCP over IPv4, PROXY protocol; raw framing; 2 workers)", server.log())
        self.stopServer(server)

    def test_haproxyUNIX(self) -> None:
        path = temporaryDirectory(self) / "echo.sock"
        server = self.startServer(listen=f"haproxy:unix:{path}", started="2 workers, one shared socket")
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(path))
            client.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nhi")
            self.assertEqual(client.recv(100), b"hi")
        self.stopServer(server)

    def test_systemd(self) -> None:
        """
        A socket from systemd (here C{systemd-socket-activate}) is shared by
        the workers.
        """
        port, runner = socketActivation()
        server = self.startServer(listen="systemd:domain=INET:name=echo", runner=runner, started="Listening on")
        self.assertEqual(echo(port), b"hi")
        server.waitForLog(rf"tcplab listening on 127\.0\.0\.1:{port} \(TCP over IPv4, from systemd; raw framing; 2 workers, one shared socket\)")
        for _ in range(10):
            self.assertEqual(echo(port), b"hi")
        self.stopServer(server)

    def test_udp(self) -> None:
        """
        C{--udp}: one UDP socket, in worker 0, next to the TCP workers.
        """
        server = self.startServer("--udp", "0", "--suffix", "SB")
        port = int(server.waitForLog(r"tcplab listening on 127\.0\.0\.1:(\d+) \(UDP over IPv4; datagram framing, suffix 'SB'; in worker 0\)").group(1))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(10)
            client.sendto(b"hi", ("127.0.0.1", port))
            self.assertEqual(client.recv(100), b"hiSB")
        self.assertEqual(echo(server.port), b"hiSB")
        output = self.stopServer(server)
        self.assertRegex(output, r"tcplab stopped: served 1 connection .*; UDP: ")

    def test_twistd(self) -> None:
        """
        Under C{twistd -n} as under C{twist}: its log holds the workers'
        events, and SIGTERM drains them.
        """
        server = self.startServer("--suffix", "SB", "--log-connections", twistd=True)
        for _ in range(4):
            self.assertEqual(echo(server.port), b"hiSB")
        output = self.stopServer(server)
        self.assertRegex(output, r"\[worker [01]\] 127\.0\.0\.1:\d+ disconnected after")
        self.assertIn("tcplab stopped: served 4 connections", output)

    def test_addressInUse(self) -> None:
        """
        A port in use is one line and exit status 1, before any worker
        starts: C{SO_REUSEPORT} does not let the workers join the listener
        already there.
        """
        from tests.serverprocess import takenPort, twist

        with takenPort() as port:
            result = twist("--workers", "2", "-l", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"tcplab: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use", result.stdout + result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)


class WorkerOptionTests(SynchronousTestCase):
    """
    What C{--workers} accepts.
    """

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_default(self) -> None:
        """
        One worker (the single-process server) by default.
        """
        self.assertEqual(self.parse()["workers"], 1)

    def test_auto(self) -> None:
        """
        C{0} and C{auto} mean one per CPU this process may run on.
        """
        cpus = len(os.sched_getaffinity(0))
        self.assertEqual(self.parse("--workers", "auto")["workers"], cpus)
        self.assertEqual(self.parse("--workers", "0")["workers"], cpus)
        self.assertEqual(coerce.workers("3"), 3)

    def test_bad(self) -> None:
        for value, message in (("-1", "must be at least 0"), ("many", "expected a whole number")):
            with self.assertRaises(usage.UsageError) as caught:
                self.parse("--workers", value)
            self.assertIn("--workers: ", str(caught.exception))
            self.assertIn(message, str(caught.exception))

    def test_onceRefused(self) -> None:
        """
        C{--once} serves one connection in one process.
        """
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--workers", "2", "--once")
        self.assertIn("--once serves one connection, in one process", str(caught.exception))

    def test_lockfileRefused(self) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("--workers", "2", "-l", "unix:/tmp/x.sock:lockfile=1")
        self.assertIn("lockfile=1 is not supported with --workers", str(caught.exception))

    def test_otherKindsRefused(self) -> None:
        """
        A listener kind the supervisor cannot make or inherit is refused in one line.
        """
        with self.assertRaises(ValueError) as caught:
            checkWorkerListener("onion:80")
        self.assertIn("--workers serves tcp:, tcp6:, ssl:, tls:, unix: and systemd: listeners", str(caught.exception))


class ConnectionTableTests(SynchronousTestCase):
    """
    The shared counts behind the limits (in this one process; the workers
    share them through the memory file).
    """

    def table(self, workers: int = 2, maxConnections: int = 0, maxPerPeer: int = 0) -> ConnectionTable:
        table = ConnectionTable.create(workers, maxConnections, maxPerPeer)
        self.addCleanup(table.close)
        return table

    def test_maxConnections(self) -> None:
        """
        The limit holds for the sum over the workers.
        """
        table = self.table(maxConnections=3)
        self.assertEqual([table.acquire(worker, "h") for worker in (0, 1, 0, 1)], [None, None, None, "busy"])
        table.release(1, "h")
        self.assertIsNone(table.acquire(1, "h"))
        self.assertEqual(table.totals(), (2, 1))

    def test_maxPerPeer(self) -> None:
        table = self.table(maxPerPeer=2)
        self.assertEqual([table.acquire(worker, "a") for worker in (0, 1, 0)], [None, None, "peer"])
        self.assertIsNone(table.acquire(0, "b"))
        table.release(0, "a")
        self.assertEqual(table.peerCount("a"), 1)
        self.assertIsNone(table.acquire(1, "a"))

    def test_forget(self) -> None:
        """
        A dead worker's connections are no longer counted.
        """
        table = self.table(maxConnections=10, maxPerPeer=2)
        for host in ("a", "b", "c"):
            table.acquire(0, host)
            table.acquire(1, host)
        table.forget(0)
        self.assertEqual(table.totals(), (0, 3))
        self.assertEqual([table.peerCount(host) for host in ("a", "b", "c")], [1, 1, 1])
        table.forget(1)
        self.assertEqual([table.peerCount(host) for host in ("a", "b", "c")], [0, 0, 0])

    def test_manyHosts(self) -> None:
        """
        Entries come and go, colliding in a table twice the size of the
        limit, and each host's count stays exact.
        """
        table = self.table(maxConnections=64, maxPerPeer=3)
        held: dict[tuple[str, int], int] = {}
        for round in range(30):
            for number in range(80):
                host, worker = f"10.0.{round % 4}.{number}", number % 2
                expected = None
                if sum(held.values()) >= 64:
                    expected = "busy"
                elif sum(count for (h, _), count in held.items() if h == host) >= 3:
                    expected = "peer"
                self.assertEqual(table.acquire(worker, host), expected)
                if expected is None:
                    held[host, worker] = held.get((host, worker), 0) + 1
            for key in list(held)[round % 2 :: 2]:
                host, worker = key
                for _ in range(held.pop(key)):
                    table.release(worker, host)
            for host in {host for host, _ in held}:
                self.assertEqual(table.peerCount(host), sum(c for (h, _), c in held.items() if h == host), host)
