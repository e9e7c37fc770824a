"""IPython semantics in python sessions (issue 10, item 2), on real local sandboxes: a
template with IPython + matplotlib, built once and cached, then magics, ``!cmd``, display
objects, inline matplotlib, tracebacks, interrupt, input() and completion; without IPython,
a magic line gives one line saying how to get it."""

from __future__ import annotations

import base64
import re
import threading
import time
from pathlib import Path

import pytest

from nexus_kernel import LocalBackend, NexusFS

from .conftest import TEMPLATE_CACHE, needs_bwrap
from .test_kernel import jupyter_path, kernel_prefix, start_kernel  # noqa: F401 (fixtures)

pytestmark = needs_bwrap

IPYTHON_TEMPLATE = "ipython-mpl"
IPYTHON_PACKAGES = ["ipython", "matplotlib", "matplotlib-inline"]


@pytest.fixture(scope="module")
def _ipython_build() -> Path:
    """A local template with IPython and matplotlib, built once per cache."""
    from nexus_kernel import templates
    from nexus_kernel.config import Settings
    from nexus_kernel.errors import SandboxError

    settings = Settings.load(home=TEMPLATE_CACHE)
    target = templates.template_dir(settings, IPYTHON_TEMPLATE)
    if not (target / "template.json").is_file():
        try:
            templates.create_template(settings, IPYTHON_TEMPLATE, IPYTHON_PACKAGES, quiet=True)
        except SandboxError as exc:
            pytest.skip(f"cannot build the IPython template: {exc}")
    return target


@pytest.fixture
def ipy(nexus_home, _ipython_build, monkeypatch):
    """(api, sandbox id) of a sandbox whose python has IPython."""
    monkeypatch.setenv("NEXUS_TRUSTED_OUTPUT", "1")
    link = nexus_home / "templates" / IPYTHON_TEMPLATE
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(_ipython_build, target_is_directory=True)
    api = NexusFS(backend=LocalBackend(nexus_home / "files"))
    sandbox = api.sandbox_create("ipy", template_id=IPYTHON_TEMPLATE)["sandbox_id"]
    yield api, sandbox
    api.sandbox_stop(sandbox)
    api.close()


def run(ipy, code, **kw):
    api, sandbox = ipy
    events = []
    result = api.manager.run(sandbox, "python", code, session="s", on_event=events.append,
                             timeout=120, **kw)
    return result, events


def kinds(events):
    return [e.kind for e in events if e.kind in ("display", "result", "error", "clear_output")]


def test_line_and_cell_magics_and_shell_commands(ipy):
    result, _ = run(ipy, "%timeit -n1 -r1 sum(range(10))\n%time x = 2\nimport os\n%cd /tmp\n"
                         "%env NEXUS_T=yes\nprint(os.getcwd(), os.environ['NEXUS_T'])\n%who int")
    assert result.exit_code == 0, result.stderr
    assert "per loop" in result.stdout and "Wall time" in result.stdout
    assert "/tmp yes" in result.stdout and "x" in result.stdout.split("\n")[-2]
    result, _ = run(ipy, "%%writefile /tmp/m.py\nVALUE = 7\nprint('ran', VALUE)\n")
    assert result.exit_code == 0 and "Writing /tmp/m.py" in result.stdout
    result, _ = run(ipy, "%run /tmp/m.py\n!echo from-bang\nlines = !printf 'a\\nb\\n'\n"
                         "print(lines.l, VALUE)")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "ran 7\nfrom-bang\n['a', 'b'] 7\n"
    result, _ = run(ipy, "%%capture cap\nprint('hidden')")
    assert result.stdout == ""
    result, _ = run(ipy, "%%time\ncap.stdout")
    assert result.result["text/plain"] == "'hidden\\n'" and "Wall time" in result.stdout
    result, _ = run(ipy, "%load_ext autoreload\n%autoreload 2\nprint('ok')")
    assert result.exit_code == 0 and result.stdout == "ok\n", result.stderr


def test_history_names_and_pager(ipy):
    run(ipy, "10")
    run(ipy, "20")
    result, _ = run(ipy, "(_, __, Out[1], In[2])")
    assert result.result["text/plain"] == "(20, 10, 10, '20')"
    result, events = run(ipy, "len?")
    assert result.exit_code == 0
    [page] = [e.data["data"] for e in events if e.kind == "display"]
    assert "Return the number of items" in page["text/plain"]


def test_display_objects_reach_the_client_as_events(ipy):
    code = ("from IPython.display import display, Markdown, HTML, JSON, Latex, Image, "
            "clear_output, update_display\n"
            "display(Markdown('**m**'), HTML('<b>h</b>'), JSON({'a': 1}), Latex('$x$'))\n"
            "png = b'\\x89PNG\\r\\n\\x1a\\n' + bytes(20)\n"
            "display(Image(data=png, format='png'))\n"
            "display('first', display_id='d1')\nupdate_display('second', display_id='d1')\n"
            "clear_output(wait=True)\nHTML('<i>last</i>')")
    result, events = run(ipy, code)
    assert result.exit_code == 0, result.stderr
    shown = [e.data for e in events if e.kind in ("display", "result", "clear_output")]
    mimes = [sorted(d.get("data", {})) for d in shown]
    assert mimes[:4] == [["text/markdown", "text/plain"], ["text/html", "text/plain"],
                         ["application/json", "text/plain"], ["text/latex", "text/plain"]]
    assert base64.b64decode(shown[4]["data"]["image/png"]).startswith(b"\x89PNG")
    assert shown[5]["transient"] == {"display_id": "d1"} and not shown[5].get("update")
    assert shown[6]["transient"] == {"display_id": "d1"} and shown[6]["update"] is True
    assert shown[7] == {"wait": True}
    assert kinds(events)[-1] == "result" and shown[8]["data"]["text/html"] == "<i>last</i>"


def test_inline_matplotlib_like_ipykernel(ipy):
    result, events = run(ipy, "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
                              "plt.plot([1, 2])")
    assert result.exit_code == 0, result.stderr
    got = [(e.kind, sorted(e.data["data"])) for e in events if e.kind in ("display", "result")]
    # as ipykernel: the value as text, the figure once as an image
    assert got == [("result", ["text/plain"]), ("display", ["image/png", "text/plain"])]
    result, events = run(ipy, "import matplotlib; matplotlib.get_backend()")
    assert result.result["text/plain"] in ("'inline'", "'module://matplotlib_inline.backend_inline'")
    assert [e.kind for e in events if e.kind == "display"] == []  # no figure left over


def test_traceback_is_ipythons_with_the_cell_count_and_no_agent_frame(ipy):
    run(ipy, "1")
    result, _ = run(ipy, "def f():\n    return 1/0\nf()", stderr_traceback=False)
    error = result.error
    assert error["ename"] == "ZeroDivisionError" and error["evalue"] == "division by zero"
    coloured = "\n".join(error["traceback"])
    assert "\x1b[" in coloured  # as ipykernel's
    text = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert "In[2], line 3" in text and "sandbox_agent" not in text
    assert result.stderr == "" and result.exit_code == 1
    plain, _ = run(ipy, "undefined_name")
    assert "NameError" in plain.stderr and "\x1b[" not in plain.stderr  # API stderr: plain


def test_interrupt_keeps_state_and_input_and_completion_work(ipy):
    api, sandbox = ipy
    run(ipy, "kept = 41")
    timer = threading.Timer(1.5, lambda: api.sandbox_interrupt(sandbox, "s"))
    timer.start()
    started = time.monotonic()
    result, _ = run(ipy, "import time\nfor _ in range(100):\n    time.sleep(0.1)",
                    stderr_traceback=False)
    timer.join()
    assert time.monotonic() - started < 8
    assert result.error["ename"] == "KeyboardInterrupt"
    assert "sandbox_agent" not in "\n".join(result.error["traceback"])
    assert run(ipy, "kept + 1")[0].result["text/plain"] == "42"

    def on_event(event):
        if event.kind == "input_request":
            api.manager.input_reply(sandbox, "s", "typed")

    result = api.manager.run(sandbox, "python", "v = input('? ')\nprint(v)", session="s",
                             on_event=on_event, stdin=True)
    assert result.stdout == "typed\n", result.stderr
    found = api.manager.complete(sandbox, "s", "x = kep")
    assert "kept" in found["matches"] and found["cursor_start"] == 4
    assert "%timeit" in api.manager.complete(sandbox, "s", "%timei")["matches"]
    info = api.manager.inspect(sandbox, "s", "kept", 2)
    assert info["found"] is True and "int" in info["data"]["text/plain"]


def test_without_ipython_a_magic_says_how_to_get_it(nx):
    sandbox = nx.sandbox_create("plain")["sandbox_id"]
    for code, what in (("%timeit 1", "%timeit"), ("x = 1\n!ls", "!cmd"),
                       ("files = !ls", "!cmd"), ("%%time\n1", "%%time")):
        result = nx.manager.run(sandbox, "python", code, session="s", stderr_traceback=True)
        assert result.error["ename"] == "UsageError", code
        assert result.error["evalue"].startswith(f"{what} needs IPython in the sandbox")
        assert "nexus template create NAME --pip ipython" in result.error["evalue"]
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    plain = nx.manager.run(sandbox, "python", "x = (1 +\n", session="s")
    assert plain.error["ename"] == "SyntaxError"  # real syntax errors stay as they were


def test_kernel_forwards_magics_to_the_sandbox_ipython(start_kernel,  # noqa: F811
                                                        nexus_home, _ipython_build):
    link = nexus_home / "templates" / IPYTHON_TEMPLATE
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(_ipython_build, target_is_directory=True)
    kernel = start_kernel(NEXUS_TEMPLATE=IPYTHON_TEMPLATE, NEXUS_TRUSTED_OUTPUT="1")
    reply, out = kernel.execute("%sandbox ttl 30\n%timeit -n1 -r1 sum(range(5))\n!echo bang",
                                timeout=120)
    assert reply["content"]["status"] == "ok", reply["content"]
    text = "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream")
    assert "per loop" in text and "bang\n" in text
    reply, out = kernel.execute("from IPython.display import Markdown\ndisplay(Markdown('*m*'))")
    assert [(m["msg_type"], sorted(m["content"]["data"])) for m in out] == [
        ("display_data", ["text/markdown", "text/plain"])]
    reply, out = kernel.execute("%%time\nx = 1")
    assert reply["content"]["status"] == "ok" and "Wall time" in str(out)
    reply, out = kernel.execute("def g():\n    raise ValueError('bad')\ng()")
    assert reply["content"]["ename"] == "ValueError"
    [error] = [m for m in out if m["msg_type"] == "error"]
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["content"]["traceback"]))
    assert "line 3" in text and "sandbox_agent" not in text
    found = kernel.shell("complete", "%timei", 6)
    assert "%timeit" in found["matches"]


def test_kernel_numbers_cells_as_it_counts_them_and_gives_bash_options_to_ipython(
        start_kernel, datascience):  # noqa: F811
    """Cells that never reach the python session (kernel lines, %%bash) still count, as in
    ipykernel; %%bash with options is IPython's script magic (the corpus's Script Magics)."""
    kernel = start_kernel()
    kernel.execute("%sandbox ttl 30", timeout=120)  # In[1]: the kernel's own line
    kernel.execute("%%bash\necho plain")  # In[2]: the bash session
    reply, out = kernel.execute("6 * 7")
    assert [m["content"]["execution_count"] for m in out
            if m["msg_type"] == "execute_result"] == [reply["content"]["execution_count"]] == [3]
    _, out = kernel.execute("print(Out[3], _3, repr(In[3]), repr(In[1]))")
    assert "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream") == \
        "42 42 '6 * 7' ''\n"
    reply, out = kernel.execute("1/0")
    [error] = [m for m in out if m["msg_type"] == "error"]
    assert "In[5], line 1" in re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["content"]["traceback"]))
    reply, out = kernel.execute("%%bash --out captured --err problems\necho via-ipython\necho e >&2")
    assert reply["content"]["status"] == "ok" and out == []
    _, out = kernel.execute("print(captured.strip(), problems.strip())")
    assert "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream") == \
        "via-ipython e\n"
    reply, out = kernel.execute("%no_such_magic")  # IPython's UsageError, by name
    assert reply["content"]["ename"] == "UsageError"
    assert [m["content"]["evalue"] for m in out if m["msg_type"] == "error"] == [
        "Line magic function `%no_such_magic` not found."]
    reply, out = kernel.execute("n = 1\n%pinfo len")  # the pager, as ipykernel: a payload
    assert [p["source"] for p in reply["content"]["payload"]] == ["page"] and out == []
    assert "Return the number of items" in reply["content"]["payload"][0]["data"]["text/plain"]
    reply, out = kernel.execute("%matplotlib notebook")  # nbagg: comms, not in a sandbox
    assert reply["content"]["ename"] == "UsageError" and "%matplotlib inline" in str(out)
