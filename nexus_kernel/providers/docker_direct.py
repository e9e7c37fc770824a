"""The direct stream to a docker sandbox's agent: a unix socket, no ``docker exec``.

Where this process can join the container's network namespace, it connects to the agent's
abstract socket itself instead of starting a relay in the container (an exec costs 50-100 ms:
on the first run after create, on resume, in every new CLI process). Eligible: the caller is
root (setns into another network namespace needs CAP_SYS_ADMIN), the engine is local (a
``unix://`` socket) and its pids are this process's (checked below), and the runtime is runc
(gVisor's abstract sockets live in its sentry, not in the host kernel). Anything else, or any
step below that does not hold, returns None and the provider uses the exec relay, which works
everywhere.

How: the container's init (``State.Pid``, cached in the handle) is opened as a ``/proc``
directory fd, which pins that process: a pid recycled later is another process, whose files
this fd never reaches. Through it the process is checked to be that container's init (pid 1
of its pid namespace, in a cgroup named after the container id: a remote engine's pid, or one
of another pid namespace, fails this) and not frozen (a paused container: the relay's path
reports it), and its ``ns/net`` is opened. A short-lived thread joins that namespace (setns
is per thread: no other thread of this process ever leaves its own namespace) and makes a
unix socket there; the socket keeps that namespace for its whole life and serves any thread.
The listener of ``@nexus-agent`` must then be the container's init (SO_PEERCRED, as the
relays check: not a process of the sandbox that bound the name first), else the connect
fails. The token challenge follows, as on every stream.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from typing import Any

from ..agent.sandbox_agent.wire import unix_address
from ..errors import AgentError

CLONE_NEWNET = 0x40000000
#: The runtimes whose containers' sockets live in the host kernel ("" = the engine's
#: default; a default that is gVisor is recorded as such in the handle).
RUNC = frozenset({"", "runc", "io.containerd.runc.v2"})
#: Seconds a connect to the agent's socket may wait (its backlog is full).
CONNECT_TIMEOUT = 10.0
_CGROUP_ROOT = "/sys/fs/cgroup"


def eligible(handle: dict[str, Any], engine: str) -> bool:
    """Whether the direct path may be tried for ``handle`` on the engine at ``engine`` (its
    ``DOCKER_HOST`` form)."""
    return (os.geteuid() == 0 and engine.startswith("unix://")
            and not handle.get("gvisor") and handle.get("runtime", "") in RUNC)


def connect(container_id: str, pid: int, address: str) -> socket.socket | None:
    """A socket connected to the agent at ``address`` in the network namespace of
    ``container_id``'s init, host pid ``pid``; None when this path is not available (see
    the module doc). Raises AgentError when someone other than the init holds the name."""
    try:
        proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _is_running_init(proc, container_id):
            return None
        netns = os.open("ns/net", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
        try:
            sock = _socket_in(netns)
        finally:
            os.close(netns)
        if sock is None:
            return None
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(unix_address(address))
            sock.settimeout(None)
            listener = _listener_pid(sock)
            alive = _is_running_init(proc, container_id)
        except OSError:
            sock.close()
            return None
        if not alive:
            sock.close()
            return None
        if listener != pid:
            sock.close()
            raise AgentError(f"{address} in the sandbox container {container_id[:12]} is not "
                             f"served by its agent (listener pid {listener}, not {pid}): "
                             "refusing it; stop the sandbox")
        return sock
    finally:
        os.close(proc)


def _is_running_init(proc: int, container_id: str) -> bool:
    """Whether the process of the ``/proc`` fd ``proc`` lives, is pid 1 of its pid
    namespace, in the cgroup of ``container_id``, and is not frozen."""
    try:
        status = _read(proc, "status")
        cgroups = _read(proc, "cgroup")
    except OSError:
        return False  # it ended
    nspid = next((line.split()[1:] for line in status.splitlines()
                  if line.startswith("NSpid:")), [])
    if not nspid or nspid[-1] != "1" or container_id not in cgroups:
        return False
    return not _frozen(cgroups)


def _frozen(cgroups: str) -> bool:
    """Whether the freezer of one of these ``/proc/PID/cgroup`` lines holds the process
    (``docker pause``): cgroup v1's freezer, or v2's ``cgroup.events``."""
    for line in cgroups.splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            where, wanted = f"{_CGROUP_ROOT}/freezer{path}/freezer.state", "THAWED"
        elif controllers == "":
            where, wanted = f"{_CGROUP_ROOT}{path}/cgroup.events", None
        else:
            continue
        try:
            with open(where) as f:
                text = f.read()
        except OSError:
            continue  # not this hierarchy (v1 has a "0::" line too)
        if wanted is not None:
            return text.strip() != wanted
        return "frozen 1" in text.splitlines()
    return False


def _read(proc: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    with os.fdopen(fd) as f:
        return f.read(65536)


def _socket_in(netns: int) -> socket.socket | None:
    """A unix stream socket made in the network namespace ``netns`` by a thread that joins
    it and ends (None when this process may not join it)."""
    made: list[socket.socket] = []

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(netns, CLONE_NEWNET) == 0:
            made.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))

    thread = threading.Thread(target=enter, name="nexus-docker-netns", daemon=True)
    thread.start()
    thread.join()
    return made[0] if made else None


def _listener_pid(sock: socket.socket) -> int:
    """The pid (in this pid namespace) of the process listening on the socket ``sock`` is
    connected to (SO_PEERCRED: set by the kernel, no peer can forge it)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_PEERCRED", 17), 12)
    return struct.unpack("3i", raw)[0]
