"""Text from outside made safe to print: no control characters, bounded length.

A user name or an SSH login is chosen by whoever connects.  Printed raw, a
newline forges a log line or a table row, NUL and bidi controls (U+202E)
hide or reorder what follows, and a 60,000-character string pads every row.
Every log line and every table cell goes through ``escape``; stored audit
fields are capped with ``clip``.
"""

from __future__ import annotations

import re

#: C0 and C1 controls, DEL, and the Unicode format characters that reorder or
#: hide text (bidi embeddings, overrides and isolates; marks; separators).
_UNSAFE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


def _escaped(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text: str) -> str:
    """``text`` with every unsafe character written as a visible escape.

    A tab stays (harmless in a line); a newline becomes ``\\x0a``.
    """
    return _UNSAFE.sub(_escaped, text)


def clip(text: str, limit: int) -> str:
    """At most about ``limit`` characters, saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def printable(text: str, limit: int = 200) -> str:
    """For one cell or one field of a line: escaped, then clipped."""
    return clip(escape(text), limit)
