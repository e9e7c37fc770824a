"""The "Nexus Sandbox" proxy kernel: an ipykernel ``Kernel`` that runs every cell in a sandbox.

A thin translator in the style of bash_kernel: ``do_execute`` runs the cell through
:class:`~nexus_kernel.manager.SandboxManager` in the kernel's main thread and forwards the
sandbox's events as they arrive (stream, execute_result, display_data, clear_output, error),
answers ``input()`` through the stdin channel, and turns SIGINT (ipykernel's interrupt) into an
interrupt of the sandbox session while the cell keeps streaming (see :class:`InterruptGuard`).
"""

from __future__ import annotations

import asyncio
import atexit
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipykernel.kernelbase import Kernel
from IPython.core.error import StdinNotImplementedError

from .. import __version__
from ..egress import denial_line
from ..errors import ExecutionTimeoutError, SandboxError, SandboxStateError
from ..manager import SandboxManager
from ..models import ExecResult, OutputEvent
from ..untrusted import TRUST_WARNING
from . import completion
from .cells import CELL_MAGICS, Cell, parse_cell
from .commands import SandboxCommands
from .history import History
from .keeper import TtlKeeper
from .sandbox import SESSION, KernelSandbox

#: Seconds to wait for the sandbox to report an interrupted cell before replying "abort".
INTERRUPT_GRACE = 3.0
#: Said when the sandbox had to kill the session to end a cell.
SESSION_LOST = ("Nexus: the code did not stop when interrupted, so its session was restarted: "
                "variables from earlier cells are gone.\n")
#: A cell that is only ``name?`` or ``name??`` asks for help (IPython's syntax).
_HELP = re.compile(r"\s*([^\W\d][\w.]*)(\?{1,2})\s*")


class InterruptGuard:
    """SIGINT handling while a cell runs in the sandbox (a context manager, main thread).

    The first interrupt is forwarded to the sandbox from a helper thread (the signal may
    arrive while the main thread holds a lock of the agent client) and the cell goes on
    streaming until the sandbox reports the KeyboardInterrupt, so the cell shows its
    traceback and the namespace is kept. KeyboardInterrupt is raised in the main thread only
    to stop waiting: when the cell waits for ``input()``, or when the sandbox has not ended
    the cell INTERRUPT_GRACE seconds after the interrupt."""

    def __init__(self, forward: Callable[[], None]) -> None:
        self._forward = forward
        self._saved: Any = None
        self._timer: threading.Timer | None = None
        self._active = False
        self.first: float | None = None
        self.waiting_for_input = False

    def __enter__(self) -> InterruptGuard:
        self._saved = signal.signal(signal.SIGINT, self._handler)
        self._active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._active = False
        signal.signal(signal.SIGINT, self._saved)
        if self._timer is not None:
            self._timer.cancel()

    def _grace_over(self) -> None:
        """Timer thread: wake the main thread with a real SIGINT (``_thread.interrupt_main``
        would not end a blocking wait) so the handler can give up waiting."""
        if self._active:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    @property
    def abandoned(self) -> bool:
        """True once the grace after an interrupt has passed."""
        return self.first is not None and time.monotonic() - self.first >= INTERRUPT_GRACE - 0.05

    def _handler(self, signum: int, frame: Any) -> None:
        if self.abandoned:
            raise KeyboardInterrupt
        if self.first is None:
            self.first = time.monotonic()
            threading.Thread(target=self._forward, name="nexus-interrupt", daemon=True).start()
            self._timer = threading.Timer(INTERRUPT_GRACE, self._grace_over)
            self._timer.daemon = True
            self._timer.start()
        if self.waiting_for_input:
            raise KeyboardInterrupt


class _CellState:
    """What one cell produced that its reply and the history need."""

    def __init__(self) -> None:
        self.error: dict[str, Any] | None = None
        self.output: str | None = None
        self.payload: list[dict[str, Any]] = []  # pager text, as ipykernel's page payloads


class NexusKernel(Kernel):
    """Every cell runs in one persistent session of one sandbox (see ``KernelSandbox``)."""

    implementation = "nexus_kernel"
    implementation_version = __version__
    language = "python"
    language_version = "3"
    language_info = {
        "name": "python",
        "version": "3",
        "mimetype": "text/x-python",
        "codemirror_mode": {"name": "ipython", "version": 3},
        "pygments_lexer": "ipython3",
        "nbconvert_exporter": "python",
        "file_extension": ".py",
    }
    banner = ("Nexus Sandbox: every cell runs in an isolated, ephemeral sandbox. "
              "%sandbox help lists the kernel's own commands; %%bash and %%javascript cells "
              "run in the same sandbox.")
    help_links = [{"text": "nexus-kernel", "url": "https://github.com/nexus-kernel/nexus-kernel"}]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: ipykernel sleeps this long before each execute reply so that output captured in
        #: the kernel process gets out first; a cell's output here was sent before its reply.
        self._execute_sleep = 0.0
        self.history = History()
        self.sandbox: KernelSandbox | None = None
        self.keeper: TtlKeeper | None = None
        self._startup_error: str | None = None
        self._last_parent: dict[str, Any] | None = None
        self._closed = threading.Lock()
        self._is_complete = None
        self._first_note = ""
        self._cell_result: ExecResult | None = None  # the last cell's, for its reply
        try:
            self.sandbox = KernelSandbox(SandboxManager(), name=self._sandbox_name(),
                                         client_id=self._client_id())
            self._first_note = self.sandbox.previous_run()
        except SandboxError as exc:  # bad NEXUS_* settings: shown in every cell
            self._startup_error = str(exc)
        else:
            self.commands = SandboxCommands(self.sandbox)
            self.keeper = TtlKeeper(self.sandbox, self._warn)
            self.keeper.start()
        #: A kernel trusted from the start (its kernelspec) says what that means once.
        self._trust_warned = not (self.sandbox is not None and self.sandbox.trusted_output)
        atexit.register(self._close)

    def _kernel_id(self) -> str:
        """Jupyter's id of this kernel (from its connection file, which a restart reuses)."""
        connection_file = getattr(self.parent, "connection_file", "") or ""
        return Path(connection_file).stem.removeprefix("kernel-")

    def _sandbox_name(self) -> str:
        stem = self._kernel_id()
        return f"jupyter-{stem[:8]}" if stem else f"jupyter-{id(self):x}"

    def _client_id(self) -> str | None:
        return f"jupyter-kernel:{self._kernel_id()}" if self._kernel_id() else None

    # ------------------------------------------------------------------ execute

    async def do_execute(self, code: str, silent: bool, store_history: bool = True,
                         user_expressions: dict | None = None, allow_stdin: bool = False,
                         *, cell_meta: Any = None, cell_id: Any = None) -> dict[str, Any]:
        """Run a cell in the sandbox, forwarding its output live; reply ok / error / abort."""
        self._allow_stdin = allow_stdin
        self._last_parent = self.get_parent("shell")
        self._cell_result = None
        state = _CellState()
        try:
            reply = self._execute(code, silent, allow_stdin, state)
        except KeyboardInterrupt:  # between sandbox calls (e.g. in a %sandbox line)
            reply = self._error("KeyboardInterrupt", "interrupted", silent)
        if store_history and not silent:
            self.history.add(self.execution_count, code, state.output)
        return reply

    def _execute(self, code: str, silent: bool, allow_stdin: bool,
                 state: _CellState) -> dict[str, Any]:
        if self.sandbox is None:
            return self._error("SandboxError", self._startup_error or "no sandbox", silent)
        help_request = _HELP.fullmatch(code)
        if help_request:
            return self._page_help(*help_request.groups())
        try:
            cell = parse_cell(code)
            for line in cell.commands:
                self._stream("stdout", self.commands.run(line), silent)
            if not cell.has_code:
                return self._ok()
            return self._run_cell(cell, silent, allow_stdin, state)
        except SandboxError as exc:  # a bad line is a UsageError
            return self._error(type(exc).__name__, str(exc), silent)

    def _run_cell(self, cell: Cell, silent: bool, allow_stdin: bool,
                  state: _CellState) -> dict[str, Any]:
        """Run the code in the kernel's session, forwarding events from ``on_event`` (no
        thread hop: this is the round trip a cell pays). After a cell that ran, the next
        one goes straight to its run, which reads the sandbox's record itself; when that
        says the sandbox is no longer active (paused, stopped, expired meanwhile), the cell
        starts over with ``ensure`` (resume, or a new sandbox and a note)."""
        assert self.sandbox is not None
        checked = self.sandbox.reached is None or self.sandbox.reached != self.sandbox.sandbox_id
        sandbox_id, note = self.sandbox.ensure() if checked else (self.sandbox.reached, "")
        self.sandbox.reached = None
        note, self._first_note = self._first_note + note, ""
        if self.sandbox.trusted_output and not self._trust_warned:
            self._trust_warned = True
            note = TRUST_WARNING + note
        self.sandbox.last_cell = label = f"In [{self.execution_count}]"
        more, checkpoint = self.sandbox.checkpoints.before_cell(sandbox_id, label)
        note += more
        if note:
            self._stream("stderr", note, silent)
        guard = InterruptGuard(lambda: self._interrupt(sandbox_id))
        self.sandbox.busy = True
        started: list[str] = []  # the run's id once it is sent to the sandbox
        try:
            with guard:
                result = self.sandbox.manager.run(
                    sandbox_id, cell.language, cell.code, self.sandbox.cell_timeout,
                    session=SESSION, stdin=allow_stdin, stderr_traceback=False,
                    reserve_timeout=False, trusted_output=self.sandbox.trusted_output,
                    execution_count=self.execution_count, checkpoint=checkpoint,
                    on_event=lambda event: self._forward(event, sandbox_id, state, silent, guard),
                    defer=self._after_reply, on_run_id=started.append,
                )
        except SandboxStateError:
            if started or checked:
                raise
            return self._run_cell(cell, silent, allow_stdin, state)  # through ensure()
        except KeyboardInterrupt:
            if guard.abandoned:
                return self._abort(silent)
            return self._error("KeyboardInterrupt", "Interrupted by user", silent)
        except ExecutionTimeoutError as exc:
            self.sandbox.reached = sandbox_id
            self._finished(exc.result, silent)
            return self._error("TimeoutError", str(exc), silent)
        finally:
            self.sandbox.busy = False
            if started:
                self.sandbox.checkpoints.after_cell(sandbox_id, checkpoint)
        self.sandbox.reached = sandbox_id
        self._finished(result, silent)
        if result.session_restarted:
            self._stream("stderr", SESSION_LOST, silent)
        if state.error is not None:
            return {"status": "error", "execution_count": self.execution_count, **state.error,
                    "payload": state.payload}
        if result.exit_code != 0:
            return self._error(*exit_error(cell.language, result), silent)
        return {**self._ok(), "payload": state.payload}

    def _finished(self, result: ExecResult | None, silent: bool) -> None:
        """Keep the cell's result for its reply's metadata and ``%sandbox usage``; show
        under the cell what the network allow-list denied during it."""
        assert self.sandbox is not None
        self._cell_result = result
        if result is not None:
            self.sandbox.log_usage(f"In [{self.execution_count}]", result)
            denied = "".join(denial_line(event) + "\n" for event in result.network_denials)
            if denied:
                self._stream("stderr", denied, silent)

    def _after_reply(self, update: Callable[[], None]) -> None:
        """Update the sandbox's record (TTL, usage totals) once the cell's reply and idle
        status are out: the store write is off the cell's round trip; the next request
        is handled after it."""
        asyncio.get_running_loop().call_soon(self._update_record, update)

    def _update_record(self, update: Callable[[], None]) -> None:
        try:
            update()
        except SandboxError as exc:
            self.log.warning("cannot update the sandbox's record: %s", exc)

    def finish_metadata(self, parent: Any, metadata: dict[str, Any],
                        reply_content: dict[str, Any]) -> dict[str, Any]:
        """The execute reply's metadata: ``nexus: {usage, ended_by}`` of a cell that ran."""
        result, self._cell_result = self._cell_result, None
        if result is not None:
            metadata["nexus"] = {"usage": result.usage, "ended_by": result.ended_by,
                                 "network_denials": list(result.network_denials)}
        return metadata

    def _forward(self, event: OutputEvent, sandbox_id: str, state: _CellState, silent: bool,
                 guard: InterruptGuard) -> None:
        kind, data = event.kind, event.data
        if kind == "input_request":
            guard.waiting_for_input = True
            try:
                self._answer_input(sandbox_id, data)
            finally:
                guard.waiting_for_input = False
            return
        if kind == "error":
            state.error = {
                "ename": str(data.get("ename") or "Error"),
                "evalue": str(data.get("evalue") or ""),
                "traceback": [str(line) for line in data.get("traceback") or []],
            }
            if not silent:
                self.send_response(self.iopub_socket, "error", state.error)
            return
        if kind == "display" and data.get("page"):
            state.payload.append({"source": "page", "data": data.get("data") or {}, "start": 0})
            return
        if kind == "result":
            state.output = (data.get("data") or {}).get("text/plain")
        message = None if silent else iopub_message(kind, data, self.execution_count)
        if message is not None:
            self.send_response(self.iopub_socket, *message)

    def _answer_input(self, sandbox_id: str, data: dict[str, Any]) -> None:
        assert self.sandbox is not None
        prompt = str(data.get("prompt") or "")
        try:
            value: str | None = (self.getpass(prompt) if data.get("password")
                                 else self.raw_input(prompt))
        except (EOFError, StdinNotImplementedError):
            value = None
        self.sandbox.manager.input_reply(sandbox_id, SESSION, value)

    def _interrupt(self, sandbox_id: str) -> None:
        assert self.sandbox is not None
        try:
            self.sandbox.manager.interrupt(sandbox_id, SESSION)
        except SandboxError as exc:
            self.log.warning("cannot interrupt sandbox %s: %s", sandbox_id, exc)

    # ------------------------------------------------------------------ replies

    def _ok(self) -> dict[str, Any]:
        return {"status": "ok", "execution_count": self.execution_count, "payload": [],
                "user_expressions": {}}

    def _error(self, ename: str, evalue: str, silent: bool) -> dict[str, Any]:
        content = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        if not silent:
            self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    def _abort(self, silent: bool) -> dict[str, Any]:
        self._stream("stderr", f"Nexus: the sandbox did not stop the cell within "
                               f"{INTERRUPT_GRACE:g} s of the interrupt; it may still be "
                               "running (%sandbox stop ends the sandbox).\n", silent)
        return {"status": "abort", "execution_count": self.execution_count}

    def _stream(self, name: str, text: str, silent: bool) -> None:
        if text and not silent:
            self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def _warn(self, text: str) -> None:
        """Called by the TTL keeper thread: stderr text under the last executed cell."""
        if self._last_parent is not None and self.session is not None:
            self.session.send(self.iopub_socket, "stream", {"name": "stderr", "text": text},
                              parent=self._last_parent)

    def _page_help(self, name: str, marks: str) -> dict[str, Any]:
        """``name?`` / ``name??``: the inspect text as a pager payload, as IPython does."""
        found = self._ask_sandbox("inspect", name, len(name), len(marks) - 1)
        if found is None:
            found = completion.inspect_builtin(name)
        data = found.get("data") if found.get("found") else {"text/plain": f"Object `{name}` not found."}
        reply = self._ok()
        reply["payload"] = [{"source": "page", "data": data, "start": 0}]
        return reply

    # ------------------------------------------------------------------ introspection

    async def do_complete(self, code: str, cursor_pos: int | None) -> dict[str, Any]:
        """Completions from the sandbox session's namespace (builtins before the first cell);
        ``%sandbox`` lines are completed here, magic names here and in the sandbox."""
        pos = len(code) if cursor_pos is None else cursor_pos
        found = completion.complete_magic(code, pos)
        if found is None:
            found = self._ask_sandbox("complete", code, pos)
        elif completion.magic_name_before(code, pos):  # and the sandbox IPython's magics
            more = self._ask_sandbox("complete", code, pos) or {}
            if not more.get("busy") and more.get("cursor_start") == found["cursor_start"]:
                found["matches"] += [m for m in more.get("matches") or []
                                     if m not in found["matches"]]
        if found is None or found.get("busy"):
            found = completion.complete_builtin(code, pos) if not _other_language(code) else {}
        return {
            "status": "ok",
            "matches": list(found.get("matches") or []),
            "cursor_start": found.get("cursor_start", pos),
            "cursor_end": found.get("cursor_end", pos),
            "metadata": {},
        }

    async def do_inspect(self, code: str, cursor_pos: int | None, detail_level: int = 0,
                         omit_sections: Any = ()) -> dict[str, Any]:
        """Type, signature and docstring of the name at the cursor, from the sandbox."""
        pos = len(code) if cursor_pos is None else cursor_pos
        found = self._ask_sandbox("inspect", code, pos, detail_level) or {}
        return {"status": "ok", "found": bool(found.get("found")),
                "data": found.get("data") or {}, "metadata": found.get("metadata") or {}}

    def _ask_sandbox(self, what: str, code: str, pos: int,
                     detail_level: int = 0) -> dict[str, Any] | None:
        sandbox = self.sandbox
        if sandbox is None or sandbox.sandbox_id is None or _other_language(code):
            return None
        try:
            if what == "complete":
                return sandbox.manager.complete(sandbox.sandbox_id, SESSION, code, pos)
            return sandbox.manager.inspect(sandbox.sandbox_id, SESSION, code, pos, detail_level)
        except SandboxError:
            return None

    async def do_is_complete(self, code: str) -> dict[str, Any]:
        """Whether the code is ready to run (IPython's rules, checked locally: syntax only)."""
        if self._is_complete is None:
            from IPython.core.inputtransformer2 import TransformerManager

            self._is_complete = TransformerManager().check_complete
        status, indent = self._is_complete(code)
        reply: dict[str, Any] = {"status": status}
        if status == "incomplete":
            reply["indent"] = " " * (indent or 0)
        return reply

    async def do_history(self, hist_access_type: str, output: bool, raw: bool,
                         session: int | None = None, start: int | None = None,
                         stop: int | None = None, n: int | None = None,
                         pattern: str | None = None, unique: bool = False) -> dict[str, Any]:
        """This kernel's cells (tail, range, search); kept in memory only."""
        rows = self.history.query(hist_access_type, output=output, start=start or 0, stop=stop,
                                  n=n, pattern=pattern, unique=unique)
        return {"status": "ok", "history": rows}

    # ------------------------------------------------------------------ shutdown

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        """Stop the sandbox (unless kept) and the TTL timer."""
        self._close()
        return {"status": "ok", "restart": restart}

    def _close(self) -> None:
        if not self._closed.acquire(blocking=False):
            return
        if self.keeper is not None:
            self.keeper.stop()
        if self.sandbox is not None:
            try:
                self.sandbox.close()
            except SandboxError as exc:
                self.log.warning("cannot stop sandbox %s: %s", self.sandbox.sandbox_id, exc)


def iopub_message(kind: str, data: Any, execution_count: int) -> tuple[str, dict] | None:
    """The IOPub (msg_type, content) for a sandbox event, or None if it has none."""
    if kind in ("stdout", "stderr"):
        return "stream", {"name": kind, "text": data}
    if kind == "result":
        return "execute_result", {"execution_count": execution_count,
                                  "data": data.get("data") or {},
                                  "metadata": data.get("metadata") or {}}
    if kind == "display":
        transient = data.get("transient") or {}
        msg_type = ("update_display_data" if data.get("update") and transient.get("display_id")
                    else "display_data")
        return msg_type, {"data": data.get("data") or {}, "metadata": data.get("metadata") or {},
                          "transient": transient}
    if kind == "clear_output":
        return "clear_output", {"wait": bool(data.get("wait"))}
    return None


def exit_error(language: str, result: ExecResult) -> tuple[str, str]:
    """(ename, evalue) for a run that failed without an error event."""
    if result.interrupted:
        return "KeyboardInterrupt", "interrupted"
    if language == "python":
        return "SystemExit", str(result.exit_code)
    return "ExitCode", f"{language} exited with status {result.exit_code}"


def _other_language(code: str) -> bool:
    """True for a %%bash / %%javascript cell (no python completion there)."""
    first = code.lstrip().split("\n", 1)[0]
    return first.startswith("%%") and CELL_MAGICS.get(first[2:].split(" ")[0]) != "python"
