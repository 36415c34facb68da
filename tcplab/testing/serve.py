"""
C{python -m tcplab.testing.serve [twist tcplab options]}: the child process
of L{tcplab.testing.process.EchoServerProcess}.

It runs the twistd plugin's service, as C{twist tcplab} would, and talks to
its parent over its standard streams:

  - once listening, it writes one JSON line to standard output,
    C{{"listening": [{"address": ..., "kind": "TCP", "host": ..., "port": ...}, ...]}},
    or C{{"error": "..."}} if it cannot start (and exits 1);
  - each C{stats} line read from standard input is answered with
    C{{"stats": {...ServerStats...}, "datagrams": {...} or null}};
  - C{stop} stops it as SIGTERM does (the service drains), and so does the
    end of standard input; C{abort}, while it drains, drops what is left,
    as a second SIGTERM does;
  - its log goes to standard error, as text.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from twisted.application.internet import UDPServer
from twisted.internet.interfaces import IReactorCore
from twisted.logger import LogEvent, globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage

from tcplab.faults import FaultyDatagramProtocol
from tcplab.tap import EchoService, Options, buildService

_ADDRESS = re.compile(r"^(?:\[(?P<v6>.*)\]|(?P<v4>[^:]*)):(?P<port>\d+)$")


def describeListener(event: LogEvent) -> dict[str, Any]:
    """
    @param event: a C{tcplab listening on ...} log event of L{EchoService}.
    @return: the listener it announces, for the parent.
    """
    kind = str(event["kind"]).split()[0]
    listener: dict[str, Any] = {"address": event["address"], "kind": kind}
    match = _ADDRESS.match(event["address"])
    if match and kind != "UNIX":
        listener["host"] = match.group("v6") or match.group("v4")
        listener["port"] = int(match.group("port"))
    return listener


class _Control(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self, service: EchoService, reactor: IReactorCore) -> None:
        self._service = service
        self._reactor = reactor
        self._stopping = False

    def lineReceived(self, line: bytes) -> None:
        command = line.strip()
        if command == b"stats":
            self.answer({"stats": self._service.factory.stats()._asdict(), "datagrams": self._datagrams()})
        elif command == b"stop":
            self._stop()
        elif command == b"abort":
            self._service.factory.abortAll()
        else:
            self.answer({"error": f"unknown command {line!r}"})

    def answer(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(message).encode() + b"\n")

    def connectionLost(self, reason: object = None) -> None:
        # The parent closed our standard input, or died.
        self._stop()

    def _stop(self) -> None:
        if self._reactor.running and not self._stopping:
            self._stopping = True
            self._reactor.stop()

    def _datagrams(self) -> dict[str, int] | None:
        echo = self._service.datagramEcho
        if echo is None:
            return None
        dropped = sum(
            child.args[1].dropped
            for child in self._service
            if isinstance(child, UDPServer) and isinstance(child.args[1], FaultyDatagramProtocol)
        )
        return {"datagrams": echo.datagrams, "bytesIn": echo.bytesIn, "bytesOut": echo.bytesOut, "dropped": dropped}


def main(argv: list[str]) -> int:
    config = Options()
    try:
        config.parseOptions(argv)
    except usage.UsageError as error:
        _tell({"error": str(error)})
        return 2

    from twisted.internet import reactor, stdio

    listeners: list[dict[str, Any]] = []

    def observe(event: LogEvent) -> None:
        if str(event.get("log_format", "")).startswith("tcplab listening on"):
            listeners.append(describeListener(event))

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr), observe], redirectStandardIO=False)
    service = buildService(config, reactor)  # type: ignore[arg-type]
    try:
        service.startService()
    except SystemExit as failure:
        _tell({"error": str(failure)})
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    control = _Control(service, reactor)  # type: ignore[arg-type]
    reactor.callWhenRunning(lambda: control.answer({"listening": listeners}))
    stdio.StandardIO(control)
    reactor.run()
    return 0


def _tell(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
