"""Restart the Docker daemon under a running sandbox (slow, root).

Self-contained: the test starts a private ``dockerd`` of its own (own data root, exec root,
socket and bridge; no iptables changes) with the sandbox image loaded into it, restarts that
one under a running sandbox, and stops it at the end. The shared daemon, and whatever other
tests run on it at the same time, is never touched.

Documented behaviour (README, Security): the daemon stops its containers on the way down
(this daemon runs its own containerd, as ``dockerd`` started by hand does; live-restore
needs a containerd that outlives the daemon); the agent takes the SIGTERM as its shutdown and
kills everything; the auto-removed container is gone once the daemon is back; the record is
reconciled to ``stopped`` with why on its next status or reap; nothing is left; new sandboxes
work at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.models import Status

from ..conftest import docker_not_ready
from ..security.conftest import Env, provider_ready, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(300)]

DATA = Path("/var/lib/nexus-test-dockerd")
RUN = Path("/run/nexus-test-dockerd")
SOCKET = RUN / "docker.sock"
BRIDGE = "nexustest0"
BRIDGE_ADDRESS = "10.217.77.1/24"
WAIT = 90.0


def _ping(host: str) -> bool:
    from nexus_kernel.providers.docker import open_client

    try:
        client = open_client(host, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - down is an answer here
        return False


class PrivateDaemon:
    """A dockerd of this test's own, started, restarted and stopped by it."""

    host = f"unix://{SOCKET}"

    def __init__(self, storage_driver: str):
        self.argv = [
            "dockerd", "--data-root", str(DATA), "--exec-root", str(RUN / "exec"),
            "--pidfile", str(RUN / "docker.pid"), "-H", self.host, "--bridge", BRIDGE,
            "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--storage-driver", storage_driver,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        RUN.mkdir(parents=True, exist_ok=True)
        with open(RUN / "dockerd.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        if not wait_until(lambda: _ping(self.host) or self.proc.poll() is not None, WAIT, 0.3):
            raise AssertionError("the private dockerd did not start")
        assert self.proc.poll() is None, (RUN / "dockerd.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _bridge(action: str) -> None:
    if action == "add":
        subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], capture_output=True)
        subprocess.run(["ip", "addr", "replace", BRIDGE_ADDRESS, "dev", BRIDGE], check=True)
        subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    else:
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


@pytest.fixture(scope="module")
def private_daemon():
    """The private daemon, with the current sandbox image loaded into it."""
    provider_ready("docker")
    missing = [tool for tool in ("dockerd", "docker", "ip") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        docker_not_ready(f"restarting a dockerd needs root and {', '.join(missing) or 'it'}")
    import docker

    image = Settings.load().docker_image
    shared = docker.from_env()
    driver = shared.info()["Driver"]
    wanted = shared.images.get(image).id
    shared.close()
    _bridge("add")
    daemon = PrivateDaemon(driver)
    try:
        daemon.start()
        private = docker.DockerClient(base_url=daemon.host, timeout=120)
        try:
            have = private.images.get(image).id
        except docker.errors.ImageNotFound:
            have = None
        if have != wanted:  # kept in DATA between runs: loaded again only when it changed
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            subprocess.run(["docker", "-H", daemon.host, "load", "-q"], stdin=save.stdout,
                           check=True, capture_output=True, timeout=WAIT)
            save.wait(WAIT)
        private.close()
        yield daemon
    finally:
        daemon.stop()
        _bridge("del")


def test_restart_dockerd_under_a_running_sandbox(private_daemon, tmp_path):
    env = Env("docker", tmp_path / "home", docker_host=private_daemon.host)
    try:
        record = env.manager.create("under-restart")
        sandbox_id = record.sandbox_id
        env.manager.run(sandbox_id, "python", "kept = 42", session="s")
        assert env.provider.alive(record.handle)

        private_daemon.restart()
        env.manager.close()  # streams died with the daemon

        assert wait_until(lambda: env.manager.status(sandbox_id).status is Status.STOPPED, 30)
        stopped = env.manager.status(sandbox_id)
        assert "ended outside nexus" in (stopped.error or "")
        env.manager.reap()
        env.assert_gone(record, timeout=30)
        assert env.manager.stop(sandbox_id).status is Status.STOPPED  # idempotent
        fresh = env.manager.create("after-restart")
        assert env.manager.run(fresh.sandbox_id, "bash", "echo fine").stdout == "fine\n"
    finally:
        env.close()
