"""A damaged or lost state database (truncated, garbage bytes, deleted by the test) is
detected when the store opens, with one line naming the file, through the API and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_kernel.errors import StoreDamagedError
from nexus_kernel.store import DB_NAME, Store

from ..conftest import ROOT

pytestmark = pytest.mark.timeout(60)


def used_store(home: Path) -> Path:
    """A store that holds a sandbox record (and so knows its id), closed; its directory."""
    store = Store(home / "store")
    store.insert({"sandbox_id": "sb_1", "owner": "tester", "status": "active",
                  "blob": "x" * 20000})
    for i in range(30):
        store.set_meta(f"filler:{i}", "y" * 4000)
    assert store.store_id.startswith("st_")
    store.close()
    return home / "store"


def truncate(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def garbage(db: Path) -> None:
    db.write_bytes(os.urandom(db.stat().st_size))


def empty(db: Path) -> None:
    os.truncate(db, 0)


def delete(db: Path) -> None:
    db.unlink()


DAMAGE = [truncate, garbage, empty, delete]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_database_is_named_at_open(tmp_path: Path, damage):
    db = used_store(tmp_path) / DB_NAME
    damage(db)
    with pytest.raises(StoreDamagedError) as caught:
        Store(tmp_path / "store")
    assert str(db) in str(caught.value) and "nexus sandbox doctor --repair" in str(caught.value)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_the_cli_says_so_in_one_line(tmp_path: Path, damage):
    db = used_store(tmp_path) / DB_NAME
    damage(db)
    env = {**os.environ, "NEXUS_HOME": str(tmp_path), "NEXUS_USER": "tester"}
    done = subprocess.run([sys.executable, "-m", "nexus_kernel.cli", "sandbox", "list"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(db) in lines[0] and "damaged" in lines[0], done.stderr


def test_a_new_store_is_not_taken_for_a_lost_one(tmp_path: Path):
    store = Store(tmp_path / "store")
    assert list(store.records()) == []
    store.close()
