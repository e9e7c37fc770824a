"""The relay (``relay --socket PATH``): a stdio <-> unix socket bridge to the agent, for
providers whose only route into a sandbox is an exec stdio stream (docker exec, E2B
background commands, Modal exec)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

from .procs import harden
from .wire import CHUNK, write_all


def relay(socket_path: str) -> int:
    """Pump stdin to the agent's socket and the socket to stdout until the socket ends."""
    import socket

    # Non-dumpable before any request (they carry the token) passes through: sandbox code
    # running as the same uid (providers whose exec runs as the sandbox user) could
    # otherwise read this process's memory.
    harden()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        sys.stderr.write(f"sandbox_agent relay: cannot connect to {socket_path}: {exc}\n")
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
