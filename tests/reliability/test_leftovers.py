"""Host-side leftovers: empty ``nexus/sb_*`` cgroups that no store will ever destroy (their
state directory was deleted, their host process killed) are removed by any store's reap on
the host, while another store's live sandbox keeps its cgroups and keeps working."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager
from nexus_kernel.providers import cgroups
from nexus_kernel.providers.cgroups import Cgroup

from ..security.conftest import ATTACK_LIMITS, provider_ready

pytestmark = [pytest.mark.timeout(120), pytest.mark.bwrap]


def manager(home: Path) -> SandboxManager:
    settings = Settings.load(home=home, user="tester", provider="local", **ATTACK_LIMITS)
    return SandboxManager(settings, is_admin=True)


def stray_cgroup(age: float) -> list[str]:
    """An empty ``nexus/sb_*`` cgroup in every hierarchy, ``age`` seconds old."""
    name = "sb_stray" + secrets.token_hex(4)
    made = []
    for fstype, mount_point, _ in cgroups._mounts():
        top = os.path.join(mount_point, "nexus")
        if fstype in ("cgroup", "cgroup2") and os.path.isdir(top):
            path = os.path.join(top, name)
            os.mkdir(path)
            then = time.time() - age
            os.utime(path, (then, then))
            made.append(path)
    return made


def test_any_stores_reap_removes_empty_sandbox_cgroups_and_spares_live_ones(tmp_path: Path):
    provider_ready("local")
    other = manager(tmp_path / "other")
    live = other.create("live")
    live_cgroup = Cgroup.from_dict(live.handle.get("cgroup"))
    if live_cgroup is None:
        pytest.skip("no usable cgroup hierarchy on this host")
    stale = stray_cgroup(age=cgroups.LEFTOVER_GRACE_SECONDS + 60)
    young = stray_cgroup(age=0)
    assert stale and young, "cannot make cgroups here (needs root)"

    report = manager(tmp_path / "mine").reap()

    assert set(stale) <= set(report["leftovers"]), report
    assert not any(os.path.isdir(p) for p in stale)
    assert all(os.path.isdir(p) for p in young), "one being created must be spared"
    assert all(os.path.isdir(p) for p in live_cgroup.paths.values())
    assert other.run(live.sandbox_id, "python", "print(6*7)").stdout == "42\n"
    other.stop(live.sandbox_id)
    other.close()
    for path in young:
        os.rmdir(path)


@pytest.mark.docker
def test_dead_sandbox_containers_of_any_store_are_removed_and_live_ones_spared(tmp_path: Path):
    """A container created but never started (its creator died in between) and one exited
    but not removed, both of a store that no longer exists, go at any store's reap; a live
    sandbox of another store keeps running."""
    provider_ready("docker")
    settings = Settings.load(home=tmp_path / "other", user="tester", provider="docker",
                             **ATTACK_LIMITS)
    other = SandboxManager(settings, is_admin=True)
    live = other.create("live")
    backend = other.provider("docker")
    api = backend._client(settings.docker_host).api
    labels = {"nexus.sandbox_id": "sb_stray" + secrets.token_hex(4), "nexus.store": "gone"}
    never_started = api.create_container(settings.docker_image, command=["true"],
                                         labels=labels)["Id"]
    exited = api.create_container(settings.docker_image, command=["true"], labels=labels)["Id"]
    api.start(exited)
    api.wait(exited, timeout=30)
    try:
        early = backend.remove_leftovers()  # (old agent volumes may go: not containers)
        assert not [r for r in early if r.startswith("container ")], "younger than the grace: kept"
        removed = backend.remove_leftovers(grace=0)

        assert {f"container {c[:12]}" for c in (never_started, exited)} <= set(removed)
        assert backend.state({"container_id": never_started}) is None
        assert backend.state({"container_id": exited}) is None
        assert other.run(live.sandbox_id, "python", "print(6*7)").stdout == "42\n"
    finally:
        for container in (never_started, exited):
            with contextlib.suppress(Exception):
                api.remove_container(container, force=True)
        other.stop(live.sandbox_id)
        other.close()
