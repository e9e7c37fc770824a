"""The host-agent channel of the cloud providers (E2B, Modal) is out of sandbox code's reach
(issue 20 item 5, issue 17 item 1 on cloud), at the SDK boundary with the fakes.

The fakes run the real agent and the real relays as local processes, in one host network
namespace and as one host uid (``tests/fakes/_vm.py``): the socket attacks below are real
(an abstract name is taken or not, a relay checks its peer with SO_PEERCRED), while the
E2B users are bookkeeping (``e2b_fake`` records who wrote a file and who runs a command).
What the uid split itself blocks is checked with a real other uid when the tests run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nexus_kernel.agent.client import AgentClient
from nexus_kernel.config import Settings
from nexus_kernel.errors import AgentError
from nexus_kernel.providers import e2b as e2b_provider
from nexus_kernel.providers.e2b import E2BProvider
from nexus_kernel.providers.modal import ModalProvider

from ..fakes import e2b_fake, modal_fake
from ..test_cloud_providers import spec

pytestmark = pytest.mark.timeout(120)

#: Sandbox code: every place the agent's socket may be (the file sockets of earlier
#: versions, the abstract names in /proc/net/unix) is moved away and replaced by a relay of
#: its own to the real agent (so the handshake passes) that logs what each new host
#: connection sends. Abstract names in use cannot be bound: that is logged too.
IMPOSTOR = r'''
import os, socket, threading
HOME = os.environ["HOME"]
LOG = os.path.join(HOME, "impostor.log")
def log(text):
    with open(LOG, "a") as f:
        f.write(text + "\n")
def pump(src, dst, record):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if record:
                log("got " + data.decode("utf-8", "replace"))
            dst.sendall(data)
    except OSError:
        pass
def serve(listener, real):
    while True:
        conn, _ = listener.accept()
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(real)
        threading.Thread(target=pump, args=(conn, upstream, True), daemon=True).start()
        threading.Thread(target=pump, args=(upstream, conn, False), daemon=True).start()
files = [os.path.join(HOME, ".nexus/run/agent.sock"),
         os.path.normpath(os.path.join(HOME, "../../run/nexus/agent.sock"))]
names = [line.split()[-1] for line in open("/proc/net/unix").read().splitlines()[1:]
         if line.split()[-1].startswith("@nexus-")]
for path in files:
    if os.path.exists(path):
        os.rename(path, path + ".real")
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen(8)
        threading.Thread(target=serve, args=(listener, path + ".real"), daemon=True).start()
        log("armed " + path)
for name in names:
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind("\0" + name[1:])
    except OSError as exc:
        log("refused " + name + " " + str(exc))
        continue
    listener.listen(8)
    log("armed " + name)
print("attack done")
'''

#: Sandbox code on E2B: what every later command's login shell (``bash -l``) of the sandbox
#: user runs first; an ``exec`` there would put its own process in the place of the relay.
DOTFILE = r'''
import os
with open(os.path.join(os.environ["HOME"], ".bash_profile"), "w") as f:
    f.write('echo "$$ $0" >> "$HOME/hijacked.log"\n')
print("planted")
'''


@pytest.fixture(autouse=True)
def clean_cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for name in ("E2B_API_KEY", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    yield
    e2b_fake.reset()
    modal_fake.reset()


@pytest.fixture(params=["e2b", "modal"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path):
    """(provider, a function giving the fake sandbox's home on the host for a handle)."""
    settings = Settings.load(home=tmp_path / "nexus", user="tester", e2b_api_key="k")
    if request.param == "e2b":
        provider = E2BProvider(settings, sdk=e2b_fake)
        return provider, lambda h: e2b_fake.SANDBOXES[h["sandbox_id"]].vm.host_path("/home/user")
    provider = ModalProvider(settings, sdk=modal_fake, token_id="a", token_secret="b")
    return provider, lambda h: modal_fake.SANDBOXES[h["sandbox_id"]].vm.host_path("/home/user")


def client(provider, handle) -> AgentClient:
    """A host client whose every connection is a new relay (a new ``connect``)."""
    return AgentClient(lambda: provider.connect(handle), handle["token"])


def test_e2b_token_never_reaches_the_daemon_log(tmp_path: Path) -> None:
    """E2B's daemon logs each command line and every stdin byte: the token is in neither,
    and its file is gone before the agent answers (0.5 s)."""
    provider = E2BProvider(Settings.load(home=tmp_path, e2b_api_key="k"), sdk=e2b_fake)
    handle = provider.create(spec())
    assert client(provider, handle).run("python", "print(6 * 7)", timeout=30)["stdout"] == "42\n"
    record = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    assert any(kind == "stdin" for kind, _, _ in record.daemon_log)  # the relays' traffic
    token = handle["token"].encode()
    for kind, _, logged in record.daemon_log:
        assert token not in (logged if isinstance(logged, bytes) else logged.encode()), kind
    home = record.vm.host_path("/home/user")
    assert not [p.name for p in home.iterdir() if p.name.startswith(".nexus")]


def test_sandbox_code_cannot_take_the_agents_socket(cloud) -> None:
    """Sandbox code moves the agent's socket and binds a forwarding impostor in its place
    (or tries to take its name): a new connection still reaches the real agent directly and
    the impostor sees none of its traffic (about 1 s each)."""
    provider, home_of = cloud
    handle = provider.create(spec())
    attacker = client(provider, handle)
    result = attacker.run("python", IMPOSTOR, session="attack", timeout=30)
    assert result["stdout"] == "attack done\n", result
    log = home_of(handle) / "impostor.log"
    marker = "marker-" + os.urandom(4).hex()
    fresh = client(provider, handle)
    assert fresh.run("python", f"print({marker!r})", timeout=30)["stdout"] == marker + "\n"
    seen = log.read_text() if log.exists() else ""
    assert marker not in seen, seen
    assert "armed" not in seen, seen
    assert "refused " + handle["socket"] in seen  # it was there, and in use


def test_e2b_relay_refuses_a_socket_the_agent_does_not_listen_on(tmp_path: Path) -> None:
    """The agent gone (killed by code of its uid), an impostor binds its free name: every
    relay refuses it (``--peer-pid``) before a byte passes, and the connect fails (0.9 s).
    Not on Modal: the agent is the sandbox's entrypoint, its end ends the sandbox."""
    provider = E2BProvider(Settings.load(home=tmp_path, e2b_api_key="k"), sdk=e2b_fake)
    handle = provider.create(spec())
    assert client(provider, handle).hello()
    os.kill(handle["agent_pid"], signal.SIGKILL)
    listener = socket.socket(socket.AF_UNIX)
    deadline = time.monotonic() + 10
    while True:  # the name frees once the agent is gone
        try:
            listener.bind("\0" + handle["socket"][1:])
            break
        except OSError:
            assert time.monotonic() < deadline, "the agent's name was never freed"
            time.sleep(0.05)
    listener.listen(8)
    got: list[bytes] = []

    def impostor() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                got.append(conn.recv(65536))
            conn.close()

    threading.Thread(target=impostor, daemon=True).start()
    try:
        with pytest.raises(AgentError):
            client(provider, handle).hello()
    finally:
        listener.close()
    assert not [data for data in got if data], got


def test_e2b_relays_run_as_root_out_of_the_users_dotfiles(tmp_path: Path) -> None:
    """Sandbox code writes the user's ``~/.bash_profile``, which every later command of the
    sandbox user runs first (``bash -l``): no relay runs it (relays are root's) (0.8 s)."""
    check_relays_skip_the_users_dotfiles(
        E2BProvider(Settings.load(home=tmp_path, e2b_api_key="k"), sdk=e2b_fake)
    )


def check_relays_skip_the_users_dotfiles(provider: E2BProvider) -> None:
    handle = provider.create(spec())
    record = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    assert client(provider, handle).run("python", DOTFILE, timeout=30)["stdout"] == "planted\n"
    assert client(provider, handle).run("python", "print(1)", timeout=30)["stdout"] == "1\n"
    assert not (record.vm.host_path("/home/user") / "hijacked.log").exists()
    boot, relays = record.handles[1], record.handles[2:]
    assert boot.user == "user" and boot.pid == handle["agent_pid"]
    assert relays and {relay.user for relay in relays} == {"root"}


def test_e2b_user_code_cannot_replace_the_agent_file(tmp_path: Path) -> None:
    """The agent's zipapp is root's (``files.write(user="root")``), 0644 in a 0755 directory
    out of the user's home: the SDK refuses the sandbox user's write, and (as root only) a
    real other uid can neither rewrite the file nor rename it (1.2 s). The fake runs every
    process as one host uid, so it cannot show the sandbox's own user being refused by the
    kernel: the other uid stands in for it."""
    check_agent_file_is_roots(
        E2BProvider(Settings.load(home=tmp_path, e2b_api_key="k"), sdk=e2b_fake)
    )


def check_agent_file_is_roots(provider: E2BProvider) -> None:
    handle = provider.create(spec())
    record = e2b_fake.SANDBOXES[handle["sandbox_id"]]
    path = e2b_provider.AGENT_PATH
    assert record.owners[path] == "root" and not path.startswith("/home/")
    sandbox = e2b_fake.Sandbox(record)
    with pytest.raises(e2b_fake.SandboxException, match="permission denied"):
        sandbox.files.write(path, b"print('evil')", user="user")
    zipapp = record.vm.host_path(path)
    assert zipapp.stat().st_mode & 0o777 == 0o644
    assert zipapp.parent.stat().st_mode & 0o777 == 0o755
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return
    os.chmod(record.vm.root, 0o755)  # mkdtemp's 0700 would refuse the other uid by itself
    attempt = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "import os, sys\n"
         "p = sys.argv[1]\n"
         "for act in (lambda: open(p, 'rb'), lambda: open(p, 'r+b'),\n"
         "            lambda: os.replace(p, p + '.x'),\n"
         "            lambda: open(os.path.join(os.path.dirname(p), 'new'), 'wb')):\n"
         "    try:\n"
         "        act()\n"
         "        print('allowed')\n"
         "    except PermissionError:\n"
         "        print('denied')\n",
         str(zipapp)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert attempt.stdout.split() == ["allowed"] + ["denied"] * 3, attempt  # it can run it
    assert client(provider, handle).hello()


def test_a_handle_from_before_the_abstract_socket_asks_for_a_new_sandbox(cloud) -> None:
    """A stored handle without ``socket`` / ``agent_pid`` (its agent listens on a file
    socket) gets one line saying what to do, and no relay is started (0.5 s each)."""
    provider, _ = cloud
    handle = provider.create(spec())
    old = {k: v for k, v in handle.items() if k not in ("socket", "agent_pid")}
    with pytest.raises(AgentError, match="older nexus-kernel .*: stop it and create a new one$"):
        provider.connect(old)
