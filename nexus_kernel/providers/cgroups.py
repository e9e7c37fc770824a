"""Per-sandbox cgroups: memory, pids and cpu caps, freezing and killing every task.

Uses cgroup v2 when the unified hierarchy has the controllers and is writable, else the v1
controllers (memory, pids, cpu, freezer). ``create_cgroup`` returns None when nothing usable
is writable (unprivileged callers, most containers); the caller then falls back to rlimits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from ..models import Limits

V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")
#: Controllers a cgroup must have to be worth using (the ones that stop a host DoS).
REQUIRED = ("memory", "pids")
CPU_PERIOD_US = 100_000


def _write(path: str, value: str | int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _mounts() -> list[tuple[str, str, set[str]]]:
    """Cgroup mounts as (fstype, mount point, super options) from /proc/self/mountinfo."""
    found = []
    try:
        lines = _read("/proc/self/mountinfo").splitlines()
    except OSError:
        return found
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fstype, _source, options = (right.split(" ") + ["", ""])[:3]
        if fstype in ("cgroup", "cgroup2"):
            mount_point = left.split(" ")[4].replace("\\040", " ")
            found.append((fstype, mount_point, set(options.split(","))))
    return found


@dataclass
class Cgroup:
    """One sandbox's cgroup: ``paths`` maps v1 controller names (or "unified") to dirs."""

    paths: dict[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return "v2" if "unified" in self.paths else "v1"

    @property
    def can_freeze(self) -> bool:
        return "unified" in self.paths or "freezer" in self.paths

    def to_dict(self) -> dict[str, str]:
        return dict(self.paths)

    @classmethod
    def from_dict(cls, data: dict[str, str] | None) -> Cgroup | None:
        return cls(dict(data)) if data else None

    def procs_files(self) -> list[str]:
        """Files to write a pid into so that it (and its future children) join this cgroup."""
        return [os.path.join(p, "cgroup.procs") for p in self.paths.values()]

    def pids(self) -> set[int]:
        """Every process currently in the cgroup (any controller)."""
        found: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError):
                found.update(int(x) for x in _read(procs).split())
        return found

    def freeze(self, timeout: float = 5.0) -> bool:
        """Freeze every task and wait until frozen. False without a freezer or on timeout."""
        if "unified" in self.paths:
            base = self.paths["unified"]
            _write(os.path.join(base, "cgroup.freeze"), 1)
            return poll_until(lambda: "frozen 1" in _read(os.path.join(base, "cgroup.events")), timeout)
        if "freezer" in self.paths:
            state = os.path.join(self.paths["freezer"], "freezer.state")
            _write(state, "FROZEN")
            return poll_until(lambda: _read(state).strip() == "FROZEN", timeout)
        return False

    def thaw(self) -> bool:
        if "unified" in self.paths:
            _write(os.path.join(self.paths["unified"], "cgroup.freeze"), 0)
            return True
        if "freezer" in self.paths:
            _write(os.path.join(self.paths["freezer"], "freezer.state"), "THAWED")
            return True
        return False

    def kill(self, timeout: float = 5.0, spare: frozenset[int] = frozenset()) -> bool:
        """SIGKILL every task but ``spare`` (no fork can slip through: frozen first) and wait
        until only ``spare`` is left."""
        if not any(os.path.isdir(p) for p in self.paths.values()):
            return True
        kill_file = os.path.join(self.paths.get("unified", "/nonexistent"), "cgroup.kill")
        if not spare and os.path.exists(kill_file):
            _write(kill_file, 1)
        else:
            frozen = False
            if self.can_freeze:
                with contextlib.suppress(OSError):
                    frozen = self.freeze(timeout=min(timeout, 1.0))
            # Frozen tasks cannot fork, so one pass is enough; otherwise repeat until empty.
            for _ in range(1 if frozen else 50):
                pids = self.pids() - spare
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            if self.can_freeze:
                with contextlib.suppress(OSError):
                    self.thaw()
        return poll_until(lambda: not (self.pids() - spare), timeout)

    def remove(self, timeout: float = 2.0) -> bool:
        """rmdir every controller dir (retrying while exiting tasks drain). Idempotent."""

        def attempt() -> bool:
            done = True
            for path in self.paths.values():
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    done = False
            return done

        return poll_until(attempt, timeout)


def prepay_attach(cgroup: Cgroup) -> int | None:
    """Start paying now, in a child, the wait of a first write into a cgroup.procs file, so
    that the caller's own write a few ms later (capping its new process) finds it paid: the
    kernel's global attach lock (cgroup v1, and v2 without favordynmods) waits for an RCU
    grace period, ~5-10 ms, when taken after a quiet spell, and is cheap for another grace
    period after. The child, a shell of ours, moves itself into ``cgroup`` and exits; no
    sandbox process exists yet. Returns its pid, which the caller reaps (``os.waitpid``);
    None when it could not start."""
    files = cgroup.procs_files()
    if not files or not os.path.exists("/bin/sh"):
        return None
    procs = os.path.join(cgroup.paths.get("freezer", os.path.dirname(files[-1])), "cgroup.procs")
    try:
        return os.posix_spawn("/bin/sh", ["sh", "-c", 'exec 2>/dev/null; echo $$ > "$1"', "sh", procs], {})
    except OSError:  # only a lost head start
        return None


#: An empty sandbox cgroup younger than this may be one whose sandbox is still starting.
LEFTOVER_GRACE_SECONDS = 120.0


def remove_leftovers(parent: str = "nexus", grace: float = LEFTOVER_GRACE_SECONDS) -> list[str]:
    """Remove every ``<parent>/sb_*`` cgroup, in every hierarchy, that has no task left and
    is older than ``grace`` s: what sandboxes of any store on this host left when nobody
    destroyed them (their state directory was deleted, the host process was killed). The
    kernel refuses to remove a cgroup that still has a task (EBUSY), and a live sandbox,
    running or frozen, always has its agent in it, so no live sandbox of any store loses its
    cgroup; the grace spares one being created. Returns the removed paths."""
    removed = []
    now = time.time()
    for fstype, mount_point, _ in _mounts():
        if fstype not in ("cgroup", "cgroup2"):
            continue
        top = os.path.join(mount_point, parent)
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            if not name.startswith("sb_"):
                continue
            try:
                if now - os.stat(path).st_mtime < grace or _read(
                        os.path.join(path, "cgroup.procs")).strip():
                    continue
                os.rmdir(path)
            except OSError:
                continue
            removed.append(path)
    return removed


def poll_until(check: Any, timeout: float) -> bool:
    """Call ``check`` until it returns true or ``timeout`` passes; starts at 0.5 ms."""
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            if check():
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _writable(mount_point: str, parent: str) -> bool:
    """We may create ``<mount_point>/<parent>/<name>`` (parent may be pre-made and delegated)."""
    target = os.path.join(mount_point, parent)
    return os.access(target if os.path.isdir(target) else mount_point, os.W_OK)


def _v2_base(parent: str) -> str | None:
    """Mount point of a writable cgroup2 hierarchy with the required controllers, or None."""
    for fstype, mount_point, _ in _mounts():
        if fstype != "cgroup2":
            continue
        try:
            controllers = set(_read(os.path.join(mount_point, "cgroup.controllers")).split())
        except OSError:
            continue
        if set(REQUIRED) <= controllers and _writable(mount_point, parent):
            return mount_point
    return None


def _v1_bases(parent: str) -> dict[str, str]:
    """Controller -> mount point of every writable v1 hierarchy we use."""
    bases: dict[str, str] = {}
    for fstype, mount_point, options in _mounts():
        if fstype != "cgroup":
            continue
        for controller in V1_CONTROLLERS:
            if controller in options and controller not in bases and _writable(mount_point, parent):
                bases[controller] = mount_point
    return bases


def create_cgroup(name: str, limits: Limits, parent: str = "nexus") -> Cgroup | None:
    """Create ``<parent>/<name>`` with ``limits`` applied; None when no cgroup is usable."""
    base = _v2_base(parent)
    if base is not None:
        with contextlib.suppress(OSError):
            return _create_v2(base, parent, name, limits)
    bases = _v1_bases(parent)
    if set(REQUIRED) <= set(bases):
        with contextlib.suppress(OSError):
            return _create_v1(bases, parent, name, limits)
    return None


def _create_v2(mount_point: str, parent: str, name: str, limits: Limits) -> Cgroup:
    top = os.path.join(mount_point, parent)
    os.makedirs(top, exist_ok=True)
    wanted = ["memory", "pids", "cpu"]
    for directory in (mount_point, top):
        for controller in wanted:
            with contextlib.suppress(OSError):
                _write(os.path.join(directory, "cgroup.subtree_control"), f"+{controller}")
    path = os.path.join(top, name)
    os.mkdir(path)
    cgroup = Cgroup({"unified": path})
    try:
        memory = limits.memory_mb * 1024 * 1024
        _write(os.path.join(path, "memory.max"), memory)
        with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
            _write(os.path.join(path, "memory.swap.max"), 0)
        _write(os.path.join(path, "pids.max"), limits.pids)
        if limits.cpus > 0 and os.path.exists(os.path.join(path, "cpu.max")):
            _write(os.path.join(path, "cpu.max"), f"{int(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
    except OSError:
        cgroup.remove(timeout=0)
        raise
    return cgroup


def _create_v1(bases: dict[str, str], parent: str, name: str, limits: Limits) -> Cgroup:
    cgroup = Cgroup()
    try:
        for controller, mount_point in bases.items():
            path = os.path.join(mount_point, parent, name)
            os.makedirs(path)
            cgroup.paths[controller] = path
        memory = str(limits.memory_mb * 1024 * 1024)
        mem = cgroup.paths["memory"]
        _write(os.path.join(mem, "memory.limit_in_bytes"), memory)
        memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):  # cap memory+swap too, or the cap just moves pages to swap
            with contextlib.suppress(OSError):
                _write(memsw, memory)
        _write(os.path.join(cgroup.paths["pids"], "pids.max"), limits.pids)
        if "cpu" in cgroup.paths and limits.cpus > 0:
            cpu = cgroup.paths["cpu"]
            _write(os.path.join(cpu, "cpu.cfs_period_us"), CPU_PERIOD_US)
            _write(os.path.join(cpu, "cpu.cfs_quota_us"), int(limits.cpus * CPU_PERIOD_US))
    except OSError:
        cgroup.remove(timeout=0)
        raise
    return cgroup
