"""The local provider against the real bubblewrap jail: real processes, real cgroups."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nexus_kernel.agent.client import AgentClient
from nexus_kernel.agent.sandbox_agent.wire import proof
from nexus_kernel.config import Settings
from nexus_kernel.errors import AgentError, ProviderError, ProviderUnavailableError
from nexus_kernel.models import Limits, SandboxSpec
from nexus_kernel.providers import local
from nexus_kernel.providers.cgroups import Cgroup, create_cgroup, prepay_attach
from nexus_kernel.providers.local import LocalProvider

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(
        shutil.which("bwrap") is None,
        reason="bubblewrap is not installed (apt-get install bubblewrap)",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
CANARY = "NEXUS_TEST_CANARY_SECRET"


class Agent:
    """Just enough of the agent protocol (JSON lines) to drive a sandbox from a test."""

    def __init__(self, provider: LocalProvider, handle: dict[str, Any]):
        self.sock = provider.connect(handle)
        self.file = self.sock.makefile("rwb")
        token, mine = handle["token"], "cd" * 16
        _, answer = self.request("auth", nonce=mine)
        assert answer["proof"] == proof(token, "agent", mine, answer["nonce"]), answer
        self.request("auth", proof=proof(token, "host", mine, answer["nonce"]))

    def request(self, op: str, **args: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rid = uuid.uuid4().hex
        self.file.write((json.dumps({"id": rid, "op": op, **args}) + "\n").encode())
        self.file.flush()
        events = []
        while True:
            line = self.file.readline()
            assert line, "agent closed the connection"
            event = json.loads(line)
            if event.get("id") != rid:
                continue
            if event["ev"] in ("done", "fail"):
                return events, event
            events.append(event)

    def run(self, code: str, language: str = "bash", timeout: float | None = 30) -> dict[str, Any]:
        events, end = self.request(
            "run", language=language, code=code, timeout=timeout, session=None, output_limit=1 << 20
        )
        assert end["ev"] == "done", end
        out = "".join(e["data"] for e in events if e["ev"] == "stdout")
        err = "".join(e["data"] for e in events if e["ev"] == "stderr")
        return {**end, "stdout": out, "stderr": err}

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def make_spec(**kw: Any) -> SandboxSpec:
    kw.setdefault("sandbox_id", "sb-" + uuid.uuid4().hex[:10])
    return SandboxSpec(owner="tester", store_id="store-test", **kw)


def namespace_pids(handle: dict[str, Any]) -> set[int]:
    """Live (non-zombie) host pids in the sandbox's pid namespace."""
    live = set()
    for pid in local._namespace_pids(handle):
        fields = local._stat_fields(pid)
        if fields and fields[0] != "Z":
            live.add(pid)
    return live


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings.load(home=tmp_path_factory.mktemp("nexus-home"))


@pytest.fixture(scope="module")
def provider(settings: Settings) -> LocalProvider:
    return LocalProvider(settings)


@pytest.fixture(scope="module")
def shared(provider: LocalProvider) -> Iterator[tuple[dict[str, Any], Agent]]:
    """One sandbox for the read-only isolation checks, created with a canary in the env."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CANARY, "leaked")
        handle = provider.create(make_spec())
    agent = Agent(provider, handle)
    yield handle, agent
    agent.close()
    provider.destroy(handle)


@pytest.fixture
def created(provider: LocalProvider) -> Iterator[list[dict[str, Any]]]:
    """Handles to destroy at the end of the test even when it fails (destroy is idempotent)."""
    handles: list[dict[str, Any]] = []
    yield handles
    for handle in handles:
        provider.destroy(handle)


@pytest.fixture
def fresh(provider: LocalProvider) -> Iterator[Any]:
    """Factory of sandboxes destroyed at the end of the test."""
    made: list[tuple[dict[str, Any], Agent]] = []

    def make(**kw: Any) -> tuple[dict[str, Any], Agent]:
        p = LocalProvider(provider.settings, **kw.pop("options", {}))
        handle = p.create(make_spec(**kw))
        made.append((handle, Agent(p, handle)))
        return made[-1]

    yield make
    for handle, agent in made:
        agent.close()
        provider.destroy(handle)


# -------------------------------------------------------------------- availability


def test_missing_bwrap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.setattr(local.shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(ProviderUnavailableError, match="apt-get install bubblewrap"):
        LocalProvider.check_available(settings)
    with pytest.raises(ProviderUnavailableError, match="bubblewrap is not installed"):
        LocalProvider(settings).create(make_spec())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root picks the jail's host uid")
def test_refuses_host_root_as_the_jail_uid(settings: Settings) -> None:
    with pytest.raises(ProviderError, match="host root"):
        LocalProvider(settings, uid=0).create(make_spec())


def test_capabilities() -> None:
    caps = LocalProvider.capabilities
    assert (caps.pause, caps.resume, caps.network, caps.gpu) == (True, True, True, False)
    assert LocalProvider.name == "local"


# -------------------------------------------------------------------- isolation


def test_handle_shape(shared: tuple[dict[str, Any], Agent], settings: Settings) -> None:
    handle, _ = shared
    assert set(handle) >= {"token", "socket", "dir", "pid", "child_pid", "cgroup", "uid", "limits"}
    assert Path(handle["dir"]) == settings.sandboxes_dir / handle["sandbox_id"]
    assert json.loads(json.dumps(handle)) == handle
    assert not [p for p in Path(handle["dir"]).rglob("*") if p.name == "token"], "no token file"
    sock = Path(handle["socket"])
    assert sock.parent.stat().st_mode & 0o777 == 0o700 and sock.lstat().st_uid == os.geteuid()


def test_identity_and_privileges(shared: tuple[dict[str, Any], Agent]) -> None:
    handle, agent = shared
    r = agent.run("id -u; id -g; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status")
    lines = r["stdout"].split("\n")
    assert lines[:2] == ["1000", "1000"]
    status = dict(line.split(":\t") for line in lines[2:] if line)
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    # On the host, no process of the sandbox runs as root.
    pids = namespace_pids(handle)
    assert pids
    for pid in pids:
        assert os.stat(f"/proc/{pid}").st_uid == handle["uid"]
    if os.geteuid() == 0:
        assert handle["uid"] != 0
    # No nested user namespaces (a smaller kernel attack surface).
    r = agent.run("unshare --user true 2>&1; echo rc=$?")
    assert "rc=0" not in r["stdout"]


def test_host_secrets_are_not_visible(shared: tuple[dict[str, Any], Agent]) -> None:
    _, agent = shared
    r = agent.run("cat /etc/shadow; ls /root; ls /etc/ssh; echo done")
    assert r["stdout"].strip() == "done"
    assert "No such file" in r["stderr"]
    r = agent.run("ls /etc")
    assert "shadow" not in r["stdout"].split()
    r = agent.run("env; echo ---; cat /proc/1/environ | tr '\\0' '\\n'")
    assert CANARY not in r["stdout"]
    assert "HOME=/home/user" in r["stdout"]
    r = agent.run("import os; print(sorted(os.environ))", language="python")
    assert CANARY not in r["stdout"]
    r = agent.run("getent passwd 1000; hostname; pwd")
    assert r["stdout"].split("\n")[:3] == ["user:x:1000:1000:user:/home/user:/bin/bash", "sandbox", "/home/user"]


def test_no_network(shared: tuple[dict[str, Any], Agent]) -> None:
    _, agent = shared
    code = (
        "import socket, time\n"
        "t = time.time()\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 53), timeout=5)\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print('failed', type(e).__name__, round(time.time() - t, 2))\n"
    )
    r = agent.run(code, language="python")
    assert r["stdout"].startswith("failed"), r
    assert float(r["stdout"].split()[-1]) < 1.0
    r = agent.run("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")
    assert r["stdout"].split() == ["lo"]


def test_sees_only_its_own_processes(shared: tuple[dict[str, Any], Agent]) -> None:
    _, agent = shared
    r = agent.run("ls /proc | grep -E '^[0-9]+$' | wc -l; ps -eo pid,args")
    count = int(r["stdout"].split("\n")[0])
    assert count < 10, r["stdout"]
    assert "pytest" not in r["stdout"]
    assert str(os.getpid()) not in r["stdout"].split()


def test_writes_only_in_home_and_tmp(shared: tuple[dict[str, Any], Agent]) -> None:
    _, agent = shared
    for path in ("/x", "/etc/x", "/usr/x", "/bin/x", "/opt/nexus-agent/x", "/dev/x", "/var/x", "/proc/x"):
        r = agent.run(f"touch {path} && echo WROTE")
        assert "WROTE" not in r["stdout"], path
    r = agent.run("touch /home/user/ok /tmp/ok /var/tmp/ok2 /dev/shm/ok && echo WROTE")
    assert "WROTE" in r["stdout"], r


def test_small_etc_dirs_show_the_hosts_files_read_only(shared: tuple[dict[str, Any], Agent]) -> None:
    """A whitelisted /etc directory recreated in the root tmpfs (not bound) shows the
    host's files and links, and cannot be written; the synthesised files came through
    pipes (nothing of them on the host's disk)."""
    handle, agent = shared
    assert not (Path(handle["dir"]) / "etc").exists()
    host = sorted(p.name for p in Path("/etc/ld.so.conf.d").iterdir())
    r = agent.run("ls /etc/ld.so.conf.d; cat /etc/ld.so.conf.d/*; touch /etc/ld.so.conf.d/x && echo WROTE")
    expected = "".join(Path("/etc/ld.so.conf.d", name).read_text() for name in host)
    assert r["stdout"] == "\n".join(host) + "\n" + expected, r


def test_languages(shared: tuple[dict[str, Any], Agent]) -> None:
    _, agent = shared
    assert agent.run("print(6 * 7)", language="python")["stdout"].strip() == "42"
    assert agent.run("console.log(6 * 7)", language="javascript")["stdout"].strip() == "42"
    assert agent.run("echo $((6 * 7))")["stdout"].strip() == "42"


def test_sessions_through_agent_client(shared: tuple[dict[str, Any], Agent], provider: LocalProvider) -> None:
    """The project's own client works over the provider's channel; sessions keep state."""
    from nexus_kernel.agent.client import AgentClient

    handle, _ = shared
    with AgentClient(lambda: provider.connect(handle), handle["token"]) as client:
        assert "python" in client.hello()["languages"]
        client.run("python", "x = 41", session="s1")
        assert client.run("python", "x + 1", session="s1")["result"]["text/plain"] == "42"
        client.run("bash", "cd /tmp; export V=7", session="s1")
        assert client.run("bash", "echo $PWD $V", session="s1")["stdout"] == "/tmp 7\n"
        client.run("javascript", "var n = 5", session="s1")
        assert client.run("javascript", "console.log(n * 2)", session="s1")["stdout"] == "10\n"


def test_files_persist_between_runs(shared: tuple[dict[str, Any], Agent]) -> None:
    handle, agent = shared
    agent.run("open('/home/user/note.txt', 'w').write('hello')", language="python")
    assert agent.run("cat note.txt")["stdout"] == "hello"
    agent.run("echo scratch > /tmp/scratch")
    assert agent.run("cat /tmp/scratch")["stdout"] == "scratch\n"
    # home is the jail's own tmpfs: seen from the host only through the jail's root
    host_file = in_jail(handle, "/home/user/note.txt")
    assert host_file.read_text() == "hello"
    assert host_file.stat().st_uid == handle["uid"]
    assert not (Path(handle["dir"]) / "home").exists()  # nothing on the host's disk


def test_second_process_reattaches_from_the_handle(
    shared: tuple[dict[str, Any], Agent], settings: Settings
) -> None:
    handle, _ = shared
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from nexus_kernel.config import Settings\n"
        "from nexus_kernel.providers.local import LocalProvider\n"
        "handle = json.loads(sys.argv[1])\n"
        "p = LocalProvider(Settings.load(home=Path(sys.argv[2])))\n"
        "assert p.alive(handle)\n"
        "from nexus_kernel.agent.client import AgentClient\n"
        "print(json.dumps(AgentClient(lambda: p.connect(handle), handle['token']).hello()))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, json.dumps(handle), str(settings.home)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pid"] == 1  # the jail's init


def test_wrong_token_is_refused(shared: tuple[dict[str, Any], Agent], provider: LocalProvider) -> None:
    handle, _ = shared
    with (AgentClient(lambda: provider.connect(handle), "0" * 64) as other,
          pytest.raises(AgentError, match="did not prove it is the agent")):
        other.hello()


def test_list_resources(shared: tuple[dict[str, Any], Agent], provider: LocalProvider) -> None:
    handle, _ = shared
    found = provider.list_resources("store-test")
    assert {"sandbox_id": handle["sandbox_id"], "handle": handle} in found
    assert provider.list_resources("another-store") == []


def test_network_when_asked(fresh: Any) -> None:
    _, agent = fresh(network=True)
    r = agent.run("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ls /etc; cat /etc/resolv.conf")
    names = r["stdout"].split()
    assert "resolv.conf" in names and "ssl" in names
    # a namespace of its own (user-mode networking), never the host's interfaces
    assert "tap0" in names and "lo" in names
    host_ifaces = {line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]}
    assert not (host_ifaces - {"lo"}) & set(names)
    assert "nameserver 10.0.2.3" in r["stdout"]


@pytest.mark.parametrize(
    ("agent_code", "expected"),
    [
        ("import sys; print('agent broke', file=sys.stderr); sys.exit(3)", "agent broke"),
        ("import time, sys; print('stuck', file=sys.stderr, flush=True); time.sleep(60)", "timed out"),
    ],
    ids=["exits", "hangs"],
)
def test_failed_start_is_reported_and_cleaned_up(
    tmp_path: Path, settings: Settings, agent_code: str, expected: str
) -> None:
    bad_agent = tmp_path / "agent"
    bad_agent.mkdir()
    (bad_agent / "sandbox_agent").mkdir()
    (bad_agent / "sandbox_agent" / "__main__.py").write_text(agent_code)
    provider = LocalProvider(settings, agent_dir=str(bad_agent), ready_timeout=1.0)
    spec = make_spec()
    before = set(os.listdir(settings.sandboxes_dir)) if settings.sandboxes_dir.exists() else set()
    with pytest.raises(ProviderError, match=expected) as info:
        provider.create(spec)
    assert "agent log" in str(info.value)
    assert set(os.listdir(settings.sandboxes_dir)) == before
    for controller in ("memory", "pids", "freezer", "cpu"):
        assert not Path(f"/sys/fs/cgroup/{controller}/nexus/{spec.sandbox_id}").exists()
    assert not _processes_running_agent(agent_code)


def _processes_running_agent(code: str) -> list[int]:
    """Live processes whose jail holds an agent with exactly this source."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not local._same_process(int(name), None):
            continue
        try:
            if b"sandbox_agent" not in Path(f"/proc/{name}/cmdline").read_bytes():
                continue
            if Path(f"/proc/{name}/root/opt/nexus-agent/sandbox_agent/__main__.py").read_text() == code:
                found.append(int(name))
        except OSError:
            continue
    return found


def test_long_state_path_still_connects(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 20] * 5)
    provider = LocalProvider(Settings.load(home=deep))
    handle = provider.create(make_spec())
    try:
        assert len(handle["socket"]) > 108
        agent = Agent(provider, handle)
        assert agent.request("hello")[1]["ev"] == "done"
        agent.close()
    finally:
        provider.destroy(handle)


# -------------------------------------------------------------------- lifecycle


def _unified_root() -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.startswith("cgroup2 ") and os.access(left.split()[4], os.W_OK):
            return left.split()[4]
    return None


def test_cgroup_v2_freeze_thaw_kill_remove() -> None:
    """The v2 paths of the Cgroup helper, on a bare cgroup2 hierarchy (freeze and kill
    are core cgroup2 files: no controller needed)."""
    root = _unified_root()
    if root is None:
        pytest.skip("no writable cgroup2 hierarchy on this host")
    path = os.path.join(root, f"nexus-test-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    cgroup = Cgroup({"unified": path})
    sleeper = subprocess.Popen(["sleep", "100"])
    try:
        Path(path, "cgroup.procs").write_text(str(sleeper.pid))
        assert cgroup.version == "v2" and cgroup.can_freeze
        assert cgroup.pids() == {sleeper.pid}
        assert cgroup.freeze(timeout=5)
        assert "frozen 1" in Path(path, "cgroup.events").read_text()
        assert cgroup.thaw()
        assert cgroup.kill(timeout=5)
        assert sleeper.wait(timeout=5) == -9
        assert cgroup.remove()
        assert not os.path.exists(path)
    finally:
        sleeper.kill()
        sleeper.wait()
        cgroup.remove(timeout=1)


def in_jail(handle: dict[str, Any], path: str) -> Path:
    """A path inside the jail, seen from the host (through its pid 1's root)."""
    return Path(f"/proc/{handle['child_pid']}/root{path}")


def _counter(handle: dict[str, Any]) -> int:
    text = in_jail(handle, "/home/user/counter").read_text().strip()
    return int(text or 0)


#: A run that keeps writing a counter to ~/counter for a few seconds.
COUNTER = (
    "import os, time\n"
    "for i in range(1, 120):\n"
    "    open('/home/user/counter.new', 'w').write(str(i))\n"
    "    os.replace('/home/user/counter.new', '/home/user/counter')\n"
    "    time.sleep(0.02)\n"
)


def background_run(provider: LocalProvider, handle: dict[str, Any], code: str, language: str = "python") -> Any:
    """Start a run on its own connection in a thread; returns (thread, results list)."""
    results: list[Any] = []

    def target() -> None:
        agent = Agent(provider, handle)
        try:
            results.append(agent.run(code, language=language, timeout=None))
        except (AssertionError, OSError) as exc:  # the sandbox was destroyed under it
            results.append(exc)
        finally:
            agent.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, results


def _pause_resume(provider: LocalProvider, handle: dict[str, Any], agent: Agent) -> None:
    thread, results = background_run(provider, handle, COUNTER)
    assert local.poll_until(lambda: in_jail(handle, "/home/user/counter").exists(), 10)
    time.sleep(0.1)
    provider.pause(handle)
    assert provider.alive(handle)
    frozen = _counter(handle)
    time.sleep(0.5)
    assert _counter(handle) == frozen, "a paused sandbox must not run"
    provider.resume(handle)
    time.sleep(0.3)
    assert _counter(handle) > frozen
    thread.join(timeout=30)
    assert results and results[0]["exit_code"] == 0 and _counter(handle) == 119
    assert agent.run("echo back")["stdout"] == "back\n"


def test_pause_and_resume_with_freezer(fresh: Any, provider: LocalProvider) -> None:
    handle, agent = fresh()
    assert handle["cgroup"] and Cgroup.from_dict(handle["cgroup"]).can_freeze
    _pause_resume(provider, handle, agent)


def test_pause_and_resume_with_signals(fresh: Any, provider: LocalProvider) -> None:
    handle, agent = fresh(options={"cgroups": False})
    assert handle["cgroup"] is None and handle["limits"] == "rlimit"
    _pause_resume(provider, handle, agent)


@pytest.mark.parametrize("cgroups", [True, False], ids=["freezer", "signals"])
def test_destroy_while_paused(provider: LocalProvider, created: list, cgroups: bool) -> None:
    p = LocalProvider(provider.settings, cgroups=cgroups)
    handle = p.create(make_spec())
    created.append(handle)
    background_run(p, handle, COUNTER)
    assert local.poll_until(lambda: in_jail(handle, "/home/user/counter").exists(), 10)
    p.pause(handle)
    t = time.perf_counter()
    p.destroy(handle)
    assert time.perf_counter() - t < 1.0
    assert not p.alive(handle) and not namespace_pids(handle)
    assert not Path(handle["dir"]).exists()


def test_fork_bomb_is_contained(fresh: Any, provider: LocalProvider, capsys: Any) -> None:
    handle, agent = fresh(limits=Limits(pids=128))
    cgroup = Cgroup.from_dict(handle["cgroup"])
    assert cgroup is not None
    latencies: list[float] = []
    peak = [0]
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            subprocess.run(["true"], check=True)
            latencies.append(time.perf_counter() - t)
            peak[0] = max(peak[0], len(cgroup.pids()))
            time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        r = agent.run(":(){ :|:& };:; sleep 30", timeout=5)
    finally:
        stop.set()
        prober.join()
    assert r["timed_out"]
    pids_max = int(Path(cgroup.paths["pids"], "pids.max").read_text()) if "pids" in cgroup.paths else 128
    assert pids_max == 128
    assert peak[0] <= 128
    assert max(latencies) < 2.0, f"host stalled: {max(latencies):.2f}s"
    t = time.perf_counter()
    provider.destroy(handle)
    took = time.perf_counter() - t
    assert not cgroup.pids() and not provider.alive(handle)
    with capsys.disabled():
        print(
            f"\n[local] fork bomb: peak {peak[0]} tasks (cap 128), host `true` max "
            f"{max(latencies) * 1000:.1f} ms / median {statistics.median(latencies) * 1000:.1f} ms, "
            f"destroy of the bombed sandbox {took * 1000:.1f} ms"
        )


def _oom_kills(cgroup: Cgroup) -> int:
    if cgroup.version == "v2":
        text = Path(cgroup.paths["unified"], "memory.events").read_text()
    else:
        text = Path(cgroup.paths["memory"], "memory.oom_control").read_text()
    counts = dict(line.split() for line in text.splitlines())
    return int(counts.get("oom_kill", 0))


def test_memory_bomb_is_killed_by_the_cap(fresh: Any) -> None:
    handle, agent = fresh(limits=Limits(memory_mb=128))
    cgroup = Cgroup.from_dict(handle["cgroup"])
    assert cgroup is not None
    code = "a = []\nwhile True:\n    a.append(bytearray(16 * 2**20))\n"
    r = agent.run(code, language="python", timeout=30)
    assert r["exit_code"] != 0
    assert "MemoryError" not in r["stderr"]
    assert _oom_kills(cgroup) >= 1
    assert agent.run("echo alive")["stdout"] == "alive\n"


FORK_COUNT = """
import os, time
children = []
try:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    print(len(children), "no limit")
except OSError as exc:
    print(len(children), exc)
finally:
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
"""


def test_rlimit_fallback_caps_memory_and_processes(fresh: Any) -> None:
    handle, agent = fresh(options={"cgroups": False}, limits=Limits(memory_mb=128, pids=64))
    assert handle["limits"] == "rlimit"
    code = "a = []\nwhile True:\n    a.append(bytearray(16 * 2**20))\n"
    r = agent.run(code, language="python", timeout=30)
    assert r["exit_code"] != 0 and "MemoryError" in r["stderr"]
    r = agent.run(FORK_COUNT, language="python")
    started, error = r["stdout"].split(" ", 1)
    assert int(started) < 64 and "Resource temporarily unavailable" in error, r
    assert agent.run("console.log('node ok')", language="javascript")["stdout"] == "node ok\n"


def test_destroy_leaves_nothing(provider: LocalProvider, created: list) -> None:
    handle = provider.create(make_spec())
    created.append(handle)
    thread, results = background_run(provider, handle, "setsid -f sleep 1000; sleep 1000 & sleep 1000", "bash")
    assert local.poll_until(lambda: len(namespace_pids(handle)) >= 5, 10)
    pids = namespace_pids(handle)
    cgroup = Cgroup.from_dict(handle["cgroup"])
    provider.destroy(handle)
    thread.join(timeout=10)
    assert results and isinstance(results[0], Exception), "the run ends with the sandbox"
    assert not provider.alive(handle)
    assert not any(local._same_process(pid, None) for pid in pids)
    assert not namespace_pids(handle)
    assert not Path(handle["dir"]).exists()
    if cgroup is not None:
        assert not any(os.path.exists(p) for p in cgroup.paths.values())
    provider.destroy(handle)  # idempotent
    with pytest.raises(AgentError, match="not running"):
        provider.connect(handle)
    assert provider.list_resources("store-test") == [] or all(
        r["sandbox_id"] != handle["sandbox_id"] for r in provider.list_resources("store-test")
    )


def test_sandbox_outlives_its_creator(settings: Settings, provider: LocalProvider) -> None:
    """A CLI process creates the sandbox and exits; the sandbox keeps running."""
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from nexus_kernel.config import Settings\n"
        "from nexus_kernel.models import SandboxSpec\n"
        "from nexus_kernel.providers.local import LocalProvider\n"
        "p = LocalProvider(Settings.load(home=Path(sys.argv[1])))\n"
        "print(json.dumps(p.create(SandboxSpec(sandbox_id=sys.argv[2], owner='t'))))\n"
    )
    sandbox_id = "sb-" + uuid.uuid4().hex[:10]
    r = subprocess.run(
        [sys.executable, "-c", script, str(settings.home), sandbox_id],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    handle = json.loads(r.stdout)
    try:
        time.sleep(0.2)
        assert provider.alive(handle)
        agent = Agent(provider, handle)
        assert agent.run("echo still here")["stdout"] == "still here\n"
        agent.close()
    finally:
        provider.destroy(handle)
    assert not provider.alive(handle)


def test_the_prepaid_attach_moves_nothing_of_ours_and_the_jail_is_capped(
        shared: tuple[dict[str, Any], Agent]) -> None:
    """The child that pays the kernel's first-attach wait ahead joins the new cgroup (its
    write succeeds), exits and leaves it empty; and the jail's pid 1 still ends up in every
    hierarchy of its sandbox's cgroup (the host's own write, after it, took effect)."""
    handle, _ = shared
    if handle["cgroup"] is None:
        pytest.skip("no writable cgroup on this host")
    jail = Cgroup.from_dict(handle["cgroup"])
    assert jail is not None
    for procs in jail.procs_files():
        assert str(handle["child_pid"]) in Path(procs).read_text().split(), procs
    cgroup = create_cgroup("sb_prepay_" + uuid.uuid4().hex[:8], Limits())
    assert cgroup is not None
    try:
        pid = prepay_attach(cgroup)
        assert pid is not None
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0  # its write into cgroup.procs worked
        assert not cgroup.pids()
    finally:
        assert cgroup.remove()


def test_the_handle_is_on_disk_before_the_wrapper_may_go_on(
        provider: LocalProvider, created: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """handle.json (with the cgroup and the uid the reaper needs) is written while the
    wrapper starts, before the host caps it and says "go": a creator killed any later
    leaves a sandbox the reaper can find."""
    spec = make_spec()
    seen: dict[str, Any] = {}
    real_cap = local._cap

    def cap(pid: int, *args: Any) -> None:
        path = provider.settings.sandboxes_dir / spec.sandbox_id / "handle.json"
        seen.update(json.loads(path.read_text())["handle"])
        real_cap(pid, *args)

    monkeypatch.setattr(local, "_cap", cap)
    handle = provider.create(spec)
    created.append(handle)
    assert seen["uid"] == handle["uid"] and seen["cgroup"] == handle["cgroup"]


def test_a_full_disk_at_the_first_handle_write_stays_a_disk_error(
        provider: LocalProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk filling up just as handle.json is first written (while the wrapper starts)
    is an OSError with its errno, as anywhere else in create (the manager says
    DiskFullError: free space, retry), not a generic provider error; nothing is left."""
    import errno

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local, "_write_handle", full)
    spec = make_spec()
    with pytest.raises(OSError) as caught:
        provider.create(spec)
    assert caught.type is not ProviderError and caught.value.errno == errno.ENOSPC
    assert not (provider.settings.sandboxes_dir / spec.sandbox_id).exists()


def test_wrapper_goes_on_only_when_the_host_says_go(tmp_path: Path) -> None:
    """The wrapper before bubblewrap waits until the host has capped it: should the host
    die first (its pipe end closes), it exits and nothing of the jail starts."""
    marker = tmp_path / "started"
    command = ["/bin/sh", "-c", local._WRAPPER_SCRIPT, "nexus-wrapper", "-", "touch", str(marker)]
    closed = subprocess.run(command, stdin=subprocess.DEVNULL, timeout=10)
    assert closed.returncode == 125 and not marker.exists()
    told = subprocess.run(command, input=b"go\n", timeout=10)
    assert told.returncode == 0 and marker.exists()


def test_wrapper_mounts_before_the_gate(tmp_path: Path) -> None:
    """The root wrapper's ``mount -a`` (a host tool) runs while the host caps the wrapper,
    not after "go": a failing one ends the wrapper before the host says anything."""
    marker = tmp_path / "started"
    gate_r, gate_w = os.pipe()  # held open, never written: the host is still capping
    try:
        done = subprocess.run(["/bin/sh", "-c", local._WRAPPER_SCRIPT, "nexus-wrapper",
                               str(tmp_path / "no-fstab"), "touch", str(marker)],
                              stdin=gate_r, stderr=subprocess.DEVNULL, timeout=10)
    finally:
        os.close(gate_r)
        os.close(gate_w)
    assert done.returncode == 125 and not marker.exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="root only")
def test_one_mount_stages_sources_whose_paths_need_escaping(tmp_path: Path) -> None:
    """The root wrapper's single ``mount -a`` reads back every path _write_fstab wrote,
    spaces, tabs and backslashes included (fstab's octal escapes)."""
    source = tmp_path / "a b\tc\\d"
    source.mkdir()
    (source / "f").write_text("staged")
    target = tmp_path / "mount point"
    target.mkdir()
    table = local._write_fstab(tmp_path, [(str(source), str(target), "none", "bind")])
    shown = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", local._WRAPPER_SCRIPT,
         "nexus-wrapper", table, "cat", str(target / "f")],
        input=b"go\n", capture_output=True, timeout=10)
    assert shown.returncode == 0 and shown.stdout == b"staged", shown.stderr


def test_small_etc_dirs_are_copied_and_others_bound(tmp_path: Path) -> None:
    """A small directory the jail uid could list and read is recreated (no bind: ~0.7 ms of
    bubblewrap each); one holding a file it could not read, one it could not list, or a
    large one is bound, so the host's permissions and contents apply."""
    small = tmp_path / "small"
    (small / "sub").mkdir(parents=True)
    (small / "a.conf").write_text("a")
    (small / "sub" / "b").write_text("b")
    (small / "link").symlink_to("/usr/share/x")
    for path in (small, small / "sub"):
        os.chmod(path, 0o755)
    for path in (small / "a.conf", small / "sub" / "b"):
        os.chmod(path, 0o644)
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o755)
    (secret / "key").write_text("k")
    os.chmod(secret / "key", 0o600)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    big = tmp_path / "big"
    big.mkdir(mode=0o755)
    for i in range(local.ETC_TREE_MAX + 1):
        (big / str(i)).symlink_to("/usr")
    fds: list[int] = []
    try:
        args = local._etc_entry(str(small), fds)
        assert "--ro-bind-try" not in args and len(fds) == 2
        assert ["--perms", "0755", "--dir", str(small / "sub")] == args[args.index(str(small / "sub")) - 3:][:4]
        assert ["--symlink", "/usr/share/x", str(small / "link")] == args[args.index("--symlink"):][:3]
        assert sorted(os.read(fd, 10) for fd in fds) == [b"a", b"b"]
        for tree in (secret, closed, big):
            assert local._etc_entry(str(tree), fds) == ["--ro-bind-try", str(tree), str(tree)]
        assert len(fds) == 2
    finally:
        for fd in fds:
            os.close(fd)


def test_etc_entries_are_copied_only_when_the_jail_could_read_them(tmp_path: Path) -> None:
    """A world-readable file is copied (no mount), a link into /usr stays a link, and a file
    the jail uid could not read is bound, so the host's permissions still refuse it."""
    public, private = tmp_path / "public", tmp_path / "private"
    public.write_text("x")
    private.write_text("secret")
    os.chmod(public, 0o644)
    os.chmod(private, 0o600)
    (tmp_path / "zone").symlink_to("/usr/share/zoneinfo/Etc/UTC")
    (tmp_path / "away").symlink_to(str(private))
    fds: list[int] = []
    try:
        assert local._etc_entry(str(public), fds)[:4] == ["--perms", "0644", "--file", str(fds[0])]
        assert local._etc_entry(str(private), fds) == ["--ro-bind-try", str(private), str(private)]
        assert local._etc_entry(str(tmp_path / "zone"), fds)[:2] == ["--symlink", "/usr/share/zoneinfo/Etc/UTC"]
        away = str(tmp_path / "away")
        assert local._etc_entry(away, fds) == ["--ro-bind-try", away, away]
        assert local._etc_entry(str(tmp_path / "missing"), fds) == [] and len(fds) == 1
    finally:
        for fd in fds:
            os.close(fd)
