"""State store: diskcache used as a small database shared by every process.

Records are plain versioned dicts under ``sandbox:<id>``. Read-modify-write happens inside
short ``transact()`` blocks that do no I/O besides the cache itself. Per-sandbox locks
serialise lifecycle transitions that call a provider; each names its holder process, so a
waiter frees at once a lock whose holder died on this host (a SIGKILLed CLI), and an expiry
frees one held elsewhere. Nothing here ever expires a record on its own:
an evicted record would lose the handle needed to destroy a (possibly paid) sandbox.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diskcache

from .config import private_dir
from .errors import SandboxError

_PREFIX = "sandbox:"
_STORE_ID_KEY = "meta:store_id"


class Store:
    """Sandbox records in one diskcache directory."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        private_dir(self.directory)
        self._cache = diskcache.Cache(
            str(self.directory),
            eviction_policy="none",
            size_limit=2**40,
            cull_limit=0,
            statistics=0,
            timeout=60,
        )
        self._store_id: str | None = None

    @property
    def store_id(self) -> str:
        """A random id naming this store; providers label resources with it."""
        if self._store_id is None:
            self._cache.add(_STORE_ID_KEY, "st_" + secrets.token_hex(6))
            self._store_id = self._cache.get(_STORE_ID_KEY)
        return self._store_id

    def get(self, sandbox_id: str) -> dict[str, Any] | None:
        return self._cache.get(_PREFIX + sandbox_id)

    def insert(self, record: dict[str, Any]) -> None:
        """Store a new record; refuses to overwrite an existing id."""
        if not self._cache.add(_PREFIX + record["sandbox_id"], record):
            raise SandboxError(f"sandbox id {record['sandbox_id']!r} already exists")

    def update(
        self, sandbox_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Apply ``change`` to the stored record atomically. ``change`` gets a copy and
        returns the new record, or None to leave it as is. Returns the stored record."""
        key = _PREFIX + sandbox_id
        with self._cache.transact():
            current = self._cache.get(key)
            if current is None:
                return None
            new = change(dict(current))
            if new is None:
                return current
            self._cache.set(key, new)
            return new

    def delete(self, sandbox_id: str) -> bool:
        return self._cache.delete(_PREFIX + sandbox_id)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every stored record (any owner), in no particular order."""
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key.startswith(_PREFIX):
                record = self._cache.get(key)
                if record is not None:
                    yield record

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self._cache.get("meta:" + key, default)

    def set_meta(self, key: str, value: Any) -> None:
        self._cache.set("meta:" + key, value)

    def meta_keys(self, prefix: str) -> list[str]:
        """Names (without ``meta:``) of the meta values whose name starts with ``prefix``."""
        full = "meta:" + prefix
        return [k[5:] for k in list(self._cache.iterkeys()) if isinstance(k, str) and k.startswith(full)]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic read-modify-write across keys (re-entrant; keep it short, no I/O)."""
        with self._cache.transact():
            yield

    def claim(self, key: str, interval: float) -> bool:
        """True for at most one caller per ``interval`` seconds (throttles lazy reaping)."""
        now = time.time()
        with self._cache.transact():
            last = self._cache.get("meta:" + key, 0.0)
            if now - last < interval:
                return False
            self._cache.set("meta:" + key, now)
            return True

    @contextmanager
    def lock(self, sandbox_id: str, expire: float = 120.0) -> Iterator[None]:
        """Per-sandbox lock across processes and threads. A lock whose holder process is
        dead (same host) is taken over at once; any other expires after ``expire`` s."""
        key = "lock:" + sandbox_id
        me = {**process_identity(), "nonce": secrets.token_hex(4)}
        delay = 0.001
        while not self._cache.add(key, me, expire=expire, retry=True):
            holder = self._cache.get(key, retry=True)
            if isinstance(holder, dict) and not process_alive(holder):
                with self._cache.transact(retry=True):
                    if self._cache.get(key) == holder:
                        self._cache.delete(key)
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            with self._cache.transact(retry=True):  # ours only: never a successor's
                if self._cache.get(key) == me:
                    self._cache.delete(key)

    def close(self) -> None:
        self._cache.close()


def _start_time(pid: int) -> int | None:
    """Start time (clock ticks after boot) of a live process, None when it is gone or a
    zombie (or /proc is unavailable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def process_identity() -> dict[str, Any]:
    """Names this process across the store's users: host, pid and start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def process_alive(identity: dict[str, Any]) -> bool:
    """False only when ``identity`` (see :func:`process_identity`) is a process of this host
    that has ended; a process of another host, or one we cannot check, counts as alive."""
    if identity.get("host") != socket.gethostname() or identity.get("start") is None:
        return True
    pid = identity.get("pid")
    if not isinstance(pid, int) or not os.path.isdir("/proc/self"):
        return True
    return _start_time(pid) == identity["start"]
