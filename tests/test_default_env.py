"""The default environment: local sandboxes created with no template get the "datascience"
template (IPython and the PyData stack), built once; "minimal" is the lean sandbox; a missing
default fails at create in one line; a ModuleNotFoundError carries a hint (issue 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nexus_kernel import templates
from nexus_kernel.agent.hints import missing_module_hint
from nexus_kernel.errors import InvalidArgumentError

from .conftest import needs_bwrap, nexus

STACK = "import pandas, numpy, matplotlib, seaborn, scipy, sklearn, IPython, matplotlib_inline"

#: The seed's Example 1 analysis code, as the seed writes it (its CSV inlined).
EXAMPLE_1 = '''
import pandas as pd
import io

# Load data
data = {data!r}
df = pd.read_csv(io.StringIO(data))

# Analyze
print("Rows:", len(df))
print("Columns:", list(df.columns))
print("\\nSummary:")
print(df.describe())
'''


def test_recipe_is_the_pydata_stack_and_lean_names_are_reserved(nexus_home):
    assert templates.RECIPES["datascience"] == [
        "ipython", "numpy", "pandas", "matplotlib", "matplotlib-inline", "seaborn", "scipy",
        "scikit-learn"]
    for lean in ("minimal", "none"):
        with pytest.raises(InvalidArgumentError, match="reserved for the lean sandbox"):
            templates.template_dir(templates.Settings.load(), lean)


def test_built_template_records_versions_and_a_rebuild_is_skipped(_datascience_build: Path):
    meta = json.loads((_datascience_build / "template.json").read_text())
    for dist in ("ipython", "numpy", "pandas", "matplotlib", "seaborn", "scipy", "scikit-learn"):
        assert meta["versions"][dist][0].isdigit(), dist
    settings = templates.Settings.load(home=_datascience_build.parent.parent)
    again = templates.create_template(settings, "datascience", [], quiet=True)
    assert again["cached"] is True and again["created_at"] == meta["created_at"]


@needs_bwrap
def test_no_template_means_the_datascience_environment(datascience, nx):
    sb = nx.sandbox_create("default-env")["sandbox_id"]
    out = nx.sandbox_run(sb, "python", STACK + "; print(pandas.__file__)")
    assert out["exit_code"] == 0, out["stderr"]
    assert out["stdout"].startswith("/opt/template/lib/pandas/")
    nx.write("/data/sales.csv", "region,amount\nnorth,10\nsouth,32\nnorth,5\n")
    csv = nx.read("/data/sales.csv").decode()
    example = nx.sandbox_run(sb, "python", EXAMPLE_1.format(data=csv))
    assert example["exit_code"] == 0, example["stderr"]
    assert "Rows: 3" in example["stdout"] and "Columns: ['region', 'amount']" in example["stdout"]
    assert "mean" in example["stdout"]
    # in a persistent session too (what the kernel and %%sandbox run use)
    session = nx.sandbox_run(sb, "python", STACK + "\nimport seaborn as sns; sns.__version__",
                             session="s")
    assert session["exit_code"] == 0, session["stderr"]


@needs_bwrap
def test_the_default_environment_has_ipython_semantics(datascience, nx):
    """The first lines of countless notebooks, unchanged, in a sandbox created with no template."""
    sb = nx.sandbox_create("notebook-lines")["sandbox_id"]
    first = nx.sandbox_run(sb, "python", "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
                           "import seaborn as sns\nplt.plot([1, 2, 3]);", session="nb")
    assert first["exit_code"] == 0, first["stderr"]
    images = [d for d in first["display"] if "image/png" in d.get("data", d)]
    assert len(images) == 1, first["display"]
    timed = nx.sandbox_run(sb, "python", "%timeit -n 3 -r 1 sum(range(10))\nfiles = !ls /\n"
                           "print('etc' in files)", session="nb")
    assert timed["exit_code"] == 0, timed["stderr"]
    assert "per loop" in timed["stdout"] and timed["stdout"].rstrip().endswith("True")


@needs_bwrap
def test_minimal_is_lean_and_a_missing_default_is_one_line(nexus_home, nx, monkeypatch):
    lean = nx.sandbox_create("lean", template_id="minimal")["sandbox_id"]
    out = nx.sandbox_run(lean, "python", "import pandas")
    assert out["exit_code"] != 0 and "No module named 'pandas'" in out["stderr"]

    monkeypatch.delenv("NEXUS_DEFAULT_TEMPLATE")  # the default, not built in this NEXUS_HOME
    cli = nexus("sandbox", "create", "x")
    assert cli.returncode != 0
    [line] = cli.stderr.strip().splitlines()
    assert "nexus template create datascience" in line and "--template minimal" in line
    assert "Traceback" not in cli.stderr
    assert [sb["name"] for sb in nx.sandbox_list()["sandboxes"] if sb["status"] != "stopped"] \
        == ["lean"]  # nothing left behind
    ok = nexus("sandbox", "create", "y", "--template", "minimal", "--json")
    assert ok.returncode == 0, ok.stderr
    nexus("sandbox", "stop", json.loads(ok.stdout)["sandbox_id"])


@needs_bwrap
def test_module_not_found_carries_one_hint_line(nexus_home, nx):
    sb = nx.sandbox_create("hint", template_id="minimal")["sandbox_id"]
    stateless = nx.sandbox_run(sb, "python", "import sklearn")
    [hint] = [line for line in stateless["stderr"].splitlines() if line.startswith("hint:")]
    assert "--pip scikit-learn" in hint and "%pip install scikit-learn" in hint
    session = nx.sandbox_run(sb, "python", "import seaborn", session="s")
    assert session["stderr"].count("hint:") == 1
    fine = nx.sandbox_run(sb, "python", "raise ValueError('No module named x')")
    assert "hint:" not in fine["stderr"]


def test_hint_text():
    assert missing_module_hint("ValueError: nope") is None
    hint = missing_module_hint("ModuleNotFoundError: No module named 'cv2'")
    assert hint is not None and "--pip opencv-python" in hint and "\n" not in hint
    assert "'yaml'" in missing_module_hint("ModuleNotFoundError: No module named 'yaml.x'")


def test_kernelspec_template_variant(tmp_path: Path):
    out = nexus("kernel", "install", "--prefix", str(tmp_path), "--template", "minimal",
                "--network", "--json")
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    assert installed["name"] == "nexus-sandbox-minimal-network"
    spec = json.loads((Path(installed["path"]) / "kernel.json").read_text())
    assert spec["env"] == {"NEXUS_TEMPLATE": "minimal", "NEXUS_NETWORK": "1"}
    assert spec["display_name"] == "Nexus Sandbox (minimal) (network)"
    out = nexus("kernel", "install", "--prefix", str(tmp_path), "--provider", "docker",
                "--template", "python:3.12-slim", "--json")
    assert json.loads(out.stdout)["name"] == "nexus-sandbox-docker-python-3.12-slim"
    bad = nexus("kernel", "install", "--prefix", str(tmp_path), "--template", "a b")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_docker_image_has_the_stack(nexus_home):
    """The image of scripts/build-image.sh (what test.sh builds) has the default environment."""
    from nexus_kernel import NexusFS
    from nexus_kernel.config import Settings

    from .conftest import docker_not_ready, docker_problem

    problem = docker_problem(Settings.load())
    if problem:
        docker_not_ready(problem)
    nx = NexusFS(sandbox_provider="docker", is_admin=True)
    sb = nx.sandbox_create("docker-default")["sandbox_id"]
    try:
        out = nx.sandbox_run(sb, "python", STACK + "; print(pandas.__version__)")
        assert out["exit_code"] == 0, out["stderr"]
    finally:
        nx.sandbox_stop(sb)
        nx.close()


@needs_bwrap
def test_kernelspec_variant_keeps_its_template_across_restarts(datascience, tmp_path, monkeypatch):
    from jupyter_client.manager import KernelManager

    out = nexus("kernel", "install", "--prefix", str(tmp_path), "--template", "minimal", "--json")
    assert out.returncode == 0, out.stderr
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    code = "try:\n    import pandas; print('has pandas')\nexcept ImportError:\n    print('lean')"

    def run(kc) -> str:
        texts = []
        kc.execute_interactive(code, timeout=60, output_hook=lambda m: texts.append(
            m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
        return "".join(texts).strip().splitlines()[-1]

    for name, expected in (("nexus-sandbox", "has pandas"), ("nexus-sandbox-minimal", "lean")):
        if name == "nexus-sandbox":  # the plain kernelspec, beside the variant
            assert nexus("kernel", "install", "--prefix", str(tmp_path)).returncode == 0
        km = KernelManager(kernel_name=name)
        km.start_kernel()
        try:
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            assert run(kc) == expected
            km.restart_kernel(now=False)
            kc.wait_for_ready(timeout=60)
            assert run(kc) == expected, f"{name} after a restart"
            kc.stop_channels()
        finally:
            km.shutdown_kernel(now=False)


@needs_bwrap
def test_kernel_error_carries_the_hint(nexus_home, tmp_path, monkeypatch):
    """The Nexus Sandbox kernel's error message (lean sandbox here) ends with the hint."""
    from jupyter_client.manager import KernelManager

    assert nexus("kernel", "install", "--prefix", str(tmp_path)).returncode == 0
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    km = KernelManager(kernel_name="nexus-sandbox")
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        errors = []
        kc.execute_interactive("import sklearn", timeout=60, output_hook=lambda m: errors.append(
            m["content"]) if m["msg_type"] == "error" else None)
        [error] = errors
        assert error["ename"] == "ModuleNotFoundError"
        assert error["traceback"][-1].startswith("hint: 'sklearn' is not in this sandbox")
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=False)


def test_pip_for_a_sandbox_python_without_pip(tmp_path):
    """Debian's python3 has no pip (no python3-pip): nexus' own pip installs for it, for its
    version when the two pythons differ (wheels only, as every template build)."""
    import sys

    fake = tmp_path / "python3"
    fake.write_text('#!/bin/sh\n[ "$1" = -m ] && exit 1\necho 3.9\n')
    fake.chmod(0o755)
    assert templates._pip_install(str(fake)) == [
        sys.executable, "-m", "pip", "install", "--python-version", "3.9"]
    assert templates._pip_install(sys.executable)[:4] == [sys.executable, "-m", "pip", "install"]
