"""`nexus sandbox doctor` after the state database was damaged or lost (the test truncates,
fills with garbage or deletes it), on the local provider: the running sandboxes are found
by their handle files, re-adopted (never destroyed) and usable again; nothing changes without
``--repair``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import Status
from nexus_kernel.store import DB_NAME

from ..conftest import ROOT
from ..security.conftest import ATTACK_LIMITS, provider_ready
from .test_damaged_store import DAMAGE

pytestmark = [pytest.mark.timeout(180), pytest.mark.bwrap]


def nexus(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEXUS_HOME": str(home), "NEXUS_USER": "tester",
           "NEXUS_PROVIDER": "local"}
    return subprocess.run([sys.executable, "-m", "nexus_kernel.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_doctor_readopts_the_running_sandboxes_of_a_damaged_store(tmp_path: Path, damage):
    provider_ready("local")
    settings = Settings.load(home=tmp_path, user="tester", provider="local", **ATTACK_LIMITS)
    manager = SandboxManager(settings)
    boxes = [manager.create(f"box{i}") for i in range(2)]
    manager.run(boxes[0].sandbox_id, "python", "open('kept.txt', 'w').write('still here')")
    ended = manager.create("ended")
    manager.stop(ended.sandbox_id)
    manager.close()
    damage(settings.store_dir / DB_NAME)

    broken = nexus(tmp_path, "sandbox", "list")
    assert broken.returncode == 1 and "sandbox doctor --repair" in broken.stderr

    checked = nexus(tmp_path, "sandbox", "doctor", "--json")  # looks, changes nothing
    assert checked.returncode == 1, checked.stderr
    assert json.loads(checked.stdout)["damaged"]
    assert (settings.store_dir / DB_NAME).exists() == (damage.__name__ != "delete")

    repaired = nexus(tmp_path, "sandbox", "doctor", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stderr
    report = json.loads(repaired.stdout)
    assert sorted(report["readopted"]) == sorted(b.sandbox_id for b in boxes)
    if damage.__name__ != "delete":
        assert Path(report["moved_aside"]).exists()

    again = SandboxManager(settings)
    for box in boxes:
        assert again.status(box.sandbox_id).status is Status.ACTIVE
    assert again.run(boxes[0].sandbox_id, "bash", "cat kept.txt").stdout == "still here"
    fresh = again.create("after")
    assert again.run(fresh.sandbox_id, "bash", "echo ok").stdout == "ok\n"
    assert nexus(tmp_path, "sandbox", "doctor").returncode == 0
    for record in again.list():
        again.stop(record.sandbox_id)
    again.close()
