"""The seed's CLI reference and examples, each command in its own `nexus` process."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from .conftest import ROOT, needs_bwrap, nexus

pytestmark = needs_bwrap


def create(*extra: str) -> str:
    out = nexus("sandbox", "create", "cli-test", "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["sandbox_id"]


def test_create_run_status_stop_each_in_its_own_process(nexus_home):
    out = nexus("sandbox", "create", "my-sandbox", "--ttl", "30")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Created sandbox: sb_")
    sandbox_id = out.stdout.split(": ")[1].strip()

    run = nexus("sandbox", "run", sandbox_id, "-c", "print('Hello from sandbox!')")
    assert (run.returncode, run.stdout) == (0, "Hello from sandbox!\n")

    status = nexus("sandbox", "status", sandbox_id)
    assert "status: active" in status.stdout
    listing = nexus("sandbox", "list")
    assert sandbox_id in listing.stdout and "my-sandbox" in listing.stdout

    assert nexus("sandbox", "pause", sandbox_id).returncode == 0
    assert json.loads(nexus("sandbox", "status", sandbox_id, "--json").stdout)["status"] == "paused"
    assert nexus("sandbox", "resume", sandbox_id).returncode == 0
    again = nexus("sandbox", "run", sandbox_id, "-c", "print('after resume')")
    assert again.stdout == "after resume\n"

    stop = nexus("sandbox", "stop", sandbox_id)
    assert stop.stdout == f"Stopped sandbox: {sandbox_id}\n"
    assert nexus("sandbox", "stop", sandbox_id).returncode == 0  # idempotent


def test_run_from_file_and_stdin(nexus_home, tmp_path):
    sandbox_id = create()
    script = tmp_path / "script.py"
    script.write_text("print(sum(range(10)))\n")
    assert nexus("sandbox", "run", sandbox_id, "-f", str(script)).stdout == "45\n"
    js = nexus("sandbox", "run", sandbox_id, "-l", "javascript", "-c", "-",
               input="console.log('test')")
    assert js.stdout == "test\n"
    piped = nexus("sandbox", "run", sandbox_id, "-c", "-", input="print('from stdin')")
    assert piped.stdout == "from stdin\n"
    nexus("sandbox", "stop", sandbox_id)


def test_json_output_works_with_jq(nexus_home):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (apt-get install jq)")
    assert shutil.which("nexus"), "the console script is missing: pip install -e ."
    script = """
set -e
SANDBOX_ID=$(nexus sandbox create test --json | jq -r '.sandbox_id')
nexus sandbox run $SANDBOX_ID -c "print(42)" --json | jq -r '.stdout'
nexus sandbox status $SANDBOX_ID --json | jq '.status'
nexus sandbox stop $SANDBOX_ID --json | jq -r '.status'
"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == '42\n\n"active"\nstopped\n'  # jq -r adds its own newline


def test_run_exits_with_the_codes_exit_code_and_streams_stderr(nexus_home):
    sandbox_id = create()
    out = nexus("sandbox", "run", sandbox_id, "-c", "print(1/0)")
    assert out.returncode == 1
    assert "ZeroDivisionError: division by zero" in out.stderr
    out = nexus("sandbox", "run", sandbox_id, "-l", "bash", "-c", "echo partial; exit 7")
    assert (out.returncode, out.stdout) == (7, "partial\n")
    data = json.loads(nexus("sandbox", "run", sandbox_id, "-c", "import sys; sys.exit(3)",
                            "--json").stdout)
    assert data["exit_code"] == 3
    assert set(data) >= {"stdout", "stderr", "exit_code", "execution_time"}
    nexus("sandbox", "stop", sandbox_id)


def test_run_streams_live(nexus_home):
    sandbox_id = create()
    proc = subprocess.Popen(
        ["python3", "-m", "nexus_kernel.cli", "sandbox", "run", sandbox_id, "-c",
         "import time\nprint('first', flush=True)\ntime.sleep(3)\nprint('second')"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    started = time.monotonic()
    first = proc.stdout.readline()
    first_at = time.monotonic() - started
    rest = proc.stdout.read()
    proc.wait(30)
    assert first == "first\n" and rest == "second\n"
    assert first_at < time.monotonic() - started - 2  # arrived well before the end
    nexus("sandbox", "stop", sandbox_id)


def test_session_state_across_cli_processes(nexus_home):
    sandbox_id = create()
    nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "counter = 1")
    nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "counter += 1")
    out = nexus("sandbox", "run", sandbox_id, "--session", "s", "-c", "print(counter)")
    assert out.stdout == "2\n"
    nexus("sandbox", "stop", sandbox_id)


def test_timeout_exit_code_and_message(nexus_home):
    sandbox_id = create()
    out = nexus("sandbox", "run", sandbox_id, "--timeout", "1", "-c",
                "print('partial', flush=True)\nimport time; time.sleep(30)")
    assert out.returncode == 124
    assert out.stdout == "partial\n"
    assert out.stderr.strip() == "nexus: Code execution exceeded 1 second timeout"
    nexus("sandbox", "stop", sandbox_id)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["sandbox", "status", "sb_nope"], 2, "no sandbox 'sb_nope'"),
        (["sandbox", "run", "sb_nope", "-c", "print(1)"], 2, "no sandbox 'sb_nope'"),
        (["sandbox", "create", "x", "--ttl", "0"], 2, "--ttl must be > 0"),
        (["sandbox", "create", "x", "--ttl", "-3"], 2, "--ttl must be > 0"),
        (["sandbox", "create", "x", "--ttl", "soon"], 2, "'soon' is not a number"),
        (["sandbox", "create", "x", "--provider", "nope"], 2, "unknown provider 'nope'"),
        (["sandbox", "frobnicate"], 2, "unknown command 'frobnicate'"),
        (["sandbox", "run", "sb_x"], 2, "one of the arguments -c/--code -f/--file is required"),
    ],
)
def test_bad_input_one_line_and_exit_code(nexus_home, args, code, message):
    out = nexus(*args)
    assert out.returncode == code
    assert message in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_bad_language_and_timeout_on_a_real_sandbox(nexus_home):
    sandbox_id = create()
    out = nexus("sandbox", "run", sandbox_id, "-l", "cobol", "-c", "x")
    assert out.returncode == 2 and "unknown language 'cobol'" in out.stderr
    out = nexus("sandbox", "run", sandbox_id, "--timeout", "0", "-c", "print(1)")
    assert out.returncode == 2 and "timeout must be > 0" in out.stderr
    nexus("sandbox", "stop", sandbox_id)
    out = nexus("sandbox", "run", sandbox_id, "-c", "print(1)")
    assert out.returncode == 1 and "is stopped" in out.stderr
    # nothing lost: the record is still there, stopped
    status = json.loads(nexus("sandbox", "status", sandbox_id, "--json").stdout)
    assert status["status"] == "stopped"


def test_run_reports_usage_in_json_and_verbose_and_status_keeps_totals(nexus_home):
    sandbox_id = create()
    data = json.loads(nexus("sandbox", "run", sandbox_id, "--json", "-c", "print(1)").stdout)
    assert data["ended_by"] == "exit" and data["stdout"] == "1\n"
    assert set(data["usage"]) == {"wall_s", "cpu_user_s", "cpu_system_s", "peak_memory_bytes",
                                  "processes", "source"}
    late = nexus("sandbox", "run", sandbox_id, "--verbose", "--timeout", "1", "-l", "bash",
                 "-c", "while :; do :; done")
    assert late.returncode == 124
    summary = late.stderr.splitlines()[-1]
    assert summary.startswith("nexus: ended by timeout · ") and " s CPU · peak " in summary
    assert summary.endswith(" 1 process")
    plain = nexus("sandbox", "run", sandbox_id, "-c", "print(2)")
    assert (plain.stdout, plain.stderr) == ("2\n", "")  # without --verbose: nothing more
    status = json.loads(nexus("sandbox", "status", sandbox_id, "--json").stdout)
    totals = status["usage_totals"]
    assert totals["runs"] == 3 and 0.5 < totals["cpu_s"] < 2
    assert totals["max_peak_memory_bytes"] >= data["usage"]["peak_memory_bytes"]
    human = nexus("sandbox", "status", sandbox_id).stdout
    assert human.splitlines()[-1].startswith("usage: 3 runs · ")
    nexus("sandbox", "stop", sandbox_id)
