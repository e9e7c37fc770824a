"""Splitting a notebook cell into the kernel's own lines and the code the sandbox runs.

A cell may start with ``%sandbox ...`` lines (handled by the kernel itself), then either a
cell magic naming the language (``%%bash``, ``%%javascript``, ``%%python``) or Python code.
A ``%%bash`` line with options (``--out``, ``--bg`` ...) goes to IPython's script magic in the
Python session. Every other magic (``%timeit``, ``%%time``, ``%matplotlib inline``, ``!cmd``
...) is Python code for the sandbox's session, which runs it through IPython when the sandbox
has IPython and otherwise says in one line how to get it there.
The ``%sandbox`` lines themselves are parsed by :mod:`nexus_kernel.sandbox_lines`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ``%%name`` -> language of the session the cell runs in.
CELL_MAGICS = {
    "python": "python",
    "python3": "python",
    "bash": "bash",
    "sh": "bash",
    "javascript": "javascript",
    "js": "javascript",
    "node": "javascript",
}

_SANDBOX_LINE = re.compile(r"^\s*%sandbox(?:\s+(.*?))?\s*$")
_MAGIC = re.compile(r"^\s*(%%?)([A-Za-z_][\w.-]*)")


@dataclass(frozen=True)
class Cell:
    """A parsed cell: ``%sandbox`` arguments to handle, then ``code`` in ``language``."""

    commands: tuple[str, ...]
    language: str
    code: str

    @property
    def has_code(self) -> bool:
        return bool(self.code.strip())


def parse_cell(source: str) -> Cell:
    """Split ``source`` into the kernel's ``%sandbox`` lines and the code to run.

    Python code keeps its line numbers (consumed lines become blank lines), so tracebacks
    point at the right line of the cell."""
    lines = source.splitlines(keepends=True)
    commands: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _SANDBOX_LINE.match(line)
        if match:
            commands.append(match.group(1) or "")
        elif line.strip():
            break
        index += 1
    rest = lines[index:]
    magic = _MAGIC.match(rest[0]) if rest else None
    if magic is not None and magic.group(1) == "%%" and magic.group(2) in CELL_MAGICS:
        language = CELL_MAGICS[magic.group(2)]
        if not (language == "bash" and rest[0][magic.end():].strip().startswith("-")):
            return Cell(tuple(commands), language, "".join(rest[1:]))
        # ``%%bash --out x --bg ...``: options only IPython's script magic understands
    return Cell(tuple(commands), "python", "\n" * index + "".join(rest))
