"""Local templates: prepared Python package sets mounted read-only into local sandboxes.

A template is a directory ``NEXUS_HOME/templates/<name>/`` holding ``lib/`` (packages
installed with ``pip install --target`` by the same python3 the sandboxes use, so binary
wheels match) and ``template.json``. The network is used only here, at build time; the
sandbox that mounts the template still has none. Docker, E2B and Modal map ``template_id``
onto their own images instead.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
               "--target", str(building / "lib"), *packages]
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
    told the sandbox python's version and to take wheels only when the two differ."""
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
    return [*own, "--python-version", version, "--only-binary=:all:"]


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
