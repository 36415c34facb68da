"""
The wheel, installed into a fresh virtual environment, works as a user gets it:
the plugin is found and the installed server echoes over a real socket.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import ROOT, ServerProcess


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, **kwargs)


class WheelTests(SynchronousTestCase):
    """
    Build the wheel once, install it in a new venv, and use it from outside
    the source tree.
    """

    @classmethod
    def setUpClass(cls) -> None:
        cls.workdir = tempfile.TemporaryDirectory()
        work = Path(cls.workdir.name)
        built = run(sys.executable, "-m", "build", "--wheel", "--outdir", work / "dist", ROOT)
        if built.returncode != 0:
            raise RuntimeError("wheel build failed:\n" + built.stdout + built.stderr)
        [cls.wheel] = (work / "dist").glob("tcplab-*.whl")
        venv.create(work / "venv", with_pip=True)
        cls.bin = work / "venv" / "bin"
        installed = run(cls.bin / "pip", "install", "--quiet", cls.wheel)
        if installed.returncode != 0:
            raise RuntimeError("wheel install failed:\n" + installed.stdout + installed.stderr)
        cls.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    @classmethod
    def tearDownClass(cls) -> None:
        cls.workdir.cleanup()

    def test_wheelHoldsPlugin(self) -> None:
        """
        The wheel ships the plugin module and no C{__init__.py} beside it.
        """
        names = zipfile.ZipFile(self.wheel).namelist()
        self.assertIn("twisted/plugins/tcplab_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)

    def test_twistdListsPlugin(self) -> None:
        """
        The installed C{twistd --help} lists tcplab.
        """
        result = run(self.bin / "twistd", "--help", env=self.env, cwd=self.workdir.name)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("tcplab", result.stdout)

    def test_installedServerEchoes(self) -> None:
        """
        The installed C{twist tcplab} answers a plain socket client.
        """
        server = ServerProcess(
            "--suffix", "SB", "--once",
            runner=[str(self.bin / "twist"), "--log-format=text"], env=self.env, cwd=self.workdir.name,
        )
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
                client.sendall("你好".encode())
                self.assertEqual(client.recv(1024).decode(), "你好SB")
            self.assertEqual(server.wait(), 0)
        finally:
            server.stop()

    def test_consoleScript(self) -> None:
        """
        The installed C{tcplab} command prints its version.
        """
        result = run(self.bin / "tcplab", "--version", env=self.env, cwd=self.workdir.name)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("tcplab "))
