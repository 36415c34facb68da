"""
What the lab says, in English and in Chinese.

Every message is one L{Text} holding both languages side by side, so that a
sentence cannot change in one language and be forgotten in the other; a
L{Text} whose two versions take different values is refused when it is made.
"""

from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass

#: The languages of the lab, English first (the default).
LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Text:
    """
    One message in both languages: C{str.format} templates that take the
    same named values.

    @raise ValueError: if the two templates do not name the same values.
    """

    en: str
    zh: str

    def __post_init__(self) -> None:
        if _fields(self.en) != _fields(self.zh):
            raise ValueError(f"the English and Chinese of {self.en!r} take different values")

    def format(self, lang: str, **values: object) -> str:
        """
        @return: the message in C{lang} (C{"en"} or C{"zh"}), with C{values} in it.
        """
        return getattr(self, lang).format(**values)


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def checkLanguage(text: str) -> str:
    """
    @return: C{text} if it is one of L{LANGUAGES}.
    @raise ValueError: otherwise.
    """
    if text not in LANGUAGES:
        raise ValueError(f"must be one of {', '.join(LANGUAGES)}, got {text!r}")
    return text


checkLanguage.coerceDoc = "en (English) or zh (中文)."  # type: ignore[attr-defined]


#: The width, in terminal columns, the lab's lines are wrapped to.
WIDTH = 96

# A quoted value without spaces ('你好SB'), a duration ("1.0 s", "0.3 ms"), a
# run of ASCII that must not be broken (a word, a number, a command), a run
# of spaces, or any other single character (a line can end after any Chinese
# character).
_TOKEN = re.compile(r"'[^'\s]*'[!-~]*|[!-~]*\d m?s\b[!-~]*|[!-~]+|\s+|.")

# Punctuation that may not begin a line, and that may not end one.
_NO_LINE_START = set("，。、；：？！）》」』”’,.;:?!)")
_NO_LINE_END = set("（《「『“‘(")


def columns(text: str) -> int:
    """
    @return: how many terminal columns C{text} takes (a Chinese character takes two).
    """
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def wrap(text: str, first: str = "", rest: str = "", width: int = WIDTH) -> list[str]:
    """
    Cut C{text} into lines of at most C{width} columns, between words in
    English and between characters in Chinese, never inside a run of ASCII
    (such as C{recv(1024)}) and never before closing punctuation.

    @param first: put before the first line.
    @param rest: put before every later line.
    @return: the lines.
    """
    lines: list[str] = []
    line, used = first, columns(first)
    for token in _TOKEN.findall(text):
        size = columns(token)
        if token.isspace():
            if line.strip():
                line, used = line + " ", used + 1
            continue
        if (
            used + size > width
            and line.strip()
            and token[0] not in _NO_LINE_START
            and line[-1] not in _NO_LINE_END
        ):
            lines.append(line.rstrip())
            line, used = rest, columns(rest)
        line, used = line + token, used + size
    lines.append(line.rstrip())
    return lines


# What the runner says around every experiment.

HEADING = Text(
    en="tcplab lab {name}: {summary}",
    zh="tcplab lab {name}：{summary}",
)
NOTES = Text(
    en="The lesson: {where}.",
    zh="课文：{where}。",
)
MEANING = Text(
    en="What it means:",
    zh="这说明什么：",
)
PASSED = Text(
    en="Seen on this machine: what the lesson says.",
    zh="在这台机器上亲眼看到了：和课文说的一样。",
)
FAILED = Text(
    en="Not seen: this machine behaved otherwise ({failed} of {checks} checks failed; see the lines marked ✗).",
    zh="没有看到预期的现象：这台机器的表现不同（{checks} 项检查中有 {failed} 项没通过，见标 ✗ 的行）。",
)
UNAVAILABLE = Text(
    en="Cannot run here: {reason}",
    zh="这里跑不了：{reason}",
)
NOT_FINISHED = Text(
    en="Could not finish: {reason}",
    zh="实验没能做完：{reason}",
)
NO_PROC = Text(
    en="this experiment reads the kernel's connection table in /proc/net/tcp, which this system does not have (it needs Linux).",
    zh="这个实验要读内核的连接表 /proc/net/tcp，这个系统没有（需要 Linux）。",
)
