"""
C{twist tcplab --metrics}, run for real on loopback: a known exchange, then
C{/metrics} scraped over HTTP and parsed with C{prometheus_client}'s parser
shows exactly that traffic, in every framing, for UDP, with one process
and with two workers; C{/healthz} fails from the moment a drain starts.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
import urllib.error
import urllib.request

from twisted.trial.unittest import SynchronousTestCase

from tcplab.framing import encode
from tests.serverprocess import ROOT, TWISTD, LoggedProcess, ServerProcess, freePorts, takenPort, twist
from tests.test_deploy import GuideTestCase
from tests.test_listeners import temporaryDirectory
from tests.test_metrics import Samples, parse, tcpFigures, value
from tests.test_robustness import readExactly

#: The metrics listener the tests give: a free port on loopback.
METRICS = "tcp:0:interface=127.0.0.1"

#: The start-up line of the metrics listener.
_METRICS_PORT = r"tcplab metrics on 127\.0\.0\.1:(\d+) \(/metrics, /healthz\)"

CONNECTIONS = 4
MESSAGES = 25


def get(port: int, path: str) -> tuple[int, bytes]:
    """
    @return: the status and body of C{GET path} on 127.0.0.1:C{port}.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200, (status, body)
    return parse(body.decode())


class MetricsServerTestCase(SynchronousTestCase):
    def startServer(self, *args: str) -> tuple[ServerProcess, int]:
        """
        @return: a server started with C{args} and C{--metrics}, and its metrics port.
        """
        server = ServerProcess("--metrics", METRICS, *args)
        self.addCleanup(server.stop)
        return server, int(server.waitForLog(_METRICS_PORT).group(1))

    def exchange(self, port: int, framing: str, suffix: bytes) -> tuple[int, int]:
        """
        C{CONNECTIONS} connections, each C{MESSAGES} messages of its own
        size, one at a time (so that a raw message is one read), then closed.

        @return: the bytes sent and received.
        """
        sent = received = 0
        for n in range(CONNECTIONS):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                for m in range(MESSAGES):
                    message = b"m" * (1 + n + m)
                    request, reply = encode(framing, message), encode(framing, message + suffix)
                    client.sendall(request)
                    self.assertEqual(readExactly(client, len(reply)), reply)
                    sent, received = sent + len(request), received + len(reply)
        return sent, received

    def closedScrape(self, port: int, connections: int) -> Samples:
        """
        @return: a scrape once every connection has closed on the server side.
        """
        deadline = time.monotonic() + 10
        while True:
            samples = scrape(port)
            if value(samples, "tcplab_connection_duration_seconds_count") == connections or time.monotonic() > deadline:
                return samples
            time.sleep(0.05)

    def assertExact(self, samples: Samples, sent: int, received: int) -> None:
        figures = tcpFigures(samples)
        figures["durations"] = value(samples, "tcplab_connection_duration_seconds_count")
        self.assertEqual(
            figures,
            {
                "tcplab_connections_accepted_total": CONNECTIONS,
                "tcplab_connections_open": 0,
                "tcplab_bytes_received_total": sent,
                "tcplab_bytes_sent_total": received,
                "tcplab_messages_total": CONNECTIONS * MESSAGES,
                "tcplab_messages_too_long_total": 0,
                "tcplab_idle_timeouts_total": 0,
                "durations": CONNECTIONS,
            },
        )

    def stop(self, server: ServerProcess) -> str:
        os.kill(server.process.pid, signal.SIGTERM)
        self.assertEqual(server.wait(30), 0, server.log())
        output = server.log()
        for bad in ("Traceback", "Unhandled", "#critical]"):
            self.assertNotIn(bad, output)
        return output


class ExactScrapeTests(MetricsServerTestCase):
    """
    After N connections x M messages, every counter of a real scrape equals
    the traffic.
    """

    def test_raw(self) -> None:
        """
        Raw framing, with a UDP echo: TCP counts, and every datagram.
        """
        server, metrics = self.startServer("--suffix", "SB", "--udp", "0")
        udpPort = int(server.waitForLog(r"tcplab listening on 127\.0\.0\.1:(\d+) \(UDP").group(1))
        sent, received = self.exchange(server.port, "raw", b"SB")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.bind(("127.0.0.1", 0))
            for n in range(MESSAGES):
                client.sendto(b"d" * n, ("127.0.0.1", udpPort))
                self.assertEqual(client.recv(100), b"d" * n + b"SB")
        samples = self.closedScrape(metrics, CONNECTIONS)
        self.assertExact(samples, sent, received)
        self.assertEqual(value(samples, "tcplab_udp_datagrams_total"), MESSAGES)
        self.assertEqual(value(samples, "tcplab_udp_bytes_received_total"), sum(range(MESSAGES)))
        self.assertEqual(value(samples, "tcplab_udp_bytes_sent_total"), sum(range(MESSAGES)) + 2 * MESSAGES)
        self.assertEqual(value(samples, "tcplab_udp_dropped_total", reason="over-rate"), 0)
        self.assertEqual(value(samples, "tcplab_build_info", version="0.1.0", framing="raw"), 1)
        self.stop(server)

    def test_line(self) -> None:
        """
        Line framing: one message a line.
        """
        server, metrics = self.startServer("--framing", "line", "--suffix", "SB")
        sent, received = self.exchange(server.port, "line", b"SB")
        self.assertExact(self.closedScrape(metrics, CONNECTIONS), sent, received)
        self.stop(server)

    def test_length(self) -> None:
        """
        Length framing: one message a frame.
        """
        server, metrics = self.startServer("--framing", "length")
        sent, received = self.exchange(server.port, "length", b"")
        self.assertExact(self.closedScrape(metrics, CONNECTIONS), sent, received)
        self.stop(server)

    def test_twoWorkers(self) -> None:
        """
        With C{--workers 2}, one scrape of the supervisor shows the sum over
        both workers, exactly; both answered, none late.
        """
        server, metrics = self.startServer("--workers", "2", "--framing", "line", "--max-connections", "2")
        server.waitForLog(r"tcplab workers: ")
        sent, received = self.exchange(server.port, "line", b"")
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
        try:
            for client in held:
                client.sendall(b"held\n")
                self.assertEqual(readExactly(client, 5), b"held\n")
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as refused:
                self.assertIn(b"server busy", readExactly(refused, 100))
            samples = scrape(metrics)
            self.assertEqual(value(samples, "tcplab_connections_open"), 2)
        finally:
            for client in held:
                client.close()
        samples = self.closedScrape(metrics, CONNECTIONS + 2)
        self.assertEqual(value(samples, "tcplab_connections_refused_total", reason="busy"), 1)
        self.assertEqual(value(samples, "tcplab_messages_total"), CONNECTIONS * MESSAGES + 2)
        self.assertEqual(value(samples, "tcplab_bytes_received_total"), sent + 10)
        self.assertEqual(value(samples, "tcplab_bytes_sent_total"), received + 10)
        self.assertEqual(value(samples, "tcplab_connections_accepted_total"), CONNECTIONS + 2)
        self.assertEqual(value(samples, "tcplab_workers", state="answered"), 2)
        self.assertEqual(value(samples, "tcplab_workers", state="late"), 0)
        output = self.stop(server)
        self.assertIn(f"served {CONNECTIONS + 2} connections (1 refused, 0 open)", output)

    def test_replacedWorkerKept(self) -> None:
        """
        A worker killed after a scrape is replaced; what it had reported
        stays in the totals: the counters do not go down.
        """
        server, metrics = self.startServer("--workers", "2")
        server.waitForLog(r"tcplab workers: ")
        pids = [int(pid) for pid in server.waitForLog(r"tcplab workers: 0: pid (\d+), 1: pid (\d+)").groups()]
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
                client.sendall(b"hi")
                self.assertEqual(readExactly(client, 2), b"hi")
        before = self.closedScrape(metrics, 20)
        self.assertEqual(value(before, "tcplab_connections_accepted_total"), 20)
        os.kill(pids[0], signal.SIGKILL)
        server.waitForLog(r"worker \d \(pid \d+\) serves again")
        after = scrape(metrics)
        self.assertEqual(value(after, "tcplab_connections_accepted_total"), 20)
        self.assertEqual(value(after, "tcplab_messages_total"), 20)
        self.stop(server)


class HealthTests(MetricsServerTestCase):
    """
    C{/healthz} is 200 while serving and 503 from the moment a drain starts,
    while the metrics stay up until the server exits.
    """

    def assertDrainSwitch(self, *args: str) -> None:
        server, metrics = self.startServer("--drain-timeout", "60", *args)
        self.assertEqual(get(metrics, "/healthz"), (200, b"serving\n"))
        self.assertEqual(get(metrics, "/")[0], 404)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
            client.sendall(b"hold")
            self.assertEqual(readExactly(client, 4), b"hold")
            os.kill(server.process.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while get(metrics, "/healthz")[0] == 200 and time.monotonic() < deadline:
                time.sleep(0.02)
            self.assertEqual(get(metrics, "/healthz"), (503, b"draining\n"))
            # Still draining: the connection is open and echoes, the metrics
            # still served.
            client.sendall(b"more")
            self.assertEqual(readExactly(client, 4), b"more")
            self.assertEqual(value(scrape(metrics), "tcplab_connections_open"), 1)
            self.assertIsNone(server.process.poll())
        self.assertEqual(server.wait(30), 0, server.log())

    def test_oneProcess(self) -> None:
        """
        One process: SIGTERM with a connection open.
        """
        self.assertDrainSwitch()

    def test_twoWorkers(self) -> None:
        """
        Two workers: SIGTERM to the supervisor, a connection open in a worker.
        """
        self.assertDrainSwitch("--workers", "2")


class MetricsOptionTests(SynchronousTestCase):
    """
    A bad C{--metrics} is one line, and so is a metrics port already taken.
    """

    def test_badEndpoint(self) -> None:
        """
        An endpoint Twisted cannot parse: one C{Error:} line naming the option.
        """
        result = twist("--metrics", "tcp:notaport")
        self.assertNotEqual(result.returncode, 0)
        errors = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if line.startswith("Error:")]
        self.assertEqual(len(errors), 1, result.stdout + result.stderr)
        self.assertIn("--metrics: invalid endpoint 'tcp:notaport'", errors[0])
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_addressInUse(self) -> None:
        """
        A metrics port already taken ends the server (one process or a
        supervisor) with status 1 and one line.
        """
        for workers in ("1", "2"):
            with takenPort() as port:
                result = twist(
                    "-l", "tcp:0:interface=127.0.0.1", "--workers", workers,
                    "--metrics", f"tcp:{port}:interface=127.0.0.1",
                )
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertIn(
                f"tcplab: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use",
                result.stdout + result.stderr,
            )
            self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_twistdAddressInUse(self) -> None:
        """
        Under C{twistd -n} too (which starts listening before it sheds
        privileges): status 1, the one line on stderr, no pidfile.
        """
        directory = temporaryDirectory(self)
        pidfile = directory / "twistd.pid"
        for workers in ("1", "2"):
            with takenPort() as port:
                result = twist(
                    "-l", "tcp:0:interface=127.0.0.1", "--workers", workers,
                    "--metrics", f"tcp:{port}:interface=127.0.0.1",
                    runner=[*TWISTD, "-n", "--pidfile", str(pidfile), "--logfile", str(directory / "log")],
                )
            self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
            self.assertEqual(
                result.stderr.strip().splitlines(),
                [f"tcplab: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use"],
            )
            self.assertFalse(pidfile.exists())

    def test_helpNamesIt(self) -> None:
        """
        C{--help} lists the option.
        """
        result = twist("--help")
        self.assertIn("--metrics=", result.stdout)


GUIDE = ROOT / "docs" / "metrics.md"


class MetricsGuideTests(GuideTestCase):
    """
    docs/metrics.md, as written.
    """

    def test_guide(self) -> None:
        """
        Its C{sh} block runs command for command, and prints what it says.
        """
        self.followGuide(GUIDE, 1)

    def test_embeddingExample(self) -> None:
        """
        The embedding example serves the echo and its metrics (on free
        ports instead of 8081 and 9108).
        """
        [example] = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
        echoPort, metricsPort = freePorts(2)
        program = example.replace("tcp:8081", f"tcp:{echoPort}").replace("tcp:9108", f"tcp:{metricsPort}")
        process = LoggedProcess([sys.executable, "-c", program])
        self.addCleanup(process.stop)
        deadline = time.monotonic() + 20
        while True:
            try:
                client = socket.create_connection(("127.0.0.1", echoPort), timeout=10)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline or process.process.poll() is not None:
                    self.fail(f"the example never listened:\n{process.log()}")
                time.sleep(0.1)
        with client:
            client.sendall(b"one\ntwo\n")
            self.assertEqual(readExactly(client, 12), b"oneSB\ntwoSB\n")
            samples = scrape(metricsPort)
        self.assertEqual(value(samples, "tcplab_messages_total"), 2)
        self.assertEqual(value(samples, "tcplab_build_info", version="0.1.0", framing="line"), 1)
