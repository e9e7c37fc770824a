"""Egress allow-lists for docker sandboxes: the container runs on ``network none`` (loopback
only), and the egress proxy (``egress_proxy.py``, the local provider's) enters the
container's network namespace from the host to listen at 127.0.0.1:3128 and :53 there, then
drops to ``nobody``. It is a host process: outside the container's pid namespace and uid, so
sandbox code can neither see nor signal it, and it ends when the container's init does.

Entering another network namespace takes root on the engine's host, so this works with a
local engine (a unix socket) and a root caller; otherwise create fails in one line naming
what works. Denials go to ``<NEXUS_HOME>/egress/<sandbox id>.jsonl`` (0700 directory)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ..config import Settings, private_dir
from ..errors import ProviderError, UnsupportedOperationError
from .egress import PROXY_ENV, override_hosts, read_events, start_proxy

READY_TIMEOUT = 10.0


def check(settings: Settings) -> None:
    """Raise UnsupportedOperationError when this process cannot enforce an allow-list on
    the configured engine."""
    host = settings.docker_host
    if host and not host.startswith("unix://"):
        raise UnsupportedOperationError(
            f"a network allow-list on docker needs a local engine (DOCKER_HOST={host}): the "
            "proxy joins the container's network namespace on the engine's host; use the local "
            "provider, or network 'all' / 'none'")
    if os.geteuid() != 0:
        raise UnsupportedOperationError(
            "a network allow-list on docker needs root (the proxy joins the container's "
            "network namespace); run as root, or use the local provider, where it needs none")


def host_options(allow: tuple[str, ...]) -> dict[str, Any]:
    """``create_host_config`` keyword arguments: the container's resolver is the proxy."""
    return {"dns": ["127.0.0.1"], "dns_opt": ["timeout:1", "attempts:1"]} if allow else {}


def environment(allow: tuple[str, ...]) -> dict[str, str]:
    """The container's proxy variables (none without an allow-list)."""
    return dict(PROXY_ENV) if allow else {}


def start(settings: Settings, sandbox_id: str, pid: int, allow: tuple[str, ...]) -> dict[str, Any]:
    """Start the proxy for the container whose init is host pid ``pid``; the handle's
    ``egress_*`` entries."""
    folder = private_dir(settings.home / "egress")
    events = folder / f"{sandbox_id}.jsonl"
    started = _start_time(pid)
    proc, ready = start_proxy(sys.executable, pid, allow, override_hosts(settings),
                              events=events, log=folder / f"{sandbox_id}.log",
                              watch=(pid, started))
    try:
        import select

        if not select.select([ready], [], [], READY_TIMEOUT)[0] or os.read(ready, 1) != b"1":
            proc.kill()
            log = (folder / f"{sandbox_id}.log").read_text(errors="replace")[-500:]
            raise ProviderError(f"the egress proxy could not listen in the container: {log}")
    finally:
        os.close(ready)
    return {"network": "egress-proxy", "allow": list(allow), "egress_pid": proc.pid,
            "egress_start": _start_time(proc.pid), "egress_events": str(events)}


def stop(handle: dict[str, Any]) -> None:
    """End the proxy (it also ends with the container) and remove its files."""
    pid = handle.get("egress_pid")
    if pid and _start_time(pid) == handle.get("egress_start"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if handle.get("egress_events"):
        events = Path(handle["egress_events"])
        for path in (events, events.with_suffix(".log")):
            with contextlib.suppress(OSError):
                path.unlink()


def events(handle: dict[str, Any], since: float | None) -> list[dict[str, Any]]:
    return read_events(Path(handle["egress_events"]), since) if handle.get("egress_events") else []


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
