"""Warm pool: sandboxes started ahead of time that ``create`` hands out in milliseconds.

Where the pool lives: in the shared store, not in a process. A CLI process exits right after
its command, so a pool held in memory would be useless; instead every pooled sandbox is an
entry of a store value ``meta:pool:<key>`` (one per pool key: provider, template, network and
limits), outside the ``sandbox:`` key space. So:

* any process claims atomically: one store transaction removes the oldest ready entry and
  inserts the user's ``sandbox:`` record for it, so two claimers can never get the same
  sandbox, and the owner is fixed at hand-out;
* a pooled sandbox is unreachable until then (no record, no owner: nobody can run code in it),
  and a handed-out sandbox never returns to the pool, so every hand-out is fresh;
* any process refills: a background thread of a long-lived process (kernel, API user), a
  detached ``python -m nexus_kernel.pool_fill`` started by the CLI, or ``nexus sandbox pool
  fill`` run by hand;
  a slot is reserved in a transaction before the sandbox is started, so the pool never holds
  more than ``pool_size`` entries however many fillers run;
* pooled sandboxes carry their own expiry (``pool_ttl_minutes``; the agent's watchdog enforces
  it too); the reaper destroys stale entries and leaves fresh ones alone.

Off unless ``NEXUS_POOL_SIZE`` > 0, and only for the providers in ``NEXUS_POOL_PROVIDERS``
(default ``local,docker``: cloud providers bill idle sandboxes, so they need opting in).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import threading
from typing import TYPE_CHECKING, Any, Protocol

from .errors import AgentError, InvalidArgumentError, SandboxError
from .models import SandboxRecord, SandboxSpec, Status
from .ttl import STALE_CREATING_SECONDS, expiry, watchdog_deadline

if TYPE_CHECKING:
    from .config import Settings
    from .providers import Provider
    from .store import Store
    from .ttl import Clock

#: Owner recorded on pooled sandboxes' specs (provider labels) until they are handed out.
POOL_OWNER = "__pool__"
#: Store meta names of the pools: ``pool:<key>``.
META_PREFIX = "pool:"
#: Entries this close to their pool expiry are not handed out (they are about to be reaped).
MIN_REMAINING_SECONDS = 30.0
REFILL_MODES = ("thread", "process", "off")


class PoolHost(Protocol):
    """What the pool uses of the manager that owns it (its only seam to the manager)."""

    settings: Settings
    store: Store
    #: Who a hand-out belongs to.
    user: str
    clock: Clock

    def provider(self, name: str) -> Provider:
        """The provider instance called ``name``."""
        ...

    def push_deadline(self, record: SandboxRecord) -> None:
        """Give the agent's watchdog and the provider the record's deadline (AgentError
        when the agent is unreachable)."""
        ...


class WarmPool:
    """The warm pool of one store, seen through one manager (its :class:`PoolHost`)."""

    def __init__(self, host: PoolHost):
        self.host = host
        self.settings = host.settings
        self.store = host.store
        self._filling: set[str] = set()  # pool keys a thread of this process is filling
        self._lock = threading.Lock()
        if self.settings.pool_refill not in REFILL_MODES:
            raise InvalidArgumentError(
                f"pool_refill (NEXUS_POOL_REFILL) must be one of {', '.join(REFILL_MODES)}, "
                f"got {self.settings.pool_refill!r}"
            )

    # ------------------------------------------------------------------ configuration

    @property
    def size(self) -> int:
        return max(0, int(self.settings.pool_size))

    def _providers(self) -> set[str]:
        return {p.strip() for p in self.settings.pool_providers.split(",") if p.strip()}

    def serves(self, provider: str) -> bool:
        """Whether ``create`` on ``provider`` uses the pool (size > 0, provider opted in)."""
        return self.size > 0 and provider in self._providers()

    def key(self, provider: str, template_id: str | None, network: bool) -> str:
        """The pool a sandbox belongs to: sandboxes are interchangeable only within one key."""
        lim = self.settings.limits
        if provider == "docker" and self.settings.docker_runtime:
            provider += "+" + self.settings.docker_runtime
        return (f"{provider}|{template_id or ''}|{'net' if network else 'nonet'}|"
                f"{lim.memory_mb}m|{lim.pids}p|{lim.cpus:g}c|{lim.disk_mb}d")

    # ------------------------------------------------------------------ hand-out

    def claim(self, *, name: str, ttl_minutes: float, provider: str, template_id: str | None,
              network: bool) -> SandboxRecord | None:
        """Hand out a pooled sandbox as the manager's user's new sandbox, or None when the
        pool has none ready. Starts a refill either way."""
        key = self.key(provider, template_id, network)
        try:
            for _ in range(max(1, self.size)):
                record = self._take(key, name, ttl_minutes)
                if record is None:
                    return None
                try:  # the pool's deadline becomes the user's (this also checks it is alive)
                    self.host.push_deadline(record)
                except AgentError:  # died in the pool: leave no trace, try the next one
                    with contextlib.suppress(SandboxError, OSError):
                        self.host.provider(record.provider).destroy(record.handle)
                    self.store.delete(record.sandbox_id)
                    continue
                return record
            return None
        finally:
            self.refill_soon(provider, template_id, network)

    def _take(self, key: str, name: str, ttl_minutes: float) -> SandboxRecord | None:
        """Move the oldest ready entry of pool ``key`` to a ``sandbox:`` record (one
        transaction: nobody else can take it, and it can never be taken again)."""
        now = self.host.clock()
        with self.store.transaction():
            entries: dict[str, dict[str, Any]] = self.store.get_meta(META_PREFIX + key) or {}
            ready = [e for e in entries.values()
                     if e["state"] == "ready" and e["expires_at"] - now > MIN_REMAINING_SECONDS]
            if not ready:
                return None
            entry = min(ready, key=lambda e: e["created_at"])
            del entries[entry["sandbox_id"]]
            self.store.set_meta(META_PREFIX + key, entries)
            record = SandboxRecord.new(
                sandbox_id=entry["sandbox_id"],
                name=name,
                owner=self.host.user,
                provider=entry["provider"],
                status=Status.ACTIVE,
                ttl_minutes=ttl_minutes,
                now=now,
                template_id=entry["template_id"],
                network=entry["network"],
                handle=entry["handle"],
            )
            data = record.to_dict()
            data["pooled_at"] = entry["created_at"]
            self.store.insert(data)
        return record

    # ------------------------------------------------------------------ filling

    def fill(self, provider: str | None = None, template_id: str | None = None,
             network: bool | None = None, *, size: int | None = None) -> list[str]:
        """Start sandboxes until pool (provider, template, network) holds ``size`` (default
        ``pool_size``) entries; returns the ids started here. Safe to run concurrently."""
        provider = provider or self.settings.provider
        if provider not in self._providers():
            raise InvalidArgumentError(
                f"the warm pool does not serve the {provider} provider; add it to "
                f"NEXUS_POOL_PROVIDERS (now {self.settings.pool_providers!r})"
            )
        network = self.settings.network if network is None else bool(network)
        size = self.size if size is None else max(0, int(size))
        key = self.key(provider, template_id, network)
        backend = self.host.provider(provider)
        started = []
        while True:
            entry = self._reserve(key, provider, template_id, network, size)
            if entry is None:
                return started
            spec = SandboxSpec(
                sandbox_id=entry["sandbox_id"],
                owner=POOL_OWNER,
                template_id=template_id,
                network=network,
                limits=self.settings.limits,
                deadline=watchdog_deadline(entry["expires_at"]),
                store_id=self.store.store_id,
            )
            try:
                handle = backend.create(spec)
            except BaseException:
                self._remove(key, entry["sandbox_id"])
                raise
            if not self._mark_ready(key, entry["sandbox_id"], handle):
                backend.destroy(handle)  # drained or reaped while it was starting
                continue
            started.append(entry["sandbox_id"])

    def _reserve(self, key: str, provider: str, template_id: str | None, network: bool,
                 size: int) -> dict[str, Any] | None:
        now = self.host.clock()
        entry = {
            "sandbox_id": "sb_" + secrets.token_hex(8),
            "state": "creating",
            "provider": provider,
            "template_id": template_id,
            "network": network,
            "handle": None,
            "created_at": now,
            "expires_at": expiry(now, self.settings.pool_ttl_minutes),
        }
        with self.store.transaction():
            entries = self.store.get_meta(META_PREFIX + key) or {}
            if len(entries) >= size:
                return None
            entries[entry["sandbox_id"]] = entry
            self.store.set_meta(META_PREFIX + key, entries)
        return entry

    def _mark_ready(self, key: str, sandbox_id: str, handle: dict[str, Any]) -> bool:
        with self.store.transaction():
            entries = self.store.get_meta(META_PREFIX + key) or {}
            if sandbox_id not in entries:
                return False
            entries[sandbox_id] = {**entries[sandbox_id], "state": "ready", "handle": handle}
            self.store.set_meta(META_PREFIX + key, entries)
            return True

    def _remove(self, key: str, sandbox_id: str) -> dict[str, Any] | None:
        with self.store.transaction():
            entries = self.store.get_meta(META_PREFIX + key) or {}
            entry = entries.pop(sandbox_id, None)
            if entry is not None:
                self.store.set_meta(META_PREFIX + key, entries)
            return entry

    def refill_soon(self, provider: str, template_id: str | None, network: bool) -> None:
        """Top the pool up in the background, as ``pool_refill`` says (thread / process / off)."""
        mode = self.settings.pool_refill
        if mode == "off" or not self.serves(provider):
            return
        key = self.key(provider, template_id, network)
        if mode == "process":
            self._spawn_filler(provider, template_id, network)
            return
        with self._lock:
            if key in self._filling:
                return
            self._filling.add(key)

        def work() -> None:
            try:
                self.fill(provider, template_id, network)
            except Exception:  # noqa: S110 - best effort; the next create tries again
                pass
            finally:
                with self._lock:
                    self._filling.discard(key)

        threading.Thread(target=work, name=f"nexus-pool-fill-{provider}", daemon=True).start()

    def _spawn_filler(self, provider: str, template_id: str | None, network: bool) -> None:
        """A detached filler (:mod:`nexus_kernel.pool_fill`) that outlives this (short-lived)
        process; it refills nothing itself (``NEXUS_POOL_REFILL=off``)."""
        import subprocess

        argv = [sys.executable, "-m", "nexus_kernel.pool_fill",
                "--provider", provider, "--size", str(self.size)]
        if template_id:
            argv += ["--template", template_id]
        argv.append("--network" if network else "--no-network")
        env = dict(os.environ, NEXUS_HOME=str(self.settings.home), NEXUS_POOL_REFILL="off",
                   NEXUS_DOCKER_RUNTIME=self.settings.docker_runtime)
        with contextlib.suppress(OSError):
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True, env=env)

    # ------------------------------------------------------------------ reaping

    def entries(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every pool of the store: ``{key: {sandbox_id: entry}}``."""
        return {name[len(META_PREFIX):]: self.store.get_meta(name) or {}
                for name in self.store.meta_keys(META_PREFIX)}

    def pooled_ids(self) -> set[str]:
        """Ids of every pooled sandbox (ready or starting): not orphans, whatever reconcile
        finds without a ``sandbox:`` record."""
        return {sid for entries in self.entries().values() for sid in entries}

    def reap(self, *, everything: bool = False) -> list[str]:
        """Destroy stale pooled sandboxes (past their pool expiry, or reserved but never
        ready); ``everything`` empties every pool (``nexus sandbox pool drain``)."""
        now = self.host.clock()
        doomed: list[dict[str, Any]] = []
        for key in self.entries():
            with self.store.transaction():
                entries = self.store.get_meta(META_PREFIX + key) or {}
                stale = [e for e in entries.values() if everything or _stale(e, now)]
                for entry in stale:
                    del entries[entry["sandbox_id"]]
                if stale:
                    self.store.set_meta(META_PREFIX + key, entries)
            doomed += stale
        for entry in doomed:
            if entry.get("handle"):
                with contextlib.suppress(SandboxError, OSError):
                    self.host.provider(entry["provider"]).destroy(entry["handle"])
        return [e["sandbox_id"] for e in doomed]

    def drain(self) -> list[str]:
        """Destroy every pooled sandbox of this store."""
        return self.reap(everything=True)

    def status(self) -> list[dict[str, Any]]:
        """One row per pool: key, ready and starting counts."""
        return [{"pool": key,
                 "ready": sum(1 for e in entries.values() if e["state"] == "ready"),
                 "starting": sum(1 for e in entries.values() if e["state"] == "creating"),
                 "size": self.size}
                for key, entries in sorted(self.entries().items())]


def _stale(entry: dict[str, Any], now: float) -> bool:
    if entry["state"] == "creating":
        return now - entry["created_at"] > STALE_CREATING_SECONDS
    return now >= entry["expires_at"]
