"""TTL in one place, driven by an injected clock: expiry arithmetic, reaping, the kernel's
TTL keeper and ``Provider.extend`` are checked by moving a fake clock, never by sleeping, on
the in-memory provider. Also the kernel's settings (read once by ``Settings``) and the
detached pool filler's entry."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import InvalidArgumentError
from nexus_kernel.kernel.keeper import TtlKeeper
from nexus_kernel.kernel.sandbox import KernelSandbox
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import AT_CAP, HARD_END, SandboxRecord, Status, iso
from nexus_kernel.ttl import COALESCE_SECONDS, WATCHDOG_SLACK_SECONDS, expiry, watchdog_deadline
from nexus_kernel.validation import MAX_TIMEOUT

from ..fakes import memory
from .conftest import FakeClock

# ---------------------------------------------------------------------- pure arithmetic


def test_ttl_arithmetic_lives_in_one_module() -> None:
    assert expiry(1000.0, 10) == 1600.0
    assert expiry(1000.0, 10, extra=30) == 1630.0
    assert watchdog_deadline(1600.0) == 1600.0 + WATCHDOG_SLACK_SECONDS
    record = SandboxRecord.new(sandbox_id="sb_x", name="n", owner="o", provider="local",
                               status=Status.ACTIVE, ttl_minutes=2, now=500.0, network=True)
    assert (record.created_at, record.last_active_at, record.expires_at) == (500.0, 500.0, 620.0)
    assert record.network is True


# ---------------------------------------------------------------------- kernel settings


def test_kernel_settings_are_read_once_with_their_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NEXUS_TEMPLATE", "NEXUS_CELL_TIMEOUT", "NEXUS_KERNEL_SANDBOX",
                 "NEXUS_KERNEL_KEEP", "NEXUS_KERNEL_REATTACH"):
        monkeypatch.delenv(name, raising=False)
    plain = Settings.load()
    assert (plain.template, plain.cell_timeout, plain.kernel_sandbox) == ("", MAX_TIMEOUT, "")
    assert plain.kernel_keep is None and plain.kernel_reattach is False

    monkeypatch.setenv("NEXUS_TEMPLATE", "tpl")
    monkeypatch.setenv("NEXUS_CELL_TIMEOUT", "90")
    monkeypatch.setenv("NEXUS_KERNEL_SANDBOX", "sb_1")
    monkeypatch.setenv("NEXUS_KERNEL_KEEP", "off")
    monkeypatch.setenv("NEXUS_KERNEL_REATTACH", "yes")
    loaded = Settings.load()
    assert (loaded.template, loaded.cell_timeout, loaded.kernel_sandbox) == ("tpl", 90.0, "sb_1")
    assert loaded.kernel_keep is False and loaded.kernel_reattach is True
    assert Settings.env_source("cell_timeout") == "NEXUS_CELL_TIMEOUT"
    assert Settings.env_source("kernel_keep") == "NEXUS_KERNEL_KEEP"

    for name, value, message in [
        ("NEXUS_KERNEL_KEEP", "maybe", "NEXUS_KERNEL_KEEP takes on or off, got 'maybe'"),
        ("NEXUS_KERNEL_REATTACH", "2", "NEXUS_KERNEL_REATTACH takes on or off, got '2'"),
        ("NEXUS_CELL_TIMEOUT", "soon", "NEXUS_CELL_TIMEOUT must be a number of seconds; got 'soon'"),
        ("NEXUS_CELL_TIMEOUT", "0", "timeout must be > 0 and <= 86400 seconds, got 0.0"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(InvalidArgumentError) as error:
                Settings.load()
            assert str(error.value) == message


def test_kernel_sandbox_takes_its_settings_from_the_manager(nexus_home: Path) -> None:
    attached = SandboxManager(Settings.load(kernel_sandbox="sb_1", template="tpl"))
    sandbox = KernelSandbox(attached, "k")
    assert (sandbox.sandbox_id, sandbox.attached, sandbox.keep) == ("sb_1", True, True)
    assert sandbox.template_id == "tpl" and sandbox.cell_timeout == MAX_TIMEOUT
    dropped = KernelSandbox(SandboxManager(Settings.load(kernel_sandbox="sb_1", kernel_keep=False,
                                                         cell_timeout=5.0)), "k")
    assert dropped.keep is False and dropped.cell_timeout == 5.0
    fresh = KernelSandbox(SandboxManager(Settings.load()), "k")
    assert (fresh.sandbox_id, fresh.keep, fresh.reattach, fresh.template_id) == (None, False, False, None)


def test_the_detached_pool_filler_does_not_import_the_cli() -> None:
    code = ("import sys, nexus_kernel.pool_fill\n"
            "assert 'nexus_kernel.cli' not in sys.modules, 'CLI imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------- on the memory provider


def deadlines(record: SandboxRecord) -> list[float]:
    """The deadlines the provider was told for ``record``'s sandbox (``Provider.extend``)."""
    return memory.sandbox(record.handle).extended


def test_ttl_follows_the_clock_without_sleeping(manager: SandboxManager, clock: FakeClock) -> None:
    start = clock()
    record = manager.create("clocked", ttl_minutes=1)
    assert (record.created_at, record.expires_at) == (start, start + 60)

    clock.advance(40)
    manager.run(record.sandbox_id, "python", "print(1)", timeout=10)
    after_run = manager.get(record.sandbox_id)
    assert after_run.last_active_at == start + 40
    assert after_run.expires_at == start + 40 + 60  # the reserved timeout is given back

    clock.advance(30)
    assert manager.get(record.sandbox_id).status is Status.ACTIVE  # extended by the run
    paused = manager.pause(record.sandbox_id)
    assert paused.expires_at == start + 70 + manager.settings.paused_retention_minutes * 60
    clock.advance(3600)  # a paused sandbox's clock stops
    resumed = manager.resume(record.sandbox_id)
    assert resumed.expires_at == start + 3670 + 60

    clock.advance(61)
    reaped = manager.get(record.sandbox_id)
    assert reaped.status is Status.STOPPED and reaped.error == "expired"
    assert reaped.stopped_at == start + 3731
    assert not manager.provider("memory").alive(record.handle)


def test_extend_gets_the_deadline_the_agent_gets(manager: SandboxManager, clock: FakeClock) -> None:
    record = manager.create("extended", ttl_minutes=2)
    assert deadlines(record) == [watchdog_deadline(record.expires_at)]  # create

    clock.advance(10)
    manager.run(record.sandbox_id, "bash", "true", timeout=20)  # TTL + the run's timeout
    assert deadlines(record)[-1] == clock() + 120 + 20 + WATCHDOG_SLACK_SECONDS

    clock.advance(10)
    touched = manager.touch(record.sandbox_id, ttl_minutes=5)
    assert deadlines(record)[-1] == watchdog_deadline(touched.expires_at) == clock() + 305

    manager.pause(record.sandbox_id)
    count = len(deadlines(record))
    clock.advance(10)
    resumed = manager.resume(record.sandbox_id)
    assert deadlines(record)[count:] == [watchdog_deadline(resumed.expires_at)]


def test_runs_seconds_apart_write_the_store_once_each_with_the_exact_ttl(
        manager: SandboxManager, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    record = manager.create("busy", ttl_minutes=2)
    sid = record.sandbox_id
    manager.run(sid, "bash", "true", timeout=20)
    writes: list[str] = []
    update = manager.store.update
    monkeypatch.setattr(manager.store, "update", lambda *a: writes.append(a[0]) or update(*a))

    clock.advance(COALESCE_SECONDS - 1)
    manager.run(sid, "bash", "true", timeout=20)
    assert writes == [sid]  # the run's end only: the stored expiry already outlived the run
    assert deadlines(record)[-1] == clock() + 120 + 20 + WATCHDOG_SLACK_SECONDS  # exact
    after = manager.get(sid)
    assert (after.last_active_at, after.expires_at) == (clock(), clock() + 120)

    clock.advance(COALESCE_SECONDS + 1)  # the stored expiry would lag the TTL by more
    manager.run(sid, "bash", "true", timeout=20)
    clock.advance(1)
    manager.run(sid, "bash", "true", timeout=118)  # would outlive the stored expiry
    assert writes == [sid] * 5
    assert deadlines(record)[-1] == clock() + 120 + 118 + WATCHDOG_SLACK_SECONDS


def test_pool_hand_out_moves_the_deadline_to_the_users(
        make_manager: Callable[..., SandboxManager], clock: FakeClock) -> None:
    manager = make_manager(pool_size=1)
    (pooled_id,) = manager.pool.fill()
    entry = next(iter(manager.pool.entries().values()))[pooled_id]
    assert entry["expires_at"] == clock() + manager.settings.pool_ttl_minutes * 60
    assert [sb.extended for sb in memory.sandboxes()] == [[]]  # the pool's deadline travels in the create spec
    clock.advance(5)
    record = manager.create("from-pool", ttl_minutes=3)
    assert record.sandbox_id == pooled_id
    assert record.expires_at == clock() + 180
    assert deadlines(record) == [watchdog_deadline(record.expires_at)]


def test_keeper_warns_then_announces_expiry_on_the_fake_clock(
        manager: SandboxManager, clock: FakeClock) -> None:
    warnings: list[str] = []
    sandbox = KernelSandbox(manager, "kernel")
    sandbox.ttl_minutes = 2
    sandbox_id, _ = sandbox.ensure()
    keeper = TtlKeeper(sandbox, warnings.append)

    assert keeper.tick() == pytest.approx(min(keeper.period(), 120 - 60))
    assert warnings == []
    sandbox.busy = True  # a long cell: the keeper extends the TTL from now
    clock.advance(100)
    keeper.tick()
    assert manager.get(sandbox_id).expires_at == clock() + 120
    sandbox.busy = False

    clock.advance(90)  # 30 s left, within the warning lead
    keeper.tick()
    assert len(warnings) == 1 and "expires in 30 s" in warnings[0]
    keeper.tick()
    assert len(warnings) == 1  # once per expiry

    clock.advance(31)
    keeper.tick()
    assert len(warnings) == 2 and f"sandbox {sandbox_id} expired" in warnings[1]
    assert manager.get(sandbox_id).status is Status.STOPPED


def test_keeper_warns_once_ahead_of_the_platforms_runtime_cap(
        manager: SandboxManager, clock: FakeClock) -> None:
    """A provider's runtime cap (the handle's hard end, e.g. E2B's plan limit) ends the
    sandbox whatever its TTL: the keeper warns ahead of it, busy or idle."""
    warnings: list[str] = []
    sandbox = KernelSandbox(manager, "kernel")
    sandbox.ttl_minutes = 30
    sandbox_id, _ = sandbox.ensure()
    end = clock() + 1200
    manager.store.update(
        sandbox_id, lambda data: {**data, "handle": {**data["handle"], HARD_END: end}})
    keeper = TtlKeeper(sandbox, warnings.append)
    keeper.tick()
    assert warnings == []
    assert manager.status(sandbox_id).public(clock())["hard_end_at"] == iso(end)
    sandbox.busy = True  # a long cell: the TTL moves, the cap does not
    clock.advance(700)
    keeper.tick()
    assert len(warnings) == 1, warnings
    assert f"ends sandbox {sandbox_id} in 8 min ({iso(end)}), whatever its TTL" in warnings[0]
    keeper.tick()
    assert len(warnings) == 1  # once per hard end
    # E2B with auto-pause: the warning says what happens there; a resume at the cap moves
    # the hard end, and the next one is warned of again
    end = clock() + 540
    manager.store.update(sandbox_id, lambda data: {
        **data, "handle": {**data["handle"], HARD_END: end, AT_CAP: "pause"}})
    keeper.tick()
    assert len(warnings) == 2, warnings
    assert f"pauses sandbox {sandbox_id} in 9 min ({iso(end)}), whatever its TTL" in warnings[1]
    assert "The next cell resumes it where it was (variables kept)" in warnings[1]
