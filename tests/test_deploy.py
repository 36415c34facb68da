"""
The deployment files in C{deploy/}: the systemd units agree with each other
and with what the tests run, and their command serves a socket passed the
way systemd passes it (C{systemd-socket-activate}); a C{systemd:} listener
without the socket it names says why in one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tcplab import systemd
from tcplab.tap import Options
from tests.serverprocess import ROOT, LoggedProcess, environment, freePort, freePorts
from tests.test_listeners import temporaryDirectory

DEPLOY = ROOT / "deploy"


def unitFile(path: Path) -> dict[str, dict[str, list[str]]]:
    """
    @return: a systemd unit file's settings, by section and key, each a list
        of its values in order (a key may be given more than once).
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: setting outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is needed (Debian package systemd; .ci/run installs it)")
    return path


class SystemdUnitTests(SynchronousTestCase):
    """
    C{deploy/tcplab.socket} and C{deploy/tcplab.service}.
    """

    def setUp(self) -> None:
        self.socketUnit = unitFile(DEPLOY / "tcplab.socket")
        self.service = unitFile(DEPLOY / "tcplab.service")
        [execStart] = self.service["Service"]["ExecStart"]
        self.command = shlex.split(execStart)

    def tcplabArguments(self) -> list[str]:
        """
        @return: the arguments of ExecStart after C{tcplab}.
        """
        return self.command[self.command.index("tcplab") + 1 :]

    def test_consistent(self) -> None:
        """
        The service's listener names the socket unit's socket: the same
        FileDescriptorName=, the address family of its ListenStream=; the
        service requires the socket; ExecStart is twist running tcplab with
        options that parse.
        """
        [listen] = self.socketUnit["Socket"]["ListenStream"]
        [name] = self.socketUnit["Socket"]["FileDescriptorName"]
        self.assertEqual(listen, "127.0.0.1:8081")
        self.assertTrue(self.command[0].endswith("/twist"), self.command)
        self.assertEqual(self.command[1:3], ["--log-format=text", "tcplab"])
        arguments = self.tcplabArguments()
        at = arguments.index("-l")
        self.assertEqual(arguments[at + 1], f"systemd:domain=INET:name={name}")
        # The rest parse (the listener only where systemd passes its socket:
        # test_activation).
        Options().parseOptions(arguments[:at] + arguments[at + 2 :])
        self.assertEqual(self.service["Unit"]["Requires"], ["tcplab.socket"])
        self.assertIn("tcplab.socket", self.service["Unit"]["After"][0].split())

    def test_restartAndHardening(self) -> None:
        """
        The service restarts on failure, stops by draining (SIGTERM to the
        supervisor only), and runs unprivileged.
        """
        settings = self.service["Service"]
        for key, value in [
            ("Restart", "on-failure"),
            ("KillMode", "mixed"),
            ("KillSignal", "SIGTERM"),
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
        ]:
            self.assertEqual(settings.get(key), [value], key)

    def test_systemdAccepts(self) -> None:
        """
        C{systemd-analyze verify} finds nothing wrong with the units (the
        service's twist replaced by this environment's, which exists).
        """
        directory = temporaryDirectory(self)
        twist = Path(sys.executable).parent / "twist"
        self.assertTrue(twist.exists(), twist)
        shutil.copy(DEPLOY / "tcplab.socket", directory)
        service = (DEPLOY / "tcplab.service").read_text().replace(self.command[0], str(twist))
        (directory / "tcplab.service").write_text(service)
        result = subprocess.run(
            [tool("systemd-analyze"), "verify", str(directory / "tcplab.socket"), str(directory / "tcplab.service")],
            capture_output=True, text=True, timeout=60, cwd=directory,
        )
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_activation(self) -> None:
        """
        The service's ExecStart, given the socket the way the socket unit
        passes it (C{systemd-socket-activate} with its FileDescriptorName=,
        on a free port instead of 8081), serves it with its workers and
        drains on SIGTERM.
        """
        [name] = self.socketUnit["Socket"]["FileDescriptorName"]
        port = freePort()
        command = [
            tool("systemd-socket-activate"), "-l", f"127.0.0.1:{port}", f"--fdname={name}",
            sys.executable, "-m", "twisted", *self.command[1:],
        ]
        server = LoggedProcess(command)
        self.addCleanup(server.stop)
        server.waitForLog("Listening on")
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
                client.sendall(b"hi")
                self.assertEqual(client.recv(100), b"hiSB")
        workers = len(os.sched_getaffinity(0))
        server.waitForLog(rf"tcplab listening on 127\.0\.0\.1:{port} \(TCP over IPv4, from systemd; raw framing, suffix 'SB'")
        if workers > 1:
            self.assertIn(f"; {workers} workers, one shared socket)", server.log())
        os.kill(server.process.pid, signal.SIGTERM)
        self.assertEqual(server.wait(30), 0, server.log())
        self.assertIn("tcplab stopped: served 6 connections", server.log())


class SystemdExplanationTests(SynchronousTestCase):
    """
    A C{systemd:} listener that finds no socket says why, in one line (it
    was Twisted's "list index out of range" or "'echo'").
    """

    def test_noSocket(self) -> None:
        self.assertIn(
            "systemd passed this process no listening socket",
            systemd.explain("systemd:domain=INET:name=echo", environ={}, sockets=0),
        )

    def test_noNames(self) -> None:
        """
        Sockets without LISTEN_FDNAMES: what Twisted needs, and where it comes from.
        """
        text = systemd.explain("systemd:domain=INET:index=0", environ={}, sockets=1)
        self.assertEqual(
            text,
            "systemd passed 1 socket without a name, and Twisted's systemd: endpoint finds sockets by the names "
            "in LISTEN_FDNAMES: set FileDescriptorName= in the socket unit, or systemd-socket-activate --fdname=NAME",
        )

    def test_otherName(self) -> None:
        self.assertEqual(
            systemd.explain("haproxy:systemd:domain=INET:name=echo", environ={"LISTEN_FDNAMES": "web:admin"}, sockets=2),
            "systemd passed no socket named 'echo' (it passed: web, admin)",
        )

    def test_indexTooHigh(self) -> None:
        self.assertEqual(
            systemd.explain("systemd:domain=INET:index=3", environ={"LISTEN_FDNAMES": "a"}, sockets=1),
            "systemd passed 1 socket: index= must be below 1",
        )

    def test_countsDisagree(self) -> None:
        self.assertIn("Twisted takes none", systemd.explain("systemd:domain=INET:name=a", {"LISTEN_FDNAMES": "a:b"}, 1))

    def test_inheritedSocketsCounted(self) -> None:
        """
        Listening sockets at consecutive descriptors are counted; a
        connected socket or another file ends the count.
        """
        with socket.socket() as listening, socket.socket() as plain:
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            first = listening.fileno()
            self.assertEqual(systemd.inheritedListeningSockets(first, most=1), 1)
            self.assertEqual(systemd.inheritedListeningSockets(plain.fileno(), most=1), 0)

    def test_withoutFdname(self) -> None:
        """
        Run as the service runs, but activated without C{--fdname}: one
        C{Error:} line explains it, and the exit status says it failed.
        """
        port = freePort()
        command = [
            tool("systemd-socket-activate"), "-l", f"127.0.0.1:{port}",
            sys.executable, "-m", "twisted", "tcplab", "-l", "systemd:domain=INET:name=echo",
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment())
        self.addCleanup(lambda: process.poll() is None and process.kill())
        try:
            # systemd-socket-activate starts the server on the first connection.
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    break
                except ConnectionRefusedError:
                    time.sleep(0.05)
            output, _ = process.communicate(timeout=30)
        finally:
            if process.stdout is not None:
                process.stdout.close()
        self.assertNotEqual(process.returncode, 0)
        errors = [line for line in output.splitlines() if line.startswith("Error:")]
        self.assertEqual(
            errors,
            [
                "Error: invalid endpoint 'systemd:domain=INET:name=echo': systemd passed 1 socket without a name, "
                "and Twisted's systemd: endpoint finds sockets by the names in LISTEN_FDNAMES: set "
                "FileDescriptorName= in the socket unit, or systemd-socket-activate --fdname=NAME"
            ],
        )
        self.assertNotIn("Traceback", output)


GUIDE = ROOT / "docs" / "deploy.md"

#: The ports the guides use, each replaced by a free one per block.
GUIDE_PORTS = ("8081", "8443", "9001", "9002", "9101", "9102", "9108")

#: A background command: C{COMMAND &}, perhaps followed by C{NAME=$!}.
_BACKGROUND = re.compile(r"^(?P<command>.*?)\s+&(?P<rest>\s+\w+=\$!)?$")


def guideBlocks(guide: Path = GUIDE) -> list[list[tuple[str, str]]]:
    """
    @return: each C{sh} block of C{guide} as its commands, each with its
        comment.
    """
    blocks = re.findall(r"```sh\n(.*?)```", guide.read_text(encoding="utf-8"), re.DOTALL)
    return [
        [(command.strip(), comment.strip()) for command, _, comment in (line.partition("  #") for line in block.splitlines()) if command.strip()]
        for block in blocks
    ]


def listeningPorts() -> set[int]:
    """
    @return: the TCP ports something listens on (from /proc, without connecting).
    """
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class GuideShell:
    """
    One bash, fed the guide's commands one at a time in a directory of its
    own; its background jobs are stopped with it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        env = environment()
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", ""), "/usr/sbin", "/sbin"])
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=directory, env=env, start_new_session=True,
        )
        self._count = 0

    def run(self, command: str, timeout: float = 60) -> tuple[int, str, str]:
        """
        Run C{command} in the foreground.

        @return: its exit status, standard output and standard error.
        """
        self._count += 1
        out, err = self.directory / f".out{self._count}", self.directory / f".err{self._count}"
        marker = f"__done{self._count}"
        self._send(f"{{ {command} ; }} > {out} 2> {err}; echo {marker} $?")
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r} did not finish in {timeout} s")
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"the shell exited running {command!r}")
            if line.startswith(marker + " "):
                return int(line.split()[1]), out.read_text(), err.read_text()

    def background(self, command: str, rest: str, log: str) -> None:
        """
        Start C{command} in the background, its output in C{log}.
        """
        self._send(f"{command} > {log} 2>&1 &{rest}")

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        # The shell and every job it started: its own process group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


class GuideTestCase(SynchronousTestCase):
    """
    Follow a guide in C{docs/} command for command.
    """

    def followGuide(self, guide: Path, count: int) -> None:
        """
        Run every C{sh} block of C{guide} (there must be C{count}) as
        written, ports and C{0.0.0.0} replaced (see docs/deploy.md's
        introduction), and check that each command prints what its comment
        says, or fails with it.
        """
        from tests.test_haproxy import configFor

        blocks = guideBlocks(guide)
        self.assertEqual(len(blocks), count)
        for number, block in enumerate(blocks, 1):
            directory = temporaryDirectory(self)
            ports = dict(zip(GUIDE_PORTS, map(str, freePorts(len(GUIDE_PORTS))), strict=True))
            (directory / "deploy").mkdir()
            config = configFor(
                int(ports["8081"]),
                [int(ports["9001"]), int(ports["9002"])],
                [int(ports["9101"]), int(ports["9102"])],
            )
            (directory / "deploy" / "haproxy.cfg").write_text(config)
            shell = GuideShell(directory)
            self.addCleanup(shell.stop)
            for step, (written, comment) in enumerate(block, 1):
                command = re.sub(
                    rf"\b({'|'.join(GUIDE_PORTS)})\b", lambda m, ports=ports: ports[m.group(1)], written
                )
                command = command.replace("interface=0.0.0.0", "interface=127.0.0.1")
                where = f"block {number}, {written!r}"
                background = _BACKGROUND.match(command)
                if background:
                    log = f"background{step}.log"
                    shell.background(background["command"], background["rest"] or "", log)
                    wanted = {int(port) for port in ports.values() if re.search(rf"\b{port}\b", command)}
                    if "deploy/haproxy.cfg" in command:
                        wanted.add(int(ports["8081"]))  # The configuration's frontend.
                    self._waitForListening(wanted, directory / log, where)
                    continue
                status, out, err = shell.run(command)
                logs = "".join(f"\n--- {log.name}:\n{log.read_text()}" for log in sorted(directory.glob("background*.log")))
                if comment.startswith("fails:"):
                    self.assertNotEqual(status, 0, where)
                    self.assertIn(comment.removeprefix("fails:").strip(), err, where)
                    self.assertEqual(err.count("\n"), 1, (where, err))
                    continue
                self.assertEqual(status, 0, f"{where}: {out}{err}{logs}")
                if comment.startswith("prints:"):
                    self.assertEqual(out, comment.removeprefix("prints:").strip() + "\n", where)
            shell.stop()
            for log in directory.glob("background*.log"):
                self.assertNotIn("Traceback", log.read_text(), log.name)

    def _waitForListening(self, ports: set[int], log: Path, where: str) -> None:
        deadline = time.monotonic() + 30
        while not ports <= listeningPorts():
            if time.monotonic() > deadline:
                text = log.read_text() if log.exists() else ""
                raise AssertionError(f"{where}: nothing listens on {ports}:\n{text}")
            time.sleep(0.05)


class DeployGuideTests(GuideTestCase):
    """
    docs/deploy.md, followed command for command.
    """

    def test_guide(self) -> None:
        """
        Every C{sh} block runs as written, and each command prints what its
        comment says, or fails with it.
        """
        from tests.test_haproxy import haproxyPath

        haproxyPath()
        self.followGuide(GUIDE, 5)
