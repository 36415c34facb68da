"""
The counts of an echo server, as one JSON-able dictionary (a
L{snapshot}): what C{/metrics} shows, what a worker reports to its
supervisor, and how several add up.  Plain Python: a worker process builds
its reports without importing C{prometheus_client} (L{tcplab.metrics}
renders them).
"""

from __future__ import annotations

from typing import Any

from tcplab.server import EchoServerFactory
from tcplab.udp import BAD_SOURCE, LOW_PORT, OVER_RATE, OWN_PORT, REPLY_TOO_LONG, DatagramEcho

#: Why connections are turned away, as the C{reason} label says it (each
#: shown, 0 included, so that a rate can be taken before the first).
REFUSALS = ("busy", "peer", "once", "proxy-header", "proxy-busy")

#: The C{reason} label of each reason the UDP echo drops a datagram for; a
#: reply the network refused (its reason in the text) is C{reply-failed}.
UDP_DROPS = {
    OWN_PORT: "own-port",
    LOW_PORT: "low-port",
    BAD_SOURCE: "bad-source",
    OVER_RATE: "over-rate",
    REPLY_TOO_LONG: "reply-too-long",
}
REPLY_FAILED = "reply-failed"


def snapshot(factory: EchoServerFactory, datagramEcho: DatagramEcho | None = None) -> dict[str, Any]:
    """
    @return: what C{factory}'s connections (and C{datagramEcho}, if given)
        have done so far, as JSON can carry it: C{open} is a level, every
        other number a count that only grows.
    """
    stats = factory.stats()
    durations = factory.durations
    counts: dict[str, Any] = {
        "accepted": stats.served,
        "refused": dict(factory.refusedBy),
        "open": stats.open,
        "bytesIn": stats.bytesIn,
        "bytesOut": stats.bytesOut,
        "messages": factory.messagesAnswered(),
        "tooLong": factory.tooLong,
        "idleTimeouts": factory.idleTimeouts,
        "durations": None if durations is None else {"counts": list(durations.counts), "microseconds": durations.microseconds},
        "udp": None,
    }
    if datagramEcho is not None:
        dropped: dict[str, int] = {}
        for reason, count in datagramEcho.dropped.items():
            label = UDP_DROPS.get(reason, REPLY_FAILED)
            dropped[label] = dropped.get(label, 0) + count
        counts["udp"] = {
            "datagrams": datagramEcho.datagrams,
            "bytesIn": datagramEcho.bytesIn,
            "bytesOut": datagramEcho.bytesOut,
            "dropped": dropped,
        }
    return counts


def nothing(udp: bool = False) -> dict[str, Any]:
    """
    @return: the L{snapshot} of a server that has done nothing yet (with a
        UDP echo if C{udp}), to add others to.
    """
    factory = EchoServerFactory()
    factory.meter()
    return snapshot(factory, DatagramEcho() if udp else None)


def added(one: Any, other: Any) -> Any:
    """
    @return: two L{snapshot}s (or parts of them) added up: numbers added,
        lists added element by element, dictionaries key by key; L{None}
        counts as nothing.
    """
    if one is None:
        return other
    if other is None:
        return one
    if isinstance(one, dict):
        return {key: added(one.get(key), other.get(key)) for key in one.keys() | other.keys()}
    if isinstance(one, list):
        return [a + b for a, b in zip(one, other, strict=True)]
    return one + other


def retired(counts: dict[str, Any]) -> dict[str, Any]:
    """
    @return: the counts of a process that has ended, to be kept in totals:
        the same counts, and no connection open.
    """
    return {**counts, "open": 0}
