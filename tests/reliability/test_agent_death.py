"""The agent inside a sandbox dies (SIGKILL from the host, or sandbox code sending its pid 1
the shutdown signal), on the local and docker providers, with a run in flight.

What must hold: the run fails with a one-line error saying the sandbox ended; status then
says ``stopped`` (with why), ``reap`` finds nothing left (no process, cgroup, directory or
container), and stop stays idempotent.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from nexus_kernel.errors import SandboxError, SandboxStateError
from nexus_kernel.models import Status

from .conftest import wait_until

pytestmark = pytest.mark.timeout(120)


def kill_agent_from_the_host(env, record) -> None:
    handle = record.handle
    if env.name == "local":
        os.kill(handle["child_pid"], signal.SIGKILL)  # the jail's pid 1 is the agent
    else:
        env.provider._client(handle["docker_host"]).api.kill(handle["container_id"], "SIGKILL")


def run_in_background(box, code: str) -> list:
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(box.run("bash", code, timeout=60))
        except SandboxError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    outcome.append(thread)
    return outcome


def assert_stopped_and_clean(env, box) -> None:
    assert wait_until(lambda: env.manager.status(box.id).status is Status.STOPPED, 10)
    record = env.manager.status(box.id)
    assert "ended outside nexus" in (record.error or "")
    env.manager.reap()
    env.assert_gone(box.record)
    assert env.manager.stop(box.id).status is Status.STOPPED  # idempotent
    assert env.manager.stop(box.id).status is Status.STOPPED


def test_sigkill_of_the_agent_from_the_host(env, box):
    outcome = run_in_background(box, "echo started; sleep 1000")
    assert wait_until(lambda: any("sleep 1000" in p for p in box.leftovers()), 10)
    kill_agent_from_the_host(env, box.record)
    thread = outcome.pop(0)
    thread.join(30)
    assert not thread.is_alive()
    failure = outcome[0]
    assert isinstance(failure, SandboxStateError), failure
    assert "ended during the run" in str(failure) and "\n" not in str(failure)
    assert_stopped_and_clean(env, box)
    with pytest.raises(SandboxStateError, match="create a new one"):
        box.run("bash", "echo no")


#: Sandbox code trying to end its own agent, by every signal it could send to its pid 1.
KILL_THE_AGENT = "kill -9 1; kill -STOP 1; kill -TERM 1; kill -INT 1; kill -HUP 1; kill -9 -1; echo still-running"


def test_sandbox_code_cannot_kill_or_stop_its_agent(env, box):
    result = box.run("bash", KILL_THE_AGENT)
    assert result.stdout == "still-running\n", result
    assert box.ok("bash", "echo agent answers") == "agent answers\n"
    assert env.manager.status(box.id).status is Status.ACTIVE
    box.assert_settles()


#: A queued SIGTERM to pid 1 whose siginfo claims the sender is outside the pid namespace
#: (si_pid 0), which rt_sigqueueinfo lets any process forge with si_code SI_QUEUE.
FORGED_SIGTERM = """
import ctypes, os, signal
info = (ctypes.c_int * 32)()          # struct siginfo: 128 bytes
info[0] = signal.SIGTERM              # si_signo
info[2] = -1                          # si_code = SI_QUEUE (a user may forge only si_code < 0)
info[3] = 0                           # si_pid = 0: "from outside"
info[4] = 0                           # si_uid
libc = ctypes.CDLL(None, use_errno=True)
SYS_rt_sigqueueinfo = {"x86_64": 129, "aarch64": 240}[os.uname().machine]
rc = libc.syscall(SYS_rt_sigqueueinfo, 1, signal.SIGTERM, ctypes.byref(info))
print("queued" if rc == 0 else "refused", ctypes.get_errno())
"""


def test_a_forged_queued_signal_cannot_stop_the_agent(env, box):
    result = box.run("python", FORGED_SIGTERM)
    assert result.exit_code == 0 and result.stdout.startswith(("queued", "refused")), result
    time.sleep(0.5)
    assert box.ok("bash", "echo agent answers") == "agent answers\n"
    assert env.manager.status(box.id).status is Status.ACTIVE


def test_a_shutdown_signal_from_outside_ends_the_sandbox_cleanly(env, box):
    """SIGTERM from the host (what ``docker stop`` sends) is the agent's shutdown."""
    if env.name == "local":
        os.kill(box.record.handle["child_pid"], signal.SIGTERM)
    else:
        env.provider._client(box.record.handle["docker_host"]).api.kill(
            box.record.handle["container_id"], "SIGTERM")
    assert_stopped_and_clean(env, box)
