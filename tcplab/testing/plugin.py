"""
pytest fixtures that start real tcplab servers, registered by tcplab's
C{pytest11} entry point: installing tcplab is enough, no conftest needed.

  - C{echo_server}: a server with the defaults (raw framing, no suffix) on
    127.0.0.1, on a free port, for one test;
  - C{make_echo_server(**options)}: start another server with C{twist tcplab}
    options as keywords (C{framing="line"}, C{suffix="SB"}, C{delay=0.3}...)
    and return it; every server it started is stopped when the test ends.

Each server is an L{EchoServerProcess} (C{.host}, C{.port}, C{.address},
C{.endpoint}, C{.stats()}), in a child process: see
L{tcplab.testing.process} for why, and why that works next to pytest-twisted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tcplab.testing.process import EchoServerProcess


@pytest.fixture
def make_echo_server() -> Iterator[Callable[..., EchoServerProcess]]:
    """
    A function that starts a tcplab server with the options given as
    keywords, and returns it; all of them stop when the test ends.
    """
    servers: list[EchoServerProcess] = []

    def make(**options: object) -> EchoServerProcess:
        server = EchoServerProcess(**options)
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in reversed(servers):
            server.stop()


@pytest.fixture
def echo_server(make_echo_server: Callable[..., EchoServerProcess]) -> EchoServerProcess:
    """
    A tcplab server with the defaults (raw framing, no suffix) on 127.0.0.1,
    on a free port, for this test.
    """
    return make_echo_server()
