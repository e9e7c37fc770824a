"""One host uid per sandbox (local with a root caller, and docker): kernel per-uid quotas,
keys, ptrace-by-uid and real accounts never cross sandboxes; docker relays run as another
uid than the sandbox's code; local reservations are given back at stop and taken over after a
crash."""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nexus_kernel.providers import docker, uids

from .conftest import PROVIDER_PARAMS, Box, Env, local_processes, provider_ready, wait_until

pytestmark = pytest.mark.timeout(120)

#: The project's uid range of each provider: [base, base + count).
UID_RANGES = {"local": (uids.UID_BASE, uids.UID_COUNT), "docker": (docker.UID_BASE, docker.UID_COUNT)}

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

#: Adds a key named NAME to the user keyring: ``added``, or the errno of the refusal.
ADD_KEY = """
import ctypes, platform
libc = ctypes.CDLL(None, use_errno=True)
number = {"x86_64": 248, "aarch64": 217}[platform.machine()]
KEY_SPEC_USER_KEYRING = -4
key = libc.syscall(number, b"user", b"NAME", b"secret", 6, KEY_SPEC_USER_KEYRING)
print("added" if key >= 0 else f"errno {ctypes.get_errno()}")
"""

READ_KEYS = """
try:
    print(open("/proc/keys").read())
except OSError as exc:
    print(f"unreadable {exc.errno}")
"""


@pytest.fixture(params=PROVIDER_PARAMS)
def env(request: pytest.FixtureRequest, tmp_path: Path):
    provider_ready(request.param)
    if request.param == "local" and os.geteuid() != 0:
        pytest.skip("one uid per sandbox needs a root caller (an unprivileged one has one uid)")
    environment = Env(request.param, tmp_path / "home")
    yield environment
    environment.close()


@pytest.fixture
def local_env(env: Env) -> Env:
    if env.name != "local":
        pytest.skip("uid reservations on the host are the local provider's")
    return env


def host_uids(box: Box) -> dict[int, tuple[int, str]]:
    """pid -> (host uid, command) of the sandbox's processes, as the host sees them."""
    found = {}
    for pid, command in box.env.processes(box.record).items():
        try:
            found[pid] = (os.stat(f"/proc/{pid}").st_uid, command)
        except FileNotFoundError:
            continue  # ended meanwhile
    return found


def is_relay(command: str) -> bool:
    return "sandbox_agent" in command and " relay " in command


def test_every_sandbox_has_a_host_uid_of_its_own_that_no_account_has(env: Env):
    first, second = env.create("first"), env.create("second")
    base, count = UID_RANGES[env.name]
    seen = set()
    for box in (first, second):
        box.ok("bash", "true")  # a stream (docker: a relay) is open
        uid = box.record.handle["uid"]
        assert base <= uid < base + count and uid != 1000
        with pytest.raises(KeyError):
            pwd.getpwuid(uid)  # not a real account
        code = {uid for uid, command in host_uids(box).values() if not is_relay(command)}
        assert code == {uid}
        seen.add(uid)
    assert len(seen) == 2


def test_docker_relays_run_as_another_uid_than_the_sandbox(env: Env, tmp_path: Path):
    """Where the exec relay serves (a caller that cannot join the container's network
    namespace; forced here: NEXUS_DOCKER_DIRECT=0)."""
    if env.name != "docker":
        pytest.skip("local has no relay: the host connects to a socket it made")
    relayed = Env(env.name, tmp_path / "relayed", docker_direct=False)
    try:
        box = relayed.create("relayed")
        box.ok("bash", "true")
        uid = box.record.handle["uid"]
        relays = {uid for uid, command in host_uids(box).values() if is_relay(command)}
        assert relays == {uid + 1}, host_uids(box)
    finally:
        relayed.close()


def test_a_per_uid_quota_exhausted_in_one_sandbox_does_not_reach_another(env: Env):
    """inotify instances are counted per host uid (fs.inotify.max_user_instances)."""
    hog, other = env.create("hog"), env.create("other")
    held = hog.run("python", HOLD_INOTIFY, session="hold")
    count, errno = held.stdout.split()
    assert errno == "24" and int(count) > 0, held  # EMFILE: the uid's quota is used up
    assert other.run("python", ONE_INOTIFY).stdout == "ok\n"


def test_one_sandboxs_key_names_do_not_show_in_anothers_proc_keys(env: Env):
    first, second = env.create("first"), env.create("second")
    name = f"nexus-key-{secrets.token_hex(6)}"
    added = first.ok("python", ADD_KEY.replace("NAME", name))
    # refused by the seccomp filter (local) or the engine's profile (docker): nothing to see
    assert added in ("added\n", "errno 38\n", "errno 1\n"), added
    assert name not in second.ok("python", READ_KEYS)


def test_a_host_process_of_one_sandboxs_uid_cannot_open_anothers_memory(env: Env):
    if os.geteuid() != 0:
        pytest.skip("becoming a sandbox's host uid needs a root caller")
    first, second = env.create("first"), env.create("second")
    second.run("python", "secret = 'hunter2' * 1000\nimport os\nprint(os.getpid())",
               session="s")
    targets = [pid for pid, command in env.processes(second.record).items()
               if "sandbox_agent" not in command or "worker" in command]
    assert targets, env.processes(second.record)
    probe = ("import sys\nfor pid in sys.argv[1:]:\n"
             "    try:\n        open(f'/proc/{pid}/mem', 'rb').close()\n        print('opened')\n"
             "    except OSError as e:\n        print(type(e).__name__)\n")
    uid = first.record.handle["uid"]
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           sys.executable, "-I", "-c", probe, *map(str, targets)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "opened" not in done.stdout and done.stdout.strip(), done.stdout


def test_uids_are_given_back_at_stop_and_taken_over_after_a_crash(local_env: Env):
    env = local_env
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
