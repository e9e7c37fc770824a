"""The seed document's Python API examples, on the local provider, changing only the import."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from nexus_kernel.errors import (
    ExecutionTimeoutError,
    InvalidArgumentError,
    SandboxNotFoundError,
    SandboxStateError,
)

from .conftest import needs_bwrap

pytestmark = needs_bwrap


def test_quick_start(nx):
    sandbox = nx.sandbox_create(name="my-python-sandbox", ttl_minutes=20)
    sandbox_id = sandbox["sandbox_id"]
    assert sandbox_id.startswith("sb_")
    assert sandbox["status"] == "active"
    result = nx.sandbox_run(
        sandbox_id=sandbox_id,
        language="python",
        code='import sys\nprint(f"Python {sys.version}")\nprint("2 + 2 =", 2 + 2)\n',
        timeout=30,
    )
    assert "2 + 2 = 4" in result["stdout"]
    assert result["stdout"].startswith("Python 3.")
    assert result["exit_code"] == 0
    assert 0 < result["execution_time"] < 30
    stopped = nx.sandbox_stop(sandbox_id=sandbox_id)
    assert stopped["status"] == "stopped"


def test_list_and_monitor(nx, sandbox):
    sandboxes = nx.sandbox_list()
    names = {sb["sandbox_id"]: sb for sb in sandboxes["sandboxes"]}
    assert sandbox in names
    entry = names[sandbox]
    assert entry["status"] == "active"
    expires = datetime.fromisoformat(entry["expires_at"])
    created = datetime.fromisoformat(entry["created_at"])
    assert 590 <= (expires - created).total_seconds() <= 610  # default TTL: 10 minutes
    time.sleep(0.2)
    status = nx.sandbox_status(sandbox_id=sandbox)
    assert status["uptime_seconds"] >= 0.2
    assert status["last_active_at"]
    active = [s for s in nx.sandbox_list()["sandboxes"] if s["status"] == "active"]
    assert [s["sandbox_id"] for s in active] == [sandbox]


def test_ttl_is_extended_by_each_run(nx):
    sb = nx.sandbox_create("ttl", ttl_minutes=30)
    first = datetime.fromisoformat(sb["expires_at"])
    time.sleep(0.3)
    nx.sandbox_run(sb["sandbox_id"], "python", code="print('Hello')")
    status = nx.sandbox_status(sb["sandbox_id"])
    after = datetime.fromisoformat(status["expires_at"])
    last = datetime.fromisoformat(status["last_active_at"])
    assert after > first
    assert abs((after - last).total_seconds() - 30 * 60) < 1


def test_timeout_control(nx, sandbox):
    started = time.monotonic()
    with pytest.raises(ExecutionTimeoutError) as info:
        nx.sandbox_run(sandbox, "python",
                       code="print('before', flush=True)\nimport time; time.sleep(10)",
                       timeout=2)
    assert time.monotonic() - started < 6
    assert str(info.value) == "Code execution exceeded 2 second timeout"
    assert "before" in info.value.stdout
    # the sandbox is still usable afterwards
    assert nx.sandbox_run(sandbox, "python", "print('ok')")["stdout"] == "ok\n"


def test_busy_loop_dies_at_timeout(nx, sandbox):
    with pytest.raises(ExecutionTimeoutError):
        nx.sandbox_run(sandbox, "python", "while True: pass", timeout=1)
    count = (
        "import os\nneedle = 'while ' + 'True: pass'\n"
        "print(sum(needle.encode() in open(f'/proc/{p}/cmdline', 'rb').read()\n"
        "          for p in os.listdir('/proc') if p.isdigit()))"
    )
    assert nx.sandbox_run(sandbox, "python", count)["stdout"] == "0\n"


def test_error_handling(nx, sandbox):
    result = nx.sandbox_run(sandbox, "python", code="print(1/0)")
    assert result["exit_code"] != 0
    assert "ZeroDivisionError: division by zero" in result["stderr"]


def test_multi_language_example(nx):
    sandbox = nx.sandbox_create("multi-lang", ttl_minutes=30)
    tasks = [
        {"name": "process-json", "language": "javascript",
         "code": "console.log(JSON.stringify({result: 42}))"},
        {"name": "analyze-data", "language": "python", "code": "print(sum([1, 2, 3, 4, 5]))"},
        {"name": "check-env", "language": "bash", "code": "echo $USER && pwd"},
    ]
    outputs = {}
    for task in tasks:
        result = nx.sandbox_run(sandbox_id=sandbox["sandbox_id"], language=task["language"],
                                code=task["code"], timeout=task.get("timeout", 30))
        assert result["exit_code"] == 0, result
        outputs[task["name"]] = result["stdout"]
    assert outputs["process-json"] == '{"result":42}\n'
    assert outputs["analyze-data"] == "15\n"
    assert outputs["check-env"] == "user\n/home/user\n"


def test_data_analysis_example_reads_backend_files(nx):
    nx.write("/workspace/data/sales.csv", b"region,amount\nnorth,10\nsouth,32\n")
    csv_content = nx.read("/workspace/data/sales.csv")
    sandbox = nx.sandbox_create(name="csv-analyzer", ttl_minutes=15)
    try:
        code = f"""
import csv, io
data = {csv_content.decode()!r}
rows = list(csv.DictReader(io.StringIO(data)))
print("Rows:", len(rows))
print("Total:", sum(int(r["amount"]) for r in rows))
"""
        result = nx.sandbox_run(sandbox["sandbox_id"], "python", code)
        assert result["stdout"] == "Rows: 2\nTotal: 42\n"
    finally:
        nx.sandbox_stop(sandbox["sandbox_id"])
    assert nx.ls("/workspace/data") == ["sales.csv"]
    with pytest.raises(InvalidArgumentError):
        nx.read("/../../etc/passwd")


def test_sessions_keep_variables_and_runs_share_files(nx, sandbox):
    nx.sandbox_run(sandbox, "python", "x = 41", session="main")
    assert nx.sandbox_run(sandbox, "python", "x += 1\nprint(x)", session="main")["stdout"] == "42\n"
    # a stateless run is a fresh process: variables do not survive ...
    fresh = nx.sandbox_run(sandbox, "python", "print(x)")
    assert "NameError" in fresh["stderr"]
    # ... but files do
    nx.sandbox_run(sandbox, "bash", "echo kept > notes.txt")
    assert nx.sandbox_run(sandbox, "python", "print(open('notes.txt').read().strip())")["stdout"] == "kept\n"
    nx.sandbox_run(sandbox, "bash", "cd /tmp; export GREETING=hi", session="sh")
    assert nx.sandbox_run(sandbox, "bash", "echo $GREETING $PWD", session="sh")["stdout"] == "hi /tmp\n"
    nx.sandbox_run(sandbox, "javascript", "var total = 40", session="js")
    assert nx.sandbox_run(sandbox, "javascript", "console.log(total + 2)", session="js")["stdout"] == "42\n"


def test_nothing_survives_stop(nx, nexus_home):
    first = nx.sandbox_create("first")["sandbox_id"]
    nx.sandbox_run(first, "bash", "echo secret > /home/user/left.txt; echo t > /tmp/left.txt")
    nx.sandbox_stop(first)
    assert not any(first in str(p) for p in nexus_home.rglob("*") if p.is_dir())
    second = nx.sandbox_create("second")["sandbox_id"]
    result = nx.sandbox_run(second, "bash", "ls /home/user /tmp")
    assert "left.txt" not in result["stdout"]
    with pytest.raises(SandboxStateError, match="stopped"):
        nx.sandbox_run(first, "python", "print(1)")


def test_pause_and_resume(nx, sandbox):
    nx.sandbox_run(sandbox, "python", "value = 'still here'", session="s")
    paused = nx.sandbox_pause(sandbox)
    assert paused["status"] == "paused"
    with pytest.raises(SandboxStateError, match="resume it first"):
        nx.sandbox_run(sandbox, "python", "print(1)")
    resumed = nx.sandbox_resume(sandbox)
    assert resumed["status"] == "active"
    assert nx.sandbox_run(sandbox, "python", "print(value)", session="s")["stdout"] == "still here\n"


def test_stop_is_idempotent(nx, sandbox):
    assert nx.sandbox_stop(sandbox)["status"] == "stopped"
    assert nx.sandbox_stop(sandbox)["status"] == "stopped"


def test_user_scoping(nexus_home, nx, sandbox):
    from nexus_kernel import LocalBackend, NexusFS

    other = NexusFS(backend=LocalBackend(nexus_home / "files"), user="someone-else")
    assert other.sandbox_list()["sandboxes"] == []
    with pytest.raises(SandboxNotFoundError):
        other.sandbox_status(sandbox)
    mine = other.sandbox_create("theirs")["sandbox_id"]
    admin = NexusFS(backend=LocalBackend(nexus_home / "files"), user="root", is_admin=True)
    ids = {s["sandbox_id"] for s in admin.sandbox_list(all_users=True)["sandboxes"]}
    assert {sandbox, mine} <= ids
    other.sandbox_stop(mine)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda nx, sb: nx.sandbox_status("sb_doesnotexist"), "no sandbox 'sb_doesnotexist'"),
        (lambda nx, sb: nx.sandbox_run(sb, "ruby", "puts 1"), "unknown language 'ruby'"),
        (lambda nx, sb: nx.sandbox_create("x", ttl_minutes=0), "ttl_minutes must be > 0"),
        (lambda nx, sb: nx.sandbox_create("x", ttl_minutes=-5), "ttl_minutes must be > 0"),
        (lambda nx, sb: nx.sandbox_run(sb, "python", "print(1)", timeout=0), "timeout must be > 0"),
        (lambda nx, sb: nx.sandbox_run(sb, "python", b"print(1)"), "code must be text"),
        (lambda nx, sb: nx.sandbox_create("bad\0name"), "control characters or NUL"),
        (lambda nx, sb: nx.sandbox_create("x", provider="nope"), "unknown provider 'nope'"),
    ],
)
def test_bad_input_is_one_clear_error(nx, sandbox, call, message):
    before = nx.sandbox_list()
    with pytest.raises((InvalidArgumentError, SandboxNotFoundError)) as info:
        call(nx, sandbox)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert len(nx.sandbox_list()["sandboxes"]) == len(before["sandboxes"])
    assert nx.sandbox_status(sandbox)["status"] == "active"


def test_pausing_twice_is_a_no_op_like_resuming_twice(nx, sandbox):
    first = nx.sandbox_pause(sandbox)
    again = nx.sandbox_pause(sandbox)
    assert again["status"] == "paused" and again["expires_at"] == first["expires_at"]
    nx.sandbox_resume(sandbox)
    assert nx.sandbox_resume(sandbox)["status"] == "active"


def test_defaults_come_from_the_settings_on_every_call(nexus_home, monkeypatch):
    from nexus_kernel import LocalBackend, NexusFS

    monkeypatch.setenv("NEXUS_TTL_MINUTES", "3")
    monkeypatch.setenv("NEXUS_TIMEOUT", "1")
    api = NexusFS(backend=LocalBackend(nexus_home / "files"))
    try:
        sandbox = api.sandbox_create("defaults")
        assert sandbox["ttl_minutes"] == 3 and isinstance(sandbox["ttl_minutes"], int)
        with pytest.raises(ExecutionTimeoutError, match="exceeded 1 second"):
            api.sandbox_run(sandbox["sandbox_id"], "python", "import time; time.sleep(5)")
        assert api.sandbox_create("explicit", ttl_minutes=2.5)["ttl_minutes"] == 2.5
    finally:
        for sb in api.sandbox_list()["sandboxes"]:
            api.sandbox_stop(sb["sandbox_id"])


def test_every_users_sandboxes_need_an_explicit_admin(nexus_home, monkeypatch):
    from nexus_kernel import LocalBackend, NexusFS
    from nexus_kernel.errors import PermissionDeniedError

    plain = NexusFS(backend=LocalBackend(nexus_home / "files"), user="alice")
    with pytest.raises(PermissionDeniedError, match="NEXUS_ADMIN=1"):
        plain.sandbox_list(all_users=True)
    assert plain.sandbox_list()["count"] == 0
    monkeypatch.setenv("NEXUS_ADMIN", "1")
    assert NexusFS(backend=LocalBackend(nexus_home / "files")).sandbox_list(all_users=True)
    assert NexusFS(backend=LocalBackend(nexus_home / "files"),
                   is_admin=False).manager.is_admin is False


def test_input_data_is_the_standard_input_of_a_stateless_run(nx, sandbox):
    code = "import sys\ndata = sys.stdin.read()\nprint(len(data), data.splitlines()[-1])"
    lines = "".join(f"line {i}\n" for i in range(20000))  # larger than a pipe's buffer
    result = nx.sandbox_run(sandbox, "python", code, input_data=lines)
    assert result["stdout"] == f"{len(lines)} line 19999\n"
    assert nx.sandbox_run(sandbox, "bash", "head -c 3", input_data="abcdef")["stdout"] == "abc"
    assert nx.sandbox_run(sandbox, "python", "import sys; print(repr(sys.stdin.read()))")[
        "stdout"] == "''\n"  # no input: an empty stdin, as before
    with pytest.raises(InvalidArgumentError, match="stateless run"):
        nx.sandbox_run(sandbox, "python", "input()", session="s", input_data="x")
