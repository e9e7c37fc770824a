"""The shared store under faults, on the local and docker providers: a per-sandbox lock whose
holder is SIGKILLed, and concurrent stops of one sandbox."""

from __future__ import annotations

import threading
import time

import pytest

from nexus_kernel.models import Status

from .conftest import read_line, sigkill, spawn

pytestmark = pytest.mark.timeout(120)

LOCK_HOLDER = """
import time
from nexus_kernel.config import Settings
from nexus_kernel.store import Store
store = Store(Settings.load().store_dir)
with store.lock({sandbox_id!r}):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_lock_whose_holder_was_sigkilled_is_taken_over_at_once(env, box):
    holder = spawn(env, LOCK_HOLDER.format(sandbox_id=box.id))
    assert read_line(holder) == "locked\n"
    stopped: list = []
    stopper = threading.Thread(target=lambda: stopped.append(env.manager.stop(box.id)))
    stopper.start()
    stopper.join(1.0)
    assert stopper.is_alive(), "stop must wait while the lock's holder is alive"
    sigkill(holder)  # dies holding the lock (no `finally` runs)
    start = time.monotonic()
    stopper.join(10)
    assert not stopper.is_alive() and time.monotonic() - start < 2, "the dead holder's lock stuck"
    assert stopped[0].status is Status.STOPPED
    env.assert_gone(box.record)


def test_concurrent_stops_of_one_sandbox_all_succeed(env, box):
    results: list = []
    errors: list = []

    def stop() -> None:
        try:
            results.append(env.manager.stop(box.id).status)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=stop) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == [] and results == [Status.STOPPED] * 6
    env.assert_gone(box.record)
