"""
The wheel, installed into a fresh virtual environment, works as a user gets it:
the plugin is found and the installed server echoes over a real socket.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
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


def workdir(prefix: str) -> Path:
    """
    @return: a new temporary folder, removed when the test run ends.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def sourceCopy(destination: Path) -> Path:
    """
    Copy the project's source tree to C{destination}, so that building or
    installing it writes nothing (C{build/}, C{*.egg-info}, C{dropin.cache})
    into the work tree.
    """
    shutil.copytree(
        ROOT,
        destination,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", "_trial_temp*",
            ".hypothesis", ".pytest_cache", ".ruff_cache", "dropin.cache",
        ),
    )
    return destination


@cache
def installation() -> Installation:
    """
    Build the wheel and install it into a new venv, once per test run.
    """
    work = workdir("tcplab-wheel-")
    source = sourceCopy(work / "source")
    built = run(sys.executable, "-m", "build", "--wheel", "--outdir", work / "dist", source)
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

    def test_wheelHoldsTestingHelpers(self) -> None:
        """
        The wheel ships tcplab.testing and registers its pytest plugin.
        """
        wheel = zipfile.ZipFile(self.installed.wheel)
        names = wheel.namelist()
        for module in ("__init__", "memory", "plugin", "process", "serve"):
            self.assertIn(f"tcplab/testing/{module}.py", names)
        [entryPoints] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        self.assertIn("[pytest11]\ntcplab = tcplab.testing.plugin", wheel.read(entryPoints).decode())

    def test_installedTestingHelpers(self) -> None:
        """
        The installed C{runningEchoServer} starts the installed server (no
        pytest needed) and reads its stats.
        """
        script = (
            "import socket\n"
            "from tcplab.testing import runningEchoServer\n"
            "with runningEchoServer(suffix='SB') as server:\n"
            "    with socket.create_connection(server.address, timeout=10) as client:\n"
            "        client.sendall(b'hi')\n"
            "        assert client.recv(100) == b'hiSB'\n"
            "    print(server.stats().served)\n"
        )
        result = run(self.installed.bin / "python", "-c", script, env=self.installed.env, cwd=self.installed.workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.strip(), "1")

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

    def test_installedWorkersEcho(self) -> None:
        """
        The installed C{twist tcplab --workers 2} starts its workers (the
        wheel holds C{tcplab.workers}) and they answer.
        """
        server = ServerProcess(
            "--workers", "2", "--suffix", "SB",
            runner=[str(self.installed.bin / "twist"), "--log-format=text"], env=self.installed.env, cwd=self.installed.workdir,
        )
        try:
            self.assertIn("2 workers)", server.log())
            for _ in range(4):
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
                    client.sendall(b"hi")
                    self.assertEqual(client.recv(100), b"hiSB")
        finally:
            server.stop()
        self.assertIn("tcplab stopped: served 4 connections", server.log())

    def test_consoleScript(self) -> None:
        """
        The installed C{tcplab} command prints its version.
        """
        result = run(self.installed.bin / "tcplab", "--version", env=self.installed.env, cwd=self.installed.workdir)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(result.stdout.startswith("tcplab "))


class EditableInstallTests(SynchronousTestCase):
    """
    The development install the README gives makes C{twist tcplab} run the
    source tree.
    """

    def test_compatEditableInstall(self) -> None:
        """
        C{pip install -e . --config-settings editable_mode=compat} (the
        default editable mode hides C{twisted/plugins} from Twisted's plugin
        scan) gives a C{twist} that finds tcplab and runs the source's code.
        """
        work = workdir("tcplab-editable-")
        source = sourceCopy(work / "source")
        venv.create(work / "venv", with_pip=True)
        installed = run(
            work / "venv" / "bin" / "pip", "install", "--quiet", "-e", source,
            "--config-settings", "editable_mode=compat",
        )
        self.assertEqual(installed.returncode, 0, installed.stdout + installed.stderr)
        # An edit to the source shows at once: it is the code that runs.
        plugin = source / "twisted" / "plugins" / "tcplab_plugin.py"
        plugin.write_text(plugin.read_text().replace("A TCP/UDP echo server", "An edited echo server"))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        listed = run(work / "venv" / "bin" / "twistd", "--help", env=env, cwd=work)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("An edited echo server", listed.stdout)
        help = run(work / "venv" / "bin" / "twist", "tcplab", "--help", env=env, cwd=work)
        self.assertEqual(help.returncode, 0, help.stderr)
        self.assertIn("--framing", help.stdout)
