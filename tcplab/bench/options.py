"""
The command line of C{tcplab bench}.
"""

from __future__ import annotations

from twisted.python import usage

from tcplab import coerce, defaults
from tcplab.bench.address import parseEndpoint, tcpAddress, withSources
from tcplab.framing import checkSuffix

#: The largest message: as long as the longest reply the client accepts.
MAX_SIZE = defaults.CLIENT_MAX_LENGTH


class BenchOptions(coerce.CommandOptions):
    """
    Options of C{tcplab bench}.
    """

    synopsis = "Usage: tcplab bench [options] [HOST PORT]"
    longdesc = (
        "Measure an echo server: open --connections connections to HOST PORT "
        f"(default {defaults.HOST} {defaults.PORT}) or to --connect ENDPOINT, keep "
        "--pipeline messages in flight on each, check every reply byte for byte, "
        "and print messages/s, MB/s, latency percentiles and errors. The server "
        "must echo each message followed by --suffix (tcplab's own framings). "
        "In raw framing the server suffixes each read: a message it reads in "
        "pieces comes back split, which is counted apart. With --reconnect N, "
        "each connection is closed after N messages and a new one takes its "
        "place: the connection rate and connect latency are measured too."
    )
    optFlags = [
        ["json", None, "Print one JSON object instead of the summary."],
        ["spin", None, "Poll without sleeping: quicker to see replies, but uses a whole CPU."],
    ]
    optParameters = [
        [
            "connect",
            "e",
            None,
            "Connect to this endpoint instead of HOST PORT: tcp:host=H:port=P, "
            "tcp6:host=H:port=P or unix:path=FILE, or Twisted's short forms "
            "tcp:H:P and unix:FILE; an IPv6 H is written plain (::1) or, as "
            "Twisted escapes colons, \\:\\:1. No TLS.",
        ],
        ["connections", "c", 10, "Connections to open.", coerce.positive],
        [
            "size",
            "s",
            64,
            f"Message payload size in bytes (without framing), at most {MAX_SIZE}.",
            coerce.size,
        ],
        ["duration", "d", None, "Run this many seconds [default: 5].", coerce.seconds],
        ["requests", "n", None, "Send this many messages in all, then stop.", coerce.positive],
        ["pipeline", "k", 1, "Messages in flight on each connection.", coerce.positive],
        [
            "reconnect",
            None,
            None,
            "Close each connection after this many messages and open a new one "
            "in its place (1: one message per connection).",
            coerce.positive,
        ],
        [
            "framing",
            "f",
            defaults.FRAMING,
            "raw, line (\\n-terminated) or length (4-byte big-endian prefix).",
            coerce.framing,
        ],
        ["suffix", None, "", "Text the server appends to every reply (UTF-8)."],
        ["processes", "p", 1, "Load-generating processes.", coerce.positive],
        [
            "bind",
            None,
            None,
            "Connect from these local addresses in turn, comma-separated (e.g. "
            "127.0.0.1,127.0.0.2): one source address makes at most about 14,000 "
            "connections a second to one server address, as its ephemeral ports "
            "wait in TIME_WAIT before reuse.",
        ],
        ["timeout", None, 10.0, "Give up after this many seconds connecting, or without a reply.", coerce.seconds],
    ]

    def getSynopsis(self) -> str:
        return self.synopsis

    def parseArgs(self, host: str | None = None, port: str | None = None, *extra: str) -> None:
        if extra:
            raise usage.UsageError(f"unexpected argument {extra[0]!r}: give HOST and PORT, or neither")
        if host is not None and port is None:
            raise usage.UsageError("give both HOST and PORT, or neither")
        self["host"] = host
        try:
            self["port"] = None if port is None else coerce.remotePort(port)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None

    def postOptions(self) -> None:
        if self["connect"] is not None and self["host"] is not None:
            raise usage.UsageError("give either --connect or HOST PORT, not both")
        if self["duration"] is not None and self["requests"] is not None:
            raise usage.UsageError("give either --duration or --requests, not both")
        if self["duration"] is None and self["requests"] is None:
            self["duration"] = 5.0
        if self["size"] > MAX_SIZE:
            raise usage.UsageError(f"--size must be at most {MAX_SIZE} bytes")
        if self["timeout"] == 0:
            raise usage.UsageError("--timeout must be more than 0 seconds")
        if self["duration"] == 0:
            raise usage.UsageError("--duration must be more than 0 seconds")
        if self["processes"] > self["connections"]:
            raise usage.UsageError("--processes must not exceed --connections")
        self["suffix"] = coerce.utf8(self["suffix"])
        try:
            checkSuffix(self["framing"], self["suffix"])
        except ValueError as error:
            raise usage.UsageError(f"--suffix: {error}") from None
        if self["framing"] == "raw" and self["suffix"] and self["pipeline"] > 1:
            raise usage.UsageError(
                "--suffix in raw framing needs --pipeline 1: the server suffixes "
                "each read, not each message, so the replies to several messages "
                "in flight cannot be checked"
            )
        try:
            self["address"] = (
                parseEndpoint(self["connect"])
                if self["connect"] is not None
                else tcpAddress(self["host"] or defaults.HOST, self["port"] or defaults.PORT)
            )
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        if self["bind"] is not None:
            try:
                self["address"] = withSources(self["address"], [part.strip() for part in self["bind"].split(",")])
            except ValueError as error:
                raise usage.UsageError(str(error)) from None
