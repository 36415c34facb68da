"""
C{tcplab bench} from parsed options to an exit code, and C{python -m tcplab.bench}.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO

from twisted.python import usage

from tcplab.bench.options import BenchOptions
from tcplab.bench.plan import LoadPlan
from tcplab.bench.report import ProgressBar, formatProblems, formatSummary
from tcplab.bench.workers import measure

EXIT_OK = 0
EXIT_FAILURE = 1


def runBench(options: BenchOptions, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """
    Run C{tcplab bench} with parsed C{options}, printing the summary (or
    JSON) to C{out} and a progress bar and failures to C{err}.

    @return: 0 if every connection was made and every reply was right, 1
        otherwise (with one line on C{err}).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    plan = LoadPlan(
        options["framing"], options["size"], options["suffix"], options["pipeline"], options["reconnect"]
    )
    duration, requests = options["duration"], options["requests"]
    bar = ProgressBar(
        err,
        duration if requests is None else requests,
        "seconds" if requests is None else "messages",
    )
    try:
        with bar:
            result = measure(
                options["address"],
                plan,
                options["connections"],
                duration=duration,
                requests=requests,
                processes=options["processes"],
                timeout=options["timeout"],
                progress=bar.update,
                spin=options["spin"],
            )
    except OSError as error:
        print(f"tcplab bench: {error.strerror or error}", file=err)
        return EXIT_FAILURE
    if result.connections and not result.connectionsMade:
        print(f"tcplab bench: {result.failures[0]}", file=err)
        return EXIT_FAILURE
    summary = result.summary(plan)
    if options["json"]:
        print(json.dumps(summary), file=out)
    else:
        print(formatSummary(summary), file=out)
    problems = formatProblems(result)
    if problems is not None:
        print(f"tcplab bench: {problems}", file=err)
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run C{tcplab bench} from C{argv} (default: C{sys.argv[1:]}), for
    C{python -m tcplab.bench} until the C{tcplab} command has the subcommand.

    @return: the exit code (2 for a usage error).
    """
    options = BenchOptions()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as error:
        print(f"tcplab bench: {error}", file=sys.stderr)
        return 2
    return runBench(options)
