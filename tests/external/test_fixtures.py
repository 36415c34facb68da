"""
A project's own tests, using tcplab's pytest fixtures with plain sockets: no
conftest, no reactor, nothing from tcplab's test suite.
"""

import socket
import time

import pytest


def roundTrip(address, message, timeout=10):
    with socket.create_connection(address, timeout=timeout) as client:
        client.sendall(message)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_echoServer(echo_server):
    """
    echo_server echoes raw bytes, with no suffix, on 127.0.0.1.
    """
    assert echo_server.host == "127.0.0.1"
    assert echo_server.address == ("127.0.0.1", echo_server.port)
    assert echo_server.endpoint == f"tcp:host=127.0.0.1:port={echo_server.port}"
    assert roundTrip(echo_server.address, "你好".encode()) == "你好".encode()


def test_stats(echo_server):
    """
    stats() tells what the server has served.
    """
    roundTrip(echo_server.address, b"12345")
    deadline = time.monotonic() + 10
    while (stats := echo_server.stats()).open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (stats.served, stats.refused, stats.open, stats.bytesIn, stats.bytesOut) == (1, 0, 0, 5, 5)


def test_makeEchoServer(make_echo_server):
    """
    make_echo_server starts servers with the options given, each on its own port.
    """
    lines = make_echo_server(framing="line", suffix="SB")
    frames = make_echo_server(framing="length", suffix=b"!", maxLength=16)
    assert lines.port != frames.port
    assert roundTrip(lines.address, b"one\ntwo\r\n") == b"oneSB\ntwoSB\r\n"
    assert roundTrip(frames.address, b"\x00\x00\x00\x02hi") == b"\x00\x00\x00\x03hi!"


def test_badOption(make_echo_server):
    """
    An option tcplab does not have is a TypeError; a bad value a ValueError.
    """
    with pytest.raises(TypeError, match="no option 'colour'"):
        make_echo_server(colour="blue")
    with pytest.raises(ValueError, match="--framing"):
        make_echo_server(framing="xml")


def test_slowServer(make_echo_server):
    """
    With delay=0.3, each reply takes at least 0.3 s.
    """
    slow = make_echo_server(delay=0.3)
    started = time.monotonic()
    assert roundTrip(slow.address, b"late") == b"late"
    assert 0.3 <= time.monotonic() - started < 3


def test_closingServer(make_echo_server):
    """
    With closeAfter=1, the server closes after its first reply.
    """
    closing = make_echo_server(closeAfter=1)
    with socket.create_connection(closing.address, timeout=10) as client:
        client.sendall(b"first")
        assert client.recv(100) == b"first"
        client.sendall(b"second")
        assert client.recv(100) == b""
