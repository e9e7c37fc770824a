"""Bad input through every surface (Python API, CLI, magics, proxy kernel), on the local and
docker providers: unknown ids and languages, negative / huge / non-numeric TTLs and
timeouts, non-string code, 10 MB (accepted) and 17 MB (refused) code, NUL and control
characters in names, unicode names.

Each must give one clear one-line error (CLI: on stderr, exit 2 for usage errors, 1 for the
others, as the README says; magics: ``UsageError``; kernel: an error in the cell), and lose
nothing: the sandboxes and their state are as before.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from nexus_kernel.errors import (
    InvalidArgumentError,
    SandboxError,
    SandboxNotFoundError,
    SandboxStateError,
)

from ..conftest import ROOT
from .conftest import kernel_run

pytestmark = pytest.mark.timeout(180)

TEN_MB_CODE = "data = '" + "x" * (10 * 1024 * 1024) + "'\nprint(len(data))\n"
TEN_MB_PRINTS = f"{10 * 1024 * 1024}\n"
TOO_BIG_CODE = "#" * (17 * 1024 * 1024)
UNICODE_NAME = "données-分析-🚀"


def one_line(message: str) -> str:
    message = message.strip()
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


@pytest.fixture
def snapshot(env, shared_box):
    """The store's sandboxes before the bad input; the test's end checks nothing changed."""
    shared_box.ok("python", "open('kept.txt', 'w').write('kept')")
    before = {(r.sandbox_id, r.status) for r in env.manager.list(all_users=True)}
    yield
    after = {(r.sandbox_id, r.status) for r in env.manager.list(all_users=True)}
    assert before <= after, f"lost or changed: {before - after}"
    assert shared_box.ok("bash", "cat kept.txt") == "kept"


# ------------------------------------------------------------------ Python API

API_BAD_RUNS = [
    ({"sandbox_id": "sb_does_not_exist"}, SandboxNotFoundError, "no sandbox"),
    ({"sandbox_id": ""}, InvalidArgumentError, "sandbox_id"),
    ({"sandbox_id": None}, InvalidArgumentError, "sandbox_id"),
    ({"language": "cobol"}, InvalidArgumentError, "unknown language"),
    ({"language": None}, InvalidArgumentError, "language"),
    ({"timeout": -1}, InvalidArgumentError, "timeout"),
    ({"timeout": 0}, InvalidArgumentError, "timeout"),
    ({"timeout": 1e12}, InvalidArgumentError, "timeout"),
    ({"timeout": math.nan}, InvalidArgumentError, "timeout"),
    ({"timeout": "30"}, InvalidArgumentError, "timeout"),
    ({"timeout": True}, InvalidArgumentError, "timeout"),
    ({"code": 123}, InvalidArgumentError, "code must be text"),
    ({"code": None}, InvalidArgumentError, "code must be text"),
    ({"code": b"print(1)"}, InvalidArgumentError, "decode bytes"),
    ({"code": TOO_BIG_CODE}, InvalidArgumentError, "upload it as a file"),
    ({"session": ""}, InvalidArgumentError, "session"),
]


@pytest.mark.parametrize(("change", "error", "message"), API_BAD_RUNS,
                         ids=[f"{next(iter(c))}={str(next(iter(c.values())))[:12]!r}"
                              for c, _, _ in API_BAD_RUNS])
def test_api_bad_run_arguments(env, shared_box, snapshot, change, error, message):
    args = {"sandbox_id": shared_box.id, "language": "python", "code": "print(1)", "timeout": 30,
            **change}
    with pytest.raises(error) as info:
        env.manager.run(args.pop("sandbox_id"), args.pop("language"), args.pop("code"), **args)
    assert message in one_line(str(info.value))


API_BAD_CREATES = [
    ({"ttl_minutes": -5}, "ttl_minutes"),
    ({"ttl_minutes": 0}, "ttl_minutes"),
    ({"ttl_minutes": 1e12}, "ttl_minutes"),
    ({"ttl_minutes": math.inf}, "ttl_minutes"),
    ({"ttl_minutes": "10"}, "ttl_minutes"),
    ({"name": "a\0b"}, "NUL"),
    ({"name": "line\nbreak"}, "control characters"),
    ({"name": ""}, "non-empty"),
    ({"name": None}, "non-empty"),
    ({"name": "x" * 500}, "longer than"),
    ({"template_id": ""}, "template_id"),
    ({"provider": "no-such-provider"}, "provider"),
]


@pytest.mark.parametrize(("change", "message"), API_BAD_CREATES,
                         ids=[f"{next(iter(c))}={str(next(iter(c.values())))[:12]!r}"
                              for c, _ in API_BAD_CREATES])
def test_api_bad_create_arguments(env, snapshot, change, message):
    args = {"name": "bad-create", **change}
    with pytest.raises(SandboxError) as info:
        env.manager.create(args.pop("name"), **args)
    assert message in one_line(str(info.value))
    assert not [r for r in env.manager.list() if r.name == args.get("name", "bad-create")]


@pytest.mark.parametrize("operation", ["status", "stop", "pause", "resume", "get_file"])
def test_api_unknown_ids_everywhere(env, snapshot, operation):
    args = ("sb_nope", "f.txt") if operation == "get_file" else ("sb_nope",)
    with pytest.raises(SandboxNotFoundError) as info:
        getattr(env.manager, operation)(*args)
    one_line(str(info.value))


def test_api_ten_mb_of_code_runs_and_a_unicode_name_is_kept(env, snapshot):
    box = env.create(UNICODE_NAME)
    try:
        assert env.manager.status(box.id).name == UNICODE_NAME
        assert UNICODE_NAME in [r.name for r in env.manager.list()]
        result = box.run("python", TEN_MB_CODE, timeout=120)
        assert result.exit_code == 0 and result.stdout == TEN_MB_PRINTS, result
    finally:
        box.stop()


def test_api_run_on_a_stopped_sandbox_is_a_state_error(env, snapshot):
    box = env.create("short-lived")
    box.stop()
    with pytest.raises(SandboxStateError, match="create a new one") as info:
        box.run("python", "print(1)")
    one_line(str(info.value))


# ------------------------------------------------------------------ CLI


def nexus(env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nexus_kernel.cli", *args], input=stdin,
                          cwd=ROOT, env=env.environ(), capture_output=True, text=True, timeout=180)


CLI_USAGE_ERRORS = [
    ("sandbox", "run", "sb_does_not_exist", "-c", "print(1)"),
    ("sandbox", "status", "sb_does_not_exist"),
    ("sandbox", "stop", "sb_does_not_exist"),
    ("sandbox", "run", "{id}", "-l", "cobol", "-c", "1"),
    ("sandbox", "run", "{id}", "--timeout", "-1", "-c", "1"),
    ("sandbox", "run", "{id}", "--timeout", "0", "-c", "1"),
    ("sandbox", "run", "{id}", "--timeout", "1e12", "-c", "1"),
    ("sandbox", "run", "{id}", "--timeout", "nan", "-c", "1"),
    ("sandbox", "run", "{id}", "--timeout", "soon", "-c", "1"),
    ("sandbox", "run", "{id}"),
    ("sandbox", "run", "{id}", "-f", "/nonexistent/code.py"),
    ("sandbox", "create", "bad", "--ttl", "-5"),
    ("sandbox", "create", "bad", "--ttl", "0"),
    ("sandbox", "create", "bad", "--ttl", "1e12"),
    ("sandbox", "create", "bad", "--ttl", "inf"),
    ("sandbox", "create", "bad", "--ttl", "ten"),
    ("sandbox", "create", "bad\x01name"),
    ("sandbox", "create", ""),
    ("sandbox", "frobnicate"),
]


@pytest.mark.parametrize("argv", CLI_USAGE_ERRORS, ids=[" ".join(a)[:40] for a in CLI_USAGE_ERRORS])
def test_cli_usage_errors_exit_2_with_one_line(env, shared_box, snapshot, argv):
    out = nexus(env, *[a.replace("{id}", shared_box.id) for a in argv])
    assert out.returncode == 2, (out.returncode, out.stderr)
    one_line(out.stderr)
    assert out.stdout == ""


def test_cli_code_files_and_stdin(env, shared_box, snapshot, tmp_path):
    big = tmp_path / "big.py"
    big.write_text(TEN_MB_CODE)
    out = nexus(env, "sandbox", "run", shared_box.id, "-f", str(big), "--timeout", "120")
    assert (out.returncode, out.stdout) == (0, TEN_MB_PRINTS), out.stderr[-500:]
    out = nexus(env, "sandbox", "run", shared_box.id, "-c", "-", stdin=TEN_MB_CODE)
    assert (out.returncode, out.stdout) == (0, TEN_MB_PRINTS), out.stderr[-500:]
    too_big = tmp_path / "too_big.py"
    too_big.write_text(TOO_BIG_CODE)
    out = nexus(env, "sandbox", "run", shared_box.id, "-f", str(too_big))
    assert out.returncode == 2 and "upload it as a file" in one_line(out.stderr)
    binary = tmp_path / "binary.py"
    binary.write_bytes(b"print('\xff\xfe')\n")
    out = nexus(env, "sandbox", "run", shared_box.id, "-f", str(binary))
    assert out.returncode == 2 and "cannot read" in one_line(out.stderr)


def test_cli_runtime_errors_exit_1_and_code_exit_codes_pass_through(env, shared_box, snapshot):
    assert nexus(env, "sandbox", "run", shared_box.id, "-l", "bash", "-c", "exit 7").returncode == 7
    timed = nexus(env, "sandbox", "run", shared_box.id, "-c", "import time; time.sleep(9)",
                  "--timeout", "1")
    assert timed.returncode == 124 and "exceeded 1 second timeout" in one_line(timed.stderr)
    created = nexus(env, "sandbox", "create", UNICODE_NAME, "--json")
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert record["name"] == UNICODE_NAME
    listed = nexus(env, "sandbox", "list")
    assert UNICODE_NAME in listed.stdout
    assert nexus(env, "sandbox", "stop", record["sandbox_id"]).returncode == 0
    stopped = nexus(env, "sandbox", "run", record["sandbox_id"], "-c", "print(1)")
    assert stopped.returncode == 1 and "create a new one" in one_line(stopped.stderr)


# ------------------------------------------------------------------ magics


@pytest.fixture
def magic_shell(env, monkeypatch):
    """An in-process IPython shell with the %sandbox magics on ``env``'s store."""
    from IPython.core.interactiveshell import InteractiveShell

    from magics import SandboxMagics

    for key, value in env.environ().items():
        if key.startswith("NEXUS_"):
            monkeypatch.setenv(key, value)
    shell = InteractiveShell.instance()
    magics = SandboxMagics(shell=shell)
    shell.register_magics(magics)
    yield shell, magics
    for record in magics.manager.list():
        if record.name.startswith("magic-") and record.status.value != "stopped":
            magics.manager.stop(record.sandbox_id)
    magics.close()
    shell.configurables.remove(magics)


MAGIC_LINE_ERRORS = [
    "use sb_does_not_exist",
    "status sb_does_not_exist",
    "stop sb_does_not_exist",
    "create magic-bad --ttl -5",
    "create magic-bad --ttl 1e12",
    "create magic-bad --ttl ten",
    "create 'magic-\x00nul'",
    "create 'magic-\x01ctl'",
    "frobnicate",
]
MAGIC_CELL_ERRORS = [
    "run --language cobol",
    "run --timeout -1",
    "run --timeout 1e12",
    "run --timeout soon",
]


@pytest.mark.parametrize("line", MAGIC_LINE_ERRORS)
def test_magics_bad_lines_are_one_line_usage_errors(env, magic_shell, snapshot, line):
    from IPython.core.error import UsageError

    shell, _ = magic_shell
    with pytest.raises(UsageError) as info:
        shell.run_line_magic("sandbox", line)
    one_line(str(info.value))


@pytest.mark.parametrize("line", MAGIC_CELL_ERRORS)
def test_magics_bad_cells_are_one_line_usage_errors(env, shared_box, magic_shell, snapshot, line):
    from IPython.core.error import UsageError

    shell, _ = magic_shell
    shell.run_line_magic("sandbox", f"use {shared_box.id}")
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("sandbox", line, "print(1)")
    one_line(str(info.value))


def test_magics_big_code_and_a_unicode_name(env, magic_shell, snapshot):
    from IPython.utils.capture import capture_output

    shell, magics = magic_shell
    shell.run_line_magic("sandbox", f"create 'magic-{UNICODE_NAME}'")
    assert magics.manager.status(magics.current).name == f"magic-{UNICODE_NAME}"
    with capture_output() as cap:
        shell.run_cell_magic("sandbox", "run --fresh --timeout 120", TEN_MB_CODE)
    assert cap.stdout.strip().endswith(TEN_MB_PRINTS.strip()), cap.stdout[-300:]
    with pytest.raises(Exception) as info:  # noqa: PT011 - the magics' own error type
        shell.run_cell_magic("sandbox", "run --fresh", TOO_BIG_CODE)
    assert "upload it as a file" in one_line(str(info.value))


# ------------------------------------------------------------------ proxy kernel


KERNEL_ERRORS = ["%sandbox ttl -1", "%sandbox ttl 1e12", "%sandbox ttl ten",
                 "%sandbox provider no-such-provider"]


def test_kernel_bad_input_is_an_error_in_the_cell_and_loses_nothing(env, kernel_client):
    _, client = kernel_client
    reply, _ = kernel_run(client, "kept = 'kept'")
    assert reply["status"] == "ok"
    for line in KERNEL_ERRORS:
        reply, _ = kernel_run(client, line)
        assert reply["status"] == "error", line
        one_line(reply["evalue"])
    reply, out = kernel_run(client, TEN_MB_CODE)
    assert reply["status"] == "ok" and out.strip() == TEN_MB_PRINTS.strip(), reply
    reply, out = kernel_run(client, "print(kept)")
    assert reply["status"] == "ok" and out == "kept\n"
