"""Processes below the agent: the process table (by ancestry and by run tag), the reaper
that spawns and reaps every child, and the prctl hardening that makes the agent a child
subreaper.

Every process the agent starts gets ``NEXUS_RUN_TAG=<random>`` in its environment. The
agent is a child subreaper, so processes that double-fork or ``setsid`` reparent to it and
stay findable: "the processes of a run" are the descendants of its root process plus every
descendant of the agent whose ``/proc/PID/environ`` carries the run's tag. A process that
execs with a cleared environment *and* detaches escapes the tag (not the deadline).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

#: The environment variable that tags every process of a run or session.
TAG_VAR = "NEXUS_RUN_TAG"
#: Bytes read from a /proc file at a time (this module is imported before READY: not
#: ``wire``, which imports json).
_PROC_CHUNK = 65536


def _exit_code(status: int) -> int:
    """Wait status -> exit code; death by signal N -> 128 + N (shell convention)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 1


def _read_proc(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return b""
    try:
        chunks = []
        while True:
            data = os.read(fd, _PROC_CHUNK)
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


def _pgid(pid: int) -> int | None:
    """The process group of a process (a zombie's too), or None when it is gone."""
    data = _read_proc(f"/proc/{pid}/stat")
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[2])
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
        os.read(fd, _PROC_CHUNK)
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


def has_tag(pid: int, tag: str) -> bool:
    """True when process ``pid`` carries the process tag ``tag``."""
    needle = f"\0{TAG_VAR}={tag}\0".encode()
    return needle in b"\0" + _read_proc(f"/proc/{pid}/environ") + b"\0"


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
            stack.extend(pid for pid in tree if pid != self.me and has_tag(pid, tag))
        while stack:
            pid = stack.pop()
            if pid in chosen or pid == self.me or pid not in tree:
                continue
            chosen.add(pid)
            stack.extend(tree[pid])
        return {pid for pid in chosen if _alive(pid)}

    def kill(self, roots=(), tag: str | None = None, everything: bool = False, limit=5.0) -> None:
        """Stop the selection until it stops growing (a stopped process cannot fork: a fork
        bomb would otherwise refill each pid a kill frees), then SIGKILL it again and again
        until nothing of it is left alive."""
        end = time.monotonic() + limit
        stopped: set[int] = set()
        while time.monotonic() < end:
            fresh = self.select(roots, tag, everything) - stopped
            if not fresh:
                if not stopped:  # nothing to kill (most ends of a run): no second walk
                    return
                break
            for pid in fresh:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGSTOP)
            stopped |= fresh
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

    One thread blocks in ``waitid(-1)``; the exit code and ``wait4`` rusage of a process we
    spawned go to the ``on_exit`` callback given at spawn time (called in the reaper thread:
    keep it short). The rusage of an adopted orphan goes to the :class:`~.usage.Tally`
    tracked for its process group, if any (how a run counts the CPU of what it left)."""

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
        self._groups: dict = {}  # process group -> Tally of its reaped orphans
        self._have_children = threading.Event()
        self._devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        threading.Thread(target=self._loop, name="reaper", daemon=True).start()

    def spawn(self, argv: list[str], env: dict, stdout: int, stderr: int, extra=(), on_exit=None,
              stdin: int | None = None, tally=None):
        """Start ``argv`` in its own process group with stdin (default /dev/null), the given
        stdout/stderr and ``extra`` fds as 3, 4, ...; returns the pid. ``tally``: tracked for
        the new process group from the start (see :meth:`track`)."""
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
            if tally is not None:
                self._groups[pid] = tally
            _oom_first(pid)
        self._have_children.set()
        return pid

    def adopt(self, pid: int, on_exit, tally=None) -> None:
        """Give ``on_exit`` the exit of ``pid``, an orphan the agent adopted or will adopt
        when its parent exits (a session worker forked by a snapshot's holder, a stateless
        run forked by the python zygote); ``tally``: tracked for its process group (see
        :meth:`track`)."""
        with self._lock:
            self._waiters[pid] = on_exit
            if tally is not None:
                self._groups[pid] = tally
        self._have_children.set()
        if not os.path.exists(f"/proc/{pid}"):  # reaped before it was known: it died
            with self._lock:
                early = self._waiters.pop(pid, None)
            if early is not None:
                early(1, None)

    def track(self, pgid: int, tally) -> None:
        """Add the rusage of orphans of process group ``pgid`` reaped from now on to ``tally``
        (replacing the group's previous one)."""
        with self._lock:
            self._groups[pgid] = tally

    def untrack(self, pgid: int) -> None:
        with self._lock:
            self._groups.pop(pgid, None)

    def _loop(self) -> None:
        while True:
            try:  # peek first: an orphan's process group is readable only until it is reaped
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                self._have_children.wait()
                self._have_children.clear()
                continue
            except InterruptedError:
                continue
            if info is None:
                continue
            pid = info.si_pid
            with self._lock:
                on_exit = self._waiters.pop(pid, None)
                tally = None if on_exit is not None or not self._groups else self._groups.get(
                    _pgid(pid))
            try:
                _, status, rusage = os.wait4(pid, 0)
            except ChildProcessError:
                continue
            if tally is not None:
                tally.add(rusage)
            if on_exit is not None:
                with contextlib.suppress(Exception):
                    on_exit(_exit_code(status), rusage)



def harden() -> None:
    """Become a child subreaper and non-dumpable (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except Exception:
        pass
