"""Templates: prepared Python package sets, one concept across providers.

``nexus template create NAME --pip PKG... [--provider local|docker] [--from IMAGE]``:

- **local** (default): a directory ``NEXUS_HOME/templates/<name>/`` holding ``lib/``
  (packages installed with ``pip install --target`` for the same python3 the sandboxes use,
  so binary wheels match) and ``template.json``, mounted read-only into local sandboxes.
- **docker**: the image ``nexus-template/<name>:latest``, the base image (``--from``, else
  the default image) plus the packages, built for the base image's own python3
  (:mod:`.providers.docker_template`); ``--template NAME`` resolves to it.
- **e2b** and **modal** build their images with their own tools: ``--template`` takes their
  template ids and image names (:data:`ELSEWHERE` says how).

The network is used only here, at build time; sandboxes of a template still have none.

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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from .config import Settings, private_dir
from .errors import InvalidArgumentError, ProviderError, ProviderUnavailableError
from .providers import docker_template
from .providers.base import DATASCIENCE_PACKAGES, LEAN_TEMPLATES
from .providers.docker import _api_errors, open_client
from .providers.local import sandbox_python

#: Recipes shipped with the project: ``nexus template create datascience``. "datascience" is
#: the default environment of local sandboxes (``Settings.default_template``); nothing is
#: pinned: the versions pip chose are recorded in template.json ("versions").
RECIPES = {
    "datascience": list(DATASCIENCE_PACKAGES),
}
#: Providers whose templates nexus builds.
BUILDERS = ("local", "docker")
#: Providers that build their templates with their own tools, and how NAME maps onto them.
ELSEWHERE = {
    "e2b": "e2b templates are built by E2B's CLI ('e2b template build', see E2B's docs); "
           "then create sandboxes with --provider e2b --template <its name or id>",
    "modal": "modal images are built by Modal from a registry image: push an image with the "
             "packages (e.g. a docker template, nexus-template/NAME) to a registry, then "
             "--provider modal --template <registry/image:tag> (or an im-... image id)",
}
#: Seconds one engine call of a docker build may take (committing a large layer).
BUILD_API_TIMEOUT = 900
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


def list_templates(settings: Settings, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Every built template of every provider that builds them (local directories, docker
    images), with provider, packages, versions and size. A provider that cannot be asked
    (no SDK, daemon down) is left out, with the reason appended to ``skipped``."""
    found = []
    if settings.templates_dir.is_dir():
        for meta in sorted(settings.templates_dir.glob("*/template.json")):
            found.append({**json.loads(meta.read_text()), "provider": "local"})
    try:
        with _docker(settings, "list template images", timeout=10) as api:
            found += docker_template.list_images(api)
    except ProviderUnavailableError as exc:
        if skipped is not None:
            skipped.append(f"docker: {exc}")
    return found


def create_template(
    settings: Settings, name: str, packages: list[str], *, provider: str = "local",
    base: str | None = None, quiet: bool = False,
) -> dict[str, Any]:
    """Build template ``name`` with ``packages`` (or the recipe of that name when empty) for
    ``provider`` ("local", or "docker" on the image ``base``, default the provider's image).
    A template already built with the same package list (and base) is kept as it is (its
    metadata is returned with ``"cached": True``): building the default environment twice
    costs nothing. pip's own wheel cache is used, so a rebuild downloads nothing it has seen."""
    if provider in ELSEWHERE:
        raise InvalidArgumentError(ELSEWHERE[provider])
    if provider not in BUILDERS:
        raise InvalidArgumentError(
            f"--provider {provider!r}: templates are built for {' or '.join(BUILDERS)}")
    if base is not None and provider != "docker":
        raise InvalidArgumentError("--from IMAGE is for docker templates: add --provider docker")
    target = template_dir(settings, name)
    packages = list(packages) or RECIPES.get(name, [])
    if not packages:
        raise InvalidArgumentError(
            f"give packages to install (--pip PKG ...) or use a recipe: {', '.join(RECIPES)}"
        )
    wheels = [wheel_only(spec) for spec in packages]
    if provider == "docker":
        return _create_docker(settings, name, packages, wheels, base or settings.docker_image,
                              quiet)
    built = _read_meta(target)
    if built is not None and built.get("packages") == packages and (target / "lib").is_dir():
        return {**built, "provider": "local", "cached": True}
    if target.exists():
        raise InvalidArgumentError(
            f"template {name!r} exists; remove it first: nexus template remove {name}"
        )
    python = sandbox_python(settings)
    building = target.with_name(target.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    private_dir(building.parent)
    building.mkdir()
    started = time.monotonic()
    try:
        _pip([*_pip_install(python), "--target", str(building / "lib"), *wheels], name, quiet)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
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
    return {**meta, "provider": "local"}


def _create_docker(settings: Settings, name: str, packages: list[str], wheels: list[str],
                   base: str, quiet: bool) -> dict[str, Any]:
    """The docker template image (see :mod:`.providers.docker_template`)."""
    tag = docker_template.image_tag(name)

    def progress(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    with _docker(settings, "build the template image", timeout=BUILD_API_TIMEOUT) as api:
        built = docker_template.described(api, tag)
        if built is not None:
            if built.get("packages") == packages and built.get("base") == base:
                return {**built, "cached": True}
            raise InvalidArgumentError(f"docker template {name!r} exists; remove it first: "
                                       f"nexus template remove {name} --provider docker")
        started = time.monotonic()
        progress(f"docker: asking {base}'s python3 for its version and platform")
        found = docker_template.probe(api, base)
        with tempfile.TemporaryDirectory(prefix="nexus-template-") as scratch:
            lib = Path(scratch) / "lib"
            _pip([sys.executable, "-m", "pip", "install", "--no-compile",
                  *docker_template.pip_target(found), "--target", str(lib), *wheels], name, quiet)
            meta = {
                "packages": packages,
                "versions": installed_versions(lib),
                "base": base,
                "python": "{}.{}".format(*found["version"]),
                "created_at": time.time(),
            }
            docker_template.build(api, name, base, lib, meta, progress)
        built = docker_template.described(api, tag) or {}
    return {**built, "build_seconds": round(time.monotonic() - started, 1)}


def remove_template(settings: Settings, name: str, provider: str | None = None) -> list[str]:
    """Remove template ``name`` of ``provider`` (None: of every provider that has one); the
    providers it was removed from."""
    if provider is not None and provider not in BUILDERS:
        raise InvalidArgumentError(
            ELSEWHERE.get(provider) or f"--provider {provider!r}: templates are built for "
            f"{' or '.join(BUILDERS)}")
    target = template_dir(settings, name)
    removed = []
    if provider in (None, "local") and target.exists():
        shutil.rmtree(target)
        removed.append("local")
    if provider == "docker" or (provider is None and _docker_known(settings)):
        with _docker(settings, "remove the template image") as api:
            if docker_template.remove(api, name):
                removed.append("docker")
    if not removed:
        where = f"{provider} " if provider else ""
        raise InvalidArgumentError(f"no {where}template {name!r}; see nexus template list")
    return removed


def _docker_known(settings: Settings) -> bool:
    """Whether docker can be asked (SDK installed, daemon up): remove without --provider."""
    try:
        with _docker(settings, "reach the engine", timeout=10):
            return True
    except ProviderUnavailableError:
        return False


@contextmanager
def _docker(settings: Settings, what: str, timeout: float = 60) -> Iterator[Any]:
    """A docker-py low-level client of the configured engine (``timeout`` s per API call),
    errors as nexus errors."""
    client = open_client(settings.docker_host, timeout=timeout)
    try:
        with _api_errors(settings.docker_host, what):
            yield client.api
    finally:
        client.close()


def _pip(command: list[str], name: str, quiet: bool) -> None:
    """Run pip ``install`` (wheels only), its output on stderr unless ``quiet``."""
    at = command.index("install") + 1
    command[at:at] = ["--no-input", "--disable-pip-version-check", "--only-binary=:all:",
                      *(["--quiet"] if quiet else [])]
    try:
        done = subprocess.run(command, stdout=sys.stderr if not quiet else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        raise ProviderError(f"cannot run {command[0]} -m pip: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ProviderError(f"building template {name!r} failed: {last}")


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
