"""Snapshots of a python session, worker side (imported on the first ``snapshot`` command).

``snapshot`` forks the worker between two commands into a *holder*: a process that keeps a
copy-on-write copy of the whole interpreter (namespace, imported modules, open files) and
waits, blocked in ``accept`` on a private unix socket, until the agent asks it for a new
worker (``fork``: it forks again and the child becomes the session's worker on the pipes
the agent passes, so the holder stays unchanged and can be restored any number of times)
or to ``exit``. Both forks are double forks: the holder and the workers it makes are
reparented to the agent (a child subreaper), which reaps them.

The worker does not wait for its holder: it answers right after its own fork (the state is
the holder's from then on) and goes on with the next command, while the holder sets itself
up and, once out of the session's process tree and retagged, writes its pid to
``<socket path>.pid`` (0 if it could not); the agent reads it before it kills the session
or the holder (see ``snapshots.Snapshot.settle``).
SIGINT stays blocked in the holder (an interrupt of the session's next cell reaches its
process group before the holder leaves it); the workers it makes unblock it.

What a fork does not copy: threads (only the forking thread survives; BLAS pools start
again when next used, user threads are gone and listed in ``lost_threads``) and child
processes (listed in ``lost_processes``: they stay the current worker's).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
import warnings

from .wire import LineBuffer

#: The environment variable of the process tag (``procs.TAG_VAR``; the worker never imports
#: the agent's process table).
_TAG_VAR = "NEXUS_RUN_TAG"
#: How many fds a ``fork`` request passes: commands, control, stdout, stderr.
_FDS = 4
#: Appended to a holder's socket path: the file where the holder writes its pid when ready,
#: 0 if it could not set itself up (``snapshots.PID_SUFFIX``).
_PID_SUFFIX = ".pid"


def snapshot(worker, cmd: dict) -> dict | None:
    """Fork a holder of this interpreter's state; the reply for the agent, or None in a
    worker restored from the holder (it goes on serving commands)."""
    path, tag = cmd.get("path"), cmd.get("tag")
    if not isinstance(path, str) or not isinstance(tag, str):
        return {"error": "snapshot needs a socket path and a tag"}
    lost_threads = sorted(t.name for t in threading.enumerate()
                          if t is not threading.main_thread() and t.is_alive())
    reap()  # the middle processes of earlier snapshots (not waited for: see _middles)
    lost_processes = [pid for pid in _children() if pid not in _middles]
    offsets = _file_offsets()
    worker._flush_streams()
    agent_pid = cmd.get("agent")  # the only peer the holder answers
    if not isinstance(agent_pid, int):
        return {"error": "snapshot needs the agent's pid"}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    try:
        listener.bind(path)
        listener.listen(4)
        in_holder = _background_fork(functools.partial(_become_holder, worker, tag),
                                     path + _PID_SUFFIX)
    except OSError as exc:
        listener.close()
        return {"error": f"cannot fork the session: {exc.strerror or exc}"}
    if in_holder:
        try:
            _hold(worker, listener, agent_pid, offsets, mask)  # returns only in a new worker
        except BaseException:
            os._exit(1)
        return None
    listener.close()
    return {"pid": None, "lost_threads": lost_threads, "lost_processes": lost_processes,
            "rss": _rss()}


#: Middle processes of double forks not reaped yet (see :func:`_detached_fork`).
_middles: list = []


def reap(block: bool = False) -> None:
    """Reap the middle processes of the last double forks (done after the reply: they exit
    at once, but their exit need not delay it); ``block``: wait for those still running."""
    for middle in list(_middles):
        try:
            done, _status = os.waitpid(middle, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped already (user code's os.wait())
            done = middle
        if done:
            _middles.remove(middle)


#: Names in a session's namespace that are the session's own, never exported.
_SESSION_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "display",
                            "clear_output"})


def _pickler():
    """cloudpickle, else dill, else pickle (functions and classes defined in cells need
    one of the first two)."""
    import importlib

    for name in ("cloudpickle", "dill"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    import pickle

    return pickle


def export(worker, cmd: dict) -> dict:
    """Pickle the session's variables into ``path`` (for a fork into another sandbox):
    modules by name, every other value one by one; what cannot be pickled is listed."""
    import pickle
    import types

    path = cmd.get("path")
    if not isinstance(path, str):
        return {"error": "export needs a path"}
    pickler = _pickler()
    state, modules, skipped = {}, {}, []
    for name, value in list(worker.namespace.items()):
        if name.startswith("_") or name in _SESSION_NAMES:
            continue
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        try:
            state[name] = pickler.dumps(value)
        except Exception:
            skipped.append(name)
    blob = pickle.dumps({"pickler": pickler.__name__, "modules": modules, "state": state})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as f:
        f.write(blob)
    return {"skipped": sorted(skipped), "pickler": pickler.__name__, "size": len(blob)}


def load(worker, cmd: dict) -> dict:
    """Put the variables an :func:`export` wrote to ``path`` into this session."""
    import importlib
    import pickle

    path = cmd.get("path")
    if not isinstance(path, str):
        return {"error": "load needs a path"}
    with open(path, "rb") as f:
        data = pickle.load(f)
    failed = []
    try:
        loader = importlib.import_module(data["pickler"])
    except ImportError:
        return {"error": f"{data['pickler']} is not installed in this sandbox"}
    for name, module in data["modules"].items():
        try:
            worker.namespace[name] = importlib.import_module(module)
        except Exception:
            failed.append(name)
    for name, blob in data["state"].items():
        try:
            worker.namespace[name] = loader.loads(blob)
        except Exception:
            failed.append(name)
    return {"failed": sorted(failed)}


def _detached_fork(prepare) -> int:
    """Fork a grandchild that the agent adopts: 0 in it, its pid in the caller, which has
    it once the grandchild ran ``prepare()`` (its process tag set: killing the session it
    was forked from never kills it after that). The middle process exits right after the
    fork; :func:`reap` waits for it later."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():  # "fork() in a multi-threaded process": see the docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        middle = os.fork()
    if middle == 0:
        pid = -1
        with contextlib.suppress(BaseException):
            os.close(read_end)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        if pid != 0:
            os._exit(0)
        try:
            prepare()
            os.write(write_end, b"%d\n" % os.getpid())
            os.close(write_end)
        except BaseException:
            os._exit(1)
        return 0
    os.close(write_end)
    data = b""
    while not data.endswith(b"\n"):  # EOF: prepare() failed
        chunk = os.read(read_end, 64)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    _middles.append(middle)
    if not data.endswith(b"\n"):
        raise OSError("fork failed")
    return int(data)


def _background_fork(prepare, pid_file: str) -> bool:
    """Fork a grandchild that the agent adopts, without waiting for it: True in the
    grandchild once it left the caller's process tree (its parent exited) and ran
    ``prepare()``, False in the caller right after the first fork. The grandchild's pid
    then goes to ``pid_file`` (0 when it could not be made or set up). SIGINT is blocked
    in both children (see the module's docstring); the middle process exits after its
    fork, :func:`reap` reaps it."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with warnings.catch_warnings():  # "fork() in a multi-threaded process": see _detached_fork
            warnings.simplefilter("ignore", DeprecationWarning)
            middle = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if middle == 0:
        pid, me = -1, os.getpid()
        with contextlib.suppress(BaseException), warnings.catch_warnings():
            gone, alive = os.pipe()  # EOF once the middle process has exited
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid != 0:
            if pid < 0:
                with contextlib.suppress(BaseException):
                    _write_pid(pid_file, 0)
            os._exit(0)
        ready = False
        try:
            os.close(alive)
            while os.read(gone, 1):  # out of the session's process tree before it is ready:
                pass  # the middle process closed its files (it is exiting), then
            os.close(gone)
            while os.getppid() == me:  # its children went to the agent (a moment later)
                time.sleep(0.0001)
            prepare()
            ready = True
        finally:
            with contextlib.suppress(BaseException):
                _write_pid(pid_file, os.getpid() if ready else 0)
            if not ready:
                os._exit(1)
        return True
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _middles.append(middle)
    return False


def _write_pid(pid_file: str, pid: int) -> None:
    fd = os.open(pid_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"%d\n" % pid)
    finally:
        os.close(fd)
    os.rename(pid_file + ".tmp", pid_file)  # whole or absent for the agent


def _become_holder(worker, tag: str) -> None:
    """The holder's set-up, before the agent learns its pid."""
    os.setsid()  # out of the session's process group: an interrupt never reaches it
    set_tag(tag)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    # The session's pipes are the worker's alone: the agent sees them close when it dies.
    for fd in (worker.cmd_fd, worker.ctl_fd, worker.out_fd, worker.err_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def _hold(worker, listener, agent_pid: int, offsets: dict, mask) -> None:
    """The holder's life: wait for the agent's requests; return only in a new worker."""
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        except OSError:
            os._exit(1)
        fds: list = []
        try:
            if _peer_pid(conn) != agent_pid:  # only the agent asks (sandbox code is the user's)
                continue
            request, fds = _receive(conn)
            if request.get("op") == "exit":
                os._exit(0)
            if request.get("op") != "fork" or len(fds) != _FDS:
                continue
            tag = str(request.get("tag", ""))
            pid = _detached_fork(functools.partial(_become_worker, worker, fds, tag, offsets,
                                                   mask))
            if pid == 0:
                listener.close()
                conn.close()
                return
            conn.sendall(b"%d\n" % pid)
            reap(block=True)
        except OSError:
            continue
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            conn.close()


def _become_worker(worker, fds: list, tag: str, offsets: dict, mask) -> None:
    """Take over the session's new pipes as its worker (stdout and stderr included), with
    its open files at the offsets they had at the snapshot (a forked process shares
    them with the holder and every worker before it), and the worker's signal mask."""
    for fd, pos in offsets.items():
        with contextlib.suppress(OSError):
            os.lseek(fd, pos, os.SEEK_SET)
    cmd, ctl, out, err = (os.dup(fd) for fd in fds)
    for fd in fds:
        os.close(fd)
    fds.clear()
    os.setsid()  # its own process group: interrupts go to it and what it starts
    os.dup2(out, 1)
    os.dup2(err, 2)
    worker.cmd_fd, worker.ctl_fd, worker.out_fd, worker.err_fd = cmd, ctl, out, err
    worker._lines = LineBuffer()
    worker._pending = []
    set_tag(tag)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def set_tag(tag: str) -> None:
    """Give this process the process tag ``tag`` where the agent reads it: in the copy of the
    environment the kernel shows in ``/proc/self/environ`` (written in place through
    ``/proc/self/mem``; the tags have one length), and in ``os.environ`` for what it starts."""
    data = _read("/proc/self/environ")
    needle = b"\0" + _TAG_VAR.encode() + b"="
    at = (b"\0" + data).find(needle)
    old_end = (b"\0" + data).find(b"\0", at + 1) if at >= 0 else -1
    value = tag.encode()
    if at < 0 or old_end - at - len(needle) != len(value):
        raise OSError("the worker's process tag cannot be changed")
    stat = _read("/proc/self/stat")
    env_start = int(stat[stat.rfind(b")") + 2:].split()[47])  # field 50: env_start
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(env_start + at + len(needle) - 1)
        mem.write(value)
    os.environ[_TAG_VAR] = tag


def _peer_pid(conn) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _receive(conn) -> tuple[dict, list]:
    """One request: a JSON line and up to _FDS fds (SCM_RIGHTS)."""
    size = struct.calcsize("i") * _FDS
    msg, ancdata, _flags, _addr = conn.recvmsg(4096, socket.CMSG_SPACE(size))
    fds: list = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            count = len(data) // struct.calcsize("i")
            fds.extend(struct.unpack(f"{count}i", data[:count * struct.calcsize("i")]))
    try:
        request = json.loads(msg.decode("utf-8"))
    except ValueError:
        request = {}
    return (request if isinstance(request, dict) else {}), fds


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _children() -> list:
    """The pids of this process's children (they are not part of a snapshot)."""
    pids: list = []
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):
                pids.extend(int(p) for p in _read(f"/proc/self/task/{tid}/children").split())
    return sorted(pids)


def _file_offsets() -> dict:
    """fd -> offset of this process's open regular files (fds 0-2 are the session's)."""
    found = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            with contextlib.suppress(OSError, ValueError):
                if fd > 2 and stat.S_ISREG(os.fstat(fd).st_mode):
                    found[fd] = os.lseek(fd, 0, os.SEEK_CUR)
    return found


def _rss() -> int:
    """This process's resident size in bytes: the most its holder can come to pin."""
    with contextlib.suppress(OSError, ValueError):
        for line in _read("/proc/self/status").splitlines():
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
