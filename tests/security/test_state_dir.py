"""The host-side state of nexus is private to its user (security round 2, item 10): NEXUS_HOME
and every directory nexus creates in it are 0700, files written through the LocalBackend are
0600, and another host uid can read none of it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from nexus_kernel import LocalBackend, NexusFS


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_nexus_home_and_the_backend_are_private(nexus_home):
    assert not nexus_home.exists()
    api = NexusFS(backend=LocalBackend(nexus_home / "files" / "deep"))
    api.write("/reports/out.csv", "secret,1\n")
    api.sandbox_list()
    for folder in (nexus_home, nexus_home / "store", nexus_home / "files",
                   nexus_home / "files" / "deep", nexus_home / "files" / "deep" / "reports"):
        assert _mode(folder) == 0o700, folder
    assert _mode(nexus_home / "files" / "deep" / "reports" / "out.csv") == 0o600


@pytest.mark.skipif(os.getuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to act as another uid")
def test_another_uid_cannot_read_the_store_or_the_files(monkeypatch):
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))  # world-traversable, unlike pytest's tmp
    base.chmod(0o755)
    nexus_home = base / "home"
    monkeypatch.setenv("NEXUS_HOME", str(nexus_home))
    try:
        _probe_as_nobody(nexus_home)
    finally:
        shutil.rmtree(base)


def _probe_as_nobody(nexus_home: Path) -> None:
    api = NexusFS(backend=LocalBackend(nexus_home / "files"))
    api.write("/data.txt", "secret")
    api.sandbox_list()
    for target in (nexus_home / "store" / "cache.db", nexus_home / "files" / "data.txt"):
        probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                "cat", str(target)], capture_output=True, text=True)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, target
