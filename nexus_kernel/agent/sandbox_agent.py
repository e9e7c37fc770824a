#!/usr/bin/env python3
"""The nexus sandbox agent: the long-lived process inside every sandbox.

One stdlib-only file (python3 >= 3.8). It is copied into sandboxes and run as::

    python3 sandbox_agent.py serve --socket PATH --token-file PATH [--home DIR] [--deadline EPOCH]
    python3 sandbox_agent.py relay --socket PATH

The protocol is described in ``docs/agent-protocol.md``. The host-side client imports the
framing helpers (:func:`encode`, :func:`decode`, :class:`LineBuffer`) from this module, so the
wire format lives in one place. Importing this module does no work beyond defining things.

How a run is tracked
--------------------
* Every process the agent starts gets ``NEXUS_RUN_TAG=<random>`` in its environment. The
  agent is a child subreaper, so processes that double-fork or ``setsid`` reparent to it and
  stay findable: "the processes of a run" are the descendants of its root process plus every
  descendant of the agent whose ``/proc/PID/environ`` carries the run's tag. A process that
  execs with a cleared environment *and* detaches escapes the tag (not the deadline).
* A stateless run (``session: null``) is one fresh process; its end is its exit plus EOF on
  its output pipes. Tagged leftovers are killed as soon as the main process exits.
* A session is one persistent interpreter (a worker) per (session, language) with three
  pipes: stdout, stderr and a control pipe. After each run the worker writes a per-run end
  marker (``\\0nexus-end:<id>:``) to stdout and stderr and an ``end`` report (exit code) on the
  control pipe; the agent sends ``done`` once it has seen all three, so every byte the run
  printed is forwarded first. Markers are never forwarded.

Exit codes: timeout -> 124 (``timed_out: true``); interrupt -> 130 (``interrupted: true``);
a process killed by signal N -> 128 + N.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import select
import signal
import stat
import sys
import threading
import time

AGENT_VERSION = "1.0"
PROTOCOL_VERSION = 1

#: exit_code reported when a run passes its timeout (like coreutils ``timeout``).
TIMEOUT_EXIT_CODE = 124
#: exit_code reported when user code is stopped by an interrupt (128 + SIGINT).
INTERRUPT_EXIT_CODE = 130
#: Seconds code gets to stop after an interrupt (Ctrl-C, a session's timeout) before its
#: process tree is killed; a killed session restarts empty (``session_restarted``).
INTERRUPT_GRACE_SECONDS = 2.0
#: Largest file read_file returns (it travels base64-encoded in one message).
MAX_FILE_BYTES = 64 * 1024 * 1024
#: output_limit used when a request gives none (bytes of stdout + stderr per run).
DEFAULT_OUTPUT_LIMIT = 10 * 1024 * 1024
#: code larger than this is passed to stateless interpreters through a file, not argv.
MAX_ARGV_CODE = 100 * 1024
#: Session output written within this many seconds of the previous write joins its event.
COALESCE_SECONDS = 0.001
#: How long ``complete``/``inspect`` wait for a busy session before answering "busy".
QUERY_BUSY_WAIT = 0.2
#: How long they wait for the session's answer (the first query may start the session).
QUERY_TIMEOUT = 10.0

#: language -> interpreter program looked up on PATH.
INTERPRETERS = {"python": "python3", "javascript": "node", "bash": "bash"}
TAG_VAR = "NEXUS_RUN_TAG"
MARKER_PREFIX = b"\x00nexus-end:"
#: Session workers send their events (result, display, error, ...) in-band on stdout as
#: ``\0nexus-ev:<json>\n``, so they keep their order with what the cell printed.
EVENT_PREFIX = b"\x00nexus-ev:"
CHUNK = 65536

_THIS_FILE = os.path.abspath(__file__)
#: Starts a python session worker by importing this file as a module, so its bytecode
#: (precompiled next to it) is used instead of compiling ~60 KB of source per session.
#: ``sys.path[0]`` (cwd for ``-c``) is this dir while importing, as for a script; the
#: worker then sets it to "" (the session's cwd). No ``-I``: PYTHONPATH carries templates.
_WORKER_BOOT = "import sys; sys.path[0] = {!r}; import {}; sys.exit({}.main(sys.argv[1:]))".format(
    os.path.dirname(_THIS_FILE), *[os.path.splitext(os.path.basename(_THIS_FILE))[0]] * 2
)


# --------------------------------------------------------------------------------------
# Framing: one JSON object per line (shared with the host client)
# --------------------------------------------------------------------------------------


def encode(msg: dict) -> bytes:
    """One message as a UTF-8 JSON line (lone surrogates fall back to ``\\u`` escapes)."""
    try:
        return (json.dumps(msg, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(msg, separators=(",", ":")) + "\n").encode("ascii")


def decode(line: bytes | str) -> dict:
    """Parse one line into a message; ``ValueError`` unless it is a JSON object."""
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    return msg


class LineBuffer:
    """Splits a byte stream into lines (without the ``\\n``); keeps the unfinished tail.
    A line longer than ``max_line`` bytes (None = unbounded) raises ValueError: the peer is
    broken or hostile, and the stream cannot be trusted past it."""

    def __init__(self, max_line: int | None = None) -> None:
        self._parts: list[bytes] = []
        self._pending = 0
        self._max = max_line

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete lines it finished (may be empty)."""
        if b"\n" not in data:
            if data:
                self._parts.append(data)
                self._pending += len(data)
                self._check(self._pending)
            return []
        lines = data.split(b"\n")
        if self._parts:
            self._parts.append(lines[0])
            lines[0] = b"".join(self._parts)
            self._parts = []
        tail = lines.pop()
        self._pending = len(tail)
        if tail:
            self._parts.append(tail)
        if self._max is not None:
            for line in lines:
                self._check(len(line))
            self._check(self._pending)
        return lines

    def _check(self, size: int) -> None:
        if self._max is not None and size > self._max:
            raise ValueError(f"a line longer than {self._max} bytes")


def _utf8_decoder():
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


class Invalid(Exception):
    """A bad request: answered with ``fail`` and ``kind: "invalid"``."""


class Failure(Exception):
    """The agent could not do a valid request: ``fail`` with ``kind: "error"``."""


def _exit_code(status: int) -> int:
    """Wait status -> exit code; death by signal N -> 128 + N (shell convention)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 1


def _random_id() -> str:
    return os.urandom(8).hex()


def _which(program: str) -> str | None:
    for folder in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep):
        path = os.path.join(folder or ".", program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class MarkerScanner:
    """Finds a run's end marker in one output stream.

    ``feed`` returns the bytes before the marker that may be forwarded now, and whether the
    marker was seen. Only a trailing partial marker (which starts with the rare ``\\0``) is held
    back, so ordinary output is never delayed. Bytes after the marker are dropped."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.found = False
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if self.found:
            return b""
        if self._held:
            data = self._held + data
            self._held = b""
        at = data.find(self.marker)
        if at >= 0:
            self.found = True
            return data[:at]
        start = data.rfind(b"\x00", max(0, len(data) - len(self.marker) + 1))
        if start >= 0 and self.marker.startswith(data[start:]):
            self._held = data[start:]
            return data[:start]
        return data


class EventScanner:
    """Splits a session's stdout into printed bytes and in-band events.

    ``feed`` returns ``(is_event, bytes)`` pieces in stream order: an event is the JSON
    between ``EVENT_PREFIX`` and the next newline (JSON never holds a raw newline or NUL).
    A trailing partial prefix is held back until more data or :meth:`flush` decides."""

    def __init__(self) -> None:
        self._held = b""
        self._event: list | None = None  # parts of the event being read

    def feed(self, data: bytes) -> list:
        pieces = []
        while data:
            if self._event is not None:
                end = data.find(b"\n")
                if end < 0:
                    self._event.append(data)
                    break
                self._event.append(data[:end])
                pieces.append((True, b"".join(self._event)))
                self._event = None
                data = data[end + 1 :]
                continue
            if self._held:
                data, self._held = self._held + data, b""
            at = data.find(EVENT_PREFIX)
            if at < 0:
                start = data.rfind(b"\x00", max(0, len(data) - len(EVENT_PREFIX) + 1))
                if start >= 0 and EVENT_PREFIX.startswith(data[start:]):
                    data, self._held = data[:start], data[start:]
                if data:
                    pieces.append((False, data))
                break
            if at:
                pieces.append((False, data[:at]))
            self._event = []
            data = data[at + len(EVENT_PREFIX) :]
        return pieces

    def flush(self) -> bytes:
        """At the end of a run: held bytes were printed text; a cut event is dropped."""
        held, self._held, self._event = self._held, b"", None
        return held


class RunOutput:
    """Forwards one run's output: incremental UTF-8 decoding per stream and the byte cap.

    Past ``limit`` raw bytes (stdout + stderr) nothing more is forwarded and ``truncated`` is
    set; the caller keeps draining the pipes so the process never blocks."""

    def __init__(self, emit, limit: int) -> None:
        self._emit = emit
        self._left = limit
        self._decoders = {"stdout": _utf8_decoder(), "stderr": _utf8_decoder()}
        self.truncated = False

    def feed(self, stream: str, data: bytes) -> None:
        if not data or self.truncated:
            return
        if len(data) > self._left:
            data = data[: self._left]
            self.truncated = True
        self._left -= len(data)
        text = self._decoders[stream].decode(data)
        if text:
            self._emit(stream, text)

    def charge(self, size: int) -> bool:
        """Count ``size`` bytes of an event (display, result, error, clear_output,
        input_request) against the cap; False (and ``truncated``) once the cap is passed:
        the event is then dropped or cut."""
        if self.truncated or size > self._left:
            self.truncated = True
            return False
        self._left -= size
        return True

    def finish(self) -> None:
        """Flush the decoders (a cut multi-byte character becomes U+FFFD)."""
        if self.truncated:
            return
        for stream, decoder in self._decoders.items():
            text = decoder.decode(b"", True)
            if text:
                self._emit(stream, text)


# --------------------------------------------------------------------------------------
# Processes: /proc walking, killing, spawning and reaping
# --------------------------------------------------------------------------------------


def _read_proc(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        chunks = []
        while True:
            data = os.read(fd, CHUNK)
            if not data:
                return b"".join(chunks)
            chunks.append(data)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, or None when it is gone."""
    data = _read_proc(f"/proc/{pid}/stat")
    if not data:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[1])
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _has_children_files() -> bool:
    """True when /proc/PID/task/TID/children exists and is readable here."""
    try:
        fd = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)
    except OSError:
        return False
    try:
        os.read(fd, CHUNK)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _child_pids(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tasks:
        kids.extend(int(x) for x in _read_proc(f"/proc/{pid}/task/{tid}/children").split())
    return kids


def process_tree(root: int, use_children_files: bool = True) -> dict[int, list[int]]:
    """pid -> child pids for ``root`` and all its descendants."""
    tree: dict[int, list[int]] = {}
    if use_children_files:
        stack = [root]
        while stack:
            pid = stack.pop()
            if pid in tree:
                continue
            tree[pid] = kids = _child_pids(pid)
            stack.extend(kids)
        return tree
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                parents.setdefault(stat[1], []).append(int(name))
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid not in tree:
            tree[pid] = kids = parents.get(pid, [])
            stack.extend(kids)
    return tree


def _has_tag(pid: int, tag: str) -> bool:
    needle = f"\0{TAG_VAR}={tag}\0".encode()
    return needle in b"\0" + _read_proc(f"/proc/{pid}/environ") + b"\0"


# -- memory limit (security suite, issue 6) -------------------------------------------

#: The sandbox's OOM-kill counter: cgroup v2 and v1 files, where the providers mount them.
OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kills():
    """Processes the OOM killer has killed at the sandbox's memory limit so far (None when
    the sandbox's memory cgroup is not visible)."""
    for path in OOM_COUNTERS:
        for line in _read_proc(path).decode("ascii", "replace").splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def _oom_first(pid: int) -> None:
    """Make a child (and all it forks) the OOM killer's first choice: at the memory limit
    user code is killed, never the agent. Raising oom_score_adj needs no privilege."""
    with contextlib.suppress(OSError):
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"1000")
        finally:
            os.close(fd)


class ProcessTable:
    """Finds and kills processes below the agent (by ancestry and by run tag)."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self._children_files = _has_children_files()

    def select(self, roots=(), tag: str | None = None, everything: bool = False) -> set[int]:
        """Live descendants of the agent that are in ``roots``' subtrees or carry ``tag``."""
        tree = process_tree(self.me, self._children_files)
        chosen: set[int] = set()
        stack = [pid for pid in tree if pid != self.me] if everything else list(roots)
        if tag and not everything:
            stack.extend(pid for pid in tree if pid != self.me and _has_tag(pid, tag))
        while stack:
            pid = stack.pop()
            if pid in chosen or pid == self.me or pid not in tree:
                continue
            chosen.add(pid)
            stack.extend(tree[pid])
        return {pid for pid in chosen if _alive(pid)}

    def kill(self, roots=(), tag: str | None = None, everything: bool = False, limit=5.0) -> None:
        """SIGKILL the selection again and again until nothing of it is left alive."""
        end = time.monotonic() + limit
        pause = 0.001
        while True:
            pids = self.select(roots, tag, everything)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > end:
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


class Reaper:
    """Spawns every child of the agent and reaps every child (including adopted orphans).

    One thread blocks in ``waitpid(-1)``; the exit code of a process we spawned goes to the
    ``on_exit`` callback given at spawn time (called in the reaper thread: keep it short)."""

    _RESET_SIGNALS = (
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGPIPE,
        signal.SIGQUIT,
        signal.SIGXFSZ,
        signal.SIGCHLD,
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict = {}
        self._have_children = threading.Event()
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        threading.Thread(target=self._loop, name="reaper", daemon=True).start()

    def spawn(self, argv: list[str], env: dict, stdout: int, stderr: int, extra=(), on_exit=None,
              stdin: int | None = None):
        """Start ``argv`` in its own process group with stdin (default /dev/null), the given
        stdout/stderr and ``extra`` fds as 3, 4, ...; returns the pid."""
        sources = [self._devnull if stdin is None else stdin, stdout, stderr] + list(extra)
        high = max(sources) + 1
        actions = [(os.POSIX_SPAWN_DUP2, fd, high + i) for i, fd in enumerate(sources)]
        actions += [(os.POSIX_SPAWN_DUP2, high + i, i) for i in range(len(sources))]
        actions += [(os.POSIX_SPAWN_CLOSE, high + i) for i in range(len(sources))]
        with self._lock:
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=actions,
                setpgroup=0,
                setsigmask=(),
                setsigdef=self._RESET_SIGNALS,
            )
            self._waiters[pid] = on_exit
            _oom_first(pid)
        self._have_children.set()
        return pid

    def _loop(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                self._have_children.wait()
                self._have_children.clear()
                continue
            except InterruptedError:
                continue
            with self._lock:
                on_exit = self._waiters.pop(pid, None)
            if on_exit is not None:
                with contextlib.suppress(Exception):
                    on_exit(_exit_code(status))


# --------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------


class Reply:
    """Sends the events of one request on its connection."""

    def __init__(self, conn, rid) -> None:
        self.conn = conn
        self.rid = rid

    def event(self, ev: str, **fields) -> None:
        msg = {"id": self.rid, "ev": ev}
        msg.update(fields)
        self.conn.send(msg)

    def output(self, stream: str, text: str) -> None:
        self.conn.send({"id": self.rid, "ev": stream, "data": text})


def _run_result(exit_code, started, timed_out, interrupted, truncated,
                session_restarted=False) -> dict:
    return {
        "exit_code": TIMEOUT_EXIT_CODE if timed_out else exit_code,
        "execution_time": round(time.monotonic() - started, 6),
        "timed_out": timed_out,
        "interrupted": interrupted,
        "truncated": truncated,
        "session_restarted": session_restarted,
    }


def _regular_file(fd: int, name) -> int:
    """The size of the regular file open at ``fd``; Invalid for a FIFO, device, socket or
    directory (a transfer must neither hang nor read forever)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise Invalid(f"{name!r} is not a regular file: only regular files are transferred")
    return info.st_size


def _feed(fd: int, data: bytes) -> None:
    """Write ``data`` to a run's stdin pipe, then close it (EOF); a reader that exits early
    ends the write."""
    with contextlib.suppress(OSError):
        _write_all(fd, data)
    _close(fd)


def _after_grace(action) -> None:
    """Call ``action`` INTERRUPT_GRACE_SECONDS from now, in a daemon thread."""
    timer = threading.Timer(INTERRUPT_GRACE_SECONDS, action)
    timer.daemon = True
    timer.start()


class StatelessRun:
    """One fresh interpreter process; nothing of it outlives it."""

    def __init__(self, agent, reply: Reply, argv, timeout, limit, input_data=None) -> None:
        self.agent = agent
        self.reply = reply
        self.argv = argv
        self.timeout = timeout
        self.input_data = input_data
        self.output = RunOutput(reply.output, limit)
        self.tag = _random_id()
        self.pid = 0
        self.interrupted = False
        self._status: list[int] = []

    def interrupt(self) -> bool:
        """SIGINT to the run's process group; its tree is killed if it has not ended
        INTERRUPT_GRACE_SECONDS later."""
        if not self.pid or self._status:
            return False
        self.interrupted = True
        try:
            os.killpg(self.pid, signal.SIGINT)
        except OSError:
            return False
        _after_grace(self._kill_if_running)
        return True

    def _kill_if_running(self) -> None:
        if not self._status:
            self.agent.procs.kill(roots=(self.pid,), tag=self.tag)

    def execute(self) -> dict:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        wake_r, wake_w = os.pipe()

        def on_exit(code: int) -> None:
            self._status.append(code)
            os.write(wake_w, b"x")

        in_r = in_w = None
        if self.input_data is not None:
            in_r, in_w = os.pipe()
        started = time.monotonic()
        try:
            self.pid = self.agent.reaper.spawn(
                self.argv, self.agent.child_env(self.tag), out_w, err_w, on_exit=on_exit,
                stdin=in_r,
            )
        except OSError as exc:
            _close(out_r, out_w, err_r, err_w, wake_r, wake_w, *filter(None, (in_r, in_w)))
            raise Failure(f"cannot start {self.argv[0]}: {exc.strerror}") from None
        _close(out_w, err_w)
        if in_w is not None:
            _close(in_r)
            threading.Thread(target=_feed, args=(in_w, self.input_data.encode(
                "utf-8", "surrogateescape")), name="run-stdin", daemon=True).start()
        try:
            timed_out = self._pump({out_r: "stdout", err_r: "stderr"}, wake_r, started)
        finally:
            _close(out_r, err_r, wake_r, wake_w)
        self.output.finish()
        code = self._status[0] if self._status else 1
        return _run_result(code, started, timed_out, self.interrupted, self.output.truncated)

    def _pump(self, streams: dict, wake_r: int, started: float) -> bool:
        """Forward output until the process exited and its pipes closed; True if timed out."""
        poller = select.poll()
        for fd in list(streams) + [wake_r]:
            poller.register(fd, select.POLLIN)
        deadline = started + self.timeout if self.timeout is not None else None
        timed_out = exited = False
        drain_until = None
        while streams or not exited:
            now = time.monotonic()
            if drain_until is not None:
                wait = drain_until - now
            elif deadline is not None and not timed_out:
                wait = deadline - now
            else:
                wait = None
            events = poller.poll(None if wait is None else max(0, wait) * 1000)
            for fd, _ in events:
                if fd == wake_r:
                    exited = True
                    poller.unregister(wake_r)
                    continue
                try:
                    data = os.read(fd, CHUNK)
                except OSError:
                    data = b""
                if data:
                    self.output.feed(streams[fd], data)
                else:
                    poller.unregister(fd)
                    del streams[fd]
            now = time.monotonic()
            if deadline is not None and not timed_out and now >= deadline and not exited:
                timed_out = True
                self.agent.procs.kill(roots=(self.pid,), tag=self.tag)
            if exited and drain_until is None:
                # The main process is gone: nothing of a stateless run outlives it.
                self.agent.procs.kill(tag=self.tag)
                drain_until = time.monotonic() + 1.0
            elif drain_until is not None and now >= drain_until:
                break
        return timed_out


class SessionRun:
    """The state of the run a session is executing."""

    def __init__(self, reply: Reply, limit: int) -> None:
        self.reply = reply
        self.id = _random_id()
        self.output = RunOutput(reply.output, limit)
        marker = MARKER_PREFIX + self.id.encode() + b":"
        self.scanners = {"stdout": MarkerScanner(marker), "stderr": MarkerScanner(marker)}
        self.exit_code: int | None = None
        self.timed_out = False
        self.interrupted = False
        self.restarted = False  # the session was killed to end this run: its state is gone
        self.late_error: dict | None = None  # the run's error, when it came past the cap
        self.cleanup: str | None = None  # a file to delete when the run ends
        self.done = threading.Event()
        self.options: dict = {}  # stdin / stderr_traceback, passed to the worker
        self.events = EventScanner()
        self.awaiting_input = False

    def complete(self) -> bool:
        """True when the end report and both markers have arrived."""
        return self.exit_code is not None and all(s.found for s in self.scanners.values())


_BASH_DRIVER = r"""
exec 5>&1 6>&2
__nx_unwind() { [[ " ${FUNCNAME[*]} " != *" source "* ]] || return 2; }
__nx_traps() {
  builtin set -T
  builtin trap '__nx_intr=1; builtin shopt -s extdebug; builtin trap __nx_unwind DEBUG' INT
}
__nx_traps
while :; do
  IFS= builtin read -r -u 3 __nx_line || { (( $? > 128 )) && continue; builtin exit 0; }
  __nx_id=${__nx_line%% *}
  builtin trap - DEBUG; builtin shopt -u extdebug; __nx_intr=
  builtin source "${__nx_line#* }" </dev/null 3<&- 4>&- 5>&- 6>&-
  __nx_status=$?
  builtin trap - DEBUG; builtin shopt -u extdebug; __nx_traps
  [[ -n $__nx_intr ]] && __nx_status=130
  __nx_intr=
  builtin printf '\0nexus-end:%s:' "$__nx_id" >&5
  builtin printf '\0nexus-end:%s:' "$__nx_id" >&6
  builtin printf '{"ev":"end","id":"%s","exit_code":%d}\n' "$__nx_id" "$__nx_status" >&4
done
"""

_JS_DRIVER = r"""
(function () {
  'use strict';
  const vm = require('vm');
  const fs = require('fs');
  const net = require('net');
  const util = require('util');
  const CTL_FD = 4;
  const outWrite = process.stdout.write.bind(process.stdout);
  const errWrite = process.stderr.write.bind(process.stderr);
  const INTERRUPTED = {};
  const queue = [];
  let running = false;
  let cellNo = 0;
  let onSigint = null;
  let tracebackToStderr = true;

  function emit(msg) {
    const buf = Buffer.from(JSON.stringify(msg) + '\n');
    let off = 0;
    while (off < buf.length) off += fs.writeSync(CTL_FD, buf, off);
  }
  function emitInline(msg) {
    // result / error go in-band on stdout: they stay in order with console.log output.
    outWrite('\u0000nexus-ev:' + JSON.stringify(msg) + '\n');
  }
  function cleanStack(stack) {
    // Drop the driver's frames: everything below the last frame of a cell.
    const lines = stack.split('\n');
    let last = -1;
    lines.forEach((l, i) => { if (/^\s+at .*cell-\d+:\d+/.test(l)) last = i; });
    if (last >= 0) return lines.slice(0, last + 1).join('\n');
    return lines.filter((l) => !/^\s+at /.test(l)).join('\n');  // e.g. a SyntaxError
  }
  function describe(e) {
    return e && e.stack ? cleanStack(String(e.stack)) : 'Uncaught ' + util.inspect(e);
  }
  function isInterrupt(e) {
    return e === INTERRUPTED ||
      (e instanceof Error && /Script execution was interrupted/.test(e.message));
  }
  function report(e) {
    if (isInterrupt(e)) {
      if (tracebackToStderr) errWrite('Interrupted: execution was interrupted\n');
      emitInline({ ev: 'error', ename: 'Interrupted', evalue: 'execution was interrupted', traceback: [] });
      return 130;
    }
    const text = describe(e);
    if (tracebackToStderr) errWrite(text + '\n');
    const isErr = e !== null && typeof e === 'object' && 'message' in e;
    emitInline({
      ev: 'error',
      ename: isErr && e.name ? String(e.name) : 'Error',
      evalue: isErr ? String(e.message) : util.inspect(e),
      traceback: text.split('\n'),
    });
    return 1;
  }
  function compile(code, filename) {
    try {
      return { script: new vm.Script(code, { filename }), wrapped: false };
    } catch (e) {
      if (e instanceof SyntaxError && /await/.test(e.message) && /\bawait\b/.test(code)) {
        const body = '(async () => {\n' + code + '\n})()';
        return { script: new vm.Script(body, { filename, lineOffset: -1 }), wrapped: true };
      }
      throw e;
    }
  }
  function untilSigint(promise) {
    return new Promise((resolve, reject) => {
      onSigint = () => reject(INTERRUPTED);
      Promise.resolve(promise).then(resolve, reject);
    }).finally(() => { onSigint = null; });
  }
  function finish(id, exitCode) {
    const marker = '\u0000nexus-end:' + id + ':';
    let pending = 2;
    const written = () => {
      if (--pending === 0) {
        emit({ ev: 'end', id, exit_code: exitCode });
        running = false;
        next();
      }
    };
    outWrite(marker, written);
    errWrite(marker, written);
  }
  async function execute(cmd) {
    let exitCode = 0;
    tracebackToStderr = cmd.stderr_traceback !== false;
    try {
      const { script, wrapped } = compile(cmd.code, 'cell-' + (++cellNo));
      let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
      if (wrapped) {
        value = await untilSigint(value);
      } else if (value !== undefined) {
        emitInline({ ev: 'result', data: { 'text/plain': util.inspect(value) } });
      }
    } catch (e) {
      exitCode = report(e);
    }
    finish(cmd.id, exitCode);
  }
  function next() {
    if (running || queue.length === 0) return;
    running = true;
    execute(queue.shift());
  }
  process.on('SIGINT', () => { if (onSigint) onSigint(); });
  process.on('uncaughtException', (e) => { errWrite('Uncaught ' + describe(e) + '\n'); });
  process.on('unhandledRejection', (e) => { errWrite('Unhandled rejection: ' + describe(e) + '\n'); });
  const input = new net.Socket({ fd: 3, readable: true, writable: false });
  let pendingText = '';
  input.setEncoding('utf8');
  input.on('data', (chunk) => {
    pendingText += chunk;
    let i;
    while ((i = pendingText.indexOf('\n')) >= 0) {
      queue.push(JSON.parse(pendingText.slice(0, i)));
      pendingText = pendingText.slice(i + 1);
    }
    next();
  });
  input.on('end', () => process.exit(0));
  input.on('error', () => process.exit(0));
})();
"""


def _read_burst(fd: int, first: bytes) -> bytes:
    """What follows ``first`` within COALESCE_SECONDS (``print`` writes its text and its
    newline apart): one event per burst instead of one per write, at a cost of ~1 ms
    latency; never past the end marker (nothing follows it)."""
    have = len(first)
    more: list = []
    while have < CHUNK and MARKER_PREFIX not in (more[-1] if more else first):
        ready, _, _ = select.select([fd], [], [], COALESCE_SECONDS)
        if not ready:
            break
        try:
            data = os.read(fd, CHUNK - have)
        except OSError:
            break
        if not data:
            break  # EOF: the caller's next read sees it
        more.append(data)
        have += len(data)
    return b"".join(more)


class SessionGone(Exception):
    """The session's worker died before the run could start: start a fresh one."""


class Session:
    """A persistent interpreter for one (session, language)."""

    def __init__(self, agent, name: str, language: str) -> None:
        self.agent = agent
        self.name = name
        self.language = language
        self.tag = _random_id()
        self.run_lock = threading.Lock()  # one run at a time; later runs queue
        self.dead = False
        self.current: SessionRun | None = None
        self.pid = 0
        self.status: int | None = None
        self._lock = threading.Lock()
        self._cmd_lock = threading.Lock()  # the command pipe is closed only under it
        self._startup_err = b""
        self._ran = False
        self._queries: dict = {}  # query id -> {"event", "answer"} (complete, inspect)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the worker and its reader thread."""
        exe = self.agent.interpreter(self.language)
        if self.language == "python":
            argv = [exe, "-u", "-c", _WORKER_BOOT, "worker-python"]
        elif self.language == "javascript":
            argv = [exe, "-e", _JS_DRIVER]
        else:
            argv = [exe, "--noprofile", "--norc", "-c", _BASH_DRIVER]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        cmd_r, self._cmd_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        self._fds = {out_r: "stdout", err_r: "stderr", ctl_r: "ctl"}
        try:
            self.pid = self.agent.reaper.spawn(
                argv,
                self.agent.child_env(self.tag),
                out_w,
                err_w,
                extra=(cmd_r, ctl_w),
                on_exit=self._on_exit,
            )
        except OSError as exc:
            _close(out_r, err_r, ctl_r, self._cmd_w, self._wake_r, self._wake_w)
            raise Failure(f"cannot start {exe}: {exc.strerror}") from None
        finally:
            _close(out_w, err_w, cmd_r, ctl_w)
        threading.Thread(target=self._read_loop, name="session-" + self.name, daemon=True).start()

    def _on_exit(self, code: int) -> None:
        self.status = code
        os.write(self._wake_w, b"x")

    def kill(self) -> None:
        """Kill the worker and everything the session started."""
        self.agent.procs.kill(roots=(self.pid,), tag=self.tag)

    def info(self) -> dict:
        return {
            "session": self.name,
            "language": self.language,
            "pid": self.pid,
            "busy": self.current is not None,
        }

    # -- runs -------------------------------------------------------------------------

    def run(self, reply: Reply, code: str, timeout, limit: int, options=None) -> dict:
        """Execute ``code`` in the session (the caller holds ``run_lock``)."""
        cur = SessionRun(reply, limit)
        cur.options = dict(options or {})
        with self._lock:
            if self.dead:
                raise SessionGone(self._startup_err)
            self.current = cur
            self._ran = True
        started = time.monotonic()
        # If the worker died, the reader completes the run with its exit status.
        with self._cmd_lock, contextlib.suppress(OSError):
            if self._cmd_w >= 0:
                _write_all(self._cmd_w, self._command(cur, code))
        if not cur.done.wait(timeout):
            cur.timed_out = True  # interrupt first: the session keeps its state if it stops
            if not (self._signal(cur) and cur.done.wait(INTERRUPT_GRACE_SECONDS)):
                self._kill_for(cur)
            if not cur.done.wait(10):
                self._finish(cur)
        exit_code = cur.exit_code if cur.exit_code is not None else 1
        return _run_result(exit_code, started, cur.timed_out, cur.interrupted,
                           cur.output.truncated, cur.restarted)

    def _command(self, cur: SessionRun, code: str) -> bytes:
        if self.language != "bash":
            command = {"id": cur.id, "code": code}
            command.update(cur.options)
            return encode(command)
        path = self.agent.temp_path(f"cell-{cur.id}.sh")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, code.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
        cur.cleanup = path
        return f"{cur.id} {path}\n".encode("utf-8", "surrogateescape")

    def interrupt(self) -> bool:
        """SIGINT to the session's process group if it is running something; code that
        ignores it is killed INTERRUPT_GRACE_SECONDS later (the session restarts empty)."""
        with self._lock:
            cur = self.current
            if cur is None or self.dead:
                return False
            cur.interrupted = True
        if not self._signal(cur):
            return False
        _after_grace(lambda: None if cur.done.is_set() else self._kill_for(cur))
        return True

    def _signal(self, cur: SessionRun) -> bool:
        """SIGINT to the session's process group while ``cur`` runs."""
        if self.current is not cur:
            return False
        try:
            os.killpg(self.pid, signal.SIGINT)
        except OSError:
            return False
        return True

    def _kill_for(self, cur: SessionRun) -> None:
        """End ``cur`` by killing the session (its state is lost, and the run says so)."""
        if self.current is cur:
            cur.restarted = True
            self.kill()

    def _finish(self, cur: SessionRun) -> None:
        with self._lock:
            if self.current is not cur:
                return
            self.current = None
        path = cur.cleanup
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        cur.output.feed("stdout", cur.events.flush())
        if cur.late_error is not None:
            cur.reply.event("error", **cur.late_error)
        cur.output.finish()
        cur.done.set()

    # -- the reader thread ------------------------------------------------------------

    def _read_loop(self) -> None:
        poller = select.poll()
        for fd in list(self._fds) + [self._wake_r]:
            poller.register(fd, select.POLLIN)
        control = LineBuffer()
        try:
            while True:
                events = poller.poll()
                if any(fd == self._wake_r for fd, _ in events):
                    break
                for fd, _ in events:
                    self._read(fd, poller, control)
            self._on_death(poller, control)
        except Exception:
            self.dead = True
            self.kill()
            cur = self.current
            if cur is not None:
                self._finish(cur)

    def _read(self, fd: int, poller, control: LineBuffer) -> None:
        try:
            data = os.read(fd, CHUNK)
        except OSError:
            data = b""
        if not data:
            poller.unregister(fd)
            del self._fds[fd]
            _close(fd)
            return
        kind = self._fds[fd]
        if kind == "ctl":
            for line in control.feed(data):
                self._on_control(line)
            return
        cur = self.current
        if cur is None:
            if kind == "stderr" and not self._ran:
                self._startup_err = (self._startup_err + data)[-4096:]
            return
        data += _read_burst(fd, data)
        data = cur.scanners[kind].feed(data)
        if kind == "stdout":
            for is_event, piece in cur.events.feed(data):
                if is_event:
                    self._on_control(piece)
                else:
                    cur.output.feed("stdout", piece)
        else:
            cur.output.feed(kind, data)
        if cur.complete():
            self._finish(cur)

    def _on_control(self, line: bytes) -> None:
        try:
            msg = decode(line)
        except ValueError:
            return
        ev = msg.pop("ev", None)
        if ev == "reply":
            box = self._queries.get(msg.pop("id", None))
            if box is not None:
                box["answer"] = msg
                box["event"].set()
            return
        cur = self.current
        if cur is None:
            return
        if ev == "end":
            if msg.get("id") == cur.id:
                code = msg.get("exit_code")
                cur.exit_code = code if isinstance(code, int) else 1
                if cur.complete():
                    self._finish(cur)
        elif ev in ("result", "display", "error", "clear_output", "input_request"):
            if not cur.output.charge(len(line)):  # every event counts against the cap
                if ev == "error":  # the last one is sent when the run ends, cut short
                    cur.late_error = {"ename": str(msg.get("ename"))[:200],
                                      "evalue": str(msg.get("evalue"))[:1000], "traceback": []}
                    return
                if ev == "input_request":  # the code waits for an answer: keep asking
                    msg = {"prompt": "", "password": bool(msg.get("password"))}
                else:
                    return
            if ev == "input_request":
                cur.awaiting_input = True
            msg.pop("id", None)
            cur.reply.event(ev, **msg)

    def give_input(self, value) -> bool:
        """Answer the running cell's ``input()``; False when nothing is waiting for input."""
        with self._lock:
            cur = self.current
            if cur is None or not cur.awaiting_input:
                return False
            cur.awaiting_input = False
        with self._cmd_lock, contextlib.suppress(OSError):
            if self._cmd_w >= 0:
                _write_all(self._cmd_w, encode({"op": "input_reply", "value": value}))
        return True

    def query(self, request: dict, wait: float) -> dict | None:
        """Ask the idle worker a question (``complete``, ``inspect``); None when the session
        is busy running code, dead, or does not answer within ``wait`` seconds."""
        if self.language != "python" or not self.run_lock.acquire(timeout=QUERY_BUSY_WAIT):
            return None
        qid = _random_id()
        box: dict = {"event": threading.Event()}
        try:
            with self._lock:
                if self.dead:
                    return None
                self._queries[qid] = box
            with self._cmd_lock:
                if self._cmd_w < 0:
                    return None
                _write_all(self._cmd_w, encode(dict(request, id=qid)))
            box["event"].wait(wait)
            return box.get("answer")
        except OSError:
            return None
        finally:
            self._queries.pop(qid, None)
            self.run_lock.release()

    def _on_death(self, poller, control: LineBuffer) -> None:
        """The worker exited: kill what is left, forward the rest, complete the run."""
        with self._lock:
            self.dead = True
        poller.unregister(self._wake_r)
        self.agent.forget_session(self)
        self.kill()
        until = time.monotonic() + 1.0
        while self._fds:
            left = until - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(left * 1000):
                self._read(fd, poller, control)
        cur = self.current
        if cur is not None:
            if cur.exit_code is None or not cur.complete():
                cur.exit_code = self.status if self.status is not None else 1
            self._finish(cur)
        _close(*list(self._fds), self._wake_r, self._wake_w)
        self._fds.clear()
        with self._cmd_lock:
            _close(self._cmd_w)
            self._cmd_w = -1


# --------------------------------------------------------------------------------------
# Connections and the agent
# --------------------------------------------------------------------------------------


class Connection:
    """One client connection: a reader thread, a writer lock, closes when idle after EOF."""

    def __init__(self, agent, sock) -> None:
        self.agent = agent
        self.sock = sock
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._inflight = 0
        self._eof = False
        self.closed = False

    def send(self, msg: dict) -> None:
        data = encode(msg)
        with self._write_lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def serve(self) -> None:
        lines = LineBuffer()
        while True:
            try:
                data = self.sock.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            for line in lines.feed(data):
                if line.strip():
                    self.agent.dispatch(self, line)
        with self._state_lock:
            self._eof = True
            idle = self._inflight == 0
        if idle:
            self.close()

    def begin(self) -> None:
        with self._state_lock:
            self._inflight += 1

    def end(self) -> None:
        with self._state_lock:
            self._inflight -= 1
            idle = self._eof and self._inflight == 0
        if idle:
            self.close()

    def close(self) -> None:
        with self._write_lock:
            self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


class Agent:
    """The server: sessions, runs, files, the deadline watchdog."""

    #: ops answered on the connection's reader thread (they never block).
    INLINE_OPS = ("hello", "deadline", "sessions", "interrupt", "input_reply")

    def __init__(self, token: str, home: str, socket_path: str | None = None) -> None:
        self.token = token.encode()
        self.home = home
        self.socket_path = socket_path
        self.procs = ProcessTable()
        self.reaper = Reaper()
        self._lock = threading.Lock()
        self._sessions: dict = {}
        self._runs: set = set()
        self._interpreters: dict = {}
        self._env = dict(os.environ)
        self._env["PWD"] = home
        self._tmpdir: str | None = None
        self._deadline: float | None = None
        self._deadline_cond = threading.Condition()
        self._terminating = threading.Lock()
        self._ops = {
            "hello": self.op_hello,
            "run": self.op_run,
            "interrupt": self.op_interrupt,
            "deadline": self.op_deadline,
            "write_file": self.op_write_file,
            "read_file": self.op_read_file,
            "sessions": self.op_sessions,
            "close_session": self.op_close_session,
            "shutdown": self.op_shutdown,
            "input_reply": self.op_input_reply,
            "complete": self.op_complete,
            "inspect": self.op_inspect,
        }

    # -- helpers ----------------------------------------------------------------------

    def child_env(self, tag: str) -> dict:
        env = dict(self._env)
        env[TAG_VAR] = tag
        return env

    def interpreter(self, language: str) -> str:
        path = self._interpreters.get(language)
        if path is None:
            path = _which(INTERPRETERS[language])
            if path is None:
                raise Invalid(
                    f"{language} is not available in this sandbox (no {INTERPRETERS[language]!r} on PATH)"
                )
            self._interpreters[language] = path
        return path

    def temp_path(self, name: str) -> str:
        if self._tmpdir is None:
            base = os.environ.get("TMPDIR") or "/tmp"
            path = os.path.join(base, f"nexus-agent-{os.getpid()}-{_random_id()}")
            os.mkdir(path, 0o700)
            self._tmpdir = path
        return os.path.join(self._tmpdir, name)

    def _resolve(self, path) -> str:
        if not isinstance(path, str) or not path:
            raise Invalid("path must be a non-empty string")
        if "\0" in path:
            raise Invalid("path must not contain NUL characters")
        return os.path.join(self.home, path)

    def forget_session(self, session: Session) -> None:
        with self._lock:
            key = (session.name, session.language)
            if self._sessions.get(key) is session:
                del self._sessions[key]

    # -- requests ---------------------------------------------------------------------

    def dispatch(self, conn: Connection, line: bytes) -> None:
        """Handle one request line (never raises)."""
        try:
            msg = decode(line)
        except ValueError as exc:
            conn.send({"id": None, "ev": "fail", "error": f"bad request: {exc}", "kind": "invalid"})
            return
        reply = Reply(conn, msg.get("id"))
        token = msg.get("token")
        if not isinstance(token, str) or not _compare(token.encode(), self.token):
            reply.event("fail", error="authentication failed: wrong or missing token", kind="auth")
            return
        op = msg.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            reply.event(
                "fail",
                error="unknown op {!r}; use one of {}".format(op, ", ".join(sorted(self._ops))),
                kind="invalid",
            )
            return
        conn.begin()
        if op in self.INLINE_OPS:
            self._handle(reply, handler, msg)
            return
        try:
            threading.Thread(target=self._handle, args=(reply, handler, msg), daemon=True).start()
        except RuntimeError as exc:  # e.g. the sandbox's pids limit
            reply.event("fail", error=f"the agent cannot start a thread: {exc}", kind="error")
            conn.end()

    def _handle(self, reply: Reply, handler, msg: dict) -> None:
        try:
            result = handler(reply, msg) or {}
            reply.event("done", **result)
        except Invalid as exc:
            reply.event("fail", error=str(exc), kind="invalid")
        except Failure as exc:
            reply.event("fail", error=str(exc), kind="error")
        except Exception as exc:
            reply.event("fail", error=f"{type(exc).__name__}: {exc}", kind="error")
        finally:
            reply.conn.end()

    # -- ops --------------------------------------------------------------------------

    def op_hello(self, reply, msg) -> dict:
        languages = [lang for lang, prog in INTERPRETERS.items() if _which(prog)]
        return {
            "version": AGENT_VERSION,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "languages": languages,
        }

    def op_run(self, reply, msg) -> dict:
        language = msg.get("language")
        code = msg.get("code")
        timeout = msg.get("timeout")
        session = msg.get("session")
        limit = msg.get("output_limit")
        options = {}
        for flag, default in (("stdin", False), ("stderr_traceback", True)):
            value = msg.get(flag, default)
            if not isinstance(value, bool):
                raise Invalid(f"{flag} must be true or false")
            if value is not default:
                options[flag] = value
        if language not in INTERPRETERS:
            raise Invalid(
                "unknown language {!r}; use one of {}".format(language, ", ".join(INTERPRETERS))
            )
        if not isinstance(code, str):
            raise Invalid("code must be a string")
        if timeout is not None and (not _is_number(timeout) or timeout <= 0):
            raise Invalid("timeout must be a positive number of seconds or null")
        if session is not None and (not isinstance(session, str) or not session):
            raise Invalid("session must be a non-empty string or null")
        input_data = msg.get("input")
        if input_data is not None and (not isinstance(input_data, str) or session is not None):
            raise Invalid("input must be a string, and is given to stateless runs only")
        if limit is None:
            limit = DEFAULT_OUTPUT_LIMIT
        elif not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise Invalid("output_limit must be a non-negative integer (bytes)")
        deadline = msg.get("deadline")  # the `deadline` op folded into the run: one round trip
        if deadline is not None and not _is_number(deadline):
            raise Invalid("deadline must be an epoch time in seconds or null")
        self.interpreter(language)
        if deadline is not None:
            self.set_deadline(deadline)
        before = oom_kills()
        if session is None:
            result = self._run_stateless(reply, language, code, timeout, limit, input_data)
        else:
            result = self._run_session(reply, session, language, code, timeout, limit, options)
        if before is not None and (oom_kills() or 0) > before:
            result["oom_killed"] = True  # the memory limit ended a process during the run
        return result

    def _stateless_argv(self, language: str, code: str) -> tuple[list, str | None]:
        exe = self.interpreter(language)
        script = None
        if (
            len(code) > MAX_ARGV_CODE // 4
            and len(code.encode("utf-8", "surrogateescape")) > MAX_ARGV_CODE
        ):
            script = self.temp_path(f"run-{_random_id()}")
            with open(script, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(code)
        if language == "python":
            return [exe, "-u", script] if script else [exe, "-u", "-c", code], script
        if language == "javascript":
            return [exe, script] if script else [exe, "-e", code], script
        return [exe, script] if script else [exe, "-c", code], script

    def _run_stateless(self, reply, language, code, timeout, limit, input_data=None) -> dict:
        argv, script = self._stateless_argv(language, code)
        run = StatelessRun(self, reply, argv, timeout, limit, input_data)
        with self._lock:
            self._runs.add(run)
        try:
            return run.execute()
        finally:
            with self._lock:
                self._runs.discard(run)
            if script:
                with contextlib.suppress(OSError):
                    os.unlink(script)

    def _run_session(self, reply, name, language, code, timeout, limit, options=None) -> dict:
        gone = None
        for _attempt in range(3):
            session = self._session(name, language)
            with session.run_lock:
                try:
                    return session.run(reply, code, timeout, limit, options)
                except SessionGone as exc:
                    gone = exc
        detail = bytes(gone.args[0] if gone else b"").decode("utf-8", "replace").strip()
        raise Failure(
            "the {} session could not start (exit status {}){}".format(
                language, session.status, ": " + detail if detail else ""
            )
        )

    def _session(self, name: str, language: str) -> Session:
        """The live session for (name, language), started on first use."""
        with self._lock:
            session = self._sessions.get((name, language))
            if session is None or session.dead:
                session = Session(self, name, language)
                session.start()
                self._sessions[(name, language)] = session
            return session

    def op_interrupt(self, reply, msg) -> dict:
        name = msg.get("session")
        if name is not None and not isinstance(name, str):
            raise Invalid("session must be a string or null")
        with self._lock:
            sessions = [s for s in self._sessions.values() if name is None or s.name == name]
            runs = list(self._runs) if name is None else []
        count = sum(1 for s in sessions if s.interrupt())
        count += sum(1 for r in runs if r.interrupt())
        return {"interrupted": count}

    def op_input_reply(self, reply, msg) -> dict:
        name = msg.get("session")
        value = msg.get("value")
        if not isinstance(name, str) or not name:
            raise Invalid("session must be a non-empty string")
        if value is not None and not isinstance(value, str):
            raise Invalid("value must be a string, or null for end of input")
        with self._lock:
            session = self._sessions.get((name, "python"))
        if session is None or not session.give_input(value):
            raise Invalid(f"session {name!r} is not waiting for input")
        return {}

    def _query(self, msg, op: str) -> dict:
        """Ask the python session ``session`` (started if needed) about ``code``."""
        name = msg.get("session")
        code = msg.get("code")
        pos = msg.get("cursor_pos")
        if not isinstance(name, str) or not name:
            raise Invalid("session must be a non-empty string")
        if not isinstance(code, str):
            raise Invalid("code must be a string")
        if pos is None:
            pos = len(code)
        if not isinstance(pos, int) or isinstance(pos, bool) or not 0 <= pos <= len(code):
            raise Invalid("cursor_pos must be an offset into code (0 .. len(code))")
        request = {"op": op, "code": code, "cursor_pos": pos,
                   "detail_level": 1 if msg.get("detail_level") else 0}
        answer = self._session(name, "python").query(request, QUERY_TIMEOUT)
        if op == "complete":
            found = {"matches": [], "cursor_start": pos, "cursor_end": pos}
        else:
            found = {"found": False, "data": {}, "metadata": {}}
        found.update(answer or {})
        found["busy"] = answer is None
        return found

    def op_complete(self, reply, msg) -> dict:
        return self._query(msg, "complete")

    def op_inspect(self, reply, msg) -> dict:
        return self._query(msg, "inspect")

    def op_deadline(self, reply, msg) -> dict:
        at = msg.get("at")
        if at is not None and not _is_number(at):
            raise Invalid("at must be an epoch time in seconds or null")
        self.set_deadline(at)
        return {}

    def op_write_file(self, reply, msg) -> dict:
        import base64
        import binascii

        path = self._resolve(msg.get("path"))
        mode = msg.get("mode")
        if mode is not None and (
            not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777
        ):
            raise Invalid("mode must be an integer permission mode such as 420 (0o644)")
        try:
            data = base64.b64decode(msg.get("data") or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise Invalid("data must be base64-encoded") from None
        try:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
            try:
                _regular_file(fd, msg.get("path"))
                os.set_blocking(fd, True)
                os.ftruncate(fd, 0)
                _write_all(fd, data)
            finally:
                os.close(fd)
            if mode is not None:
                os.chmod(path, mode)
        except OSError as exc:
            raise Invalid("cannot write {!r}: {}".format(msg.get("path"), exc.strerror)) from None
        return {"size": len(data)}

    def op_read_file(self, reply, msg) -> dict:
        import base64

        path = self._resolve(msg.get("path"))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO: no hang
            try:
                size = _regular_file(fd, msg.get("path"))
            except Invalid:
                os.close(fd)
                raise
            with open(fd, "rb") as f:
                if size > MAX_FILE_BYTES:
                    raise Invalid("{!r} is larger than {} MB: copy it out in parts".format(
                        msg.get("path"), MAX_FILE_BYTES // 2**20))
                os.set_blocking(fd, True)
                data = f.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    raise Invalid("{!r} grew past {} MB while it was read".format(
                        msg.get("path"), MAX_FILE_BYTES // 2**20))
        except FileNotFoundError:
            raise Invalid("no such file in the sandbox: {!r}".format(msg.get("path"))) from None
        except OSError as exc:
            raise Invalid("cannot read {!r}: {}".format(msg.get("path"), exc.strerror)) from None
        return {"data": base64.b64encode(data).decode("ascii"), "size": len(data)}

    def op_sessions(self, reply, msg) -> dict:
        with self._lock:
            sessions = list(self._sessions.values())
        return {"sessions": [s.info() for s in sessions if not s.dead]}

    def op_close_session(self, reply, msg) -> dict:
        name = msg.get("session")
        language = msg.get("language")
        if not isinstance(name, str):
            raise Invalid("session must be a string")
        if language is not None and language not in INTERPRETERS:
            raise Invalid(f"unknown language {language!r}")
        with self._lock:
            doomed = [
                s
                for s in self._sessions.values()
                if s.name == name and (language is None or s.language == language)
            ]
            for s in doomed:
                del self._sessions[(s.name, s.language)]
        for s in doomed:
            s.dead = True
            s.kill()
        return {"closed": len(doomed)}

    def op_shutdown(self, reply, msg) -> dict:
        reply.event("done")
        self.terminate()
        return {}  # not reached

    # -- deadline and termination -----------------------------------------------------

    def set_deadline(self, at: float | None) -> None:
        with self._deadline_cond:
            self._deadline = at
            self._deadline_cond.notify_all()

    def watchdog(self) -> None:
        """End the sandbox when the deadline passes."""
        with self._deadline_cond:
            while True:
                at = self._deadline
                if at is None:
                    self._deadline_cond.wait()
                    continue
                left = at - time.time()
                if left <= 0:
                    break
                self._deadline_cond.wait(min(left, 3600))
        self.terminate()

    def terminate(self) -> None:
        """Kill every process of the sandbox and exit with status 0."""
        if not self._terminating.acquire(blocking=False):
            return
        try:
            if self.socket_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.socket_path)
            self.procs.kill(everything=True)
            if self._tmpdir:
                for name in os.listdir(self._tmpdir):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self._tmpdir, name))
                with contextlib.suppress(OSError):
                    os.rmdir(self._tmpdir)
        finally:
            os._exit(0)


def _compare(a: bytes, b: bytes) -> bool:
    """Constant-time comparison. ``_operator``'s is the one ``hmac`` exposes, without the
    ~3 ms OpenSSL load ``import hmac`` costs the first request."""
    try:
        from _operator import _compare_digest
    except ImportError:  # not CPython
        from hmac import compare_digest as _compare_digest
    return _compare_digest(a, b)


# --------------------------------------------------------------------------------------
# The python session worker (runs in its own interpreter: ``worker-python``)
# --------------------------------------------------------------------------------------


#: (method, MIME type) pairs a value may offer, tried in IPython's order.
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
#: MIME types whose bytes travel base64-encoded (as Jupyter sends them).
BINARY_MIMES = ("image/png", "image/jpeg", "application/pdf")


def _real_method(obj, name: str):
    """``obj.name`` if it is a real method, as IPython looks it up: never on classes, and
    never on objects that invent every attribute (mocks, proxies)."""
    if isinstance(obj, type):
        return None
    try:
        if getattr(obj, "_ipython_canary_method_should_not_exist_", None) is not None:
            return None
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def _split_metadata(value):
    """A ``_repr_*_`` return value -> (data, metadata or None); ``(data, md)`` tuples split."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        return value[0], value[1]
    return value, None


def _wire_value(mime: str, value):
    """A bundle value as it goes on the wire: binary formats as base64 text."""
    if isinstance(value, (bytes, bytearray)):
        if mime in BINARY_MIMES:
            import base64

            return base64.b64encode(bytes(value)).decode("ascii")
        return bytes(value).decode("utf-8", "replace")
    return value


def _format_warning(obj, what: str, exc: BaseException) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{type(obj).__name__}.{what} failed: {type(exc).__name__}: {exc}\n")


def mime_bundle(obj, include=None, exclude=None) -> tuple:
    """``(data, metadata)`` for ``obj``, built like IPython's display formatter.

    ``_repr_mimebundle_(include, exclude)`` comes first; every ``_repr_*_`` method then fills
    in the MIME types it did not give; ``text/plain`` is always there (``repr``). A method
    may return ``None`` (skipped), the data, or ``(data, metadata)``; bytes for PNG/JPEG/PDF
    become base64. A rich method that raises, or returns what JSON cannot carry, is skipped
    with a one-line warning on stderr; a failing ``repr`` raises (like the REPL)."""
    data: dict = {}
    metadata: dict = {}
    method = _real_method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            got, md = _split_metadata(method(include=include, exclude=exclude))
        except Exception as exc:
            _format_warning(obj, "_repr_mimebundle_", exc)
            got, md = None, None
        if isinstance(got, dict):
            data.update(got)
        if isinstance(md, dict):
            metadata.update(md)
    for name, mime in REPR_METHODS:
        method = None if mime in data else _real_method(obj, name)
        if method is None:
            continue
        try:
            value, md = _split_metadata(method())
        except Exception as exc:
            _format_warning(obj, name, exc)
            continue
        if value is not None:
            data[mime] = value
            if md:
                metadata[mime] = md
    if "text/plain" not in data:
        data["text/plain"] = repr(obj)
    return _clean_bundle(obj, data, metadata, include, exclude)


def _clean_bundle(obj, data: dict, metadata: dict, include, exclude) -> tuple:
    clean = {}
    for mime, value in data.items():
        if (include and mime not in include) or (exclude and mime in exclude):
            continue
        value = _wire_value(mime, value)
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            _format_warning(obj, f"{mime} output", exc)
            continue
        clean[mime] = value
    try:
        json.dumps(metadata)
    except (TypeError, ValueError):
        metadata = {}
    return clean, metadata


def result_bundle(value) -> dict:
    """The MIME bundle shown for a cell's last expression value (data only)."""
    return mime_bundle(value)[0]


#: Set in python sessions: plots render off-screen and are sent as PNG after each run.
MATPLOTLIB_BACKEND = "Agg"


def _dotted_name_before(text: str):
    """The dotted name (``a.b.c`` or ``a.b.``) that ends ``text``, or None."""
    import re

    found = re.search(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*\.?$", text)
    if found is None or (found.start() > 0 and text[found.start() - 1] == "."):
        return None  # after ``f().`` or ``"x".``: completing would need evaluation
    return found.group()


def complete_code(namespace: dict, code: str, cursor_pos: int) -> dict:
    """Completions of the name before the cursor: names in ``namespace``, builtins and
    keywords, or attributes after a dot (``rlcompleter``; properties are not evaluated)."""
    import rlcompleter

    token = _dotted_name_before(code[:cursor_pos])
    found = {"matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos}
    if not token:
        return found
    completer = rlcompleter.Completer(namespace)
    matches = []
    for state in range(10000):
        try:
            word = completer.complete(token, state)
        except Exception:
            break
        if word is None:
            break
        word = word[:-2] if word.endswith("()") else word.rstrip("(").rstrip(": ")
        if word not in matches:
            matches.append(word)
    found["matches"] = sorted(matches, key=lambda m: (m.rsplit(".", 1)[-1].startswith("_"), m))
    found["cursor_start"] = cursor_pos - len(token)
    return found


def inspect_code(namespace: dict, code: str, cursor_pos: int, detail_level: int = 0) -> dict:
    """What the name at the cursor is: type, signature and docstring (and the source with
    ``detail_level`` 1), looked up in ``namespace`` then builtins without calling anything."""
    import builtins
    import inspect
    import re

    before = re.sub(r"\(\s*$", "", code[:cursor_pos])
    token = (_dotted_name_before(before) or "") + re.match(r"\w*", code[cursor_pos:]).group()
    parts = token.rstrip(".").split(".") if token else []
    if not parts or not parts[0]:
        return {"found": False, "data": {}, "metadata": {}}
    missing = object()
    obj = namespace.get(parts[0], getattr(builtins, parts[0], missing))
    for part in parts[1:]:
        if obj is missing:
            break
        try:
            obj = inspect.getattr_static(obj, part)
        except AttributeError:
            obj = missing
    if obj is missing:
        return {"found": False, "data": {}, "metadata": {}}
    lines = [f"Type:      {type(obj).__name__}"]
    with contextlib.suppress(Exception):
        lines.append(f"Signature: {parts[-1]}{inspect.signature(obj)}")
    if not callable(obj):
        with contextlib.suppress(Exception):
            lines.append(f"Value:     {repr(obj)[:1000]}")
    doc = inspect.getdoc(obj)
    if doc:
        lines += ["Docstring:", doc]
    if detail_level:
        with contextlib.suppress(Exception):
            lines += ["Source:", inspect.getsource(obj)]
    return {"found": True, "data": {"text/plain": "\n".join(lines)}, "metadata": {}}


class PythonWorker:
    """Executes cells in one persistent namespace, Jupyter-style.

    fd 3 carries commands (JSON lines ``{"id", "code"}``), fd 4 carries events back. User code
    gets stdin = /dev/null and the real fds 1/2; the end markers go through private dups."""

    def __init__(self) -> None:
        import types

        self.cmd_fd = os.dup(3)
        self.ctl_fd = os.dup(4)
        _close(3, 4)
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
                _write_all(self.ctl_fd, data)
            else:
                self._flush_streams()
                _write_all(self.out_fd, EVENT_PREFIX + data)

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
        try:
            code = self.execute(cmd.get("code", ""))
            self.flush_figures()
        finally:
            self.stdin = False
        self.finish(self.run_id, code)

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
                data, md = _clean_bundle(obj, dict(obj), {}, include, exclude)
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
        try:
            if cmd.get("op") == "complete":
                found = complete_code(self.namespace, code, pos)
            else:
                found = inspect_code(self.namespace, code, pos, cmd.get("detail_level") or 0)
        except Exception:
            found = {}
        found.update(ev="reply", id=cmd.get("id"))
        self.emit(found)

    def finish(self, run_id: str, exit_code: int) -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        marker = MARKER_PREFIX + run_id.encode() + b":"
        _write_all(self.out_fd, marker)
        _write_all(self.err_fd, marker)
        self.emit({"ev": "end", "id": run_id, "exit_code": exit_code})

    def execute(self, code: str) -> int:
        """Run one cell; returns its exit code."""
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

    def _write_stderr(self, text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except Exception:
            _write_all(2, text.encode("utf-8", "replace"))


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def _prctl_harden() -> None:
    """Become a child subreaper and non-dumpable (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass


#: Signals that shut the agent down (``docker stop`` sends SIGTERM).
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
#: siginfo codes the kernel sets itself: kill() (SI_USER) and the kernel (SI_KERNEL). Any
#: process may queue a signal with a code below 0 and a sender pid of its choosing.
_KERNEL_SET_CODES = frozenset({0, 0x80})


def _stop_on_signals(agent) -> None:
    """Shut down on a STOP_SIGNALS signal. They are blocked in every thread and taken here,
    so a signal never waits on whichever thread the kernel picked. As the sandbox's pid 1 the
    agent takes them only from outside its pid namespace (si_pid 0, in a siginfo the kernel
    filled): sandbox code cannot stop it (``pkill python3``, or a queued signal with a forged
    sender), as it cannot SIGKILL it."""
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if os.getpid() != 1 or (info.si_pid == 0 and info.si_code in _KERNEL_SET_CODES):
            agent.terminate()


def serve(socket_path: str, token_file: str, home: str | None, deadline: float | None) -> int:
    """Run the agent server (see the module docstring)."""
    import socket

    try:
        with open(token_file, encoding="utf-8") as f:
            token = f.read().strip()
        os.unlink(token_file)
    except OSError as exc:
        sys.stderr.write(f"sandbox_agent: cannot read the token file: {exc}\n")
        return 2
    if not token:
        sys.stderr.write("sandbox_agent: the token file is empty\n")
        return 2
    home = os.path.abspath(home or os.getcwd())
    try:
        os.chdir(home)
    except OSError as exc:
        sys.stderr.write(f"sandbox_agent: cannot use {home!r} as home: {exc.strerror}\n")
        return 2
    _prctl_harden()
    # Before any thread starts: every thread inherits the block (see _stop_on_signals).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    agent = Agent(token, home, socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        os.unlink(socket_path)
    old_umask = os.umask(0o177)
    try:
        listener.bind(socket_path)
        # 0660: the sandbox user's group may connect too (the docker relay, under another uid)
        os.chmod(socket_path, 0o660)
        listener.listen(64)
    except OSError as exc:
        sys.stderr.write(f"sandbox_agent: cannot listen on {socket_path!r}: {exc}\n")
        return 2
    finally:
        os.umask(old_umask)
    threading.Thread(target=_stop_on_signals, args=(agent,), name="signals", daemon=True).start()
    agent.set_deadline(deadline)
    threading.Thread(target=agent.watchdog, name="watchdog", daemon=True).start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    while True:
        try:
            sock, _ = listener.accept()
        except (InterruptedError, ConnectionAbortedError):
            continue
        conn = Connection(agent, sock)
        threading.Thread(target=conn.serve, name="conn", daemon=True).start()


def relay(socket_path: str) -> int:
    """Pump stdin to the agent's socket and the socket to stdout until the socket ends."""
    import socket

    # Non-dumpable before any request (they carry the token) passes through: sandbox code
    # running as the same uid (providers whose exec runs as the sandbox user) could
    # otherwise read this process's memory.
    _prctl_harden()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        sys.stderr.write(f"sandbox_agent relay: cannot connect to {socket_path}: {exc}\n")
        return 1

    def upstream() -> None:
        try:
            while True:
                data = os.read(0, CHUNK)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while True:
            data = sock.recv(CHUNK)
            if not data:
                break
            _write_all(1, data)
    except OSError:
        return 1
    return 0


_USAGE = """usage:
  sandbox_agent.py serve --socket PATH --token-file PATH [--home DIR] [--deadline EPOCH]
  sandbox_agent.py relay --socket PATH"""


def _parse_options(args: list[str], known: dict) -> dict:
    options: dict = {}
    i = 0
    while i < len(args):
        name = args[i]
        if name not in known or i + 1 >= len(args):
            raise SystemExit(f"sandbox_agent: bad argument {name!r}\n{_USAGE}")
        options[known[name]] = args[i + 1]
        i += 2
    return options


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else ""
    if command == "worker-python":
        PythonWorker().serve()
        return 0
    if command == "relay":
        options = _parse_options(args, {"--socket": "socket"})
        if "socket" not in options:
            raise SystemExit(_USAGE)
        return relay(options["socket"])
    if command == "serve":
        options = _parse_options(
            args,
            {
                "--socket": "socket",
                "--token-file": "token_file",
                "--home": "home",
                "--deadline": "deadline",
            },
        )
        if "socket" not in options or "token_file" not in options:
            raise SystemExit(_USAGE)
        deadline = options.get("deadline")
        try:
            at = float(deadline) if deadline is not None else None
        except ValueError:
            raise SystemExit("sandbox_agent: --deadline must be epoch seconds") from None
        return serve(options["socket"], options["token_file"], options.get("home"), at)
    raise SystemExit(_USAGE)


if __name__ == "__main__":
    sys.exit(main())
