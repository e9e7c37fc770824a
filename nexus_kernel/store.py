"""State store: diskcache used as a small database shared by every process.

Records are plain versioned dicts under ``sandbox:<id>``. Read-modify-write happens inside
short ``transact()`` blocks that do no I/O besides the cache itself. Per-sandbox locks
(``diskcache.Lock`` with an expiry, so a SIGKILLed holder cannot wedge a sandbox) serialise
lifecycle transitions that call a provider. Nothing here ever expires a record on its own:
an evicted record would lose the handle needed to destroy a (possibly paid) sandbox.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diskcache

from .errors import SandboxError

_PREFIX = "sandbox:"
_STORE_ID_KEY = "meta:store_id"


class Store:
    """Sandbox records in one diskcache directory."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
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
        """Per-sandbox lock across processes; expires so a killed holder frees it."""
        lock = diskcache.Lock(self._cache, "lock:" + sandbox_id, expire=expire)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def close(self) -> None:
        self._cache.close()
