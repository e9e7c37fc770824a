"""The docker provider through the `nexus` CLI against the real engine, each step in its own
process; TTL with no client alive; reaping a labelled orphan; a daemon that is down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.models import SandboxSpec

from .conftest import ROOT, docker_not_ready, docker_problem, nexus

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def docker_ready(nexus_home):
    problem = docker_problem(Settings.load())
    if problem:
        docker_not_ready(problem)


def engine():
    import docker

    return docker.from_env()


def container_exists(container_id: str) -> bool:
    import docker

    try:
        engine().containers.get(container_id)
        return True
    except docker.errors.NotFound:
        return False


def create(*extra: str) -> dict:
    out = nexus("sandbox", "create", "dock", "--provider", "docker", "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_command_in_its_own_process(nexus_home):
    sid = create()["sandbox_id"]
    for language, code, expected in [
        ("python", "import os; print(os.getuid() == os.getgid() >= 2_000_100_000)", "True\n"),
        ("javascript", "console.log([1, 2].map(x => x * 21).join(''))", "2142\n"),
        ("bash", "echo $HOME", "/home/user\n"),
    ]:
        run = nexus("sandbox", "run", sid, "-l", language, "-c", code)
        assert (run.returncode, run.stdout) == (0, expected), run.stderr
    assert json.loads(nexus("sandbox", "pause", sid, "--json").stdout)["status"] == "paused"
    assert json.loads(nexus("sandbox", "status", sid, "--json").stdout)["status"] == "paused"
    assert json.loads(nexus("sandbox", "resume", sid, "--json").stdout)["status"] == "active"
    listed = json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"]
    assert [(s["sandbox_id"], s["provider"]) for s in listed] == [(sid, "docker")]
    assert nexus("sandbox", "run", sid, "-c", "print('back')").stdout == "back\n"
    assert json.loads(nexus("sandbox", "stop", sid, "--json").stdout)["status"] == "stopped"


def test_sigkilled_creator_sandbox_ends_at_its_ttl(nexus_home):
    code = (
        "from nexus_kernel import NexusFS\n"
        "nx = NexusFS(sandbox_provider='docker')\n"
        "sb = nx.sandbox_create('orphan', ttl_minutes=0.05)\n"
        "print(sb['sandbox_id'], flush=True)\n"
        "nx.sandbox_run(sb['sandbox_id'], 'python', 'import time; time.sleep(60)', timeout=10)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=os.environ.copy())
    sid = proc.stdout.readline().strip()
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads(nexus("sandbox", "status", sid, "--json").stdout)
    handle_id = _container_of(sid)
    # ttl 3 s + the run's 10 s timeout + watchdog slack: the agent ends it by itself
    deadline = time.time() + 60
    while container_exists(handle_id) and time.time() < deadline:
        time.sleep(1)
    assert not container_exists(handle_id), "the container outlived its TTL"
    assert status["status"] in ("active", "stopped")
    assert json.loads(nexus("sandbox", "status", sid, "--json").stdout)["status"] == "stopped"


def _container_of(sandbox_id: str) -> str:
    found = engine().containers.list(all=True, filters={"label": f"nexus.sandbox_id={sandbox_id}"})
    assert found, f"no container labelled {sandbox_id}"
    return found[0].id


def test_reap_removes_a_labelled_orphan_of_this_store_only(nexus_home):
    from nexus_kernel.providers.docker import DockerProvider
    from nexus_kernel.store import Store

    settings = Settings.load()
    create()  # the store exists and knows one sandbox
    store_id = Store(settings.store_dir).store_id
    provider = DockerProvider(settings)
    mine = provider.create(SandboxSpec(sandbox_id="sb_orphan1", owner="tester",
                                       store_id=store_id, deadline=time.time() + 600))
    theirs = provider.create(SandboxSpec(sandbox_id="sb_other01", owner="tester",
                                         store_id="st_someoneelse", deadline=time.time() + 600))
    try:
        out = nexus("sandbox", "reap", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["orphans"] == ["sb_orphan1"]
        assert not container_exists(mine["container_id"])
        assert container_exists(theirs["container_id"])
        assert len(json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"]) == 1
    finally:
        provider.destroy(theirs)
        provider.destroy(mine)


def test_daemon_down_is_one_line_and_loses_nothing(nexus_home):
    sid = create()["sandbox_id"]
    down = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    out = nexus("sandbox", "create", "x", "--provider", "docker", env=down)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "not reachable" in out.stderr, out.stderr
    status = nexus("sandbox", "status", sid, "--json", env=down)
    assert json.loads(status.stdout)["status"] == "active"  # not marked stopped by mistake
    stop = nexus("sandbox", "stop", sid, env=down)
    assert stop.returncode == 1 and "not reachable" in stop.stderr
    listed = json.loads(nexus("sandbox", "list", "--json").stdout)["sandboxes"]
    assert [(s["sandbox_id"], s["status"]) for s in listed] == [(sid, "active")]
    assert nexus("sandbox", "stop", sid).returncode == 0
