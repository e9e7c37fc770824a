"""The README's Security section names a test for every guarantee and known limit: those
tests must exist (a renamed test would leave a claim without its evidence)."""

from __future__ import annotations

import re

from ..conftest import ROOT

FOLDERS = {"S": "tests/security", "R": "tests/reliability", "": "tests"}
#: ``S/test_x.py``, ``tests/test_x.py`` (a module) or ``::test_name`` (a test of the last module).
CITATION = re.compile(r"(?:([SR])/|tests/)(test_\w+\.py)|::(test_\w+)")


def test_every_test_the_security_section_names_exists():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Security"):].split("\n## ")[0]
    checked = 0
    for line in section.splitlines():
        module = None
        for folder, name, test in CITATION.findall(line):
            if name:
                module = ROOT / FOLDERS[folder] / name
                assert module.is_file(), f"the README cites a missing module {module}"
            else:
                assert module is not None, line
                assert re.search(rf"^def {test}\(", module.read_text(), re.M), f"{module}::{test}"
                checked += 1
    assert checked > 30
