"""Reaping and reconcile: ends what should no longer run and makes records match reality.

The manager delegates to :class:`Reaper` (its public ``reap_expired`` / ``reap`` stay the
entry points): expired sandboxes are destroyed, records whose resource is gone become
``stopped``, resources with our labels that the store does not know (or knows as ended) are
destroyed as orphans, and stopped records are pruned after ``STOPPED_RETENTION_SECONDS``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import STOPPED_RETENTION_SECONDS
from .errors import DiskFullError, SandboxNotFoundError
from .models import SandboxRecord, Status
from .providers import provider_class
from .store import process_alive
from .ttl import STALE_CREATING_SECONDS

if TYPE_CHECKING:
    from .manager import SandboxManager

#: The error a record gets when reconcile finds its resource gone.
ENDED_OUTSIDE = "the sandbox ended outside nexus (TTL watchdog, killed, or host restart)"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def host_boot_id() -> str:
    """This boot of the host's kernel (a new value after every restart); "" where unknown."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


class Reaper:
    """Ending sandboxes for one :class:`~nexus_kernel.manager.SandboxManager`."""

    def __init__(self, manager: SandboxManager):
        self.manager = manager
        self.store = manager.store

    # ---------------------------------------------------------------- entry points

    def reap_expired(self, *, force: bool = False) -> list[str]:
        """Stop every expired sandbox of this store (throttled unless ``force``). The first
        call after the host restarted runs a full :meth:`reap` instead (so no record claims
        a sandbox that died with the host, and what the dead ones left is removed, whatever
        command comes first)."""
        if self._new_host_boot():
            return self.reap()["expired"]
        return self._reap_expired(force)

    def _reap_expired(self, force: bool) -> list[str]:
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
        self._new_host_boot()  # this is the reap a new boot asks for
        expired = self._reap_expired(force=True)
        gone = []
        for data in self.store.records():
            record = SandboxRecord.from_dict(data)
            live = record.status in (Status.ACTIVE, Status.PAUSED)
            if live and self.reconcile(record).status is Status.STOPPED:
                gone.append(record.sandbox_id)
        orphans = self._reap_orphans()
        return {"expired": expired, "gone": gone, "orphans": orphans,
                "leftovers": self._remove_leftovers()}

    def _new_host_boot(self) -> bool:
        """True for the first caller (of any process) that sees this host boot, when the store
        holds records (a store that never had one has nothing a restart could have left, and
        its first command must not survey the providers: an unreachable cloud would stall it)."""
        boot = host_boot_id()
        if not boot or not self.store.claim_change("host_boot", boot):
            return False
        return next(iter(self.store.records()), None) is not None

    def sweep(self, records: list[SandboxRecord]) -> list[SandboxRecord]:
        """``records`` reconciled where that is cheap (providers whose ``alive_is_cheap``):
        a sandbox that ended without nexus (its jail or container killed, the host or the
        engine restarted) is shown, and recorded, as stopped, and its leftovers are gone."""
        swept = []
        for record in records:
            if record.status in (Status.ACTIVE, Status.PAUSED) and self._cheap(record.provider):
                record = self.reconcile(record)
            swept.append(record)
        return swept

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
            check = not provider_class(record.provider).alive_without_check
            backend = self.manager.provider(record.provider, check=check)
            alive = backend.alive(record.handle)
        except Exception:
            return record  # cannot tell right now; keep the record as it is
        if alive:
            return record
        self.manager.forget_client(record.sandbox_id)
        with contextlib.suppress(Exception):  # clean what the dead sandbox left (files, cgroups)
            backend.destroy(record.handle)
        try:
            return self._stopped(record.sandbox_id, error=ENDED_OUTSIDE)
        except DiskFullError:  # shown as it is now; recorded once space is freed
            return dataclasses.replace(record, status=Status.STOPPED,
                                       stopped_at=self.manager.clock(), error=ENDED_OUTSIDE)

    def end(self, record: SandboxRecord, reason: str | None) -> SandboxRecord:
        """Destroy the sandbox's resource and mark its record stopped (with ``reason``)."""
        self.manager.forget_client(record.sandbox_id)
        if record.handle:
            self.manager.provider(record.provider).destroy(record.handle)
        try:
            return self._stopped(record.sandbox_id, error=reason)
        except DiskFullError:
            # The resource is gone; the record cannot say so until space is freed, when
            # reconcile (any status, list --all, reap) finds the resource gone and marks it.
            return dataclasses.replace(record, status=Status.STOPPED,
                                       stopped_at=self.manager.clock(), error=reason)

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

    def doctor(self, *, repair: bool = False) -> dict[str, list[str]]:
        """Check the store against the providers' real resources (the survey reap uses) and,
        with ``repair``, make them agree: a live resource the store does not know is
        re-adopted when its handle lets nexus reach it again (a record owned by this
        manager's user is rebuilt), records whose resource is gone become stopped, dead
        resources are destroyed. A live resource that cannot be re-adopted is reported, never
        destroyed here (its agent ends it at its TTL). Without ``repair`` nothing changes."""
        report: dict[str, list[str]] = {"readopted": [], "adoptable": [], "not_adoptable": [],
                                        "gone": [], "unreachable": [], "orphans": []}
        for name, backend, resource in self._survey(report["unreachable"]):
            if self.store.get(resource["sandbox_id"]) is not None:
                continue
            handle = resource["handle"]
            try:
                alive = backend.alive(handle)
            except Exception:
                alive = True  # cannot tell: treat as running, never destroy it
            if not alive:
                continue  # dead leftovers: removed below as orphans
            if not handle.get("token"):
                report["not_adoptable"].append(resource["sandbox_id"])
            elif not repair:
                report["adoptable"].append(resource["sandbox_id"])
            else:
                self._adopt(name, handle, resource["sandbox_id"])
                report["readopted"].append(resource["sandbox_id"])
        for data in self.store.records():
            record = SandboxRecord.from_dict(data)
            if record.status not in (Status.ACTIVE, Status.PAUSED) or not record.handle:
                continue
            if repair:
                if self.reconcile(record).status is Status.STOPPED:
                    report["gone"].append(record.sandbox_id)
            else:
                with contextlib.suppress(Exception):
                    if not self.manager.provider(record.provider).alive(record.handle):
                        report["gone"].append(record.sandbox_id)
        if repair:
            skip = set(report["not_adoptable"])
            report["orphans"] = self._reap_orphans(skip=skip)
        return report

    def _adopt(self, provider: str, handle: dict[str, Any], sandbox_id: str) -> SandboxRecord:
        """A new active record for a running sandbox the store lost, its TTL from now."""
        settings = self.manager.settings
        record = SandboxRecord.new(
            sandbox_id=sandbox_id, name="readopted", owner=self.manager.user,
            provider=provider, status=Status.ACTIVE, ttl_minutes=settings.ttl_minutes,
            now=self.manager.clock(), handle=handle,
            error="re-adopted by nexus doctor after the store lost its record")
        self.store.insert(record.to_dict())
        with contextlib.suppress(Exception):
            self.manager.push_deadline(record)
        return record

    def _survey(self, unreachable: list[str] | None = None) -> Iterator[tuple[str, Any, dict]]:
        """(provider name, provider, resource) for every resource the providers run for this
        store, pooled ones left out (they wait for a user)."""
        pooled = self.manager.pool.pooled_ids()
        # a platform fork (E2B) may carry its source's labels: the record whose handle names
        # the resource claims it, whatever its labels say
        claims = {(d.get("provider"), d["handle"].get("sandbox_id")): d["sandbox_id"]
                  for d in self.store.records()
                  if isinstance(d.get("handle"), dict) and d["handle"].get("sandbox_id")}
        for name in self._providers_in_use():
            try:
                backend = self.manager.provider(name)
                resources = backend.list_resources(self.store.store_id)
            except Exception as exc:  # not reachable here: its agents end its sandboxes at TTL
                if unreachable is not None and name == self.manager.settings.provider:
                    unreachable.append(f"{name}: {exc}")
                continue
            for resource in resources:
                platform_id = resource["handle"].get("sandbox_id")
                if platform_id:
                    resource["sandbox_id"] = claims.get((name, platform_id),
                                                        resource["sandbox_id"])
                if resource["sandbox_id"] not in pooled:
                    yield name, backend, resource

    def _reap_orphans(self, skip: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Destroy resources of this store that no live record claims (``skip``: leave)."""
        orphans = []
        for _name, backend, resource in self._survey():
            if resource["sandbox_id"] in skip:
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

    def _remove_leftovers(self) -> list[str]:
        """Host-side state of no live sandbox of any store (see Provider.remove_leftovers)."""
        removed: list[str] = []
        for name in self._providers_in_use():
            with contextlib.suppress(Exception):
                removed += self.manager.provider(name).remove_leftovers()
        return removed

    def _cheap(self, provider: str) -> bool:
        try:
            return provider_class(provider).alive_is_cheap
        except Exception:  # unknown, or not importable here: nothing cheap to ask
            return False

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
