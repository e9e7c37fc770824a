"""A host restart: every process of the project SIGKILLed at once (jails, agents, network
helpers, the engine and its containers, the host clients) and the runtime state a reboot
clears removed (the cgroup tree, docker's exec root), or not.

The first command afterwards reconciles: no record claims an active sandbox that is gone,
nothing of the dead sandboxes (cgroup, directory, container, process) is left, and new
sandboxes work at once. On a real reboot the kernel's boot id changes, and the first command
of any kind runs a full reap; a crash that leaves the boot id alone (every process killed)
is caught by ``list``, which reconciles the records of providers that can ask cheaply.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_kernel import reaper
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import SandboxRecord, Status
from nexus_kernel.providers.cgroups import Cgroup

from ..conftest import ROOT
from ..security.conftest import Env, local_processes, provider_ready, wait_until
from .test_dockerd_restart import RUN, private_daemon  # noqa: F401 - the engine fixture

pytestmark = [pytest.mark.timeout(180)]


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def crash_local(env: Env, records: list[SandboxRecord], *, cgroups_gone: bool) -> None:
    """What a host restart does to local sandboxes and their host clients."""
    pids: set[int] = set()
    for record in records:
        handle = record.handle
        pids |= set(local_processes(handle))
        pids |= {p for p in (handle.get("pid"), handle.get("slirp_pid")) if p}
    _kill(pids)
    assert wait_until(lambda: not any(local_processes(r.handle) for r in records), 10)
    env.manager.close()  # the host process holding the API died too
    if cgroups_gone:  # a fresh boot's cgroup tree has none of them
        for record in records:
            cgroup = Cgroup.from_dict(record.handle.get("cgroup"))
            for path in (cgroup.paths.values() if cgroup else ()):
                assert wait_until(lambda p=path: _rmdir(p), 10), f"cannot remove {path}"


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def nexus(env: Env, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "nexus_kernel.cli", *args], cwd=ROOT,
                          env=env.environ(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def started(env: Env) -> list[SandboxRecord]:
    """Two sandboxes with state: one with a session, one with network when it can have one."""
    plain = env.manager.create("plain")
    env.manager.run(plain.sandbox_id, "python", "kept = 42", session="s")
    records = [plain]
    if shutil.which("slirp4netns"):
        records.append(env.manager.create("networked", network=True))
    return records


def assert_reconciled(env: Env, records: list[SandboxRecord], listed: dict) -> None:
    statuses = {s["sandbox_id"]: s["status"] for s in listed["sandboxes"]}
    for record in records:
        assert statuses[record.sandbox_id] == "stopped", listed
        env.assert_gone(record)


@pytest.mark.bwrap
@pytest.mark.parametrize("cgroups_gone", [False, True], ids=["cgroups-left", "cgroups-gone"])
def test_local_crash_is_reconciled_by_the_first_list(tmp_path: Path, cgroups_gone: bool):
    provider_ready("local")
    env = Env("local", tmp_path / "home")
    try:
        records = started(env)
        crash_local(env, records, cgroups_gone=cgroups_gone)

        listed = nexus(env, "sandbox", "list", "--json")  # the first command afterwards

        assert_reconciled(env, records, listed)
        stopped = SandboxManager(env.settings).get(records[0].sandbox_id)
        assert stopped.error == reaper.ENDED_OUTSIDE
        fresh = nexus(env, "sandbox", "create", "after-restart", "--json")
        ran = nexus(env, "sandbox", "run", fresh["sandbox_id"], "--json", "-c", "print(6*7)")
        assert ran["stdout"] == "42\n"
    finally:
        env.close()


@pytest.mark.bwrap
def test_after_a_reboot_the_first_command_of_any_kind_reconciles(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    """A new boot id: the first ``create`` (not a ``list``) finds the dead sandboxes, marks
    their records stopped and removes what they left, before it starts its own."""
    provider_ready("local")
    env = Env("local", tmp_path / "home")
    try:
        records = started(env)
        crash_local(env, records, cgroups_gone=False)
        monkeypatch.setattr(reaper, "host_boot_id", lambda: "a-later-boot")

        after = SandboxManager(env.settings, is_admin=True)
        fresh = after.create("after-reboot")

        for record in records:
            data = after.store.get(record.sandbox_id)
            assert data["status"] == "stopped" and data["error"] == reaper.ENDED_OUTSIDE, data
            env.assert_gone(record)
        assert after.run(fresh.sandbox_id, "bash", "echo fine").stdout == "fine\n"
        assert after.reap_expired(force=True) == []  # once per boot, not on every command
        after.stop(fresh.sandbox_id)
        after.close()
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.docker
def test_docker_host_crash_is_reconciled_by_the_first_list(private_daemon,  # noqa: F811
                                                            tmp_path: Path):
    """The engine, its containerd, the shims and the containers SIGKILLed at once, docker's
    exec root removed (a reboot clears /run), the engine started again."""
    env = Env("docker", tmp_path / "home", docker_host=private_daemon.host)
    try:
        record = env.manager.create("under-crash")
        env.manager.run(record.sandbox_id, "python", "kept = 42", session="s")
        victims = set(env.processes(record))
        proc = private_daemon.proc
        victims |= {proc.pid} | _processes_mentioning(str(RUN))
        _kill(victims)
        proc.wait(30)
        assert wait_until(lambda: not _processes_mentioning(str(RUN)), 10)
        env.manager.close()
        shutil.rmtree(RUN / "exec", ignore_errors=True)
        private_daemon.start()

        listed = SandboxManager(env.settings, is_admin=True).list()  # the first command

        assert [r.status for r in listed if r.sandbox_id == record.sandbox_id] == [Status.STOPPED]
        env.assert_gone(record, timeout=30)
        fresh = env.manager.create("after-crash")
        assert env.manager.run(fresh.sandbox_id, "bash", "echo fine").stdout == "fine\n"
    finally:
        env.close()


def _processes_mentioning(text: str) -> set[int]:
    """Pids whose command line mentions ``text`` (the private engine's containerd and shims)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in command:
                found.add(int(entry))
    return found
