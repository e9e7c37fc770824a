"""Accounting of one run: CPU seconds, peak memory, processes started, and why it ended.

CPU and peak memory are the agent's own measure (it spawns and reaps every child, and is the
subreaper, so orphans are reaped by it too): a stateless run's root process's ``wait4``
rusage (which includes every descendant it waited for) plus the orphans of its process group
the agent reaped; a session run's worker's ``/proc/PID/stat`` times (self + waited children)
before and after, its ``VmHWM`` (reset before the run through ``clear_refs``), plus reaped
orphans of its process group. ``processes`` is the sandbox's pid-namespace counter
(``ns_last_pid``) before and after: processes and threads created in the sandbox while the
run ran (exact for a run alone in its sandbox; runs that overlap count each other's).
``oom`` and ``pids_cap`` come from the sandbox's cgroup counters where they are visible
(``source: "cgroup"``), else only ``rusage`` is known (no ``pids_cap``, no ``oom``).
"""

from __future__ import annotations

import contextlib
import os

from .procs import oom_kills, read_proc

#: The sandbox's "fork refused at the pids cap" counter: cgroup v2 and v1 files.
PIDS_EVENTS = ("/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events")
LAST_PID = "/proc/sys/kernel/ns_last_pid"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def pids_cap_hits():
    """Forks the pids cap has refused so far (None when the pids cgroup is not visible)."""
    for path in PIDS_EVENTS:
        for line in read_proc(path).decode("ascii", "replace").splitlines():
            name, _, value = line.partition(" ")
            if name == "max" and value.strip().isdigit():
                return int(value)
    return None


def _last_pid():
    value = read_proc(LAST_PID).strip()
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


def cpu_times(pid: int):
    """(user, system) seconds of a live process including its waited-for children, or None."""
    data = read_proc(f"/proc/{pid}/stat")
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    except ValueError:
        return None
    return (utime + cutime) / _TICK, (stime + cstime) / _TICK


def reset_peak(pid: int) -> None:
    """Start ``pid``'s VmHWM afresh (best effort: a process we may not write keeps its own)."""
    with contextlib.suppress(OSError):
        fd = os.open(f"/proc/{pid}/clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)


def peak_memory(pid: int):
    """``VmHWM`` of a live process in bytes, or None."""
    for line in read_proc(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


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
    """The sandbox-wide counters read around one run."""

    def __init__(self) -> None:
        self.oom = oom_kills()
        self.pids = pids_cap_hits()
        self.last_pid = _last_pid()

    def finish(self, result: dict) -> None:
        """Complete ``result`` (a run's ``done`` fields) with ``usage`` and ``ended_by``."""
        oom = self.oom is not None and (oom_kills() or 0) > self.oom
        pids_cap = self.pids is not None and (pids_cap_hits() or 0) > self.pids
        if oom:
            result["oom_killed"] = True  # the memory limit ended a process during the run
        last = _last_pid()
        started = None
        if self.last_pid is not None and last is not None and last >= self.last_pid:
            started = last - self.last_pid
        usage = result.get("usage") or {}
        usage.update(
            wall_s=result.get("execution_time"),
            processes=started,
            source="cgroup" if self.oom is not None or self.pids is not None else "rusage",
        )
        result["usage"] = usage
        result["ended_by"] = ended_by(result, oom, pids_cap)
