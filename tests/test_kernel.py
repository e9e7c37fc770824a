"""The "Nexus Sandbox" proxy kernel, installed with `nexus kernel install --prefix` into a tmp
prefix and driven through jupyter_client like a notebook does, on real local sandboxes."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

from nexus_kernel.cli import kernel_spec
from nexus_kernel.manager import SandboxManager
from nexus_kernel.providers import local

from .conftest import ROOT, inert_html, needs_bwrap, nexus

pytestmark = needs_bwrap

KERNEL = "nexus-sandbox"


@pytest.fixture(scope="session")
def kernel_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prefix with the kernelspec installed by the real CLI."""
    prefix = tmp_path_factory.mktemp("jupyter-prefix")
    out = nexus("kernel", "install", "--prefix", str(prefix), "--json")
    assert out.returncode == 0, out.stderr
    return prefix


@pytest.fixture
def jupyter_path(kernel_prefix: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """JUPYTER_PATH pointing at the installed kernelspec (and nothing of the host user)."""
    path = kernel_prefix / "share" / "jupyter"
    monkeypatch.setenv("JUPYTER_PATH", str(path))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(kernel_prefix / "data"))
    return path


class Kernel:
    """A started kernel and a blocking client, with helpers that collect IOPub output."""

    def __init__(self, env: dict[str, str] | None = None):
        self.km = KernelManager(kernel_name=KERNEL)
        self.km.start_kernel(env={**os.environ, **(env or {})})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def execute(self, code: str, timeout: float = 60, **kw: Any) -> tuple[dict, list[dict]]:
        """Run ``code``; the reply and every output message (with ``at``: arrival time)."""
        outputs: list[dict] = []

        def hook(msg: dict) -> None:
            if msg["msg_type"] not in ("status", "execute_input"):
                msg["at"] = time.monotonic()
                outputs.append(msg)

        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=timeout, **kw)
        return reply, outputs

    def shell(self, method: str, *args: Any) -> dict:
        """The reply to this request (a late kernel_info reply of wait_for_ready, which
        jupyter_client 8.10 leaves on the shell channel, is skipped)."""
        msg_id = getattr(self.kc, method)(*args)
        while True:
            reply = self.kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]

    def sandbox_id(self) -> str:
        _, out = self.execute("%sandbox status")
        text = "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream")
        return text.split()[1]

    def shutdown(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=False)


@pytest.fixture
def start_kernel(nexus_home: Path, jupyter_path: Path):
    """Start kernels (env overrides allowed); every one is shut down at the end."""
    started: list[Kernel] = []

    def start(**env: str) -> Kernel:
        kernel = Kernel(env)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        kernel.shutdown()
    manager = SandboxManager(is_admin=True)
    for record in manager.list(all_users=True):
        if record.status.value != "stopped":
            manager.stop(record.sandbox_id)
    manager.close()


@pytest.fixture
def kernel(start_kernel) -> Kernel:
    return start_kernel()


def texts(outputs: list[dict], name: str = "stdout") -> str:
    return "".join(m["content"]["text"] for m in outputs
                   if m["msg_type"] == "stream" and m["content"]["name"] == name)


# ------------------------------------------------------------------ kernelspec


def test_kernelspec_is_installed_with_logos(jupyter_path: Path) -> None:
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    assert spec.display_name == "Nexus Sandbox" and spec.language == "python"
    assert spec.argv == [sys.executable, "-m", "nexus_kernel", "-f", "{connection_file}"]
    assert spec.interrupt_mode == "signal" and spec.env == {}
    folder = Path(spec.resource_dir)
    assert {p.name for p in folder.glob("logo-*.png")} == {"logo-32x32.png", "logo-64x64.png"}


def test_shipped_kernel_json_is_the_cli_spec_with_python3() -> None:
    shipped = json.loads((ROOT / "kernelspec" / "kernel.json").read_text())
    assert shipped == kernel_spec("python3")
    for size in (32, 64):
        data = (ROOT / "kernelspec" / f"logo-{size}x{size}.png").read_bytes()
        assert data.startswith(b"\x89PNG") and data[16:24] == size.to_bytes(4, "big") * 2


def test_provider_variant_and_bad_input(tmp_path: Path) -> None:
    out = nexus("kernel", "install", "--prefix", str(tmp_path), "--provider", "docker", "--json")
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    assert installed["name"] == "nexus-sandbox-docker"
    spec = json.loads((Path(installed["path"]) / "kernel.json").read_text())
    assert spec["env"] == {"NEXUS_PROVIDER": "docker"}
    assert spec["display_name"] == "Nexus Sandbox (docker)"
    bad = nexus("kernel", "install", "--prefix", str(tmp_path), "--provider", "nope")
    assert bad.returncode == 2 and "unknown provider 'nope'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    both = nexus("kernel", "install", "--user", "--prefix", str(tmp_path))
    assert both.returncode == 2


def test_allow_list_variant(tmp_path: Path) -> None:
    out = nexus("kernel", "install", "--prefix", str(tmp_path), "--allow", "PyPI.org",
                "--allow", "api.example.com:443", "--json")
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    assert installed["name"] == "nexus-sandbox-allow"
    spec = json.loads((Path(installed["path"]) / "kernel.json").read_text())
    assert spec["env"] == {"NEXUS_NETWORK_ALLOW": "pypi.org api.example.com:443"}
    assert spec["display_name"] == "Nexus Sandbox (allow-list)"
    bad = nexus("kernel", "install", "--prefix", str(tmp_path), "--allow", "a..b")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_trusted_output_variant(tmp_path: Path) -> None:
    out = nexus("kernel", "install", "--prefix", str(tmp_path), "--trusted-output", "--json")
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    assert installed["name"] == "nexus-sandbox-trusted"
    spec = json.loads((Path(installed["path"]) / "kernel.json").read_text())
    assert spec["env"] == {"NEXUS_TRUSTED_OUTPUT": "1"}
    assert spec["display_name"] == "Nexus Sandbox (trusted output)"


# ------------------------------------------------------------------ execution


def test_state_results_errors_and_counts(kernel: Kernel) -> None:
    reply, out = kernel.execute("x = 41\nprint('hi')\nx + 1")
    assert reply["content"]["status"] == "ok"
    count = reply["content"]["execution_count"]
    assert texts(out) == "hi\n"
    [result] = [m for m in out if m["msg_type"] == "execute_result"]
    assert result["content"]["data"] == {"text/plain": "42"}
    assert result["content"]["execution_count"] == count

    reply, out = kernel.execute("def f():\n    return 1 / 0\nprint('before')\nf()")
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "ZeroDivisionError"
    assert content["execution_count"] == count + 1
    assert [m["msg_type"] for m in out] == ["stream", "error"]  # no traceback on stderr too
    tb = out[1]["content"]["traceback"]
    assert tb[0] == "Traceback (most recent call last):" and tb[-1].startswith("ZeroDivisionError")
    assert any("return 1 / 0" in line for line in tb)

    reply, out = kernel.execute("x")  # state survives the error
    assert out[-1]["content"]["data"]["text/plain"] == "41"
    assert reply["content"]["execution_count"] == count + 2


def test_streaming_is_live(kernel: Kernel) -> None:
    kernel.execute("import time")
    sent = time.monotonic()
    reply, out = kernel.execute("print('first', flush=True)\ntime.sleep(2)\nprint('second')")
    assert reply["content"]["status"] == "ok"
    first = next(m for m in out if "first" in m["content"].get("text", ""))
    second = next(m for m in out if "second" in m["content"].get("text", ""))
    assert first["at"] - sent < 1.0  # arrived while the cell was still sleeping
    assert second["at"] - first["at"] > 1.5


def test_interrupt_keeps_the_namespace(kernel: Kernel) -> None:
    kernel.execute("kept = 'still here'")
    interrupted_at: list[float] = []

    def interrupt() -> None:
        interrupted_at.append(time.monotonic())
        kernel.km.interrupt_kernel()

    threading.Timer(1.0, interrupt).start()
    reply, out = kernel.execute("while True:\n    pass")
    took = time.monotonic() - interrupted_at[0]
    assert took < 2.0
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "KeyboardInterrupt"
    assert [m["msg_type"] for m in out] == ["error"]
    _, out = kernel.execute("kept")
    assert out[-1]["content"]["data"]["text/plain"] == "'still here'"


def test_interrupt_while_waiting_for_input(kernel: Kernel) -> None:
    kernel.execute("kept = 1")
    threading.Timer(1.0, kernel.km.interrupt_kernel).start()
    reply, out = kernel.execute("input('never answered? ')", allow_stdin=True,
                                stdin_hook=lambda msg: None)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    _, out = kernel.execute("kept + 1")  # the session was interrupted too, not left waiting
    assert out[-1]["content"]["data"]["text/plain"] == "2"


@pytest.mark.slow
def test_a_cell_that_ignores_the_interrupt_restarts_its_session_and_says_so(kernel) -> None:
    kernel.execute("kept = 1")
    threading.Timer(1.0, kernel.km.interrupt_kernel).start()
    started = time.monotonic()
    reply, out = kernel.execute("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                "while True:\n    pass")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert 2.5 < time.monotonic() - started < 6
    assert "its session was restarted" in texts(out, "stderr")
    started = time.monotonic()
    _, out = kernel.execute("1 + 1")  # no hang: the same sandbox, a fresh session
    assert out[-1]["content"]["data"]["text/plain"] == "2" and time.monotonic() - started < 5
    assert kernel.execute("kept")[0]["content"]["ename"] == "NameError"


def test_rich_display_and_clear_output(kernel: Kernel) -> None:
    code = ("class H:\n    def _repr_html_(self): return '<b>h</b>'\n"
            "print('a')\ndisplay(H())\nprint('b')\nclear_output(wait=True)\nH()")
    reply, out = kernel.execute(code)
    assert reply["content"]["status"] == "ok"
    kinds = [m["msg_type"] for m in out]
    assert kinds == ["stream", "display_data", "stream", "clear_output", "execute_result"]
    assert inert_html(out[1]["content"]["data"]["text/html"]) == "<b>h</b>"
    assert out[3]["content"] == {"wait": True}
    assert inert_html(out[4]["content"]["data"]["text/html"]) == "<b>h</b>"


def test_a_restarted_kernel_stops_the_sandbox_of_its_previous_run(kernel: Kernel) -> None:
    kernel.execute("x = 1")
    first = kernel.sandbox_id()
    kernel.km.restart_kernel(now=True)  # a crash and Jupyter's auto-restart look the same
    kernel.kc.wait_for_ready(timeout=60)
    reply, out = kernel.execute("print('fresh')")
    assert f"stopped sandbox {first} of this kernel's previous run" in texts(out, "stderr")
    assert SandboxManager().get(first).status.value == "stopped"
    reply, _ = kernel.execute("x")
    assert reply["content"]["ename"] == "NameError"  # fresh state, as ipykernel after restart


def test_a_restarted_kernel_can_continue_in_its_sandbox(start_kernel) -> None:
    kernel = start_kernel(NEXUS_KERNEL_REATTACH="1")
    kernel.execute("x = 41")
    first = kernel.sandbox_id()
    kernel.km.restart_kernel(now=True)
    kernel.kc.wait_for_ready(timeout=60)
    _, out = kernel.execute("x + 1")
    assert f"continuing in sandbox {first}" in texts(out, "stderr")
    assert out[-1]["content"]["data"]["text/plain"] == "42" and kernel.sandbox_id() == first


def test_a_cells_usage_is_in_its_reply_metadata_and_in_sandbox_usage(kernel: Kernel) -> None:
    reply, _ = kernel.execute("x = bytearray(50 * 2**20); len(x)")
    nexus = reply["metadata"]["nexus"]
    assert nexus["ended_by"] == "exit" and nexus["usage"]["peak_memory_bytes"] > 50 * 2**20
    reply, _ = kernel.execute("%sandbox timeout 1\nimport time; time.sleep(5)")
    assert reply["metadata"]["nexus"]["ended_by"] == "timeout"
    reply, out = kernel.execute("%sandbox usage")
    assert "nexus" not in reply["metadata"]  # no code ran
    rows = texts(out).splitlines()
    assert rows[0].split()[:3] == ["RUN", "ENDED", "BY"]
    assert [row.split()[:3] for row in rows[1:]] == [["In", "[1]", "exit"],
                                                    ["In", "[2]", "timeout"]]


def test_each_cells_record_update_lands_after_its_reply(kernel: Kernel) -> None:
    """The kernel writes a cell's usage totals and TTL after its reply, before the next
    request: none is lost, and the next request already sees it."""
    kernel.execute("x = bytearray(30 * 2**20)")
    kernel.execute("y = 1")
    sandbox_id = kernel.sandbox_id()  # a third request: the second cell's update is done
    record = SandboxManager().get(sandbox_id)
    assert record.usage_totals.get("runs") == 2
    assert record.usage_totals["max_peak_memory_bytes"] > 30 * 2**20
    assert record.last_active_at is not None and record.expires_at > record.last_active_at


def test_a_cells_network_denials_show_under_it(start_kernel) -> None:
    kernel = start_kernel(NEXUS_NETWORK_ALLOW="allowed.test:9")
    reply, out = kernel.execute("import urllib.request\ntry: urllib.request.urlopen("
                                "'http://unlisted.test/', timeout=5)\nexcept Exception as e: "
                                "print(type(e).__name__)")
    assert texts(out) == "HTTPError\n"
    assert texts(out, "stderr") == ("Nexus: network denied unlisted.test:80: host not in the "
                                    "allow-list\n")
    assert [e["host"] for e in reply["metadata"]["nexus"]["network_denials"]] == ["unlisted.test"]
    _, out = kernel.execute("%sandbox events")
    run_id = reply["metadata"]["nexus"]["network_denials"][0]["run"]
    assert f"run {run_id}" in texts(out) and "unlisted.test:80" in texts(out)
    _, out = kernel.execute("%sandbox status")
    assert "network allow allowed.test:9" in texts(out)


def test_sandbox_lines_take_trailing_comments(kernel: Kernel) -> None:
    reply, out = kernel.execute("%sandbox ttl 30  # the notebook's own TTL\n1")
    assert reply["content"]["status"] == "ok" and "TTL is now 30 min" in texts(out)


JS_AND_HTML = ("class P:\n"
               "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
               "        return {'text/plain': 'p', 'application/javascript': 'window.x = 1',\n"
               "                'text/html': '<img src=x onerror=alert(1)><b>b</b>'}\n"
               "P()")


def test_sandbox_output_is_inert_until_trust_is_turned_on(kernel: Kernel) -> None:
    reply, out = kernel.execute(JS_AND_HTML)
    data = out[-1]["content"]["data"]
    assert "application/javascript" not in data and "onerror" not in data["text/html"]
    assert "<b>b</b>" in inert_html(data["text/html"])
    _, out = kernel.execute("%sandbox trust on")
    assert "TRUSTED" in texts(out) and "start kernels on this server" in texts(out)
    _, out = kernel.execute("P()")
    assert out[-1]["content"]["data"]["application/javascript"] == "window.x = 1"
    assert texts(out, "stderr") == ""  # the warning was given when trust was turned on
    _, out = kernel.execute("%sandbox trust off")
    assert "untrusted again" in texts(out)
    _, out = kernel.execute("P()")
    assert "application/javascript" not in out[-1]["content"]["data"]


def test_a_trusted_kernelspec_warns_in_its_first_cell(start_kernel) -> None:
    kernel = start_kernel(NEXUS_TRUSTED_OUTPUT="1")
    _, out = kernel.execute(JS_AND_HTML)
    assert "output of this sandbox is now TRUSTED" in texts(out, "stderr")
    assert out[-1]["content"]["data"]["application/javascript"] == "window.x = 1"
    _, out = kernel.execute("1")
    assert texts(out, "stderr") == ""


def test_help_from_the_sandbox_is_inert(kernel: Kernel) -> None:
    kernel.execute("def f():\n    '<img src=x onerror=alert(1)>'\n")
    info = kernel.shell("inspect", "f", 1, 0)
    assert info["found"] and set(info["data"]) <= {"text/plain", "text/html"}
    assert "onerror" not in info["data"].get("text/html", "")


@pytest.mark.slow
def test_matplotlib_plot_arrives_as_png(start_kernel, matplotlib_template: str | None) -> None:
    env = {"NEXUS_TEMPLATE": matplotlib_template} if matplotlib_template else {}
    kernel = start_kernel(**env)
    reply, out = kernel.execute("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
                                timeout=120)
    assert reply["content"]["status"] == "ok", out
    [display] = [m for m in out if m["msg_type"] == "display_data"]
    data = display["content"]["data"]
    assert data["text/plain"].startswith("<Figure size")
    import base64

    assert base64.b64decode(data["image/png"]).startswith(b"\x89PNG")
    assert texts(out, "stderr") == ""


def test_bash_and_javascript_cells_share_the_sandbox(kernel: Kernel) -> None:
    kernel.execute("open('shared.txt', 'w').write('from python')")
    reply, out = kernel.execute("%%bash\ncat shared.txt; echo; cd /tmp; export V=1")
    assert reply["content"]["status"] == "ok" and texts(out) == "from python\n"
    _, out = kernel.execute("%%bash\necho $V $(pwd)")  # the bash session persists
    assert texts(out) == "1 /tmp\n"
    reply, out = kernel.execute("%%javascript\nvar n = 6;\nconsole.log('js');\nn * 7")
    assert reply["content"]["status"] == "ok" and texts(out) == "js\n"
    assert out[-1]["content"]["data"] == {"text/plain": "42"}
    reply, out = kernel.execute("%%bash\necho failing >&2\nfalse")
    content = reply["content"]
    assert content["status"] == "error" and content["ename"] == "ExitCode"
    assert content["evalue"] == "bash exited with status 1" and texts(out, "stderr") == "failing\n"
    reply, out = kernel.execute("%%javascript\nnull.x")
    assert reply["content"]["ename"] == "TypeError" and [m["msg_type"] for m in out] == ["error"]


def test_sandbox_lines_and_unknown_magics(kernel: Kernel) -> None:
    reply, out = kernel.execute("%sandbox status")
    assert reply["content"]["status"] == "ok"
    assert texts(out).startswith("No sandbox yet: the first cell creates one (provider local")
    reply, out = kernel.execute("%sandbox ttl 30\n%sandbox keep on\nvalue = 3")
    assert "TTL is now 30 min" in texts(out)
    status = texts(kernel.execute("%sandbox status")[1])
    assert "status:    active" in status and "TTL 30 min" in status
    assert "on kernel shutdown: kept" in status
    kernel.execute("%sandbox keep off")
    for bad, message in [("%sandbox frobnicate", "unknown subcommand 'frobnicate'"),
                         ("%sandbox ttl -1", "ttl_minutes must be > 0"),
                         ("%sandbox provider nope", "unknown provider 'nope'"),
                         ("%time 1", "%time needs IPython in the sandbox")]:
        reply, out = kernel.execute(bad)
        assert reply["content"]["status"] == "error", bad
        assert message in reply["content"]["evalue"], reply["content"]["evalue"]
        assert [m["msg_type"] for m in out] == ["error"]
        assert len(out[0]["content"]["traceback"]) == 1  # one line, no host traceback


def test_pause_resume_and_stop_lines(kernel: Kernel) -> None:
    kernel.execute("n = 1")
    first = kernel.sandbox_id()
    assert "Paused sandbox" in texts(kernel.execute("%sandbox pause")[1])
    reply, out = kernel.execute("n + 1")  # the next cell resumes it
    assert f"resumed paused sandbox {first}" in texts(out, "stderr")
    assert out[-1]["content"]["data"]["text/plain"] == "2"
    assert "Stopped sandbox" in texts(kernel.execute("%sandbox stop")[1])
    reply, _ = kernel.execute("n")
    assert reply["content"]["ename"] == "NameError"  # a new sandbox, silently
    assert kernel.sandbox_id() != first


def test_a_sandbox_paused_elsewhere_between_cells_is_resumed_and_the_cell_runs_once(
        kernel: Kernel) -> None:
    """The cell after a cell that ran skips the kernel's own record check (its run checks):
    when the run finds the sandbox paused, the cell starts over through the resume."""
    kernel.execute("n = 1")
    sandbox_id = kernel.sandbox_id()
    kernel.execute("n += 1")
    manager = SandboxManager()
    try:
        manager.pause(sandbox_id)
        reply, out = kernel.execute("n += 1\nn")
        assert f"resumed paused sandbox {sandbox_id}" in texts(out, "stderr")
        assert reply["content"]["status"] == "ok"
        assert out[-1]["content"]["data"]["text/plain"] == "3"  # ran once, not twice
        assert manager.get(sandbox_id).status.value == "active"
    finally:
        manager.close()


def test_completion_inspection_and_is_complete(kernel: Kernel) -> None:
    before = kernel.shell("complete", "pri")  # no sandbox yet: builtins
    assert before["matches"] == ["print"] and before["status"] == "ok"
    kernel.execute("my_long_variable = 12")
    found = kernel.shell("complete", "x = my_long_v")
    assert found["matches"] == ["my_long_variable"]
    assert (found["cursor_start"], found["cursor_end"]) == (4, 13)
    assert "my_long_variable.real" in kernel.shell("complete", "my_long_variable.re")["matches"]
    info = kernel.shell("inspect", "my_long_variable", 3)
    assert info["found"] and "Type:      int" in info["data"]["text/plain"]
    reply, _ = kernel.execute("my_long_variable?")  # IPython's help syntax pages the same
    [page] = reply["content"]["payload"]
    assert page["source"] == "page" and "Value:     12" in page["data"]["text/plain"]
    checks = {"for i in range(3):": "incomplete", "x = 1": "complete", "x = )": "invalid",
              "%%bash\necho hi\n\n": "complete"}
    for code, status in checks.items():
        assert kernel.shell("is_complete", code)["status"] == status, code
    assert kernel.shell("is_complete", "if x:")["indent"] == "    "


def test_input_goes_through_the_stdin_channel(kernel: Kernel) -> None:
    prompts = []

    def answer(msg: dict) -> None:
        prompts.append(msg["content"])
        kernel.kc.input("secret" if msg["content"]["password"] else "Ada")

    code = "name = input('Name? ')\nimport getpass\npw = getpass.getpass()\nprint(name, len(pw))"
    reply, out = kernel.execute(code, allow_stdin=True, stdin_hook=answer)
    assert reply["content"]["status"] == "ok"
    assert prompts == [{"prompt": "Name? ", "password": False},
                       {"prompt": "Password: ", "password": True}]
    assert texts(out) == "Ada 6\n"
    reply, _ = kernel.execute("input()", allow_stdin=False)
    assert reply["content"]["ename"] == "EOFError"


def test_history_is_kept_in_memory(kernel: Kernel) -> None:
    first = kernel.execute("1 + 1")[0]["content"]["execution_count"]
    kernel.execute("print(2 + 2)")
    kernel.kc.history(raw=True, output=True, hist_access_type="tail", n=2)
    reply = kernel.kc.get_shell_msg(timeout=30)["content"]
    assert reply["status"] == "ok"
    assert reply["history"] == [[1, first, ["1 + 1", "2"]], [1, first + 1, ["print(2 + 2)", None]]]


# ------------------------------------------------------------------ lifecycle


def test_shutdown_leaves_no_sandbox_behind(kernel: Kernel) -> None:
    kernel.execute("import time")
    sandbox_id = kernel.sandbox_id()
    manager = SandboxManager()
    handle = manager.status(sandbox_id).handle
    assert local._namespace_pids(handle)
    kernel.shutdown()
    record = manager.status(sandbox_id)
    assert record.status.value == "stopped"
    assert not manager.provider("local").alive(handle) and not local._namespace_pids(handle)
    manager.close()


def test_keep_and_attach(start_kernel) -> None:
    kernel = start_kernel()
    kernel.execute("%sandbox keep on\nshared = 'from the kernel'")
    sandbox_id = kernel.sandbox_id()
    kernel.shutdown()
    manager = SandboxManager()
    assert manager.status(sandbox_id).status.value == "active"
    other = start_kernel(NEXUS_KERNEL_SANDBOX=sandbox_id)  # attaches: same session, same state
    _, out = other.execute("shared")
    assert out[-1]["content"]["data"]["text/plain"] == "'from the kernel'"
    assert "on kernel shutdown: kept" in texts(other.execute("%sandbox status")[1])
    other.shutdown()
    assert manager.status(sandbox_id).status.value == "active"  # attached: kept
    manager.stop(sandbox_id)
    manager.close()


@pytest.mark.slow
def test_ttl_is_kept_while_busy_warned_when_idle_and_recreated(start_kernel) -> None:
    kernel = start_kernel(NEXUS_TTL_MINUTES="0.1", NEXUS_REAP_INTERVAL="1")
    reply, _ = kernel.execute("import time\ntime.sleep(9)\nlasted = True")  # 9 s > 6 s TTL
    assert reply["content"]["status"] == "ok"
    sandbox_id = kernel.sandbox_id()
    warnings: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any("expired" in w for w in warnings):
        try:
            msg = kernel.kc.get_iopub_msg(timeout=1)
        except Exception:
            continue
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
            warnings.append(msg["content"]["text"])
    assert any(f"sandbox {sandbox_id} expires in" in w for w in warnings), warnings
    assert any(f"sandbox {sandbox_id} expired" in w for w in warnings), warnings
    reply, out = kernel.execute("lasted")
    assert "variables from earlier cells are gone" in texts(out, "stderr")
    assert reply["content"]["ename"] == "NameError"
