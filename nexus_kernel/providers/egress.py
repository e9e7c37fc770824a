"""The host side of a sandbox's egress proxy (``egress_proxy.py``): starting it for a
network namespace, the environment that points the sandbox at it, and reading the denials it
records. Used by the local provider (the jail's netns) and the docker provider (the
container's)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from ..config import Settings
from ..egress import MAX_EVENTS
from ._launch import spawn_helper

EGRESS_PROXY = Path(__file__).with_name("egress_proxy.py")
#: ioctl: the user namespace owning a namespace (linux/nsfs.h NS_GET_USERNS).
NS_GET_USERNS = 0xB701
PROXY_URL = "http://127.0.0.1:3128"
#: What pip, curl, requests, urllib (and most HTTP clients) follow. Node's fetch does not.
PROXY_ENV = {
    "HTTP_PROXY": PROXY_URL, "HTTPS_PROXY": PROXY_URL,
    "http_proxy": PROXY_URL, "https_proxy": PROXY_URL,
    "NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1",
}  # fmt: skip


def override_hosts(settings: Settings) -> dict[str, str]:
    """``NEXUS_EGRESS_TEST_HOSTS`` (``name=address,...``): names the egress proxy resolves to
    the given address, loopback included (tests point an allowed name at their own server).
    A host setting: nothing in a sandbox can set it."""
    pairs = [item.partition("=") for item in settings.egress_test_hosts.replace(",", " ").split()]
    return {name.lower(): address for name, _, address in pairs if name and address}


def start_proxy(python: str, pid: int, allow: tuple[str, ...], hosts: dict[str, str], *,
                events: Path, log: Path, exit_fd: int = -1, join_userns: bool = False,
                watch: tuple[int, int | None] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """The egress proxy for the network namespace of process ``pid``: returns the process
    and the read end of its ready pipe (b"1" once it listens). It ends when ``exit_fd``
    reaches EOF, or when the process ``watch`` (pid, start time) is gone. It gets the
    namespace (and with ``join_userns``, for an unprivileged caller, the user namespace
    owning it) as open fds, so no path can be swapped under it; its denials go to
    ``events``, its own errors to ``log``."""
    net_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    fds = [net_fd]
    try:
        user_fd = fcntl.ioctl(net_fd, NS_GET_USERNS) if join_userns else -1
        if user_fd >= 0:
            fds.append(user_fd)
        ready_r, ready_w = os.pipe()
        fds.append(ready_w)
        events_fd = os.open(events, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        fds.append(events_fd)
        config = {"allow": list(allow), "hosts": hosts, "net_fd": net_fd, "user_fd": user_fd,
                  "exit_fd": exit_fd, "ready_fd": ready_w, "events_fd": events_fd,
                  "watch": list(watch) if watch else None}
        proc = spawn_helper(
            [python, "-I", "-S", str(EGRESS_PROXY), json.dumps(config)], log,
            [exit_fd, *fds], ready_r, "egress",
        )  # fmt: skip
    finally:
        for fd in fds:
            os.close(fd)
    return proc, ready_r


def read_events(path: Path, since: float | None = None) -> list[dict[str, Any]]:
    """Denial events of an events file (JSON lines; a torn or foreign line is skipped),
    at most ``egress.MAX_EVENTS``, newest last, with printable ASCII host and reason."""
    try:
        with open(path, "rb") as f:
            data = f.read(256 * 1024)
    except OSError:
        return []
    found = []
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if (isinstance(event, dict) and isinstance(event.get("time"), (int, float))
                and (since is None or event["time"] >= since)):
            port = event.get("port")
            found.append({"time": event["time"], "host": _printable(event.get("host"), 255),
                          "port": port if isinstance(port, int) else None,
                          "reason": _printable(event.get("reason"), 200)})
    return found[-MAX_EVENTS:]


def _printable(value: Any, limit: int) -> str:
    """``value`` as ASCII text with anything else escaped (names come from sandbox code)."""
    text = str(value)[:limit]
    return "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" if ord(c) < 256
                   else f"\\u{ord(c):04x}" for c in text)
