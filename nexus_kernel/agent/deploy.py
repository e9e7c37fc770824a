"""Host side of deploying the agent package (``sandbox_agent/``) into sandboxes.

Two forms, one program:

- a **directory** (:data:`PACKAGE_DIR`) where the provider can place one (local: a copy
  with bytecode compiled by the sandbox's python, copied into a read-only tmpfs; docker:
  a read-only volume, see ``providers/docker_agent.py``), started by :func:`dir_argv`;
- a **zipapp** where one file must be uploaded (e2b, modal), built in memory by
  :func:`zipapp_bytes` and started by :func:`zipapp_argv` (``python3 PATH ARGS``).

:func:`agent_digest` names the package's content (docker volumes, cache directories).
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

from ..errors import ProviderUnavailableError

#: The package that runs inside sandboxes (stdlib only, python3 >= 3.8).
PACKAGE_NAME = "sandbox_agent"
PACKAGE_DIR = Path(__file__).resolve().with_name(PACKAGE_NAME)
#: The zipapp's file name (the name shows in ``ps`` output inside the sandbox).
ZIPAPP_NAME = f"{PACKAGE_NAME}.pyz"
#: The oldest python3 the agent runs on; an older one exits with TOO_OLD + its version.
MIN_PYTHON = (3, 8)
TOO_OLD = "nexus: the sandbox agent needs python3 >= 3.8, this python3 is "


def package_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The package's source files, sorted by name (the package has no subdirectories)."""
    files = sorted(package_dir.glob("*.py"), key=lambda p: p.name)
    if not any(p.name == "__main__.py" for p in files):
        raise ProviderUnavailableError(
            f"the sandbox agent is missing: {package_dir} (reinstall nexus-kernel)"
        )
    return files


def agent_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's files, the same as ``cd DIR; sha256sum *.py | sha256sum``
    with ``LC_ALL=C``."""
    import hashlib  # (OpenSSL's _hashlib) imported by the first deploy, not with this module

    lines = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
        for p in package_files(package_dir)
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def zipapp_bytes(package_dir: Path = PACKAGE_DIR) -> bytes:
    """The agent as a zipapp (``python3 sandbox_agent.pyz ARGS``), built in memory."""
    return _zipapp(package_dir, agent_digest(package_dir))


@functools.lru_cache(maxsize=4)
def _zipapp(package_dir: Path, digest: str) -> bytes:
    import zipapp  # the cloud providers' form only

    buffer = io.BytesIO()
    names = {p.name for p in package_files(package_dir)}
    zipapp.create_archive(
        package_dir.parent, buffer, main=f"{PACKAGE_NAME}.__main__:run", compressed=True,
        filter=lambda path: path.parent.as_posix() == package_dir.name and path.name in names,
    )  # fmt: skip
    return buffer.getvalue()


def zipapp_file(cache_root: Path, package_dir: Path = PACKAGE_DIR) -> Path:
    """The zipapp as a local file (for SDKs that upload from a path), content-addressed
    under ``cache_root`` and written once."""
    import hashlib
    import secrets

    data = zipapp_bytes(package_dir)
    target = cache_root / f"{PACKAGE_NAME}-{hashlib.sha256(data).hexdigest()[:16]}.pyz"
    if not target.is_file():
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{secrets.token_hex(4)}-{target.name}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


def dir_argv(python: str, root: str, *args: str, flags: tuple[str, ...] = ()) -> list[str]:
    """The command that runs the agent with ``args`` from the directory ``root`` holding
    the ``sandbox_agent`` package (importing it, so precompiled bytecode is used)."""
    boot = (
        f"import sys; sys.version_info >= {MIN_PYTHON!r} or sys.exit({TOO_OLD!r} + sys.version.split()[0]); "
        f"sys.path.insert(0, {root!r}); from {PACKAGE_NAME}.__main__ import run; run()"
    )
    return [python, *flags, "-c", boot, *args]


def zipapp_argv(python: str, path: str, *args: str, flags: tuple[str, ...] = ()) -> list[str]:
    """The command that runs the agent with ``args`` from the zipapp at ``path``."""
    return [python, *flags, path, *args]
