"""
Text shown to people: peer-supplied bytes made safe for a log or a terminal,
and counts with their nouns.
"""

from __future__ import annotations

#: Characters shown as they are: everything printable but the backslash,
#: which L{escape} doubles so that an escape in the output always means a
#: byte that was escaped (a peer cannot forge one by sending a backslash).
_SAFE_SPECIALS = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(text: bytes | str, limit: int | None = None) -> str:
    """
    Make peer-supplied text safe to write into one log line or onto a terminal.

    Bytes are decoded as UTF-8.  Every character that is not printable (C0
    and C1 controls such as ESC, BEL, NUL, CR and LF, DEL, line and paragraph
    separators, invalid UTF-8) is written as a Python-style escape (C{\\x1b},
    C{\\n}, C{\\u2028}), and a backslash as C{\\\\}; printable text, Chinese
    included, is kept as it is.

    @param limit: keep at most this many characters of the result, then say
        how many bytes were left out; L{None} for no limit.
    @return: text with no control character in it.
    """
    cut = 0
    if isinstance(text, bytes):
        if limit is not None and len(text) > limit:
            cut = len(text) - limit
            text = text[:limit]
        text = text.decode("utf-8", "surrogateescape")
    elif limit is not None and len(text) > limit:
        cut = len(text.encode("utf-8", "surrogateescape")) - len(
            text[:limit].encode("utf-8", "surrogateescape")
        )
        text = text[:limit]
    if not (text.isprintable() and "\\" not in text):
        text = "".join([_escapeCharacter(c) for c in text])
    if cut:
        text += f"... ({plural(cut, 'more byte')})"
    return text


def _escapeCharacter(character: str) -> str:
    special = _SAFE_SPECIALS.get(character)
    if special is not None:
        return special
    if character.isprintable():
        return character
    code = ord(character)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that is not valid UTF-8 (surrogateescape).
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def plural(count: int, noun: str, plural: str | None = None) -> str:
    """
    @return: C{count}, with thousands separators, and C{noun}, the noun in
        its plural unless C{count} is 1 (C{"1 byte"}, C{"1,234 bytes"});
        C{plural} is the plural form when it is not C{noun + "s"}.
    """
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"
