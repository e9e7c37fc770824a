"""Shared fixtures: every test gets its own NEXUS_HOME (state store + sandbox files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap)"
)


@pytest.fixture
def nexus_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private NEXUS_HOME for this test, also seen by `nexus` subprocesses."""
    home = tmp_path / "nexus-home"
    monkeypatch.setenv("NEXUS_HOME", str(home))
    monkeypatch.setenv("NEXUS_USER", "tester")
    return home


@pytest.fixture
def nx(nexus_home: Path):
    """A NexusFS on the local provider; stops whatever the test left running."""
    from nexus_kernel import LocalBackend, NexusFS

    api = NexusFS(backend=LocalBackend(nexus_home / "files"), is_admin=True)
    yield api
    for sb in api.sandbox_list()["sandboxes"]:
        if sb["status"] != "stopped":
            api.sandbox_stop(sb["sandbox_id"])
    api.close()


@pytest.fixture
def sandbox(nx) -> str:
    """The id of a fresh active local sandbox."""
    return nx.sandbox_create("test-sandbox")["sandbox_id"]


def nexus(*args: str, input: str | None = None, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real `nexus` CLI in a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "nexus_kernel.cli", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


REQUIRE_DOCKER = os.environ.get("NEXUS_REQUIRE_DOCKER") == "1"


def docker_not_ready(reason: str) -> None:
    """Skip a docker test, or fail it when CI demands Docker (NEXUS_REQUIRE_DOCKER=1)."""
    if REQUIRE_DOCKER:
        pytest.fail(f"NEXUS_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def docker_problem(settings) -> str | None:
    """None when the docker provider can run sandboxes with the current agent, else why not."""
    import hashlib

    from nexus_kernel.errors import SandboxError

    try:
        from nexus_kernel.providers.docker import DockerProvider

        DockerProvider.check_available(settings)
    except (ImportError, SandboxError) as exc:
        return str(exc)
    backend = DockerProvider(settings)
    try:
        labels = backend._client(settings.docker_host).images.get(settings.docker_image).labels
    finally:
        backend.close()
    built = (labels or {}).get("nexus.agent_sha256")
    agent = ROOT / "nexus_kernel" / "agent" / "sandbox_agent.py"
    if built and built != hashlib.sha256(agent.read_bytes()).hexdigest():
        return f"the image {settings.docker_image} has an older agent: bash scripts/build-image.sh"
    return None
