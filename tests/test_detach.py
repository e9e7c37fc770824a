"""Runs that outlive their client (issue 15, item 3): a run goes on when the CLI that
started it is SIGKILLed; another process lists it, replays its whole output and exit code,
and follows the rest live; the replay buffer says when it was cut; a second Ctrl-C detaches.
Real sandboxes (local, and docker for the kill test), real `nexus` processes. The TTL a
detached run holds: tests/fast/test_detached_runs.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from nexus_kernel.config import Settings

from .conftest import ROOT, docker_not_ready, docker_problem, needs_bwrap, nexus

#: Prints, then waits for the file `go` (written by the test), prints live, waits for
#: `end`, and exits 7: the test decides when each part happens.
CODE = (
    "import os, sys, time\n"
    "def wait(name):\n"
    "    while not os.path.exists(name): time.sleep(0.02)\n"
    "print('first', flush=True)\n"
    "wait('go')\n"
    "print('live', flush=True)\n"
    "print('to stderr', file=sys.stderr, flush=True)\n"
    "wait('end')\n"
    "print('last', flush=True)\n"
    "raise SystemExit(7)\n"
)


def popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "nexus_kernel.cli", *args],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def runs(sandbox_id: str) -> list[dict[str, Any]]:
    out = nexus("sandbox", "runs", sandbox_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["runs"]


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def cli_sandbox(request, nexus_home):
    """A sandbox made by `nexus sandbox create` on each provider; stopped after the test."""
    if request.param == "docker":
        problem = docker_problem(Settings.load())
        if problem:
            docker_not_ready(problem)
    elif not os.path.exists("/usr/bin/bwrap"):
        pytest.skip("bubblewrap is not installed")
    out = nexus("sandbox", "create", "detach", "--provider", request.param, "--json")
    assert out.returncode == 0, out.stderr
    sandbox_id = json.loads(out.stdout)["sandbox_id"]
    yield sandbox_id
    nexus("sandbox", "stop", sandbox_id)


def test_run_outlives_a_killed_cli_and_is_replayed_and_followed(cli_sandbox):
    from nexus_kernel import NexusFS

    nx = NexusFS()
    client = popen("sandbox", "run", cli_sandbox, "--timeout", "60", "-c", CODE)
    assert client.stdout.readline() == "first\n"
    client.send_signal(signal.SIGKILL)  # the client dies mid-run
    client.communicate()

    [run] = runs(cli_sandbox)
    assert run["state"] == "running" and run["run_id"].startswith(cli_sandbox + ":")
    follower = popen("sandbox", "logs", run["run_id"], "--follow")
    assert follower.stdout.readline() == "first\n"  # replayed from the start
    nx.sandbox_upload(cli_sandbox, "go", "")
    assert follower.stdout.readline() == "live\n"  # live, while the run still waits for `end`
    assert nx.sandbox_runs(cli_sandbox)["runs"][0]["state"] == "running"
    nx.sandbox_upload(cli_sandbox, "end", "")
    rest, err = follower.communicate(timeout=30)
    assert (rest, follower.returncode) == ("last\n", 7)
    assert "to stderr" in err

    again = nexus("sandbox", "logs", run["run_id"])  # a second process: the whole run
    assert (again.stdout, again.returncode) == ("first\nlive\nlast\n", 7)
    assert again.stderr == "to stderr\n"
    [run] = nx.sandbox_runs(cli_sandbox)["runs"]
    assert (run["state"], run["exit_code"], run["ended_by"]) == ("finished", 7, "exit")
    assert run["usage"]["wall_s"] > 0
    nx.close()


@needs_bwrap
def test_detach_logs_runs_and_errors(nx, sandbox):
    started = nexus("sandbox", "run", sandbox, "--detach", "--json", "-c", CODE)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["run_id"]
    deadline = time.monotonic() + 20
    while "first" not in nx.sandbox_attach(run_id, follow=False)["stdout"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    so_far = nexus("sandbox", "logs", run_id)  # a running run: what it printed so far
    assert (so_far.stdout, so_far.returncode) == ("first\n", 0)
    assert "still running" in so_far.stderr
    [run] = nx.sandbox_runs(sandbox)["runs"]
    assert (run["run_id"], run["state"], run["detached"]) == (run_id, "running", True)

    nx.sandbox_upload(sandbox, "go", "")
    nx.sandbox_upload(sandbox, "end", "")
    result = nx.sandbox_attach(run_id)
    assert (result["stdout"], result["stderr"], result["exit_code"]) == (
        "first\nlive\nlast\n", "to stderr\n", 7)
    assert (result["state"], result["dropped_bytes"], result["run_id"]) == ("finished", 0, run_id)

    for bad, says in [("nope", "is not a run id"), (sandbox + ":r000000000000", "no run")]:
        out = nexus("sandbox", "logs", bad)
        assert out.returncode == 2 and says in out.stderr
        assert out.stderr.count("\n") == 1  # one line


@needs_bwrap
def test_replay_says_when_its_start_was_cut(nx, sandbox):
    from nexus_kernel.agent.sandbox_agent.wire import REPLAY_BYTES

    lines = REPLAY_BYTES // 1000 * 2  # twice the buffer, in ~1 kB lines
    code = f"for i in range({lines}): print(str(i).rjust(999, '.'))"
    run_id = nx.sandbox_run(sandbox, "python", code, wait=False)["run_id"]
    while nx.sandbox_runs(sandbox)["runs"][0]["state"] == "running":  # a follower keeps up
        time.sleep(0.05)
    result = nx.sandbox_attach(run_id)
    assert result["exit_code"] == 0 and not result["truncated"]
    assert REPLAY_BYTES // 2 < result["dropped_bytes"] < 2 * REPLAY_BYTES
    assert result["stdout"].endswith(str(lines - 1) + "\n")
    assert len(result["stdout"]) < REPLAY_BYTES
    out = nexus("sandbox", "logs", run_id)
    assert out.returncode == 0
    assert f"the first {result['dropped_bytes']} bytes" in out.stderr


@needs_bwrap
def test_second_ctrl_c_detaches_and_says_how_to_reattach(sandbox):
    code = ("import time\ntry:\n    print('first', flush=True)\n    time.sleep(30)\n"
            "except KeyboardInterrupt:\n    print('caught', flush=True)\n    time.sleep(1.5)\n"
            "    print('after', flush=True)\n")
    client = popen("sandbox", "run", sandbox, "-c", code)
    assert client.stdout.readline() == "first\n"
    client.send_signal(signal.SIGINT)  # interrupts the run, which catches it
    assert client.stdout.readline() == "caught\n"
    client.send_signal(signal.SIGINT)  # detaches
    _, err = client.communicate(timeout=30)
    assert client.returncode == 130
    [command] = [line for line in err.splitlines() if "detached" in line]
    run_id = command.split("nexus sandbox logs ")[1].split()[0]
    assert run_id.startswith(sandbox + ":")
    rest = nexus("sandbox", "logs", run_id, "--follow")
    assert (rest.stdout, rest.returncode) == ("first\ncaught\nafter\n", 130)
