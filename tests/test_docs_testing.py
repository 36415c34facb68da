"""
docs/testing.md's examples work as written: each Python block is a test file,
run with pytest from a temporary folder against the installed plugin; each
command line parses; the README's testing example is one of them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tcplab.faults import OPTIONS
from tcplab.tap import Options
from tests.serverprocess import ROOT

DOC = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def examples() -> dict[str, str]:
    """
    The doc's Python blocks, by the file name on their first line.
    """
    named = {}
    for block in blocks(DOC, "python"):
        first = block.splitlines()[0]
        named[first.removeprefix("# ")] = block
    return named


def pytest(folder: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *arguments],
        capture_output=True, text=True, cwd=folder, env=env, timeout=600, stdin=subprocess.DEVNULL,
    )


class TestingDocTests(SynchronousTestCase):
    """
    Run what docs/testing.md shows.
    """

    def test_everyBlockIsATestFile(self) -> None:
        """
        Each Python block starts with the name of the test file it is.
        """
        names = list(examples())
        self.assertEqual(len(names), len(blocks(DOC, "python")))
        for name in names:
            self.assertRegex(name, r"^test_\w+\.py$")

    def test_examplesPass(self) -> None:
        """
        Every example passes: the pytest-twisted one with pytest-twisted, the
        others (trial's TestCase among them) without it.
        """
        folder = Path(tempfile.mkdtemp(prefix="tcplab-docs-"))
        self.addCleanup(shutil.rmtree, folder, ignore_errors=True)
        twisted, plain = [], []
        for name, block in examples().items():
            (folder / name).write_text(block, encoding="utf-8")
            (twisted if "pytest_twisted" in block else plain).append(name)
        self.assertEqual(len(twisted), 1)
        for arguments in (["-p", "no:twisted", *plain], twisted):
            result = pytest(folder, *arguments)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            self.assertRegex(result.stdout, r"\d+ passed")
            self.assertNotRegex(result.stdout, r"failed|error")

    def test_commandsParse(self) -> None:
        """
        Every C{twist tcplab} command line the doc shows is valid.
        """
        [commands] = blocks(DOC, "sh")
        lines = [line.split("#")[0] for line in commands.splitlines() if line.strip()]
        self.assertEqual(len(lines), 5)
        for line in lines:
            words = shlex.split(line)
            self.assertEqual(words[:2], ["twist", "tcplab"])
            Options().parseOptions(words[2:])

    def test_faultTable(self) -> None:
        """
        The table names every fault option with its keyword.
        """
        for field, option in OPTIONS.items():
            self.assertRegex(DOC, rf"\| `--{option}[^`]*` \| `{field}` \|")

    def test_costScript(self) -> None:
        """
        The script behind the doc's figures of faults turned off runs, and
        prints a table per load (here briefly, against this very revision).
        """
        self.assertIn("python -m benchmarks.fault_layer --baseline ", DOC)
        # The script compares with a revision of the repository: the suite
        # runs in a git checkout (.ci/run runs in a clone).
        self.assertTrue((ROOT / ".git").exists(), "run the tests in a git checkout of tcplab")
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.fault_layer", "--baseline", "HEAD", "--duration", "0.3", "--repeat", "1"],
            capture_output=True, text=True, cwd=ROOT, timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("### ping-pong 10 x 64 B", result.stdout)
        self.assertIn("| this tree, inert fault layer |", result.stdout)

    def test_readmeExample(self) -> None:
        """
        The README's testing example is the start of the doc's first example.
        """
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        [example] = [block for block in blocks(readme, "python") if "echo_server" in block]
        self.assertTrue(examples()["test_with_fixtures.py"].startswith(example))
        self.assertIn("(docs/testing.md)", readme)
