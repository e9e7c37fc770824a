"""Every notebook in notebooks/ runs headless with nbclient on real kernels and real local
sandboxes, and produces the outputs it promises. No sandbox is left active afterwards."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import ROOT, inert_html, needs_bwrap, nexus

pytestmark = [needs_bwrap, pytest.mark.slow]

NOTEBOOKS = ROOT / "notebooks"
KERNEL_NAME = "nexus-sandbox"


def execute(name: str, kernel_name: str, cwd: Path) -> nbformat.NotebookNode:
    """Run a notebook top to bottom (cells tagged raises-exception may fail)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert nb.metadata.kernelspec.name == kernel_name
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(cwd)}},
    )
    client.execute()
    return nb


def cell(nb: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.get("id") == cell_id)


def stream(nb: nbformat.NotebookNode, cell_id: str, name: str = "stdout") -> str:
    """All text the cell wrote to one stream."""
    return "".join(
        o.text for o in cell(nb, cell_id).outputs if o.output_type == "stream" and o.name == name
    )


def bundles(nb: nbformat.NotebookNode, cell_id: str) -> list[dict]:
    """The MIME bundles of the cell's display_data and execute_result outputs."""
    return [
        o.data
        for o in cell(nb, cell_id).outputs
        if o.output_type in ("display_data", "execute_result")
    ]


def errors(nb: nbformat.NotebookNode, cell_id: str) -> list:
    return [o for o in cell(nb, cell_id).outputs if o.output_type == "error"]


def assert_no_sandbox_active(wait: float = 0.0) -> None:
    """Every sandbox of this NEXUS_HOME is stopped (polling up to ``wait`` seconds)."""
    from nexus_kernel import SandboxManager

    manager = SandboxManager()
    deadline = time.monotonic() + wait
    try:
        while True:
            live = [r.sandbox_id for r in manager.list() if r.status.value != "stopped"]
            if not live or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        assert live == [], f"sandboxes left active: {live}"
        assert manager.list(), "the notebook created no sandbox"
    finally:
        manager.close()


def test_quickstart_magics(nexus_home, tmp_path):
    nb = execute("01-quickstart-magics.ipynb", "python3", tmp_path)
    created = bundles(nb, "create")[0]
    sandbox_id = re.search(r"sb_[0-9a-f]+", created["text/plain"]).group(0)
    assert "quickstart" in created["text/html"] and "active" in created["text/html"]

    assert stream(nb, "python") == "2 + 2 = 4\npython 3\n"
    assert stream(nb, "state") == "counter is 42\n"
    assert bundles(nb, "state") == [{"text/plain": "84"}]
    rich = bundles(nb, "rich")[0]
    assert inert_html(rich["text/html"]) == "<b>ran in a sandbox</b>"
    assert stream(nb, "bash") == "bash says 42\n"
    assert stream(nb, "javascript") == "node read: bash says 42\n"

    traceback = stream(nb, "error", "stderr")
    assert traceback.startswith("Traceback") and "ZeroDivisionError: division by zero" in traceback
    assert errors(nb, "error") == []  # shown, but the cell did not fail

    table = bundles(nb, "list")[0]
    assert table["text/html"].startswith('<table class="nexus-sandboxes">')
    assert f"<td>{sandbox_id}</td>" in table["text/html"]
    assert sandbox_id in table["text/plain"]
    status = bundles(nb, "status")[0]["text/plain"]
    assert status.startswith(f"sandbox {sandbox_id} (current)") and "active" in status
    assert stream(nb, "bad", "stderr") == (
        "UsageError: no sandbox 'sb_does_not_exist' for this user; "
        "run '%sandbox list' to see yours\n"
    )
    stopped = bundles(nb, "stop")[0]["text/plain"]
    assert re.search(r"status\s+stopped", stopped)
    assert_no_sandbox_active()


def test_data_analysis(nexus_home, tmp_path):
    nb = execute("03-data-analysis.ipynb", "python3", tmp_path)
    assert stream(nb, "write") == "['sales.csv']\n"
    engine, *report = stream(nb, "run").splitlines()
    assert engine in ("engine: csv", "engine: pandas")
    assert report == [
        "rows: 6",
        "total: 545",
        "  north    270",
        "  south    175",
        "  east     100",
        "exit code: 0",
    ]
    assert stream(nb, "after") == (
        '{"rows": 6, "totals": {"north": 270, "south": 175, "east": 100}}\nsandbox: stopped\n'
    )
    assert (nexus_home / "files" / "workspace" / "results" / "summary.json").is_file()
    assert_no_sandbox_active()


@pytest.fixture
def nexus_kernelspec(tmp_path, monkeypatch) -> Path:
    """The "Nexus Sandbox" kernelspec installed into a private prefix seen by Jupyter."""
    if not (ROOT / "nexus_kernel" / "kernel" / "__init__.py").is_file():
        pytest.skip("the proxy kernel (nexus_kernel/kernel/) is not built yet")
    prefix = tmp_path / "prefix"
    done = nexus("kernel", "install", "--prefix", str(prefix))
    assert done.returncode == 0, done.stderr
    data = prefix / "share" / "jupyter"
    assert (data / "kernels" / KERNEL_NAME / "kernel.json").is_file()
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    return data


def test_proxy_kernel(nexus_home, nexus_kernelspec, tmp_path):
    nb = execute("02-proxy-kernel.ipynb", KERNEL_NAME, tmp_path)
    assert stream(nb, "settings") == "TTL is now 20 min\n"
    assert stream(nb, "hello") == "home: /home/user\n"
    assert stream(nb, "state") == "42\n"
    assert bundles(nb, "state-result") == [{"text/plain": "'x is 21'"}]

    found = re.fullmatch(r"matplotlib: (True|False) \| pandas: (True|False)\n",
                         stream(nb, "probe"))
    assert found, stream(nb, "probe")
    has_matplotlib, has_pandas = (value == "True" for value in found.groups())
    plot = bundles(nb, "plot")
    assert len(plot) == 1
    if has_matplotlib:
        assert plot[0]["image/png"]  # base64 PNG of the figure
    else:
        assert plot[0]["image/svg+xml"].startswith("<svg")
        assert plot[0]["image/svg+xml"].count("<rect") == 4
    table = bundles(nb, "table")[0]
    assert "<table" in table["text/html"] and "north" in table["text/html"]
    if not has_pandas:
        assert table["text/plain"] == "HtmlTable(3 rows)"

    error = errors(nb, "error")
    assert [(e.ename, e.evalue) for e in error] == [("ZeroDivisionError", "division by zero")]
    assert stream(nb, "bash") == "bash: 42\n/home/user\n"
    assert stream(nb, "javascript") == "node: 2,4,6\n"
    assert stream(nb, "after-languages") == "x is still 21\n"
    status = stream(nb, "status")
    assert re.search(r"^status:\s+active$", status, re.M), status
    assert "(TTL 20 min, extended by every cell)" in status
    assert "on kernel shutdown: stopped" in status
    assert_no_sandbox_active(wait=10)


def test_pasted_magic_lines_and_lost_state_in_a_real_notebook(nexus_home: Path, tmp_path: Path):
    """The magics as a notebook runs them (nbclient, ipykernel): trailing comments on
    %sandbox lines, and a timeout whose code ignores the interrupt says the state is gone."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    sources = {
        "create": "%load_ext nexus_kernel\n%sandbox create pasted --ttl 30  # it's the current one",
        "state": "%%sandbox run --timeout 20  # a comment with 'quotes'\nkept = 41\nprint('ok')",
        "timeout": "%%sandbox run --timeout 1\nimport signal, time\n"
                   "signal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
        "after": "%%sandbox run\nprint('kept' in globals())",
        "stop": "%sandbox stop",
    }
    for cell_id, source in sources.items():
        new = nbformat.v4.new_code_cell(source)
        new["id"] = cell_id
        if cell_id == "timeout":
            new.metadata["tags"] = ["raises-exception"]
        nb.cells.append(new)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert "created sandbox" in bundles(nb, "create")[0]["text/plain"]
    assert stream(nb, "state") == "ok\n"
    said = stream(nb, "timeout", "stderr")  # a UsageError: one line, no host traceback
    assert "exceeded 1 second timeout" in said and "its variables are gone" in said
    assert stream(nb, "after") == "False\n"


def test_undo_notebook(datascience, nexus_kernelspec, tmp_path):
    nb = execute("04-undo.ipynb", KERNEL_NAME, tmp_path)
    assert stream(nb, "build") == "(3, 2) 545\n"
    assert stream(nb, "destroy") == "0 False\n"
    assert stream(nb, "undo") == ("Undone: variables and files are as they were before In [2] "
                                  "ran (1 more undo step(s) available)\n")
    assert stream(nb, "intact") == "(3, 2) 545 True\n"
    assert stream(nb, "save") == "Checkpoint 'clean' saved (the state after In [4])\n"
    assert stream(nb, "change") == "0\n"
    assert stream(nb, "restore") == "Restored checkpoint 'clean' (the state after In [4])\n"
    assert stream(nb, "check") == "545\n"
    assert "Automatic checkpoints: keeping the last 5 cells" in stream(nb, "list")
    assert_no_sandbox_active(wait=10)


def test_fork_notebook(datascience, nexus_home, tmp_path):
    """Issue 16: a fork has the parent's variables and files, then each goes its own way."""
    nb = execute("05-fork.ipynb", "python3", tmp_path)
    assert stream(nb, "build") == "(3, 2) 545\n"
    forked = stream(nb, "fork")
    assert forked.startswith("Forked sandbox sb_") and "%%sandbox run sb_" in forked, forked
    assert stream(nb, "same") == "(3, 2) 545 4\n"  # the frame and the file (header + 3 rows)
    assert stream(nb, "diverge") == "1090\n"
    assert stream(nb, "parent") == "545 545\n"  # the parent is unchanged
    assert stream(nb, "child") == "1090 1090\n"
    assert_no_sandbox_active(wait=10)
