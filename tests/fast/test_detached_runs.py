"""Detached runs on the fast layer: the TTL a running detached run holds (fake clock), and
the agent's run registry in-process (bounded finished runs, replay cut, a follower that
falls behind)."""

from __future__ import annotations

import threading

from nexus_kernel.agent.sandbox_agent import registry
from nexus_kernel.agent.sandbox_agent.wire import REPLAY_BYTES
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import Status

from .conftest import FakeClock


def test_a_detached_run_holds_the_ttl_until_its_timeout(manager: SandboxManager,
                                                        clock: FakeClock) -> None:
    sandbox_id = manager.create("held", ttl_minutes=1).sandbox_id
    run_id = manager.start(sandbox_id, "bash", "sleep 30", timeout=300)
    manager.run(sandbox_id, "bash", "true")  # a later run's touch does not shorten it
    manager.touch(sandbox_id)  # nor does a keeper's
    assert manager.get(sandbox_id).expires_at >= clock() + 300 + 60
    clock.advance(120)  # past the TTL: the run still runs, the sandbox stays
    manager.reap_expired(force=True)
    assert manager.get(sandbox_id).status is Status.ACTIVE
    assert [r["state"] for r in manager.runs(sandbox_id)] == ["running", "finished"]
    assert manager.interrupt_run(run_id) == 1
    clock.advance(300)  # past the run's timeout and the TTL
    manager.reap_expired(force=True)
    assert manager.get(sandbox_id).status is Status.STOPPED


class Conn:
    closed = False


class Collect:
    """A reply that keeps what it is sent; ``gate`` holds each send until set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.conn = Conn()
        self.events: list = []
        self.gate = gate

    def event(self, ev: str, **fields) -> None:
        if self.gate is not None:
            self.gate.wait()
        self.events.append((ev, fields.get("data")))


def test_the_registry_keeps_running_runs_and_the_last_finished_ones() -> None:
    runs = registry.Registry()
    running = runs.start(None, "bash", None, 30, True)
    for _ in range(registry.KEEP_FINISHED + 5):
        runs.start(None, "bash", None, 30, False).finish({"exit_code": 0})
    runs.start(None, "bash", None, 30, False)  # trims
    listed = runs.list()
    assert listed[0]["run_id"] == running.id and listed[0]["state"] == "running"
    assert sum(r["state"] == "finished" for r in listed) == registry.KEEP_FINISHED
    taken = runs.start(running.id, "bash", None, 30, False)
    assert taken is None  # a run id in use is refused


def test_a_replay_says_what_it_misses_from_the_start_and_while_behind() -> None:
    entry = registry.RunEntry("r" + "0" * 12, "bash", None, None, True)
    line = "x" * 999 + "\n"
    count = 2 * REPLAY_BYTES // len(line)
    for _ in range(count):
        entry.add("stdout", {"data": line})
    entry.finish({"exit_code": 0})
    whole = Collect()
    done = whole.conn and entry.replay(whole, follow=True)
    assert done["exit_code"] == 0 and done["state"] == "finished"
    kept = len(whole.events) * len(line)
    assert done["dropped_bytes"] == (count - len(whole.events)) * len(line)
    assert kept + done["dropped_bytes"] == count * len(line)

    live = registry.RunEntry("r" + "1" * 12, "bash", None, None, False)
    gate = threading.Event()
    slow = Collect(gate)
    live.add("stdout", {"data": "first\n"})
    result: dict = {}
    follower = threading.Thread(target=lambda: result.update(live.replay(slow, follow=True)))
    follower.start()  # blocked sending "first"
    for _ in range(count):  # the run never waits for its follower
        live.add("stdout", {"data": line})
    live.finish({"exit_code": 3})
    gate.set()
    follower.join(10)
    assert result["exit_code"] == 3 and result["dropped_bytes"] > REPLAY_BYTES // 2
    assert slow.events[0] == ("stdout", "first\n")
    assert (len(slow.events) - 1) * len(line) + result["dropped_bytes"] == count * len(line)
