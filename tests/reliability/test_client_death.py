"""A client SIGKILLed in the middle of a run, on the local and docker providers: the CLI, an
API process, an IPython process using the magics, the proxy kernel.

What must hold afterwards: the run's code still ends at its own timeout (the agent enforces
it, not the client), after which 0 of its processes are left; the sandbox stays active with
an intact record; another process can use it at once; no lock is left held (stop is
immediate); a sandbox the killed process created is found and managed by the next one.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from nexus_kernel.models import Status

from ..security.conftest import Box
from .conftest import (
    cli,
    kernel_pid,
    kernel_run,
    kernel_sandbox_id,
    read_line,
    sigkill,
    spawn,
    start_kernel,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

#: The run the client is killed in: prints, then would sleep far past its timeout.
LONG_RUN = "echo started; sleep 1000"
RUN_TIMEOUT = 4


def assert_intact_after_the_timeout(env, box, killed_at: float, session: bool = False) -> None:
    """The orphaned run ends at its timeout and the sandbox stays usable. A stateless run
    leaves the agent alone; a session's timeout interrupts the code and keeps the session
    (its interpreter stays, the run's processes go)."""
    record = env.manager.status(box.id)
    assert record.status is Status.ACTIVE and record.handle == box.record.handle
    assert box.ok("bash", "echo usable") == "usable\n"  # while the orphaned run goes on
    assert any("sleep 1000" in p for p in box.leftovers()), "the run should still be going"
    left = max(0.0, RUN_TIMEOUT - (time.monotonic() - killed_at)) + 5
    if session:
        assert wait_until(lambda: not any("sleep 1000" in p for p in box.leftovers()), left)
    else:
        env.assert_settles(box.record, timeout=left)
    start = time.monotonic()
    env.manager.stop(box.id)
    assert time.monotonic() - start < 5, "stop waited: a lock was left held"
    env.assert_gone(box.record)


def test_sigkilled_cli_mid_run(env, box):
    proc = cli(env, "sandbox", "run", box.id, "-l", "bash", "--timeout", str(RUN_TIMEOUT),
               "-c", LONG_RUN)
    assert read_line(proc) == "started\n"
    sigkill(proc)
    assert_intact_after_the_timeout(env, box, time.monotonic())


API_CLIENT = """
import sys
from nexus_kernel import NexusFS
nx = NexusFS()
sandbox_id = nx.sandbox_create("api-victim")["sandbox_id"]
print(sandbox_id, flush=True)
nx.sandbox_run(sandbox_id, "bash", {code!r}, timeout={timeout},
               on_event=lambda e: print(e.data, end="", flush=True))
"""


def test_sigkilled_api_process_mid_run(env):
    proc = spawn(env, API_CLIENT.format(code=LONG_RUN, timeout=RUN_TIMEOUT))
    sandbox_id = read_line(proc).strip()
    assert read_line(proc) == "started\n"
    sigkill(proc)
    killed_at = time.monotonic()
    box = Box(env, env.manager.status(sandbox_id))
    assert_intact_after_the_timeout(env, box, killed_at)


MAGICS_CLIENT = """
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "magics")
shell.run_line_magic("sandbox", "use {sandbox_id}")
shell.run_cell_magic("sandbox", "run --language bash --timeout {timeout}", {code!r})
"""


def test_sigkilled_ipython_with_the_magics_mid_run(env, box):
    proc = spawn(env, MAGICS_CLIENT.format(sandbox_id=box.id, timeout=RUN_TIMEOUT, code=LONG_RUN))
    assert read_line(proc).strip().endswith("started")
    sigkill(proc)
    assert_intact_after_the_timeout(env, box, time.monotonic(), session=True)


def test_sigkilled_cli_while_it_creates(env):
    """A CLI killed while the provider is making its sandbox (record stored, jail or container
    started, not ready yet): the next reap destroys that sandbox and records why; nothing is
    left that nothing would ever clean."""
    proc = cli(env, "sandbox", "create", "killed-while-creating", "--json")
    store = env.manager.store
    found: list[str] = []

    def resource_started() -> bool:
        ids = [d["sandbox_id"] for d in store.records() if d["name"] == "killed-while-creating"]
        if ids:
            listed = env.provider.list_resources(store.store_id)
            found[:] = [r["sandbox_id"] for r in listed if r["sandbox_id"] in ids]
        return bool(found)

    assert wait_until(resource_started, 30, interval=0.002), "the CLI never started creating"
    sigkill(proc)
    reaped = env.manager.reap()
    record = env.manager.status(found[0])
    if record.status is Status.STOPPED:  # killed before it was ready
        assert record.error == "its creator ended before it was ready"
        assert found[0] in reaped["orphans"], reaped
    else:  # the CLI had just finished: a normal sandbox
        assert record.status is Status.ACTIVE
    env.manager.stop(found[0])
    env.assert_gone(record)
    for resource in env.provider.list_resources(store.store_id):
        data = store.get(resource["sandbox_id"])
        assert data is not None and data["status"] != "stopped", json.dumps(resource)[:300]


def test_sigkilled_kernel_mid_cell_leaves_a_sandbox_that_ends_at_its_ttl(env, kernel_path):
    """The kernel keeps its sandbox's TTL moving while a cell runs; SIGKILLed, nothing does
    any more, and the sandbox ends at its (short) TTL by itself (the agent's watchdog), with
    nothing left once reaped."""
    manager, client = start_kernel(env, kernel_path, NEXUS_TTL_MINUTES="0.1",
                                   NEXUS_REAP_INTERVAL="1")
    try:
        kernel_run(client, "started = True")
        sandbox_id = kernel_sandbox_id(client)
        client.execute("import time\nprint('running', flush=True)\ntime.sleep(1000)")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = client.get_iopub_msg(timeout=60)
            if msg["msg_type"] == "stream" and "running" in msg["content"]["text"]:
                break
        os.kill(kernel_pid(manager), signal.SIGKILL)
    finally:
        client.stop_channels()
    box = Box(env, env.manager.status(sandbox_id))
    assert box.alive()
    # TTL 6 s + the run's reservation + the watchdog's slack, with no client alive
    assert wait_until(lambda: not box.alive(), 60), "the sandbox outlived its TTL"
    env.manager.reap()
    assert env.manager.status(sandbox_id).status is Status.STOPPED
    env.assert_gone(box.record)
