"""How the agent package reaches every docker sandbox, whatever its image: a docker volume.

One volume per agent version, ``nexus-agent-<digest12>`` (``nexus.agent_sha256`` label),
mounted read-only (and ``NoCopy``: the image's own files at the agent dir never seed it) at
the agent dir of every sandbox container. It is filled through the engine's archive API, so
no host path is mounted and a remote engine (``DOCKER_HOST``) works too: ``put_archive`` of
the package's sources into a helper container of the sandbox's image that mounts the volume
read-write and is created, never started (no code of the image runs), then removed.

Concurrent first creates: the helper's name, ``nexus-agent-fill-<digest12>``, is the lock (the
engine refuses a second container of one name); the one holding it fills, the others wait for
the marker. The marker is a second, empty volume ``nexus-agent-<digest12>.ready`` created
only after the fill succeeded: no container references it, so only that create makes it,
and checking it is one cheap ``inspect``. A filler that died leaves its helper behind: after
FILL_STALE_SECONDS it is removed and the volume filled again (same bytes).

Only sources are shipped: each start compiles the agent in memory (about 10 ms).
"""

from __future__ import annotations

import io
import tarfile
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
LABEL = "nexus.agent_sha256"
#: The helpers' label (value: the digest), for remove_leftovers.
FILL_LABEL = "nexus.agent_fill"
#: A fill lock older than this belongs to a creator that died: it is broken.
FILL_STALE_SECONDS = 60.0
#: How long a creator waits for another one's fill.
FILL_WAIT_SECONDS = 120.0


def digest12() -> str:
    """The current agent package's short digest (names its volume)."""
    return agent_digest()[:12]


def volume_name(short: str) -> str:
    """The agent volume of the version ``short`` (digest12)."""
    return f"nexus-agent-{short}"


def ready_name(short: str) -> str:
    """The marker volume that exists once ``volume_name(short)`` is complete."""
    return f"{volume_name(short)}.ready"


def agent_mount(short: str, read_only: bool = True) -> Any:
    """The docker-py ``Mount`` of the agent volume at AGENT_DIR."""
    docker = import_sdk("docker", "docker")
    return docker.types.Mount(
        AGENT_DIR, volume_name(short), type="volume", read_only=read_only, no_copy=True,
        labels={LABEL: short},
    )  # fmt: skip


@lru_cache(maxsize=2)
def _archive(short: str) -> bytes:
    """The package's sources as a tar for AGENT_DIR: root-owned, world-readable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo(PACKAGE_NAME)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for path in package_files():
            data = path.read_bytes()
            info = tarfile.TarInfo(f"{PACKAGE_NAME}/{path.name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def ensure_agent_volume(api: Any, image: str) -> str:
    """The short digest of the agent volume, complete (filled now if needed, through a
    helper container of ``image``). Raises ProviderError when another creator's fill does
    not finish in FILL_WAIT_SECONDS; docker-py errors otherwise."""
    docker = import_sdk("docker", "docker")
    short = digest12()
    limit = time.monotonic() + FILL_WAIT_SECONDS
    while True:
        try:
            api.inspect_volume(ready_name(short))
            return short
        except docker.errors.NotFound:
            pass
        if _fill(api, image, short):
            return short
        if time.monotonic() > limit:
            raise ProviderError(
                f"the agent volume {volume_name(short)} is being filled by another process "
                f"that does not finish: docker rm -f nexus-agent-fill-{short}, then retry"
            )
        time.sleep(0.1)


def _fill(api: Any, image: str, short: str) -> bool:
    """Fill the volume under the lock; False when another creator holds it (still fresh)."""
    docker = import_sdk("docker", "docker")
    lock = f"nexus-agent-fill-{short}"
    try:
        helper = api.create_container(
            image, command=["nexus-agent-fill"], name=lock, network_disabled=True,
            labels={FILL_LABEL: short},
            host_config=api.create_host_config(mounts=[agent_mount(short, read_only=False)]),
        )["Id"]  # fmt: skip
    except docker.errors.APIError as exc:
        if exc.status_code != 409:  # 409: the name is taken, someone is filling
            raise
        _break_if_stale(api, lock)
        return False
    try:
        if not api.put_archive(helper, AGENT_DIR, _archive(short)):
            raise ProviderError(f"docker could not fill the agent volume {volume_name(short)}")
        api.create_volume(ready_name(short), labels={LABEL: short})
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


def remove_old_volumes(api: Any) -> list[str]:
    """Agent volumes of other versions that no container uses (with their markers), and
    fill helpers left by dead creators."""
    docker = import_sdk("docker", "docker")
    current = digest12()
    removed = []
    for row in api.containers(all=True, filters={"label": [FILL_LABEL]}):
        if time.time() - row.get("Created", 0) > FILL_STALE_SECONDS:
            with suppress(docker.errors.APIError):
                api.remove_container(row["Id"], force=True)
                removed.append(f"container {row['Id'][:12]}")
    volumes = api.volumes(filters={"label": LABEL}).get("Volumes") or []
    for short in sorted({(v.get("Labels") or {}).get(LABEL, "") for v in volumes} - {current, ""}):
        try:  # the content first: in use means the marker must stay
            with suppress(docker.errors.NotFound):
                api.remove_volume(volume_name(short))
            with suppress(docker.errors.NotFound):
                api.remove_volume(ready_name(short))
        except docker.errors.APIError:
            continue  # a container still uses it
        removed.append(f"volume {volume_name(short)}")
    return removed
