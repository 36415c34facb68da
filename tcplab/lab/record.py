"""
What an experiment did, measured and concluded: its L{Record}.

An experiment writes into a L{Record} as it goes: a line for each thing it
did or measured (L{Record.say}), the values it measured (L{Record.observe},
what C{--json} prints), the checks of what the lesson claims
(L{Record.expect}) and what it all means (L{Record.explain}).  The lines are
written at once, so that a reader sees the experiment happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tcplab.lab.texts import MEANING, Text, wrap


class Unavailable(Exception):
    """
    The experiment cannot run on this system (no C{/proc}, another OS).

    @ivar text: why, in both languages.
    """

    def __init__(self, text: Text, **values: object) -> None:
        super().__init__(text.format("en", **values))
        self.text = text
        self.values = values


@dataclass
class Check:
    """
    One claim of the lesson, checked against what was measured.
    """

    passed: bool
    message: str


@dataclass
class Experiment:
    """
    One experiment of the lab.

    @ivar name: what C{tcplab lab NAME} calls it.
    @ivar summary: one line: what it shows.
    @ivar where: where the lesson says it (its part and note numbers).
    @ivar run: runs it, writing into the record it is given.
    """

    name: str
    summary: Text
    where: Text
    run: Callable[[Record], None]


@dataclass
class Record:
    """
    What one run of an experiment said, measured and checked.

    @ivar lang: the language of the lines, C{"en"} or C{"zh"}.
    @ivar write: called with each line of text as it is made; L{None} to
        only keep them (as C{--json} does).
    @ivar lines: every line written so far.
    @ivar observations: the values measured, by name (JSON types).
    @ivar checks: the claims checked, in order.
    @ivar unavailable: why the experiment could not run (or finish), if it
        could not.
    """

    lang: str = "en"
    write: Callable[[str], object] | None = None
    lines: list[str] = field(default_factory=list)
    observations: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    unavailable: str | None = None
    _explained: bool = field(default=False, repr=False)

    @property
    def passed(self) -> bool:
        """
        Whether the experiment ran and saw everything it teaches.
        """
        return self.unavailable is None and bool(self.checks) and all(c.passed for c in self.checks)

    def text(self, text: Text, **values: object) -> str:
        """
        @return: C{text} in this record's language.
        """
        return text.format(self.lang, **values)

    def join(self, items: Iterable[object]) -> str:
        """
        @return: C{items} as a list in this record's language: C{"a, b"} in
            English, C{"a、b"} in Chinese.
        """
        return ("、" if self.lang == "zh" else ", ").join(map(str, items))

    def line(self, line: str, first: str = "", rest: str = "    ") -> None:
        """
        Write C{line}, wrapped, C{first} before it and C{rest} before each
        of its continuation lines.
        """
        for wrapped in wrap(line, first, rest):
            self.lines.append(wrapped)
            if self.write is not None:
                self.write(wrapped + "\n")

    def say(self, text: Text, **values: object) -> None:
        """
        Write a line about what was done or measured.
        """
        self.line(self.text(text, **values), "  - ")

    def observe(self, **values: Any) -> None:
        """
        Keep measured values (numbers, strings, lists) for C{--json}.
        """
        self.observations.update(values)

    def expect(self, passed: bool, text: Text, **values: object) -> bool:
        """
        Check one claim: write it, marked ✓ if C{passed} is true, ✗ if not.

        @return: C{passed}.
        """
        message = self.text(text, **values)
        self.checks.append(Check(bool(passed), message))
        self.line(message, f"  {'✓' if passed else '✗'} ")
        return bool(passed)

    def explain(self, text: Text, **values: object) -> None:
        """
        Write what the experiment means: a paragraph under a heading of its own.
        """
        if not self._explained:
            self._explained = True
            self.line(self.text(MEANING))
        self.line(self.text(text, **values), "  ", "  ")
