"""
Checks for command-line values, shared by the twistd plugin and the C{tcplab}
command.  Each takes the text given and returns the value in its final type, or
raises L{ValueError} with a message naming what was expected.
"""

from __future__ import annotations

from tcplab.framing import checkFraming


def port(text: str) -> int:
    """
    @return: a port number from 0 to 65535.
    """
    value = _integer(text, "port")
    if not 0 <= value <= 65535:
        raise ValueError(f"port {value} is out of range (0-65535)")
    return value


def size(text: str) -> int:
    """
    @return: a byte count of at least 1.
    """
    value = _integer(text, "size")
    if value < 1:
        raise ValueError(f"size must be at least 1 byte, got {value}")
    return value


def count(text: str) -> int:
    """
    @return: a whole number of at least 0.
    """
    value = _integer(text, "count")
    if value < 0:
        raise ValueError(f"count must not be negative, got {value}")
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


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}: expected a whole number") from None


port.coerceDoc = "A number from 0 to 65535."  # type: ignore[attr-defined]
framing.coerceDoc = "One of raw, line, length."  # type: ignore[attr-defined]
