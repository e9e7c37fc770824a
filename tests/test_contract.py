"""One provider contract, every provider: the same manager-level behaviour on local (real
bubblewrap), docker (real engine), e2b / modal (faithful SDK fakes running the real agent) and
memory (the in-memory test provider of tests/fakes/memory.py, starting the real agent lazily).

Docker is skipped when no engine or image is present, and fails instead under
NEXUS_REQUIRE_DOCKER=1 (CI).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import (
    ExecutionTimeoutError,
    InvalidArgumentError,
    SandboxNotFoundError,
    SandboxStateError,
    UnsupportedOperationError,
)
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import Limits, Status

from .conftest import ROOT, docker_not_ready, docker_problem
from .fakes import e2b_fake, memory, modal_fake

#: "docker-foreign": docker on an image with no project code (tests/conftest.py FOREIGN_IMAGE);
#: "docker-runsc": docker under gVisor (NEXUS_DOCKER_RUNTIME=runsc).
PROVIDERS = ["local", "docker", "docker-foreign", "docker-runsc", "e2b", "modal", "memory"]
FAKE_OPTIONS = {
    "e2b": {"sdk": e2b_fake},
    "modal": {"sdk": modal_fake, "token_id": "ak-test", "token_secret": "as-test"},
}
#: Providers whose sandboxes another OS process can reach (the fakes live in this process).
CROSS_PROCESS = {"local", "docker"}


@pytest.fixture(params=PROVIDERS)
def provider_name(request, tmp_path, monkeypatch):
    name = request.param
    if name == "docker-foreign":
        monkeypatch.setenv("NEXUS_DOCKER_IMAGE", request.getfixturevalue("foreign_image"))
        name = "docker"
    if name == "docker-runsc":
        monkeypatch.setenv("NEXUS_DOCKER_RUNTIME", "runsc")
        name = "docker"
    if name == "local" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    if name == "docker":
        problem = docker_problem(Settings.load())
        if problem:
            docker_not_ready(problem)
    if name == "memory":
        with memory.registered():
            yield name
        return
    yield name


@pytest.fixture
def manager(provider_name, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXUS_HOME", str(tmp_path / "home"))
    settings = Settings.load(
        home=tmp_path / "home", user="tester", provider=provider_name,
        e2b_api_key="e2b_test_key", output_bytes=64 * 1024,
    )
    mgr = SandboxManager(settings, provider_options=FAKE_OPTIONS)
    yield mgr
    for record in mgr.list():
        if record.status is not Status.STOPPED:
            mgr.stop(record.sandbox_id)
    mgr.close()
    e2b_fake.reset()
    modal_fake.reset()


@pytest.fixture
def sandbox(manager) -> str:
    return manager.create("contract").sandbox_id


def out(manager, sandbox, language, code, **kw) -> str:
    result = manager.run(sandbox, language, code, **kw)
    assert result.exit_code == 0, result
    return result.stdout


def test_lifecycle(manager, sandbox):
    record = manager.status(sandbox)
    assert record.status is Status.ACTIVE and record.provider == manager.settings.provider
    if record.provider == "docker":  # the configured image (docker-foreign: no project code)
        assert record.handle["image"] == manager.settings.docker_image
    assert [r.sandbox_id for r in manager.list()] == [sandbox]
    assert manager.stop(sandbox).status is Status.STOPPED
    assert manager.stop(sandbox).status is Status.STOPPED  # idempotent
    assert not manager.provider(record.provider).alive(record.handle)
    with pytest.raises(SandboxStateError, match="stopped"):
        manager.run(sandbox, "python", "print(1)")


def test_stateless_runs_share_files_not_variables(manager, sandbox):
    out(manager, sandbox, "python", "open('f.txt', 'w').write('kept'); x = 1")
    assert out(manager, sandbox, "bash", "cat f.txt") == "kept"
    assert "NameError" in manager.run(sandbox, "python", "print(x)").stderr


@pytest.mark.parametrize(
    ("language", "first", "second", "expected"),
    [
        ("python", "x = 41", "print(x + 1)", "42\n"),
        ("bash", "cd /tmp; V=42", "echo $V $PWD", "42 /tmp\n"),
        ("javascript", "var v = 41", "console.log(v + 1)", "42\n"),
    ],
)
def test_sessions_keep_state(manager, sandbox, language, first, second, expected):
    out(manager, sandbox, language, first, session="s")
    assert out(manager, sandbox, language, second, session="s") == expected


def test_streaming_order_and_liveness(manager, sandbox):
    events: list[tuple[float, str, str]] = []
    code = (
        "import sys, time\nprint('a', flush=True)\nprint('b', file=sys.stderr, flush=True)\n"
        "time.sleep(1)\nprint('c', flush=True)"
    )
    manager.run(sandbox, "python", code, session="s",
                on_event=lambda e: events.append((time.monotonic(), e.kind, e.data)))
    done = time.monotonic()
    streamed: list[list[str]] = []  # adjacent chunks of one stream merged: writes may split
    for _, kind, data in events:
        if kind in ("stdout", "stderr"):
            if streamed and streamed[-1][0] == kind:
                streamed[-1][1] += data
            else:
                streamed.append([kind, data])
    assert streamed == [["stdout", "a\n"], ["stderr", "b\n"], ["stdout", "c\n"]]
    assert events[0][0] < done - 0.7  # the first line came before the sleep ended


def test_timeout_kills_the_tree_and_keeps_partial_output(manager, sandbox):
    # a duration of its own: the fakes' "sandboxes" share the host's process table
    marker = f"sleep 300.{secrets.randbelow(10**6)}"
    code = (f"import subprocess, time\nsubprocess.Popen({marker.split()!r}, start_new_session=True)\n"
            "print('started', flush=True)\ntime.sleep(60)")
    with pytest.raises(ExecutionTimeoutError) as info:
        manager.run(sandbox, "python", code, timeout=2)
    assert info.value.stdout == "started\n"
    assert str(info.value) == "Code execution exceeded 2 second timeout"
    left = out(manager, sandbox, "bash", f"ps -eo args= | grep -c '^{marker}$' || true")
    assert left.strip() == "0"


def test_interrupt_keeps_session_state(manager, sandbox):
    out(manager, sandbox, "python", "kept = 'yes'", session="s")
    results = []

    def run_forever():
        results.append(manager.run(sandbox, "python", "while True: pass", session="s", timeout=30))

    thread = threading.Thread(target=run_forever)
    thread.start()
    time.sleep(1.0)
    manager.interrupt(sandbox, "s")
    thread.join(10)
    assert not thread.is_alive()
    assert results[0].interrupted and "KeyboardInterrupt" in results[0].stderr
    assert out(manager, sandbox, "python", "print(kept)", session="s") == "yes\n"


def test_output_cap_truncates(manager, sandbox):
    result = manager.run(sandbox, "python", "print('x' * 1_000_000)")
    assert result.truncated
    assert 0 < len(result.stdout) <= 64 * 1024


def test_pause_blocks_and_resume_restores(manager, sandbox):
    record = manager.status(sandbox)
    if not manager.provider(record.provider).capabilities.pause:
        with pytest.raises(UnsupportedOperationError, match="create a new one"):
            manager.pause(sandbox)
        assert manager.status(sandbox).status is Status.ACTIVE
        return
    out(manager, sandbox, "python", "n = 7", session="s")
    paused = manager.pause(sandbox)
    assert paused.status is Status.PAUSED
    with pytest.raises(SandboxStateError, match="resume it first"):
        manager.run(sandbox, "python", "print(1)")
    assert manager.resume(sandbox).status is Status.ACTIVE
    assert out(manager, sandbox, "python", "print(n)", session="s") == "7\n"


def test_ttl_expiry_stops_the_sandbox(manager):
    record = manager.create("short", ttl_minutes=0.05)  # 3 seconds
    time.sleep(3.5)
    status = manager.status(record.sandbox_id)
    assert status.status is Status.STOPPED
    assert not manager.provider(record.provider).alive(record.handle)


def test_file_round_trip(manager, sandbox):
    blob = bytes(range(256)) * 100
    manager.put_file(sandbox, "data/blob.bin", blob)
    assert manager.get_file(sandbox, "data/blob.bin") == blob
    assert out(manager, sandbox, "bash", "wc -c < data/blob.bin").strip() == str(len(blob))


def test_errors(manager, sandbox):
    with pytest.raises(SandboxNotFoundError):
        manager.run("sb_unknown", "python", "1")
    with pytest.raises(InvalidArgumentError, match="unknown language"):
        manager.run(sandbox, "cobol", "1")
    with pytest.raises(InvalidArgumentError, match="timeout must be > 0"):
        manager.run(sandbox, "python", "1", timeout=-1)
    assert manager.status(sandbox).status is Status.ACTIVE


def test_reattach_from_another_process(manager, sandbox, provider_name):
    if provider_name not in CROSS_PROCESS:
        other = SandboxManager(manager.settings, provider_options=FAKE_OPTIONS)
        assert out(other, sandbox, "python", "print('other manager')") == "other manager\n"
        other.close()
        return
    out(manager, sandbox, "python", "shared = 5", session="s")
    code = (
        "import json, sys\nfrom nexus_kernel.manager import SandboxManager\n"
        "from nexus_kernel.config import Settings\n"
        f"m = SandboxManager(Settings.load(user='tester', provider={provider_name!r}))\n"
        f"r = m.run({sandbox!r}, 'python', 'print(shared * 2)', session='s')\n"
        "print(json.dumps({'stdout': r.stdout}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=os.environ.copy(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stdout"] == "10\n"


def test_limits_reach_the_sandbox(provider_name, tmp_path):
    if provider_name in ("e2b", "modal"):
        pytest.skip("fake SDK sandboxes are local processes without resource caps")
    if provider_name == "memory":
        pytest.skip("the memory provider has no resource caps (limits): it is not a jail")
    settings = Settings.load(home=tmp_path / "h", user="tester", provider=provider_name,
                             pids=64, memory_mb=128)
    mgr = SandboxManager(settings)
    assert settings.limits == Limits(memory_mb=128, pids=64, cpus=1.0, disk_mb=1024,
                                     output_bytes=settings.output_bytes)
    if settings.docker_runtime == "runsc":
        _gvisor_caps_end_the_sandbox(mgr)
        return
    sb = mgr.create("limits").sandbox_id
    try:
        code = "import os\nfor i in range(200):\n    if os.fork() == 0:\n        import time; time.sleep(5); os._exit(0)\n"
        result = mgr.run(sb, "python", code, timeout=20)
        assert "BlockingIOError" in result.stderr or "Resource temporarily unavailable" in result.stderr
        memory = mgr.run(sb, "python", "b = bytearray(400 * 1024 * 1024); print('allocated')",
                         timeout=20)
        assert "allocated" not in memory.stdout
    finally:
        mgr.stop(sb)
        mgr.close()


def _gvisor_caps_end_the_sandbox(mgr):
    """Under gVisor the host's caps bound gVisor itself: reaching the process or the memory
    cap ends the whole sandbox, in one line that says so (providers/docker_runtime.py)."""
    bombs = {"pids": "import os\nfor i in range(200):\n    if os.fork() == 0:\n"
                     "        import time; time.sleep(5); os._exit(0)\n",
             "memory": "b = bytearray(400 * 1024 * 1024); print('allocated')"}
    for cap, code in bombs.items():
        record = mgr.create(f"limits-{cap}")
        try:
            started = time.monotonic()
            with pytest.raises(SandboxStateError, match="under gVisor .* ends as a whole"):
                mgr.run(record.sandbox_id, "python", code, timeout=20)
            # at once, not at the run's timeout + grace (runsc leaves the exec stream open)
            assert time.monotonic() - started < 15, cap
            assert not mgr.provider("docker").alive(record.handle), cap
        finally:
            mgr.stop(record.sandbox_id)
    mgr.close()
