"""Cell checkpoints for the notebook surfaces (the proxy kernel and the magics): automatic
snapshots of the sandbox between cells (the newest K kept, in the sandbox), ``undo`` (back
to before the last cell, repeatable K times), and checkpoints by name. Each says which cell
the state now corresponds to.

The state before a cell is the state after the one before it: each cell's run asks the agent
for a checkpoint once it is done (``checkpoint`` on the run), taken after the run's answer
and so off the cell's round trip; a checkpoint is taken before a cell only when the last one
is missing (the first cell, a run that could not leave one). This assumes nothing else ran
in the sandbox between two cells (another client, a stateless run): undo then restores the
state after the earlier cell.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgumentError, SandboxError, UnsupportedOperationError, UsageError
from .manager import SandboxManager

#: Most automatic checkpoints a notebook keeps (the agent keeps up to 32 automatic ones:
#: the undo steps plus the one of the current state).
MAX_CHECKPOINTS = 31


def check_keep(value: int) -> int:
    """The number of undo steps to keep: 0 (off) .. MAX_CHECKPOINTS."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CHECKPOINTS:
        raise UsageError(f"checkpoints: keep 0 (off) to {MAX_CHECKPOINTS} cells, got {value!r}")
    return value


@dataclass
class Mark:
    ref: str  # the snapshot's id or name
    sandbox_id: str
    label: str = ""  # the cell it is the state before ("In [7]"), once that cell ran


class CellCheckpoints:
    """The automatic and named checkpoints of one notebook's sandbox."""

    def __init__(self, manager: SandboxManager, keep: int) -> None:
        self.manager = manager
        self.keep = check_keep(keep)
        self._marks: list[Mark] = []  # oldest first
        self._current = False  # the newest mark holds the sandbox's current state
        self._named: dict[str, Mark] = {}
        self._prefix = f"auto-{os.urandom(4).hex()}-"
        self._count = 0

    def _ours(self, sandbox_id: str) -> list[Mark]:
        if any(m.sandbox_id != sandbox_id for m in self._marks):  # a new sandbox: start over
            self._marks, self._current = [], False
        return self._marks

    def before_cell(self, sandbox_id: str, cell: str) -> tuple[str, dict[str, Any] | None]:
        """Before ``cell`` runs: a note for the user ("" if none) and the ``checkpoint``
        its run carries (None: checkpoints are off or unsupported here)."""
        if not self.keep:
            return "", None
        marks = self._ours(sandbox_id)
        note = ""
        if not (marks and self._current):
            try:
                snap = self.manager.snapshot(sandbox_id, keep_auto=self.keep + 1)
            except UnsupportedOperationError as exc:
                self.keep = 0
                return f"Nexus: no undo in this sandbox: {exc}\n", None
            except SandboxError as exc:
                note = f"Nexus: no checkpoint before {cell}: {exc}\n"
            else:
                marks.append(Mark(snap["snapshot_id"], sandbox_id))
        if marks:
            marks[-1].label = cell
        self._current = False
        self._count += 1
        return note, {"name": f"{self._prefix}{self._count}", "keep_auto": self.keep + 1}

    def after_cell(self, sandbox_id: str, checkpoint: dict[str, Any] | None) -> None:
        """The cell's run ended (its agent takes ``checkpoint`` now)."""
        if checkpoint is None:
            return
        marks = self._ours(sandbox_id)
        marks.append(Mark(checkpoint["name"], sandbox_id))
        del marks[:-(self.keep + 1)]
        self._current = True

    def undo(self, sandbox_id: str) -> str:
        """Restore the state before the last cell; the text to print."""
        marks = self._ours(sandbox_id)
        if self._current and marks:
            self._drop(marks.pop())  # the current state itself
        while marks:
            mark = marks[-1]
            try:
                self.manager.restore(sandbox_id, mark.ref)
            except InvalidArgumentError as exc:
                if "no snapshot" not in str(exc):
                    raise
                marks.pop()  # never taken (its run did not end normally): the one before
                continue
            self._current = True
            when = f"before {mark.label} ran" if mark.label else "before the last restore"
            return (f"Undone: variables and files are as they were {when} "
                    f"({len(marks) - 1} more undo step(s) available)\n")
        self._current = False
        why = ("automatic checkpoints are off (%sandbox checkpoints N turns them on)"
               if not self.keep else "no checkpoint left to go back to")
        raise UsageError(f"nothing to undo: {why}")

    def set_keep(self, keep: int, sandbox_id: str | None) -> None:
        """Keep ``keep`` undo steps (0: none); older checkpoints are deleted now."""
        self.keep = check_keep(keep)
        marks = self._marks
        doomed = marks[:len(marks) - keep - 1] if keep else list(marks)
        for mark in doomed:
            self._drop(mark)
        self._marks = [m for m in marks if m not in doomed]
        self._current = self._current and bool(self._marks)

    def _drop(self, mark: Mark) -> None:
        with contextlib.suppress(SandboxError):
            self.manager.delete_snapshot(mark.sandbox_id, mark.ref)

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
        self._current = False  # the newest automatic checkpoint is no longer the state
        mark = self._named.get(name)
        when = f" (the state after {mark.label})" if mark and mark.sandbox_id == sandbox_id else ""
        fresh = (f"; started fresh: {', '.join(done['restarted'])}"
                 if done.get("restarted") else "")
        return f"Restored checkpoint {name!r}{when}{fresh}\n"

    def fork(self, sandbox_id: str, attach: str) -> tuple[str, str]:
        """``%sandbox fork``: a new sandbox with this one's state; what to say about it (how
        to use it) and its id."""
        forks, report = self.manager.fork(sandbox_id)
        new = forks[0].sandbox_id
        lost = "".join(f"; not carried from session {k}: {', '.join(v)}"
                       for k, v in report["skipped"].items())
        return f"Forked sandbox {new}{lost}. {attach.format(new)}\n", new

    def describe(self, sandbox_id: str | None) -> str:
        """What ``%sandbox checkpoints`` prints."""
        state = f"keeping the last {self.keep} cells" if self.keep else "off"
        lines = [f"Automatic checkpoints: {state}"]
        marks = [m for m in self._marks if m.sandbox_id == sandbox_id]
        steps = [m.label for m in (marks[:-1] if self._current else marks) if m.label]
        if steps:
            lines.append("undo goes back to before: " + ", ".join(reversed(steps)))
        named = [f"{n} (after {m.label})" for n, m in self._named.items()
                 if m.sandbox_id == sandbox_id]
        if named:
            lines.append("named: " + ", ".join(named))
        return "\n".join(lines) + "\n"
