"""Hostile code against privileges and the kernel surface, on the local and docker providers:
identity and capabilities, mount / unshare / ptrace / setuid / chroot, ``kill -9 -1``, what
``ps`` shows, the docker socket, inherited file descriptors, and the agent's token (the only
thing that would let sandbox code talk to its agent: move its TTL watchdog, shut it down)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import LANGUAGES

pytestmark = pytest.mark.timeout(120)

IDENTITY = {
    "python": (
        "import os\n"
        "status = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in l)\n"
        "print(os.getuid(), os.geteuid(), os.getgid(), status['CapEff'], status['CapPrm'],"
        " status['CapBnd'], status.get('NoNewPrivs', '-'))\n"
    ),
    "bash": (
        "s=/proc/self/status; n=$(awk '/^NoNewPrivs/{print $2}' $s)\n"
        "echo $(id -u) $(id -u) $(id -g) $(awk '/^CapEff/{print $2}' $s) "
        "$(awk '/^CapPrm/{print $2}' $s) $(awk '/^CapBnd/{print $2}' $s) ${n:--}\n"
    ),
    "javascript": (
        "const s = Object.fromEntries(require('fs').readFileSync('/proc/self/status', 'utf8')"
        ".split('\\n').filter((l) => l.includes(':\\t')).map((l) => l.split(':\\t')));\n"
        "console.log(process.getuid(), process.geteuid(), process.getgid(), s.CapEff, s.CapPrm,"
        " s.CapBnd, s.NoNewPrivs ?? '-');\n"
    ),
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_code_runs_unprivileged(env, shared_box, language):
    uid, euid, gid, cap_eff, cap_prm, cap_bnd, no_new_privs = shared_box.ok(
        language, IDENTITY[language]).split()
    # local: 1000 in the jail's user namespace; docker: the host uid of the sandbox's own
    inner = "1000" if env.name == "local" else str(shared_box.record.handle["uid"])
    assert (uid, euid, gid) == (inner, inner, inner)
    assert int(cap_eff, 16) == 0 and int(cap_prm, 16) == 0 and int(cap_bnd, 16) == 0
    if env.runtime == "runsc":  # gVisor's status has no NoNewPrivs line; docker sets it
        assert no_new_privs == "-", no_new_privs
        sentry = _sentry_status(env, shared_box)  # the host process behind the sandbox
        assert sentry["Uid"].split()[0] != "0" and sentry["NoNewPrivs"] == "1", sentry
        return
    assert no_new_privs == "1"
    # seen from the host: no process of the sandbox runs as root
    for pid in env.processes(shared_box.record):
        assert os.stat(f"/proc/{pid}").st_uid != 0


KERNEL_SURFACE = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "def attempt(name, call):\n"
    "    try:\n"
    "        ok = call()\n"
    "    except OSError as exc:\n"
    "        ok = exc\n"
    "    print(name, 'ALLOWED' if ok is True else 'refused')\n"
    "def ptrace(pid):\n"
    "    return libc.ptrace(16, pid, 0, 0) == 0 or OSError(ctypes.get_errno(), 'ptrace')\n"
    "def mount():\n"
    "    os.makedirs('/tmp/m', exist_ok=True)\n"
    "    return libc.mount(b'none', b'/tmp/m', b'tmpfs', 0, None) == 0\n"
    "attempt('ptrace-agent', lambda: ptrace(1))\n"
    "attempt('ptrace-host', lambda: ptrace({host_pid}))\n"
    "attempt('mount', mount)\n"
    "attempt('unshare-user', lambda: libc.unshare(0x10000000) == 0)\n"
    "attempt('unshare-mount', lambda: libc.unshare(0x00020000) == 0)\n"
    "attempt('setuid-root', lambda: os.setuid(0) or True)\n"
    "attempt('chroot', lambda: os.chroot('/tmp') or True)\n"
    "attempt('agent-memory', lambda: bool(open('/proc/1/mem', 'rb')))\n"
    "attempt('agent-environ', lambda: bool(open('/proc/1/environ', 'rb').read()))\n"
)


def test_kernel_surface_is_refused(env, shared_box):
    out = shared_box.ok("python", KERNEL_SURFACE.replace("{host_pid}", str(os.getpid())))
    verdicts = dict(line.split() for line in out.splitlines())
    assert len(verdicts) == 9
    if env.runtime == "runsc":  # a user namespace of gVisor's own, and inside it a mount
        # namespace and chroot: gVisor's, the host kernel never sees them
        allowed = {name for name, verdict in verdicts.items() if verdict == "ALLOWED"}
        assert allowed == {"unshare-user", "unshare-mount", "chroot"}, verdicts
        verdicts = {name: v for name, v in verdicts.items() if name not in allowed}
    assert set(verdicts.values()) == {"refused"}, verdicts
    tools = shared_box.run("bash", "mount -t tmpfs none /tmp/m; unshare -U true; "
                                   "unshare -m true; unshare -r true; echo done")
    assert tools.stdout == "done\n"
    refused = 2 if env.runtime == "runsc" else 4  # gVisor: mount, unshare -m
    assert tools.stderr.count("\n") >= refused  # each refused with its error


KILL_ALL = {
    "bash": "kill -9 -1; echo survived",
    # ESRCH when nothing else is running: that is fine too
    "python": "import os\ntry:\n    os.kill(-1, 9)\nexcept ProcessLookupError:\n    pass\nprint('survived')",
    "javascript": "try { process.kill(-1, 'SIGKILL'); } catch (e) {}\nconsole.log('survived');",
}


@pytest.fixture
def host_process(env, box):
    """A host process running as the sandbox's host uid (the same uid as its code)."""
    uid = box.record.handle["uid"]  # docker: the container user, without a user-namespace remap
    command = ["sleep", "120"]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    proc = subprocess.Popen(command)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("language", LANGUAGES)
def test_kill_minus_one_reaches_neither_the_host_nor_the_agent(box, canary, host_process,
                                                                language):
    with canary.watch():
        result = box.run(language, KILL_ALL[language])
    assert result.stdout == "survived\n", result
    time.sleep(0.2)
    assert host_process.poll() is None, "a host process of the same uid was killed"
    assert box.alive() and box.ok("bash", "echo agent alive") == "agent alive\n"
    box.assert_settles()


def test_ps_shows_only_the_sandbox(shared_box):
    out = shared_box.ok("bash", "ps -eo pid=,args=")
    rows = out.strip().splitlines()
    assert len(rows) < 10, out
    for host_only in ("pytest", "dockerd", "containerd", "sshd", "init", "systemd"):
        assert host_only not in out, out


def test_no_docker_socket_or_other_host_socket(shared_box):
    # `test -e`, not ls: gVisor 2022 refuses coreutils 9's statx flags (EINVAL)
    out = shared_box.run("bash", "for s in /var/run/docker.sock /run/docker.sock; do "
                                 "test -e $s && echo $s exists || echo No such file: $s; done; "
                                 "env | grep -ci docker; "
                                 "find / \\( -path /proc -o -path /sys -o -path /usr \\) -prune "
                                 "-o -type s -print 2>/dev/null")
    lines = out.stdout.splitlines()
    assert all("No such file" in line for line in lines[:2]), lines
    assert lines[2] == "0"
    assert lines[3:] == []  # not even the agent's: outside the jail (local), abstract (docker)


FDS_AT_START = {
    "python": (
        "import os\n"
        "open_fds = []\n"
        "for fd in range(3, 4096):\n"
        "    try:\n"
        "        os.fstat(fd)\n"
        "        open_fds.append(fd)\n"
        "    except OSError:\n"
        "        pass\n"
        "print(open_fds)\n"
    ),
    # bash's own fds, by find (gVisor 2022 refuses coreutils 9's statx flags: no ls); `; :`
    # keeps bash from exec-ing find
    "bash": "find /proc/$$/fd -mindepth 1 -printf '%f\\n'; :",
}


@pytest.mark.parametrize("language", ["python", "bash"])  # node opens its own event-loop fds
def test_only_stdin_stdout_stderr_are_inherited(shared_box, language):
    out = shared_box.ok(language, FDS_AT_START[language]).split()
    assert out == (["[]"] if language == "python" else ["0", "1", "2"]), out


TOKEN_HUNT = r'''
import glob, json, os, re, socket
token = {left!r} + {right!r}
me = str(os.getpid())
hits = []
def scan(path, data):
    if token.encode() in data:
        hits.append(path)
for pid_dir in glob.glob('/proc/[0-9]*'):
    if pid_dir.endswith('/' + me):
        continue
    for name in ('cmdline', 'environ'):
        try:
            scan(pid_dir + '/' + name, open(pid_dir + '/' + name, 'rb').read())
        except OSError:
            pass
    try:  # the memory of every process this uid may read
        mem = open(pid_dir + '/mem', 'rb')
        for line in open(pid_dir + '/maps'):
            m = re.match(r'([0-9a-f]+)-([0-9a-f]+) r', line)
            if m:
                try:
                    mem.seek(int(m[1], 16))
                    scan(pid_dir + '/mem', mem.read(int(m[2], 16) - int(m[1], 16)))
                except (OSError, OverflowError, ValueError):
                    pass
    except OSError:
        pass
for top in ('/run/nexus', '/tmp', '/home/user', '/dev/shm'):
    for root, _, files in os.walk(top):
        for f in files:
            try:
                scan(os.path.join(root, f), open(os.path.join(root, f), 'rb').read())
            except OSError:
                pass
answer = {{'unreachable': True}}  # local: the agent's socket is nowhere in the jail
for name in ('\0nexus-agent', '/run/nexus/agent.sock'):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(name)
    except OSError:
        continue
    s.sendall(json.dumps({{'id': 'x', 'op': 'deadline', 'at': None}}).encode() + b'\n')
    answer = json.loads(s.makefile().readline())
print(json.dumps({{'hits': hits, 'answer': answer}}))
'''


def test_the_agent_token_cannot_be_found_or_guessed(env, shared_box):
    import json

    token = shared_box.record.handle["token"]
    # a second stream carries requests (and the token) through the provider while we hunt
    with env.client(shared_box.record) as other:
        other.hello()
        half = len(token) // 2
        out = shared_box.ok("python", TOKEN_HUNT.format(left=token[:half], right=token[half:]),
                            timeout=60)
        other.hello()
    found = json.loads(out)
    assert found["hits"] == [], found["hits"]
    answer = found["answer"]
    assert answer.get("unreachable") or (answer["ev"] == "fail" and answer["kind"] == "auth")


def test_every_provider_adds_a_syscall_filter(env, shared_box):
    """Docker applies the engine's default seccomp profile, local its own filter
    (``providers/seccomp.py``): a filter is on for every process (mode 2)."""
    mode = shared_box.ok("bash", "awk '/^Seccomp:/{print $2}' /proc/self/status").strip()
    if env.runtime == "runsc":  # gVisor answers the calls; its own host calls are filtered
        assert _sentry_status(env, shared_box)["Seccomp"] == "2"
        return
    assert mode == "2"


def _sentry_status(env, box) -> dict[str, str]:
    """/proc/PID/status of gVisor's sentry (the container's pid on the host) as a dict."""
    info = env.provider._client("").api.inspect_container(box.record.handle["container_id"])
    lines = Path(f"/proc/{info['State']['Pid']}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)
