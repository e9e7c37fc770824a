"""Reaping on a fake clock: expired and paused-too-long sandboxes, creating records whose
creator died or that took too long, records whose resource is gone, orphans, pruning."""

from __future__ import annotations

from nexus_kernel.config import STOPPED_RETENTION_SECONDS
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import SandboxRecord, SandboxSpec, Status
from nexus_kernel.reaper import ENDED_OUTSIDE
from nexus_kernel.store import process_identity
from nexus_kernel.ttl import STALE_CREATING_SECONDS

from ..fakes import memory
from .conftest import FakeClock


def creating(manager: SandboxManager, sandbox_id: str, creator: dict | None) -> SandboxRecord:
    """A ``creating`` record, as a create that has not finished (or never will) leaves."""
    record = SandboxRecord.new(sandbox_id=sandbox_id, name="half", owner=manager.user,
                               provider="memory", status=Status.CREATING, ttl_minutes=1,
                               now=manager.clock(), creator=creator)
    manager.store.insert(record.to_dict())
    return record


def test_expired_sandboxes_are_reaped_and_the_rest_kept(manager: SandboxManager,
                                                         clock: FakeClock) -> None:
    short = manager.create("short", ttl_minutes=1)
    long = manager.create("long", ttl_minutes=5)
    clock.advance(59)
    assert manager.reap_expired(force=True) == []
    clock.advance(1)
    assert manager.reap_expired(force=True) == [short.sandbox_id]
    assert manager.get(short.sandbox_id).error == "expired"
    assert not manager.provider("memory").alive(short.handle)
    assert manager.get(long.sandbox_id).status is Status.ACTIVE


def test_paused_sandboxes_are_kept_for_their_retention_only(manager: SandboxManager,
                                                            clock: FakeClock) -> None:
    record = manager.create("paused", ttl_minutes=1)
    manager.pause(record.sandbox_id)
    retention = manager.settings.paused_retention_minutes * 60
    clock.advance(retention - 1)
    assert manager.reap_expired(force=True) == []
    clock.advance(1)
    assert manager.reap_expired(force=True) == [record.sandbox_id]
    assert manager.get(record.sandbox_id).status is Status.STOPPED


def test_creating_records_of_a_dead_creator_are_reaped_at_once(manager: SandboxManager,
                                                               clock: FakeClock) -> None:
    dead = {**process_identity(), "start": -1}  # this pid, another start time: a dead process
    creating(manager, "sb_orphaned", dead)
    creating(manager, "sb_in_progress", process_identity())
    assert manager.reap_expired(force=True) == ["sb_orphaned"]
    assert manager.get("sb_orphaned").error == "its creator ended before it was ready"
    clock.advance(STALE_CREATING_SECONDS + 1)  # a live creator that never finished
    assert manager.reap_expired(force=True) == ["sb_in_progress"]


def test_records_whose_resource_is_gone_become_stopped(manager: SandboxManager) -> None:
    record = manager.create("vanishing")
    memory.sandbox(record.handle).end()  # killed outside nexus
    assert manager.reap()["gone"] == [record.sandbox_id]
    stopped = manager.get(record.sandbox_id)
    assert stopped.status is Status.STOPPED and stopped.error == ENDED_OUTSIDE
    assert memory.sandboxes() == []  # what it left is destroyed


def test_orphans_are_destroyed_and_known_sandboxes_kept(manager: SandboxManager,
                                                        clock: FakeClock) -> None:
    backend = manager.provider("memory")
    known = manager.create("known", ttl_minutes=1)
    unknown = backend.create(SandboxSpec(sandbox_id="sb_unknown", owner="tester",
                                         store_id=manager.store.store_id))
    elsewhere = backend.create(SandboxSpec(sandbox_id="sb_elsewhere", owner="tester",
                                           store_id="another-store"))
    assert manager.reap() == {"expired": [], "gone": [], "orphans": ["sb_unknown"],
                              "leftovers": []}
    assert not backend.alive(unknown) and backend.alive(elsewhere)
    assert backend.alive(known.handle)
    backend.destroy(elsewhere)


def test_stopped_records_are_pruned_after_their_retention(manager: SandboxManager,
                                                          clock: FakeClock) -> None:
    record = manager.create("done")
    manager.stop(record.sandbox_id)
    clock.advance(STOPPED_RETENTION_SECONDS)
    manager.reap_expired(force=True)
    assert [r.sandbox_id for r in manager.list()] == [record.sandbox_id]
    clock.advance(1)
    manager.reap_expired(force=True)
    assert manager.list() == []
