"""
tests/external/ is a test suite as another project would write it: it uses
the C{echo_server} and C{make_echo_server} fixtures and tcplab's testing
helpers, with no conftest and nothing from tcplab's own tests.  Here it runs
from a temporary folder, outside the source tree, so that pytest finds the
fixtures through the installed C{pytest11} entry point only.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

EXTERNAL = Path(__file__).resolve().parent / "external"


def runSuite(*arguments: str) -> subprocess.CompletedProcess[str]:
    """
    Run pytest on a copy of tests/external/ in a new temporary folder.
    """
    folder = Path(tempfile.mkdtemp(prefix="tcplab-external-"))
    try:
        for test in EXTERNAL.glob("test_*.py"):
            shutil.copy(test, folder)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *arguments],
            capture_output=True, text=True, cwd=folder, env=env, timeout=600, stdin=subprocess.DEVNULL,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def plugins(output: str) -> str:
    match = re.search(r"^plugins: (.*)$", output, re.MULTILINE)
    return match.group(1) if match else ""


class ExternalSuiteTests(SynchronousTestCase):
    """
    Run tests/external/ as another project would.
    """

    def test_withPytestTwisted(self) -> None:
        """
        The whole suite passes with pytest-twisted running its reactor in
        the test process: its Twisted tests use the fixtures' servers.
        """
        result = runSuite()
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertRegex(plugins(result.stdout), r"\btcplab-")
        self.assertRegex(plugins(result.stdout), r"\btwisted-")
        self.assertIn("PASSED test_pytest_twisted.py::test_echoClient", result.stdout)
        self.assertRegex(result.stdout, r"\b12 passed\b")

    def test_plainPytest(self) -> None:
        """
        The fixtures work in a plain pytest run, with no reactor in the test
        process (pytest-twisted disabled).
        """
        result = runSuite("-p", "no:twisted", "test_fixtures.py", "test_unittest_style.py")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertRegex(plugins(result.stdout), r"\btcplab-")
        self.assertNotRegex(plugins(result.stdout), r"\btwisted-")
        self.assertIn("PASSED test_fixtures.py::test_makeEchoServer", result.stdout)
        self.assertRegex(result.stdout, r"\b9 passed\b")

    def test_importsNothingFromTcplabTests(self) -> None:
        """
        The suite imports tcplab and its testing helpers, never tcplab's own tests.
        """
        for test in EXTERNAL.glob("*.py"):
            tree = ast.parse(test.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                else:
                    continue
                for name in names:
                    self.assertFalse(name.split(".")[0] in ("tests", "conftest"), (test.name, name))
        self.assertFalse((EXTERNAL / "conftest.py").exists())
