"""
Tests for the server's message log (C{--log-messages}): peer-supplied text is
escaped and cut, and each connection logs at most a budget of messages a second.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tcplab import defaults
from tcplab.framing import frame
from tests.test_server import connect, serverFactory


def messageLines(events: list[dict]) -> list[str]:
    """
    @return: the formatted message log lines among C{events}.
    """
    return [formatEvent(event) for event in events if "text" in event]


def summaries(events: list[dict]) -> list[int]:
    """
    @return: the counts of the "N more messages ... not logged" lines among C{events}.
    """
    return [event["count"] for event in events if "not logged" in event.get("log_format", "")]


class EscapeTests(SynchronousTestCase):
    """
    A logged message cannot write a control character into the log: a peer
    can neither rewrite the operator's terminal nor forge a log line.
    """

    hostile = b"\x1b]0;owned\x07\x1b[2J\x00 ok\r2026-01-01 [-] connection from 10.0.0.1:1"

    def test_line(self) -> None:
        """
        In line framing, ESC, an OSC title sequence, BEL, NUL and a CR inside
        the line are escaped (the line's own C{\\r\\n} ending is not shown).
        """
        protocol, _ = connect(serverFactory(framing="line", logMessages=True))
        with capturedLogs() as events:
            protocol.dataReceived(self.hostile + b"\\n\r\n")
        [line] = messageLines(events)
        self.assertEqual(
            line,
            "message from 127.0.0.1:40000: \\x1b]0;owned\\x07\\x1b[2J\\x00 ok\\r"
            "2026-01-01 [-] connection from 10.0.0.1:1\\\\n",
        )

    def test_raw(self) -> None:
        """
        In raw framing a message may hold a real LF: it is escaped too, so
        the message is one log line.
        """
        protocol, _ = connect(serverFactory(logMessages=True))
        with capturedLogs() as events:
            protocol.dataReceived(self.hostile + b"\n2026-01-01 [-] forged\n")
        [line] = messageLines(events)
        self.assertTrue(line.isprintable(), line)
        self.assertIn("\\r2026-01-01 [-] connection from 10.0.0.1:1\\n2026-01-01 [-] forged\\n", line)

    def test_length(self) -> None:
        """
        Length-framed payloads are escaped too.
        """
        protocol, _ = connect(serverFactory(framing="length", logMessages=True))
        with capturedLogs() as events:
            protocol.dataReceived(frame(self.hostile))
        [line] = messageLines(events)
        self.assertTrue(line.isprintable(), line)
        self.assertIn("\\x1b]0;owned\\x07", line)

    def test_pendingLineAtHalfClose(self) -> None:
        """
        The unterminated line answered when the peer shuts its side down is
        escaped as well.
        """
        protocol, _ = connect(serverFactory(framing="line", logMessages=True))
        with capturedLogs() as events:
            protocol.dataReceived(b"\x1b[31mred")
            protocol.readConnectionLost()
        self.assertEqual(messageLines(events), ["message from 127.0.0.1:40000: \\x1b[31mred"])

    def test_cut(self) -> None:
        """
        A message is shown up to C{LOG_MESSAGE_BYTES} bytes, then how many
        more bytes it had.
        """
        protocol, _ = connect(serverFactory(framing="line", logMessages=True))
        limit = defaults.LOG_MESSAGE_BYTES
        with capturedLogs() as events:
            protocol.dataReceived(b"a" * limit + b"\n" + b"b" * (limit + 800) + b"\n")
        self.assertEqual(
            messageLines(events),
            [
                "message from 127.0.0.1:40000: " + "a" * limit,
                "message from 127.0.0.1:40000: " + "b" * limit + "... (800 more bytes)",
            ],
        )


class BudgetTests(SynchronousTestCase):
    """
    Each connection logs at most C{LOG_MESSAGES_PER_SECOND} messages a
    second, then one line a second saying how many more were not logged.
    """

    budget = defaults.LOG_MESSAGES_PER_SECOND

    def connect(self, framing: str = "line", **kwargs):
        protocol, transport = connect(serverFactory(framing=framing, logMessages=True, **kwargs))
        return protocol, transport, protocol.clock

    def test_budget(self) -> None:
        """
        Past the budget, messages are answered but not logged, and nothing is
        said about them before the second is over.
        """
        protocol, transport, _ = self.connect()
        lines = b"".join(b"%d\n" % n for n in range(self.budget + 15))
        with capturedLogs() as events:
            protocol.dataReceived(lines)
        self.assertEqual(transport.value(), lines)
        self.assertEqual([event["text"] for event in events if "text" in event], [str(n) for n in range(self.budget)])
        self.assertEqual(summaries(events), [])

    def test_notLoggedLine(self) -> None:
        """
        Once the second is over, one line says how many messages of that
        second were not logged, with the peer's address.
        """
        protocol, _, clock = self.connect()
        with capturedLogs() as events:
            protocol.dataReceived(b"\n" * (self.budget + 5))
            clock.advance(0.5)
            protocol.dataReceived(b"\n" * 10)
            clock.advance(0.5)
        self.assertEqual(summaries(events), [15])
        [event] = [event for event in events if "count" in event]
        self.assertEqual(formatEvent(event), "15 more messages from 127.0.0.1:40000 not logged")

    def test_resetsAfterASecond(self) -> None:
        """
        A second later the budget is whole again.
        """
        protocol, _, clock = self.connect()
        with capturedLogs() as events:
            protocol.dataReceived(b"\n" * (self.budget + 1))
            clock.advance(1)
            protocol.dataReceived(b"again\n" * (self.budget + 3))
            clock.advance(1)
        texts = [event["text"] for event in events if "text" in event]
        self.assertEqual(texts, [""] * self.budget + ["again"] * self.budget)
        self.assertEqual(summaries(events), [1, 3])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_quietSecondSaysNothing(self) -> None:
        """
        A second within the budget has no "not logged" line, and leaves no timer.
        """
        protocol, _, clock = self.connect()
        with capturedLogs() as events:
            protocol.dataReceived(b"\n" * self.budget)
            self.assertEqual(clock.getDelayedCalls(), [])
            clock.advance(5)
        self.assertEqual(summaries(events), [])

    def test_summaryAtClose(self) -> None:
        """
        Messages not logged when the connection closes are counted at once,
        before the disconnect line, and no timer is left behind.
        """
        protocol, _, clock = self.connect(logConnections=True)
        with capturedLogs() as events:
            protocol.dataReceived(b"\n" * (self.budget + 7))
            protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(summaries(events), [7])
        self.assertIn("disconnected", formatEvent(events[-1]))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_flood(self) -> None:
        """
        A read of a million empty lines logs the budget and one count.
        """
        protocol, transport, clock = self.connect()
        with capturedLogs() as events:
            protocol.dataReceived(b"\n" * 2**20)
            protocol.dataReceived(b"\n" * 2**20)
            clock.advance(1)
        self.assertEqual(len(events), self.budget + 1)
        self.assertEqual(summaries(events), [2**21 - self.budget])
        self.assertEqual(len(transport.value()), 2**21)

    def test_rawAndLength(self) -> None:
        """
        The budget holds in raw framing (a message a read) and in length
        framing.
        """
        for framing, read in [("raw", b"chunk"), ("length", frame(b"ab") * 3)]:
            protocol, _, clock = self.connect(framing)
            with capturedLogs() as events:
                for _ in range(self.budget):
                    protocol.dataReceived(read)
                clock.advance(1)
            self.assertEqual(len(messageLines(events)), self.budget, framing)
            self.assertEqual(summaries(events), [] if framing == "raw" else [2 * self.budget], framing)

    def test_budgetArgument(self) -> None:
        """
        The factory takes the budget as an argument.
        """
        protocol, _, clock = self.connect(logMessagesPerSecond=2)
        with capturedLogs() as events:
            protocol.dataReceived(b"\n" * 5)
            clock.advance(1)
        self.assertEqual(len(messageLines(events)), 2)
        self.assertEqual(summaries(events), [3])
