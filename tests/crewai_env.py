"""CrewAI's own environment for the tests: CrewAI pins mcp<2 where nexus' [mcp] extra needs
2.x, so the CrewAI tool is tested with a python of its own, holding CrewAI and nexus'
dependencies (nexus itself comes from the tree, by PYTHONPATH). Built once in the tests'
cache (~1.5 min, ~1 GB) and rebuilt when the pins in pyproject.toml change.

    python -m tests.crewai_env      # build it now (scripts/test.sh does, beside the image build)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def requirements() -> list[str]:
    """nexus' dependencies and the [crewai] extra, as pyproject.toml declares them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["crewai"]]


def ensure(cache: Path) -> Path:
    """The environment's python under ``cache``, built (or rebuilt) when it is not current."""
    venv = cache / "crewai-venv"
    python, marker = venv / "bin" / "python", venv / "nexus-requirements.json"
    wanted = requirements()
    try:
        if json.loads(marker.read_text()) == wanted and python.exists():
            return python
    except (OSError, ValueError):
        pass
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", *wanted],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        raise RuntimeError(f"pip could not build CrewAI's environment: {pip.stderr[-3000:]}")
    marker.write_text(json.dumps(wanted))
    return python


if __name__ == "__main__":
    from tests.conftest import TEMPLATE_CACHE

    print(ensure(TEMPLATE_CACHE))
