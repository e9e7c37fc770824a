"""Running a ``%%sandbox run`` cell: live output into the cell, rich bundles, interrupt.

The run itself happens in a worker thread; its events come back through a queue and are
rendered by the thread that runs the cell (so the kernel attributes every output to the
right cell). Ctrl-C / "interrupt kernel" while waiting forwards an interrupt to the sandbox
(a KeyboardInterrupt in its session, whose state is kept), shows what the code printed
until it stopped, and then fails the cell with a one-line :class:`SandboxInterrupted`.
"""

from __future__ import annotations

import getpass
import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

from IPython.core.error import StdinNotImplementedError

from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import ExecResult, OutputEvent

#: Seconds to wait for a run to stop after forwarding an interrupt before giving up.
INTERRUPT_GRACE = 10.0

_DONE = object()


class SandboxCodeError(Exception):
    """The sandboxed code failed (raised only with ``--raise-error``). Its display is one
    line: the sandbox's own traceback was already shown in the cell."""

    def __init__(self, sandbox_id: str, result: ExecResult):
        self.sandbox_id = sandbox_id
        self.result = result
        error = result.error or {}
        what = f"{error.get('ename')}: {error.get('evalue')}" if error else "the code failed"
        super().__init__(f"{what} (exit code {result.exit_code} in {sandbox_id})")

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class SandboxInterrupted(KeyboardInterrupt):
    """The cell was interrupted; the interrupt went to the sandbox, whose state is kept."""

    def _render_traceback_(self) -> list[str]:
        return [f"KeyboardInterrupt: {self}"]


class CellOutput:
    """Renders a run's events into the current cell as they arrive.

    stdout/stderr text goes to ``sys.stdout`` / ``sys.stderr`` (flushed at once, so it
    streams), display and result bundles go to the shell's display publisher. The error's
    traceback is written to stderr unless the sandbox already printed it there. ``input()``
    in the sandbox is answered with this shell's ``input()`` (the notebook's input box)."""

    def __init__(self, shell: Any):
        self.shell = shell
        self.stderr_seen: list[str] = []
        self.error: dict[str, Any] | None = None
        #: Sends the answer of an ``input_request`` back (set by :func:`run_in_cell`).
        self.answer_input: Callable[[str | None], None] | None = None

    def __call__(self, event: OutputEvent) -> None:
        if event.kind == "stdout":
            _write(sys.stdout, event.data)
        elif event.kind == "stderr":
            self.stderr_seen.append(event.data)
            _write(sys.stderr, event.data)
        elif event.kind in ("display", "result"):
            self.publish(event.data)
        elif event.kind == "clear_output":
            self._flush()
            wait = bool(event.data.get("wait")) if isinstance(event.data, dict) else False
            self.shell.display_pub.clear_output(wait=wait)
        elif event.kind == "error" and isinstance(event.data, dict):
            self.error = event.data
        elif event.kind == "input_request" and isinstance(event.data, dict):
            self.ask(event.data)

    def ask(self, request: dict[str, Any]) -> None:
        """Answer ``input()`` / ``getpass()`` in the sandbox; no input available = EOF."""
        if self.answer_input is None:
            return
        self._flush()
        prompt = str(request.get("prompt") or "")
        try:
            value: str | None = getpass.getpass(prompt) if request.get("password") else input(prompt)
        except (EOFError, OSError, StdinNotImplementedError):
            value = None
        self.answer_input(value)

    def publish(self, payload: Any) -> None:
        """Show one MIME bundle (``{"data": {mime: value}, "metadata": {...}}``, and for
        updatable displays ``transient: {"display_id": ...}`` and ``update``)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            return
        self._flush()
        options: dict[str, Any] = {}
        if isinstance(payload.get("transient"), dict) and payload["transient"]:
            options = {"transient": payload["transient"], "update": bool(payload.get("update"))}
        self.shell.display_pub.publish(
            data=payload["data"], metadata=payload.get("metadata") or {}, **options
        )

    @staticmethod
    def _flush() -> None:
        sys.stdout.flush()
        sys.stderr.flush()

    def finish(self) -> None:
        """Show the sandbox's traceback if it has not appeared on stderr yet."""
        if self.error is None:
            return
        lines = self.error.get("traceback") or []
        text = "\n".join(lines) if lines else f"{self.error.get('ename')}: {self.error.get('evalue')}"
        if text.strip() and text.strip() not in "".join(self.stderr_seen):
            _write(sys.stderr, text.rstrip("\n") + "\n")


def _write(stream: Any, text: Any) -> None:
    if isinstance(text, str) and text:
        stream.write(text)
        stream.flush()


def run_in_cell(
    manager: SandboxManager,
    sandbox_id: str,
    language: str,
    code: str,
    *,
    timeout: float | None,
    session: str | None,
    output: CellOutput,
    trusted_output: bool | None = None,
    on_result: Callable[[ExecResult], None] | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> ExecResult:
    """Run ``code`` in the sandbox, rendering its events into the cell while it runs.

    Re-raises whatever the run raised (SandboxError …); raises SandboxInterrupted after a
    KeyboardInterrupt has been forwarded to the sandbox. ``on_result`` gets the run's
    result whenever there is one (a timeout's and an interrupted run's too). ``checkpoint``:
    the agent's snapshot after the run (see :mod:`nexus_kernel.checkpoints`)."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    outcome: dict[str, Any] = {}
    stdin = session is not None and language == "python"
    if stdin:
        output.answer_input = lambda value: manager.input_reply(sandbox_id, session, value)

    def work() -> None:
        try:
            outcome["result"] = manager.run(
                sandbox_id, language, code, timeout,
                session=session, on_event=events.put, stdin=stdin,
                trusted_output=trusted_output, checkpoint=checkpoint,
            )
        except BaseException as exc:  # handed to the cell's thread
            outcome["error"] = exc
        finally:
            events.put(_DONE)

    threading.Thread(target=work, name="nexus-magic-run", daemon=True).start()
    interrupted = _pump(events, output, lambda: manager.interrupt(sandbox_id, session))
    output.finish()
    sys.stdout.flush()
    sys.stderr.flush()
    finished = outcome.get("result") or getattr(outcome.get("error"), "result", None)
    if on_result is not None and isinstance(finished, ExecResult):
        on_result(finished)
    if interrupted:
        result = outcome.get("result")
        if result is not None and result.session_restarted:
            raise SandboxInterrupted(f"interrupted; the code did not stop, so its session in "
                                     f"{sandbox_id} was restarted: its variables are gone")
        raise SandboxInterrupted(f"interrupted; the state of sandbox {sandbox_id} is kept")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _pump(events: queue.SimpleQueue, output: CellOutput, interrupt: Any) -> bool:
    """Render events until the run ends; returns True when the user interrupted it."""
    interrupted = False
    while True:
        try:
            event = events.get(timeout=INTERRUPT_GRACE if interrupted else None)
            if event is _DONE:
                return interrupted
            output(event)
        except KeyboardInterrupt:
            if interrupted:  # a second Ctrl-C: stop waiting, the run ends on its own
                return True
            interrupted = True
            _forward_interrupt(interrupt)
        except queue.Empty:  # the sandbox did not stop in time after the interrupt
            return True


def _forward_interrupt(interrupt: Any) -> None:
    try:
        interrupt()
    except Exception as exc:  # the run's own outcome says more; keep waiting for it
        _write(sys.stderr, f"could not interrupt the sandbox: {exc}\n")
