"""Notebooks this project did not write (tests/corpus/, see LICENSES/README.md) run with
nbclient on a plain ipykernel and on the "Nexus Sandbox" kernel with its default configuration
(the datascience environment), compared cell by cell: a cell that succeeds on ipykernel must
succeed on Nexus and show the same kinds of rich output. Both kernels run at the same time
(one thread each); every notebook gets a fresh kernel, so a fresh sandbox."""

from __future__ import annotations

import threading
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from .conftest import ROOT, needs_bwrap, nexus

pytestmark = [needs_bwrap, pytest.mark.slow, pytest.mark.timeout(600)]

CORPUS = ROOT / "tests" / "corpus"
NOTEBOOKS = sorted(CORPUS.glob("*/*.ipynb"))
#: Output kinds a cell must show on Nexus when it shows them on ipykernel.
RICH = ("image/png", "image/jpeg", "image/svg+xml", "text/html", "text/latex", "text/markdown")
#: The share of cells that succeed on ipykernel that must succeed alike on Nexus.
REQUIRED = 0.95
#: Run first (hidden) in seaborn notebooks: their datasets, made locally (datasets.py).
PREAMBLE = ("exec(compile({source!r}, 'corpus-datasets', 'exec'), "
            "{{'__name__': 'corpus_datasets'}})")
#: Cells not run (notebook, 1-based code cell number) -> why.
SKIPPED = {
    ("Script Magics.ipynb", 14): "loops forever on IPython >= 8: `%%script --bg --out` gives "
                                 "an asyncio Future, whose readline() never returns ''",
}


def load(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code, 1):
        cell.outputs, cell.execution_count = [], None
        if (path.name, number) in SKIPPED:
            cell.source, cell.metadata["corpus_skipped"] = "", True
    if path.parent.name == "seaborn":
        source = (CORPUS / "datasets.py").read_text()
        nb.cells.insert(0, nbformat.v4.new_code_cell(PREAMBLE.format(source=source)))
        nb.cells[0].metadata["corpus_preamble"] = True
    return nb


def run(path: Path, kernel_name: str, cwd: Path) -> list[nbformat.NotebookNode]:
    """The notebook's code cells after a run top to bottom (errors kept, not raised)."""
    nb = load(path)
    cwd.mkdir(parents=True, exist_ok=True)

    def record(cell, cell_index, execute_reply) -> None:  # a UsageError is only in the reply
        cell.metadata["corpus_status"] = execute_reply["content"]["status"]

    client = NotebookClient(nb, kernel_name=kernel_name, timeout=60, allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}}, on_cell_executed=record)
    try:
        client.execute()
    except (CellTimeoutError, DeadKernelError) as exc:  # the remaining cells count as failed
        for cell in nb.cells:
            if cell.cell_type == "code" and cell.execution_count is None:
                cell.outputs = [nbformat.v4.new_output("error", ename=type(exc).__name__,
                                                       evalue=str(exc)[:200], traceback=[])]
    return [c for c in nb.cells if c.cell_type == "code" and not c.metadata.get("corpus_preamble")]


def failure(cell: nbformat.NotebookNode) -> str | None:
    """``ename: evalue`` of the cell's first error, or None when it succeeded."""
    for output in cell.outputs:
        if output.output_type == "error":
            return f"{output.ename}: {output.evalue}"[:160]
    if cell.metadata.get("corpus_status", "ok") != "ok":
        stderr = "".join(o.text for o in cell.outputs if o.get("name") == "stderr")
        return f"status {cell.metadata['corpus_status']}: {stderr.strip()[:120]}"
    return None


def kinds(cell: nbformat.NotebookNode) -> set[str]:
    return {mime for output in cell.outputs if output.output_type in ("display_data",
                                                                        "execute_result")
            for mime in output.data if mime in RICH}


def compare(name: str, reference: list, nexus_cells: list) -> tuple[int, list[str]]:
    """(cells that succeed on ipykernel, how the Nexus kernel differs on them)."""
    assert len(reference) == len(nexus_cells)
    counted, differences = 0, []
    for number, (ref, got) in enumerate(zip(reference, nexus_cells, strict=True), 1):
        if failure(ref) is not None or ref.metadata.get("corpus_skipped"):
            continue
        counted += 1
        first_line = ref.source.strip().split("\n", 1)[0][:60]
        where = f"{name} cell {number} ({first_line!r})"
        if failure(got) is not None:
            differences.append(f"{where}: fails on Nexus with {failure(got)}")
        elif not kinds(ref) <= kinds(got):
            differences.append(f"{where}: shows {sorted(kinds(got))} where ipykernel shows "
                               f"{sorted(kinds(ref))}")
    return counted, differences


@pytest.fixture
def nexus_kernelspec(datascience, tmp_path, monkeypatch) -> str:
    """The "Nexus Sandbox" kernelspec in a private prefix; sandboxes get the default
    (datascience) environment from the test's NEXUS_HOME."""
    prefix = tmp_path / "prefix"
    done = nexus("kernel", "install", "--prefix", str(prefix))
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    return "nexus-sandbox"


def test_corpus_cells_behave_as_on_ipykernel(nexus_kernelspec, tmp_path):
    pytest.importorskip("seaborn", reason="the reference ipykernel needs the datascience stack "
                                          "(pip install nexus-kernel[test])")
    runs: dict[str, list] = {}
    crashed: list[BaseException] = []

    def run_all(kernel_name: str) -> None:
        try:
            runs[kernel_name] = [run(path, kernel_name, tmp_path / kernel_name / path.stem)
                                 for path in NOTEBOOKS]
        except BaseException as exc:  # re-raised in the test's thread
            crashed.append(exc)

    threads = [threading.Thread(target=run_all, args=(name,)) for name in
               ("python3", nexus_kernelspec)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if crashed:
        raise crashed[0]
    counted, differences = 0, []
    for path, reference, got in zip(NOTEBOOKS, runs["python3"], runs[nexus_kernelspec],
                                    strict=True):
        count, diff = compare(f"{path.parent.name}/{path.name}", reference, got)
        counted += count
        differences += diff
    alike = counted - len(differences)
    report = (f"{alike}/{counted} cells that succeed on ipykernel behave alike on Nexus "
              f"({alike / counted:.1%}; {len(NOTEBOOKS)} notebooks)")
    print(report, *differences, sep="\n")
    assert counted > 280, report
    assert alike / counted >= REQUIRED, "\n".join([report, *differences])
