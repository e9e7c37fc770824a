"""The warm pool on the memory provider and a fake clock: claims, bounds, staleness."""

from __future__ import annotations

import threading
from collections.abc import Callable

from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import Status
from nexus_kernel.pool import MIN_REMAINING_SECONDS
from nexus_kernel.ttl import watchdog_deadline

from ..fakes import memory
from .conftest import FakeClock

Make = Callable[..., SandboxManager]


def test_claims_hand_out_the_oldest_ready_sandbox_then_start_fresh(make_manager: Make,
                                                                   clock: FakeClock) -> None:
    manager = make_manager(pool_size=2)
    first = manager.pool.fill(size=1)
    clock.advance(1)
    second = manager.pool.fill()
    assert len(first + second) == 2
    handed = [manager.create(f"user-{i}").sandbox_id for i in range(3)]
    assert handed[:2] == first + second
    assert handed[2] not in first + second  # the pool was empty (refill off): a fresh one
    record = manager.get(handed[0])
    assert (record.owner, record.name, record.status) == ("tester", "user-0", Status.ACTIVE)
    assert manager.pool.status()[0]["ready"] == 0


def test_a_pooled_sandbox_is_never_handed_out_twice(make_manager: Make) -> None:
    pooled = set(make_manager(pool_size=4).pool.fill())
    managers = [make_manager(pool_size=4) for _ in range(8)]
    got: list[str] = []
    lock = threading.Lock()

    def claim(manager: SandboxManager) -> None:
        sandbox_id = manager.create("racer").sandbox_id
        with lock:
            got.append(sandbox_id)

    threads = [threading.Thread(target=claim, args=(m,)) for m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == len(set(got)) == 8
    assert pooled <= set(got)


def test_fillers_together_never_exceed_the_pool_size(make_manager: Make) -> None:
    managers = [make_manager(pool_size=3) for _ in range(6)]
    threads = [threading.Thread(target=m.pool.fill) for m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(memory.sandboxes()) == 3  # slots are reserved before anything starts
    assert managers[0].pool.status()[0]["ready"] == 3
    assert managers[0].pool.fill() == []


def test_stale_entries_are_not_handed_out_and_are_reaped(make_manager: Make,
                                                         clock: FakeClock) -> None:
    manager = make_manager(pool_size=1)
    (pooled,) = manager.pool.fill()
    handle = next(iter(manager.pool.entries().values()))[pooled]["handle"]
    clock.advance(manager.settings.pool_ttl_minutes * 60 - MIN_REMAINING_SECONDS)
    assert manager.create("late").sandbox_id != pooled  # about to expire: not handed out
    assert manager.reap()["orphans"] == []  # waiting for a user: not an orphan
    assert manager.pool.reap() == []
    clock.advance(MIN_REMAINING_SECONDS)
    assert manager.pool.reap() == [pooled]
    assert not manager.provider("memory").alive(handle)
    assert manager.pool.pooled_ids() == set()


def test_hand_out_gives_the_agent_the_users_deadline(make_manager: Make, clock: FakeClock) -> None:
    manager = make_manager(pool_size=1)
    (pooled,) = manager.pool.fill()
    handle = next(iter(manager.pool.entries().values()))[pooled]["handle"]
    pool_deadline = memory.sandbox(handle).deadline
    assert pool_deadline == watchdog_deadline(clock() + manager.settings.pool_ttl_minutes * 60)
    clock.advance(30)
    record = manager.create("mine", ttl_minutes=2)
    assert memory.sandbox(handle).deadline == watchdog_deadline(record.expires_at) == clock() + 125
    assert not memory.sandbox(handle).started  # the deadline was answered without a process


def test_a_pooled_sandbox_that_died_is_dropped_and_the_next_one_used(make_manager: Make,
                                                                     clock: FakeClock) -> None:
    manager = make_manager(pool_size=2)
    first = manager.pool.fill(size=1)[0]
    clock.advance(1)
    second = manager.pool.fill()[0]
    entries = next(iter(manager.pool.entries().values()))
    memory.sandbox(entries[first]["handle"]).end()  # died while waiting
    assert manager.create("survivor").sandbox_id == second
    assert manager.store.get(first) is None  # no trace of the dead one
