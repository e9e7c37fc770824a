"""The docker provider against a real Docker engine and the nexus sandbox image.

Skipped when the engine or the image is missing, unless NEXUS_REQUIRE_DOCKER=1 (CI), where
that is a failure. Prepare with: bash scripts/start-dockerd.sh && bash scripts/build-image.sh
"""

from __future__ import annotations

import contextlib
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
from nexus_kernel.providers.docker_agent import agent_version

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


@pytest.fixture(params=["default image", "foreign image"])
def any_handle(request, provider, store_id: str):
    """A sandbox of the default image, then of an image with no project code in it."""
    image = request.getfixturevalue("foreign_image") if "foreign" in request.param else None
    h = provider.create(make_spec(store_id, template_id=image))
    yield h
    provider.destroy(h)


@pytest.fixture(params=["default image", "foreign image", "gvisor"])
def hardened(request, provider, store_id: str):
    """(provider, handle): the two sandboxes of ``any_handle``, then one under gVisor (runsc)."""
    from dataclasses import replace

    from nexus_kernel.providers.docker import DockerProvider

    image = request.getfixturevalue("foreign_image") if "foreign" in request.param else None
    backend = provider
    if request.param == "gvisor":
        settings = replace(provider.settings, docker_runtime="runsc")
        problem = docker_problem(settings)
        if problem:
            docker_not_ready(problem)
        backend = DockerProvider(settings)
    h = backend.create(make_spec(store_id, template_id=image))
    yield backend, h
    backend.destroy(h)
    if backend is not provider:
        backend.close()


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


def test_docker_inspect_shows_the_hardening(hardened):
    from nexus_kernel.providers.docker_runtime import host_pids

    provider, handle = hardened
    info = inspect(provider, handle)
    host = info["HostConfig"]
    assert host["Runtime"] == handle["runtime"] == (provider.settings.docker_runtime or "runc")
    pids = provider.settings.pids
    assert host["PidsLimit"] == (host_pids(pids) if handle["gvisor"] else pids)
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert not host.get("CapAdd")
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == provider.settings.memory_mb * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]
    assert host["NanoCpus"] == int(provider.settings.cpus * 1e9)
    assert host["ReadonlyRootfs"] is True
    assert not host.get("Init")  # the agent is pid 1: sandbox code cannot SIGKILL it
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 4096, "Hard": 4096}]
    assert host["Privileged"] is False
    assert not host.get("Binds")
    # no host mounts, no docker socket: only the agent's volume, read-only, not seeded
    [mount] = info["Mounts"]
    assert mount["Type"] == "volume" and mount["RW"] is False
    assert mount["Destination"] == "/opt/nexus-agent"
    assert mount["Name"] == f"nexus-agent-{agent_version()}"
    assert [m["VolumeOptions"]["NoCopy"] for m in host["Mounts"]] == [True]
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


def test_inside_the_container(provider, any_handle):
    handle = any_handle
    out = docker_exec(
        provider, handle, "sh", "-c",
        "id -u; grep CapEff /proc/self/status; grep -q @nexus-agent /proc/net/unix && echo abstract; "
        "tr '\\0' ' ' </proc/1/cmdline | cut -c1-10; echo $HOME; "
        "touch /rootfs-write 2>&1 || true; touch /opt/nexus-agent/sandbox_agent/x.py 2>&1 || true; "
        "ls /var/run/docker.sock 2>&1 || true",
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == str(handle["uid"])
    assert lines[1].split()[1] == "0000000000000000"
    assert lines[2] == "abstract"  # the agent's socket: no file of it anywhere
    assert lines[3] == "python3 -I"  # the agent is pid 1, whatever the image's entrypoint
    assert lines[4] == "/home/user"
    assert "/rootfs-write': Read-only file system" in out
    assert "x.py': Read-only file system" in out  # the agent's volume, shared by every sandbox
    assert "No such file" in lines[-1]


# ------------------------------------------------------------------ the agent


def test_hello_and_runs_over_the_agent_stream(provider, handle):
    """Direct as root on runc, else the exec relay (tests/test_docker_direct.py forces each)."""
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


@pytest.mark.parametrize("foreign", [False, True], ids=["default image", "foreign image"])
def test_destroy_removes_the_container_and_is_idempotent(provider, store_id, foreign, request):
    import docker

    image = request.getfixturevalue("foreign_image") if foreign else None
    h = provider.create(make_spec(store_id, template_id=image))
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
        while provider.state(h) == "removing" and time.monotonic() < limit:
            time.sleep(0.2)  # auto-removal unmounts the agent's volume too: a moment
        assert provider.state(h) is None  # auto-removed: nothing left behind
    finally:
        provider.destroy(h)


@pytest.mark.parametrize("foreign", [False, True], ids=["default image", "foreign image"])
def test_the_container_ends_at_its_ttl_after_its_creator_is_killed(provider, store_id, foreign,
                                                                    request):
    image = request.getfixturevalue("foreign_image") if foreign else None
    creator = (
        "import json, sys, time\n"
        "from nexus_kernel.agent.client import AgentClient\n"
        "from nexus_kernel.config import Settings\n"
        "from nexus_kernel.models import SandboxSpec\n"
        "from nexus_kernel.providers.docker import DockerProvider\n"
        "p = DockerProvider(Settings.load())\n"
        f"spec = SandboxSpec(sandbox_id='sb_killed', owner='tester', store_id={store_id!r},\n"
        f"                   deadline=time.time() + 4, template_id={image!r})\n"
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


def test_an_image_without_python3_is_one_line_and_leaves_nothing(provider, store_id):
    import io
    import tarfile

    data = io.BytesIO()  # an image of one text file: no python3, no shell
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    api = provider._client(provider.settings.docker_host).api
    api.import_image_from_data(data.getvalue(), repository="nexus-nopython", tag="test")
    image = "nexus-nopython:test"
    try:
        with pytest.raises(SandboxError) as info:
            provider.create(make_spec(store_id, template_id=image))
        message = str(info.value)
        assert "\n" not in message
        assert f"the image {image!r} has no python3" in message and "python3 >= 3.8" in message
        limit = time.monotonic() + 10  # destroy may leave the daemon's auto-removal finishing
        while any(r["handle"]["image"] == image for r in provider.list_resources(store_id)):
            assert time.monotonic() < limit, "the failed container was not removed"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(Exception):
            api.remove_image(image, force=True)


def test_an_agent_that_exits_at_once_fails_create_in_one_line_at_once(provider, store_id):
    """An agent that ends at once (its python3 exits) is seen ended, not waited for until
    READY_TIMEOUT (1 s)."""
    import io
    import tarfile

    api = provider._client(provider.settings.docker_host).api
    script = b"#!/bin/sh\nexit 3\n"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("python3")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
    base = api.create_container(provider.settings.docker_image, command=["true"])["Id"]
    image = "nexus-exits-at-once:test"
    try:
        api.put_archive(base, "/usr/local/bin", data.getvalue())
        api.commit(base, repository="nexus-exits-at-once", tag="test")
        started = time.monotonic()
        with pytest.raises(SandboxError) as info:
            provider.create(make_spec(store_id, template_id=image))
        assert time.monotonic() - started < 20
        message = str(info.value)
        assert "\n" not in message and "python3 >= 3.8" in message
    finally:
        with contextlib.suppress(Exception):
            api.remove_container(base, force=True)
        with contextlib.suppress(Exception):
            api.remove_image(image, force=True)


def test_two_first_creates_at_once_share_one_fill(provider, store_id, foreign_image):
    """Two processes create the first sandbox of an agent version (its volume absent) at the
    same moment: both sandboxes run (neither saw a half-filled volume), one of them filled it,
    no fill helper is left."""
    short = "test" + secrets.token_hex(4)  # a version of its own: the volume is absent
    start = time.time() + 2  # both are past their imports by then
    child = (
        "import json, secrets, sys, time\n"
        "from nexus_kernel.agent.client import AgentClient\n"
        "from nexus_kernel.config import Settings\n"
        "from nexus_kernel.models import SandboxSpec\n"
        "from nexus_kernel.providers import docker_agent\n"
        "from nexus_kernel.providers.docker import DockerProvider\n"
        f"docker_agent.agent_version = lambda: {short!r}\n"
        "fill, filled = docker_agent._fill, []  # observed: True = this process filled\n"
        "docker_agent._fill = lambda *a: filled.append(fill(*a)) or filled[-1]\n"
        "p = DockerProvider(Settings.load())\n"
        f"spec = SandboxSpec(sandbox_id='sb_' + secrets.token_hex(4), owner='tester',\n"
        f"                   store_id={store_id!r}, deadline=time.time() + 60,\n"
        f"                   template_id={foreign_image!r})\n"
        f"time.sleep(max(0, {start!r} - time.time()))\n"
        "h = p.create(spec)\n"
        "c = AgentClient(lambda: p.connect(h), h['token'])\n"
        "print(c.run('python', 'print(6 * 7)')['stdout'], end='')\n"
        "print(filled.count(True))\n"
        "c.close(); p.destroy(h)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
            for _ in range(2)]  # fmt: skip
    api = provider._client(provider.settings.docker_host).api
    try:
        outcomes = [run.communicate(timeout=90) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], [err[-500:] for _, err in outcomes]
        assert sorted(out for out, _ in outcomes) == ["42\n0\n", "42\n1\n"]  # one filled
        assert api.containers(all=True, filters={"name": f"nexus-agent-fill-{short}"}) == []
    finally:
        _remove_volumes(api, f"nexus-agent-{short}", f"nexus-agent-{short}.ready")


def _remove_volumes(api, *names: str) -> None:
    """Remove test volumes once the sandboxes' auto-removal has let go of them."""
    for name in names:
        limit = time.monotonic() + 10
        while True:
            try:
                api.remove_volume(name)
                break
            except Exception:
                if time.monotonic() > limit:
                    break
                time.sleep(0.2)


def test_a_dead_fillers_lock_is_taken_over(provider, store_id, monkeypatch):
    """A creator that died while filling leaves its helper (the lock) and a half-filled
    volume: once the lock is stale, the next creator removes it and fills the volume."""
    from nexus_kernel.providers import docker_agent

    version = "dead" + secrets.token_hex(4)
    monkeypatch.setattr(docker_agent, "agent_version", lambda: version)
    monkeypatch.setattr(docker_agent, "FILL_STALE_SECONDS", 3.0)
    api = provider._client(provider.settings.docker_host).api
    image = provider.settings.docker_image
    dead = api.create_container(
        image, command=["x"], name=f"nexus-agent-fill-{version}",
        labels={docker_agent.FILL_LABEL: version},
        host_config=api.create_host_config(mounts=[docker_agent.agent_mount(version, False)]),
    )["Id"]  # fmt: skip
    h = None
    try:
        with contextlib.suppress(Exception):  # cut short: the engine extracts what it got
            api.put_archive(dead, docker_agent.AGENT_DIR, docker_agent._archive(version)[:4096])
        started = time.monotonic()
        assert docker_agent.ensure_agent_volume(api, image) == version
        assert 1.0 <= time.monotonic() - started < 15  # waited for the lock to go stale (3 s)
        assert api.containers(all=True, filters={"id": dead}) == []
        h = provider.create(make_spec(store_id))
        client = agent_client(provider, h)
        assert client.run("python", "print(6 * 7)")["stdout"] == "42\n"
        client.close()
    finally:
        if h is not None:
            provider.destroy(h)
        with contextlib.suppress(Exception):
            api.remove_container(dead, force=True)
        _remove_volumes(api, docker_agent.volume_name(version), docker_agent.ready_name(version))


def test_an_agent_volume_removed_under_a_provider_is_filled_again(provider, store_id,
                                                                   monkeypatch):
    """A provider checks the volume once (per engine and version): removed behind its back
    (with its marker), the next create fails in one line and the one after fills it (2 s)."""
    from nexus_kernel.providers import docker_agent

    version = "gone" + secrets.token_hex(4)
    monkeypatch.setattr(docker_agent, "agent_version", lambda: version)
    api = provider._client(provider.settings.docker_host).api
    try:
        provider.destroy(provider.create(make_spec(store_id)))
        _remove_volumes(api, docker_agent.volume_name(version), docker_agent.ready_name(version))
        with pytest.raises(SandboxError) as info:  # the engine made an empty volume
            provider.create(make_spec(store_id))
        assert "\n" not in str(info.value)
        h = provider.create(make_spec(store_id))
        client = agent_client(provider, h)
        assert client.run("python", "print(6 * 7)")["stdout"] == "42\n"
        client.close()
        provider.destroy(h)
    finally:
        _remove_volumes(api, docker_agent.volume_name(version), docker_agent.ready_name(version))


def test_old_agent_volumes_go_when_no_container_uses_them(provider):
    from nexus_kernel.providers.docker_agent import LABEL, agent_mount, ready_name, volume_name

    api = provider._client(provider.settings.docker_host).api
    unused, used = ("old" + secrets.token_hex(4) for _ in range(2))
    for short in (unused, used):
        api.create_volume(volume_name(short), labels={LABEL: short})
        api.create_volume(ready_name(short), labels={LABEL: short})
    user = api.create_container(provider.settings.docker_image, command=["true"],
                                host_config=api.create_host_config(mounts=[agent_mount(used)]))
    try:
        assert f"volume {volume_name(unused)}" not in provider.remove_leftovers()  # too young
        removed = provider.remove_leftovers(grace=0)
        names = {v["Name"] for v in api.volumes(filters={"label": LABEL})["Volumes"]}
        assert f"volume {volume_name(unused)}" in removed
        assert not names & {volume_name(unused), ready_name(unused)}
        assert {volume_name(used), ready_name(used)} <= names  # in use: kept, with its marker
        assert volume_name(agent_version()) in names  # the current version stays
    finally:
        api.remove_container(user["Id"], force=True)
        for name in (volume_name(used), ready_name(used)):
            api.remove_volume(name)


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
