"""One host uid per sandbox (local, root caller): kernel per-uid quotas, ptrace-by-uid and
real accounts never cross sandboxes; reservations are given back at stop and taken over
after a crash."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_kernel.providers import uids

from .conftest import Env, local_processes, provider_ready, wait_until

pytestmark = [pytest.mark.bwrap, pytest.mark.timeout(120)]

HOLD_INOTIFY = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
held = []
while True:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    held.append(fd)
print(len(held), ctypes.get_errno())
"""

ONE_INOTIFY = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
print("ok" if fd >= 0 else f"errno {ctypes.get_errno()}")
"""


@pytest.fixture
def env(tmp_path: Path):
    provider_ready("local")
    if os.geteuid() != 0:
        pytest.skip("one uid per sandbox needs a root caller (an unprivileged one has one uid)")
    environment = Env("local", tmp_path / "home")
    yield environment
    environment.close()


def test_every_sandbox_has_a_host_uid_of_its_own_that_no_account_has(env: Env):
    first, second = env.create("first"), env.create("second")
    seen = set()
    for box in (first, second):
        uid = box.record.handle["uid"]
        assert uids.UID_BASE <= uid < uids.UID_BASE + uids.UID_COUNT
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)  # not a real account
        processes = local_processes(box.record.handle)
        assert processes and {os.stat(f"/proc/{pid}").st_uid for pid in processes} == {uid}
        seen.add(uid)
    assert len(seen) == 2


def test_a_per_uid_quota_exhausted_in_one_sandbox_does_not_reach_another(env: Env):
    """inotify instances are counted per host uid (fs.inotify.max_user_instances)."""
    hog, other = env.create("hog"), env.create("other")
    held = hog.run("python", HOLD_INOTIFY, session="hold")
    count, errno = held.stdout.split()
    assert errno == "24" and int(count) > 0, held  # EMFILE: the uid's quota is used up
    assert other.run("python", ONE_INOTIFY).stdout == "ok\n"


def test_a_host_process_of_one_sandboxs_uid_cannot_open_anothers_memory(env: Env):
    first, second = env.create("first"), env.create("second")
    second.run("python", "secret = 'hunter2' * 1000\nimport os\nprint(os.getpid())",
               session="s")
    targets = [pid for pid, command in local_processes(second.record.handle).items()
               if "sandbox_agent" not in command or "worker" in command]
    assert targets, local_processes(second.record.handle)
    probe = ("import sys\nfor pid in sys.argv[1:]:\n"
             "    try:\n        open(f'/proc/{pid}/mem', 'rb').close()\n        print('opened')\n"
             "    except OSError as e:\n        print(type(e).__name__)\n")
    uid = first.record.handle["uid"]
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           sys.executable, "-I", "-c", probe, *map(str, targets)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "opened" not in done.stdout and done.stdout.strip(), done.stdout


def test_uids_are_given_back_at_stop_and_taken_over_after_a_crash(env: Env):
    box = env.create("given-back")
    uid = box.record.handle["uid"]
    assert uid in uids.reserved()
    env.manager.stop(box.id)
    assert uid not in uids.reserved()

    crashed = env.create("crashed")
    uid = crashed.record.handle["uid"]
    os.kill(crashed.record.handle["child_pid"], signal.SIGKILL)  # the jail dies, nobody stops it
    assert wait_until(lambda: not local_processes(crashed.record.handle), 10)
    assert uid in uids.reserved(), "the reservation outlives a crash until someone looks"
    assert uid in uids.remove_stale()
    assert uid not in uids.reserved()
