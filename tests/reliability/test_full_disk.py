"""A full disk under NEXUS_HOME (a small tmpfs the test mounts itself; root only), local
provider: reads, ``list``, ``status``, ``providers`` and ``stop`` keep working, writes fail with
one line naming the full disk, nothing stored is lost, and freeing space is the only repair."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import DiskFullError
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import Status

from ..conftest import ROOT
from ..security.conftest import ATTACK_LIMITS, provider_ready

pytestmark = [pytest.mark.timeout(180), pytest.mark.bwrap]


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 16 MB tmpfs mounted at a fresh directory, unmounted afterwards."""
    yield from mounted(tmp_path / "fs")


@pytest.fixture
def small_sandboxes_fs(tmp_path: Path):
    """NEXUS_HOME on the ordinary disk, its ``sandboxes`` directory on a 16 MB tmpfs."""
    yield from mounted(tmp_path / "home" / "sandboxes")


def mounted(mount: Path, size: str = "16m"):
    provider_ready("local")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem holding ``directory`` to the last byte; the filler file."""
    filler = directory / "filler"
    # unbuffered: a buffered file kept the part of a write the disk refused, and raised
    # ENOSPC again when closed, whenever the free space was not a multiple of 64 KiB
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


def manager(home: Path) -> SandboxManager:
    settings = Settings.load(home=home, user="tester", provider="local", **ATTACK_LIMITS)
    return SandboxManager(settings, is_admin=True)


def nexus(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEXUS_HOME": str(home), "NEXUS_USER": "tester",
           "NEXUS_PROVIDER": "local"}
    return subprocess.run([sys.executable, "-m", "nexus_kernel.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def one_line_disk_full(done: subprocess.CompletedProcess[str], where: Path) -> None:
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "disk holding" in lines[0] and "is full" in lines[0] and str(where) in lines[0]


def test_a_full_state_disk_keeps_reads_and_stop_working(small_fs: Path):
    home = small_fs / "home"
    first = manager(home)
    kept = first.create("kept")
    ended = first.create("ended")
    assert first.run(kept.sandbox_id, "python", "print(6*7)").stdout == "42\n"
    first.close()
    filler = fill(small_fs)

    # the CLI: reads work, writes are one line, stop works
    listed = nexus(home, "sandbox", "list")
    assert listed.returncode == 0 and kept.sandbox_id in listed.stdout, listed.stderr
    assert ended.sandbox_id in listed.stdout
    status = nexus(home, "sandbox", "status", kept.sandbox_id)
    assert status.returncode == 0 and "active" in status.stdout, status.stderr
    assert nexus(home, "sandbox", "providers").returncode == 0
    one_line_disk_full(nexus(home, "sandbox", "create", "more"), home / "store")
    one_line_disk_full(nexus(home, "sandbox", "run", kept.sandbox_id, "-c", "print(1)"),
                       home / "store")
    stopped = nexus(home, "sandbox", "stop", ended.sandbox_id)
    assert stopped.returncode == 0, stopped.stderr

    # the API, in this process
    full = manager(home)
    assert {r.sandbox_id for r in full.list()} == {kept.sandbox_id, ended.sandbox_id}
    assert full.status(kept.sandbox_id).status is Status.ACTIVE
    with pytest.raises(DiskFullError, match="is full"):
        full.create("more")
    assert full.status(ended.sandbox_id).status is Status.STOPPED  # the resource is gone
    full.close()

    # space freed: everything works again, nothing was lost, no repair
    filler.unlink()
    again = manager(home)
    assert again.status(ended.sandbox_id).status is Status.STOPPED
    assert again.run(kept.sandbox_id, "python", "print(6*7)").stdout == "42\n"
    new = again.create("after")
    assert again.run(new.sandbox_id, "bash", "echo ok").stdout == "ok\n"
    assert {r.sandbox_id for r in again.list()} >= {kept.sandbox_id, ended.sandbox_id,
                                                    new.sandbox_id}
    again.stop(kept.sandbox_id)
    again.stop(new.sandbox_id)
    again.close()


def test_a_full_disk_under_a_long_lived_manager_fails_writes_in_one_line(small_fs: Path):
    """The store was opened before the disk filled (a kernel, a notebook's API object)."""
    home = small_fs / "home"
    live = manager(home)
    box = live.create("box")
    filler = fill(small_fs)
    with pytest.raises(DiskFullError, match=str(home)):
        for _ in range(50):  # sqlite may still place a few pages in its free list
            live.create("more")
    assert {r.status for r in live.list()} >= {Status.ACTIVE}
    assert live.stop(box.sandbox_id).status is Status.STOPPED
    filler.unlink()
    assert live.status(box.sandbox_id).status is Status.STOPPED
    for record in live.list():
        if record.status is not Status.STOPPED:
            live.stop(record.sandbox_id)
    live.close()


def test_a_full_sandboxes_disk_fails_create_in_one_line_and_keeps_the_rest(
        small_sandboxes_fs: Path):
    home = small_sandboxes_fs.parent
    first = manager(home)
    kept = first.create("kept")
    filler = fill(small_sandboxes_fs)
    one_line_disk_full(nexus(home, "sandbox", "create", "more"), small_sandboxes_fs)
    with pytest.raises(DiskFullError, match=str(small_sandboxes_fs)):
        first.create("more")
    assert [r.sandbox_id for r in first.list()] == [kept.sandbox_id]  # no trace of the failures
    assert sorted(p.name for p in small_sandboxes_fs.iterdir()) == sorted(
        [kept.sandbox_id, "filler"])
    assert first.run(kept.sandbox_id, "python", "print(6*7)").stdout == "42\n"
    listed = nexus(home, "sandbox", "list")
    assert listed.returncode == 0 and kept.sandbox_id in listed.stdout
    filler.unlink()
    new = first.create("after")
    assert first.run(new.sandbox_id, "bash", "echo ok").stdout == "ok\n"
    first.stop(kept.sandbox_id)
    first.stop(new.sandbox_id)
    first.close()


class _Home:
    """What ``start_kernel`` needs of an Env: the environment of a process on ``home``."""

    def __init__(self, home: Path):
        self.home = home

    def environ(self) -> dict[str, str]:
        limits = {f"NEXUS_{key.upper()}": str(value) for key, value in ATTACK_LIMITS.items()}
        return {**os.environ, **limits, "NEXUS_HOME": str(self.home), "NEXUS_USER": "tester",
                "NEXUS_PROVIDER": "local"}


def test_the_kernel_shows_a_full_disk_in_the_cell_and_stays_alive(small_fs: Path,
                                                                   kernel_path):
    from .conftest import kernel_run, start_kernel

    home = small_fs / "home"
    before = manager(home)
    before.stop(before.create("seed").sandbox_id)  # a store that exists, as in real use
    before.close()
    filler = fill(small_fs)
    kernel, client = start_kernel(_Home(home), kernel_path)
    try:
        reply, _ = kernel_run(client, "print(6*7)")
        assert reply["status"] == "error" and "is full" in reply["evalue"], reply
        assert "\n" not in reply["evalue"] and str(home) in reply["evalue"]
        assert kernel.is_alive()
        filler.unlink()
        texts: list[str] = []
        reply = client.execute_interactive(
            "print(6*7)", timeout=120,
            output_hook=lambda m: texts.append(m["content"].get("text", "")))
        assert reply["content"]["status"] == "ok" and "42" in "".join(texts)
    finally:
        client.stop_channels()
        kernel.shutdown_kernel(now=False)
    after = manager(home)
    assert all(r.status is Status.STOPPED for r in after.list())
    after.close()


def test_the_magics_show_a_full_disk_in_one_line_and_keep_working(small_fs: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from magics import SandboxMagics

    home = small_fs / "home"
    for key, value in _Home(home).environ().items():
        monkeypatch.setenv(key, value)
    shell = InteractiveShell.instance()
    magics = SandboxMagics(shell=shell)
    shell.register_magics(magics)
    try:
        shell.run_line_magic("sandbox", "create kept")
        filler = fill(small_fs)
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("sandbox", "create more")
        message = str(info.value)
        assert "\n" not in message and "is full" in message and str(home) in message, message
        listed = shell.run_line_magic("sandbox", "list")
        assert "kept" in repr(listed), repr(listed)
        filler.unlink()
        with capture_output() as ran:
            shell.run_cell_magic("sandbox", "run", "print(6*7)")
        assert ran.stdout == "42\n"
    finally:
        for record in magics.manager.list():
            if record.status is not Status.STOPPED:
                magics.manager.stop(record.sandbox_id)
        magics.close()
        shell.configurables.remove(magics)
