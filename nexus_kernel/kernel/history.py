"""In-memory input history of one kernel, answering ``history_request`` (tail, range,
search). It lives as long as the kernel process; there is no history database."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

#: The kernel has one history session; its number in replies.
SESSION_NUMBER = 1


@dataclass
class History:
    """Cells executed with ``store_history``: (execution count, source, text output)."""

    entries: list[tuple[int, str, str | None]] = field(default_factory=list)

    def add(self, line: int, source: str, output: str | None) -> None:
        self.entries.append((line, source, output))

    def query(self, access: str, output: bool = False, start: int = 0, stop: int | None = None,
              n: int | None = None, pattern: str | None = None, unique: bool = False) -> list:
        """Rows ``(session, line, source)`` or ``(session, line, (source, output))``."""
        if access == "tail":
            chosen = self.entries[-n:] if n else list(self.entries)
        elif access == "range":
            chosen = [e for e in self.entries
                      if e[0] >= (start or 0) and (stop is None or e[0] < stop)]
        elif access == "search":
            chosen = [e for e in self.entries if fnmatch.fnmatchcase(e[1], pattern or "*")]
            if unique:
                last = {e[1]: e for e in chosen}
                chosen = [e for e in chosen if last[e[1]] is e]
            if n:
                chosen = chosen[-n:]
        else:
            chosen = []
        return [(SESSION_NUMBER, line, (source, out) if output else source)
                for line, source, out in chosen]
