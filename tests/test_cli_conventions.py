"""The `nexus` CLI keeps the conventions of gh/docker/kubectl: help when run bare,
`--version`, help text for every argument, defaults from settings, errors naming the option
typed, a quiet exit on a closed pipe, exit codes documented. Each command runs in its own
process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from nexus_kernel import __version__

from .conftest import ROOT, needs_bwrap, nexus

LEAF_COMMANDS = [
    ["sandbox", name] for name in
    ["create", "run", "pause", "resume", "stop", "status", "list", "reap", "pool", "providers"]
] + [["template", "list"], ["template", "create"], ["template", "remove"], ["kernel", "install"],
     ["mcp"]]


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.endswith("\n"), text
    assert "Traceback" not in text
    return text


def create(*extra: str, env: dict[str, str] | None = None) -> dict:
    out = nexus("sandbox", "create", "conventions", "--json", *extra, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_bare_nexus_prints_help(nexus_home):
    out = nexus()
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.startswith("usage: nexus")
    assert all(group in out.stdout for group in ("sandbox", "template", "kernel"))


@pytest.mark.parametrize("group", ["sandbox", "template", "kernel"])
def test_bare_group_prints_its_help(nexus_home, group):
    out = nexus(group)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.startswith(f"usage: nexus {group}")


@pytest.mark.parametrize(("argv", "choices"), [
    (["bogus"], "sandbox, template, kernel"),
    (["sandbox", "frobnicate"], "create, run, pause"),
    (["kernel", "uninstall"], "install"),
    (["sandbox", "pool", "flush"], "fill, status, drain"),
])
def test_unknown_subcommand_names_the_choices(nexus_home, argv, choices):
    out = nexus(*argv)
    assert out.returncode == 2 and out.stdout == ""
    message = one_line(out.stderr)
    assert repr(argv[-1]) in message and choices in message
    assert "argument" not in message  # argparse's internal dest ("argument group: ...")


def test_version(nexus_home):
    out = nexus("--version")
    assert (out.returncode, out.stdout, out.stderr) == (0, f"nexus {__version__}\n", "")


def undocumented(help_text: str) -> list[str]:
    """The arguments of a --help output listed without a help text."""
    lines = help_text.splitlines() + [""]
    missing = []
    for line, after in zip(lines, lines[1:], strict=False):
        entry = re.match(r"  (\S.*)$", line)
        if entry and "  " not in entry.group(1) and not re.match(r" {3,}\S", after):
            missing.append(entry.group(1))
    return missing


@pytest.mark.parametrize("argv", LEAF_COMMANDS, ids=" ".join)
def test_every_argument_has_a_help_text(nexus_home, argv):
    out = nexus(*argv, "--help")
    assert out.returncode == 0, out.stderr
    assert undocumented(out.stdout) == []


def option_help(argv: list[str], option: str, env: dict[str, str] | None = None) -> str:
    """The help entry of ``option`` in ``nexus *argv --help``, on one line."""
    out = nexus(*argv, "--help", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {option}"))
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not re.match(r" {3,}\S", line):
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


@pytest.mark.parametrize(("argv", "option", "variable", "value", "built_in", "from_env"), [
    (["sandbox", "create"], "--ttl", "NEXUS_TTL_MINUTES", "25", "10 min", "25 min"),
    (["sandbox", "create"], "--provider", "NEXUS_PROVIDER", "docker", "local", "docker"),
    (["sandbox", "create"], "--network", "NEXUS_NETWORK", "1", "off", "on"),
    (["sandbox", "run"], "--timeout", "NEXUS_TIMEOUT", "5", "30 s", "5 s"),
    (["sandbox", "pool"], "--size", "NEXUS_POOL_SIZE", "3", "0", "3"),
])
def test_help_shows_the_effective_default_and_its_source(
        nexus_home, monkeypatch, argv, option, variable, value, built_in, from_env):
    monkeypatch.delenv(variable, raising=False)
    assert f"(default: {built_in}, built in)" in option_help(argv, option)
    assert f"(default: {from_env}, from {variable})" in option_help(
        argv, option, env={variable: value})


@needs_bwrap
def test_cli_honours_ttl_and_timeout_from_the_environment(nexus_home):
    sandbox = create(env={"NEXUS_TTL_MINUTES": "25"})
    assert sandbox["ttl_minutes"] == 25
    sandbox_id = sandbox["sandbox_id"]
    out = nexus("sandbox", "run", sandbox_id, "-c", "import time; time.sleep(8)",
                env={"NEXUS_TIMEOUT": "1"})
    assert out.returncode == 124
    assert "exceeded 1 second timeout" in one_line(out.stderr)
    nexus("sandbox", "stop", sandbox_id)


@pytest.mark.parametrize(("argv", "option"), [
    (["sandbox", "create", "x", "--ttl", "0"], "--ttl"),
    (["sandbox", "create", "x", "--ttl", "1e9"], "--ttl"),
    (["sandbox", "run", "sb_nope", "--timeout", "0", "-c", "1"], "--timeout"),
    (["sandbox", "run", "sb_nope", "--timeout", "inf", "-c", "1"], "--timeout"),
])
def test_errors_name_the_option_typed(nexus_home, argv, option):
    out = nexus(*argv)
    assert out.returncode == 2
    message = one_line(out.stderr)
    assert f"{option} must be" in message and "ttl_minutes" not in message


@needs_bwrap
def test_code_with_a_nul_byte_is_a_usage_error(nexus_home, tmp_path):
    sandbox_id = create()["sandbox_id"]
    script = tmp_path / "nul.py"
    script.write_text("print('a\0b')\n")
    for out in (nexus("sandbox", "run", sandbox_id, "-c", "-", input="print('a\0b')"),
                nexus("sandbox", "run", sandbox_id, "-f", str(script)),
                nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "-", input="a\0b")):
        assert out.returncode == 2
        assert "code cannot contain NUL bytes" in one_line(out.stderr)
    nexus("sandbox", "stop", sandbox_id)


def closed_pipe_run(*argv: str, unbuffered: str = "") -> tuple[int, bytes]:
    """Run `nexus *argv` with stdout a pipe whose read end is already closed (a reader that
    went away, as `| head -1` does): every write fails. Returns (exit code, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "nexus_kernel.cli", *argv],
                              stdout=write_end, stderr=subprocess.PIPE, cwd=ROOT, timeout=60,
                              env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("argv", [["sandbox", "list"], ["--help"], ["--version"], ["sandbox"],
                                  ["sandbox", "providers", "--json"]], ids=" ".join)
def test_closed_pipe_exits_quietly_with_141(nexus_home, argv, unbuffered):
    assert closed_pipe_run(*argv, unbuffered=unbuffered) == (141, b"")


@needs_bwrap
def test_closed_pipe_while_run_streams(nexus_home):
    sandbox_id = create()["sandbox_id"]
    code = "for i in range(10000): print(i, flush=True)"
    assert closed_pipe_run("sandbox", "run", sandbox_id, "--timeout", "20", "-c", code) == (141, b"")
    nexus("sandbox", "stop", sandbox_id)


EXIT_CODES = ["0", "124", "130", "2", "1", "141"]


@pytest.mark.parametrize("argv", [[], ["sandbox", "run"]])
def test_exit_codes_are_documented_in_help(nexus_home, argv):
    out = nexus(*argv, "--help")
    assert out.returncode == 0
    epilog = out.stdout.split("exit codes:")[1]
    documented = re.findall(r"^\s+(\d+)\s", epilog, re.MULTILINE)
    assert set(EXIT_CODES) <= set(documented), documented
    assert "own exit code" in epilog


def test_list_help_says_how_long_stopped_sandboxes_stay(nexus_home):
    from nexus_kernel.config import STOPPED_RETENTION_SECONDS

    out = nexus("sandbox", "list", "--help", env={"COLUMNS": "200"})
    hours = f"{STOPPED_RETENTION_SECONDS / 3600:g} h"
    assert re.search(rf"stopped .* {hours}", out.stdout), out.stdout


@needs_bwrap
def test_list_shows_no_expiry_for_a_stopped_sandbox(nexus_home):
    sandbox_id = create()["sandbox_id"]
    nexus("sandbox", "stop", sandbox_id)
    rows = nexus("sandbox", "list").stdout.splitlines()
    header, row = rows[0].split(), next(r for r in rows if r.startswith(sandbox_id)).split()
    assert dict(zip(header, row, strict=True))["EXPIRES_AT"] == "-"
