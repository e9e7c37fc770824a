"""Local templates: prepared Python package sets mounted read-only into local sandboxes.

A template is a directory ``NEXUS_HOME/templates/<name>/`` holding ``lib/`` (packages
installed with ``pip install --target`` by the same python3 the sandboxes use, so binary
wheels match) and ``template.json``. The network is used only here, at build time; the
sandbox that mounts the template still has none. Docker, E2B and Modal map ``template_id``
onto their own images instead.

pip runs on the host (as root under CI), so it installs wheels only: unpacking a wheel runs
none of the package's code, while building a source distribution, a directory or a VCS
checkout runs its setup code here. Every package given is checked first
(:func:`wheel_only`) and pip is told ``--only-binary=:all:`` for what the index resolves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from .config import Settings, private_dir
from .errors import InvalidArgumentError, ProviderError
from .providers.base import DATASCIENCE_PACKAGES, LEAN_TEMPLATES
from .providers.local import sandbox_python

#: Recipes shipped with the project: ``nexus template create datascience``. "datascience" is
#: the default environment of local sandboxes (``Settings.default_template``); nothing is
#: pinned: the versions pip chose are recorded in template.json ("versions").
RECIPES = {
    "datascience": list(DATASCIENCE_PACKAGES),
}
#: Template ids meaning "no template": the lean sandbox (the sandbox's python alone).
LEAN = LEAN_TEMPLATES

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Names pip takes as a file to build (not a project on the index) when they exist.
_ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar", ".zip")
_WHEELS_ONLY = (
    "templates are built from wheels only, so no package's setup code runs on this host: "
    "give a project name (pip takes its wheel from the index) or a .whl file (build one "
    "elsewhere with 'pip wheel')"
)


def wheel_only(spec: str) -> str:
    """``spec`` when pip can only install it from a wheel: a requirement naming a project on
    the index (``pandas``, ``numpy>=2``) or a ``.whl`` file or URL. A source archive, a
    directory, a VCS or non-wheel URL, or a pip option is an InvalidArgumentError."""
    text = spec.strip() if isinstance(spec, str) else ""
    if not text or text.startswith("-"):
        raise InvalidArgumentError(f"{spec!r} is not a package: {_WHEELS_ONLY}")
    if text.endswith(".whl") and os.path.isfile(text):
        return os.path.abspath(text)
    if os.sep in text or os.path.exists(text) or text.lower().endswith(_ARCHIVES):
        raise InvalidArgumentError(f"{spec!r} is a file or directory but not a .whl: {_WHEELS_ONLY}")
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        raise InvalidArgumentError(f"{spec!r} is not a package name: {_WHEELS_ONLY}") from None
    if requirement.url and not requirement.url.split("#")[0].split("?")[0].endswith(".whl"):
        raise InvalidArgumentError(f"{spec!r} points to a source, not a wheel: {_WHEELS_ONLY}")
    return text


def template_dir(settings: Settings, name: str) -> Path:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgumentError(
            f"template name {name!r} must be lowercase letters, digits, '.', '_' or '-'"
        )
    if name in LEAN:
        raise InvalidArgumentError(
            f"template name {name!r} is reserved for the lean sandbox (no template); pick another"
        )
    return settings.templates_dir / name


def list_templates(settings: Settings) -> list[dict[str, Any]]:
    """Every built template with its packages and size."""
    found = []
    if settings.templates_dir.is_dir():
        for meta in sorted(settings.templates_dir.glob("*/template.json")):
            found.append(json.loads(meta.read_text()))
    return found


def create_template(
    settings: Settings, name: str, packages: list[str], *, quiet: bool = False
) -> dict[str, Any]:
    """Build template ``name`` with ``packages`` (or the recipe of that name when empty).
    A template already built with the same package list is kept as it is (its metadata is
    returned with ``"cached": True``): building the default environment twice costs nothing.
    pip's own wheel cache is used, so a rebuild downloads nothing it has seen."""
    target = template_dir(settings, name)
    packages = list(packages) or RECIPES.get(name, [])
    if not packages:
        raise InvalidArgumentError(
            f"give packages to install (--pip PKG ...) or use a recipe: {', '.join(RECIPES)}"
        )
    wheels = [wheel_only(spec) for spec in packages]
    built = _read_meta(target)
    if built is not None and built.get("packages") == packages and (target / "lib").is_dir():
        return {**built, "cached": True}
    if target.exists():
        raise InvalidArgumentError(
            f"template {name!r} exists; remove it first: nexus template remove {name}"
        )
    python = sandbox_python(settings)
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    private_dir(building.parent)
    building.mkdir()
    command = [*_pip_install(python), "--no-input", "--disable-pip-version-check",
               "--only-binary=:all:", "--target", str(building / "lib"), *wheels]
    if quiet:
        command.insert(command.index("install") + 1, "--quiet")
    started = time.monotonic()
    try:
        done = subprocess.run(command, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        shutil.rmtree(building, ignore_errors=True)
        raise ProviderError(f"cannot run {python} -m pip: {exc}") from None
    if done.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ProviderError(f"building template {name!r} failed: {last}")
    meta = {
        "name": name,
        "packages": packages,
        "versions": installed_versions(building / "lib"),
        "python": python,
        "created_at": time.time(),
        "build_seconds": round(time.monotonic() - started, 1),
        "size_mb": round(_size(building) / 2**20, 1),
    }
    (building / "template.json").write_text(json.dumps(meta, indent=1))
    for path in [building, *building.rglob("*")]:  # readable by the sandbox's uid
        path.chmod(0o755 if path.is_dir() else (path.stat().st_mode | 0o444))
    building.rename(target)
    return meta


def remove_template(settings: Settings, name: str) -> None:
    target = template_dir(settings, name)
    if not target.exists():
        raise InvalidArgumentError(f"no template {name!r}; see nexus template list")
    shutil.rmtree(target)


def _pip_install(python: str) -> list[str]:
    """``pip install`` for the sandbox's ``python``: its own pip, else this process's
    (Debian's python3 has no pip without python3-pip; nexus' own environment has one),
    told the sandbox python's version when the two differ (every build takes wheels only)."""
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [python, "-m", "pip", "install"]
    try:
        version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ProviderError(f"cannot run the sandbox python {python}: {exc}") from None
    own = [sys.executable, "-m", "pip", "install"]
    if version == "{}.{}".format(*sys.version_info[:2]):
        return own
    return [*own, "--python-version", version]


def installed_versions(lib: Path) -> dict[str, str]:
    """{distribution: version} of what pip installed into ``lib`` (its .dist-info dirs)."""
    versions = {}
    for info in sorted(lib.glob("*.dist-info")):
        dist, _, version = info.name[: -len(".dist-info")].rpartition("-")
        if dist:
            versions[dist.replace("_", "-").lower()] = version
    return versions


def _read_meta(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / "template.json").read_text())
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
