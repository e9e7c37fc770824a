"""The python session worker (``worker-python``): runs cells in one persistent namespace,
Jupyter-style, in its own interpreter. When that interpreter has IPython, cells run through
one IPython shell (:mod:`.ishell`: magics, ``!cmd``, IPython's display and tracebacks);
without it, through the plain exec loop here, where a magic line says how to get IPython.
It imports only this module, the wire format, rich-output capture and ``ishell``
(introspection on the first query, :mod:`.freeze` on the first snapshot), never the server.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading

from .rich import clean_bundle, mime_bundle
from .wire import (
    CHUNK,
    EVENT_PREFIX,
    INTERRUPT_EXIT_CODE,
    MARKER_PREFIX,
    LineBuffer,
    close_fds,
    decode,
    encode,
    write_all,
)

#: Set in python sessions: plots render off-screen and are sent as PNG after each run.
MATPLOTLIB_BACKEND = "Agg"


class PythonWorker:
    """Executes cells in one persistent namespace, Jupyter-style.

    fd 3 carries commands (JSON lines ``{"id", "code"}``), fd 4 carries events back. User code
    gets stdin = /dev/null and the real fds 1/2; the end markers go through private dups."""

    def __init__(self) -> None:
        import types

        self.cmd_fd = os.dup(3)
        self.ctl_fd = os.dup(4)
        close_fds(3, 4)
        self.out_fd = os.dup(1)
        self.err_fd = os.dup(2)
        self._emit_lock = threading.Lock()
        self.executing = False
        self.cell = 0
        self._loop = None
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        self.namespace = main.__dict__
        sys.argv = [""]
        sys.path[0] = ""
        signal.signal(signal.SIGINT, self._on_sigint)
        self._lines = LineBuffer()
        self._pending: list = []  # command lines read but not handled yet
        self.run_id = ""
        self.stdin = False  # may input() ask the client (the run's ``stdin`` flag)?
        self.stderr_traceback = True
        self._install_builtins()
        self.shell = self._make_shell()

    def _make_shell(self):
        """The session's IPython shell when this interpreter has IPython, else None."""
        from .ishell import ipython_available, make_shell

        if not ipython_available():
            return None
        try:
            return make_shell(self)
        except Exception as exc:  # a broken install: the plain session still works
            self._write_stderr(f"IPython is installed but could not start "
                               f"({type(exc).__name__}: {exc}); running plain Python\n")
            return None

    def _install_builtins(self) -> None:
        """``display``/``clear_output`` for every cell, ``input``/``getpass`` that can ask the
        client, and matplotlib on a non-interactive backend (figures are sent after runs)."""
        import builtins
        import getpass
        import warnings

        os.environ["MPLBACKEND"] = MATPLOTLIB_BACKEND
        warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")
        self._builtin_input = builtins.input
        self._builtin_getpass = getpass.getpass
        builtins.display = self.display
        builtins.clear_output = self.clear_output
        builtins.input = self.input
        getpass.getpass = self.getpass

    def _on_sigint(self, signum, frame) -> None:
        if self.executing:
            raise KeyboardInterrupt

    def emit(self, msg: dict) -> None:
        """Send one event to the agent: ``end`` and query replies on the control pipe, the
        run's events (result, display, error, ...) in-band on stdout, after what the cell
        printed before them."""
        data = encode(msg)
        with self._emit_lock:
            if msg.get("ev") in ("end", "reply"):
                write_all(self.ctl_fd, data)
            else:
                self._flush_streams()
                write_all(self.out_fd, EVENT_PREFIX + data)

    def serve(self) -> None:
        while True:
            cmd = self._next_command()
            if cmd is None:
                return
            op = cmd.get("op")
            if op is None:
                self.run(cmd)
            elif op in ("complete", "inspect"):
                self.answer(cmd)
            elif op == "snapshot":
                self.snapshot(cmd)
            elif op in ("export", "load"):
                self.transfer(cmd)
            # anything else (a late input_reply) has nobody waiting for it: dropped

    def _next_command(self) -> dict | None:
        """The next command from the agent (None at end of input)."""
        while not self._pending:
            try:
                data = os.read(self.cmd_fd, CHUNK)
            except InterruptedError:
                continue
            if not data:
                return None
            self._pending.extend(line for line in self._lines.feed(data) if line.strip())
        return decode(self._pending.pop(0))

    def run(self, cmd: dict) -> None:
        """Execute one run command: the cell, then its figures, then the end report."""
        self.run_id = cmd.get("id", "")
        self.stdin = cmd.get("stdin") is True
        self.stderr_traceback = cmd.get("stderr_traceback") is not False
        if self.shell is not None and isinstance(cmd.get("execution_count"), int):
            self.number_cell(cmd["execution_count"])
        try:
            code = self.execute(cmd.get("code", ""))
            if self.shell is None or os.environ.get("MPLBACKEND") == MATPLOTLIB_BACKEND:
                self.flush_figures()
        finally:
            self.stdin = False
        self.finish(self.run_id, code)

    def number_cell(self, count: int) -> None:
        """The next cell is ``In[count]`` (the client's count, which also counts cells that
        never reached this session); ``In`` gets blank entries for the skipped numbers."""
        history = self.shell.history_manager
        for hist in (history.input_hist_parsed, history.input_hist_raw):
            while len(hist) < count:
                hist.append("")
        self.shell.execution_count = count

    # -- rich output --------------------------------------------------------------------

    def _flush_streams(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    def display(self, *objs, include=None, exclude=None, metadata=None, transient=None,
                display_id=None, raw=False, clear=False, update=False, **kwargs) -> None:
        """Show objects in the client, like ``IPython.display.display`` (``raw=True``: the
        objects are MIME bundles already; ``display_id`` + ``update=True`` replace an
        earlier output)."""
        if clear:
            self.clear_output(wait=True)
        for obj in objs:
            if raw:
                data, md = clean_bundle(obj, dict(obj), {}, include, exclude)
            else:
                data, md = mime_bundle(obj, include, exclude)
            if metadata:
                md.update(metadata)
            event = {"ev": "display", "data": data, "metadata": md}
            extra = dict(transient or {})
            if display_id is not None:
                extra["display_id"] = str(display_id)
            if extra:
                event["transient"] = extra
            if update:
                event["update"] = True
            self._flush_streams()
            self.emit(event)

    def clear_output(self, wait: bool = False) -> None:
        """Clear the cell's output in the client (``wait``: when new output arrives)."""
        self._flush_streams()
        self.emit({"ev": "clear_output", "wait": bool(wait)})

    def flush_figures(self) -> None:
        """Send every open matplotlib figure as a PNG display, then close them all."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        import base64
        import io

        try:
            for num in plt.get_fignums():
                figure = plt.figure(num)
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png", bbox_inches="tight")
                png = base64.b64encode(buffer.getvalue()).decode("ascii")
                self.emit({"ev": "display", "data": {"image/png": png, "text/plain": repr(figure)},
                           "metadata": {}})
        except Exception as exc:
            self._write_stderr(f"cannot render matplotlib figures: {type(exc).__name__}: {exc}\n")
        finally:
            with contextlib.suppress(Exception):
                plt.close("all")

    # -- input ------------------------------------------------------------------------

    def input(self, prompt="") -> str:
        """``input()``: asks the client when the run allows stdin, else reads /dev/null."""
        if not self.stdin:
            return self._builtin_input(prompt)
        return self._ask(prompt, password=False)

    def getpass(self, prompt="Password: ", stream=None) -> str:
        """``getpass.getpass()``: like :meth:`input`, but the client hides what is typed."""
        if not self.stdin:
            return self._builtin_getpass(prompt, stream)
        return self._ask(prompt, password=True)

    def _ask(self, prompt, password: bool) -> str:
        self._flush_streams()
        self.emit({"ev": "input_request", "id": self.run_id, "prompt": str(prompt),
                   "password": password})
        while True:
            cmd = self._next_command()
            if cmd is None:
                raise EOFError("EOF when reading a line")
            if cmd.get("op") == "input_reply":
                break
        value = cmd.get("value")
        if not isinstance(value, str):
            raise EOFError("EOF when reading a line")
        return value

    # -- completion and inspection ---------------------------------------------------

    def answer(self, cmd: dict) -> None:
        """Answer a ``complete`` or ``inspect`` query with a ``reply`` event."""
        code = cmd.get("code") if isinstance(cmd.get("code"), str) else ""
        pos = cmd.get("cursor_pos")
        pos = len(code) if not isinstance(pos, int) or not 0 <= pos <= len(code) else pos
        from .introspect import complete_code, inspect_code

        try:
            if self.shell is not None:
                from . import ishell

                if cmd.get("op") == "complete":
                    found = ishell.complete(self.shell, code, pos)
                else:
                    found = ishell.inspect(self.shell, code, pos, cmd.get("detail_level") or 0)
            elif cmd.get("op") == "complete":
                found = complete_code(self.namespace, code, pos)
            else:
                found = inspect_code(self.namespace, code, pos, cmd.get("detail_level") or 0)
        except Exception:
            found = {}
        found.update(ev="reply", id=cmd.get("id"))
        self.emit(found)

    def snapshot(self, cmd: dict) -> None:
        """Fork a holder of this session's state (:mod:`.freeze`) and reply with its pid;
        a worker restored from the holder returns here and goes on serving."""
        from .freeze import reap, snapshot

        found = snapshot(self, cmd)
        if found is not None:
            found.update(ev="reply", id=cmd.get("id"))
            self.emit(found)
        reap()

    def transfer(self, cmd: dict) -> None:
        """``export`` the namespace to a file, or ``load`` one (a fork, :mod:`.freeze`)."""
        from . import freeze

        try:
            found = getattr(freeze, cmd["op"])(self, cmd)
        except Exception as exc:
            found = {"error": f"{type(exc).__name__}: {exc}"}
        found.update(ev="reply", id=cmd.get("id"))
        self.emit(found)

    def finish(self, run_id: str, exit_code: int) -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        marker = MARKER_PREFIX + run_id.encode() + b":"
        write_all(self.out_fd, marker)
        write_all(self.err_fd, marker)
        self.emit({"ev": "end", "id": run_id, "exit_code": exit_code})

    def execute(self, code: str) -> int:
        """Run one cell (through IPython when the session has it); returns its exit code."""
        if self.shell is not None:
            return self.execute_ipython(code)
        return self.execute_plain(code)

    def execute_ipython(self, code: str) -> int:
        """One cell through the shell: magics, ``!cmd``, display hooks, IPython tracebacks.
        SIGINT raises KeyboardInterrupt from C while it runs, so no frame of this file shows."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            result = self.shell.run_cell(code, store_history=True)
        except KeyboardInterrupt:
            self.shell.showtraceback()
            return INTERRUPT_EXIT_CODE
        finally:
            signal.signal(signal.SIGINT, self._on_sigint)
        error = result.error_before_exec or result.error_in_exec
        if error is None:
            return 0
        if isinstance(error, KeyboardInterrupt):
            return INTERRUPT_EXIT_CODE
        if isinstance(error, SystemExit):
            return self._exit_status(error)
        return 1

    def execute_plain(self, code: str) -> int:
        """Run one cell in plain Python; returns its exit code."""
        import ast
        import linecache

        self.cell += 1
        filename = f"<cell-{self.cell}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        flags = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
        try:
            tree = ast.parse(code, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            self._eval(compile(tree, filename, "exec", flags))
            if last is not None:
                value = self._eval(compile(last, filename, "eval", flags))
                if value is not None:
                    self.namespace["_"] = value
                    data, metadata = mime_bundle(value)
                    self.emit({"ev": "result", "data": data, "metadata": metadata})
            return 0
        except SystemExit as exc:
            return self._exit_status(exc)
        except SyntaxError as exc:
            hint = ipython_hint(exc)
            if hint is None:
                self.report(exc)
            else:
                self.report_hint(hint)
            return 1
        except BaseException as exc:
            self.report(exc)
            return INTERRUPT_EXIT_CODE if isinstance(exc, KeyboardInterrupt) else 1

    def _eval(self, code):
        self.executing = True
        try:
            value = eval(code, self.namespace)
            if code.co_flags & 0x80:  # CO_COROUTINE: the cell used top-level await
                value = self._event_loop().run_until_complete(value)
            return value
        finally:
            self.executing = False

    def _event_loop(self):
        import asyncio

        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _exit_status(self, exc: SystemExit) -> int:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        self._write_stderr(f"{exc.code}\n")
        return 1

    def report(self, exc: BaseException) -> None:
        """Traceback (without this file's frames) as an ``error`` event, and on stderr
        unless the run asked for ``stderr_traceback: false``."""
        import traceback

        tb = exc.__traceback__
        while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell-"):
            tb = tb.tb_next
        if tb is None and not isinstance(exc, SyntaxError):
            tb = exc.__traceback__
        lines = list(traceback.TracebackException(type(exc), exc, tb).format())
        text = "".join(lines)
        if self.stderr_traceback:
            self._write_stderr(text)
        else:
            self._flush_streams()
        self.emit(
            {
                "ev": "error",
                "ename": type(exc).__name__,
                "evalue": str(exc),
                "traceback": text.rstrip("\n").split("\n"),
            }
        )

    def report_hint(self, text: str) -> None:
        """A one-line ``UsageError`` (no traceback): what to do instead."""
        if self.stderr_traceback:
            self._write_stderr(f"UsageError: {text}\n")
        self.emit({"ev": "error", "ename": "UsageError", "evalue": text,
                   "traceback": [f"UsageError: {text}"]})

    def _write_stderr(self, text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except Exception:
            write_all(2, text.encode("utf-8", "replace"))


#: A line only IPython understands: ``%magic``, ``%%magic``, ``!cmd``, ``x = !cmd``, ``x = %magic``.
_IPYTHON_LINE = re.compile(r"^\s*(?:[\w.,\s]+=\s*)?(%%?[A-Za-z_]\w*|!)")
IPYTHON_HINT = ("{what} needs IPython in the sandbox: use the default data-science template, or "
                "build one with it (nexus template create NAME --pip ipython) and create the "
                "sandbox with that template")


def ipython_hint(exc: SyntaxError):
    """The one-line hint when the line a SyntaxError points at is IPython syntax, else None."""
    line = exc.text or ""
    found = _IPYTHON_LINE.match(line)
    if found is None:
        return None
    what = "!cmd" if found.group(1) == "!" else found.group(1)
    return IPYTHON_HINT.format(what=what)


def main() -> int:
    """Serve cells on fds 3 (commands) and 4 (events) until the agent closes fd 3."""
    PythonWorker().serve()
    return 0
