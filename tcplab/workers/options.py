"""
What C{--workers} allows with the other options.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from tcplab.workers.sockets import checkWorkerListener


def checkWorkerOptions(config: Any) -> None:
    """
    @raise usage.UsageError: in one line, for options that more than one
        worker cannot honour.
    """
    if config["once"]:
        raise usage.UsageError("--once serves one connection, in one process: it cannot be used with --workers")
    for description in config["listen"]:
        try:
            checkWorkerListener(description)
        except ValueError as error:
            raise usage.UsageError(f"--workers: {error}") from None
