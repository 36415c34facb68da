"""
C{tcplab lab}: every experiment runs, in English and in Chinese, sees what the
lesson says, and measures it; the docs show only commands these tests run.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import tcplab.lab
from tcplab import cli
from tcplab.lab import EXPERIMENTS, Experiment, Record, Text, exitCode, kernel, lesson, runExperiment, runLab
from tcplab.lab.runner import LabOptions
from tcplab.lab.texts import wrap
from tests.serverprocess import ROOT, environment

#: The docs, by language.
DOCS = {"en": ROOT / "docs" / "lab.md", "zh": ROOT / "docs" / "lab.zh.md"}

#: Chinese characters.
CHINESE = re.compile(r"[\u4e00-\u9fff]")

#: An experiment must finish in about 15 s; this leaves room for a loaded machine.
BOUND = 40.0


def shCommands(path: Path) -> list[str]:
    """
    Every command in the C{```sh} blocks of C{path}.
    """
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def texts() -> list[tuple[str, Text]]:
    """
    Every L{Text} the lab's modules define, with its name.
    """
    found = []
    for module in pkgutil.iter_modules(tcplab.lab.__path__):
        imported = importlib.import_module(f"tcplab.lab.{module.name}")
        for name, value in vars(imported).items():
            if isinstance(value, Text):
                found.append((f"{module.name}.{name}", value))
    return found


class TextTests(SynchronousTestCase):
    """
    What the lab says, in two languages that cannot drift apart.
    """

    def test_sameValuesInBothLanguages(self) -> None:
        """
        A message whose English and Chinese take different values is
        refused when it is made.
        """
        Text(en="waited {wait:.1f} s", zh="等了 {wait:.1f} 秒")
        self.assertRaises(ValueError, Text, en="waited {wait} s", zh="等了 {time} 秒")

    def test_everyMessageInChinese(self) -> None:
        """
        Every message has Chinese in its Chinese version, with Chinese
        punctuation next to Chinese characters.
        """
        found = texts()
        self.assertGreater(len(found), 100)
        for name, text in found:
            self.assertTrue(text.en, name)
            # Chinese characters, or at least Chinese punctuation (a heading).
            self.assertRegex(text.zh, r"[\u4e00-\u9fff\uff01-\uff1f]", name)
            ascii = re.search(r"[\u4e00-\u9fff][,:;?!()]|[,:;?!][\u4e00-\u9fff]|\([\u4e00-\u9fff]", text.zh)
            self.assertIsNone(ascii, f"{name}: ASCII punctuation in Chinese: {text.zh!r}")

    def test_wrap(self) -> None:
        """
        Lines are wrapped to the width in terminal columns (a Chinese
        character takes two), never inside code or a number of seconds, and
        never before closing punctuation.
        """
        english = wrap("recv(1024) waited 1.0 s " * 10, "  - ", "    ", width=40)
        chinese = wrap("服务端的 recv(1024) 等了 1.0 s,一直阻塞着。" * 5, "  - ", "    ", width=40)
        for line in english + chinese:
            self.assertLessEqual(sum(2 if CHINESE.match(c) else 1 for c in line), 40, line)
            self.assertFalse(line.strip().startswith(("，", "。", ")")), line)
        self.assertEqual("".join(chinese).count("recv(1024)"), 5)
        self.assertEqual(" ".join(english).count("1.0 s"), 10)


class KernelTests(SynchronousTestCase):
    """
    Reading the kernel's connection table.
    """

    def test_parse(self) -> None:
        """
        A line of /proc/net/tcp gives the ports, the state, the queues and the timer.
        """
        table = (
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            "   0: 0100007F:1F91 00000000:0000 0A 00000000:00000006 00:00000000 00000000     0        0 1\n"
            "   1: 0100007F:1F91 0100007F:A2B4 06 00000000:00000000 03:00001770 00000000     0        0 0\n"
            "   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2\n"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".tcp") as file:
            file.write(table)
            file.flush()
            self.patch(kernel, "PROC_NET_TCP", Path(file.name))
            listening, closing = kernel.sockets()
            self.assertEqual(kernel.sockets(0xA2B4), [closing])
            self.assertEqual(kernel.sockets(0x16), [])  # not on 127.0.0.1
            self.assertEqual(kernel.stateOf(8081, 0xA2B4), "TIME_WAIT")
            self.assertEqual(kernel.stateOf(8081, 1), kernel.GONE)
        self.assertEqual((listening.localPort, listening.remotePort, listening.state), (8081, 0, "LISTEN"))
        self.assertEqual(listening.rxQueue, 6)
        self.assertEqual((closing.remotePort, closing.state), (0xA2B4, "TIME_WAIT"))
        self.assertAlmostEqual(closing.timer, 0x1770 / os.sysconf("SC_CLK_TCK"))

    def test_noProc(self) -> None:
        """
        Without /proc/net/tcp the experiments that read it say so and exit 1.
        """
        self.patch(kernel, "PROC_NET_TCP", Path(tempfile.gettempdir()) / "tcplab-no-such-file")
        for name in ("backlog", "handshake", "time-wait"):
            for lang in ("en", "zh"):
                out = io.StringIO()
                record = runExperiment(name, lang, out)
                self.assertEqual(exitCode(record), 1)
                self.assertIsNotNone(record.unavailable)
                self.assertIn("/proc/net/tcp", record.lines[-1] + record.lines[-2])
                self.assertEqual(record.unavailable, tcplab.lab.texts.NO_PROC.format(lang))


class RunnerTests(SynchronousTestCase):
    """
    The command: listing, usage errors, exit codes and JSON.
    """

    def lab(self, *args: str) -> tuple[int, str]:
        options = LabOptions()
        options.parseOptions(list(args))
        out = io.StringIO()
        return runLab(options, out), out.getvalue()

    def test_list(self) -> None:
        """
        Without a name, C{tcplab lab} lists the experiments, one line each,
        in the language asked for.
        """
        code, english = self.lab()
        self.assertEqual(code, 0)
        self.assertEqual([line.split()[0] for line in english.splitlines()], list(EXPERIMENTS))
        code, chinese = self.lab("--lang", "zh")
        self.assertEqual(len(chinese.splitlines()), len(EXPERIMENTS))
        self.assertRegex(chinese, CHINESE)
        code, listing = self.lab("--json")
        self.assertEqual(list(json.loads(listing)["experiments"]), list(EXPERIMENTS))

    def test_usageErrors(self) -> None:
        """
        An unknown experiment, language or option is one line on stderr and
        exit status 2.
        """
        for args in (["lab", "nope"], ["lab", "--lang", "fr", "reset"], ["lab", "reset", "udp"], ["lab", "--bogus"]):
            result = subprocess.run(
                [sys.executable, "-m", "tcplab", *args],
                capture_output=True, text=True, env=environment(), timeout=60,
            )
            self.assertEqual(result.returncode, 2, args)
            self.assertEqual(result.stdout, "")
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
            self.assertTrue(result.stderr.startswith("tcplab lab: "), result.stderr)

    def test_notSeen(self) -> None:
        """
        An experiment that does not see what it teaches says which check
        failed, and the command exits 1.
        """
        claim = Text(en="it rained", zh="下雨了")

        def run(record: Record) -> None:
            record.expect(True, claim)
            record.expect(False, claim)

        self.patch(tcplab.lab.runner, "EXPERIMENTS", {"weather": Experiment("weather", claim, claim, run)})
        options = LabOptions()
        options.parseOptions(["weather"])
        out = io.StringIO()
        self.assertEqual(runLab(options, out), 1)
        self.assertIn("✗ it rained", out.getvalue())
        self.assertIn("1 of 2 checks failed", out.getvalue())

    def test_serverDidNotStart(self) -> None:
        """
        An experiment that cannot finish (here: its tcplab server does not
        start) says why in one line and exits 1, without a traceback.
        """

        def run(record: Record) -> None:
            raise RuntimeError("tcplab's server did not start")

        claim = Text(en="it ran", zh="跑完了")
        self.patch(tcplab.lab.runner, "EXPERIMENTS", {"broken": Experiment("broken", claim, claim, run)})
        record = runExperiment("broken")
        self.assertEqual(exitCode(record), 1)
        self.assertEqual(record.lines[-1], "Could not finish: tcplab's server did not start")

    def test_json(self) -> None:
        """
        C{tcplab lab NAME --json}, from the command line, prints one JSON
        object with the observations and the checks, and nothing else.
        """
        result = subprocess.run(
            [sys.executable, "-m", "tcplab", "lab", "reset", "--json", "--lang", "zh"],
            capture_output=True, text=True, env=environment(), timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        report = json.loads(result.stdout)
        self.assertEqual((report["experiment"], report["lang"], report["passed"]), ("reset", "zh", True))
        self.assertEqual(report["observations"]["unreadData"], "ConnectionResetError")
        self.assertTrue(all(check["passed"] for check in report["checks"]))
        self.assertRegex(report["checks"][0]["message"], CHINESE)


class LessonServerTests(SynchronousTestCase):
    """
    The lesson's server, as the lab runs it.
    """

    def test_answersWithSB(self) -> None:
        """
        It answers every recv(1024) with the message and C{SB}, and stops
        (joined, its socket closed) on leaving its context.
        """
        with lesson.LessonServer() as server:
            with lesson.connect(server.port) as phone:
                phone.sendall("你好".encode())
                self.assertEqual(phone.recv(1024).decode(), "你好SB")
            self.assertTrue(server.waitServed(1))
        self.assertEqual(server.served[0].ended, lesson.CLIENT_LEFT)
        self.assertFalse(server._thread.is_alive())
        self.assertEqual(server._listener.fileno(), -1)

    def test_stopsWhileServing(self) -> None:
        """
        A client that stays connected does not keep the server from stopping.
        """
        with lesson.LessonServer() as server:
            with lesson.connect(server.port) as phone:
                phone.sendall(b"x")
                phone.recv(1024)
                server.stop()
        self.assertEqual(server.served[0].ended, lesson.STOPPED)


class ExperimentTests(SynchronousTestCase):
    """
    Every experiment, run as the docs show it (in English from docs/lab.md,
    in Chinese from docs/lab.zh.md), passes and measured what it teaches.
    """

    def runDocumented(self, name: str) -> list[dict[str, Any]]:
        """
        Run every command the docs show for experiment C{name}.

        @return: the observations of each run.
        """
        runs = []
        for lang, path in DOCS.items():
            commands = [c for c in shCommands(path) if shlex.split(c)[2:3] == [name]]
            self.assertEqual(len(commands), 1, f"{path.name} shows {name} {len(commands)} times")
            words = shlex.split(commands[0])
            options = cli.Options()
            options.parseOptions(words[1:])
            self.assertEqual((options.subCommand, options.subOptions["lang"]), ("lab", lang))
            out = io.StringIO()
            start = time.monotonic()
            record = runExperiment(name, lang, out)
            self.assertLess(time.monotonic() - start, BOUND)
            self.assertEqual(exitCode(record), 0, out.getvalue())
            self.assertEqual(out.getvalue(), "\n".join(record.lines) + "\n")
            if lang == "zh":
                self.assertRegex(out.getvalue().split("\n", 1)[1], CHINESE)
            else:
                self.assertNotRegex(out.getvalue(), "[，。]")
            runs.append(record.observations)
        return runs

    def check(self, name: str, assertion: Callable[[dict[str, Any]], None]) -> None:
        for observations in self.runDocumented(name):
            assertion(observations)

    def test_oneAtATime(self) -> None:
        """
        The lesson's server made client 2 wait until client 1 left; tcplab
        answered client 2 while client 1 was still connected.
        """

        def assertion(seen: dict[str, Any]) -> None:
            self.assertEqual(seen["lessonReply"], "你好2SB")
            self.assertGreaterEqual(seen["lessonWait"], seen["hold"] / 2)
            self.assertGreaterEqual(seen["lessonGapAfterFirstLeft"], 0)
            self.assertEqual(seen["tcplabReply"], "你好2SB")
            self.assertLess(seen["tcplabGapAfterFirstLeft"], 0)
            self.assertLess(seen["tcplabWait"], seen["lessonWait"])

        self.check("one-at-a-time", assertion)

    def test_emptyMessage(self) -> None:
        """
        send(b"") sent nothing and recv got nothing in its bounded wait;
        tcplab's client answered the two non-empty lines only.
        """

        def assertion(seen: dict[str, Any]) -> None:
            self.assertEqual(seen["sent"], 0)
            self.assertIsNone(seen["replyToEmpty"])
            self.assertGreaterEqual(seen["waited"], 0.9)
            self.assertEqual(seen["serverReadsMeanwhile"], 0)
            self.assertEqual(seen["followUpReply"], "你好SB")
            self.assertEqual(seen["clientExitCode"], 0)
            self.assertEqual(seen["clientReplies"], ["你好SB", "再见SB"])
            self.assertEqual(seen["serverReceived"], ["你好", "再见"])

        self.check("empty-message", assertion)

    def test_boundaries(self) -> None:
        """
        Two sends arrived in one recv and got one SB; 3000 bytes came back
        in recv(1024)-sized pieces, each with its SB; the line and length
        framings answered message by message.
        """

        def assertion(seen: dict[str, Any]) -> None:
            self.assertEqual(seen["firstRecv"], "helloworld")
            self.assertEqual(seen["mergedReply"], "helloworldSB")
            pieces = seen["pieces"]
            self.assertEqual(sum(pieces), 3000)
            self.assertGreaterEqual(len(pieces), 3)
            self.assertLessEqual(max(pieces), 1024)
            self.assertEqual(seen["suffixesBack"], len(pieces))
            self.assertEqual(seen["bytesBack"], 3000 + 2 * len(pieces))
            self.assertEqual(seen["lineReplies"], ["helloSB", "worldSB"])
            self.assertEqual(seen["lengthReplySizes"], [3002, 7])

        self.check("boundaries", assertion)

    def test_backlog(self) -> None:
        """
        With listen(5) and no accept(), 6 connections completed the
        handshake and queued, 3 stayed in SYN_SENT, and those completed
        (after a SYN was resent) once the queue was emptied.
        """

        def assertion(seen: dict[str, Any]) -> None:
            self.assertEqual((seen["backlog"], seen["completed"], seen["waiting"]), (5, 6, 3))
            self.assertEqual(seen["acceptQueue"], 6)
            self.assertEqual(seen["clientStates"], ["ESTABLISHED"] * 6 + ["SYN_SENT"] * 3)
            self.assertIn(seen["ssSendQ"], (5, None))
            self.assertEqual(len(seen["lateConnectTimes"]), 3)
            self.assertGreaterEqual(min(seen["lateConnectTimes"]), 0.9)

        self.check("backlog", assertion)

    def test_handshake(self) -> None:
        """
        The kernel showed both sides of the connection in every state, in
        order; the client, which sent the first FIN, ended in TIME_WAIT.
        """

        def assertion(seen: dict[str, Any]) -> None:
            self.assertEqual(seen["states"], seen["expected"])
            self.assertEqual(
                [step["client"] for step in seen["states"]],
                ["SYN_SENT", "ESTABLISHED", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "FIN_WAIT2", "TIME_WAIT"],
            )
            self.assertEqual(
                [step["server"] for step in seen["states"]],
                ["none", "SYN_RECV", "ESTABLISHED", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "none"],
            )
            self.assertEqual((seen["firstFin"], seen["timeWait"]), ("client", "client"))
            self.assertGreaterEqual(seen["retrySeconds"], 0.9)

        self.check("handshake", assertion)

    def test_timeWait(self) -> None:
        """
        TIME_WAIT was on the side that closed first; binding the server's
        port failed while it held TIME_WAITs, unless both old and new
        sockets had SO_REUSEADDR (tcplab's do).
        """

        def assertion(seen: dict[str, Any]) -> None:
            serverFirst, clientFirst, tcplab = seen["serverFirst"], seen["clientFirst"], seen["tcplab"]
            self.assertEqual((serverFirst["serverSide"], serverFirst["clientSide"]), (3, 0))
            self.assertEqual(serverFirst["bindWithout"], "EADDRINUSE")
            self.assertGreater(serverFirst["secondsLeft"], 30)
            self.assertEqual((clientFirst["serverSide"], clientFirst["clientSide"]), (0, 3))
            self.assertEqual(clientFirst["bindWithout"], "OK")
            self.assertEqual(tcplab["serverSide"], 3)
            self.assertEqual((tcplab["bindWithout"], tcplab["bindWithReuseAddr"]), ("EADDRINUSE", "OK"))

        self.check("time-wait", assertion)

    def test_reset(self) -> None:
        """
        Unread data and an abort reset the connection; a clean close gave
        b'' with no ConnectionResetError; a half-closed client made the
        lesson's loop spin; the fix ended it at the first b''.
        """

        def assertion(seen: dict[str, Any]) -> None:
            self.assertEqual((seen["unreadData"], seen["abort"]), ("ConnectionResetError", "ConnectionResetError"))
            self.assertGreaterEqual(seen["cleanClose"]["emptyRecvs"], 1)
            self.assertNotEqual(seen["cleanClose"]["ended"], "ConnectionResetError")
            self.assertGreater(seen["halfClose"]["emptyRecvs"], 1)
            self.assertEqual(seen["halfClose"]["ended"], lesson.TIME_LIMIT)
            self.assertEqual(seen["halfClose"]["bytesToClient"], 2 * seen["halfClose"]["replies"])
            self.assertEqual(seen["fixed"], {"recvs": 1, "ended": lesson.CLIENT_LEFT})

        self.check("reset", assertion)

    def test_udp(self) -> None:
        """
        Datagrams kept their boundaries; recvfrom(1024) truncated 3000
        bytes to 1024 and MSG_TRUNC showed it; a closed port was refused
        only on a connected socket; tcplab echoed every datagram whole.
        """

        def assertion(seen: dict[str, Any]) -> None:
            self.assertEqual(seen["received"], ["hello", "world"])
            self.assertEqual((seen["truncatedTo"], seen["nextDatagram"]), (1024, "next"))
            self.assertEqual((seen["msgTruncFlag"], seen["realLength"]), (True, 3000))
            self.assertEqual(seen["tcpConnectToClosedPort"], "ConnectionRefusedError")
            self.assertEqual(seen["udpSendToClosedPort"], 5)
            self.assertEqual(seen["unconnectedRecv"], "timeout")
            self.assertEqual(seen["connectedRecv"], "ConnectionRefusedError")
            self.assertEqual(seen["tcplabReplySizes"], [8, 3002, 7])

        self.check("udp", assertion)


class DocsTests(SynchronousTestCase):
    """
    docs/lab.md and docs/lab.zh.md cover every experiment, and show only
    commands that these tests run.
    """

    def test_everyCommandIsRun(self) -> None:
        """
        Each doc shows the listing and one command per experiment, in its
        language; L{ExperimentTests} runs the experiments' commands, and
        this test runs the listings as a user would.
        """
        for lang, path in DOCS.items():
            commands = shCommands(path)
            suffix = " --lang zh" if lang == "zh" else ""
            self.assertEqual(
                sorted(commands),
                sorted([f"tcplab lab{suffix}"] + [f"tcplab lab {name}{suffix}" for name in EXPERIMENTS]),
            )
            listing = shlex.split(commands[0])
            self.assertEqual(listing[:2], ["tcplab", "lab"])
            result = subprocess.run(
                [sys.executable, "-m", "tcplab", *listing[1:]],
                capture_output=True, text=True, env=environment(), timeout=60,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(len(result.stdout.splitlines()), len(EXPERIMENTS))

    def test_sections(self) -> None:
        """
        Each doc has a section per experiment with the lesson's note, the
        command, a real run (its first line is the experiment's heading)
        and an explanation.
        """
        for lang, path in DOCS.items():
            text = path.read_text(encoding="utf-8")
            for name, experiment in EXPERIMENTS.items():
                self.assertIn(f"## `{name}`", text)
                section = text.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
                # The lesson's claim, with its numbered note (or, where it has none, its part).
                claim = section.split("```sh", 1)[0]
                self.assertRegex(claim, r"\*\*(The lesson|课文怎么说)[.。]\*\*", name)
                self.assertRegex(claim, r"[Nn]otes? \d+|[Pp]art 3|第 \d+(、\d+)* 条|第三部分", name)
                self.assertIn(f"tcplab lab {name}", section)
                heading = Record(lang).text(tcplab.lab.texts.HEADING, name=name, summary=experiment.summary.format(lang))
                self.assertIn(wrap(heading, rest="    ")[0], section, name)
                passed = Record(lang).text(tcplab.lab.texts.PASSED)
                self.assertIn(passed, section, name)

    def test_readme(self) -> None:
        """
        The README's lab section links both docs, and its commands are ones
        docs/lab.md shows (and so ones these tests run).
        """
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        section = readme.split("## The lab\n", 1)[1].split("\n## ", 1)[0]
        self.assertIn("(docs/lab.md)", section)
        self.assertIn("(docs/lab.zh.md)", section)
        [block] = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
        commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
        self.assertTrue(commands)
        for command in commands:
            self.assertIn(command, shCommands(DOCS["en"]))


class InstalledLabTests(SynchronousTestCase):
    """
    The lab ships in the wheel and runs from an installed tcplab.
    """

    def test_installedLab(self) -> None:
        """
        The installed C{tcplab lab} runs an experiment of its own (reset)
        and one that starts the installed C{twist tcplab} (udp).
        """
        from tests.test_packaging import installation

        installed = installation()
        for name in ("reset", "udp"):
            result = subprocess.run(
                [str(installed.bin / "tcplab"), "lab", name, "--json"],
                capture_output=True, text=True, env=installed.env, cwd=installed.workdir, timeout=120,
            )
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertTrue(json.loads(result.stdout)["passed"])

