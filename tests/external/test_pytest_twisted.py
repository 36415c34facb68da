"""
The fixtures next to pytest-twisted, whose reactor runs the test: the
server, in a process of its own, does not touch it.
"""

import pytest_twisted
from twisted.internet import defer, reactor

from tcplab import EchoClient


@pytest_twisted.inlineCallbacks
def test_echoClient(echo_server):
    """
    An EchoClient on pytest-twisted's reactor talks to echo_server.
    """
    client = yield EchoClient.connect(reactor, echo_server.endpoint)
    reply = yield client.request("你好".encode())
    assert reply == "你好".encode()
    yield client.close()


@pytest_twisted.ensureDeferred
async def test_lineServer(make_echo_server):
    """
    An async test, with a line server made for it.
    """
    server = make_echo_server(framing="line", suffix="SB")
    client = await EchoClient.connect(reactor, server.endpoint, framing="line")
    replies = await defer.gatherResults([client.request(b"one"), client.request(b"two")])
    assert replies == [b"oneSB", b"twoSB"]
    await client.close()
    assert server.stats().served == 1


@pytest_twisted.ensureDeferred
async def test_clientTimeout(make_echo_server):
    """
    The reason to have faults: a client's timeout, met for real.
    """
    slow = make_echo_server(framing="line", delay=2)
    client = await EchoClient.connect(reactor, slow.endpoint, framing="line", timeout=0.3)
    try:
        await client.request(b"hello?")
    except Exception as error:
        assert type(error).__name__ == "ReplyTimeout"
    else:
        raise AssertionError("no timeout")
