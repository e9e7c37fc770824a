"""The direct stream to a docker sandbox's agent (``providers/docker_direct.py``), against a
real engine: taken as root on runc with no ``docker exec``, the exec relay otherwise, an
impostor holding the agent's name refused, this process's network namespace untouched.

Skipped when the engine or the image is missing (a failure under NEXUS_REQUIRE_DOCKER=1).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from nexus_kernel.agent.client import AgentClient
from nexus_kernel.config import Settings
from nexus_kernel.errors import AgentError, ProviderUnavailableError, SandboxStateError
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import SandboxSpec
from nexus_kernel.providers import docker_direct
from nexus_kernel.ttl import WATCHDOG_SLACK_SECONDS

from .conftest import docker_not_ready, docker_problem

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(os.geteuid() != 0, reason="the direct path needs root")]

#: Binds the agent's name, as a process of the sandbox other than its init could try.
IMPOSTOR = ("import socket, time; s = socket.socket(socket.AF_UNIX); "
            "s.bind('\\0nexus-agent'); s.listen(); time.sleep(120)")


@pytest.fixture(scope="module")
def settings() -> Settings:
    found = Settings.load()
    problem = docker_problem(found)
    if problem:
        docker_not_ready(problem)
    return found


@pytest.fixture(scope="module")
def provider(settings: Settings):
    from nexus_kernel.providers.docker import DockerProvider

    backend = DockerProvider(settings)
    yield backend
    backend.close()


def spec(**extra: Any) -> SandboxSpec:
    return SandboxSpec(sandbox_id="sb_" + secrets.token_hex(6), owner="tester",
                       store_id="test-direct-" + secrets.token_hex(4),
                       deadline=time.time() + 300, **extra)


@pytest.fixture(scope="module")
def handle(provider):
    made = provider.create(spec())
    yield made
    provider.destroy(made)


def exec_ids(provider, handle: dict[str, Any]) -> list[str]:
    api = provider._client(handle.get("docker_host", "")).api
    return api.inspect_container(handle["container_id"])["ExecIDs"] or []


def netns() -> tuple[int, int]:
    """This process's and this thread's network namespace inodes."""
    return (os.stat("/proc/self/ns/net").st_ino, os.stat("/proc/thread-self/ns/net").st_ino)


def test_root_on_runc_reaches_the_agent_with_no_exec_and_stays_in_its_own_netns(provider, handle):
    """(0.2 s)"""
    assert handle["pid"] > 1 and exec_ids(provider, handle) == []
    before = netns()
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:  # another thread of this process, while connects enter the container's
        while not done.is_set():
            seen.add(os.stat("/proc/thread-self/ns/net").st_ino)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(5):
            channel = provider.connect(handle)
            assert type(channel) is socket.socket
            with AgentClient(lambda channel=channel: channel, handle["token"]) as client:
                assert client.run("python", "print(6 * 7)")["stdout"] == "42\n"
    finally:
        done.set()
        watcher.join()
    assert netns() == before and seen == {before[0]}
    # the socket lives in the container's namespace, not the host's
    assert os.stat(f"/proc/{handle['pid']}/ns/net").st_ino != before[0]
    assert exec_ids(provider, handle) == []


def test_forced_off_or_ineligible_callers_use_the_exec_relay(settings, provider, handle,
                                                              monkeypatch):
    """NEXUS_DOCKER_DIRECT=0, and a caller that is not root (0.5 s)."""
    from nexus_kernel.providers.docker import DockerProvider, DockerStreamChannel

    relayed = DockerProvider(Settings.load(docker_direct=False))
    try:
        for backend in (relayed, provider):
            if backend is provider:
                monkeypatch.setattr(docker_direct.os, "geteuid", lambda: 1000)
            channel = backend.connect(handle)
            assert isinstance(channel, DockerStreamChannel)
            with AgentClient(lambda channel=channel: channel, handle["token"]) as client:
                assert client.run("python", "print(1)")["stdout"] == "1\n"
                assert exec_ids(provider, handle)  # the relay is an exec
    finally:
        relayed.close()


def test_eligibility():
    """Root, a local engine, runc (0 s)."""
    runc = {"runtime": "", "gvisor": False}
    assert docker_direct.eligible(runc, "unix:///var/run/docker.sock")
    assert not docker_direct.eligible(runc, "tcp://10.0.0.2:2376")
    assert not docker_direct.eligible(runc, "ssh://user@engine")
    assert not docker_direct.eligible({"runtime": "runsc", "gvisor": True}, "unix:///x")
    assert not docker_direct.eligible({"runtime": "kata", "gvisor": False}, "unix:///x")


def test_under_gvisor_the_exec_relay_serves(settings):
    """runsc's abstract sockets live in its sentry (1.5 s)."""
    from nexus_kernel.providers.docker import DockerProvider, DockerStreamChannel

    runsc = Settings.load(docker_runtime="runsc")
    if docker_problem(runsc):
        pytest.skip(f"no runsc: {docker_problem(runsc)}")
    backend = DockerProvider(runsc)
    made = backend.create(spec())
    try:
        channel = backend.connect(made)
        assert isinstance(channel, DockerStreamChannel)
        with AgentClient(lambda: channel, made["token"]) as client:
            assert client.run("python", "print(1)")["stdout"] == "1\n"
    finally:
        backend.destroy(made)
        backend.close()


@pytest.fixture(scope="module")
def impostor(settings):
    """A container whose init is ``sh`` and where another process holds ``@nexus-agent``."""
    name = "nexus-test-impostor-" + secrets.token_hex(4)
    subprocess.run(["docker", "run", "-d", "--rm", "--network", "none", "--name", name,
                    settings.docker_image, "sh", "-c", f'python3 -c "{IMPOSTOR}" & wait'],
                   check=True, capture_output=True)
    try:
        found = subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.State.Pid}}", name],
                               check=True, capture_output=True, text=True).stdout.split()
        yield found[0], int(found[1])
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def test_a_process_other_than_the_init_holding_the_name_is_refused(impostor):
    """(0.5 s)"""
    container_id, pid = impostor
    deadline = time.monotonic() + 20
    while True:  # until the impostor has bound the name
        try:
            sock = docker_direct.connect(container_id, pid, "@nexus-agent")
        except AgentError as exc:
            assert "not served by its agent" in str(exc)
            break
        assert sock is None, "connected to a listener that is not the container's init"
        assert time.monotonic() < deadline, "the impostor never bound the name"
        time.sleep(0.05)


def test_a_pid_that_is_not_the_containers_init_is_not_entered(handle, impostor):
    """Another container's init, this process, a pid of no process (0 s)."""
    for pid in (impostor[1], os.getpid(), 2**22 + 1):
        assert docker_direct.connect(handle["container_id"], pid, "@nexus-agent") is None


def test_pause_and_resume_reopen_the_stream_directly(settings, tmp_path, provider):
    """A paused container is left to the relay's path (which says to resume it); the stream
    after resume is direct again (1.5 s)."""
    manager = SandboxManager(Settings.load(home=tmp_path / "home", provider="docker"))
    record = manager.create("direct")
    try:
        assert manager.run(record.sandbox_id, "python", "x = 1").exit_code == 0
        manager.pause(record.sandbox_id)
        with pytest.raises(SandboxStateError, match="resume it first"):
            provider.connect(record.handle)
        manager.resume(record.sandbox_id)
        result = manager.run(record.sandbox_id, "python", "print(2)")
        assert result.stdout == "2\n"
        assert exec_ids(provider, record.handle) == []
    finally:
        manager.stop(record.sandbox_id)
        manager.close()


def test_resume_sends_the_deadline_on_the_stream_kept_over_the_pause(tmp_path, provider):
    """No new stream on resume: the new deadline goes on the kept one, read first by the
    thawed agent, whose watchdog then ends the sandbox at it (3 s)."""
    shift = [0.0]
    manager = SandboxManager(Settings.load(home=tmp_path / "home", provider="docker"),
                             clock=lambda: time.time() + shift[0])
    record = manager.create("kept", ttl_minutes=1)
    try:
        assert manager.run(record.sandbox_id, "python", "x = 1").exit_code == 0
        manager.pause(record.sandbox_id)
        backend = manager.provider("docker")
        opened = []
        connect = backend.connect
        backend.connect = lambda handle: opened.append(handle) or connect(handle)
        # the resume's clock puts its deadline (expiry + slack) 2 s from now
        shift[0] = 2.0 - 60 - WATCHDOG_SLACK_SECONDS
        manager.resume(record.sandbox_id)
        assert opened == []
        end = time.monotonic() + 30
        while provider.alive(record.handle) and time.monotonic() < end:
            time.sleep(0.2)
        assert not provider.alive(record.handle), "the agent never got the resume's deadline"
    finally:
        manager.stop(record.sandbox_id)
        manager.close()


def test_a_failed_thaw_leaves_its_deadline_for_the_next_one(tmp_path, provider):
    """The unpause fails (the container stays frozen) after the deadline was sent: the agent
    reads it at the next thaw and, it having passed, ends the sandbox: never later than the
    host's (2 s)."""
    shift = [0.0]
    manager = SandboxManager(Settings.load(home=tmp_path / "home", provider="docker"),
                             clock=lambda: time.time() + shift[0])
    record = manager.create("failed-thaw", ttl_minutes=1)
    try:
        assert manager.run(record.sandbox_id, "python", "x = 1").exit_code == 0
        manager.pause(record.sandbox_id)
        backend = manager.provider("docker")
        shift[0] = 0.5 - 60 - WATCHDOG_SLACK_SECONDS  # the deadline sent: 0.5 s from now

        def fails(handle):
            raise ProviderUnavailableError("the engine went away")

        backend.resume = fails
        with pytest.raises(ProviderUnavailableError):
            manager.resume(record.sandbox_id)
        del backend.resume
        assert provider.state(record.handle) == "paused"
        time.sleep(1.0)
        shift[0] = 0.0  # this resume's own deadline: a minute away
        with contextlib.suppress(AgentError):  # the agent may end before the new deadline
            manager.resume(record.sandbox_id)
        end = time.monotonic() + 30
        while provider.alive(record.handle) and time.monotonic() < end:
            time.sleep(0.2)
        assert not provider.alive(record.handle), "the thawed agent outlived the deadline sent"
    finally:
        manager.stop(record.sandbox_id)
        manager.close()


def test_resume_opens_a_new_stream_when_the_kept_one_broke(tmp_path, provider):
    """The kept stream closed during the pause: the deadline goes on a new stream opened
    after the thaw (1 s)."""
    manager = SandboxManager(Settings.load(home=tmp_path / "home", provider="docker"))
    record = manager.create("broken")
    try:
        assert manager.run(record.sandbox_id, "python", "x = 1").exit_code == 0
        manager.pause(record.sandbox_id)
        client = manager._clients[record.sandbox_id]
        client._channel.shutdown(socket.SHUT_RDWR)
        end = time.monotonic() + 5
        while client._channel is not None and time.monotonic() < end:
            time.sleep(0.01)  # its reader sees the end and drops it
        manager.resume(record.sandbox_id)
        assert manager.run(record.sandbox_id, "python", "print(3)").stdout == "3\n"
    finally:
        manager.stop(record.sandbox_id)
        manager.close()


def test_a_new_process_runs_in_a_docker_sandbox_without_the_docker_sdk(tmp_path):
    """Neither docker-py nor an engine round trip in a new process's run (1 s)."""
    home = tmp_path / "home"
    manager = SandboxManager(Settings.load(home=home, provider="docker"))
    record = manager.create("fresh-process")
    try:
        script = ("import sys; from nexus_kernel.config import Settings; "
                  "from nexus_kernel.manager import SandboxManager; "
                  f"m = SandboxManager(Settings.load(home={str(home)!r})); "
                  f"print(m.run({record.sandbox_id!r}, 'python', 'print(1)').stdout, end=''); "
                  "print(sorted(n for n in sys.modules if n.split('.')[0] in "
                  "('docker', 'requests', 'urllib3')))")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "NEXUS_HOME": str(home)})
        assert out.stdout.splitlines() == ["1", "[]"], out.stderr[-2000:]
    finally:
        manager.stop(record.sandbox_id)
        manager.close()
