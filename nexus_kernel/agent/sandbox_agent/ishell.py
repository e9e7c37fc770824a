"""IPython in the python session worker, when the sandbox's interpreter has it.

One :class:`InteractiveShell` per session, built like ipykernel's ZMQInteractiveShell but with
the worker's event channel: the display publisher and the displayhook emit the worker's
``display`` / ``clear_output`` / ``result`` events, tracebacks become ``error`` events (ANSI
coloured, the cell named ``In[N]``), the pager's text is a display flagged ``page``, ``!cmd`` runs on the
session's real stdout/stderr. IPython is imported only here, and only when present.
"""

from __future__ import annotations

import os
import re
import sys

#: The inline matplotlib backend ipykernel selects by default.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ipython_available() -> bool:
    """Whether this interpreter can import IPython (looked up without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("IPython") is not None
    except (ImportError, ValueError):
        return False


def _ipython_dir() -> None:
    """IPython keeps a profile dir; where HOME is not writable it goes to a private tmp dir."""
    if os.environ.get("IPYTHONDIR"):
        return
    home = os.path.expanduser("~")
    if not os.access(home, os.W_OK):
        import tempfile

        os.environ["IPYTHONDIR"] = tempfile.mkdtemp(prefix="ipython-")


def make_shell(worker):
    """The session's shell, emitting through ``worker`` (a :class:`PythonWorker`)."""
    _ipython_dir()
    import importlib.util

    if importlib.util.find_spec("matplotlib_inline") is not None:
        os.environ["MPLBACKEND"] = INLINE_BACKEND  # as ipykernel: figures shown after each cell

    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type
    from traitlets.config import Config

    from .rich import clean_bundle

    class EventPublisher(DisplayPublisher):
        """``display()`` / ``update_display()`` / ``clear_output()`` -> worker events."""

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False,
                    **kwargs) -> None:
            data, md = clean_bundle(None, dict(data or {}), dict(metadata or {}), None, None)
            event = {"ev": "display", "data": data, "metadata": md}
            if transient:
                event["transient"] = {k: (str(v) if k == "display_id" else v)
                                      for k, v in transient.items()}
            if update:
                event["update"] = True
            worker.emit(event)

        def clear_output(self, wait=False) -> None:
            worker.clear_output(wait)

    class EventDisplayHook(DisplayHook):
        """The last expression's value -> one ``result`` event (no ``Out[N]:`` prompt)."""

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict, md_dict=None) -> None:
            data, md = clean_bundle(None, dict(format_dict), dict(md_dict or {}), None, None)
            worker.emit({"ev": "result", "data": data, "metadata": md})

    class NexusShell(InteractiveShell):
        """An InteractiveShell whose outputs are the worker's events."""

        displayhook_class = Type(EventDisplayHook)
        display_pub_class = Type(EventPublisher)

        def _showtraceback(self, etype, evalue, stb) -> None:
            text = self.InteractiveTB.stb2text(stb)
            if worker.stderr_traceback:  # API / CLI runs read stderr: plain text there
                worker._write_stderr(_ANSI.sub("", text) + "\n")
            else:
                worker._flush_streams()
            worker.emit({"ev": "error", "ename": getattr(etype, "__name__", str(etype)),
                         "evalue": str(evalue), "traceback": list(stb)})

        def show_usage_error(self, exc) -> None:  # an error event, not a bare exit code 1
            worker._flush_streams()
            worker.report_hint(str(exc))

        def enable_matplotlib(self, gui=None):
            if gui in ("notebook", "nbagg", "widget", "ipympl"):
                from IPython.core.error import UsageError

                raise UsageError(f"%matplotlib {gui} needs Jupyter comms, which do not reach a "
                                 f"sandbox; use %matplotlib inline")
            return super().enable_matplotlib(gui)

        def enable_gui(self, gui=None) -> None:
            if gui not in (None, "inline"):
                from IPython.core.error import UsageError

                raise UsageError(f"a sandbox has no display for the {gui!r} GUI event loop; "
                                 f"use %matplotlib inline")

        def init_io(self) -> None:  # no terminal handling: fds 1/2 are the session's pipes
            pass

        system = InteractiveShell.system_raw  # real fds, no pty (sandboxes may lack /dev/pts)

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "linux" if _major() >= 9 else "Linux"
    config.InteractiveShell.xmode = "Context"
    shell = NexusShell.instance(config=config, user_module=sys.modules["__main__"])
    shell.set_hook("show_in_pager", _pager(worker))
    import builtins

    from IPython.display import display

    builtins.display = display
    return shell


def _major() -> int:
    import IPython

    try:
        return int(IPython.__version__.split(".")[0])
    except ValueError:
        return 9


def _pager(worker):
    """``obj?`` / ``%pinfo`` / ``%pdoc`` text -> a display flagged ``page``: the kernel makes it
    a pager payload as ipykernel does, other clients show it in the cell."""

    def show_in_pager(self, data, start=0, screen_lines=0):
        bundle = data if isinstance(data, dict) else {"text/plain": str(data)}
        worker.emit({"ev": "display", "data": {k: v for k, v in bundle.items()
                                               if isinstance(v, str)}, "metadata": {},
                     "page": True})

    return show_in_pager


def complete(shell, code: str, cursor_pos: int) -> dict:
    """Completions from the shell's completer, as ipykernel's (experimental, default) one."""
    from IPython.core.completer import provisionalcompleter, rectify_completions

    with provisionalcompleter():
        found = list(rectify_completions(code, shell.Completer.completions(code, cursor_pos)))
    if not found:
        return {"matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos}
    matches = []
    for completion in found:
        if completion.text not in matches:
            matches.append(completion.text)
    return {"matches": matches, "cursor_start": found[0].start, "cursor_end": found[0].end}


def inspect(shell, code: str, cursor_pos: int, detail_level: int = 0) -> dict:
    """What the name at the cursor is, as ipykernel's ``do_inspect`` gives it."""
    from IPython.utils.tokenutil import token_at_cursor

    name = token_at_cursor(code, cursor_pos)
    try:
        bundle = shell.object_inspect_mime(name, detail_level=detail_level)
    except KeyError:
        return {"found": False, "data": {}, "metadata": {}}
    if not shell.enable_html_pager:
        bundle.pop("text/html", None)
    return {"found": True, "data": bundle, "metadata": {}}
