"""Cell checkpoints for the notebook surfaces (the proxy kernel and the magics): an automatic
snapshot of the sandbox before each cell (the newest K kept, in the sandbox), ``undo`` (back
to before the last cell, repeatable K times), and checkpoints by name. Each says which cell
the state now corresponds to."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .errors import SandboxError, UnsupportedOperationError, UsageError
from .manager import SandboxManager

#: Most automatic checkpoints a notebook keeps (the agent keeps at most 64 snapshots).
MAX_CHECKPOINTS = 32


def check_keep(value: int) -> int:
    """The number of automatic checkpoints to keep: 0 (off) .. MAX_CHECKPOINTS."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CHECKPOINTS:
        raise UsageError(f"checkpoints: keep 0 (off) to {MAX_CHECKPOINTS} cells, got {value!r}")
    return value


@dataclass(frozen=True)
class Mark:
    snapshot_id: str
    sandbox_id: str
    cell: str  # the label of the cell it was taken before ("In [7]") or after


class CellCheckpoints:
    """The checkpoints of one notebook's sandbox (the newest last)."""

    def __init__(self, manager: SandboxManager, keep: int) -> None:
        self.manager = manager
        self.keep = check_keep(keep)
        self._undo: list[Mark] = []
        self._named: dict[str, Mark] = {}

    def set_keep(self, keep: int, sandbox_id: str | None) -> None:
        """Keep the last ``keep`` cells' automatic checkpoints (0: none); older ones of
        ``sandbox_id`` are deleted now."""
        self.keep = check_keep(keep)
        marks = [m for m in self._undo if m.sandbox_id == sandbox_id]
        doomed = marks[:len(marks) - keep] if keep else marks
        for mark in doomed:
            with contextlib.suppress(SandboxError):
                self.manager.delete_snapshot(mark.sandbox_id, mark.snapshot_id)
        self._undo = [m for m in marks if m not in doomed]

    def before_cell(self, sandbox_id: str, cell: str) -> str:
        """Take the automatic checkpoint before ``cell``; a note for the user when none
        could be taken ("" otherwise). Checkpoints are turned off where unsupported."""
        if not self.keep:
            return ""
        try:
            snap = self.manager.snapshot(sandbox_id, keep_auto=self.keep)
        except UnsupportedOperationError as exc:
            self.keep = 0
            return f"Nexus: no undo in this sandbox: {exc}\n"
        except SandboxError as exc:
            return f"Nexus: no checkpoint before {cell}: {exc}\n"
        dropped = set(snap.get("dropped") or ())
        self._undo = [m for m in self._undo
                      if m.sandbox_id == sandbox_id and m.snapshot_id not in dropped]
        self._undo.append(Mark(snap["snapshot_id"], sandbox_id, cell))
        return ""

    def undo(self, sandbox_id: str) -> str:
        """Restore the checkpoint taken before the last cell that ran; the text to print."""
        marks = [m for m in self._undo if m.sandbox_id == sandbox_id]
        if not marks:
            why = ("automatic checkpoints are off (%sandbox checkpoints N turns them on)"
                   if not self.keep else "no checkpoint left to go back to")
            raise UsageError(f"nothing to undo: {why}")
        mark = marks[-1]
        self.manager.restore(sandbox_id, mark.snapshot_id)
        self._undo = marks[:-1]
        self.manager.delete_snapshot(sandbox_id, mark.snapshot_id)
        return (f"Undone: variables and files are as they were before {mark.cell} ran "
                f"({len(self._undo)} more undo step(s) available)\n")

    def save(self, sandbox_id: str, name: str, cell: str) -> str:
        """Checkpoint ``name`` of the state after ``cell`` (the last cell that ran)."""
        snap = self.manager.snapshot(sandbox_id, name)
        self._named[name] = Mark(snap["snapshot_id"], sandbox_id, cell)
        lost = "; ".join(f"threads of session {k} are not kept: {', '.join(v)}"
                         for k, v in snap["lost_threads"].items())
        return f"Checkpoint {name!r} saved (the state after {cell})" + (
            f"; {lost}" if lost else "") + "\n"

    def restore(self, sandbox_id: str, name: str) -> str:
        """Restore checkpoint ``name``; the text to print."""
        done = self.manager.restore(sandbox_id, name)
        mark = self._named.get(name)
        when = f" (the state after {mark.cell})" if mark and mark.sandbox_id == sandbox_id else ""
        fresh = (f"; started fresh: {', '.join(done['restarted'])}"
                 if done.get("restarted") else "")
        return f"Restored checkpoint {name!r}{when}{fresh}\n"

    def describe(self, sandbox_id: str | None) -> str:
        """What ``%sandbox checkpoints`` prints."""
        state = f"keeping the last {self.keep} cells" if self.keep else "off"
        lines = [f"Automatic checkpoints: {state}"]
        marks = [m for m in self._undo if m.sandbox_id == sandbox_id]
        if marks:
            lines.append("undo goes back to before: " + ", ".join(m.cell for m in reversed(marks)))
        named = [f"{n} (after {m.cell})" for n, m in self._named.items()
                 if m.sandbox_id == sandbox_id]
        if named:
            lines.append("named: " + ", ".join(named))
        return "\n".join(lines) + "\n"
