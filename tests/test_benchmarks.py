"""
Tests for the benchmark runner's churn tables and options (not for figures).
"""

from __future__ import annotations

import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from benchmarks import run_all


def summary(rate: float, cpuPerConnection: float) -> dict:
    """
    @return: the parts of a bench summary (plus the server CPU the harness
        adds) that the churn tables read.
    """
    latency = {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0}
    return {
        "connectionsPerSecond": rate,
        "messagesPerSecond": rate,
        "latencyMs": latency,
        "connectLatencyMs": latency,
        "serverCpu": rate * cpuPerConnection,
        "serverCpuPerConnection": cpuPerConnection,
    }


class ChurnTablesTests(SynchronousTestCase):
    """
    L{run_all.churnTables} gives each server's connection rate and CPU per
    connection, and both ratios of tcplab to each anchor.
    """

    def test_ratios(self) -> None:
        """
        The rate ratio is tcplab's over the anchor's; the CPU ratio is the
        anchor's CPU per connection over tcplab's, so that more than 1x is
        better for tcplab in both.
        """
        text = run_all.churnTables(
            {"tcplab-raw": summary(20_000, 45e-6), "wire-echo": summary(16_000, 50e-6)},
            run_all.OURS,
            run_all.ANCHORS,
        )
        rate, cost = text.split("server CPU per connection")
        self.assertRegex(rate, r"\| tcplab raw +\| 1\.25x +\|")
        self.assertRegex(cost, r"\| tcplab raw +\| 1\.11x +\|")
        self.assertRegex(text, r"\| tcplab raw +\| 20,000 .*\| 90% +\| 45 +\|")

    def test_unknownScenario(self) -> None:
        """
        C{--scenarios} names only scenarios the runner has.
        """
        with contextlib.redirect_stderr(io.StringIO()) as err, self.assertRaises(SystemExit) as exit:
            run_all.main(["--scenarios", "ping-pong,marathon"])
        self.assertEqual(exit.exception.code, 2)
        self.assertIn("unknown scenario 'marathon'", err.getvalue())


class SettingRatiosTests(SynchronousTestCase):
    """
    L{run_all.settingRatios} compares tcplab with C{--metrics} to tcplab
    without, when both were measured.
    """

    def test_throughput(self) -> None:
        """
        The ratio of messages/s, with over without.
        """
        text = run_all.settingRatios(
            {"tcplab-raw": summary(100_000, 9e-6), "tcplab-raw-metrics": summary(98_000, 9e-6)}, churn=False
        )
        self.assertEqual(text, "tcplab raw --metrics / tcplab raw: 0.980x messagesPerSecond")

    def test_churn(self) -> None:
        """
        For churn, the ratio of connections/s and of the CPU per
        connection (without's over with's).
        """
        text = run_all.settingRatios(
            {"tcplab-raw": summary(20_000, 40e-6), "tcplab-raw-metrics": summary(19_000, 50e-6)}, churn=True
        )
        self.assertEqual(
            text,
            "tcplab raw --metrics / tcplab raw: 0.950x connectionsPerSecond, "
            "0.800x server CPU per connection (without's / with's)",
        )

    def test_alone(self) -> None:
        """
        Nothing to compare without both.
        """
        self.assertEqual(run_all.settingRatios({"tcplab-raw": summary(1, 1)}, churn=False), "")

    def test_noAnchorTables(self) -> None:
        """
        Without an anchor measured, no table of ratios to anchors is printed.
        """
        results = {"tcplab-raw": summary(20_000, 40e-6), "tcplab-raw-metrics": summary(19_000, 50e-6)}
        self.assertEqual(run_all.ratios(results, run_all.OURS, run_all.ANCHORS), "")
        self.assertNotIn("anchor", run_all.churnTables(results, run_all.OURS, run_all.ANCHORS))
