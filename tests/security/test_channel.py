"""The host-agent channel is out of sandbox code's reach (issue 17, items 1, 3 and 11).

Sandbox code tries what an attacker inside does: it moves the agent's socket away and binds
an impostor in its place (which would read the token from a new host connection, switch the
TTL watchdog off with it and see the user's code), or puts a symlink there pointing at a host
socket; it fills what is left of ``/run/nexus``; it reads ``/proc/self/mountinfo`` for host
paths. On local and docker (and, for local, as an unprivileged caller too)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from nexus_kernel.errors import AgentError

from .conftest import needs_setpriv, run_as_nobody, wait_until

pytestmark = pytest.mark.timeout(120)

#: Runs in a python session (its thread outlives the run): every place the agent's socket
#: could be, moved away and replaced by an impostor, which logs what each new connection
#: sends, uses any token it sees to switch the watchdog off, and answers like the agent.
IMPOSTOR = r'''
import json, os, socket, threading
LOG = "/tmp/impostor.log"
def log(**kw):
    with open(LOG, "a") as f:
        f.write(json.dumps(kw) + "\n")
def steal(real, token):
    s = socket.socket(socket.AF_UNIX)
    s.connect(real)
    s.sendall(json.dumps({"id": "x", "token": token, "op": "deadline", "at": None}).encode() + b"\n")
    log(disabled=s.recv(4096).decode("utf-8", "replace"))
def serve(listener, real):
    while True:
        conn, _ = listener.accept()
        data = conn.recv(65536)
        log(got=data.decode("utf-8", "replace"))
        for line in data.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("token"):
                steal(real, msg["token"])
            conn.sendall(json.dumps({"id": msg.get("id"), "ev": "done", "version": "1",
                                     "nonce": "0" * 32, "proof": "0" * 64}).encode() + b"\n")
candidates = dict.fromkeys(["/run/nexus/agent.sock"] + [
    line.split()[-1] for line in open("/proc/net/unix").read().splitlines()[1:]
    if len(line.split()) > 7])
armed = []
for path in candidates:
    if path.startswith("@"):
        listener = socket.socket(socket.AF_UNIX)
        try:
            listener.bind("\0" + path[1:])
        except OSError as exc:
            log(refused=path, error=str(exc))
            continue
    else:
        try:
            os.rename(path, path + ".real")
        except OSError as exc:
            log(refused=path, error=str(exc))
            continue
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
    listener.listen(8)
    real = path + ".real"
    threading.Thread(target=serve, args=(listener, real), daemon=True).start()
    armed.append(path)
print(json.dumps(armed))
'''

SYMLINK = r'''
import os
for path in ["/run/nexus/agent.sock"]:
    try:
        os.rename(path, path + ".real")
        os.symlink(TARGET, path)
        print("swapped", path)
    except OSError as exc:
        print("refused", path, exc)
'''


@contextlib.contextmanager
def host_listener():
    """A unix socket on the host (where a root host process could be sent) that records
    what anyone sends it."""
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    path = folder / "host.sock"
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.settimeout(2)
            with contextlib.suppress(OSError):
                received.append(conn.recv(65536))
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield str(path), received
    finally:
        stop.set()
        thread.join(2)
        server.close()
        shutil.rmtree(folder)


def _impostor_log(client) -> str:
    return client.run("python", "import os\nprint(open('/tmp/impostor.log').read() "
                      "if os.path.exists('/tmp/impostor.log') else '')")["stdout"]


def test_an_impostor_socket_gets_no_token_no_code_and_cannot_stop_the_watchdog(env, box):
    token = box.record.handle["token"]
    before = env.client(box.record)  # a connection opened before the attack
    try:
        assert before.run("python", IMPOSTOR, session="attacker")["exit_code"] == 0
        fresh = env.client(box.record)  # every new host connection (a CLI run, a restart)
        at = time.time() + 4
        with contextlib.suppress(AgentError):
            fresh.set_deadline(at)
        secret_code = f"print('code-for-the-agent-only-{os.getpid()}')"
        outcome = None
        with contextlib.suppress(AgentError):
            outcome = fresh.run("python", secret_code, timeout=10)
        fresh.close()
        seen = _impostor_log(before)
        assert token not in seen, "the impostor read the token"
        assert "code-for-the-agent-only" not in seen, "the impostor read the user's code"
        assert outcome is not None and "code-for-the-agent-only" in outcome["stdout"], seen
        # the watchdog the fresh connection set still ends the sandbox on time
        assert wait_until(lambda: not box.alive(), at - time.time() + 10), \
            f"the sandbox outlived its watchdog deadline; impostor log: {seen}"
    finally:
        before.close()


def test_sandbox_code_cannot_reach_the_agent_unauthenticated(box):
    probe = r'''
import json, socket
names = ["/run/nexus/agent.sock"] + [l.split()[-1] for l in open("/proc/net/unix").read().splitlines()[1:] if len(l.split()) > 7]
answers = {}
for name in names:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("\0" + name[1:] if name.startswith("@") else name)
        s.sendall(b'{"id": "1", "op": "deadline", "at": null}\n')
        s.settimeout(5)
        answers[name] = s.recv(4096).decode()
    except OSError as exc:
        answers[name] = "unreachable: %s" % exc
print(json.dumps(answers))
'''
    answers = json.loads(box.ok("python", probe).strip().splitlines()[-1])
    for name, answer in answers.items():
        assert '"done"' not in answer, (name, answer)


@pytest.mark.bwrap
def test_a_symlink_in_place_of_the_socket_does_not_redirect_the_host(env, box):
    if env.name != "local":
        pytest.skip("the host follows no path inside a docker container")
    with host_listener() as (path, received):
        swap = box.ok("python", f"TARGET = {path!r}\n{SYMLINK}")
        fresh = env.client(box.record)
        try:
            with contextlib.suppress(AgentError):
                fresh.hello()
            outcome = fresh.run("python", "print(6 * 7)", timeout=10)
        finally:
            fresh.close()
        time.sleep(0.3)
        assert received == [], f"the host was sent to {path}: {received} ({swap})"
        assert outcome["stdout"] == "42\n"


def test_run_nexus_is_capped_or_gone(box):
    fill = r'''
import os
made = size = 0
try:
    os.makedirs("/run/nexus/fill", exist_ok=True)
    for i in range(4000):
        with open("/run/nexus/fill/%d" % i, "wb") as f:
            f.write(b"x" * (2048 if size < 4 << 20 else 0))
        made += 1
        size += 2048 if size < 4 << 20 else 0
except OSError as exc:
    print("stopped:", exc.strerror)
print(made, size)
'''
    made, size = map(int, box.ok("python", fill).strip().splitlines()[-1].split())
    assert made <= 64 and size <= 1 << 20, f"{made} files, {size} bytes written in /run/nexus"


def test_mountinfo_shows_no_host_path_of_the_state(env, box):
    mountinfo = box.ok("bash", "cat /proc/self/mountinfo")
    for secret in (str(env.home), str(env.settings.sandboxes_dir), box.id):
        assert secret not in mountinfo, f"{secret} is visible inside:\n{mountinfo}"


NOBODY_SCRIPT = r'''
import json, sys, time
sys.path[:0] = [ROOT, DEPS]
from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager
from nexus_kernel.agent.client import AgentClient
manager = SandboxManager(Settings.load(home=HOME, user="nobody", provider="local"), is_admin=True)
record = manager.create("channel")
provider = manager.provider("local")
client = lambda: AgentClient(lambda: provider.connect(record.handle), record.handle["token"])
try:
    before = client()
    armed = before.run("python", IMPOSTOR, session="attacker")["stdout"]
    fresh = client()
    try:
        out = fresh.run("python", "print('code-for-the-agent-only')")["stdout"]
    except Exception as exc:
        out = repr(exc)
    fresh.close()
    seen = before.run("python", "import os\nprint(open('/tmp/impostor.log').read() if os.path.exists('/tmp/impostor.log') else '')")["stdout"]
    mountinfo = before.run("bash", "cat /proc/self/mountinfo")["stdout"]
    print(json.dumps({"armed": armed, "out": out, "seen": seen, "token": record.handle["token"],
                      "mountinfo": mountinfo, "home": str(HOME)}))
finally:
    manager.stop(record.sandbox_id)
'''


@pytest.mark.bwrap
@needs_setpriv
def test_an_unprivileged_callers_channel_is_out_of_reach_too():
    found = run_as_nobody(NOBODY_SCRIPT, timeout=100, IMPOSTOR=IMPOSTOR)
    assert found["token"] not in found["seen"], found["seen"]
    assert "code-for-the-agent-only" not in found["seen"], found["seen"]
    assert found["out"] == "code-for-the-agent-only\n", found
    assert found["home"] not in found["mountinfo"]
