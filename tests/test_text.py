"""
Tests for L{tcplab.text}: peer-supplied text made safe for logs, and plurals.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tcplab.text import escape, plural


class EscapeTests(SynchronousTestCase):
    """
    Tests for L{escape}.
    """

    def test_printableKept(self) -> None:
        """
        Printable text, Chinese included, is kept as it is.
        """
        self.assertEqual(escape("你好SB".encode()), "你好SB")
        self.assertEqual(escape("hello, world"), "hello, world")

    def test_controlCharacters(self) -> None:
        """
        ESC, BEL, NUL, CR, LF, TAB, DEL and C1 controls are escaped, so that a
        peer can neither drive the operator's terminal nor start a new line.
        """
        self.assertEqual(
            escape(b"\x1b]0;title\x07\x00\r\n\t\x7f" + "\u0085".encode()),
            "\\x1b]0;title\\x07\\x00\\r\\n\\t\\x7f\\x85",
        )

    def test_lineSeparators(self) -> None:
        """
        Unicode line and paragraph separators are escaped.
        """
        self.assertEqual(escape("a\u2028b\u2029c"), "a\\u2028b\\u2029c")

    def test_invalidUTF8(self) -> None:
        """
        Bytes that are not valid UTF-8 are written as C{\\xNN}.
        """
        self.assertEqual(escape(b"ok\xff\xfe"), "ok\\xff\\xfe")

    def test_backslashDoubled(self) -> None:
        """
        A backslash is doubled, so that a peer sending the text C{\\x1b}
        cannot pass it off as an escaped byte.
        """
        self.assertEqual(escape(b"\\x1b"), "\\\\x1b")

    def test_limit(self) -> None:
        """
        With a limit, text beyond it is left out and counted in bytes.
        """
        self.assertEqual(escape(b"x" * 10, limit=4), "xxxx... (6 more bytes)")
        self.assertEqual(escape("好" * 3, limit=2), "好好... (3 more bytes)")
        self.assertEqual(escape(b"abc", limit=3), "abc")

    @given(st.binary())
    def test_neverAControlCharacter(self, data: bytes) -> None:
        """
        Whatever the bytes, the result is one printable line.
        """
        self.assertTrue(escape(data).isprintable())

    @given(st.text())
    def test_textNeverAControlCharacter(self, text: str) -> None:
        """
        Whatever the text, the result is one printable line.
        """
        self.assertTrue(escape(text).isprintable())


class PluralTests(SynchronousTestCase):
    """
    Tests for L{plural}.
    """

    def test_one(self) -> None:
        """
        One of a thing takes the singular.
        """
        self.assertEqual(plural(1, "byte"), "1 byte")

    def test_many(self) -> None:
        """
        Zero or several take the plural, regular or given.
        """
        self.assertEqual(plural(0, "connection"), "0 connections")
        self.assertEqual(plural(2, "reply", "replies"), "2 replies")
