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
