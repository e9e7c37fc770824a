"""Template builds run no package code on the host (issue 17, item 13).

`nexus template create` runs pip on the host (as root under CI), so every package must come
as a wheel: installing a wheel unpacks files, while a source distribution, a directory, a VCS
URL or a pip option smuggled in as a package would run (or enable) the package's own setup
code here. Each case plants a setup.py that writes a marker file on the host. Docker templates
(`--provider docker`) run the same pip on the host and keep the same rule."""

from __future__ import annotations

import tarfile
import textwrap
from pathlib import Path

import pytest

from nexus_kernel.config import Settings

from ..conftest import docker_not_ready, docker_problem, nexus


def _hostile_sdist(where: Path, marker: Path, name: str = "evilpkg") -> Path:
    """An sdist whose setup.py writes ``marker`` when pip builds (or just inspects) it."""
    source = where / f"{name}-1.0"
    source.mkdir(parents=True)
    (source / "setup.py").write_text(textwrap.dedent(f"""\
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("package code ran on the host")
        from setuptools import setup
        setup(name={name!r}, version="1.0", py_modules=[])
        """))
    archive = where / f"{name}-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=source.name)
    return archive


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "RAN-ON-HOST"


@pytest.mark.parametrize("provider", ["local", "docker"])
@pytest.mark.parametrize("form", ["sdist-path", "directory", "direct-url", "pip-option"])
def test_a_package_that_is_not_a_wheel_is_refused_before_pip_runs(nexus_home, tmp_path, marker,
                                                                    form, provider):
    archive = _hostile_sdist(tmp_path / "src", marker)
    spec = {
        "sdist-path": str(archive),
        "directory": str(archive.parent / "evilpkg-1.0"),
        "direct-url": f"evilpkg @ {archive.as_uri()}",
        "pip-option": "--no-binary=:all:",
    }[form]
    out = nexus("template", "create", "evil", f"--pip={spec}", "--provider", provider,
                timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert not marker.exists(), "the package's setup code ran on the host"
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("nexus: ") and "wheels only" in error, out.stderr
    assert not (nexus_home / "templates" / "evil").exists()


@pytest.mark.parametrize("provider", ["local", "docker"])
def test_an_index_offering_only_an_sdist_builds_nothing_on_the_host(nexus_home, tmp_path, marker,
                                                                    provider):
    if provider == "docker" and (problem := docker_problem(Settings.load())):
        docker_not_ready(problem)
    index = tmp_path / "index"
    _hostile_sdist(index, marker)
    out = nexus("template", "create", "evil", "--pip", "evilpkg", "--provider", provider,
                env={"PIP_FIND_LINKS": str(index), "PIP_NO_INDEX": "1"}, timeout=120)
    assert out.returncode != 0, out.stdout + out.stderr
    assert not marker.exists(), "pip built the index's sdist on the host"
    assert "evilpkg" in out.stderr.strip().splitlines()[-1]
