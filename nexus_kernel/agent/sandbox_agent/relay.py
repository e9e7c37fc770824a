"""The relay (``relay --socket ADDRESS [--peer-pid PID]``): a stdio <-> unix socket bridge to
the agent, for providers whose only route into a sandbox is an exec stdio stream (docker
exec, E2B background commands, Modal exec)."""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading

from .procs import harden
from .wire import CHUNK, unix_address, write_all


def _listener_pid(sock) -> int | None:
    """The pid of the process that listens on the socket ``sock`` is connected to
    (SO_PEERCRED: set by the kernel, no peer can forge it), in this pid namespace."""
    import socket

    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, getattr(socket, "SO_PEERCRED", 17), 12)
    except OSError:
        return None
    return struct.unpack("3i", raw)[0]


def relay(address: str, peer_pid: int | None = None) -> int:
    """Pump stdin to the agent's socket and the socket to stdout until the socket ends.
    With ``peer_pid``, a socket some other process listens on (an impostor) is refused
    before a byte passes."""
    import socket

    # Non-dumpable before any request (user code, files) passes through: sandbox code
    # running as the same uid (providers whose exec runs as the sandbox user) could
    # otherwise read this process's memory.
    harden()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(unix_address(address))
    except OSError as exc:
        sys.stderr.write(f"sandbox_agent relay: cannot connect to {address}: {exc}\n")
        return 1
    if peer_pid is not None and _listener_pid(sock) != peer_pid:
        sys.stderr.write(f"sandbox_agent relay: {address} is not served by the agent "
                         f"(pid {peer_pid}): refusing it\n")
        sock.close()
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
            write_all(1, data)
    except OSError:
        return 1
    return 0
