"""What the kernel answers itself, on the host, when the sandbox cannot: completion of
``%sandbox`` lines (the grammar's words) and magic names, and, before the first cell,
completion and help pages of Python's builtins and keywords (stdlib ``rlcompleter``)."""

from __future__ import annotations

import builtins
import contextlib
import inspect
import re
import rlcompleter
from typing import Any

from .. import sandbox_lines
from .cells import CELL_MAGICS

#: The dotted name (``a.b.c`` or ``a.b.``) that ends the text before the cursor.
_NAME = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*\.?$")
_MAGICS = ["%sandbox", *(f"%%{name}" for name in CELL_MAGICS)]


def _reply(matches: list[str], start: int, end: int) -> dict[str, Any]:
    return {"matches": matches, "cursor_start": start, "cursor_end": end}


def magic_name_before(code: str, pos: int) -> bool:
    """Whether the cursor ends the first word of a ``%`` line (a magic's name)."""
    line = code[:pos].rsplit("\n", 1)[-1]
    return line.lstrip().startswith("%") and len(line.split()) == 1 and not line.endswith(" ")


def complete_magic(code: str, pos: int) -> dict[str, Any] | None:
    """Completions on a line that starts with ``%``: the kernel's magic names, then the
    ``%sandbox`` grammar's words; None for any other line (Python code, or the arguments
    of a magic the sandbox's IPython runs)."""
    line = code[:pos].rsplit("\n", 1)[-1]
    if not line.lstrip().startswith("%"):
        return None
    words = line.split()
    if magic_name_before(code, pos):
        return _reply([m for m in _MAGICS if m.startswith(words[0])], pos - len(words[0]), pos)
    if words[0] != "%sandbox":
        return None
    words = words[1:] + ([""] if line.endswith(" ") else [])
    return _reply(sandbox_lines.complete(words, sandbox_lines.KERNEL), pos - len(words[-1]), pos)


def complete_builtin(code: str, pos: int) -> dict[str, Any]:
    """Builtins and keywords (or a builtin's attributes after a dot) matching the name
    before the cursor."""
    before = code[:pos]
    found = _NAME.search(before)
    if found is None or (found.start() > 0 and before[found.start() - 1] == "."):
        return _reply([], pos, pos)  # after ``f().`` completing would need evaluation
    token = found.group()
    completer = rlcompleter.Completer({})
    words = completer.attr_matches(token) if "." in token else completer.global_matches(token)
    matches = sorted({word.rstrip("(): ") for word in words},
                     key=lambda m: (m.rsplit(".", 1)[-1].startswith("_"), m))
    return _reply(matches, found.start(), pos)


def inspect_builtin(name: str) -> dict[str, Any]:
    """The help page of a builtin (``len``, ``str.join``): type, signature, docstring."""
    obj: Any = builtins
    try:
        for part in name.split("."):
            obj = inspect.getattr_static(obj, part)
    except AttributeError:
        return {"found": False, "data": {}, "metadata": {}}
    lines = [f"Type:      {type(obj).__name__}"]
    with contextlib.suppress(TypeError, ValueError):
        lines.append(f"Signature: {name.rsplit('.', 1)[-1]}{inspect.signature(obj)}")
    if not callable(obj):
        lines.append(f"Value:     {obj!r}")
    doc = inspect.getdoc(obj)
    if doc:
        lines += ["Docstring:", doc]
    return {"found": True, "data": {"text/plain": "\n".join(lines)}, "metadata": {}}
