"""
Logging what peers send, safely: every message escaped and cut, and at most
a budget of them per interval, so that a peer's traffic can neither forge a
log line nor make the log grow with it.  The TCP echo keeps one
L{MessageLog} per connection, the UDP echo one for all its datagrams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from tcplab.text import escape, plural


class LogBudget:
    """
    At most C{perInterval} log lines every C{interval} seconds: past that,
    what would have been logged is only counted, and once the interval is
    over (or at L{flush}) one line says how many were not (L{_report}).

    Going over the budget costs a clock reading and a count however many
    things arrive at once, so a flood makes neither the log nor the time
    spent on it grow with its traffic.
    """

    __slots__ = ("_log", "_clock", "_perInterval", "_interval", "_intervalEnds", "_left", "_notLogged", "_timer")

    def __init__(self, log: Logger, clock: IReactorTime | None, perInterval: int, interval: float = 1.0) -> None:
        """
        @param log: where the lines go.
        @param clock: the clock of the budget; L{None} for none, when the
            first C{perInterval} things are logged and the rest only
            counted until L{flush}.
        @param perInterval: lines logged per interval at most.
        @param interval: seconds of each budget.
        """
        self._log = log
        self._clock = clock
        self._perInterval = perInterval
        self._interval = interval
        self._intervalEnds = float("-inf")
        self._left = perInterval
        self._notLogged = 0
        self._timer: IDelayedCall | None = None

    def admit(self, count: int) -> int:
        """
        C{count} more things to log arrived.

        @return: how many of them, the first ones, to log; the others are
            counted as not logged.
        """
        clock = self._clock
        if clock is not None:
            now = clock.seconds()
            if now >= self._intervalEnds:
                self.flush()
                self._intervalEnds = now + self._interval
                self._left = self._perInterval
        logged = min(count, self._left)
        self._left -= logged
        if logged < count:
            self._notLogged += count - logged
            if self._timer is None and clock is not None:
                self._timer = clock.callLater(self._intervalEnds - now, self.flush)
        return logged

    def flush(self) -> None:
        """
        Say now how many things were not logged, if any: at the end of each
        interval over the budget, and when logging ends.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        count, self._notLogged = self._notLogged, 0
        if count:
            self._report(count)

    def _report(self, count: int) -> None:
        """
        Log that C{count} things were not logged.
        """
        raise NotImplementedError


class MessageLog(LogBudget):
    """
    Messages logged one line each, escaped (see L{escape}: no control
    character of a peer's reaches the log) and cut to C{limit} bytes, at most
    C{perInterval} of them every C{interval} seconds (see L{LogBudget}).
    """

    __slots__ = ("_limit", "_what", "_source")

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime | None,
        perInterval: int,
        limit: int,
        interval: float = 1.0,
        what: str = "message",
        source: Callable[[], str] | None = None,
    ) -> None:
        """
        @param log: where the lines go.
        @param clock: the clock of the budget; L{None} for none (see
            L{LogBudget}).
        @param perInterval: messages logged per interval at most.
        @param limit: bytes of each message shown at most.
        @param interval: seconds of each budget.
        @param what: what a message is called in the log (C{"datagram"}).
        @param source: who sends every message (one connection's peer), for
            each line; L{None} when L{write} is told each time.
        """
        super().__init__(log, clock, perInterval, interval)
        self._limit = limit
        self._what = what
        self._source = source

    def write(self, messages: Iterable[bytes], peer: str | None = None) -> None:
        """
        Log C{messages}, one line each, as sent by C{peer} (by default the
        source given to the constructor).
        """
        if peer is None:
            assert self._source is not None
            peer = self._source()
        limit = self._limit
        for message in messages:
            self._log.info(f"{self._what} from {{peer}}: {{text}}", peer=peer, text=escape(message, limit))

    def _report(self, count: int) -> None:
        # When the messages end (the connection closes, the UDP port stops)
        # or at the end of an interval over the budget.
        source = f" from {self._source()}" if self._source is not None else ""
        self._log.info(
            "{more}{source} not logged",
            more=plural(count, f"more {self._what}"),
            count=count,
            source=source,
        )
