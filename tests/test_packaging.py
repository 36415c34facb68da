"""
The wheel, installed into a fresh virtual environment, works as a user gets it:
the plugin is found and the installed server echoes over a real socket.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ROOT, ServerProcess, assertLessonOnce


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, **kwargs)


@dataclass(frozen=True)
class Installation:
    """
    The wheel, and a fresh venv it is installed in.
    """

    workdir: Path
    wheel: Path
    bin: Path
    env: dict[str, str]


@cache
def installation() -> Installation:
    """
    Build the wheel and install it into a new venv, once per test run.
    """
    work = Path(tempfile.mkdtemp(prefix="tcplab-wheel-"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    built = run(sys.executable, "-m", "build", "--wheel", "--outdir", work / "dist", ROOT)
    if built.returncode != 0:
        raise RuntimeError("wheel build failed:\n" + built.stdout + built.stderr)
    [wheel] = (work / "dist").glob("tcplab-*.whl")
    venv.create(work / "venv", with_pip=True)
    installed = run(work / "venv" / "bin" / "pip", "install", "--quiet", wheel)
    if installed.returncode != 0:
        raise RuntimeError("wheel install failed:\n" + installed.stdout + installed.stderr)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return Installation(work, wheel, work / "venv" / "bin", env)


class WheelTests(SynchronousTestCase):
    """
    Build the wheel, install it in a new venv, and use it from outside the
    source tree.
    """

    def setUp(self) -> None:
        self.installed = installation()

    def test_wheelHoldsPlugin(self) -> None:
        """
        The wheel ships the plugin module and no C{__init__.py} beside it.
        """
        names = zipfile.ZipFile(self.installed.wheel).namelist()
        self.assertIn("twisted/plugins/tcplab_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)

    def test_twistdListsPlugin(self) -> None:
        """
        The installed C{twistd --help} lists tcplab.
        """
        result = run(self.installed.bin / "twistd", "--help", env=self.installed.env, cwd=self.installed.workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("tcplab", result.stdout)

    def test_installedServerEchoes(self) -> None:
        """
        The installed C{twist tcplab} answers a plain socket client.
        """
        server = ServerProcess(
            "--suffix", "SB", "--once",
            runner=[str(self.installed.bin / "twist"), "--log-format=text"], env=self.installed.env, cwd=self.installed.workdir,
        )
        assertLessonOnce(self, server)

    def test_consoleScript(self) -> None:
        """
        The installed C{tcplab} command prints its version.
        """
        result = run(self.installed.bin / "tcplab", "--version", env=self.installed.env, cwd=self.installed.workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("tcplab "))
