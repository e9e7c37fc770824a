"""Local templates: a package set built on the host, mounted read-only into sandboxes."""

from __future__ import annotations

import pytest

from nexus_kernel import templates
from nexus_kernel.config import Settings
from nexus_kernel.errors import InvalidArgumentError

from .conftest import ROOT, needs_bwrap, nexus

pytestmark = needs_bwrap


def test_template_is_built_listed_mounted_and_removed(nexus_home, nx, tiny_package):
    out = nexus("template", "create", "tiny", "--pip", str(tiny_package),
                timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Created template: tiny" in out.stdout
    rows = nexus("template", "list").stdout.splitlines()
    assert any(row.split()[:2] == ["tiny", "local"] and "tinypkg==1.0" in row for row in rows)

    sb = nx.sandbox_create("with-template", template_id="tiny")["sandbox_id"]
    result = nx.sandbox_run(sb, "python", "import tinypkg; print(tinypkg.ANSWER, tinypkg.__file__)")
    assert result["stdout"] == "42 /opt/template/lib/tinypkg/__init__.py\n"
    denied = nx.sandbox_run(sb, "bash", "touch /opt/template/lib/x 2>&1; echo $?")
    assert denied["stdout"].strip().endswith("1")  # read-only inside
    plain = nx.sandbox_create("without")["sandbox_id"]
    assert "ModuleNotFoundError" in nx.sandbox_run(plain, "python", "import tinypkg")["stderr"]

    assert nexus("template", "remove", "tiny").returncode == 0
    listed = nexus("template", "list").stdout  # the engine's docker templates may show too
    assert not any(row.split()[:2] == ["tiny", "local"] for row in listed.splitlines())


def test_unknown_template_and_bad_names_are_clear(nexus_home, nx):
    with pytest.raises(InvalidArgumentError, match="nexus template create nope"):
        nx.sandbox_create("x", template_id="nope")
    assert nx.sandbox_list()["sandboxes"] == []  # nothing stored
    with pytest.raises(InvalidArgumentError, match="lowercase"):
        templates.template_dir(Settings.load(), "../evil")
    out = nexus("template", "create", "empty-recipe")
    assert out.returncode == 2 and "give packages" in out.stderr


def test_datascience_recipe_is_shipped():
    assert templates.RECIPES["datascience"][:4] == ["ipython", "numpy", "pandas", "matplotlib"]
    assert (ROOT / "nexus_kernel" / "templates.py").exists()
