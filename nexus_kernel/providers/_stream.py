"""Pieces shared by the cloud providers (e2b, modal), whose only route to the agent is the
stdio of a process started through the provider's SDK.

- :class:`PumpChannel`: a :class:`~nexus_kernel.providers.base.Channel` over such a process. A
  daemon thread drains the SDK's output iterator into a queue of byte chunks that ``recv``
  hands out; ``sendall`` calls the SDK's stdin writer. Byte framing is kept: the agent's JSON
  lines reach the client byte-exact, whatever chunking the SDK applies.
- :class:`DeadlineWatcher`: sees the bytes the client sends and reports every ``deadline``
  request (and every run carrying one), so a provider can move its own timeout with the
  agent's deadline (the manager sets it with every run).
- :func:`wait_for_ready`: wait (bounded) for the agent's ``READY`` line on a startup stream.
- :func:`serve_script` / :func:`relay_argv`: the shell line that hands the agent (the
  uploaded zipapp, :func:`~nexus_kernel.agent.deploy.zipapp_bytes`) its token on stdin and
  becomes the agent, and the relay's command.
"""

from __future__ import annotations

import json
import queue
import re
import shlex
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress

from ..agent.deploy import zipapp_argv
from ..errors import AgentError


def serve_script(
    *,
    python: str,
    agent_path: str,
    run_dir: str,
    home: str,
    deadline: float | None,
) -> str:
    """A POSIX shell line: read the token from stdin into ``run_dir/token`` (mode 0600),
    then become the agent. The token never appears in a command line or environment."""
    socket_path = f"{run_dir}/agent.sock"
    token_path = f"{run_dir}/token"
    serve = zipapp_argv(
        python, agent_path, "serve",
        "--socket", socket_path,
        "--token-file", token_path,
        "--home", home,
    )  # fmt: skip
    if deadline is not None:
        serve += ["--deadline", f"{deadline:.3f}"]
    return (
        f"umask 077; mkdir -p {shlex.quote(run_dir)} {shlex.quote(home)} || exit 69; "
        "IFS= read -r t || exit 70; "
        f"printf '%s' \"$t\" > {shlex.quote(token_path)} || exit 71; t=; "
        f"exec {shlex.join(serve)}"
    )


def relay_argv(python: str, agent_path: str, run_dir: str) -> list[str]:
    """The command whose stdio is a stream to the agent."""
    return zipapp_argv(python, agent_path, "relay", "--socket", f"{run_dir}/agent.sock")


class PumpChannel:
    """A byte stream to the agent over a process's stdio reached through an SDK.

    ``chunks`` yields the process's stdout as bytes (consumed by a daemon thread);
    ``write(data)`` delivers bytes to its stdin; ``on_close()`` ends the process (best
    effort); ``on_send(data)`` observes outgoing bytes. Errors of the SDK surface as
    ``ConnectionError`` from ``sendall`` and as end of stream from ``recv`` (the cause is
    kept in ``error``), as a broken socket would.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        write: Callable[[bytes], None],
        *,
        on_close: Callable[[], None] | None = None,
        on_send: Callable[[bytes], None] | None = None,
        name: str = "nexus-pump",
    ):
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._pending = b""
        self._eof = False
        self._timeout: float | None = None
        self._write = write
        self._write_lock = threading.Lock()
        self._on_close = on_close
        self._on_send = on_send
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, args=(chunks,), name=name, daemon=True)
        self._thread.start()

    def _pump(self, chunks: Iterable[bytes]) -> None:
        try:
            for chunk in chunks:
                if chunk:
                    self._queue.put(bytes(chunk))
        except BaseException as exc:  # the SDK stream broke: readers see end of stream
            self.error = exc
        finally:
            self._queue.put(None)

    def sendall(self, data: bytes) -> None:
        """Deliver ``data`` to the process's stdin."""
        if self._closed:
            raise ConnectionError("the stream to the sandbox agent is closed")
        if self._on_send is not None:
            self._on_send(data)
        with self._write_lock:
            try:
                self._write(bytes(data))
            except Exception as exc:
                raise ConnectionError(f"writing to the sandbox agent failed: {exc}") from exc

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of the process's stdout; b"" at end of stream. Raises
        ``TimeoutError`` when a timeout is set (``settimeout``) and nothing arrives."""
        if not self._pending:
            if self._eof:
                return b""
            try:
                chunk = self._queue.get(timeout=self._timeout)
            except queue.Empty:
                raise TimeoutError("timed out waiting for the sandbox agent") from None
            if chunk is None:
                self._eof = True
                return b""
            self._pending = chunk
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def settimeout(self, timeout: float | None) -> None:
        """Seconds ``recv`` waits before ``TimeoutError`` (None = block)."""
        self._timeout = timeout

    def close(self) -> None:
        """End the process (best effort) and wake a blocked ``recv``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            with suppress(Exception):
                self._on_close()
        self._queue.put(None)


class DeadlineWatcher:
    """Feeds on the bytes sent to the agent and calls ``callback(at)`` for every
    ``{"op": "deadline", "at": ...}`` request (``at`` = epoch seconds or None) and every
    ``run`` request carrying a ``deadline`` (the manager folds it into each run).

    Only lines up to ``LIMIT`` bytes are parsed (a deadline request is ~120 bytes), so large
    run requests cost a scan for newlines and nothing more: of those only the first ``LIMIT``
    bytes are kept, where the client puts a run's ``deadline`` (right after ``op``).
    """

    LIMIT = 2048
    #: A run's deadline in the prefix of a long request line. Only structural: inside JSON
    #: strings every quote is escaped, so this cannot match user code.
    RUN_DEADLINE = re.compile(rb'"op":"run","deadline":(-?[0-9][0-9.eE+-]*)[,}]')

    def __init__(self, callback: Callable[[float | None], None]):
        self._callback = callback
        self._line = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> None:
        """Observe outgoing bytes (any chunking)."""
        start = 0
        while True:
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline
            if not self._overflow:
                if len(self._line) + end - start > self.LIMIT:
                    self._overflow = True
                    self._line += data[start : start + self.LIMIT - len(self._line)]
                else:
                    self._line += data[start:end]
            if newline < 0:
                return
            if self._overflow:
                self._check_prefix(bytes(self._line))
            else:
                self._check(bytes(self._line))
            self._line.clear()
            self._overflow = False
            start = newline + 1

    def _check(self, line: bytes) -> None:
        if b"deadline" not in line:
            return
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("op") == "deadline":
            at = message.get("at")
            self._callback(float(at) if isinstance(at, (int, float)) else None)
        elif message.get("op") == "run" and isinstance(message.get("deadline"), (int, float)):
            self._callback(float(message["deadline"]))

    def _check_prefix(self, prefix: bytes) -> None:
        found = self.RUN_DEADLINE.search(prefix)
        if found:
            with suppress(ValueError):
                self._callback(float(found.group(1)))


def wait_for_ready(
    output: Iterable[str | bytes],
    timeout: float,
    *,
    stop: Callable[[], None],
    detail: Callable[[], str] = lambda: "",
) -> None:
    """Read ``output`` (the agent's stdout during startup) until a ``READY`` line.

    Raises AgentError when the output ends first (with ``detail()``, e.g. the agent's stderr)
    or when ``timeout`` passes; ``stop()`` is called then to unblock the reader thread.
    """
    done = threading.Event()
    state: dict[str, object] = {"ready": False, "error": None}

    def watch() -> None:
        seen = ""
        try:
            for chunk in output:
                text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk
                seen = (seen + text)[-4096:]
                if "READY\n" in seen:
                    state["ready"] = True
                    return
        except Exception as exc:
            state["error"] = exc
        finally:
            done.set()

    threading.Thread(target=watch, name="nexus-ready", daemon=True).start()
    if not done.wait(timeout):
        with suppress(Exception):
            stop()
        raise AgentError(f"the sandbox agent did not start within {timeout:.0f}s")
    if state["ready"]:
        return
    why = ""
    with suppress(Exception):
        lines = detail().strip().splitlines()
        why = lines[-1] if lines else ""
    if not why and state["error"] is not None:
        why = str(state["error"])
    raise AgentError(f"the sandbox agent exited during startup: {why or 'no output'}")
