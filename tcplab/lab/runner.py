"""
C{tcplab lab}: the registry of experiments, the command's options, and
running one with its text or JSON output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import IO

from twisted.python import usage

from tcplab import coerce
from tcplab.lab import (
    backlog,
    boundaries,
    emptymessage,
    handshake,
    oneatatime,
    reset,
    timewait,
    udp,
)
from tcplab.lab.record import Experiment, Record, Unavailable
from tcplab.lab.texts import FAILED, HEADING, NOT_FINISHED, NOTES, PASSED, UNAVAILABLE, checkLanguage

#: Every experiment, by name, in the order of the lesson.
EXPERIMENTS: dict[str, Experiment] = {
    module.EXPERIMENT.name: module.EXPERIMENT
    for module in (oneatatime, emptymessage, boundaries, backlog, handshake, timewait, reset, udp)
}

EXIT_OK = 0
EXIT_NOT_SEEN = 1


class LabOptions(coerce.CommandOptions):
    """
    Options of C{tcplab lab}.
    """

    synopsis = "Usage: tcplab lab [--lang en|zh] [--json] [NAME]"
    longdesc = (
        "Run one experiment of the lesson live on 127.0.0.1 and print what it did, what it "
        "measured and what that means; without NAME, list the experiments. Exit status: 0 "
        "when the experiment saw what it teaches, 1 when this system behaved otherwise, 2 for "
        "a usage error. Experiments: " + ", ".join(EXPERIMENTS) + "."
    )
    optFlags = [
        ["json", None, "Print the observations as one JSON object."],
    ]
    optParameters = [
        ["lang", None, "en", "The language of the output.", checkLanguage],
    ]

    def getSynopsis(self) -> str:
        return self.synopsis

    def parseArgs(self, name: str | None = None, *extra: str) -> None:
        if extra:
            raise usage.UsageError(f"unexpected argument {extra[0]!r}: give one experiment's name")
        if name is not None and name not in EXPERIMENTS:
            raise usage.UsageError(f"unknown experiment {name!r} (one of: {', '.join(EXPERIMENTS)})")
        self["name"] = name


def runExperiment(name: str, lang: str = "en", write: IO[str] | None = None) -> Record:
    """
    Run the experiment C{name}, writing its text to C{write} as it goes (if
    given).

    @return: what it said, measured and checked.
    @raise KeyError: for an unknown name.
    """
    experiment = EXPERIMENTS[name]

    def writeLine(line: str) -> None:
        assert write is not None
        write.write(line)
        write.flush()

    record = Record(lang, writeLine if write is not None else None)
    record.line(record.text(HEADING, name=name, summary=record.text(experiment.summary)))
    record.line(record.text(NOTES, where=record.text(experiment.where)), "  ", "  ")
    try:
        experiment.run(record)
    except Unavailable as reason:
        record.unavailable = reason.text.format(lang, **reason.values)
        record.line(record.text(UNAVAILABLE, reason=record.unavailable))
        return record
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        # Such as a server that did not start, or a port already taken.
        record.unavailable = str(error).strip() or type(error).__name__
        record.line(record.text(NOT_FINISHED, reason=record.unavailable))
        return record
    if record.passed:
        record.line(record.text(PASSED))
    else:
        failed = sum(1 for check in record.checks if not check.passed)
        record.line(record.text(FAILED, failed=failed, checks=len(record.checks)))
    return record


def exitCode(record: Record) -> int:
    """
    @return: the exit status of C{tcplab lab} for C{record}: 0 if it saw
        what it teaches, else 1.
    """
    return EXIT_OK if record.passed else EXIT_NOT_SEEN


def runLab(options: LabOptions, out: IO[str] | None = None) -> int:
    """
    Run C{tcplab lab} with parsed C{options}.

    @return: the exit status.
    """
    out = sys.stdout if out is None else out
    lang = options["lang"]
    name = options["name"]
    if name is None:
        listing = {n: e.summary.format(lang) for n, e in EXPERIMENTS.items()}
        if options["json"]:
            out.write(json.dumps({"experiments": listing}, ensure_ascii=False) + "\n")
        else:
            width = max(map(len, listing))
            for n, summary in listing.items():
                out.write(f"{n:<{width}}  {summary}\n")
        return EXIT_OK
    try:
        record = runExperiment(name, lang, None if options["json"] else out)
    except KeyboardInterrupt:
        # Ctrl-C: every server and socket of the experiment is closed on the way out.
        print("tcplab lab: interrupted", file=sys.stderr)
        return EXIT_NOT_SEEN
    if options["json"]:
        out.write(json.dumps(_asJSON(name, record), ensure_ascii=False) + "\n")
    return exitCode(record)


def _asJSON(name: str, record: Record) -> dict[str, object]:
    return {
        "experiment": name,
        "lang": record.lang,
        "passed": record.passed,
        "unavailable": record.unavailable,
        "observations": record.observations,
        "checks": [{"passed": c.passed, "message": c.message} for c in record.checks],
    }
