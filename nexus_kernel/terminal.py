"""Sandbox output shown on a terminal, made unable to drive the terminal.

A terminal obeys escape sequences in the bytes it prints: OSC 52 writes the user's
clipboard, OSC 0 sets the window title, cursor moves and line erasure rewrite what was
printed before (a run can fake the result of an earlier command), and bidi overrides reorder
what is shown. :func:`for_terminal` keeps text, newlines, tabs, carriage returns (progress
bars) and SGR colour sequences, and shows every other control character as a visible escape
(``\\x1b``, ``\\x9b``, ``\\u202e``). ``nexus sandbox run --raw`` passes bytes untouched.
"""

from __future__ import annotations

import re

#: SGR (colours, bold): ESC [ digits/semicolons m. Nothing else of ESC is kept.
_SGR = r"\x1b\[[0-9;]{0,32}m"
#: C0 controls but \t \n \r, DEL, C1 controls, bidi embeddings/overrides/isolates.
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
_PIECES = re.compile(f"({_SGR})|({_CONTROL})")


def _visible(match: re.Match) -> str:
    if match.group(1):
        return match.group(1)
    code = ord(match.group(2))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: str) -> str:
    """``text`` with every control character but \\t \\n \\r and SGR colours made visible."""
    return _PIECES.sub(_visible, text)
