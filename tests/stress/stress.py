"""
Stress the tcplab server as hostile and unlucky clients would, and print figures.

    python -m tests.stress.stress [--seconds S] [--connections N]

Each scenario runs `twist tcplab` in a child process on 127.0.0.1 (a free port),
is bounded in bytes, connections and time, and prints one line of figures:

  - slow reader, in each framing: one client pushes up to 256 MiB without
    reading while others ping; the server's RSS growth and the pings' worst
    latency;
  - concurrency: N connections at once in each framing, random payloads, every
    byte checked;
  - hostile: garbage, resets mid-message, a connect/close flood, a 4 GiB header;
    whether the server still answers and logged no error;
  - shutdown: SIGTERM during an 8 MiB echo; bytes delivered, exit status, and
    time to exit;
  - log flood: one connection sends 2 MiB of newlines to a line server that
    logs messages while another pings; the server's log growth and CPU time,
    and the other client's worst ping;
  - dribbled partials: 300 connections each send 15,000 single bytes
    (TCP_NODELAY) of a message they never finish, in line and in length
    framing; the server's RSS growth per pending byte.

    python -m tests.stress.stress --only log-flood,dribble   # some of them
  - UDP loop: one forged datagram between two UDP echoes, with no rate limit
    (as before issue 9) and with the default one; datagrams the loop
    exchanged, CPU seconds of each server, the worst TCP ping on one of them,
    and the datagrams each did not answer.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

from tcplab.framing import encode
from tests.serverprocess import ServerProcess
from tests.streams import FLOODS, MiB

_ERRORS = ("Traceback", "Unhandled", "#critical]", "#error]")


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def readAll(sock: socket.socket, limit: int | None = None) -> bytes:
    chunks, total = [], 0
    while limit is None or total < limit:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def echoOnce(port: int, framing: str, messages: list[bytes], suffix: bytes = b"SB") -> bool:
    """
    Send C{messages} from a thread, read until the whole echo arrived; check it.
    """
    stream = b"".join(encode(framing, m) for m in messages)
    expected = b"".join(encode(framing, m + suffix) for m in messages)
    with connect(port) as sock:
        sender = threading.Thread(target=sock.sendall, args=(stream,), daemon=True)
        sender.start()
        received = readAll(sock, len(expected))
        sender.join(10)
    return received == expected


def cleanLog(server: ServerProcess) -> bool:
    log = server.log()
    return not any(error in log for error in _ERRORS)


def slowReader(seconds: float, framing: str) -> str:
    server = ServerProcess("--framing", framing, "--suffix", "SB")
    ping, pong = encode(framing, b"ping"), encode(framing, b"pingSB")
    try:
        process = psutil.Process(server.process.pid)
        before = process.memory_info().rss
        worst, pushed = 0.0, 0
        chunk = FLOODS[framing]
        deadline = time.monotonic() + seconds
        with connect(server.port) as hog:
            hog.settimeout(0.1)
            while pushed < 256 * MiB and time.monotonic() < deadline:
                try:
                    pushed += hog.send(chunk)
                except TimeoutError:
                    start = time.monotonic()
                    with connect(server.port) as pinger:
                        pinger.sendall(ping)
                        assert readAll(pinger, len(pong)) == pong
                    worst = max(worst, time.monotonic() - start)
            grown = process.memory_info().rss - before
        return (
            f"slow reader ({framing}): pushed {pushed / MiB:.0f} MiB unread in {seconds:.0f} s; server RSS "
            f"grew {grown / MiB:.1f} MiB (bound 16); other clients' worst ping {worst * 1000:.1f} ms"
        )
    finally:
        server.stop()


def concurrency(connections: int) -> str:
    results = []
    for framing in ("raw", "line", "length"):
        server = ServerProcess("--framing", framing, "--suffix", "SB", "--max-connections", str(connections + 10))
        try:
            rng = random.Random(framing)
            plans = []
            for _ in range(connections):
                count = 1 if framing == "raw" else rng.randrange(1, 50)
                plans.append(
                    [rng.randbytes(rng.randrange(1, 2000)).replace(b"\n", b"").rstrip(b"\r") or b"x" for _ in range(count)]
                )
            start = time.monotonic()
            if framing == "raw":
                # Raw replies follow the reads: one message per connection, no "SB" inside.
                plans = [[m[0].replace(b"SB", b"sb")] for m in plans]
            with ThreadPoolExecutor(max_workers=connections) as pool:
                ok = sum(pool.map(echoOnce, [server.port] * connections, [framing] * connections, plans))
            elapsed = time.monotonic() - start
            sent = sum(len(m) for plan in plans for m in plan)
            results.append(f"{framing}: {ok}/{connections} exact, {sent / MiB:.1f} MiB in {elapsed:.2f} s")
        finally:
            server.stop()
    return f"concurrency ({connections} connections at once): " + "; ".join(results)


def hostile() -> str:
    server = ServerProcess("--framing", "length", "--max-length", "1000")
    try:
        for _ in range(200):
            with connect(server.port) as sock:
                sock.sendall(os.urandom(4000))
        for _ in range(200):
            sock = connect(server.port)
            sock.sendall(encode("length", b"x" * 900)[:500])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        start = time.monotonic()
        for _ in range(2000):
            connect(server.port).close()
        flood = time.monotonic() - start
        with connect(server.port) as sock:
            sock.sendall(struct.pack(">I", 2**32 - 1))
            closed = readAll(sock) == b""
        answers = echoOnce(server.port, "length", [b"still there"], suffix=b"")
        server.stop()
        return (
            f"hostile: 200 garbage, 200 resets mid-message, 2000 connect/close in {flood:.2f} s, "
            f"4 GiB header closed: {closed}; still answers: {answers}; log clean: {cleanLog(server)}"
        )
    finally:
        server.stop()


def shutdown() -> str:
    server = ServerProcess()
    try:
        data = os.urandom(8 * MiB)
        received = bytearray()
        with connect(server.port) as sock:
            threading.Thread(target=sock.sendall, args=(data,), daemon=True).start()
            while len(received) < MiB and (chunk := sock.recv(1 << 16)):
                received += chunk
            start = time.monotonic()
            os.kill(server.process.pid, signal.SIGTERM)
            received += readAll(sock)
        code = server.wait(30)
        elapsed = time.monotonic() - start
        summary = [line for line in server.log().splitlines() if "tcplab stopped" in line]
        return (
            f"shutdown: SIGTERM after 1 MiB of an 8 MiB echo; delivered {len(received)}/{len(data)} "
            f"bytes, exact: {bytes(received) == data}; exit status {code} after {elapsed:.2f} s; "
            f"summary: {summary[-1].split('] ', 1)[-1] if summary else 'missing'}"
        )
    finally:
        server.stop()


def _quietly(send, data: bytes) -> None:
    # A sender thread whose socket the scenario may close under it.
    try:
        send(data)
    except OSError:
        pass


def _serverCpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _settle(process: psutil.Process, timeout: float = 15) -> None:
    # Wait until the server has read everything sent: its CPU time stops moving.
    deadline, last = time.monotonic() + timeout, -1.0
    while time.monotonic() < deadline and (now := _serverCpu(process)) != last:
        last = now
        time.sleep(0.3)


def logFlood(size: int = 2 * MiB, bound: float = 20) -> str:
    """
    One connection sends C{size} bytes of C{\n} to C{--framing line
    --log-messages} and reads its echo (for at most C{bound} seconds) while
    another client pings on its own connection.
    """
    server = ServerProcess("--framing", "line", "--log-messages", "--log-connections")
    try:
        process = psutil.Process(server.process.pid)
        logBefore, cpuBefore = len(server.log()), _serverCpu(process)
        pings: list[float] = []
        stop = threading.Event()

        def ping() -> None:
            with connect(server.port) as sock:
                sock.settimeout(bound + 10)
                while not stop.is_set():
                    start = time.monotonic()
                    sock.sendall(b"ping\n")
                    if readAll(sock, 5) != b"ping\n":
                        raise AssertionError("wrong ping reply")
                    pings.append(time.monotonic() - start)
                    time.sleep(0.01)

        pinger = threading.Thread(target=ping, daemon=True)
        pinger.start()
        start, echoed = time.monotonic(), 0
        with connect(server.port) as flood:
            port = flood.getsockname()[1]
            flood.settimeout(0.5)
            threading.Thread(target=_quietly, args=(flood.sendall, b"\n" * size), daemon=True).start()
            while echoed < size and time.monotonic() < start + bound:
                try:
                    chunk = flood.recv(1 << 16)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                echoed += len(chunk)
            elapsed = time.monotonic() - start
        try:
            server.waitForLog(rf"127\.0\.0\.1:{port} disconnected", timeout=10)
            closed = ""
        except AssertionError:
            closed = " (its disconnect not yet logged)"
        # Ping for a second at least, so that a fast flood is measured too.
        time.sleep(max(0.0, start + 1 - time.monotonic()))
        stop.set()
        pinger.join(bound + 10)
        log = server.log()[logBefore:]
        cpu = _serverCpu(process) - cpuBefore
        return (
            f"log flood (line, --log-messages): {size / MiB:.0f} MiB of \\n from one connection, "
            f"{echoed / MiB:.2f} MiB echoed in {elapsed:.2f} s (bound {bound:.0f} s){closed}; server log grew "
            f"{len(log.encode()) / MiB:.3f} MiB ({log.count(chr(10))} lines), server CPU {cpu:.2f} s; "
            f"other client's worst ping {max(pings, default=float('nan')) * 1000:.1f} ms ({len(pings)} pings)"
        )
    finally:
        server.stop()


def dribbledPartials(connections: int = 300, size: int = 15_000, bound: float = 15) -> str:
    """
    C{connections} connections each send C{size} single bytes, with
    C{TCP_NODELAY}, of a message they never finish (for at most C{bound}
    seconds): in line framing no C{\n}; in length framing a header announcing
    C{size} bytes, then one byte fewer.
    """
    results = []
    for framing in ("line", "length"):
        server = ServerProcess("--framing", framing, "--max-connections", str(connections + 10))
        sockets: list[socket.socket] = []
        try:
            process = psutil.Process(server.process.pid)
            for _ in range(connections):
                sockets.append(connect(server.port))
                sockets[-1].setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending, payload = 0, size
            if framing == "length":
                for sock in sockets:
                    sock.sendall(struct.pack(">I", size))
                pending, payload = 4 * connections, size - 1
            _settle(process)
            before, start = process.memory_info().rss, time.monotonic()
            for _ in range(payload):
                for sock in sockets:
                    sock.send(b"x")
                pending += connections
                if time.monotonic() > start + bound:
                    break
            elapsed = time.monotonic() - start
            _settle(process)
            grown = process.memory_info().rss - before
            results.append(
                f"{framing}: {pending / MiB:.1f} MiB pending after {elapsed:.1f} s, RSS grew {grown / MiB:.1f} MiB, "
                f"{grown / pending:.1f} B per pending byte"
            )
        finally:
            for sock in sockets:
                sock.close()
            server.stop()
    return (
        f"dribbled partials ({connections} connections x up to {size} single bytes, no end, "
        f"at most {bound:.0f} s each): " + "; ".join(results)
    )
def _freeUDPPort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _udpSummary(server: ServerProcess) -> str:
    summary = [line for line in server.log().splitlines() if "tcplab stopped" in line]
    return summary[-1].split("UDP: ", 1)[-1] if summary else "missing"


def udpLoop(seconds: float, *options: str) -> str:
    """
    Two UDP echoes, A and B, and one datagram that A answers to B: the
    forger sends it from B's port before B listens, while A is stopped
    (SIGSTOP: the kernel queues it), then B starts and A resumes.
    """
    portA, portB = _freeUDPPort(), _freeUDPPort()
    a = ServerProcess("--udp", str(portA), *options)
    b = None
    try:
        a.waitForLog(f"DatagramEcho starting on {portA}")
        processA = psutil.Process(a.process.pid)
        os.kill(a.process.pid, signal.SIGSTOP)
        while processA.status() != psutil.STATUS_STOPPED:
            time.sleep(0.01)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
            forger.bind(("127.0.0.1", portB))
            forger.sendto(b"forged", ("127.0.0.1", portA))
        b = ServerProcess("--udp", str(portB), *options)
        b.waitForLog(f"DatagramEcho starting on {portB}")
        processes = [processA, psutil.Process(b.process.pid)]
        before = [sum(p.cpu_times()[:2]) for p in processes]
        os.kill(a.process.pid, signal.SIGCONT)
        start, worst = time.monotonic(), 0.0
        while time.monotonic() - start < seconds:
            ping = time.monotonic()
            assert echoOnce(a.port, "raw", [b"ping"], suffix=b"")
            worst = max(worst, time.monotonic() - ping)
            time.sleep(0.05)
        cpu = [sum(p.cpu_times()[:2]) - used for p, used in zip(processes, before, strict=True)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(b"still there?", ("127.0.0.1", portA))
            answers = client.recv(100) == b"still there?"
        for server in (a, b):
            os.kill(server.process.pid, signal.SIGTERM)
            server.wait(30)
        summaryA, summaryB = _udpSummary(a), _udpSummary(b)
        exchanged = sum(int(summary.split(" ", 1)[0]) for summary in (summaryA, summaryB) if summary[0].isdigit())
        return (
            f"UDP loop ({' '.join(options) or 'default rate limit'}): one forged datagram; "
            f"{exchanged} datagrams exchanged in {seconds:.0f} s; CPU s used: A {cpu[0]:.2f}, B {cpu[1]:.2f}; "
            f"worst TCP ping on A {worst * 1000:.1f} ms; A still answers a client: {answers}; "
            f"A: {summaryA}; B: {summaryB}; logs clean: {cleanLog(a) and cleanLog(b)}"
        )
    finally:
        if a.process.poll() is None:
            os.kill(a.process.pid, signal.SIGCONT)
        a.stop()
        if b is not None:
            b.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5, help="slow-reader duration per framing [5]")
    parser.add_argument("--connections", type=int, default=200, help="concurrent connections [200]")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run [all]: " + ", ".join(_SCENARIOS))
    arguments = parser.parse_args()
    chosen = arguments.only.split(",") if arguments.only else list(_SCENARIOS)
    if unknown := set(chosen) - set(_SCENARIOS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for name in chosen:
        for figures in _SCENARIOS[name](arguments):
            print(figures, flush=True)
    return 0


#: Each scenario by name: what it prints, line by line, given the arguments.
_SCENARIOS = {
    "slow-reader": lambda arguments: (slowReader(arguments.seconds, framing) for framing in ("raw", "line", "length")),
    "concurrency": lambda arguments: [concurrency(arguments.connections)],
    "hostile": lambda arguments: [hostile()],
    "shutdown": lambda arguments: [shutdown()],
    "log-flood": lambda arguments: [logFlood()],
    "dribble": lambda arguments: [dribbledPartials()],
    # Without a rate limit (as before) and with the default one.
    "udp-loop": lambda arguments: (udpLoop(arguments.seconds, *options) for options in (("--udp-rate", "0"), ())),
}


if __name__ == "__main__":
    sys.exit(main())
