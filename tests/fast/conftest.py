"""The fast layer: manager, reaper, pool and kernel-keeper logic on the in-memory provider
(tests/fakes/memory.py) and a fake clock, with no real sleeps (``tests/fast`` runs in a few
seconds). A test that runs code starts the real agent, as a host process, for that sandbox."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import Status

from ..fakes import memory


class FakeClock:
    """Epoch seconds that move only when told (starts at the real time: agents' watchdogs
    compare deadlines with their own real clock, so the fake one may only run ahead)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def memory_provider() -> Iterator[str]:
    """Provider "memory" registered for the test; no memory sandbox outlives it."""
    with memory.registered() as name:
        yield name


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_manager(nexus_home: Path, clock: FakeClock) -> Iterator[Callable[..., SandboxManager]]:
    """``make_manager(**settings)``: a manager of this test's store on the memory provider
    and the fake clock (the memory watchdog's clock too); stops what it left running."""
    made: list[SandboxManager] = []

    def make(**overrides: Any) -> SandboxManager:
        settings = Settings.load(**{"provider": "memory", "pool_providers": "memory",
                                    "pool_refill": "off", **overrides})
        manager = SandboxManager(settings, clock=clock,
                                 provider_options={"memory": {"clock": clock}})
        made.append(manager)
        return manager

    yield make
    for manager in made:
        for record in manager.list():
            if record.status is not Status.STOPPED:
                manager.stop(record.sandbox_id)
        manager.pool.drain()
        manager.close()


@pytest.fixture
def manager(make_manager: Callable[..., SandboxManager]) -> SandboxManager:
    return make_manager()
