"""The README's set-up command 1 (`bash scripts/demo.sh`) on a machine that has only its
distribution's own Python, as root and as a user with sudo.

The machine is a Docker container of the offline base image (`nexus-base:bookworm`, the
minimal Debian 12 that scripts/build-image.sh debootstraps), with a copy of the working tree
(tracked and untracked files, not ignored ones: no .venv) in the user's home. In it:

- the stock state is made and checked: nodejs (which the image carries for docker sandboxes)
  is purged; python3 has no ensurepip (`python3 -m venv` fails), no pip, and is marked
  EXTERNALLY-MANAGED (a `pip install` into it would be refused);
- for the sudo user: sudo is installed and a user `dev` may run anything through it
  without a password (the run is non-interactive);
- `bash scripts/demo.sh` runs in full, as the README says: apt (through sudo for `dev`)
  installs python3-venv, bubblewrap and nodejs; .venv is made with the system python3;
  `pip install -e .` and the kernelspec go into it; the demo runs real bubblewrap sandboxes
  (Python, JavaScript, Bash, a session, no network) through the CLI and the API. The
  container gets CAP_SYS_ADMIN, no seccomp or AppArmor profile and an unmasked /proc, which
  bubblewrap needs to make namespaces inside a container (not --privileged: no host
  devices), and stays on Docker's default bridge network to reach PyPI and the apt mirror;
- then .venv's `jupyter kernelspec list` (plain and --json) must show nexus-sandbox,
  "Nexus Sandbox", run by .venv's python, and `nexus --help` must work, by path and after
  `. .venv/bin/activate` as the script's last lines tell the user;
- as root only: demo.sh again with --install-only (a second run reuses .venv), and the
  wheel built from the tree, `pip install`ed into a fresh venv, lists the kernelspec too
  (shipped as data files: no `nexus kernel install`).

Command 2 (`bash scripts/test.sh`) runs in the same kind of container, as root and as the
sudo user, as the README says, with a test selection for pytest's arguments (the whole suite
is what runs this test): apt installs the host packages (Docker engine, debootstrap,
Chromium…), `start-dockerd.sh` starts an engine inside the container, `build-image.sh` builds
both images there (from the host's cached rootfs tarball when there is one, mounted
read-only, else by debootstrap), .venv gets `.[all,test]`, the sudo user is put in the
docker group, then ruff and pytest run from .venv. The inner engine needs more than
bubblewrap does: CAP_NET_ADMIN and CAP_MKNOD, the host's cgroup tree writable, and its data
root on a volume (overlayfs cannot stack on the container's own root). Docker *sandboxes*
do not run in that nested engine (`docker exec` fails in setns), so the selection is the
seed's API examples on the local provider.

Not run here: the AppArmor restriction of user namespaces of Ubuntu >= 23.10 (a host setting: a
container shares the host's kernel); Ubuntu 24.04 unless an image of it is named in
NEXUS_SETUP_IMAGES (space-separated image names, each run like the base image). One can be
made with debootstrap (on Debian 12 its noble script is gutsy's; apt inside the image checks
the archive's signatures with the image's own keyring):

    debootstrap --no-check-gpg --variant=minbase --include=python3 noble ROOTFS \
        http://archive.ubuntu.com/ubuntu /usr/share/debootstrap/scripts/gutsy
    # then a stock sources list: ROOTFS/etc/apt/sources.list.d/ubuntu.sources with
    # noble noble-updates noble-backports (archive) and noble-security, main restricted
    # universe multiverse; then: tar -C ROOTFS -c . | docker import - nexus-setup-test:noble

apt archives and lists (one set per image and user) and pip's cache persist outside the
clone, in $NEXUS_SETUP_TEST_CACHE (default ~/.cache/nexus-kernel/setup-test), so later runs,
fresh clones included, download less. A command's two containers (root and the sudo user)
run at once: each waits mostly on pip, apt and its inner engine. Most of a run is pip
resolving and installing (about 30 s per environment on a loaded 2-core machine; the
downloads themselves matter little: a local wheelhouse did not help).
The host's CA bundle (PIP_CERT, else the system's) is given to pip in the container, so a
TLS-inspecting egress proxy, as on this project's machines, is trusted there as on the host.

Skipped without a Docker engine, the base image, or PyPI and the apt mirror reachable from
a container, unless NEXUS_REQUIRE_DOCKER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import ROOT, docker_not_ready

pytestmark = [pytest.mark.slow, pytest.mark.docker, pytest.mark.timeout(1200)]

BASE_IMAGE = os.environ.get("NEXUS_DOCKER_BASE", "nexus-base:bookworm")
IMAGES = [BASE_IMAGE, *os.environ.get("NEXUS_SETUP_IMAGES", "").split()]
CACHE = Path(os.environ.get("NEXUS_SETUP_TEST_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "nexus-kernel" / "setup-test")
#: Where the host's CA bundle is mounted in the container.
CA_IN_CONTAINER = "/usr/local/share/nexus-host-ca.crt"
#: What bubblewrap needs to make namespaces inside a container (not --privileged: no devices).
NAMESPACE_OPTIONS = ["--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
                     "--security-opt", "apparmor=unconfined",
                     "--security-opt", "systempaths=unconfined"]  # fmt: skip
#: Marks the container script's report lines in its output.
MARK = "@@setup@@"

PROBE = r"""
import glob, re, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1] if len(sys.argv) > 1 else None)
urls = ["https://pypi.org/simple/pip/"]
# The first apt source: one-line (sources.list) or deb822 (*.sources) format.
for path in [*glob.glob("/etc/apt/sources.list"), *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
    text = open(path, errors="replace").read()
    m = (re.search(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.M)
         or re.search(r"^URIs:\s*(\S+)\s*\nSuites:\s*(\S+)", text, re.M))
    if m:
        urls.append(f"{m[1].rstrip('/')}/dists/{m[2]}/Release")
        break
for url in urls:
    try:
        urllib.request.urlopen(url, timeout=15, context=ctx).read(1)
    except Exception as exc:
        sys.exit(f"{url}: {exc}")
"""

# Runs as root in the container: makes the stock machine (and its sudo user) with a copy of
# the tree in the user's home; then a command runs as $RUN_AS through `as_user "$env_line; …"`
# and reports. Each report line starts with MARK.
STOCK_MACHINE = r"""
set -euo pipefail
report() { echo "@@setup@@ $*"; }
export DEBIAN_FRONTEND=noninteractive
mkdir -p /var/cache/apt/archives/partial /var/lib/apt/lists/partial
rm -f /etc/apt/apt.conf.d/docker-clean   # keep downloaded .debs in the mounted cache

# The stock state. The base image carries nodejs (its docker sandboxes need it), which a
# stock install has not: purge it (no download), so the scripts' own apt step is what brings it.
if dpkg -s nodejs >/dev/null 2>&1; then apt-get purge -y -qq nodejs >/dev/null 2>&1; report purged nodejs; fi
if command -v node >/dev/null; then report stock-node yes; else report stock-node no; fi
# No venv (no ensurepip), no pip.
if python3 -c 'import ensurepip' 2>/dev/null; then report stock-ensurepip yes; else report stock-ensurepip no; fi
if python3 -m pip --version >/dev/null 2>&1; then report stock-pip yes; else report stock-pip no; fi
report python3 "$(python3 -V 2>&1)"
if ls /usr/lib/python3*/EXTERNALLY-MANAGED >/dev/null 2>&1; then report externally-managed yes; else report externally-managed no; fi
report os "$(. /etc/os-release; echo "$PRETTY_NAME")"

if [ "$RUN_AS" = root ]; then
    home=/root
    as_user() { bash -c "$1"; }
    chown -R 0:0 /cache/pip
else
    apt-get update -qq && apt-get install -y -qq sudo >/dev/null
    useradd --create-home --shell /bin/bash dev
    echo 'dev ALL=(ALL:ALL) NOPASSWD: ALL' >/etc/sudoers.d/dev
    home=/home/dev
    as_user() { su dev -c "$1"; }
    chown -R dev:dev /cache/pip
fi
cp -a /src "$home/nexus-kernel"
chown -R "$RUN_AS_ID" "$home/nexus-kernel"
env_line="export HOME=$home PIP_CACHE_DIR=/cache/pip PIP_DISABLE_PIP_VERSION_CHECK=1 ${PIP_CERT:+PIP_CERT=$PIP_CERT}; cd $home/nexus-kernel"
"""

# Command 1, exactly as the README says, then what it should have left.
SCRIPT = STOCK_MACHINE + r"""
start=$SECONDS
as_user "$env_line; bash scripts/demo.sh"
report demo-seconds $((SECONDS - start))
report whoami "$(as_user 'id -un')"

as_user "$env_line; .venv/bin/jupyter kernelspec list" | sed "s/^/@@setup@@ kernelspec-list /"
report kernelspec-json "$(as_user "$env_line; .venv/bin/jupyter kernelspec list --json" | tr -d '\n')"
as_user "$env_line; .venv/bin/nexus --help >/dev/null" && report nexus-help ok
# What the script's last lines tell the user to do.
as_user "$env_line; . .venv/bin/activate; command -v nexus; nexus --help >/dev/null; jupyter kernelspec list" \
    | sed "s/^/@@setup@@ activated /"

if [ "$RUN_AS" = root ]; then
    start=$SECONDS
    as_user "$env_line; bash scripts/demo.sh --install-only" | sed "s/^/@@setup@@ rerun /"
    report rerun-seconds $((SECONDS - start))
    # A plain pip install of the built wheel ships the kernelspec (no `nexus kernel install`).
    as_user "$env_line; .venv/bin/pip wheel -q --no-deps -w /tmp/dist . && python3 -m venv /tmp/wheel-env \
        && /tmp/wheel-env/bin/pip install -q /tmp/dist/nexus_kernel-*.whl" >/dev/null
    /tmp/wheel-env/bin/jupyter kernelspec list | sed "s/^/@@setup@@ wheel-kernelspec-list /"
    report wheel-kernel-json "$(tr -d '\n' </tmp/wheel-env/share/jupyter/kernels/nexus-sandbox/kernel.json)"
fi
report done
"""

#: A test selection for command 2 that needs no Docker sandbox (see the module docstring).
COMMAND_2_TESTS = "tests/test_api.py"

# Command 2, as the README says, with a test selection as pytest's arguments.
SCRIPT_2 = STOCK_MACHINE + r"""
start=$SECONDS
as_user "$env_line; bash scripts/test.sh $COMMAND_2_TESTS"
report test-seconds $((SECONDS - start))
report docker-group "$(id -nG "$(as_user 'id -un')")"
report images "$(docker images --format '{{.Repository}}:{{.Tag}}' | sort | tr '\n' ' ')"
as_user "$env_line; .venv/bin/jupyter kernelspec list" | sed "s/^/@@setup@@ kernelspec-list /"
report done
"""
#: What the engine inside the container needs beyond bubblewrap's NAMESPACE_OPTIONS.
ENGINE_OPTIONS = ["--cap-add", "NET_ADMIN", "--cap-add", "MKNOD", "--cgroupns", "host",
                  "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                  "-v", "/var/lib/docker"]  # an anonymous volume, removed with the container


def _docker(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)


def _host_ca() -> Path | None:
    """The CA bundle pip uses on this host (PIP_CERT), else the system's."""
    for candidate in (os.environ.get("PIP_CERT"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _copy_repository(dest: Path) -> None:
    """The working tree without what git ignores (.venv, caches, build output)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        ).stdout.decode().split("\0")
    except (OSError, subprocess.SubprocessError):
        shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
            ".ruff_cache"))
        return
    for name in filter(None, listed):
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


@pytest.fixture(scope="module")
def engine() -> None:
    if shutil.which("docker") is None:
        docker_not_ready("the docker CLI is missing (bash scripts/install-host.sh --docker)")
    if _docker("info", timeout=30).returncode != 0:
        docker_not_ready("the Docker engine is not running (bash scripts/start-dockerd.sh)")


def _ready(image: str) -> list[str]:
    """docker run options for the CA bundle; skips when the image or the registries are
    missing."""
    if _docker("image", "inspect", image).returncode != 0:
        docker_not_ready(f"the image {image} is missing (bash scripts/build-image.sh)")
    ca = _host_ca()
    options = ["-v", f"{ca}:{CA_IN_CONTAINER}:ro", "-e", f"PIP_CERT={CA_IN_CONTAINER}"] if ca else []
    probe = _docker("run", "--rm", "--user", "0", *options, "--entrypoint", "python3", image,
                    "-c", PROBE, *([CA_IN_CONTAINER] if ca else []), timeout=90)
    if probe.returncode != 0:
        docker_not_ready("a container cannot reach PyPI or its apt mirror: "
                         + (probe.stderr.strip().splitlines() or ["?"])[-1])
    return options


def _report(output: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in output.splitlines():
        if line.startswith(MARK + " "):
            key, _, value = line[len(MARK) + 1:].partition(" ")
            found.setdefault(key, []).append(value)
    return found


def _stock_container(image: str, user: str, script: str, tmp_path: Path, extra: list[str],
                     options: list[str]) -> subprocess.CompletedProcess[str]:
    """Runs SCRIPT-like ``script`` as root in a fresh container of ``image`` holding a copy of
    the working tree at /src, with apt's and pip's caches mounted (one set per image and user,
    so the users' containers can run at once)."""
    src = tmp_path / "src"
    _copy_repository(src)
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", image)
    apt = CACHE / "apt" / slug / user
    pip = CACHE / ("pip-root" if user == "root" else "pip-user")
    for folder in (apt / "archives" / "partial", apt / "lists" / "partial", pip):
        folder.mkdir(parents=True, exist_ok=True)
    name = f"nexus-setup-test-{uuid.uuid4().hex[:10]}"
    command = [
        "run", "--rm", "--name", name, "--label", "nexus.setup_test=1", "--user", "0",
        *NAMESPACE_OPTIONS, *options, *extra,
        "-e", "RUN_AS=" + user, "-e", "RUN_AS_ID=" + ("0:0" if user == "root" else "dev:dev"),
        "-v", f"{src}:/src:ro",
        "-v", f"{apt / 'archives'}:/var/cache/apt/archives",
        "-v", f"{apt / 'lists'}:/var/lib/apt/lists",
        "-v", f"{pip}:/cache/pip",
        "--entrypoint", "bash", image, "-c", script,
    ]
    try:
        run = _docker(*command, timeout=1100)
    except subprocess.TimeoutExpired:
        _docker("rm", "-f", name)
        raise
    print(run.stdout + run.stderr)  # shown by pytest -rP or -s
    return run


USERS = ["root", "sudo-user"]


class _Runs:
    """Each command's containers, one per user (and image), started together on first use:
    they wait mostly on pip, apt and the inner engine, so two at once take far less than two
    in a row on two cores. Results are kept for the tests of each user."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._results: dict[tuple[str, str, str], subprocess.CompletedProcess[str]] = {}

    def get(self, kind: str, image: str, user: str, script: str,
            extra: list[str]) -> subprocess.CompletedProcess[str]:
        key = (kind, image, user)
        if key not in self._results:
            options = _ready(image)  # skips (or fails in CI) before anything starts
            with ThreadPoolExecutor(len(USERS)) as pool:
                futures = {
                    (kind, image, each): pool.submit(
                        _stock_container, image, each, script,
                        self._tmp.mktemp(f"{kind}-{each}"), extra, options)
                    for each in USERS
                }
            self._results.update({k: f.result() for k, f in futures.items()})
        return self._results[key]


@pytest.fixture(scope="module")
def runs(engine, tmp_path_factory: pytest.TempPathFactory) -> _Runs:
    return _Runs(tmp_path_factory)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("image", IMAGES)
def test_readme_setup_on_a_stock_machine(runs: _Runs, image: str, user: str) -> None:
    run = runs.get("command-1", image, user, SCRIPT, [])
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    report = _report(run.stdout)
    print(f"{image} as {user}: demo.sh took {report['demo-seconds']} s; "
          f"rerun {report.get('rerun-seconds')} s")

    # The machine was stock: nothing could have installed without the scripts' own steps.
    assert report["stock-ensurepip"] == ["no"] and report["stock-pip"] == ["no"], report
    assert report["stock-node"] == ["no"] and report["externally-managed"] == ["yes"], report
    assert report["whoami"] == (["root"] if user == "root" else ["dev"])
    # The scripts' own apt step (through sudo for the user) brought what was missing.
    installs = [line for line in run.stdout.splitlines() if line.startswith("==> apt-get install ")]
    assert installs and {"python3-venv", "bubblewrap", "nodejs"} <= set(installs[0].split()), installs

    # Command 1 ran real sandboxes (scripts/quickstart.py's lines)...
    assert "Hello from sandbox!" in run.stdout
    assert "session state: 42" in run.stdout and "network: off" in run.stdout
    # ...and said where things went and how to remove them.
    home = "/root" if user == "root" else "/home/dev"
    assert f"nexus-kernel is installed in the virtual environment {home}/nexus-kernel/.venv" in run.stdout
    assert f"remove:   rm -rf {home}/nexus-kernel/.venv {home}/.nexus" in run.stdout

    # The kernel is listed by the environment's jupyter right after command 1.
    kernels = {line.split()[0]: line.split()[-1] for line in report["kernelspec-list"][1:]}
    assert kernels.get("nexus-sandbox") == f"{home}/nexus-kernel/.venv/share/jupyter/kernels/nexus-sandbox", report
    spec = json.loads(report["kernelspec-json"][0])["kernelspecs"]["nexus-sandbox"]["spec"]
    assert spec["display_name"] == "Nexus Sandbox"
    assert spec["argv"][0] == f"{home}/nexus-kernel/.venv/bin/python"
    assert report["nexus-help"] == ["ok"]
    activated = report["activated"]
    assert activated[0] == f"{home}/nexus-kernel/.venv/bin/nexus"
    assert any(line.split()[0] == "nexus-sandbox" for line in activated[2:]), activated

    if user == "root":
        # A second run reuses .venv and the host packages, and still installs the kernelspec.
        rerun = report["rerun"]
        assert not any(line.startswith(("==> python3 -m venv", "==> recreating", "==> apt-get"))
                       for line in rerun), rerun
        assert any(line.startswith("Installed kernelspec nexus-sandbox") for line in rerun), rerun
        wheel = {line.split()[0]: line.split()[-1] for line in report["wheel-kernelspec-list"][1:]}
        assert wheel.get("nexus-sandbox") == "/tmp/wheel-env/share/jupyter/kernels/nexus-sandbox"
        shipped = json.loads(report["wheel-kernel-json"][0])
        assert shipped["display_name"] == "Nexus Sandbox"
        assert shipped == json.loads((ROOT / "kernelspec" / "kernel.json").read_text())
    assert report["done"] == [""]


@pytest.mark.parametrize("user", USERS)
def test_readme_test_command_on_a_stock_machine(runs: _Runs, user: str) -> None:
    extra = [*ENGINE_OPTIONS, "-e", f"COMMAND_2_TESTS={COMMAND_2_TESTS}"]
    cache = Path(os.environ.get("NEXUS_IMAGE_CACHE", "/var/cache/nexus"))
    if cache.is_dir():  # the host's debootstrapped rootfs: the base image without a download
        extra += ["-v", f"{cache}:/var/cache/nexus:ro"]
    run = runs.get("command-2", BASE_IMAGE, user, SCRIPT_2, extra)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    report = _report(run.stdout)
    print(f"{BASE_IMAGE} as {user}: test.sh took {report['test-seconds']} s")
    assert report["stock-ensurepip"] == ["no"] and report["stock-pip"] == ["no"], report
    assert report["externally-managed"] == ["yes"], report

    # The scripts' own apt step brought the host packages of command 2.
    installs = [line for line in run.stdout.splitlines() if line.startswith("==> apt-get install ")]
    assert installs and {"python3-venv", "bubblewrap", "docker.io", "debootstrap", "chromium",
                         "chromium-driver"} <= set(installs[0].split()), installs
    # An engine was started in the container and both images were built in it.
    assert "start-dockerd: the Docker engine is running" in output, output[-6000:]
    assert {"nexus-base:bookworm", "nexus-sandbox:latest"} <= set(report["images"][0].split())
    # The sudo user was put in the docker group, as the script says it does.
    if user == "sudo-user":
        assert "==> adding dev to the docker group" in run.stdout
        assert "docker" in report["docker-group"][0].split()
    # ruff, then pytest from .venv: the selection passed, nothing skipped or failed.
    assert "All checks passed!" in run.stdout
    summary = re.search(r"^(\d+) passed(?:, \d+ warnings?)? in [\d.]+s$", run.stdout, re.M)
    assert summary and int(summary[1]) >= 20, output[-3000:]
    kernels = {line.split()[0] for line in report["kernelspec-list"][1:]}
    assert "nexus-sandbox" in kernels, report
    assert report["done"] == [""]
