"""Accounting of one run: CPU seconds, peak memory, processes started, and why it ended.

CPU and peak memory are the agent's own measure (it spawns and reaps every child, and is the
subreaper, so orphans are reaped by it too): a stateless run's root process's ``wait4``
rusage (which includes every descendant it waited for) plus the orphans of its process group
the agent reaped; a session run's worker's ``/proc/PID/stat`` times (self + waited children)
before and after, its ``VmHWM`` (reset before the run through ``clear_refs``; read only when
the worker took a page fault, since without one its resident size cannot have grown), plus
reaped orphans of its process group. ``processes`` is the sandbox's pid-namespace counter
(``ns_last_pid``) before and after: processes and threads created in the sandbox while the
run ran (exact for a run alone in its sandbox; runs that overlap count each other's).
``oom`` and ``pids_cap`` come from the sandbox's cgroup counters where they are visible
(``source: "cgroup"``), else only ``rusage`` is known (no ``pids_cap``, no ``oom``).
"""

from __future__ import annotations

import contextlib
import os
import threading

#: The sandbox's OOM-kill and "fork refused at the pids cap" counters, cgroup v2 and v1
#: files, each as (path, the line's name).
OOM_COUNTERS = (("/sys/fs/cgroup/memory.events", b"oom_kill"),
                ("/sys/fs/cgroup/memory/memory.oom_control", b"oom_kill"))
PIDS_COUNTERS = (("/sys/fs/cgroup/pids.events", b"max"),
                 ("/sys/fs/cgroup/pids/pids.events", b"max"))
LAST_PID = "/proc/sys/kernel/ns_last_pid"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: Which of each counter's files this sandbox has ("" = none), found on first use.
_found: dict = {}


#: The sandbox-wide counter files read around every run, kept open: path -> fd.
_kept: dict = {}
_kept_lock = threading.Lock()


def _read_kept(path: str) -> bytes:
    """A sandbox-wide counter file (cgroup, ``ns_last_pid``) read afresh with ``pread`` at
    offset 0 on an fd opened once (these files regenerate their text on a read from the
    start): no path walk, open or close per read."""
    fd = _kept.get(path)
    if fd is None:
        with _kept_lock:
            fd = _kept.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    return b""
                _kept[path] = fd
    try:
        return os.pread(fd, 4096, 0)
    except OSError:
        return b""


def _count(candidates) -> int | None:
    """The value of a cgroup counter line (None when the sandbox shows no such file)."""
    path = _found.get(candidates)
    for file, name in candidates if path is None else [p for p in candidates if p[0] == path]:
        data = b"\n" + _read_kept(file)
        at = data.find(b"\n" + name + b" ")
        if at >= 0:
            value = data[at + len(name) + 2 :].split(b"\n", 1)[0].strip()
            if value.isdigit():
                _found[candidates] = file
                return int(value)
    if path is None:
        _found[candidates] = ""
    return None


def oom_kills():
    """Processes the OOM killer has killed at the sandbox's memory limit so far (None when
    the sandbox's memory cgroup is not visible)."""
    return _count(OOM_COUNTERS)


def pids_cap_hits():
    """Forks the pids cap has refused so far (None when the pids cgroup is not visible)."""
    return _count(PIDS_COUNTERS)


def _last_pid():
    value = _read_kept(LAST_PID).strip()
    return int(value) if value.isdigit() else None


class Tally:
    """CPU and peak memory of processes the reaper reaped (rusage from ``wait4``)."""

    def __init__(self) -> None:
        self.user = 0.0
        self.system = 0.0
        self.peak = 0  # bytes

    def add(self, rusage) -> None:
        self.user += rusage.ru_utime
        self.system += rusage.ru_stime
        self.peak = max(self.peak, rusage.ru_maxrss * 1024)


class ProcFiles:
    """The /proc files of one process read (or written) around each of its runs, each opened
    once and then read with ``pread`` at offset 0: pinned to that process (a pid reused after
    it died is never read for it), closed with this object."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fds: dict = {}

    def _fd(self, name: str, flags: int) -> int:
        fd = self._fds.get(name)
        if fd is None:
            fd = self._fds[name] = os.open(f"/proc/{self.pid}/{name}", flags)
        return fd

    def read(self, name: str) -> bytes:
        try:
            return os.pread(self._fd(name, os.O_RDONLY), 4096, 0)
        except OSError:
            return b""

    def write(self, name: str, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd(name, os.O_WRONLY), data)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    __del__ = close


def proc_stat(files: ProcFiles):
    """(user s, system s, page faults, resident bytes) of a live process, its CPU including
    its waited-for children; None when it is gone."""
    data = files.read("stat")
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        minflt, majflt = int(fields[7]), int(fields[9])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        rss = int(fields[21])
    except (IndexError, ValueError):
        return None
    return ((utime + cutime) / _TICK, (stime + cstime) / _TICK, minflt + majflt,
            rss * _PAGE)


def reset_peak(files: ProcFiles) -> None:
    """Start the process's VmHWM afresh (best effort: one we may not write keeps its own)."""
    files.write("clear_refs", b"5")


def peak_memory(files: ProcFiles):
    """``VmHWM`` of a live process in bytes, or None."""
    data = files.read("status")
    at = data.find(b"\nVmHWM:")
    if at < 0:
        return None
    value = data[at + 7 : data.find(b"kB", at)].strip()
    return int(value) * 1024 if value.isdigit() else None


def measured(user: float, system: float, peak: int) -> dict:
    """The CPU and memory part of a run's ``usage``."""
    return {"cpu_user_s": round(user, 3), "cpu_system_s": round(system, 3),
            "peak_memory_bytes": peak}


def ended_by(result: dict, oom: bool, pids_cap: bool) -> str:
    """Why a run ended: a cap it hit first, else how it was ended, else its own exit."""
    if oom:
        return "oom"
    if pids_cap:
        return "pids_cap"
    if result.get("timed_out"):
        return "timeout"
    if result.get("interrupted"):
        return "interrupt"
    if result.get("truncated"):
        return "output_cap"
    return "exit"


class Meter:
    """The sandbox-wide counters read around one run: :meth:`start` when it starts,
    :meth:`finish` when it ended."""

    def __init__(self) -> None:
        self.oom = self.pids = self.last_pid = None

    def start(self) -> None:
        self.oom = oom_kills()
        self.pids = pids_cap_hits()
        self.last_pid = _last_pid()

    def finish(self, result: dict) -> None:
        """Complete ``result`` (a run's ``done`` fields) with ``usage`` and ``ended_by``."""
        oom = self.oom is not None and (oom_kills() or 0) > self.oom
        last = _last_pid()
        started = None
        if self.last_pid is not None and last is not None and last >= self.last_pid:
            started = last - self.last_pid
        # A fork the pids cap refuses has taken a pid number already: no new pid, no refusal
        # (most session runs start no process: this saves a read).
        pids_cap = (self.pids is not None and started != 0
                    and (pids_cap_hits() or 0) > self.pids)
        if oom:
            result["oom_killed"] = True  # the memory limit ended a process during the run
        usage = result.get("usage") or {}
        usage.update(
            wall_s=result.get("execution_time"),
            processes=started,
            source="cgroup" if self.oom is not None or self.pids is not None else "rusage",
        )
        result["usage"] = usage
        result["ended_by"] = ended_by(result, oom, pids_cap)
