"""
The README's examples work as written.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from tcplab.tap import Options
from tests.serverprocess import ROOT, ServerProcess, environment, freePort

README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    """
    The README's fenced code blocks in C{language}.
    """
    return re.findall(rf"```{language}\n(.*?)```", README, re.DOTALL)


class ReadmeTests(SynchronousTestCase):
    """
    Run what the README shows.
    """

    def test_setUpCommands(self) -> None:
        """
        The set-up commands are the ones CI and the packaging test run.
        """
        commands = [block.strip() for block in blocks("sh")[:2]]
        self.assertEqual(
            commands,
            [
                "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/twist tcplab --suffix SB",
                "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/python -m pytest",
            ],
        )
        self.assertIn(commands[1].split(" && ", 1)[1], (ROOT / ".ci" / "run").read_text())

    def test_serverCommandsParse(self) -> None:
        """
        Every server command line in the README is valid.
        """
        lines = [line.split("#")[0] for line in blocks("sh")[2].splitlines() if line.strip()]
        self.assertGreaterEqual(len(lines), 4)
        for line in lines:
            words = shlex.split(line)
            self.assertIn(words[0], ("twist", "twistd"))
            Options().parseOptions(words[words.index("tcplab") + 1 :])

    def test_unitTestExample(self) -> None:
        """
        The unit-testing example runs, and its assertion holds.
        """
        [example] = [block for block in blocks("python") if "StringTransport" in block]
        exec(compile(example, "README.md", "exec"), {})

    def test_embeddingExample(self) -> None:
        """
        The embedding example serves line echo with the C{SB} suffix (run on a
        free port instead of 8081).
        """
        [example] = [block for block in blocks("python") if "reactor.run()" in block]
        port = freePort()
        process = subprocess.Popen(
            [sys.executable, "-c", example.replace("tcp:8081", f"tcp:{port}")],
            env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            for _ in range(100):
                try:
                    client = socket.create_connection(("127.0.0.1", port), timeout=10)
                    break
                except ConnectionRefusedError:
                    if process.poll() is not None:
                        self.fail(process.stderr.read().decode())
                    time.sleep(0.1)
            else:
                self.fail("the example never listened")
            with client:
                client.sendall(b"hello\n")
                self.assertEqual(client.recv(1024), b"helloSB\n")
        finally:
            process.terminate()
            process.wait(10)
            process.stderr.close()

    def test_clientExamples(self) -> None:
        """
        The README's client examples are the ones docs/client.md shows, which
        the client's tests run.
        """
        docs = (ROOT / "docs" / "client.md").read_text(encoding="utf-8")
        commands = [line.split("#")[0].strip() for line in blocks("sh")[3].splitlines()]
        self.assertTrue(all(command.startswith(("tcplab client", "printf")) for command in commands))
        for command in commands:
            self.assertIn(command, docs)
        [library] = [block for block in blocks("python") if "EchoClient" in block]
        self.assertIn(library, docs)

    def test_performanceCommands(self) -> None:
        """
        Every command that docs/performance.md shows is a module that runs
        and describes itself.
        """
        performance = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
        modules = re.findall(r"^    \.venv/bin/python -m (\S+)", performance, re.MULTILINE)
        self.assertEqual(
            sorted(set(modules)),
            [
                "benchmarks.compare_twisted",
                "benchmarks.framing_cost",
                "benchmarks.run_all",
                "benchmarks.workers",
                "tests.stress.stress",
            ],
        )
        for module in set(modules):
            result = subprocess.run(
                [sys.executable, "-m", module, "--help"],
                capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=60,
            )
            self.assertEqual(result.returncode, 0, (module, result.stderr))

    def test_framingCostScript(self) -> None:
        """
        The in-process cost script of docs/performance.md runs and prints
        its table.
        """
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.framing_cost", "--reads", "5"],
            capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("tcplab length+SB vs Int32StringReceiver+SB | 16-111 B mixed", result.stdout)

    def test_measuringCommands(self) -> None:
        """
        The C{tcplab bench} examples (long connections, and one message per
        connection) measure the README's own server (the set-up's C{twist
        tcplab} options; a free port instead of 8081, one second instead of
        five) without a wrong reply; the benchmark suite's command describes
        itself.
        """
        *benches, suite = [line.split("#")[0].strip() for line in blocks("sh")[4].splitlines()]
        self.assertEqual(len(benches), 2)
        serverArgs = shlex.split(blocks("sh")[0].split("twist tcplab", 1)[1])
        for bench in benches:
            words = shlex.split(bench)
            self.assertEqual((words[:2], words[-2:]), (["tcplab", "bench"], ["127.0.0.1", "8081"]))
            self.assertIn("--duration", words)
            server = ServerProcess(*serverArgs)
            try:
                words[-1] = str(server.port)
                words[words.index("--duration") + 1] = "1"
                result = subprocess.run(
                    [sys.executable, "-m", "tcplab", *words[1:]],
                    capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=60, stdin=subprocess.DEVNULL,
                )
            finally:
                server.stop()
            self.assertEqual((result.returncode, result.stderr), (0, ""), bench)
            self.assertIn("0 wrong replies, 0 split replies, 0 unanswered", result.stdout)
        result = subprocess.run(
            [sys.executable, *shlex.split(suite)[1:], "--help"],
            capture_output=True, text=True, env=environment(), cwd=ROOT, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
