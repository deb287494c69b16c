"""Outside text printed safely: ``teleconch.text``."""

from __future__ import annotations

from teleconch.text import clip, escape, printable


def test_escape_makes_line_breaks_and_terminal_controls_visible() -> None:
    """Newlines, carriage returns, NUL, ESC, DEL and C1 controls become escapes."""
    assert (
        escape("a\nb\rc\x00d\x1be\x7ff\x85") == "a\\x0ab\\x0dc\\x00d\\x1be\\x7ff\\x85"
    )


def test_escape_makes_bidi_and_invisible_format_characters_visible() -> None:
    """U+202E and friends cannot reorder or hide what follows."""
    assert escape("x\u202ey\u2066z\u200bw\u2028") == "x\\u202ey\\u2066z\\u200bw\\u2028"


def test_escape_keeps_ordinary_text_and_tabs() -> None:
    """Letters of any script, emoji, tabs and backslashes are left as they are."""
    text = "Zoë\tnaïve 漢字 🙂 C:\\dir"
    assert escape(text) == text


def test_clip_says_how_much_was_cut() -> None:
    """A long string keeps its head and says how many characters follow."""
    assert clip("x" * 10, 10) == "x" * 10
    assert clip("x" * 60_000, 8) == "xxxxxxxx...(+59992 chars)"
    assert len(printable("\n" * 1000, 50)) < 80
