"""
Command-line values, shared by the twistd plugin and the C{tcplab} command.

Each check takes the text given and returns the value in its final type, or
raises L{ValueError} with a message naming what was expected.
L{CommandOptions} lets options follow the positional arguments and names
the option whose value is wrong.
"""

from __future__ import annotations

import getopt
import os
import sys

from twisted.python import usage

from tcplab.framing import checkFraming


class CommandOptions(usage.Options):
    """
    Options as tcplab's commands parse them:

      - they may come before or after the positional arguments, as with GNU
        tools (C{tcplab client 127.0.0.1 8081 -m hi}); Twisted's parser
        stops at the first positional argument;
      - a bad value is reported with the option's name
        (C{--connections: must be at least 1, got 0}).
    """

    def __init__(self) -> None:
        super().__init__()
        # Twisted keeps a coercing handler per option with a coerce function.
        for name, handler in self._dispatch.items():
            if type(handler) is usage.CoerceParameter:
                self._dispatch[name] = _NamedCoerceParameter(self, handler.coerce)

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        from tcplab import __version__

        print(f"tcplab {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        options = list(sys.argv[1:] if options is None else options)
        try:
            opts, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
        except getopt.error as error:
            raise usage.UsageError(str(error)) from None
        ordered: list[str] = []
        for option, value in opts:
            if option.startswith("--"):
                ordered.append(f"{option}={value}" if option[2:] + "=" in self.longOpt else option)
            else:
                ordered += [option, value] if option[1] + ":" in self.shortOpt else [option]
        super().parseOptions([*ordered, "--", *args])


class _NamedCoerceParameter(usage.CoerceParameter):
    def dispatch(self, parameterName: str, value: str | None) -> None:
        if value is None:
            return super().dispatch(parameterName, value)  # raises "requires an argument"
        try:
            self.options.opts[parameterName] = self.coerce(value)
        except ValueError as error:
            raise usage.UsageError(f"--{parameterName}: {error}") from None


def port(text: str) -> int:
    """
    @return: a port number from 0 to 65535.
    """
    value = _integer(text, "port")
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} is out of range (0-65535)")
    return value


def remotePort(text: str) -> int:
    """
    @return: a port number to connect to, from 1 to 65535.
    """
    value = port(text)
    if value == 0:
        raise ValueError("cannot connect to port 0")
    return value


def size(text: str) -> int:
    """
    @return: a byte count of at least 1.
    """
    return _atLeast(1, text, "size")


def positive(text: str) -> int:
    """
    @return: a whole number of at least 1.
    """
    return _atLeast(1, text, "number")


def count(text: str) -> int:
    """
    @return: a whole number of at least 0.
    """
    return _atLeast(0, text, "count")


def workers(text: str) -> int:
    """
    @return: a number of worker processes: a whole number of at least 1, or
        for C{0} or C{auto} the number of CPUs this process may run on.
    """
    if text.strip().lower() in ("0", "auto"):
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    value = _integer(text, "number of workers")
    if value < 0:
        raise ValueError(f"must be at least 0 (0: one per CPU), got {value}")
    return value


def seconds(text: str) -> float:
    """
    @return: a duration in seconds, at least 0.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid duration {text!r}: expected a number of seconds") from None
    if not 0 <= value < float("inf"):
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """
    @return: a fraction from 0 to 1.
    """
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid fraction {text!r}: expected a number from 0 to 1") from None
    if not 0 <= value <= 1:
        raise ValueError(f"fraction must be from 0 to 1, got {text}")
    return value


def framing(text: str) -> str:
    """
    @return: the name of a framing.
    """
    return checkFraming(text)


def utf8(text: str) -> bytes:
    """
    @return: C{text} encoded as UTF-8 (bytes that were not valid UTF-8 on the
        command line are passed through unchanged).
    """
    return text.encode("utf-8", "surrogateescape")


def checkEndpointPort(endpoint: object, lowest: int = 0) -> None:
    """
    Twisted's TCP endpoints take any port number and fail only when they
    listen or connect; check it when the endpoint is parsed.

    @raise ValueError: if C{endpoint} has a port outside C{lowest}-65535.
    """
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not lowest <= port <= 65535:
        raise ValueError(f"port {port} is out of range ({lowest}-65535)")


def _atLeast(minimum: int, text: str, what: str) -> int:
    value = _integer(text, what)
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}: expected a whole number") from None


port.coerceDoc = "A number from 0 to 65535."  # type: ignore[attr-defined]
framing.coerceDoc = "One of raw, line, length."  # type: ignore[attr-defined]
workers.coerceDoc = "A number, or auto."  # type: ignore[attr-defined]
