"""Reaping and reconcile: ends what should no longer run and makes records match reality.

The manager delegates to :class:`Reaper` (its public ``reap_expired`` / ``reap`` stay the
entry points): expired sandboxes are destroyed, records whose resource is gone become
``stopped``, resources with our labels that the store does not know (or knows as ended) are
destroyed as orphans, and stopped records are pruned after ``STOPPED_RETENTION_SECONDS``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .config import STOPPED_RETENTION_SECONDS
from .errors import SandboxNotFoundError
from .models import SandboxRecord, Status
from .store import process_alive
from .ttl import STALE_CREATING_SECONDS

if TYPE_CHECKING:
    from .manager import SandboxManager

#: The error a record gets when reconcile finds its resource gone.
ENDED_OUTSIDE = "the sandbox ended outside nexus (TTL watchdog, killed, or host restart)"


class Reaper:
    """Ending sandboxes for one :class:`~nexus_kernel.manager.SandboxManager`."""

    def __init__(self, manager: SandboxManager):
        self.manager = manager
        self.store = manager.store

    # ---------------------------------------------------------------- entry points

    def reap_expired(self, *, force: bool = False) -> list[str]:
        """Stop every expired sandbox of this store (throttled unless ``force``)."""
        if not force and not self.store.claim("last_reap", self.manager.settings.reap_interval):
            return []
        reaped = []
        now = self.manager.clock()
        for data in self.store.records():
            record = SandboxRecord.from_dict(data)
            if record.status is Status.STOPPED:
                if record.stopped_at and now - record.stopped_at > STOPPED_RETENTION_SECONDS:
                    self.store.delete(record.sandbox_id)
                continue
            if self.is_expired(record, now) and self._reap(record):
                reaped.append(record.sandbox_id)
        return reaped + self.manager.pool.reap()

    def reap(self) -> dict[str, list[str]]:
        """Full reap: expired sandboxes, records whose resource is gone, unknown resources."""
        expired = self.reap_expired(force=True)
        gone = []
        for data in self.store.records():
            record = SandboxRecord.from_dict(data)
            live = record.status in (Status.ACTIVE, Status.PAUSED)
            if live and self.reconcile(record).status is Status.STOPPED:
                gone.append(record.sandbox_id)
        orphans = self._reap_orphans()
        return {"expired": expired, "gone": gone, "orphans": orphans}

    # ---------------------------------------------------------------- one record

    def is_expired(self, record: SandboxRecord, now: float) -> bool:
        """Past its expiry, or creating for a creator that died (or took too long)."""
        if record.status is Status.CREATING:
            if record.creator is not None and not process_alive(record.creator):
                return True  # its creator was killed mid-create: nobody will finish it
            return now - record.created_at > STALE_CREATING_SECONDS
        return record.expires_at is not None and now >= record.expires_at

    def check(self, record: SandboxRecord) -> SandboxRecord:
        """The record after reaping it when it has expired."""
        if record.status is not Status.STOPPED and self.is_expired(record, self.manager.clock()):
            self._reap(record)
            data = self.store.get(record.sandbox_id)
            if data is None:
                raise SandboxNotFoundError(record.sandbox_id)
            return SandboxRecord.from_dict(data)
        return record

    def reconcile(self, record: SandboxRecord) -> SandboxRecord:
        """The record after asking the provider whether its resource still exists: when it
        is gone, what the dead sandbox left is cleaned and the record becomes stopped."""
        if record.status not in (Status.ACTIVE, Status.PAUSED) or not record.handle:
            return record
        try:
            backend = self.manager.provider(record.provider)
            alive = backend.alive(record.handle)
        except Exception:
            return record  # cannot tell right now; keep the record as it is
        if alive:
            return record
        self.manager.forget_client(record.sandbox_id)
        with contextlib.suppress(Exception):  # clean what the dead sandbox left (files, cgroups)
            backend.destroy(record.handle)
        return self._stopped(record.sandbox_id, error=ENDED_OUTSIDE)

    def end(self, record: SandboxRecord, reason: str | None) -> SandboxRecord:
        """Destroy the sandbox's resource and mark its record stopped (with ``reason``)."""
        self.manager.forget_client(record.sandbox_id)
        if record.handle:
            self.manager.provider(record.provider).destroy(record.handle)
        return self._stopped(record.sandbox_id, error=reason)

    # ---------------------------------------------------------------- internals

    def _reap(self, record: SandboxRecord) -> bool:
        try:
            with self.store.lock(record.sandbox_id):
                fresh = SandboxRecord.from_dict(self.store.get(record.sandbox_id) or record.to_dict())
                if fresh.status is Status.STOPPED or not self.is_expired(fresh, self.manager.clock()):
                    return False
                creating = fresh.status is Status.CREATING
                self.end(fresh, reason="its creator ended before it was ready" if creating
                         else "expired")
                return True
        except Exception:
            return False  # provider unreachable: retried on the next reap

    def _reap_orphans(self) -> list[str]:
        orphans = []
        for name in self._providers_in_use():
            try:
                backend = self.manager.provider(name)
                resources = backend.list_resources(self.store.store_id)
            except Exception:
                continue  # provider not reachable here: its agents end its sandboxes at TTL
            pooled = self.manager.pool.pooled_ids()  # waiting for a user: not orphans
            for resource in resources:
                if resource["sandbox_id"] in pooled:
                    continue
                data = self.store.get(resource["sandbox_id"])
                record = SandboxRecord.from_dict(data) if data else None
                if (
                    record is None
                    or record.status is Status.STOPPED
                    or self.is_expired(record, self.manager.clock())
                ):
                    backend.destroy(resource["handle"])
                    orphans.append(resource["sandbox_id"])
                    if record is not None and record.status is not Status.STOPPED:
                        self._stopped(record.sandbox_id)
        return orphans

    def _providers_in_use(self) -> list[str]:
        names = {self.manager.settings.provider, "local"} | self.manager.loaded_providers()
        names |= {d.get("provider", "") for d in self.store.records()}
        return sorted(n for n in names if n)

    def _stopped(self, sandbox_id: str, **changes: Any) -> SandboxRecord:
        def apply(data: dict[str, Any]) -> dict[str, Any]:
            data.update(status=Status.STOPPED.value, stopped_at=self.manager.clock(), **changes)
            return data

        data = self.store.update(sandbox_id, apply)
        if data is None:
            raise SandboxNotFoundError(sandbox_id)
        return SandboxRecord.from_dict(data)
