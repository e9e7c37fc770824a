"""20 processes creating, running and stopping sandboxes on one store at once, 5 of them
SIGKILLed at random moments, on the local and docker providers.

Afterwards, once reaped: no lost record (every sandbox a worker reported exists), no
duplicated one (one record per resource, one resource per record), no record stuck in
``creating``, no stuck lock (every stop returns at once), stop idempotent, and no orphan
process, cgroup, directory or container.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from nexus_kernel.models import Status

from ..conftest import ROOT
from ..security.conftest import PROVIDER_PARAMS, Env, provider_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKERS = 20
KILLED = 5
CYCLES = 2

WORKER = """
import json, random, sys
from nexus_kernel.errors import SandboxStateError
from nexus_kernel.manager import SandboxManager
worker = int(sys.argv[1])
manager = SandboxManager()
def say(**event):
    print(json.dumps(event), flush=True)
for cycle in range({cycles}):
    record = manager.create(f"w{{worker}}-{{cycle}}", ttl_minutes=10)
    say(created=record.sandbox_id)
    try:
        out = manager.run(record.sandbox_id, "bash", f"echo {{record.sandbox_id}}", timeout=30)
        assert out.stdout.strip() == record.sandbox_id, out
        say(ran=record.sandbox_id)
    except SandboxStateError:  # another worker stopped it first: allowed
        say(lost_race=record.sandbox_id)
    if cycle % 2 == 0:
        for _ in range(2):
            assert manager.stop(record.sandbox_id).status.value == "stopped"
        say(stopped=record.sandbox_id)
    others = [r for r in manager.list() if r.status.value == "active"]
    if others:  # stop someone else's sandbox too: lock contention on purpose
        victim = random.choice(others).sandbox_id
        assert manager.stop(victim).status.value == "stopped"
        say(stopped=victim)
say(done=worker)
"""


@pytest.fixture(params=PROVIDER_PARAMS)
def store_env(request: pytest.FixtureRequest, tmp_path) -> Env:
    """An env of its own: this test owns every record and resource of its store."""
    provider_ready(request.param)
    environment = Env(request.param, tmp_path / "home")
    yield environment
    environment.close()


def test_twenty_processes_with_sigkills_leave_a_consistent_store(store_env: Env):
    env = store_env
    code = WORKER.format(cycles=CYCLES)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT, env=env.environ(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(WORKERS)
    ]  # fmt: skip
    rng = random.Random(6)
    victims = rng.sample(range(WORKERS), KILLED)
    spread = 3.0 if env.name == "local" else 8.0  # docker creates take longer
    started = time.monotonic()
    for delay, index in sorted((rng.uniform(0.5, spread), i) for i in victims):
        time.sleep(max(0.0, started + delay - time.monotonic()))
        procs[index].kill()  # SIGKILL
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        outputs.append((proc.returncode, out, err))

    events = [json.loads(line) for _, out, _ in outputs for line in out.splitlines()]
    created = {e["created"] for e in events if "created" in e}
    for index, (returncode, _, err) in enumerate(outputs):
        if index not in victims:
            assert returncode == 0, f"worker {index} failed: {err[-2000:]}"

    manager = env.manager
    reaped = manager.reap()
    records = manager.list(all_users=True)
    ids = [r.sandbox_id for r in records]
    assert len(ids) == len(set(ids))
    assert created <= set(ids), f"lost records: {created - set(ids)}"
    assert all(r.status in (Status.ACTIVE, Status.STOPPED) for r in records), [
        (r.sandbox_id, r.status, r.error) for r in records
    ]
    handles = [json.dumps(r.handle, sort_keys=True) for r in records if r.handle]
    assert len(handles) == len(set(handles)), "two records share one resource"
    live = {r["sandbox_id"] for r in env.provider.list_resources(manager.store.store_id)}
    assert live <= {r.sandbox_id for r in records if r.status is Status.ACTIVE}, (
        f"resources without a live record: {live}, reap said {reaped}"
    )

    for record in records:
        start = time.monotonic()
        assert manager.stop(record.sandbox_id).status is Status.STOPPED
        assert manager.stop(record.sandbox_id).status is Status.STOPPED
        assert time.monotonic() - start < 5, f"stop of {record.sandbox_id} waited on a lock"
    for record in records:
        env.assert_gone(record)
    assert env.provider.list_resources(manager.store.store_id) == []


CROWD = 40
CROWD_KILLED = 8

CROWD_WORKER = """
import json, random, sys, time
from nexus_kernel.errors import DiskFullError, SandboxStateError
from nexus_kernel.manager import SandboxManager
worker = int(sys.argv[1])
def say(**event):
    print(json.dumps(event), flush=True)
def patiently(action):
    # what a user does on a full disk: read the one line, free space (the test does), retry
    for _ in range(600):
        try:
            return action()
        except DiskFullError:
            say(disk_full=worker)
            time.sleep(0.1)
    raise AssertionError("the disk never came back")
manager = patiently(SandboxManager)
record = patiently(lambda: manager.create(f"c{worker}", ttl_minutes=10))
say(created=record.sandbox_id)
try:
    out = patiently(lambda: manager.run(record.sandbox_id, "bash", "echo $((6*7))", timeout=60))
    assert out.stdout == "42\\n", out
    say(ran=record.sandbox_id)
except SandboxStateError:  # another worker stopped it first: allowed
    say(lost_race=record.sandbox_id)
if worker % 2:
    assert patiently(lambda: manager.stop(record.sandbox_id)).status.value == "stopped"
    say(stopped=record.sandbox_id)
others = [r for r in manager.list() if r.status.value == "active"]
if others and worker % 3 == 0:
    victim = random.choice(others).sandbox_id
    assert patiently(lambda: manager.stop(victim)).status.value == "stopped"
    say(stopped=victim)
say(done=worker)
"""


@pytest.mark.bwrap
def test_forty_clients_with_sigkills_and_a_disk_that_fills_midway(tmp_path):
    """40 processes on one local store whose filesystem (store and sandbox files) fills up
    while they work and is freed a few seconds later; 8 are SIGKILLed on the way."""
    from .test_full_disk import fill, mounted

    mount = next(mounted(tmp_path / "fs", size="64m"))
    env = Env("local", mount / "home")
    try:
        code = CROWD_WORKER
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT,
                             env=env.environ(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for i in range(CROWD)
        ]  # fmt: skip
        rng = random.Random(40)
        victims = rng.sample(range(CROWD), CROWD_KILLED)
        started = time.monotonic()
        kills = sorted((rng.uniform(1.0, 8.0), i) for i in victims)
        filler, freed_at, filled = None, 0.0, False
        while kills or not filled or filler is not None:
            now = time.monotonic() - started
            if kills and now >= kills[0][0]:
                procs[kills.pop(0)[1]].kill()  # SIGKILL
            if not filled and sum(1 for _ in env.manager.store.records()) >= CROWD // 4:
                filler, freed_at, filled = fill(mount), now + 4.0, True  # midway
            if filler is not None and now >= freed_at:
                filler.unlink()
                filler = None
            assert now < 120, "the clients never got midway"
            time.sleep(0.05)
        outputs = [p.communicate(timeout=240) for p in procs]
        for index, (_, err) in enumerate(outputs):
            if index not in victims:
                assert procs[index].returncode == 0, f"worker {index} failed: {err[-2000:]}"

        events = [json.loads(line) for out, _ in outputs for line in out.splitlines()]
        assert any("disk_full" in e for e in events), "the disk never filled under a client"
        created = {e["created"] for e in events if "created" in e}
        manager = env.manager
        manager.reap()
        records = manager.list(all_users=True)
        ids = [r.sandbox_id for r in records]
        assert len(ids) == len(set(ids)), "a duplicated record"
        assert created <= set(ids), f"lost records: {created - set(ids)}"
        assert all(r.status in (Status.ACTIVE, Status.STOPPED) for r in records), [
            (r.sandbox_id, r.status, r.error) for r in records
        ]
        live = {r["sandbox_id"] for r in env.provider.list_resources(manager.store.store_id)}
        assert live <= {r.sandbox_id for r in records if r.status is Status.ACTIVE}
        survivors = [r for r in records if r.status is Status.ACTIVE]
        for record in survivors:  # every survivor still runs
            assert manager.run(record.sandbox_id, "bash", "echo ok").stdout == "ok\n"
        for record in records:
            start = time.monotonic()
            assert manager.stop(record.sandbox_id).status is Status.STOPPED
            assert time.monotonic() - start < 5, f"stop of {record.sandbox_id} waited on a lock"
            env.assert_gone(record)
    finally:
        env.close()
        subprocess.run(["umount", "-l", str(mount)], check=False)
