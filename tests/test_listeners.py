"""
Every listener form C{twist tcplab --help} shows, started for real on
loopback: TCP over IPv6, UNIX sockets, TLS (C{ssl:} and C{tls:}, with
certificates made by trustme), and sockets inherited from systemd.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
from pathlib import Path

import trustme
from twisted.trial.unittest import SynchronousTestCase

from tests.serverprocess import TWIST, ServerProcess


def temporaryDirectory(test: SynchronousTestCase) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="tcplab-"))
    test.addCleanup(shutil.rmtree, directory)
    return directory


def serverCertificate(test: SynchronousTestCase) -> tuple[trustme.CA, Path, Path]:
    """
    @return: a new trustme CA, and the files of the key and the certificate
        chain it issued for C{localhost} and C{127.0.0.1}.
    """
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost", "127.0.0.1")
    directory = temporaryDirectory(test)
    key, chain = directory / "key.pem", directory / "chain.pem"
    certificate.private_key_pem.write_to_path(str(key))
    certificate.cert_chain_pems[0].write_to_path(str(chain))
    return authority, key, chain


def tlsEcho(authority: trustme.CA, port: int, message: bytes = b"hi") -> bytes:
    """
    @return: the reply to C{message} over TLS to C{localhost} on 127.0.0.1:C{port},
        trusting C{authority}.
    """
    context = ssl.create_default_context()
    authority.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(message)
            return client.recv(100)


def socketActivation(name: str = "echo") -> tuple[int, list[str]]:
    """
    @return: a free port on 127.0.0.1, and the command that runs
        C{twist} with a socket bound there passed as systemd passes it
        (C{systemd-socket-activate}, which starts it on the first
        connection), named C{name}.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        raise AssertionError("systemd-socket-activate is needed (Debian package systemd)")
    return port, [activate, "-l", f"127.0.0.1:{port}", f"--fdname={name}", *TWIST]


class ListenerFormTests(SynchronousTestCase):
    """
    The server echoes on every kind of listener, and its start-up line says
    which kind it is.
    """

    def _server(self, listen: str, *args: str, runner: list[str] | None = None) -> ServerProcess:
        server = ServerProcess("--suffix", "SB", *args, listen=listen, runner=runner)
        self.addCleanup(server.stop)
        return server

    def test_tcp6(self) -> None:
        """
        C{tcp6:0:interface=\\:\\:1} listens on IPv6 loopback.
        """
        server = self._server("tcp6:0:interface=\\:\\:1")
        with socket.create_connection(("::1", server.port), timeout=10) as client:
            client.sendall("你好".encode())
            self.assertEqual(client.recv(100), "你好SB".encode())
        self.assertIn(f"tcplab listening on [::1]:{server.port} (TCP over IPv6;", server.log())

    def test_unix(self) -> None:
        """
        C{unix:PATH} listens on a UNIX socket.
        """
        path = temporaryDirectory(self) / "echo.sock"
        server = ServerProcess("--suffix", "SB", listen=f"unix:{path}", started="UNIX socket")
        self.addCleanup(server.stop)
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(path))
            client.sendall(b"hi")
            self.assertEqual(client.recv(100), b"hiSB")
        self.assertIn(f"tcplab listening on {path} (UNIX socket;", server.log())

    def test_ssl(self) -> None:
        """
        C{ssl:0:privateKey=K:certKey=C} serves TLS with that certificate.
        """
        authority, key, chain = serverCertificate(self)
        server = self._server(f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={chain}")
        self.assertEqual(tlsEcho(authority, server.port, "你好".encode()), "你好SB".encode())
        self.assertIn(f"tcplab listening on 127.0.0.1:{server.port} (TLS over TCP over IPv4;", server.log())

    def test_tls(self) -> None:
        """
        C{tls:DIRECTORY:port=0} serves TLS with the certificate of the name
        the client asks for (SNI), from a directory of PEM files.
        """
        authority = trustme.CA()
        certificate = authority.issue_cert("localhost")
        directory = temporaryDirectory(self)
        with open(directory / "localhost.pem", "wb") as pem:
            pem.write(certificate.private_key_pem.bytes())
            for blob in certificate.cert_chain_pems:
                pem.write(blob.bytes())
        server = self._server(f"tls:{directory}:port=0:interface=127.0.0.1")
        self.assertEqual(tlsEcho(authority, server.port, "你好".encode()), "你好SB".encode())
        self.assertIn("(TLS over TCP over IPv4;", server.log())


    def test_systemd(self) -> None:
        """
        C{systemd:domain=INET:name=NAME} serves a socket systemd passed in
        (here C{systemd-socket-activate}, which binds it and starts the server
        on the first connection).
        """
        port, runner = socketActivation()
        server = ServerProcess(
            "--suffix", "SB", listen="systemd:domain=INET:name=echo", runner=runner, started="Listening on"
        )
        self.addCleanup(server.stop)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"hi")
            self.assertEqual(client.recv(100), b"hiSB")
        server.waitForLog(rf"tcplab listening on 127\.0\.0\.1:{port} \(TCP over IPv4, from systemd;")
