"""
C{tcplab bench}: a load generator for any echo server.

It opens N connections, keeps K messages in flight on each, checks every
reply byte for byte and reports messages/s, MB/s, latency percentiles, wrong
replies and failed connections.

The generator must not be what limits a measurement, so its cost is per
I{read}, never per message:

  - every message and every expected reply is built once, before the run: a
    period of distinct messages is repeated into one send buffer and one
    expected-reply buffer, so sending is one C{send} of a slice and checking
    is one C-level comparison of the bytes read with a slice of the expected
    stream;
  - replies have a known length, so the number of answered messages is an
    integer division of the bytes read, not a scan;
  - latency is recorded once per C{send} call (all the messages of one send
    share its timestamp), into a histogram keyed by microseconds;
  - the loop is a plain C{epoll} loop over non-blocking sockets, without a
    framework's per-event dispatch; C{--processes} splits the connections
    over several processes for servers faster than one core of Python.

Only when a read does not match is it examined message by message, to count
how many replies were wrong, or (raw framing with a suffix, one message in
flight) to follow a reply that came back split because the server read its
message in pieces.
"""

from tcplab.bench.address import Address, parseEndpoint, tcpAddress
from tcplab.bench.command import EXIT_FAILURE, EXIT_OK, main, runBench
from tcplab.bench.loop import connectAll, runLoad
from tcplab.bench.options import MAX_SIZE, BenchOptions
from tcplab.bench.plan import RECV_SIZE, LoadPlan
from tcplab.bench.report import formatProblems, formatSummary
from tcplab.bench.result import BenchResult
from tcplab.bench.workers import measure

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "MAX_SIZE",
    "RECV_SIZE",
    "Address",
    "BenchOptions",
    "BenchResult",
    "LoadPlan",
    "connectAll",
    "formatProblems",
    "formatSummary",
    "main",
    "measure",
    "parseEndpoint",
    "runBench",
    "runLoad",
    "tcpAddress",
]
