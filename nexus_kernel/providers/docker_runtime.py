"""Which OCI runtime the Docker engine runs a sandbox's container with
(``NEXUS_DOCKER_RUNTIME``, ``nexus sandbox create --runtime``): "" is the engine's default
(runc), ``runsc`` is gVisor, whose user-space kernel answers the sandbox's system calls so they
never reach the host kernel.

A runtime is registered with dockerd (``/etc/docker/daemon.json`` ``runtimes``; the set-up
script ``scripts/start-dockerd.sh`` does it when ``runsc`` is installed). gVisor's own network
stack cannot start on recent host kernels (runsc 2022: "cannot run with network enabled in
root network namespace"), so ``runsc`` is registered with ``--network=none`` (network off:
no network stack at all) and a network variant ``runsc-net`` with ``--network=host``: gVisor
then passes socket calls to the host kernel, inside the container's own network namespace
(Docker's bridge), every other system call still answered by gVisor. Docker's seccomp
profile is not applied inside gVisor (runsc's ``--oci-seccomp`` would, but its EPERM for
clone3 stops python's threads): gVisor filters its own host calls. A network-on sandbox
under a runtime registered with ``--network=none`` uses ``<runtime>-net``, and fails in one
line when the engine has none.

gVisor answers SO_PEERCRED on a unix socket with the caller's own credentials, not the
listener's, so under it the relay cannot check that the agent (pid 1) is the one listening:
it connects without that check, and the stream's ``auth`` challenge still authenticates the
agent before anything is sent (the agent binds its abstract socket before any user code runs,
so no one else can hold the name while it lives).

Caps under gVisor: the host's pids and memory caps apply to gVisor itself (its sentry and the
host threads behind the sandbox's tasks), so a sandbox reaching one ends as a whole (the
sentry cannot start a task, or the host OOM killer picks it) instead of one fork failing or
one process being killed; the host stays protected either way. On runsc's ptrace platform
every sandbox process costs about 9 host tasks (measured: 44 at rest, +179 for 20 sleeping
processes), so the host cap is :func:`host_pids` of the sandbox's.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ProviderError

#: The suffix of a runtime's network variant (see the module doc).
NETWORK_VARIANT = "-net"
NO_NETWORK_ARG = "--network=none"
REGISTER = ("install gVisor (apt-get install runsc) and run 'sudo bash scripts/start-dockerd.sh', "
            "which registers runsc and runsc-net with dockerd")


def engine_runtimes(info: dict[str, Any]) -> dict[str, list[str]]:
    """Runtime name -> its runtime arguments, from the engine's ``info``."""
    return {name: list((spec or {}).get("runtimeArgs") or ())
            for name, spec in (info.get("Runtimes") or {}).items()}


#: Why a gVisor sandbox ended during a run, most likely (see the module doc).
GVISOR_ENDED = ("it ended during the run: under gVisor a sandbox that reaches its memory or "
                "process cap ends as a whole")


#: Host tasks of gVisor at rest, and per sandbox process (ptrace platform; see the module doc).
GVISOR_BASE_TASKS = 64
GVISOR_TASKS_PER_PROCESS = 10


def host_pids(pids: int) -> int:
    """The host pids cap of a gVisor sandbox allowed ``pids`` processes."""
    return GVISOR_BASE_TASKS + GVISOR_TASKS_PER_PROCESS * pids


def is_gvisor(info: dict[str, Any], runtime: str) -> bool:
    """Whether the engine's ``runtime`` is gVisor (its binary is ``runsc``)."""
    spec = (info.get("Runtimes") or {}).get(runtime) or {}
    return os.path.basename(str(spec.get("path") or runtime)) == "runsc"


def check_runtime(info: dict[str, Any], wanted: str) -> None:
    """Raise a one-line ProviderError when the engine has no runtime ``wanted`` ("" = its
    default, always there)."""
    runtimes = engine_runtimes(info)
    if wanted and wanted not in runtimes:
        raise ProviderError(
            f"the Docker engine has no runtime {wanted!r} (it has: {', '.join(sorted(runtimes))}); "
            f"{REGISTER}")


def pick_runtime(info: dict[str, Any], wanted: str, network: bool) -> str:
    """The engine runtime for a sandbox: ``wanted`` ("" = the engine's default), or with
    network on, the network variant of a runtime registered with ``--network=none``."""
    check_runtime(info, wanted)
    if not wanted:
        return str(info.get("DefaultRuntime") or "runc")
    runtimes = engine_runtimes(info)
    if not network or NO_NETWORK_ARG not in runtimes[wanted]:
        return wanted
    variant = wanted + NETWORK_VARIANT
    if variant not in runtimes:
        raise ProviderError(
            f"the runtime {wanted!r} runs with {NO_NETWORK_ARG}, so a sandbox with network on "
            f"needs its network variant {variant!r}, which the Docker engine lacks: create it "
            f"with network off, or {REGISTER}")
    return variant
