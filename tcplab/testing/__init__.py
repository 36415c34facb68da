"""
tcplab as a test instrument: real echo servers for tests (L{runningEchoServer},
and the C{echo_server} and C{make_echo_server} pytest fixtures of
L{tcplab.testing.plugin}), and in-memory connections for trial-style tests
(L{InMemoryServer}, L{connectInMemory}).  Faults are in L{tcplab.faults}.
"""

from tcplab.testing.memory import InMemoryServer, MemoryConnection, MemoryTransport, connectInMemory
from tcplab.testing.process import DatagramStats, EchoServerProcess, ServerFailed, runningEchoServer

__all__ = [
    "DatagramStats",
    "EchoServerProcess",
    "InMemoryServer",
    "MemoryConnection",
    "MemoryTransport",
    "ServerFailed",
    "connectInMemory",
    "runningEchoServer",
]
