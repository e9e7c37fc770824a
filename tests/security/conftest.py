"""Shared machinery of the adversarial suites (``tests/security``: hostile code,
``tests/reliability``: faults and bad input).

Every test runs on the two real providers: ``local`` (bubblewrap) and ``docker`` (a real
engine; skipped when it is missing, a failure under NEXUS_REQUIRE_DOCKER=1 as in CI); the
security suite also on ``docker-runsc``: docker under gVisor (NEXUS_DOCKER_RUNTIME=runsc).

- :class:`Env`: one provider's manager (attack limits, a private NEXUS_HOME) with the host-side
  checks: the processes left in a sandbox (cgroup tasks and a /proc scan of its pid namespace
  for local, ``docker top`` for docker) and that nothing is left after a stop.
- :class:`Canary`: a sandbox that keeps answering round trips while another one is attacked.
- :class:`Box`: one sandbox under attack, with ``run`` returning the result even on timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nexus_kernel.agent.client import AgentClient
from nexus_kernel.agent.sandbox_agent.zygote import ZYGOTE_MARK
from nexus_kernel.config import Settings
from nexus_kernel.errors import ExecutionTimeoutError
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import ExecResult, SandboxRecord, Status

from ..conftest import ROOT, docker_not_ready, docker_problem

PROVIDERS = ("local", "docker")
#: The provider parameter of every test, marked so `-m "not docker"` selects local only.
PROVIDER_PARAMS = [pytest.param("local", marks=pytest.mark.bwrap),
                   pytest.param("docker", marks=pytest.mark.docker)]
#: Parameters that are a provider under a runtime: name -> (provider, docker runtime).
RUNTIMES = {"docker-runsc": ("docker", "runsc")}
#: The security suite's parameters: the providers, and docker under gVisor.
SECURITY_PARAMS = [*PROVIDER_PARAMS, pytest.param("docker-runsc", marks=pytest.mark.docker)]
#: Modules whose docker-runsc cases are not collected, and why (the CI budget: runsc costs
#: ~1 s more per sandbox and per session start).
NOT_ON_RUNSC = {
    # caps bound gVisor itself: a bomb ends the whole sandbox (test_contract's
    # docker-runsc limits case shows it), the inode and usage figures are gVisor's
    "test_resources.py": "caps end the whole gVisor sandbox",
    # per-sandbox host uids: gVisor's sentry runs as 65534 on the host, its tasks are not
    # host processes (test_uids keeps its own PROVIDER_PARAMS)
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the docker-runsc cases of :data:`NOT_ON_RUNSC`'s modules."""
    keep, drop = [], []
    for item in items:
        name = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        on_runsc = "[docker-runsc" in item.nodeid
        (drop if on_runsc and name in NOT_ON_RUNSC else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
LANGUAGES = ("python", "bash", "javascript")

#: Caps of every sandbox these suites attack: small, so floods and bombs end fast in CI.
ATTACK_LIMITS: dict[str, Any] = {
    "memory_mb": 256,
    "pids": 128,
    "cpus": 1.0,
    "disk_mb": 64,
    "output_bytes": 1 << 20,
}
#: Worst round trip (s) the canary may take while a neighbour is attacked (2-core CI host).
CANARY_MAX_RTT = 3.0
#: How long the host waits for a sandbox to be back to its agent alone after a run.
SETTLE_SECONDS = 5.0

#: The tests that act as an unprivileged caller (uid 65534) need root to become it.
needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                   reason="needs root to act as an unprivileged caller")


def run_as_nobody(script: str, timeout: float, **values: Any) -> dict[str, Any]:
    """Run the Python ``script`` as uid 65534, an unprivileged caller with a nexus of its own,
    and return the JSON object its last stdout line prints. The script finds ``ROOT`` (the
    project), ``HOME`` (a private NEXUS_HOME it owns), ``DEPS`` (the pure-Python packages the
    manager needs, copied where it can read them: the host interpreter's live under root's
    0700 home) and each keyword of ``values`` defined; ``sys.path`` is left to it."""
    outer = Path(tempfile.mkdtemp(dir="/var/tmp"))  # reachable by uid 65534, unlike /tmp/pytest-*
    try:
        outer.chmod(0o755)
        home = outer / "home"
        home.mkdir(mode=0o700)
        import diskcache

        shutil.copytree(Path(diskcache.__file__).parent, outer / "deps" / "diskcache")
        os.chown(home, 65534, 65534)
        names = {"ROOT": str(ROOT), "HOME": str(home), "DEPS": str(outer / "deps"), **values}
        prelude = "".join(f"{name} = {value!r}\n" for name, value in names.items())
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              sys.executable, "-c", prelude + script], capture_output=True,
                             text=True, cwd=outer, timeout=timeout,
                             env={"PATH": os.environ["PATH"], "NEXUS_DEFAULT_TEMPLATE": "minimal"})
        assert run.returncode == 0, run.stderr[-2000:]
        return json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(outer)


def provider_ready(name: str) -> None:
    """Skip (or fail under NEXUS_REQUIRE_DOCKER=1) when provider ``name`` cannot run here."""
    if name == "local" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    name, runtime = RUNTIMES.get(name, (name, None))
    if name == "docker":
        problem = docker_problem(Settings.load(docker_runtime=runtime))
        if problem:
            docker_not_ready(problem)


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ------------------------------------------------------------------ host-side process views


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _state(pid: int) -> str:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "X"
    return data[data.rfind(")") + 2 :].split()[0]


def _is_infrastructure(command: str) -> bool:
    """The agent server, its exec relays, its python zygote and Docker's init: the sandbox's
    own machinery."""
    if "sandbox_agent" in command and (" serve " in command or " relay " in command):
        return True
    if f"-c {ZYGOTE_MARK}" in command:
        return True
    return command.startswith("/sbin/docker-init") or command.startswith("docker-init")


def local_processes(handle: dict[str, Any]) -> dict[int, str]:
    """Host pids of every process of a local sandbox: its cgroup tasks plus a /proc scan for
    its pid namespace (zombies included, shown as ``<defunct>``)."""
    from nexus_kernel.providers import local
    from nexus_kernel.providers.cgroups import Cgroup

    # Once the jail's pid 1 is gone the kernel has killed its namespace, whose inode number
    # a later sandbox may then reuse: only a live pid 1's namespace is scanned.
    child = handle.get("child_pid")
    live = child and local._same_process(child, handle.get("child_start"))
    pids = set(local._namespace_pids(handle)) if live else set()
    cgroup = Cgroup.from_dict(handle.get("cgroup"))
    if cgroup is not None:
        pids |= cgroup.pids()
    found = {}
    for pid in pids:
        state = _state(pid)
        if state == "X":
            continue
        command = _cmdline(pid)
        found[pid] = f"{command} <defunct>" if state == "Z" else command
    return found


def gvisor_processes(api: Any, container_id: str) -> dict[int, str]:
    """pid -> command of a gVisor container's processes, in its own pid namespace: `docker
    top` lists the host's processes of those pids there (gVisor's pids are not the host's),
    so `ps` runs inside (and is left out)."""
    import docker

    argv = ["ps", "-ww", "-eo", "pid,stat,args"]
    try:
        exec_id = api.exec_create(container_id, argv, user="0:0")["Id"]
        out = api.exec_start(exec_id).decode(errors="replace")
    except (docker.errors.NotFound, docker.errors.APIError):
        return {}
    found = {}
    for line in out.splitlines()[1:]:
        pid, state, command = (line.split(None, 2) + ["", ""])[:3]
        if pid.isdigit() and command != " ".join(argv):
            found[int(pid)] = f"{command} <defunct>" if state.startswith("Z") else command
    return found


# ------------------------------------------------------------------ environment per provider


class Env:
    """One provider (a parameter: ``docker-runsc`` is docker, ``runtime`` runsc): a manager
    on a private NEXUS_HOME with :data:`ATTACK_LIMITS`."""

    def __init__(self, name: str, home: Path, **overrides: Any):
        self.name, self.runtime = RUNTIMES.get(name, (name, ""))
        self.home = home
        limits = {**ATTACK_LIMITS, **overrides}
        self.settings = Settings.load(home=home, user="tester", provider=self.name,
                                      docker_runtime=self.runtime, **limits)
        self.manager = SandboxManager(self.settings, is_admin=True)

    @property
    def provider(self) -> Any:
        return self.manager.provider(self.name)

    def create(self, name: str = "attacked", **kwargs: Any) -> Box:
        return Box(self, self.manager.create(name, **kwargs))

    def environ(self) -> dict[str, str]:
        """The environment of a `nexus` CLI or API process working on this store."""
        limits = {f"NEXUS_{key.upper()}": str(value) for key, value in ATTACK_LIMITS.items()}
        return {**os.environ, **limits, "NEXUS_HOME": str(self.home), "NEXUS_USER": "tester",
                "NEXUS_PROVIDER": self.name, "NEXUS_DOCKER_RUNTIME": self.runtime}

    def client(self, record: SandboxRecord) -> AgentClient:
        """A private agent client (its own stream) for ``record``'s sandbox."""
        provider, handle = self.provider, record.handle
        return AgentClient(lambda: provider.connect(handle), handle["token"])

    # -- what is left on the host -------------------------------------------------------

    def processes(self, record: SandboxRecord) -> dict[int, str]:
        """pid -> command of the sandbox's processes, as the host sees them."""
        if self.name == "local":
            return local_processes(record.handle)
        import docker

        api = self.provider._client(record.handle.get("docker_host", "")).api
        if record.handle.get("gvisor"):
            return gvisor_processes(api, record.handle["container_id"])
        try:  # -ww: whole command lines (ps cuts them at 80 columns otherwise)
            top = api.top(record.handle["container_id"], ps_args="-ww -eo pid,stat,args")
        except (docker.errors.NotFound, docker.errors.APIError):
            return {}
        return {
            int(pid): f"{command} <defunct>" if state.startswith("Z") else command
            for pid, state, command in top.get("Processes") or []
        }

    def leftovers(self, record: SandboxRecord, keep: tuple[int, ...] = ()) -> list[str]:
        """The sandbox's processes other than its agent machinery (and ``keep``)."""
        handle = record.handle
        infrastructure = {handle.get("pid"), handle.get("child_pid"), *keep}
        return sorted(
            f"{pid} {command}"
            for pid, command in self.processes(record).items()
            if pid not in infrastructure and not _is_infrastructure(command)
        )

    def assert_settles(self, record: SandboxRecord, timeout: float = SETTLE_SECONDS) -> None:
        """Within ``timeout`` the sandbox is back to its agent alone (0 user processes)."""
        left: list[str] = []

        def clean() -> bool:
            left[:] = self.leftovers(record)
            return not left

        assert wait_until(clean, timeout), f"processes left in the sandbox: {left}"

    def assert_gone(self, record: SandboxRecord, timeout: float = 10.0) -> None:
        """Nothing of the sandbox is left on the host: processes, cgroups, files, container."""
        handle = record.handle

        def listed() -> bool:
            resources = self.provider.list_resources(self.manager.store.store_id)
            return any(r["sandbox_id"] == record.sandbox_id for r in resources)

        assert wait_until(lambda: not listed(), timeout), f"{record.sandbox_id} is still listed"
        if not handle:  # it died before its handle was stored: the listing is what we have
            return
        if self.name == "local":
            from nexus_kernel.providers.cgroups import Cgroup

            assert wait_until(lambda: not local_processes(handle), timeout), local_processes(handle)
            cgroup = Cgroup.from_dict(handle.get("cgroup"))
            if cgroup is not None:
                assert not any(os.path.exists(p) for p in cgroup.paths.values())
            assert not Path(handle["dir"]).exists(), f"{handle['dir']} is left on disk"
        else:
            assert wait_until(lambda: self.provider.state(handle) is None, timeout), (
                f"container {handle['container_id'][:12]} still exists"
            )

    def close(self) -> None:
        for record in self.manager.list(all_users=True):
            if record.status is not Status.STOPPED:
                with contextlib.suppress(Exception):
                    self.manager.stop(record.sandbox_id)
        self.manager.close()


@dataclass
class Box:
    """One sandbox under attack."""

    env: Env
    record: SandboxRecord

    @property
    def id(self) -> str:
        return self.record.sandbox_id

    def run(self, language: str, code: str, timeout: float = 10.0, **kwargs: Any) -> ExecResult:
        """Run and return the result; a timeout returns the partial result (timed_out)."""
        try:
            return self.env.manager.run(self.id, language, code, timeout=timeout, **kwargs)
        except ExecutionTimeoutError as exc:
            assert exc.result is not None and exc.result.timed_out
            return exc.result

    def ok(self, language: str, code: str, timeout: float = 10.0) -> str:
        result = self.run(language, code, timeout=timeout)
        assert result.exit_code == 0, result
        return result.stdout

    def alive(self) -> bool:
        return self.env.provider.alive(self.record.handle)

    def leftovers(self) -> list[str]:
        return self.env.leftovers(self.record)

    def assert_settles(self) -> None:
        self.env.assert_settles(self.record)

    def stop(self) -> None:
        self.env.manager.stop(self.id)
        self.env.assert_gone(self.record)


# ------------------------------------------------------------------ the canary


@dataclass
class Watch:
    """Round trips (s) the canary answered during one attack, and the failures seen."""

    rtts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.rtts:
            return "no round trip"
        return (
            f"{len(self.rtts)} round trips, median {statistics.median(self.rtts) * 1000:.0f} ms, "
            f"max {max(self.rtts) * 1000:.0f} ms"
        )


class Canary:
    """A neighbour sandbox: while a test attacks another sandbox, a thread keeps running
    ``echo`` in the canary and records each round trip."""

    def __init__(self, env: Env):
        self.env = env
        self.record = env.manager.create("canary", ttl_minutes=60)
        self.client = env.client(self.record)

    def round_trip(self) -> float:
        start = time.perf_counter()
        result = self.client.run("bash", "echo canary", timeout=30)
        assert result["stdout"] == "canary\n", result
        return time.perf_counter() - start

    @contextlib.contextmanager
    def watch(self, max_rtt: float = CANARY_MAX_RTT) -> Iterator[Watch]:
        """Measure round trips during the block; afterwards assert the canary answered every
        time, within ``max_rtt`` seconds, and is still alive."""
        watch = Watch()
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                try:
                    watch.rtts.append(self.round_trip())
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    watch.errors.append(f"{type(exc).__name__}: {exc}")
                stop.wait(0.1)

        thread = threading.Thread(target=probe, name="canary", daemon=True)
        thread.start()
        try:
            yield watch
        finally:
            stop.set()
            thread.join(60)
        assert not watch.errors, f"the canary failed during the attack: {watch.errors[:3]}"
        watch.rtts.append(self.round_trip())  # and it still answers afterwards
        assert max(watch.rtts) < max_rtt, f"the canary stalled: {watch.summary()}"
        assert self.env.provider.alive(self.record.handle)

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------ fixtures


def provider_env(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The provider under test (session-scoped: one manager and one canary per provider)."""
    provider_ready(request.param)
    environment = Env(request.param, tmp_path_factory.mktemp(f"adversarial-{request.param}"))
    yield environment
    environment.close()


env = pytest.fixture(scope="session", params=SECURITY_PARAMS, name="env")(provider_env)


@pytest.fixture(scope="session")
def canary(env: Env) -> Iterator[Canary]:
    bird = Canary(env)
    yield bird
    bird.close()


@pytest.fixture
def box(env: Env) -> Iterator[Box]:
    """A fresh sandbox for one test; stopped afterwards, and nothing of it may be left."""
    victim = env.create()
    yield victim
    victim.stop()


@pytest.fixture(scope="module")
def shared_box(env: Env) -> Iterator[Box]:
    """One sandbox for a module's read-only checks (recreated per provider)."""
    victim = env.create("shared")
    yield victim
    victim.stop()
