"""The in-memory provider itself: a lifecycle without processes, control requests answered
from memory, the real agent started only by a request that needs it."""

from __future__ import annotations

import pytest

from nexus_kernel.agent.client import AgentClient
from nexus_kernel.config import Settings
from nexus_kernel.errors import AgentError, InvalidArgumentError
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import SandboxSpec, Status
from nexus_kernel.providers import PROVIDERS, provider_class, register_provider
from nexus_kernel.ttl import watchdog_deadline

from ..fakes import memory
from .conftest import FakeClock


def test_registered_by_name_only_while_a_test_asks(memory_provider: str) -> None:
    assert provider_class(memory_provider) is memory.MemoryProvider
    assert Settings.load(provider=memory_provider).provider == "memory"
    with pytest.raises(InvalidArgumentError, match="already registered"):
        register_provider("memory", "tests.fakes.memory:MemoryProvider")
    assert list(PROVIDERS)[:4] == ["local", "docker", "e2b", "modal"]


def test_create_pause_resume_stop_start_no_process(manager: SandboxManager) -> None:
    record = manager.create("idle")
    sandbox = memory.sandbox(record.handle)
    manager.touch(record.sandbox_id)
    manager.pause(record.sandbox_id)
    assert sandbox.paused and sandbox.deadline is None  # the watchdog is off while paused
    resumed = manager.resume(record.sandbox_id)
    assert not sandbox.paused and sandbox.deadline == watchdog_deadline(resumed.expires_at)
    manager.interrupt(record.sandbox_id)
    manager.stop(record.sandbox_id)
    assert not sandbox.started and sandbox.vm is None and sandbox.ended
    assert memory.sandboxes() == []


def test_the_first_run_starts_the_agent_with_the_recorded_deadline(manager: SandboxManager) -> None:
    record = manager.create("busy")
    sandbox = memory.sandbox(record.handle)
    manager.touch(record.sandbox_id)
    assert not sandbox.started
    assert manager.run(record.sandbox_id, "python", "x = 6 * 7; print(x)", session="s").stdout == "42\n"
    assert sandbox.started and sandbox.agent.poll() is None
    backend = manager.provider("memory")
    with AgentClient(lambda: backend.connect(record.handle), record.handle["token"]) as client:
        assert [s["session"] for s in client.sessions()] == ["s"]  # now the agent answers
    manager.stop(record.sandbox_id)
    assert sandbox.agent.poll() is not None and not sandbox.vm.root.exists()


def test_a_client_with_another_token_sends_nothing(make_manager, clock: FakeClock) -> None:
    backend = make_manager().provider("memory")
    handle = backend.create(SandboxSpec(sandbox_id="sb_token", owner="tester"))
    with (AgentClient(lambda: backend.connect(handle), "wrong") as client,
          pytest.raises(AgentError, match="did not prove it is the agent")):
        client.set_deadline(clock() + 60)  # the handshake fails before the request
    assert memory.sandbox(handle).deadline is None
    backend.destroy(handle)


def test_malformed_control_requests_go_to_the_agent(make_manager) -> None:
    backend = make_manager().provider("memory")
    handle = backend.create(SandboxSpec(sandbox_id="sb_bad", owner="tester"))
    with (AgentClient(lambda: backend.connect(handle), handle["token"]) as client,
          pytest.raises(InvalidArgumentError, match="at must be an epoch time")):
        client.set_deadline("soon")  # type: ignore[arg-type]
    backend.destroy(handle)


def test_the_watchdog_ends_an_idle_sandbox_at_its_deadline(make_manager, clock: FakeClock) -> None:
    manager = make_manager()
    record = manager.create("forgotten", ttl_minutes=1)
    backend = manager.provider("memory")
    clock.advance(60)  # the store's expiry: the watchdog's slack is still running
    assert backend.alive(record.handle)
    clock.advance(watchdog_deadline(0))
    assert not backend.alive(record.handle)
    assert backend.list_resources(manager.store.store_id) == []
    with pytest.raises(ConnectionRefusedError):
        backend.connect(record.handle)
    assert manager.status(record.sandbox_id).status is Status.STOPPED  # reaped by the host too
