"""The %sandbox magics, driven in a real IPython shell in this process, on real local
sandboxes (bubblewrap). Outputs are captured as a notebook would receive them."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from magics import SandboxMagics, load_ipython_extension
from magics.display import SandboxCard, SandboxTable
from magics.streaming import SandboxCodeError, SandboxInterrupted

from .conftest import inert_html, needs_bwrap

pytestmark = needs_bwrap


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    return InteractiveShell.instance()


@pytest.fixture
def magics(shell, nexus_home):
    """A fresh SandboxMagics (no current sandbox, default options) registered in the shell;
    afterwards every sandbox it left running is stopped and its %config is forgotten."""
    instance = SandboxMagics(shell=shell)
    shell.register_magics(instance)
    yield instance
    for record in instance.manager.list():
        if record.status.value != "stopped":
            instance.manager.stop(record.sandbox_id)
    instance.close()
    shell.configurables.remove(instance)
    shell.config.pop("SandboxMagics", None)


def line(shell, text: str):
    """``%sandbox text``; returns (value, captured output)."""
    with capture_output() as cap:
        value = shell.run_line_magic("sandbox", text)
    return value, cap


def cell(shell, text: str, body: str):
    """``%%sandbox text`` + body; returns the captured output."""
    with capture_output() as cap:
        shell.run_cell_magic("sandbox", text, body)
    return cap


def usage_error(shell, text: str, body: str | None = None) -> str:
    """The message of the UsageError that ``%sandbox text`` raises (checked one line)."""
    with pytest.raises(UsageError) as info:
        if body is None:
            shell.run_line_magic("sandbox", text)
        else:
            shell.run_cell_magic("sandbox", text, body)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    return message


@pytest.fixture
def current(shell, magics) -> str:
    """Id of a fresh sandbox, created with the magic (so it is the current one)."""
    card, _ = line(shell, "create magic-test")
    return card["sandbox_id"]


# ------------------------------------------------------------------------ loading


def test_both_extension_names_register_one_magics_instance(shell, magics):
    import nexus_kernel

    load_ipython_extension(shell)
    nexus_kernel.load_ipython_extension(shell)
    assert shell.magics_manager.registry["SandboxMagics"] is magics
    assert "sandbox" in shell.magics_manager.magics["line"]
    assert "sandbox" in shell.magics_manager.magics["cell"]


def test_bare_sandbox_and_help_print_usage(shell, magics):
    value, cap = line(shell, "")
    assert value is None
    assert "%sandbox create" in cap.stdout and "%%sandbox run" in cap.stdout
    _, cap = line(shell, "create -h")
    assert "--ttl MINUTES" in cap.stdout


# ---------------------------------------------------------------------- lifecycle


def test_create_makes_the_current_sandbox_and_status_shows_it(shell, magics):
    card, _ = line(shell, 'create "my box" --ttl 15')
    assert isinstance(card, SandboxCard)
    assert card["name"] == "my box" and card["status"] == "active" and card["ttl_minutes"] == 15
    assert magics.current == card["sandbox_id"]
    status, _ = line(shell, "status")
    assert status["sandbox_id"] == card["sandbox_id"]
    text = repr(status)
    assert text.startswith(f"sandbox {card['sandbox_id']} (current)")
    assert "status" in text and "active" in text and "expires in" in text
    assert "<table>" in status._repr_html_() and "my box" in status._repr_html_()


def test_pause_resume_stop_and_runs_in_between(shell, magics, current):
    cell(shell, "", "x = 41")
    paused, _ = line(shell, "pause")
    assert paused["status"] == "paused"
    message = usage_error(shell, "", "print(x)")
    assert f"resume it first: %sandbox resume {current}" in message
    resumed, _ = line(shell, f"resume {current}")
    assert resumed["status"] == "active"
    assert cell(shell, "", "x += 1\nprint(x)").stdout == "42\n"
    stopped, _ = line(shell, "stop")
    assert stopped["status"] == "stopped"
    assert line(shell, "status")[0]["status"] == "stopped"
    assert "cannot be used again" in usage_error(shell, "", "print(1)")


def test_list_renders_an_html_table_with_a_text_fallback(shell, magics):
    first, _ = line(shell, "create first")
    second, _ = line(shell, "create second")
    table, _ = line(shell, "list")
    assert isinstance(table, SandboxTable) and len(table) == 2
    bundle, _ = shell.display_formatter.format(table)
    html = bundle["text/html"]
    assert html.startswith('<table class="nexus-sandboxes">')
    assert f"<td>{first['sandbox_id']}</td>" in html and "<th>status</th>" in html
    assert "<td>*</td>" in html  # the current sandbox (second) is marked
    text = bundle["text/plain"].splitlines()
    assert text[0].split() == ["sandbox_id", "name", "status", "provider", "expires", "in", "uptime"]
    assert text[2].startswith("*") and second["sandbox_id"] in text[2]
    assert first["sandbox_id"] in text[1] and "active" in text[1]


def test_empty_list_says_how_to_create_one(shell, magics):
    table, _ = line(shell, "list")
    assert repr(table) == "No sandboxes. Create one with: %sandbox create NAME"
    assert "%sandbox create" in table._repr_html_()


def test_use_switches_the_current_sandbox_by_id_or_name(shell, magics):
    first, _ = line(shell, "create alpha")
    second, _ = line(shell, "create beta")
    assert magics.current == second["sandbox_id"]
    cell(shell, "", "who = 'beta'")
    used, _ = line(shell, f"use {first['sandbox_id']}")
    assert used.current and magics.current == first["sandbox_id"]
    cell(shell, "", "who = 'alpha'")
    line(shell, "use beta")  # by name
    assert magics.current == second["sandbox_id"]
    assert cell(shell, "", "print(who)").stdout == "beta\n"
    shown, _ = line(shell, "use")
    assert shown["sandbox_id"] == second["sandbox_id"]
    assert cell(shell, f"run {first['sandbox_id']}", "print(who)").stdout == "alpha\n"


def test_upload_and_download_files(shell, magics, current, tmp_path):
    local = tmp_path / "data.csv"
    local.write_bytes(b"a,b\n1,2\n")
    _, cap = line(shell, f"upload {local}")
    assert cap.stdout == f"uploaded {local} to {current}:data.csv (8 bytes)\n"
    line(shell, f"upload {local} inbox/copy.csv")
    out = cell(shell, "-l bash", "cat data.csv inbox/copy.csv | wc -l; echo made > made.txt")
    assert out.stdout.strip() == "4"
    target = tmp_path / "out"
    target.mkdir()
    _, cap = line(shell, f"download made.txt {target}")
    assert (target / "made.txt").read_text() == "made\n"
    assert cap.stdout.startswith(f"downloaded {current}:made.txt to {target / 'made.txt'}")
    assert "cannot read" in usage_error(shell, f"upload {tmp_path / 'missing.csv'}")
    assert "nope.txt" in usage_error(shell, "download nope.txt")


# ----------------------------------------------------------------------- running


def test_run_keeps_session_state_and_runs_every_language(shell, magics, current):
    assert cell(shell, "", "x = 20").stdout == ""
    assert cell(shell, "run", "print(x + 22)").stdout == "42\n"
    assert cell(shell, "-l bash", "cd /tmp; N=7").stdout == ""
    assert cell(shell, "run -l bash", "echo $N $PWD").stdout == "7 /tmp\n"
    assert cell(shell, "-l javascript", "var y = 6; console.log(y * 7)").stdout == "42\n"
    assert cell(shell, "-l js", "console.log(typeof y)").stdout == "number\n"
    # --fresh is a new process: files persist, variables do not
    fresh = cell(shell, "--fresh", "print('x' in globals())")
    assert fresh.stdout == "False\n"
    assert cell(shell, "--session other", "print('x' in globals())").stdout == "False\n"


def test_usage_shows_the_last_runs(shell, magics, current):
    _, empty = line(shell, "usage")
    assert empty.stdout == "No runs yet.\n"
    cell(shell, "", "import time; time.sleep(0.3)")
    with pytest.raises(UsageError, match="exceeded 1 second timeout"):
        cell(shell, "--timeout 1 -l bash", "sleep 5")
    _, shown = line(shell, "usage")
    header, sleep, late = shown.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "ENDED", "BY"]
    assert sleep.split()[:3] == ["1", current, "exit"] and float(sleep.split()[3]) >= 0.3
    assert late.split()[:3] == ["2", current, "timeout"] and late.split()[-1] == "cgroup"


def test_an_allow_list_sandbox_shows_its_denials(shell, magics):
    card, _ = line(shell, "create guarded --allow pypi.org")
    assert card["network_allow"] == ["pypi.org"] and card["network"] is False
    out = cell(shell, "-l bash", "curl -s -o /dev/null -w '%{http_code}' http://example.net/")
    assert out.stdout == "403"
    assert out.stderr == "Nexus: network denied example.net:80: host not in the allow-list\n"
    _, shown = line(shell, "events")
    assert f"run {card['sandbox_id']}:r" in shown.stdout and "example.net:80" in shown.stdout


def test_output_streams_into_the_cell_while_the_code_runs(shell, magics, current, monkeypatch):
    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.stamps: list[tuple[float, str]] = []

        def write(self, text: str) -> int:
            self.stamps.append((time.monotonic(), text))
            return super().write(text)

    recorder = Recorder()
    monkeypatch.setattr(sys, "stdout", recorder)
    shell.run_cell_magic(
        "sandbox", "", "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')"
    )
    ended = time.monotonic()
    monkeypatch.undo()
    assert recorder.getvalue() == "first\nsecond\n"
    first = next(t for t, text in recorder.stamps if "first" in text)
    second = next(t for t, text in recorder.stamps if "second" in text)
    assert second - first >= 0.8
    assert ended - first >= 0.8


def test_stderr_and_the_sandbox_traceback_are_shown_without_failing_the_cell(
    shell, magics, current
):
    out = cell(shell, "", "import sys\nprint('out')\nprint('warn', file=sys.stderr)")
    assert out.stdout == "out\n" and out.stderr == "warn\n"
    failed = cell(shell, "", "def f():\n    return 1 / 0\nf()")
    assert failed.stderr.startswith("Traceback (most recent call last):")
    assert "return 1 / 0" in failed.stderr
    assert failed.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert failed.stderr.count("ZeroDivisionError") == 1  # shown once
    assert "magics" not in failed.stderr  # no host frames


def test_raise_error_fails_the_cell_with_a_one_line_error(shell, magics, current):
    with pytest.raises(SandboxCodeError) as info:
        cell(shell, "--raise-error", "1 / 0")
    assert info.value._render_traceback_() == [
        f"SandboxCodeError: ZeroDivisionError: division by zero (exit code 1 in {current})"
    ]
    with capture_output() as cap:
        result = shell.run_cell("%%sandbox run -l bash --raise-error\nexit 3")
    assert isinstance(result.error_in_exec, SandboxCodeError)
    assert cap.stdout.strip() == f"SandboxCodeError: the code failed (exit code 3 in {current})"
    shell.run_line_magic("config", "SandboxMagics.raise_error = True")
    with pytest.raises(SandboxCodeError):
        cell(shell, "", "raise ValueError('bad')")


def test_results_and_rich_bundles_are_published(shell, magics, current):
    out = cell(shell, "", "6 * 7")
    assert [o.data for o in out.outputs] == [{"text/plain": "42"}]
    rich = cell(
        shell,
        "",
        "class Table:\n"
        "    def _repr_html_(self):\n"
        "        return '<table><tr><td>1</td></tr></table>'\n"
        "    def __repr__(self):\n"
        "        return 'Table(1)'\n"
        "print('before')\n"
        "Table()",
    )
    assert rich.stdout == "before\n"
    assert rich.outputs[0].data["text/plain"] == "Table(1)"
    assert inert_html(rich.outputs[0].data["text/html"]) == (
        "<table><tbody><tr><td>1</td></tr></tbody></table>")


def test_hostile_output_is_inert_unless_trust_is_turned_on(shell, magics, current):
    body = ("class P:\n"
            "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
            "        return {'text/plain': 'p', 'application/javascript': 'window.x = 1',\n"
            "                'text/html': '<script>window.y = 1</script><b>b</b>'}\n"
            "P()")
    data = cell(shell, "", body).outputs[0].data
    assert "application/javascript" not in data and "<script" not in data["text/html"]
    _, out = line(shell, "trust on")
    assert "now TRUSTED" in out.stdout
    data = cell(shell, "", body).outputs[0].data
    assert data["application/javascript"] == "window.x = 1" and "<script>" in data["text/html"]
    _, out = line(shell, "trust off")
    assert "untrusted again" in out.stdout
    assert "application/javascript" not in cell(shell, "", body).outputs[0].data
    assert "invalid choice" in usage_error(shell, "trust maybe")


def test_magic_lines_take_trailing_comments(shell, magics):
    card, _ = line(shell, "create commented --ttl 30  # this notebook's sandbox")
    assert card["name"] == "commented" and card["ttl_minutes"] == 30
    out = cell(shell, "run --timeout 20  # a comment with 'quotes'", "print('ran')")
    assert out.stdout == "ran\n"


HOSTILE = '<img src=x onerror="alert(1)">'


def test_the_magics_own_views_escape_every_field():
    info = {"sandbox_id": "sb_1", "name": HOSTILE, "status": "active", "provider": HOSTILE,
            "template_id": HOSTILE, "error": HOSTILE, "created_at": HOSTILE,
            "expires_at": None, "uptime_seconds": 1.0}
    for html in (SandboxCard(info, title=HOSTILE)._repr_html_(),
                 SandboxTable([info], current="sb_1")._repr_html_()):
        assert "<img" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_the_card_shows_a_platforms_hard_end():
    info = {"sandbox_id": "sb_1", "name": "n", "status": "active", "provider": "e2b",
            "expires_at": None, "hard_end_at": "2030-01-01T12:00:00+00:00", "uptime_seconds": 1}
    assert ("hard_end_at", "2030-01-01 12:00:00 UTC") in SandboxCard(info).items()


def test_explicit_display_calls_are_published_in_order(shell, magics, current):
    out = cell(
        shell,
        "",
        "class Svg:\n"
        "    def _repr_svg_(self):\n"
        "        return '<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>'\n"
        "display(Svg())\n"
        "display({'a': 1})\n",
    )
    assert out.outputs[0].data["image/svg+xml"].startswith("<svg")
    assert out.outputs[1].data["text/plain"] == "{'a': 1}"


def test_updatable_displays_and_clear_output_reach_the_cell(shell, magics, current):
    out = cell(
        shell,
        "",
        "display('old', display_id='progress')\n"
        "display('new', display_id='progress', update=True)\n",
    )
    first, second = out.outputs
    assert first.data == {"text/plain": "'old'"} and not first.update
    assert second.data == {"text/plain": "'new'"} and second.update
    assert second.transient == {"display_id": "progress"}
    cleared = cell(shell, "", "display('gone')\nclear_output()\ndisplay('kept')")
    assert [o.data for o in cleared.outputs] == [{"text/plain": "'kept'"}]


def test_input_in_the_sandbox_is_answered_by_the_notebook(shell, magics, current, monkeypatch):
    prompts: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or "Ada")
    out = cell(shell, "", "name = input('name? ')\nprint('hello', name)")
    assert prompts == ["name? "] and out.stdout.endswith("hello Ada\n")

    def no_input(prompt=""):
        raise EOFError

    monkeypatch.setattr("builtins.input", no_input)
    failed = cell(shell, "", "input('again? ')")
    assert "EOFError" in failed.stderr


def test_keyboard_interrupt_is_forwarded_and_the_state_is_kept(shell, magics, current):
    cell(shell, "", "n = 0")
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(SandboxInterrupted) as info:
            cell(shell, "", "print('looping', flush=True)\nwhile True:\n    n += 1")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5
    assert info.value._render_traceback_() == [
        f"KeyboardInterrupt: interrupted; the state of sandbox {current} is kept"
    ]
    assert cell(shell, "", "print(n > 0)").stdout == "True\n"
    _, cap = line(shell, "interrupt")
    assert cap.stdout == f"interrupted 0 run(s) in {current}\n"


def test_an_ignored_interrupt_restarts_the_session_and_says_so(shell, magics, current):
    cell(shell, "", "n = 0")
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(SandboxInterrupted) as info:
            cell(shell, "", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                            "print('looping', flush=True)\nwhile True:\n    n += 1")
    finally:
        timer.cancel()
    assert "session in" in str(info.value) and "its variables are gone" in str(info.value)
    assert "NameError" in cell(shell, "", "n").stderr


def test_a_timeout_keeps_what_was_printed_and_is_a_one_line_error(shell, magics, current):
    with capture_output() as cap, pytest.raises(UsageError) as info:
        shell.run_cell_magic("sandbox", "--timeout 1", "print('early', flush=True)\nwhile True: pass")
    assert cap.stdout == "early\n"
    assert str(info.value) == "Code execution exceeded 1 second timeout"


# ---------------------------------------------------------------------- %config


def test_config_sets_the_defaults_of_create_and_run(shell, magics):
    shell.run_line_magic("config", "SandboxMagics.ttl_minutes = 3")
    card, _ = line(shell, "create configured")
    assert card["ttl_minutes"] == 3
    assert line(shell, "create explicit --ttl 4")[0]["ttl_minutes"] == 4

    shell.run_line_magic("config", "SandboxMagics.language = 'bash'")
    assert cell(shell, "", 'echo "$((6 * 7))"').stdout == "42\n"
    shell.run_line_magic("config", "SandboxMagics.language = 'python'")

    shell.run_line_magic("config", "SandboxMagics.session = None")
    cell(shell, "", "z = 1")
    assert cell(shell, "", "print('z' in globals())").stdout == "False\n"

    shell.run_line_magic("config", "SandboxMagics.timeout = 1")
    assert "exceeded 1 second" in usage_error(shell, "", "import time; time.sleep(5)")

    shell.run_line_magic("config", "SandboxMagics.provider = 'nope'")
    assert "unknown provider 'nope'" in usage_error(shell, "create p")
    shell.run_line_magic("config", "SandboxMagics.provider = 'local'")
    shell.run_line_magic("config", "SandboxMagics.template = 'missing'")
    assert "no local template 'missing'" in usage_error(shell, "create t")


def test_config_rejects_an_unknown_language(shell, magics):
    with capture_output():
        shell.run_line_magic("config", "SandboxMagics.language = 'ruby'")
    assert magics.language == "python"
    shell.run_line_magic("config", "SandboxMagics.language = 'js'")
    assert magics.language == "javascript"


# -------------------------------------------------------------------- bad input


def test_bad_input_is_a_one_line_usage_error(shell, magics):
    assert usage_error(shell, "bogus").startswith("unknown subcommand 'bogus'; use one of: create")
    assert "no current sandbox" in usage_error(shell, "status")
    assert "no current sandbox" in usage_error(shell, "", "print(1)")
    assert usage_error(shell, "status sb_nope") == (
        "no sandbox 'sb_nope' for this user; run '%sandbox list' to see yours"
    )
    assert "no sandbox 'sb_nope'" in usage_error(shell, "run sb_nope", "print(1)")
    assert usage_error(shell, "create x --ttl abc") == (
        "%sandbox create: argument --ttl: 'abc' is not a number of minutes (e.g. 30)"
    )
    assert "ttl_minutes must be > 0" in usage_error(shell, "create x --ttl -5")
    assert "unrecognized arguments: --bogus" in usage_error(shell, "create x --bogus")
    assert "the following arguments are required: name" in usage_error(shell, "create")
    assert "cannot parse" in usage_error(shell, 'create "unclosed')
    assert "put %%sandbox run on the first line" in usage_error(shell, "run")
    assert "takes no cell body" in usage_error(shell, "list", "x")
    assert magics.manager.list() == []  # nothing was created by bad input


def test_bad_language_and_timeout_are_one_line_errors(shell, magics, current):
    assert usage_error(shell, "-l ruby", "puts 1") == (
        "unknown language 'ruby'; use one of: python, javascript, bash"
    )
    assert "not a number of seconds" in usage_error(shell, "--timeout soon", "print(1)")
    assert "timeout must be > 0" in usage_error(shell, "--timeout 0", "print(1)")


def test_a_usage_error_shows_as_one_line_in_the_cell(shell, magics):
    with capture_output() as cap:
        result = shell.run_cell("%sandbox status sb_nope")
    assert isinstance(result.error_in_exec, UsageError)
    assert cap.stderr == (
        "UsageError: no sandbox 'sb_nope' for this user; run '%sandbox list' to see yours\n"
    )
    assert "Traceback" not in cap.stdout + cap.stderr


# ---------------------------------------------------------- in a real ipykernel


def _execute(km, kc, code: str, interrupt_after: float | None = None):
    """Run ``code`` in the kernel; returns (reply status, [(seconds, msg_type, content)])."""
    msg_id = kc.execute(code)
    started, sent, outputs = time.monotonic(), False, []
    while True:
        if interrupt_after is not None and not sent and time.monotonic() - started > interrupt_after:
            km.interrupt_kernel()
            sent = True
        try:
            msg = kc.get_iopub_msg(timeout=0.1)
        except Exception:  # queue.Empty: nothing yet
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind in ("stream", "error", "display_data", "execute_result"):
            outputs.append((time.monotonic() - started, kind, content))
        if kind == "status" and content["execution_state"] == "idle":
            break
    while True:  # skip a late kernel_info reply of wait_for_ready (jupyter_client 8.10)
        reply = kc.get_shell_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply["content"]["status"], outputs


def test_in_a_real_ipykernel_output_is_live_and_interrupt_keeps_state(nexus_home):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        assert _execute(km, kc, "%load_ext nexus_kernel")[0] == "ok"
        status, outputs = _execute(km, kc, "%sandbox create live")
        assert status == "ok" and "active" in outputs[0][2]["data"]["text/html"]
        status, outputs = _execute(
            km, kc, "%%sandbox\nimport time\nn = 0\nprint('go', flush=True)\ntime.sleep(1)\nprint('done')"
        )
        streams = [(t, c["text"]) for t, kind, c in outputs if kind == "stream"]
        assert status == "ok" and [text for _, text in streams] == ["go\n", "done\n"]
        assert streams[1][0] - streams[0][0] >= 0.8  # the first line came before the sleep

        status, outputs = _execute(km, kc, "%%sandbox\nwhile True:\n    n += 1", interrupt_after=1.0)
        error = next(c for _, kind, c in outputs if kind == "error")
        assert status == "error" and error["ename"] == "SandboxInterrupted"
        assert error["traceback"] == [f"KeyboardInterrupt: {error['evalue']}"]
        assert outputs[-1][0] < 4
        status, outputs = _execute(km, kc, "%%sandbox\nprint(n > 0)")
        assert status == "ok" and outputs[0][2]["text"] == "True\n"
        assert _execute(km, kc, "%sandbox stop")[0] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
        _stop_every_sandbox()


def _stop_every_sandbox() -> None:
    """Stop what a kernel left running in this test's NEXUS_HOME."""
    from nexus_kernel import SandboxManager

    manager = SandboxManager()
    for record in manager.list():
        if record.status.value != "stopped":
            manager.stop(record.sandbox_id)
    manager.close()


def test_the_readme_jupyter_cells_work_when_pasted(shell, magics):
    import re

    from .conftest import ROOT

    section = (ROOT / "README.md").read_text().split("## Jupyter", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(cells) >= 2
    for source in cells:
        result = shell.run_cell(source)
        assert result.success, (source, result.error_before_exec or result.error_in_exec)


def test_a_run_warns_once_ahead_of_the_platforms_runtime_cap(shell, magics, current):
    """A provider's runtime cap (the handle's hard end, e.g. E2B's plan limit) ends the
    sandbox whatever its TTL: the magics say so once, ten minutes ahead, like the kernel."""
    end = magics.manager.clock() + 300

    def capped(data):
        data["handle"] = {**data["handle"], "hard_end": end}
        return data

    magics.manager.store.update(current, capped)
    first = cell(shell, "", "print(1)")
    second = cell(shell, "", "print(2)")
    assert "runtime cap" in first.stderr and "in 5 min" in first.stderr, first.stderr
    assert "runtime cap" not in second.stderr and second.stdout == "2\n"
