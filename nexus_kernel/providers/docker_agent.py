"""How the agent package reaches every docker sandbox, whatever its image: a docker volume.

One volume per agent version, ``nexus-agent-<version>`` (label ``nexus.agent_version``; the
version is the package's digest, 12 hex digits, and this host python's cache tag),
mounted read-only (and ``NoCopy``: the image's own files at the agent dir never seed it) at
the agent dir of every sandbox container. It is filled through the engine's archive API, so
no host path is mounted and a remote engine (``DOCKER_HOST``) works too: ``put_archive`` of
the package into a helper container that mounts the volume read-write and is created, never
started (no code of its image runs), then removed. The provider makes it of the default
image, so a sandbox's own image (maybe hostile) never has the volume writable.

Concurrent first creates: the helper's name, ``nexus-agent-fill-<version>``, is the lock (the
engine refuses a second container of one name); the one holding it fills, the others wait for
the marker. The marker is a second, empty volume ``nexus-agent-<version>.ready`` created
only after the fill succeeded: no container references it, so only that create makes it,
and checking it is one cheap ``inspect``, made once per engine and version by a provider
(again after a create of it failed: the volume may have been removed). A filler that died leaves its helper behind: after
FILL_STALE_SECONDS it is removed and the volume filled again (same bytes).

Bytecode: the volume holds the sources and their bytecode compiled by this host's python
(hash-checked ``.pyc`` files); an image whose python3 has the same version (cache tag) uses
it, another one compiles the agent in memory at each start (the volume is read-only): about
10 ms per agent start and per python worker.
"""

from __future__ import annotations

import importlib.util
import io
import py_compile
import sys
import tarfile
import tempfile
import time
from contextlib import suppress
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from ..agent.deploy import PACKAGE_NAME, agent_digest, package_files
from ..errors import ProviderError
from ._launch import import_sdk

#: Where the volume is mounted in every sandbox container.
AGENT_DIR = "/opt/nexus-agent"
LABEL = "nexus.agent_version"
#: The helpers' label (value: the version), for remove_leftovers.
FILL_LABEL = "nexus.agent_fill"
#: A fill lock older than this belongs to a creator that died: it is broken.
FILL_STALE_SECONDS = 60.0
#: How long a creator waits for another one's fill.
FILL_WAIT_SECONDS = 120.0


def agent_version() -> str:
    """The current agent's volume version: ``<digest12>-<cache tag>`` (the bytecode in it)."""
    return f"{agent_digest()[:12]}-{sys.implementation.cache_tag or 'source'}"


def volume_name(version: str) -> str:
    """The agent volume of ``version`` (see agent_version)."""
    return f"nexus-agent-{version}"


def ready_name(version: str) -> str:
    """The marker volume that exists once ``volume_name(version)`` is complete."""
    return f"{volume_name(version)}.ready"


def agent_mount(version: str, read_only: bool = True) -> Any:
    """The docker-py ``Mount`` of the agent volume at AGENT_DIR."""
    docker = import_sdk("docker", "docker")
    return docker.types.Mount(
        AGENT_DIR, volume_name(version), type="volume", read_only=read_only, no_copy=True,
        labels={LABEL: version},
    )  # fmt: skip


@lru_cache(maxsize=2)
def _archive(version: str) -> bytes:
    """The package as a tar for AGENT_DIR: its sources and this python's bytecode of them,
    root-owned, world-readable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar, \
            tempfile.TemporaryDirectory() as scratch:
        for folder in (PACKAGE_NAME, f"{PACKAGE_NAME}/__pycache__"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path in package_files():
            name = f"{PACKAGE_NAME}/{path.name}"
            _add(tar, name, path.read_bytes())
            if sys.implementation.cache_tag is None:
                continue  # this python writes no bytecode
            compiled = f"{scratch}/{path.name}c"
            py_compile.compile(str(path), compiled, dfile=f"{AGENT_DIR}/{name}", doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
            with open(compiled, "rb") as f:
                _add(tar, importlib.util.cache_from_source(name), f.read())
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


def ensure_agent_volume(api: Any, image: str) -> str:
    """The version of the agent volume, complete (filled now if needed, through a helper
    container of ``image``, which must exist). Raises ProviderError when another creator's
    fill does not finish in FILL_WAIT_SECONDS; docker-py errors otherwise."""
    docker = import_sdk("docker", "docker")
    version = agent_version()
    limit = time.monotonic() + FILL_WAIT_SECONDS
    while True:
        try:
            api.inspect_volume(ready_name(version))
            return version
        except docker.errors.NotFound:
            pass
        if _fill(api, image, version):
            return version
        if time.monotonic() > limit:
            raise ProviderError(
                f"the agent volume {volume_name(version)} is being filled by another process "
                f"that does not finish: docker rm -f nexus-agent-fill-{version}, then retry"
            )
        time.sleep(0.1)


def _fill(api: Any, image: str, version: str) -> bool:
    """Fill the volume under the lock; False when another creator holds it (still fresh)."""
    docker = import_sdk("docker", "docker")
    lock = f"nexus-agent-fill-{version}"
    try:
        helper = api.create_container(
            image, command=["nexus-agent-fill"], name=lock, network_disabled=True,
            labels={FILL_LABEL: version},
            host_config=api.create_host_config(mounts=[agent_mount(version, read_only=False)]),
        )["Id"]  # fmt: skip
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: the name is taken, someone is filling
            raise
        _break_if_stale(api, lock)
        return False
    try:
        if not api.put_archive(helper, AGENT_DIR, _archive(version)):
            raise ProviderError(f"docker could not fill the agent volume {volume_name(version)}")
        api.create_volume(ready_name(version), labels={LABEL: version})
    finally:
        with suppress(docker.errors.APIError):
            api.remove_container(helper, force=True)
    return True


def _break_if_stale(api: Any, lock: str) -> None:
    docker = import_sdk("docker", "docker")
    with suppress(docker.errors.APIError):
        if _age(api.inspect_container(lock)["Created"]) > FILL_STALE_SECONDS:
            api.remove_container(lock, force=True)


def _age(created: str) -> float:
    """Seconds since docker's RFC 3339 ``Created`` time (UTC, nanoseconds)."""
    then = datetime.strptime(created[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return time.time() - then.timestamp()


def remove_old_volumes(api: Any, grace: float) -> list[str]:
    """Agent volumes of other versions (with their markers) made over ``grace`` s ago that
    no container uses, and fill helpers left by dead creators."""
    docker = import_sdk("docker", "docker")
    removed = []
    for row in api.containers(all=True, filters={"label": [FILL_LABEL]}):
        if time.time() - row.get("Created", 0) > max(grace, FILL_STALE_SECONDS):
            with suppress(docker.errors.APIError):
                api.remove_container(row["Id"], force=True)
                removed.append(f"agent fill helper {row['Id'][:12]}")
    youngest: dict[str, float] = {}
    for volume in api.volumes(filters={"label": LABEL}).get("Volumes") or []:
        version = (volume.get("Labels") or {}).get(LABEL, "")
        age = _age(volume.get("CreatedAt") or "1970-01-01T00:00:00")
        youngest[version] = min(age, youngest.get(version, age))
    for version, age in sorted(youngest.items()):
        if version in ("", agent_version()) or age < grace:
            continue
        try:  # the content first: in use means the marker must stay
            with suppress(docker.errors.NotFound):
                api.remove_volume(volume_name(version))
            with suppress(docker.errors.NotFound):
                api.remove_volume(ready_name(version))
        except docker.errors.APIError:
            continue  # a container still uses it
        removed.append(f"volume {volume_name(version)}")
    return removed
