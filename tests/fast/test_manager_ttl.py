"""TTL cases the clock tests leave out: a new TTL for a paused sandbox, and the deadline the
agent's watchdog and the provider's timeout share."""

from __future__ import annotations

from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import Status
from nexus_kernel.ttl import expiry, watchdog_deadline

from ..fakes import memory
from .conftest import FakeClock


def test_a_paused_sandbox_keeps_a_new_ttl_for_its_resume(manager: SandboxManager,
                                                         clock: FakeClock) -> None:
    record = manager.create("sleeper", ttl_minutes=1)
    paused = manager.pause(record.sandbox_id)
    extended = list(memory.sandbox(record.handle).extended)
    touched = manager.touch(record.sandbox_id, ttl_minutes=7)
    assert touched.status is Status.PAUSED and touched.ttl_minutes == 7
    assert touched.expires_at == paused.expires_at  # a paused sandbox's clock stays stopped
    assert memory.sandbox(record.handle).extended == extended  # and nobody was told
    clock.advance(120)
    assert manager.resume(record.sandbox_id).expires_at == expiry(clock(), 7)


def test_agent_and_provider_always_get_the_same_deadline(manager: SandboxManager,
                                                         clock: FakeClock) -> None:
    record = manager.create("shared", ttl_minutes=3)
    sandbox = memory.sandbox(record.handle)
    assert sandbox.deadline == sandbox.extended[-1] == watchdog_deadline(record.expires_at)
    for step in (manager.touch, manager.resume):
        clock.advance(15)
        if step is manager.resume:
            manager.pause(record.sandbox_id)
        moved = step(record.sandbox_id)
        assert sandbox.deadline == sandbox.extended[-1] == watchdog_deadline(moved.expires_at)
    assert not sandbox.started
