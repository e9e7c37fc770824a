"""Shared fixtures: every test gets its own NEXUS_HOME (state store + sandbox files)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap)"
)


def inert_html(html: str) -> str:
    """The content of sanitised sandbox HTML (nexus_kernel/untrusted), checking its wrapper:
    a ``<div>`` whose own class scopes the output's style rules."""
    import re

    match = re.fullmatch(r'<div class="nx-[0-9a-f]{8}">(.*)</div>', html, re.DOTALL)
    assert match, f"not sanitised sandbox HTML: {html[:200]!r}"
    return match.group(1)


@pytest.fixture(autouse=True, scope="session")
def _lean_by_default():
    """Tests get the lean local sandbox unless they ask for the default environment (the
    ``datascience`` fixture): each test has its own NEXUS_HOME, where the default template
    is not built, and most tests need only the sandbox's python. Session-wide, so module
    fixtures that load Settings see it too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEXUS_DEFAULT_TEMPLATE", "minimal")
        yield


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
        stdin=subprocess.DEVNULL if input is None else None,  # not the test runner's stdin
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
    """None when the docker provider can run sandboxes (the agent is not in the image: any
    image runs the current one), else why not."""
    from nexus_kernel.errors import SandboxError

    try:
        from nexus_kernel.providers.docker import DockerProvider

        DockerProvider.check_available(settings)
    except (ImportError, SandboxError) as exc:
        return str(exc)
    return None


#: Where session-built test templates are kept between runs (not per-test NEXUS_HOMEs).
TEMPLATE_CACHE = Path(os.environ.get("NEXUS_TEST_CACHE") or ROOT / ".pytest_cache" / "nexus-test")
#: The test template: matplotlib and pandas from PyPI (what the notebooks and the browser
#: tests display), built once per cache.
MATPLOTLIB_TEMPLATE = "mpl-pandas"


@pytest.fixture(scope="session")
def _matplotlib_build() -> Path | None:
    """A local template with matplotlib and pandas, built once and reused by later runs;
    None when the sandbox's python3 has both already. Skips when it cannot be built."""
    from nexus_kernel import templates
    from nexus_kernel.config import Settings
    from nexus_kernel.errors import SandboxError

    settings = Settings.load(home=TEMPLATE_CACHE)
    python = templates.sandbox_python(settings)
    check = [python, "-c", "import matplotlib, pandas"]
    if subprocess.run(check, capture_output=True).returncode == 0:
        return None
    target = templates.template_dir(settings, MATPLOTLIB_TEMPLATE)
    if not (target / "template.json").is_file():
        try:
            templates.create_template(settings, MATPLOTLIB_TEMPLATE, ["matplotlib", "pandas"],
                                      quiet=True)
        except SandboxError as exc:
            pytest.skip(f"matplotlib/pandas are not in the sandbox python and the template cannot be "
                        f"built: {exc}")
    return target


@pytest.fixture
def matplotlib_template(_matplotlib_build: Path | None, nexus_home: Path) -> str | None:
    """The template id giving sandboxes matplotlib (linked into this test's NEXUS_HOME), or
    None when no template is needed."""
    if _matplotlib_build is None:
        return None
    link = nexus_home / "templates" / MATPLOTLIB_TEMPLATE
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(_matplotlib_build, target_is_directory=True)
    return MATPLOTLIB_TEMPLATE


@pytest.fixture(scope="session")
def _datascience_build() -> Path:
    """The default environment ("datascience" recipe) built once in TEMPLATE_CACHE (what
    scripts/test.sh builds before pytest; a rebuild with the same recipe is skipped)."""
    from nexus_kernel import templates
    from nexus_kernel.config import Settings
    from nexus_kernel.errors import SandboxError

    settings = Settings.load(home=TEMPLATE_CACHE)
    try:
        templates.create_template(settings, "datascience", [], quiet=True)
    except SandboxError as exc:
        pytest.fail(f"the default environment cannot be built: {exc}", pytrace=False)
    return templates.template_dir(settings, "datascience")


@pytest.fixture
def datascience(_datascience_build: Path, nexus_home: Path,
                monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's NEXUS_HOME has the built default environment and uses it as a user's
    does: sandboxes created with no template get it."""
    monkeypatch.delenv("NEXUS_DEFAULT_TEMPLATE")
    link = nexus_home / "templates" / "datascience"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(_datascience_build, target_is_directory=True)
    return link


#: A docker image with no project code: scripts/build-image.sh's base (python3, nodejs, bash,
#: procps) without its user 1000 and its empty /opt/nexus-agent.
FOREIGN_IMAGE = "nexus-foreign:test"
FOREIGN_DOCKERFILE = (
    "FROM nexus-base:bookworm\n"
    "RUN userdel --remove user && rm -rf /opt/nexus-agent /run/nexus\n"
    'LABEL nexus.test="foreign"\n'
)


@pytest.fixture(scope="session")
def foreign_image() -> str:
    """FOREIGN_IMAGE, built offline from nexus-base:bookworm once (the layer cache makes a
    rebuild ~1 s); skips (fails in CI) when docker or the base is missing."""
    import io

    from nexus_kernel.config import Settings

    problem = docker_problem(Settings.load())
    if problem:
        docker_not_ready(problem)
    import docker

    client = docker.from_env()
    try:
        client.images.get("nexus-base:bookworm")
        client.images.build(fileobj=io.BytesIO(FOREIGN_DOCKERFILE.encode()), tag=FOREIGN_IMAGE,
                            rm=True, network_mode="none")
    except docker.errors.ImageNotFound:
        docker_not_ready("nexus-base:bookworm is missing: bash scripts/build-image.sh")
    finally:
        client.close()
    return FOREIGN_IMAGE


@pytest.fixture
def tiny_package(tmp_path):
    """A local pure-Python wheel, so the build needs no network."""
    wheel = tmp_path / "tinypkg-1.0-py3-none-any.whl"
    info = "tinypkg-1.0.dist-info"
    files = {
        "tinypkg/__init__.py": "ANSWER = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n")
    return wheel
