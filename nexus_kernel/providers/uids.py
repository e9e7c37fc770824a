"""One host uid per sandbox, from a range reserved for nexus.

Sandboxes that share a host uid share everything the kernel accounts per uid: inotify
instances, key quotas and keyrings, ``RLIMIT_NPROC``, and the right to ptrace or read the
memory of each other's processes (and of any host process of that uid, such as the real
account ``nobody`` is on many hosts). So a root caller gives every local sandbox a uid of its
own from ``[UID_BASE, UID_BASE + UID_COUNT)``, a range no distribution gives to accounts (it
lies above systemd-nspawn's container range and below its "foreign" range).

Reservations are files in :data:`RESERVATIONS` (``/run/nexus-uids``: root's, 0700, on the
tmpfs that a reboot clears), one per uid, created with ``O_EXCL`` under a host-wide lock.
Each names its holder: the creating process, then the sandbox's jail (its pid 1 and start
time). A reservation whose holder is gone (the jail ended, or its creator died before the
jail started) is taken over, so a crash never leaks a uid for longer than the sandbox lived.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ProviderError
from ..store import process_alive, process_identity

UID_BASE = 2_000_000_000
UID_COUNT = 65_536
RESERVATIONS = Path("/run/nexus-uids")


def reserve(sandbox_id: str, directory: Path = RESERVATIONS) -> int:
    """A host uid no live sandbox holds, reserved for ``sandbox_id`` (root only)."""
    import secrets  # (OpenSSL's _hashlib) not for a liveness check

    with _locked(directory):
        start = secrets.randbelow(UID_COUNT)
        for offset in range(UID_COUNT):
            uid = UID_BASE + (start + offset) % UID_COUNT
            path = directory / str(uid)
            holder = _holder(path)
            if holder is not None and _held(holder):
                continue
            _write(path, {"sandbox_id": sandbox_id, "creator": process_identity()})
            return uid
    raise ProviderError(
        f"all {UID_COUNT} sandbox uids are in use: stop some sandboxes (nexus sandbox list)")


def bind(uid: int, sandbox_id: str, jail_pid: int, jail_start: int | None,
         directory: Path = RESERVATIONS) -> None:
    """The jail of ``sandbox_id`` now holds ``uid`` (for as long as its pid 1 lives)."""
    jail = {"host": socket.gethostname(), "pid": jail_pid, "start": jail_start}
    with _locked(directory):
        holder = _holder(directory / str(uid))
        if holder is not None and holder.get("sandbox_id") == sandbox_id:
            _write(directory / str(uid), {**holder, "jail": jail})


def release(uid: int, sandbox_id: str, directory: Path = RESERVATIONS) -> None:
    """Give ``uid`` back if ``sandbox_id`` still holds it. Idempotent."""
    with _locked(directory):
        holder = _holder(directory / str(uid))
        if holder is not None and holder.get("sandbox_id") == sandbox_id:
            with contextlib.suppress(FileNotFoundError):
                (directory / str(uid)).unlink()


def remove_stale(directory: Path = RESERVATIONS) -> list[int]:
    """Remove the reservations whose holder is gone (a crash); the uids removed."""
    if not directory.is_dir():
        return []
    removed = []
    with _locked(directory):
        for uid, holder in reserved(directory).items():
            if not _held(holder):
                with contextlib.suppress(FileNotFoundError):
                    (directory / str(uid)).unlink()
                removed.append(uid)
    return removed


def reserved(directory: Path = RESERVATIONS) -> dict[int, dict[str, Any]]:
    """uid -> holder of every reservation file (live or stale)."""
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            holder = _holder(path) if path.name.isdigit() else None
            if holder is not None:
                found[int(path.name)] = holder
    return found


def _held(holder: dict[str, Any]) -> bool:
    jail = holder.get("jail")
    if jail is not None:
        return process_alive(jail)
    creator = holder.get("creator")
    return isinstance(creator, dict) and process_alive(creator)


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd) as f:
        try:
            data = json.loads(f.read(4096))
        except ValueError:
            return {}  # half written by a creator that died: held by nobody
    return data if isinstance(data, dict) else {}


def _write(path: Path, holder: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(holder))
    os.replace(temporary, path)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """The host-wide reservation lock (short: a scan of at most the live sandboxes)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.is_symlink() or directory.stat().st_uid != os.geteuid():
        raise ProviderError(f"{directory} is not a directory of this user: remove it")
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
