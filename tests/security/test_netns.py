"""Local sandboxes with network on have a network namespace of their own (issue 17, item 2):
user-mode networking (slirp4netns) reaches the outside, but not the host's loopback services,
the host's abstract unix sockets, or another sandbox's loopback; the helper ends with the
sandbox. And the seccomp filter of local sandboxes refuses the kernel surface Docker's default
profile refuses.

Seen failing before the fix (network=True shared the host's namespace, no filter): the three
reachability tests connected, the syscalls returned EFAULT/EINVAL (or a userfaultfd), and the
helper tests found no helper to check."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_kernel.errors import ProviderUnavailableError
from nexus_kernel.providers import local

from .conftest import Env, needs_setpriv, provider_ready, run_as_nobody, wait_until

pytestmark = [pytest.mark.bwrap, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]

needs_slirp = pytest.mark.skipif(shutil.which("slirp4netns") is None,
                                 reason="slirp4netns is not installed (scripts/install-host.sh)")

#: Prints {target: connected?} for TCP targets and abstract unix socket names given in TARGETS.
PROBE = r'''
import json, socket
out = {}
for host, port in TARGETS["tcp"]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        out[f"{host}:{port}"] = True
    except OSError:
        out[f"{host}:{port}"] = False
for name in TARGETS["abstract"]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("\0" + name)
        out["@" + name] = True
    except OSError:
        out["@" + name] = False
    finally:
        s.close()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def lenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    provider_ready("local")
    environment = Env("local", tmp_path_factory.mktemp("netns"))
    yield environment
    environment.close()


@contextlib.contextmanager
def host_listeners() -> Iterator[dict]:
    """A TCP server on the host's 127.0.0.1 and an abstract unix socket, both accepting."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    name = f"nexus-netns-{secrets.token_hex(6)}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + name)
    unix.listen(16)
    accepted = []
    stop = threading.Event()

    def serve(server: socket.socket) -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                accepted.append(server.family)
                conn.close()

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in (tcp, unix)]
    for thread in threads:
        thread.start()
    port = tcp.getsockname()[1]
    try:
        yield {"targets": {"tcp": [["127.0.0.1", port], ["10.0.2.2", port]], "abstract": [name]},
               "accepted": accepted, "port": port, "name": name}
    finally:
        stop.set()
        for thread in threads:
            thread.join(2)
        tcp.close()
        unix.close()


def probe_code(targets: dict) -> str:
    return f"TARGETS = {json.dumps(targets)}\n{PROBE}"


@needs_slirp
def test_host_loopback_and_abstract_sockets_are_out_of_reach(lenv: Env) -> None:
    box = lenv.create("net", network=True)
    try:
        with host_listeners() as host:
            # the probe itself works: the host reaches its own listeners
            reached = json.loads(subprocess.run([sys.executable, "-c", probe_code(host["targets"])],
                                                capture_output=True, text=True, check=True).stdout)
            assert reached[f"127.0.0.1:{host['port']}"] and reached["@" + host["name"]]
            before = len(host["accepted"])
            found = json.loads(box.ok("python", probe_code(host["targets"]), timeout=30))
            assert not any(found.values()), found
            assert len(host["accepted"]) == before
    finally:
        box.stop()


@needs_slirp
def test_another_sandboxs_loopback_is_out_of_reach(lenv: Env) -> None:
    server = lenv.create("server", network=True)
    client = lenv.create("client", network=True)
    try:
        port = server.env.manager.run(server.id, "python", (
            "import socket\nsrv = socket.socket()\nsrv.bind(('127.0.0.1', 0))\nsrv.listen(8)\n"
            "print(srv.getsockname()[1])"), timeout=10, session="srv").stdout.strip()
        targets = {"tcp": [["127.0.0.1", int(port)]], "abstract": []}
        own = json.loads(server.env.manager.run(server.id, "python", probe_code(targets),
                                                timeout=30, session="probe").stdout)
        assert own == {f"127.0.0.1:{port}": True}  # the server listens, in its own namespace
        found = json.loads(client.ok("python", probe_code(targets), timeout=30))
        assert found == {f"127.0.0.1:{port}": False}
    finally:
        server.stop()
        client.stop()


def _host_reaches(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        return False
    return True


@needs_slirp
def test_outbound_tcp_and_dns_still_work(lenv: Env) -> None:
    if not _host_reaches("pypi.org", 443):
        pytest.skip("this host cannot reach pypi.org:443")
    box = lenv.create("out", network=True)
    try:
        out = box.ok("python", "import socket\n"
                               "print(socket.getaddrinfo('pypi.org', 443)[0][4][0])\n"
                               "socket.create_connection(('pypi.org', 443), timeout=10).close()\n"
                               "print('connected')", timeout=60)
        assert out.strip().endswith("connected"), out
        interfaces = box.ok("bash", "tail -n +3 /proc/net/dev | cut -d: -f1").split()
        assert sorted(interfaces) == ["lo", "tap0"]
    finally:
        box.stop()


@needs_slirp
def test_the_network_helper_ends_with_the_sandbox(lenv: Env) -> None:
    box = lenv.create("helper", network=True)
    handle = box.record.handle
    slirp, start = handle["slirp_pid"], handle["slirp_start"]
    assert local._same_process(slirp, start)
    assert "slirp4netns" in Path(f"/proc/{slirp}/cmdline").read_text()
    assert os.stat(f"/proc/{slirp}").st_uid == handle["uid"]  # the jail's host uid, not root
    box.stop()  # also asserts nothing of the sandbox is left
    assert not local._same_process(slirp, start)

    # the jail ending on its own (its agent's TTL, a crash) takes the helper with it too
    box = lenv.create("helper2", network=True)
    handle = box.record.handle
    local._kill_quietly(handle["child_pid"])
    assert wait_until(lambda: not local._same_process(handle["slirp_pid"], handle["slirp_start"]), 5)
    box.stop()


def test_network_without_slirp4netns_fails_in_one_line(lenv: Env, monkeypatch) -> None:
    real = local._find_tool
    monkeypatch.setattr(local, "_find_tool", lambda tool: None if tool == "slirp4netns" else real(tool))
    before = set(os.listdir(lenv.settings.sandboxes_dir)) if lenv.settings.sandboxes_dir.exists() else set()
    with pytest.raises(ProviderUnavailableError) as raised:
        lenv.manager.create("nonet", network=True)
    message = str(raised.value)
    assert "\n" not in message and "apt-get install slirp4netns" in message, message
    assert set(os.listdir(lenv.settings.sandboxes_dir)) == before


# ------------------------------------------------------------------ seccomp

SYSCALL_PROBE = r'''
import ctypes, errno, json, platform
NUMBERS = {
    "x86_64": {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
               "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
               "perf_event_open": 298, "userfaultfd": 323},
    "aarch64": {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
                "perf_event_open": 241, "userfaultfd": 282},
}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for name, nr in NUMBERS.items():
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), 0, 0, 0, 0, 0)
    out[name] = errno.errorcode.get(ctypes.get_errno(), str(result)) if result == -1 else f"returned {result}"
print(json.dumps(out))
'''


@pytest.mark.parametrize("network", [False, pytest.param(True, marks=needs_slirp)])
def test_listed_syscalls_are_refused(lenv: Env, network: bool) -> None:
    box = lenv.create("seccomp", network=network)
    try:
        found = json.loads(box.ok("python", SYSCALL_PROBE, timeout=30))
        assert found and all(value in ("EPERM", "ENOSYS") for value in found.values()), found
        # ordinary work is untouched: node (libuv probes io_uring) and bash still run
        assert box.ok("javascript", "require('fs').writeFileSync('/tmp/x', 'y'); "
                                    "console.log(require('fs').readFileSync('/tmp/x', 'utf8'))") == "y\n"
    finally:
        box.stop()


# ------------------------------------------------------------------ non-root caller

NOBODY_SCRIPT = r'''
import json, sys
sys.path[:0] = [ROOT, DEPS]
from pathlib import Path
from nexus_kernel.config import Settings
from nexus_kernel.manager import SandboxManager
manager = SandboxManager(Settings.load(home=Path(HOME), user="nobody", provider="local"), is_admin=True)
record = manager.create("nobody-net", network=True)
try:
    result = manager.run(record.sandbox_id, "python", PROBE_CODE, timeout=30)
    print(json.dumps({"probe": json.loads(result.stdout), "slirp": record.handle.get("slirp_pid"),
                      "start": record.handle.get("slirp_start")}))
finally:
    manager.stop(record.sandbox_id)
'''


@needs_slirp
@needs_setpriv
def test_an_unprivileged_callers_sandbox_reaches_none_of_the_host() -> None:
    with host_listeners() as host:
        found = run_as_nobody(NOBODY_SCRIPT, timeout=120, PROBE_CODE=probe_code(host["targets"]))
    assert found["probe"] and not any(found["probe"].values()), found
    assert found["slirp"] and not local._same_process(found["slirp"], found["start"])
