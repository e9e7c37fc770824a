"""Docker templates: an image with a package set added, built without running package code
on the host and without a host path mounted (a remote ``DOCKER_HOST`` works).

``nexus template create NAME --provider docker --pip PKG... [--from IMAGE]`` makes the
image ``nexus-template/NAME:latest`` (labels ``nexus.template=NAME`` and
``nexus.template.meta``: packages, versions, base image, python) in four steps:

1. :func:`probe`: the base image's python3 reports its version, ABI and C library in a
   throwaway container (no network, no capabilities, read-only root, uid 65534);
2. pip on the host installs wheels only for exactly that interpreter (:func:`pip_target`:
   ``--python-version/--implementation/--abi/--platform``, ``--only-binary=:all:``) into a
   directory (the caller, :mod:`nexus_kernel.templates`, runs it);
3. :func:`build` puts that directory at TEMPLATE_DIR of a container of the base image
   through the engine's archive API, starts it to compile the bytecode with the image's own
   python (no network, no capabilities), and commits it with ``PYTHONPATH`` and ``PATH``
   naming the packages first, as the local provider does for its templates (the agent runs
   isolated, ``-I``, so only sandbox code sees them);
4. sandboxes of the template run the image with every usual restriction (no network).

:func:`resolve` maps a ``template_id`` onto that image when it exists (else the id is an
image name), so ``--template NAME`` works for templates and images alike.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, ProviderError, SandboxStateError
from ._launch import import_sdk

#: Where the packages live in a template image.
TEMPLATE_DIR = "/opt/nexus-template"
LABEL = "nexus.template"
META_LABEL = "nexus.template.meta"
#: The label of the build's throwaway containers (value: "probe" or the template name).
BUILD_LABEL = "nexus.template.build"
REPOSITORY = "nexus-template"
#: A docker repository path component (stricter than the template name rule).
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
#: The keys of META_LABEL's JSON and their types.
_META_TYPES = {"packages": list, "versions": dict, "base": str, "python": str,
               "created_at": (int, float)}
#: Seconds the probe and the bytecode compile may take.
PROBE_TIMEOUT = 60
COMPILE_TIMEOUT = 600
#: A build container older than this belongs to a build that died (probe, copy, compile).
BUILD_STALE_SECONDS = 900.0
#: Bytes of the probe's output read (it prints one short JSON line).
PROBE_MAX = 4096
#: The engine keeps at most this much of a build container's log (its image may be hostile
#: and print without end): the engine's disk and what the host reads stay bounded.
BUILD_LOG_CAP = "64k"

#: Runs in the base image (python3 >= 3.8, stdlib only): what pip must target.
_PROBE = r"""
import glob, json, os, platform, re, subprocess, sys, sysconfig
glibc = ""
try:
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[1]
except (AttributeError, OSError, ValueError, IndexError):
    pass
musl = ""
for loader in glob.glob("/lib/ld-musl-*.so.1")[:1]:
    text = subprocess.run([loader], stderr=subprocess.PIPE).stderr.decode("ascii", "replace")
    found = re.search(r"Version (\d+\.\d+)", text)
    musl = found.group(1) if found else ""
print(json.dumps({"version": list(sys.version_info[:2]), "implementation": sys.implementation.name,
                  "machine": platform.machine(), "glibc": glibc, "musl": musl,
                  "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED"))}))
"""


def image_tag(name: str) -> str:
    """The image of docker template ``name``."""
    if not _COMPONENT.match(name):
        raise InvalidArgumentError(
            f"template name {name!r} is not a docker image name: use lowercase letters and "
            "digits separated by single '.', '_' or '-'"
        )
    return f"{REPOSITORY}/{name}:latest"


def resolve(api: Any, template_id: str) -> str:
    """The image to run for ``template_id``: the docker template of that name when built,
    else ``template_id`` itself (an image name)."""
    if not _COMPONENT.match(template_id):
        return template_id
    docker = import_sdk("docker", "docker")
    tag = f"{REPOSITORY}/{template_id}:latest"
    try:
        labels = api.inspect_image(tag)["Config"].get("Labels") or {}
    except docker.errors.ImageNotFound:
        return template_id
    return tag if labels.get(LABEL) == template_id else template_id


def _confined(api: Any, **extra: Any) -> Any:
    """Host config of the build's throwaway containers: no network, no capabilities, a
    capped log."""
    return api.create_host_config(
        network_mode="none", cap_drop=["ALL"], security_opt=["no-new-privileges"],
        pids_limit=256, mem_limit="1g",
        log_config={"Type": "json-file", "Config": {"max-size": BUILD_LOG_CAP, "max-file": "1"}},
        **extra,
    )  # fmt: skip


def _bounded_logs(api: Any, container: str, limit: int, **options: Any) -> bytes:
    """At most ``limit`` bytes of a build container's log, read as a stream (never whole)."""
    out = bytearray()
    stream = api.logs(container, stream=True, follow=False, **options)
    try:
        for chunk in stream:
            out += chunk[: limit - len(out)]
            if len(out) >= limit:
                break
    finally:
        stream.close()
    return bytes(out)


def probe(api: Any, image: str) -> dict[str, Any]:
    """What pip must target for ``image``'s python3: version, ABI, platform tags."""
    docker = import_sdk("docker", "docker")
    try:
        helper = api.create_container(
            image, entrypoint=["python3", "-I", "-c", _PROBE], user="65534:65534",
            network_disabled=True, labels={BUILD_LABEL: "probe"},
            host_config=_confined(api, read_only=True),
        )["Id"]  # fmt: skip
    except docker.errors.ImageNotFound:
        raise ProviderError(
            f"the base image {image!r} does not exist: docker pull it (or build it) first"
        ) from None
    try:
        try:
            api.start(helper)
        except docker.errors.APIError as exc:
            if "executable file not found" in str(exc.explanation or exc):
                raise ProviderError(
                    f"the image {image!r} has no python3 on its PATH: a docker template "
                    "needs python3 >= 3.8 in its base image"
                ) from None
            raise
        status = api.wait(helper, timeout=PROBE_TIMEOUT).get("StatusCode")
        out = _bounded_logs(api, helper, PROBE_MAX, stdout=True, stderr=False)
    finally:
        api.remove_container(helper, force=True)
    try:
        found = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
        version = tuple(found["version"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise ProviderError(
            f"the python3 of image {image!r} did not report its version (exit {status}): "
            "a docker template needs python3 >= 3.8 in its base image"
        ) from None
    if found.get("implementation") != "cpython" or version < (3, 8):
        raise ProviderError(
            f"the image {image!r} has {found.get('implementation')} {version}: docker "
            "templates need CPython >= 3.8"
        )
    return {**found, "platforms": platforms(found)}


def platforms(found: dict[str, Any]) -> list[str]:
    """pip's ``--platform`` tags for a probed interpreter (glibc: manylinux, musl:
    musllinux), newest first."""
    arch = str(found.get("machine") or "")
    if not re.fullmatch(r"[a-z0-9_]+", arch):
        raise ProviderError(f"the base image reports an unknown machine {arch!r}")
    for libc, prefix, lowest in (("glibc", "manylinux", 5), ("musl", "musllinux", 0)):
        major, _, minor = str(found.get(libc) or "").partition(".")
        if major.isdigit() and minor.isdigit():
            tags = [f"{prefix}_{major}_{m}_{arch}" for m in range(int(minor), lowest - 1, -1)]
            if libc == "glibc" and int(major) == 2:
                legacy = (("manylinux2014", 17), ("manylinux2010", 12), ("manylinux1", 5))
                tags += [f"{name}_{arch}" for name, need in legacy if int(minor) >= need]
            return tags
    raise ProviderError("the base image's python3 runs on neither glibc nor musl: "
                        "pip cannot pick wheels for it")


def pip_target(found: dict[str, Any]) -> list[str]:
    """pip options that select wheels for the probed interpreter (with --target)."""
    major, minor = found["version"]
    abi = f"cp{major}{minor}" + ("t" if found.get("free_threaded") else "")
    options = ["--python-version", f"{major}.{minor}", "--implementation", "cp", "--abi", abi]
    for tag in found["platforms"]:
        options += ["--platform", tag]
    return options


def _archive(lib: Path) -> bytes:
    """``lib`` as a tar for the image root: TEMPLATE_DIR/lib, root-owned, world-readable."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        executable = info.isdir() or info.mode & 0o111
        info.mode = 0o755 if executable else 0o644
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        top = tarfile.TarInfo(TEMPLATE_DIR.lstrip("/"))
        top.type = tarfile.DIRTYPE
        tar.addfile(normalise(top))
        tar.add(str(lib), arcname=f"{TEMPLATE_DIR.lstrip('/')}/lib", filter=normalise)
    return buffer.getvalue()


def build(api: Any, name: str, base: str, lib: Path, meta: dict[str, Any],
          progress: Callable[[str], None]) -> str:
    """Commit ``base`` + ``lib`` (at TEMPLATE_DIR/lib, bytecode compiled by the image's
    python) as the image of template ``name``, labelled with ``meta``; its tag."""
    docker = import_sdk("docker", "docker")
    tag = image_tag(name)
    config = api.inspect_image(base)["Config"] or {}
    env = [e for e in config.get("Env") or [] if not e.startswith(("PATH=", "PYTHONPATH="))]
    old = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
    path = old.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    python_path = ":".join(filter(None, [f"{TEMPLATE_DIR}/lib", old.get("PYTHONPATH")]))
    env += [f"PATH={TEMPLATE_DIR}/lib/bin:{path}", f"PYTHONPATH={python_path}"]
    helper = api.create_container(
        base, entrypoint=["python3", "-I", "-m", "compileall", "-q", f"{TEMPLATE_DIR}/lib"],
        user="0:0", network_disabled=True, labels={BUILD_LABEL: name},
        host_config=_confined(api),
    )["Id"]  # fmt: skip
    try:
        data = _archive(lib)
        progress(f"docker: copying {len(data) / 2**20:.1f} MB into a container of {base}")
        if not api.put_archive(helper, "/", data):
            raise ProviderError(f"docker could not copy the packages into {base}")
        progress("docker: compiling bytecode with the image's python3 (no network)")
        api.start(helper)
        status = api.wait(helper, timeout=COMPILE_TIMEOUT).get("StatusCode")
        if status != 0:
            tail = _bounded_logs(api, helper, 300, tail=1).decode("utf-8", "replace").strip()
            raise ProviderError(f"compiling the template's packages failed ({status}): {tail}")
        progress(f"docker: committing {tag}")
        api.commit(helper, repository=tag.rsplit(":", 1)[0], tag="latest", conf={
            "Env": env, "Entrypoint": config.get("Entrypoint") or [],
            "Cmd": config.get("Cmd") or [],
            "Labels": {**(config.get("Labels") or {}), LABEL: name, META_LABEL: json.dumps(meta)},
        })  # fmt: skip
    finally:
        try:
            api.remove_container(helper, force=True)
        except docker.errors.APIError as exc:
            progress(f"docker: could not remove the build container {helper[:12]}: {exc}")
    return tag


def described(api: Any, tag: str) -> dict[str, Any] | None:
    """The metadata of the template image ``tag`` (with its size), None when absent."""
    docker = import_sdk("docker", "docker")
    try:
        info = api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return None
    return _meta(info.get("Config", {}).get("Labels") or {}, info.get("Size", 0), tag)


def _meta(labels: dict[str, str], size: int, tag: str) -> dict[str, Any]:
    """A template image's description from its labels (anyone can label an image: only
    the expected keys and types are kept)."""
    try:
        meta = json.loads(labels.get(META_LABEL) or "{}")
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    kept: dict[str, Any] = {
        key: meta[key] for key, kind in _META_TYPES.items() if isinstance(meta.get(key), kind)
    }
    kept["packages"] = [str(p) for p in kept.get("packages", [])]
    kept["versions"] = {str(k): str(v) for k, v in kept.get("versions", {}).items()}
    return {**kept, "name": str(labels.get(LABEL, "")), "provider": "docker", "image": tag,
            "size_mb": round(size / 2**20, 1)}


def list_images(api: Any) -> list[dict[str, Any]]:
    """Every docker template image of the engine (labelled ``nexus.template``)."""
    found = []
    for row in api.images(filters={"label": LABEL}):
        labels = row.get("Labels") or {}
        tags = [t for t in row.get("RepoTags") or [] if t.startswith(REPOSITORY + "/")]
        if labels.get(LABEL) and tags:
            found.append(_meta(labels, row.get("Size", 0), tags[0]))
    return sorted(found, key=lambda t: t["name"])


def remove(api: Any, name: str) -> bool:
    """Remove template ``name``'s image; False when there is none. Refuses while a container
    (a sandbox) runs it."""
    docker = import_sdk("docker", "docker")
    tag = image_tag(name)
    try:
        api.inspect_image(tag)
    except docker.errors.ImageNotFound:
        return False
    users = api.containers(all=True, filters={"ancestor": tag})
    if users:
        ids = ", ".join(row["Id"][:12] for row in users[:5])
        raise SandboxStateError(
            f"docker template {name!r} is used by {len(users)} container(s) ({ids}): stop "
            "those sandboxes first (nexus sandbox list)"
        )
    api.remove_image(tag)
    return True



def remove_build_leftovers(api: Any, grace: float) -> list[str]:
    """Build containers left by a build that died (older than BUILD_STALE_SECONDS)."""
    docker = import_sdk("docker", "docker")
    removed = []
    for row in api.containers(all=True, filters={"label": [BUILD_LABEL]}):
        if time.time() - row.get("Created", 0) > max(grace, BUILD_STALE_SECONDS):
            with suppress(docker.errors.APIError):
                api.remove_container(row["Id"], force=True)
                removed.append(f"template build container {row['Id'][:12]}")
    return removed
