"""The docker provider against a real Docker engine and the nexus sandbox image.

Skipped when the engine or the image is missing, unless NEXUS_REQUIRE_DOCKER=1 (CI), where
that is a failure. Prepare with: bash scripts/start-dockerd.sh && bash scripts/build-image.sh
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import (
    ProviderError,
    ProviderUnavailableError,
    SandboxError,
    SandboxStateError,
)
from nexus_kernel.models import SandboxSpec

from .conftest import docker_not_ready, docker_problem

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
AGENT_FILE = ROOT / "nexus_kernel" / "agent" / "sandbox_agent"
@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings.load()


@pytest.fixture(scope="module")
def provider(settings: Settings):
    """A DockerProvider on the configured engine; skips (fails in CI) when not usable."""
    problem = docker_problem(settings)
    if problem:
        docker_not_ready(problem)
    from nexus_kernel.providers.docker import DockerProvider

    backend = DockerProvider(settings)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def store_id() -> str:
    return "test-" + secrets.token_hex(4)


def make_spec(store_id: str, ttl: float = 600.0, **extra: Any) -> SandboxSpec:
    return SandboxSpec(
        sandbox_id="sb_" + secrets.token_hex(6),
        owner="tester",
        store_id=store_id,
        deadline=time.time() + ttl,
        **extra,
    )


@pytest.fixture
def handle(provider, store_id: str):
    """A fresh sandbox container; removed after the test."""
    h = provider.create(make_spec(store_id))
    yield h
    provider.destroy(h)


def agent_client(provider, handle: dict[str, Any], token: str | None = None):
    from nexus_kernel.agent.client import AgentClient

    return AgentClient(lambda: provider.connect(handle), token or handle["token"])


def inspect(provider, handle: dict[str, Any]) -> dict[str, Any]:
    """What `docker inspect` shows for the sandbox's container."""
    return provider._client(handle["docker_host"]).api.inspect_container(handle["container_id"])


def docker_exec(provider, handle: dict[str, Any], *cmd: str) -> str:
    """Output of a command run in the sandbox out of band (as its user, like `docker exec`)."""
    client = provider._client(handle["docker_host"])
    user = f"{handle['uid']}:{handle['uid']}"
    result = client.containers.get(handle["container_id"]).exec_run(list(cmd), user=user)
    return result.output.decode()


# ------------------------------------------------------------------ hardening


def test_docker_inspect_shows_the_hardening(provider, handle):
    info = inspect(provider, handle)
    host = info["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["PidsLimit"] == provider.settings.pids
    assert host["Memory"] == provider.settings.memory_mb * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == int(provider.settings.cpus * 1e9)
    assert host["ReadonlyRootfs"] is True
    assert not host.get("Init")  # the agent is pid 1: sandbox code cannot SIGKILL it
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 4096, "Hard": 4096}]
    assert host["Privileged"] is False
    assert not host.get("Binds")
    assert info["Mounts"] == []  # no host mounts, no volumes, no docker socket
    assert set(host["Tmpfs"]) == {"/tmp", "/home/user", "/dev/shm"}  # the socket is abstract
    assert all("nr_inodes=" in host["Tmpfs"][path] for path in ("/tmp", "/home/user", "/dev/shm"))
    assert info["Config"]["User"] == f"{handle['uid']}:{handle['uid']}"
    assert info["Config"]["Labels"]["nexus.uid"] == str(handle["uid"])
    assert info["Config"]["WorkingDir"] == "/home/user"
    labels = info["Config"]["Labels"]
    assert labels["nexus.sandbox_id"].startswith("sb_")
    assert labels["nexus.owner"] == "tester"
    assert labels["nexus.store"]
    assert float(labels["nexus.expires_at"]) > time.time()
    assert handle["token"] not in json.dumps(info)  # the token is in no config


def test_inside_the_container(provider, handle):
    out = docker_exec(
        provider, handle, "sh", "-c",
        "id -u; grep CapEff /proc/self/status; grep -q @nexus-agent /proc/net/unix && echo abstract; "
        "touch /rootfs-write 2>&1 || true; ls /var/run/docker.sock 2>&1 || true",
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == str(handle["uid"])
    assert lines[1].split()[1] == "0000000000000000"
    assert lines[2] == "abstract"  # the agent's socket: no file of it anywhere
    assert "Read-only file system" in out
    assert "No such file" in lines[-1]


# ------------------------------------------------------------------ the agent


def test_hello_and_runs_over_the_exec_relay(provider, handle):
    client = agent_client(provider, handle)
    try:
        hello = client.hello()
        assert set(hello["languages"]) >= {"python", "javascript", "bash"}
        assert client.run("python", "import os; print(os.getuid(), os.getcwd())")["stdout"] == (
            f"{handle['uid']} /home/user\n"
        )
        assert client.run("javascript", "console.log(6 * 7)")["stdout"] == "42\n"
        assert client.run("bash", "echo $((20 + 22))")["stdout"] == "42\n"
        failed = client.run("bash", "echo oops >&2; exit 3")
        assert failed["exit_code"] == 3 and failed["stderr"] == "oops\n"
    finally:
        client.close()


def test_sessions_keep_state(provider, handle):
    client = agent_client(provider, handle)
    try:
        client.run("python", "x = 41", session="s")
        assert client.run("python", "print(x + 1)", session="s")["stdout"] == "42\n"
        client.run("javascript", "var y = 21", session="s")
        assert client.run("javascript", "console.log(y * 2)", session="s")["stdout"] == "42\n"
        client.run("bash", "cd /tmp && V=42", session="s")
        assert client.run("bash", 'echo "$PWD $V"', session="s")["stdout"] == "/tmp 42\n"
        # a stateless run is a fresh process: files persist, variables do not
        client.run("python", "open('f.txt', 'w').write('kept')")
        assert client.run("bash", "cat f.txt")["stdout"] == "kept"
    finally:
        client.close()


def test_a_wrong_token_is_refused(provider, handle):
    client = agent_client(provider, handle, token="not-the-token")
    try:
        with pytest.raises(SandboxError):
            client.hello()
    finally:
        client.close()


def test_many_streams_at_once(provider, handle):
    clients = [agent_client(provider, handle) for _ in range(4)]
    try:
        outs = [c.run("python", f"print({i})")["stdout"] for i, c in enumerate(clients)]
        assert outs == [f"{i}\n" for i in range(4)]
    finally:
        for c in clients:
            c.close()


def test_files_and_large_output_cross_the_stream_intact(provider, handle):
    client = agent_client(provider, handle)
    try:
        blob = bytes(range(256)) * 4096  # 1 MiB of every byte value
        assert client.write_file("data.bin", blob) == len(blob)
        assert client.read_file("data.bin") == blob
        out = client.run("python", "import sys; sys.stdout.write('x' * 3_000_000)")
        assert len(out["stdout"]) == 3_000_000 and not out["truncated"]
        mixed = client.run("bash", "for i in 1 2 3; do echo out$i; echo err$i >&2; done")
        assert mixed["stdout"] == "out1\nout2\nout3\n"
        assert mixed["stderr"] == "err1\nerr2\nerr3\n"
    finally:
        client.close()


# ------------------------------------------------------------------ lifecycle


def test_pause_blocks_and_resume_restores(provider, handle):
    client = agent_client(provider, handle)
    try:
        client.run("python", "n = 1", session="p")
        provider.pause(handle)
        provider.pause(handle)  # idempotent
        assert provider.state(handle) == "paused"
        assert provider.alive(handle)
        with pytest.raises(SandboxStateError):
            provider.connect(handle)  # no exec into a frozen container
        outcome: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: outcome.update(client.run("python", "print(n + 1)", session="p"))
        )
        runner.start()
        runner.join(1.5)
        assert runner.is_alive() and not outcome  # frozen: nothing ran
        provider.resume(handle)
        provider.resume(handle)  # idempotent
        runner.join(30)
        assert outcome["stdout"] == "2\n"
        assert provider.state(handle) == "running"
    finally:
        client.close()


def test_uids_come_in_free_pairs_from_a_range_of_their_own():
    from nexus_kernel.providers import docker, uids

    assert docker.UID_BASE >= uids.UID_BASE + uids.UID_COUNT  # disjoint from local's range
    pairs = set(range(docker.UID_BASE, docker.UID_BASE + docker.UID_COUNT, 2))
    last = docker.UID_BASE + 2 * 1234
    assert docker.pick_uid(pairs - {last}) == last
    with pytest.raises(ProviderError, match="in use"):
        docker.pick_uid(pairs)


def test_a_create_that_lost_its_uid_to_a_racing_create_picks_another(provider, store_id,
                                                                      monkeypatch):
    """A create whose listing missed a container with the same uid (another create, racing)
    sees it once its own container exists: it removes its own and picks again."""
    from nexus_kernel.providers import docker

    client = provider._client(provider.settings.docker_host)
    taken = docker.pick_uid(set(docker.labelled_uids(client).values()))
    rival = client.api.create_container(
        provider.settings.docker_image, command=["true"], labels={docker.UID_LABEL: str(taken)}
    )["Id"]
    picks, pick = iter([taken]), docker.pick_uid
    monkeypatch.setattr(docker, "pick_uid", lambda in_use: next(picks, None) or pick(in_use))
    try:
        h = provider.create(make_spec(store_id))
        try:
            assert h["uid"] != taken and provider.alive(h)
            assert inspect(provider, h)["Config"]["Labels"][docker.UID_LABEL] == str(h["uid"])
            assert set(docker.labelled_uids(client, taken)) == {rival}  # its own is removed
        finally:
            provider.destroy(h)
    finally:
        client.api.remove_container(rival, force=True)


def test_destroy_removes_the_container_and_is_idempotent(provider, store_id):
    import docker

    h = provider.create(make_spec(store_id))
    provider.destroy(h)
    assert not provider.alive(h)
    with pytest.raises(docker.errors.NotFound):
        inspect(provider, h)
    provider.destroy(h)
    provider.destroy({"token": "", "container_id": "0" * 64, "docker_host": ""})


def test_the_deadline_ends_the_container_on_its_own(provider, store_id):
    h = provider.create(make_spec(store_id, ttl=3.0))
    try:
        assert provider.alive(h)
        limit = time.monotonic() + 30
        while provider.alive(h) and time.monotonic() < limit:
            time.sleep(0.5)
        assert not provider.alive(h)
        assert provider.state(h) is None  # auto-removed: nothing left behind
    finally:
        provider.destroy(h)


def test_the_container_ends_at_its_ttl_after_its_creator_is_killed(provider, store_id):
    creator = (
        "import json, sys, time\n"
        "from nexus_kernel.agent.client import AgentClient\n"
        "from nexus_kernel.config import Settings\n"
        "from nexus_kernel.models import SandboxSpec\n"
        "from nexus_kernel.providers.docker import DockerProvider\n"
        "p = DockerProvider(Settings.load())\n"
        f"spec = SandboxSpec(sandbox_id='sb_killed', owner='tester', store_id={store_id!r},\n"
        "                   deadline=time.time() + 4)\n"
        "h = p.create(spec)\n"
        "print(json.dumps(h), flush=True)\n"
        "c = AgentClient(lambda: p.connect(h), h['token'])\n"
        "c.run('python', 'import time; time.sleep(120)')\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", creator],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        h = json.loads(child.stdout.readline())
        time.sleep(1.0)  # mid-run
        child.kill()  # SIGKILL: no client cleanup at all
        child.wait(10)
        assert provider.alive(h)
        limit = time.monotonic() + 30
        while provider.state(h) is not None and time.monotonic() < limit:
            time.sleep(0.5)  # alive, then "removing" a moment (longer on a loaded daemon)
        assert provider.state(h) is None  # the agent ended it at its deadline; auto-removed
    finally:
        if child.poll() is None:
            child.kill()
        for resource in provider.list_resources(store_id):
            if resource["sandbox_id"] == "sb_killed":
                provider.destroy(resource["handle"])


def test_reattach_from_another_process(provider, handle):
    client = agent_client(provider, handle)
    try:
        client.run("python", "secret = 'shared'", session="re")
    finally:
        client.close()
    child = (
        "import json, sys\n"
        "from nexus_kernel.agent.client import AgentClient\n"
        "from nexus_kernel.config import Settings\n"
        "from nexus_kernel.providers.docker import DockerProvider\n"
        "handle = json.loads(sys.stdin.read())\n"
        "p = DockerProvider(Settings.load())\n"
        "c = AgentClient(lambda: p.connect(handle), handle['token'])\n"
        "print(c.run('python', 'print(secret)', session='re')['stdout'], end='')\n"
        "c.close()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", child],
        input=json.dumps(handle),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "shared\n"


def test_list_resources_is_scoped_to_the_store(provider, handle, store_id):
    found = {r["sandbox_id"]: r["handle"] for r in provider.list_resources(store_id)}
    sandbox_id = inspect(provider, handle)["Config"]["Labels"]["nexus.sandbox_id"]
    assert found[sandbox_id]["container_id"] == handle["container_id"]
    assert provider.list_resources("another-store-" + secrets.token_hex(4)) == []


# ------------------------------------------------------------------ errors


def test_a_missing_image_says_how_to_build_it(provider, store_id):
    with pytest.raises(ProviderUnavailableError) as info:
        provider.create(make_spec(store_id, template_id="nexus-no-such-image:none"))
    message = str(info.value)
    assert "\n" not in message
    assert "scripts/build-image.sh" in message and "docker build" in message


def test_an_image_without_the_agent_fails_clearly(provider, store_id):
    import docker

    base = "nexus-base:bookworm"  # made by scripts/build-image.sh: python3, no agent
    try:
        provider._client(provider.settings.docker_host).images.get(base)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{base} is only present where scripts/build-image.sh ran")
    with pytest.raises(SandboxError) as info:
        provider.create(make_spec(store_id, template_id=base))
    assert "/opt/nexus-agent/sandbox_agent" in str(info.value)
    limit = time.monotonic() + 10  # destroy may leave the daemon's auto-removal finishing
    while any(r["handle"]["image"] == base for r in provider.list_resources(store_id)):
        assert time.monotonic() < limit, "the failed container was not removed"
        time.sleep(0.2)


def test_an_unreachable_daemon_is_one_clear_line():
    pytest.importorskip("docker")
    from nexus_kernel.providers.docker import DockerProvider

    settings = Settings.load(docker_host="unix:///nonexistent.sock")
    with pytest.raises(ProviderUnavailableError) as info:
        DockerProvider.check_available(settings)
    message = str(info.value)
    assert "\n" not in message
    assert "unix:///nonexistent.sock" in message and "start it" in message
    backend = DockerProvider(settings)
    handle = {"token": "t", "container_id": "abc", "image": "x", "docker_host": ""}
    for call in (backend.alive, backend.destroy, backend.connect, backend.pause):
        with pytest.raises(ProviderUnavailableError):
            call(handle)
