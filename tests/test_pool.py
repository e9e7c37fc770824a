"""Warm pool (``nexus_kernel/pool.py``) on real local sandboxes: hand-outs are fresh and
owned, never shared, the pool stays bounded, refills, is off by default, and its stale
sandboxes are reaped."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import SandboxNotFoundError
from nexus_kernel.manager import SandboxManager
from nexus_kernel.pool import META_PREFIX, WarmPool

from .conftest import needs_bwrap, nexus

pytestmark = [needs_bwrap]


def wait_until(check: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def make(nexus_home: Path) -> Iterator[Callable[..., SandboxManager]]:
    """Managers on one store (``make(user, pool_size=2, ...)``); everything is torn down."""
    managers: list[SandboxManager] = []

    def factory(user: str = "alice", **settings: Any) -> SandboxManager:
        settings.setdefault("pool_size", 2)
        settings.setdefault("pool_refill", "off")
        manager = SandboxManager(Settings.load(**settings), user=user, is_admin=True)
        managers.append(manager)
        return manager

    yield factory
    for manager in managers:
        for record in manager.list(all_users=True):
            if record.status.value != "stopped":
                manager.stop(record.sandbox_id)
        manager.pool.drain()
        manager.close()


def pooled_at(manager: SandboxManager, sandbox_id: str) -> float | None:
    """When the sandbox entered the pool (None: it was created on demand)."""
    return (manager.store.get(sandbox_id) or {}).get("pooled_at")


def ready(pool: WarmPool) -> int:
    return sum(row["ready"] for row in pool.status())


def test_off_by_default_and_for_cloud_providers(nexus_home: Path) -> None:
    settings = Settings.load()
    assert settings.pool_size == 0
    manager = SandboxManager(settings, user="alice")
    try:
        assert not manager.pool.serves("local")
        record = manager.create("plain")
        assert pooled_at(manager, record.sandbox_id) is None
        assert manager.pool.status() == []  # nothing was started ahead
        manager.stop(record.sandbox_id)
    finally:
        manager.close()
    sized = WarmPool(SandboxManager(Settings.load(pool_size=3)))
    assert sized.serves("local") and sized.serves("docker")
    assert not sized.serves("e2b") and not sized.serves("modal")  # billed: opt in by name
    assert WarmPool(SandboxManager(Settings.load(pool_size=3, pool_providers="local,e2b"))).serves("e2b")


def test_hand_out_is_fresh_owned_and_never_reused(make: Callable[..., SandboxManager]) -> None:
    alice, bob = make("alice"), make("bob")
    assert len(alice.pool.fill()) == 2
    a = alice.create("a", ttl_minutes=5)
    assert pooled_at(alice, a.sandbox_id) is not None
    assert a.owner == "alice" and a.status.value == "active"
    assert a.expires_at == pytest.approx(time.time() + 300, abs=30)
    alice.run(a.sandbox_id, "bash", "echo secret > mine.txt; sleep 600 > /dev/null 2>&1 &")
    alice.run(a.sandbox_id, "python", "x = 41", session="s")

    b = bob.create("b")
    assert pooled_at(bob, b.sandbox_id) is not None and b.sandbox_id != a.sandbox_id
    assert b.owner == "bob"
    assert bob.run(b.sandbox_id, "bash", "ls -A").stdout == ""
    procs = bob.run(b.sandbox_id, "bash", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "sleep" not in procs and "worker-python" not in procs
    assert a.sandbox_id not in alice.pool.pooled_ids()  # a used sandbox never goes back
    with pytest.raises(SandboxNotFoundError):
        SandboxManager(alice.settings, user="bob").status(a.sandbox_id)  # still alice's


def test_concurrent_claimers_never_get_the_same_sandbox(make: Callable[..., SandboxManager]) -> None:
    filler = make("filler", pool_size=4)
    assert len(filler.pool.fill()) == 4
    claimers = [make(f"user{i}", pool_size=4) for i in range(8)]  # each its own store handle
    barrier = threading.Barrier(len(claimers))
    got: dict[str, Any] = {}

    def claim(manager: SandboxManager) -> None:
        barrier.wait()
        got[manager.user] = manager.create("race")

    threads = [threading.Thread(target=claim, args=(m,)) for m in claimers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(got) == 8
    ids = [r.sandbox_id for r in got.values()]
    assert len(set(ids)) == 8
    from_pool = [r for r in got.values() if pooled_at(filler, r.sandbox_id) is not None]
    assert len(from_pool) == 4
    assert all(filler.store.get(r.sandbox_id)["owner"] == user for user, r in got.items())
    assert filler.pool.pooled_ids() == set()


def test_concurrent_claimers_across_processes(make: Callable[..., SandboxManager]) -> None:
    manager = make("tester")
    assert len(manager.pool.fill()) == 2
    env = {**os.environ, "NEXUS_POOL_SIZE": "2", "NEXUS_POOL_REFILL": "off"}
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-m", "nexus_kernel.cli", "sandbox", "create",
                               f"p{i}", "--json"], stdout=subprocess.PIPE, text=True, env=env)
             for i in range(4)]
    ids = [json.loads(p.communicate(timeout=120)[0])["sandbox_id"] for p in procs]
    assert len(set(ids)) == 4
    assert sum(1 for sid in ids if pooled_at(manager, sid) is not None) == 2


def test_pool_is_bounded_even_with_concurrent_fillers(make: Callable[..., SandboxManager]) -> None:
    one, two = make("a", pool_size=3), make("b", pool_size=3)
    threads = [threading.Thread(target=m.pool.fill) for m in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(one.pool.pooled_ids()) == 3 and ready(one.pool) == 3
    assert one.pool.fill() == []
    assert one.pool.fill(size=1) == []  # a smaller target never shrinks or grows it


def test_refill_in_the_background(make: Callable[..., SandboxManager]) -> None:
    manager = make("alice", pool_refill="thread")
    manager.pool.fill()
    first = manager.create("one")
    assert pooled_at(manager, first.sandbox_id) is not None
    assert wait_until(lambda: ready(manager.pool) == 2, 60)
    assert first.sandbox_id not in manager.pool.pooled_ids()


def test_cli_refills_with_a_detached_filler(nexus_home: Path, make: Callable[..., SandboxManager]) -> None:
    manager = make("tester")
    env = {"NEXUS_POOL_SIZE": "2"}
    out = nexus("sandbox", "pool", "fill", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["started"]) == 2
    created = nexus("sandbox", "create", "cli", "--json", env=env)
    sid = json.loads(created.stdout)["sandbox_id"]
    assert pooled_at(manager, sid) is not None
    assert wait_until(lambda: ready(manager.pool) == 2, 60)  # the CLI process is long gone
    status = json.loads(nexus("sandbox", "pool", "status", "--json", env=env).stdout)
    assert status["pools"][0]["ready"] == 2
    drained = json.loads(nexus("sandbox", "pool", "drain", "--json", env=env).stdout)
    assert len(drained["removed"]) == 2 and manager.pool.pooled_ids() == set()


def test_stale_pooled_sandboxes_are_reaped_fresh_ones_kept(make: Callable[..., SandboxManager]) -> None:
    manager = make("alice")
    stale_id, fresh_id = manager.pool.fill()
    key = next(iter(manager.pool.entries()))
    with manager.store.transaction():
        entries = manager.store.get_meta(META_PREFIX + key)
        entries[stale_id]["expires_at"] = time.time() - 1
        manager.store.set_meta(META_PREFIX + key, entries)
    entries = manager.pool.entries()[key]
    backend = manager.provider("local")
    stale_handle, fresh_handle = entries[stale_id]["handle"], entries[fresh_id]["handle"]

    result = manager.reap()  # expired + reconcile + orphans
    assert stale_id in result["expired"]
    assert fresh_id not in result["orphans"]
    assert not backend.alive(stale_handle) and not Path(stale_handle["dir"]).exists()
    assert backend.alive(fresh_handle)
    assert manager.pool.pooled_ids() == {fresh_id}


def test_dead_pooled_sandbox_is_skipped(make: Callable[..., SandboxManager]) -> None:
    manager = make("alice", pool_size=1)
    (dead_id,) = manager.pool.fill()
    handle = manager.pool.entries()[next(iter(manager.pool.entries()))][dead_id]["handle"]
    manager.provider("local").destroy(handle)
    record = manager.create("fallback")
    assert record.sandbox_id != dead_id
    assert manager.store.get(dead_id) is None  # no stopped record the user never made
    assert manager.run(record.sandbox_id, "python", "print(6 * 7)").stdout == "42\n"


def test_stop_of_a_handed_out_sandbox(make: Callable[..., SandboxManager]) -> None:
    manager = make("alice")
    manager.pool.fill()
    record = manager.create("then-stopped")
    assert pooled_at(manager, record.sandbox_id) is not None
    assert manager.run(record.sandbox_id, "python", "print('hi')", session="s").stdout == "hi\n"
    stopped = manager.stop(record.sandbox_id)
    assert stopped.status.value == "stopped"
    backend = manager.provider("local")
    assert not backend.alive(record.handle) and not Path(record.handle["dir"]).exists()
