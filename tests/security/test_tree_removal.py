"""Stop removes whatever a sandbox wrote, however deep or hostile, and touches nothing else
(security round 2, items 3 and 7): a 1,500-level tree, directories made read-only or
unreadable, and symlinks to host files placed where the old ``rmtree`` error handler
``chmod``-ed them by name (which, for a non-root caller, changed the caller's own files)."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nexus_kernel.providers.removal import remove_tree

from ..conftest import ROOT

DEPTH = 1500


def _hostile_tree(top: Path, host_file: Path) -> None:
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEPTH):  # deeper than Python's recursion limit
        os.mkdir("d", dir_fd=fd)
        deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
    ro = top / "ro"
    ro.mkdir()
    os.symlink(host_file, ro / "link-to-host")
    (ro / "file").write_text("y")
    ro.chmod(0o500)
    locked = top / "locked"
    (locked / "inner").mkdir(parents=True)
    locked.chmod(0o000)
    os.symlink(host_file.parent, top / "link-to-host-dir")


def _check(top: Path, host_file: Path) -> None:
    assert not os.path.lexists(top)
    assert host_file.read_text() == "host secret"
    assert host_file.stat().st_mode & 0o777 == 0o644
    assert host_file.parent.stat().st_mode & 0o777 == 0o755


@pytest.fixture
def host(tmp_path: Path) -> Path:
    folder = tmp_path / "host"
    folder.mkdir()
    folder.chmod(0o755)
    secret = folder / "secret.txt"
    secret.write_text("host secret")
    secret.chmod(0o644)
    return secret


def test_a_deep_hostile_tree_is_removed_without_following_links(tmp_path, host):
    top = tmp_path / "sandbox-run"
    _hostile_tree(top, host)
    remove_tree(top)
    _check(top, host)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to act as an unprivileged caller")
def test_an_unprivileged_caller_removes_it_too_and_changes_no_file_of_its_own():
    outer = Path(tempfile.mkdtemp(dir="/var/tmp"))  # reachable by uid 65534, unlike /tmp/pytest-*
    try:
        _as_nobody(outer)
    finally:
        shutil.rmtree(outer)


def _as_nobody(outer: Path) -> None:
    outer.chmod(0o755)
    base = outer / "caller"
    base.mkdir()
    host = outer / "host" / "secret.txt"
    host.parent.mkdir(mode=0o755)
    host.write_text("host secret")
    host.chmod(0o644)
    for path in (base, host.parent, host):
        os.chown(path, 65534, 65534)
    top = base / "sandbox-run"
    code = (f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path\n"
            f"from nexus_kernel.providers.removal import remove_tree\n"
            f"DEPTH = {DEPTH}\n{inspect.getsource(_hostile_tree)}\n"
            f"_hostile_tree(Path({str(top)!r}), Path({str(host)!r}))\n"
            f"remove_tree(Path({str(top)!r}))\n")
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=base, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    _check(top, host)


def test_stop_removes_the_sandbox_dir_after_a_deep_tree(env, box):
    if env.name != "local" or box.record.handle.get("disk") != "host-dir":
        pytest.skip("nothing the sandbox writes is on the host's disk (bubblewrap < 0.8 only)")
    box.ok("bash", "ln -s /etc/passwd link\n"
                   "for i in $(seq 1100); do mkdir d && cd d || exit 1; done", timeout=150)
    folder = Path(box.record.handle["dir"])
    box.stop()
    assert not folder.exists()
