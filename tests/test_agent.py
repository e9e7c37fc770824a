"""The sandbox agent, run for real as a host subprocess (no jail) and driven by AgentClient."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from nexus_kernel.agent import (
    PACKAGE_DIR,
    AgentClient,
    dir_argv,
    unix_connector,
    zipapp_argv,
    zipapp_bytes,
)
from nexus_kernel.agent.sandbox_agent.wire import (
    AUTH_MAX_LINE,
    INTERRUPT_GRACE_SECONDS,
    MAX_FILE_BYTES,
    proof,
)
from nexus_kernel.errors import AgentError, InvalidArgumentError

TOKEN = "test-token-123"
#: The interpreter that runs the agent (and is python3 on its PATH); the agent must work on
#: any python3 >= 3.8, so CI may point this at an old one.
AGENT_PYTHON = os.environ.get("NEXUS_TEST_AGENT_PYTHON") or sys.executable
#: With IPython, python sessions run cells through it (tests/test_ipython_sessions.py covers
#: that mode in sandboxes); the plain exec loop otherwise.
AGENT_HAS_IPYTHON = subprocess.run([AGENT_PYTHON, "-c", "import IPython"],
                                   capture_output=True).returncode == 0
HAVE_NODE = shutil.which("node") is not None
needs_node = pytest.mark.skipif(not HAVE_NODE, reason="node is not installed")
ROOT = Path(__file__).resolve().parent.parent


def agent_argv(*args: str, zipapp: Path | None = None) -> list[str]:
    """The agent's command line: from the package directory, or from a zipapp."""
    if zipapp is not None:
        return zipapp_argv(AGENT_PYTHON, str(zipapp), *args)
    return dir_argv(AGENT_PYTHON, str(PACKAGE_DIR.parent), *args)


class AgentProcess:
    """A running agent: its process, socket, home and a connected client."""

    def __init__(self, home: Path, deadline: float | None = None, zipapp: Path | None = None):
        self.home = home
        self.rundir = Path(tempfile.mkdtemp(prefix="nxa-", dir="/tmp"))  # short socket path
        self.socket = str(self.rundir / "agent.sock")
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([os.path.dirname(AGENT_PYTHON), "/usr/bin", "/bin"])
        argv = agent_argv("serve", "--socket", self.socket, "--home", str(home), zipapp=zipapp)
        if deadline is not None:
            argv += ["--deadline", str(deadline)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     start_new_session=True)
        self.proc.stdin.write(TOKEN.encode() + b"\n")  # the token's one way in: stdin
        self.proc.stdin.close()
        assert self.proc.stdout.readline() == b"READY\n"
        self.client = AgentClient(unix_connector(self.socket), TOKEN)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            with contextlib.suppress(AgentError):
                AgentClient(unix_connector(self.socket), TOKEN).shutdown()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        shutil.rmtree(self.rundir, ignore_errors=True)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")


@pytest.fixture
def agent(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = AgentProcess(home)
    yield proc
    proc.stop()


@pytest.fixture
def client(agent):
    return agent.client


def gone(pid: int) -> bool:
    """True when the process no longer exists (or is a zombie about to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def wait_until(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def run_in_thread(fn, *args, **kwargs):
    """Start fn in a thread; returns a function giving its result (or raising its error)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result(timeout: float = 30.0):
        thread.join(timeout)
        assert not thread.is_alive(), "the request did not finish"
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


def start_and_wait_for_output(client, language: str, code: str, **kwargs):
    """Start a run in a thread; return once it printed something (it is really running)."""
    printed = threading.Event()
    pending = run_in_thread(client.run, language, code, on_event=lambda ev: printed.set(), **kwargs)
    assert printed.wait(20), "the run never printed"
    return pending


class RelayChannel:
    """A channel through the agent's ``relay`` command (its stdin and stdout)."""

    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def sendall(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, size: int) -> bytes:
        return os.read(self.proc.stdout.fileno(), size)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.wait(10)


def authenticate(sock: socket.socket, token: str = TOKEN) -> None:
    """The host's side of the ``auth`` handshake, by hand."""
    mine = "ab" * 16
    sock.sendall(json.dumps({"id": "a", "op": "auth", "nonce": mine}).encode() + b"\n")
    answer = json.loads(sock.makefile("rb").readline())
    assert answer["proof"] == proof(token, "agent", mine, answer["nonce"])
    sock.sendall(json.dumps({"id": "a", "op": "auth",
                             "proof": proof(token, "host", mine, answer["nonce"])}).encode() + b"\n")
    assert json.loads(sock.makefile("rb").readline()) == {"id": "a", "ev": "done"}


def raw_exchange(path: str, *lines: bytes, auth: bool = False) -> list[dict]:
    """Send raw request lines on a fresh socket (authenticated first with ``auth``) and
    read one reply per line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        if auth:
            authenticate(sock)
        sock.sendall(b"".join(lines))
        data = b""
        while data.count(b"\n") < len(lines):
            chunk = sock.recv(65536)
            assert chunk, "agent closed the connection"
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


# -- startup, auth, validation -----------------------------------------------------------


def test_hello_startup_and_socket(agent, client):
    info = client.hello()
    assert info["pid"] == agent.proc.pid
    assert {"python", "bash"} <= set(info["languages"])
    assert ("javascript" in info["languages"]) == HAVE_NODE
    assert os.stat(agent.socket).st_mode & 0o777 == 0o600
    for what in ("cmdline", "environ"):
        assert TOKEN.encode() not in Path(f"/proc/{agent.proc.pid}/{what}").read_bytes()


def test_a_wrong_token_or_no_auth_gets_nothing(agent):
    with pytest.raises(AgentError, match="did not prove it is the agent"):
        AgentClient(unix_connector(agent.socket), "wrong").hello()
    [reply] = raw_exchange(agent.socket, b'{"id": "x", "op": "hello"}\n')
    assert reply == {"id": "x", "ev": "fail", "error": reply["error"], "kind": "auth"}
    # the token in a request, as protocol 1 sent it, is no way in either
    [reply] = raw_exchange(agent.socket, json.dumps(
        {"id": "y", "token": TOKEN, "op": "deadline", "at": None}).encode() + b"\n")
    assert reply["ev"] == "fail" and reply["kind"] == "auth"


def test_rekey_replaces_the_token_for_every_new_connection(agent, client):
    """A memory fork (E2B) starts with its parent's token: ``rekey`` replaces it."""
    client.hello()
    with pytest.raises(InvalidArgumentError, match="token must be"):
        client.request("rekey", token="short")
    new = "n" * 43
    client.rekey(new)
    assert client.hello()["pid"] == agent.proc.pid  # the live channel keeps going
    with pytest.raises(AgentError, match="did not prove it is the agent"):
        AgentClient(unix_connector(agent.socket), TOKEN).hello()  # the old token: refused
    fresh = AgentClient(unix_connector(agent.socket), new)
    assert fresh.hello()["pid"] == agent.proc.pid
    fresh.shutdown()  # the fixture's teardown would try the old token
    fresh.close()


def test_a_wrong_proof_ends_the_connection(agent):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.socket)
        sock.sendall(b'{"id": "a", "op": "auth", "nonce": "' + b"0" * 32 + b'"}\n')
        reader = sock.makefile("rb")
        assert json.loads(reader.readline())["ev"] == "done"
        sock.sendall(b'{"id": "b", "op": "auth", "proof": "' + b"0" * 64 + b'"}\n'
                     b'{"id": "c", "op": "hello"}\n')
        assert json.loads(reader.readline())["kind"] == "auth"
        assert reader.readline() == b""  # closed: the hello got no answer


def test_an_unauthenticated_peer_cannot_make_the_agent_buffer(agent, client):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(agent.socket)
        with contextlib.suppress(OSError):  # the agent hangs up past AUTH_MAX_LINE
            for _ in range(64):
                sock.sendall(b"x" * AUTH_MAX_LINE)
        sock.settimeout(10)
        try:  # hung up: an end of stream, or a reset when our unread bytes were still queued
            hung_up = sock.recv(100) == b""
        except ConnectionResetError:
            hung_up = True
        assert hung_up
    assert client.hello()["pid"] == agent.proc.pid


def test_invalid_requests_fail_without_crashing(agent, client):
    with pytest.raises(InvalidArgumentError, match="unknown op 'frobnicate'"):
        client.request("frobnicate")
    with pytest.raises(InvalidArgumentError, match="unknown language 'ruby'"):
        client.run("ruby", "puts 1")
    with pytest.raises(InvalidArgumentError, match="code must be a string"):
        client.run("python", 42)
    with pytest.raises(InvalidArgumentError, match="timeout"):
        client.run("python", "1", timeout=-1)
    replies = raw_exchange(
        agent.socket, b"this is not json\n", b"[1, 2]\n", b'{"id": 1, "op": "auth"}\n', auth=True
    )
    assert [r["kind"] for r in replies] == ["invalid", "invalid", "invalid"]
    assert replies[0]["id"] is None and "\n" not in replies[0]["error"]
    assert client.hello()["pid"] == agent.proc.pid


# -- stateless runs ----------------------------------------------------------------------


def test_stateless_runs_share_files_but_not_variables(client, agent):
    first = client.run("python", "x = 1\nopen('note.txt', 'w').write('kept')\nprint('ok')")
    assert (first["stdout"], first["exit_code"], first["stderr"]) == ("ok\n", 0, "")
    assert (agent.home / "note.txt").read_text() == "kept"
    second = client.run("python", "print(open('note.txt').read())\nprint(x)")
    assert second["stdout"] == "kept\n"
    assert second["exit_code"] == 1 and "NameError" in second["stderr"]
    bash = client.run("bash", "cat note.txt; echo; echo $PWD; exit 3")
    assert bash["stdout"] == f"kept\n{agent.home}\n" and bash["exit_code"] == 3
    assert bash["execution_time"] >= 0 and bash["timed_out"] is False


@needs_node
def test_stateless_javascript(client):
    result = client.run("javascript", "console.log(6 * 7); process.exitCode = 2")
    assert result["stdout"] == "42\n" and result["exit_code"] == 2


def test_stateless_leftovers_are_killed_when_the_run_ends(client, agent):
    code = "setsid sleep 1000 > /dev/null 2>&1 & echo $! > bg.pid\nsleep 1000 &\necho started"
    started = time.monotonic()
    result = client.run("bash", code)
    assert result["stdout"] == "started\n" and result["exit_code"] == 0
    assert time.monotonic() - started < 3, "the run waited for its background children"
    pid = int((agent.home / "bg.pid").read_text())
    assert wait_until(lambda: gone(pid), 2)


def test_timeout_kills_a_setsid_double_forked_grandchild(client, agent):
    code = (
        "import os, subprocess, sys, time\n"
        "if os.fork() == 0:\n"
        "    p = subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
        "    open('grandchild.pid', 'w').write(str(p.pid))\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print('before the timeout', flush=True)\n"
        "time.sleep(1000)\n"
    )
    started = time.monotonic()
    result = client.run("python", code, timeout=1.5)
    assert 1.4 < time.monotonic() - started < 6
    assert result["timed_out"] is True and result["exit_code"] == 124
    assert result["stdout"] == "before the timeout\n"
    pid = int((agent.home / "grandchild.pid").read_text())
    assert wait_until(lambda: gone(pid), 2)


def test_interrupt_stateless_run(client):
    code = "import time\nprint('go', flush=True)\ntime.sleep(30)"
    pending = start_and_wait_for_output(client, "python", code)
    assert client.interrupt() == 1
    result = pending()
    assert result["interrupted"] is True and result["exit_code"] == 130
    assert "KeyboardInterrupt" in result["stderr"]


# -- output ------------------------------------------------------------------------------


def test_live_streaming_arrives_before_the_code_finishes(client):
    code = "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')"
    for session in (None, "live"):
        started = time.monotonic()
        arrivals: list[tuple[float, str]] = []

        def record(event, arrivals=arrivals, started=started):
            arrivals.append((time.monotonic() - started, event.get("data")))

        result = client.run("python", code, session=session, on_event=record)
        assert result["stdout"] == "first\nsecond\n"
        first_at = next(t for t, data in arrivals if data and "first" in data)
        assert first_at < 1.5, f"first chunk arrived after {first_at:.2f}s (session={session})"
        assert time.monotonic() - started >= 2


def test_output_cap_truncates_and_agent_memory_stays_small(client, agent):
    flood = (
        "import sys\nchunk = b'x' * (1 << 20)\n"
        "for _ in range(300):\n    sys.stdout.buffer.write(chunk)\n"
        "sys.stderr.write('tail')\n"
    )
    rss_before = agent.rss_kib()
    for session in (None, "flood"):
        result = client.run("python", flood, session=session, output_limit=1 << 20)
        assert result["truncated"] is True and result["exit_code"] == 0
        assert len(result["stdout"]) + len(result["stderr"]) == 1 << 20
    assert agent.rss_kib() - rss_before < 64 * 1024, "300 MB of output grew the agent"
    small = client.run("python", "print('fits')", session="flood", output_limit=100)
    assert small["truncated"] is False and small["stdout"] == "fits\n"


def test_invalid_utf8_and_nul_bytes_never_break_anything(client):
    code = (
        "import sys\nsys.stdout.buffer.write(b'\\xff\\xfeok\\x00end\\xe2\\x82')\nsys.stdout.flush()"
    )
    for session in (None, "bytes"):
        result = client.run("python", code, session=session)
        assert result["stdout"] == "\ufffd\ufffdok\x00end\ufffd" and result["exit_code"] == 0
    result = client.run(
        "bash", r"printf '\xc3\x28 \x00nexus-end:'; printf 'caf\xc3\xa9\n' >&2", session="b"
    )
    assert result["stdout"] == "\ufffd( \x00nexus-end:" and result["stderr"] == "café\n"


# -- sessions ----------------------------------------------------------------------------


def test_python_session_keeps_state_and_reports_results(client):
    first = client.run("python", "x = 41\ndef inc(v):\n    return v + 1\ninc(x)", session="s")
    assert first["result"] == {"text/plain": "42"} and first["stdout"] == ""
    assert client.run("python", "print(inc(x) * 2)", session="s")["stdout"] == "84\n"
    assert client.run("python", "x = None\nx", session="s")["result"] is None

    failed = client.run("python", "def boom():\n    1 / 0\nboom()", session="s")
    assert failed["exit_code"] == 1
    assert failed["error"]["ename"] == "ZeroDivisionError"
    assert "sandbox_agent" not in failed["stderr"]
    if AGENT_HAS_IPYTHON:  # IPython's traceback, the cell named by its count
        assert "Cell In[4], line 2, in boom" in failed["stderr"]
    else:
        assert "<cell-" in failed["stderr"] and failed["stderr"].startswith("Traceback")
        assert "line 2, in boom" in failed["stderr"]

    assert client.run("python", "raise SystemExit(3)", session="s")["exit_code"] == 3
    assert client.run("python", "import __main__\n__main__.inc(1)", session="s")["result"] == {
        "text/plain": "2"
    }
    awaited = client.run("python", "import asyncio\nawait asyncio.sleep(0.01)\n'ok'", session="s")
    assert awaited["result"] == {"text/plain": "'ok'"}
    syntax = client.run("python", "def (:", session="s")
    assert syntax["exit_code"] == 1 and syntax["error"]["ename"] == "SyntaxError"
    assert client.run("python", "x", session="s")["stdout"] == ""
    [info] = client.sessions()
    assert info["session"] == "s" and info["language"] == "python" and info["busy"] is False


def test_bash_session_keeps_state_and_exit_ends_it(client, agent):
    (agent.home / "sub").mkdir()
    client.run("bash", 'cd sub; greeting=hello; shout() { echo "$1!"; }', session="b")
    result = client.run("bash", 'pwd; shout "$greeting"; false', session="b")
    assert result["stdout"] == f"{agent.home}/sub\nhello!\n" and result["exit_code"] == 1
    assert client.run("bash", 'read line; echo "[$line]"', session="b")["stdout"] == "[]\n"
    ended = client.run("bash", "echo bye; exit 7", session="b")
    assert ended["stdout"] == "bye\n" and ended["exit_code"] == 7
    fresh = client.run("bash", 'echo "[$greeting]"; pwd', session="b")
    assert fresh["stdout"] == f"[]\n{agent.home}\n" and fresh["exit_code"] == 0


@needs_node
def test_javascript_session_keeps_state(client):
    first = client.run(
        "javascript",
        "var n = 20; function twice(v) { return 2 * v; } let kept = 1; console.log('hi'); twice(n) + 2",
        session="j",
    )
    assert first["stdout"] == "hi\n" and first["result"] == {"text/plain": "42"}
    assert client.run("javascript", "twice(n) + kept", session="j")["result"] == {
        "text/plain": "41"
    }
    failed = client.run("javascript", "null.x", session="j")
    assert failed["exit_code"] == 1 and failed["error"]["ename"] == "TypeError"
    assert "TypeError" in failed["stderr"]
    awaited = client.run(
        "javascript", "await new Promise((r) => setTimeout(r, 10)); console.log(n)", session="j"
    )
    assert awaited["stdout"] == "20\n" and awaited["exit_code"] == 0


def test_concurrent_runs_in_two_sessions(client):
    code = "import time\ntime.sleep(1)\nprint({name!r})"
    client.run("python", "1", session="one")
    client.run("python", "1", session="two")
    started = time.monotonic()
    one = run_in_thread(client.run, "python", code.format(name="one"), session="one")
    two = run_in_thread(client.run, "python", code.format(name="two"), session="two")
    assert one()["stdout"] == "one\n" and two()["stdout"] == "two\n"
    assert time.monotonic() - started < 1.8, "the two sessions did not run in parallel"


def test_session_timeout_interrupts_first_and_keeps_the_state(client):
    client.run("python", "state = 'old'", session="t")
    code = "import time\nprint('started', flush=True)\ntime.sleep(1000)\n"
    result = client.run("python", code, session="t", timeout=1)
    assert result["timed_out"] is True and result["exit_code"] == 124
    assert result["stdout"] == "started\n" and result["session_restarted"] is False
    assert result["error"]["ename"] == "KeyboardInterrupt"
    assert client.run("python", "print(state)", session="t")["stdout"] == "old\n"


IGNORES_SIGINT = (
    "import signal, subprocess, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "p = subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
    "open('child.pid', 'w').write(str(p.pid))\n"
    "print('started', flush=True)\n"
    "time.sleep(1000)\n"
)


def test_session_timeout_kills_code_that_ignores_the_interrupt(client, agent):
    client.run("python", "state = 'old'", session="t")
    started = time.monotonic()
    result = client.run("python", IGNORES_SIGINT, session="t", timeout=1)
    assert result["timed_out"] is True and result["exit_code"] == 124
    assert result["session_restarted"] is True and result["stdout"] == "started\n"
    assert time.monotonic() - started < 1 + INTERRUPT_GRACE_SECONDS + 2
    assert wait_until(lambda: gone(int((agent.home / "child.pid").read_text())), 2)
    after = client.run("python", "print(state)", session="t")
    assert after["exit_code"] == 1 and "NameError" in after["stderr"]


def test_an_ignored_interrupt_restarts_the_session_after_the_grace(client):
    client.run("python", "state = 'old'", session="g")
    pending = start_and_wait_for_output(client, "python", IGNORES_SIGINT, session="g")
    asked = time.monotonic()
    assert client.interrupt("g") == 1
    result = pending()
    assert INTERRUPT_GRACE_SECONDS - 0.2 < time.monotonic() - asked < INTERRUPT_GRACE_SECONDS + 2
    assert result["interrupted"] is True and result["session_restarted"] is True
    assert "NameError" in client.run("python", "state", session="g")["stderr"]


def test_an_ignored_interrupt_ends_a_stateless_run_after_the_grace(client):
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('go', flush=True)\ntime.sleep(1000)"
    pending = start_and_wait_for_output(client, "python", code)
    asked = time.monotonic()
    assert client.interrupt() == 1
    result = pending()
    assert time.monotonic() - asked < INTERRUPT_GRACE_SECONDS + 2
    assert result["interrupted"] is True and result["exit_code"] != 0


def test_interrupt_python_session_keeps_state(client):
    client.run("python", "counter = 5", session="i")
    code = "import time\nprint('busy', flush=True)\ntime.sleep(30)"
    pending = start_and_wait_for_output(client, "python", code, session="i")
    assert client.interrupt("i") == 1
    result = pending()
    assert result["interrupted"] is True and result["exit_code"] == 130
    assert result["error"]["ename"] == "KeyboardInterrupt"
    assert client.run("python", "counter + 1", session="i")["result"] == {"text/plain": "6"}
    assert client.interrupt("i") == 0, "an idle session has nothing to interrupt"


def test_interrupt_bash_session_aborts_the_cell_and_keeps_state(client):
    client.run("bash", "kept=yes", session="bi")
    code = "spin() { while true; do sleep 0.05; done; }\necho go\nfor i in 1 2 3; do spin; done\necho after"
    pending = start_and_wait_for_output(client, "bash", code, session="bi")
    time.sleep(0.2)
    assert client.interrupt("bi") == 1
    result = pending()
    assert result["interrupted"] is True and result["exit_code"] == 130
    assert "after" not in result["stdout"]
    assert client.run("bash", "echo $kept", session="bi")["stdout"] == "yes\n"


@needs_node
def test_interrupt_javascript_session_keeps_state(client):
    client.run("javascript", "var kept = 'yes'", session="ji")
    code = "console.log('go'); while (true) {}"
    pending = start_and_wait_for_output(client, "javascript", code, session="ji")
    assert client.interrupt("ji") == 1
    result = pending()
    assert result["interrupted"] is True and result["exit_code"] == 130
    assert client.run("javascript", "kept", session="ji")["result"] == {"text/plain": "'yes'"}


def test_read_file_refuses_files_larger_than_its_bound(client, agent):
    with open(agent.home / "sparse.bin", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    with pytest.raises(InvalidArgumentError, match="larger than 64 MB"):
        client.read_file("sparse.bin")


def test_close_session(client):
    client.run("python", "v = 1", session="c")
    assert [s["session"] for s in client.sessions()] == ["c"]
    assert client.close_session("c", "python") == 1
    assert client.sessions() == []
    assert "NameError" in client.run("python", "v", session="c")["stderr"]


# -- files -------------------------------------------------------------------------------


def test_write_and_read_files(client, agent, tmp_path):
    payload = bytes(range(256)) * 10
    assert client.write_file("data/blob.bin", payload) == len(payload)
    assert (agent.home / "data" / "blob.bin").read_bytes() == payload
    assert client.read_file("data/blob.bin") == payload
    outside = tmp_path / "abs.txt"
    client.write_file(str(outside), b"absolute", mode=0o600)
    assert outside.read_bytes() == b"absolute" and outside.stat().st_mode & 0o777 == 0o600
    assert client.run("bash", "wc -c < data/blob.bin")["stdout"].strip() == "2560"
    with pytest.raises(InvalidArgumentError, match="no such file"):
        client.read_file("missing.txt")
    with pytest.raises(InvalidArgumentError, match="NUL"):
        client.read_file("bad\0name")
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        client.read_file("data")  # a directory


# -- deadline, shutdown, relay, reconnect ------------------------------------------------


def test_deadline_ends_the_agent_and_kills_its_processes(client, agent):
    client.run("bash", "sleep 1000 > /dev/null & echo $! > bg.pid", session="d")
    worker = client.sessions()[0]["pid"]
    bg = int((agent.home / "bg.pid").read_text())
    client.set_deadline(time.time() + 0.3)
    client.set_deadline(None)
    time.sleep(0.6)
    assert agent.proc.poll() is None, "deadline null must disable the watchdog"
    client.set_deadline(time.time() + 0.3)
    assert agent.proc.wait(10) == 0
    assert wait_until(lambda: gone(bg) and gone(worker), 2)
    with pytest.raises(AgentError, match="unreachable"):
        client.hello()


def test_run_carries_the_deadline(client, agent):
    """A run's optional ``deadline`` moves the watchdog as the ``deadline`` op does."""
    client.set_deadline(None)
    assert client.run("python", "print(1)", deadline=time.time() + 0.3)["stdout"] == "1\n"
    assert agent.proc.wait(10) == 0
    with pytest.raises(AgentError, match="unreachable"):
        client.hello()


def test_run_rejects_a_bad_deadline(client):
    with pytest.raises(InvalidArgumentError, match="deadline"):
        client.request("run", language="python", code="1", deadline="soon")


def test_deadline_flag_at_start(tmp_path):
    proc = AgentProcess(tmp_path, deadline=time.time() + 0.5)
    try:
        assert proc.client.hello()["pid"] == proc.proc.pid
        assert proc.proc.wait(10) == 0
    finally:
        proc.stop()


def test_shutdown_kills_everything(client, agent):
    client.run("bash", "sleep 1000 > /dev/null & echo $! > bg.pid", session="x")
    bg = int((agent.home / "bg.pid").read_text())
    client.shutdown()
    assert agent.proc.wait(10) == 0
    assert wait_until(lambda: gone(bg), 2)


def test_relay_pumps_stdio_to_the_socket(agent):
    argv = agent_argv("relay", "--socket", agent.socket, "--peer-pid", str(agent.proc.pid))
    with AgentClient(lambda: RelayChannel(argv), TOKEN) as relayed:
        result = relayed.run("bash", "echo via relay")
    assert (result["stdout"], result["exit_code"]) == ("via relay\n", 0)


def test_the_relay_refuses_a_socket_another_process_listens_on(agent, tmp_path):
    impostor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    impostor.bind(str(tmp_path / "impostor.sock"))
    impostor.listen(1)
    try:
        relay = subprocess.run(
            agent_argv("relay", "--socket", str(tmp_path / "impostor.sock"),
                       "--peer-pid", str(agent.proc.pid)),
            input=b'{"id": "r", "op": "hello"}\n', capture_output=True, timeout=20)
        assert relay.returncode == 1 and b"refusing it" in relay.stderr
        impostor.settimeout(1)
        conn, _ = impostor.accept()  # it connected, and sent nothing
        conn.settimeout(1)
        assert conn.recv(100) == b""
        conn.close()
    finally:
        impostor.close()


def test_client_reconnects_and_reports_an_unreachable_agent(client, agent):
    assert client.hello()["pid"] == agent.proc.pid
    client.close()
    assert client.hello()["pid"] == agent.proc.pid  # lazily reconnected
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait(5)
    with pytest.raises(AgentError, match="unreachable"):
        client.hello()


# --------------------------------------------------------------------------- the package


def test_the_zipapp_serves_sessions_and_relays(tmp_path):
    zipapp = tmp_path / "sandbox_agent.pyz"
    zipapp.write_bytes(zipapp_bytes())
    home = tmp_path / "home"
    home.mkdir()
    agent = AgentProcess(home, zipapp=zipapp)
    try:
        first = agent.client.run("python", "x = 6 * 7\nx", session="s")
        assert first["result"] == {"text/plain": "42"}
        found = agent.client.complete("s", "x.bit_l")
        if AGENT_HAS_IPYTHON:  # IPython's completer replaces the attribute only
            assert found["matches"] == ["bit_length"] and found["cursor_start"] == 2
        else:
            assert found["matches"] == ["x.bit_length"]
        argv = agent_argv("relay", "--socket", agent.socket, zipapp=zipapp)
        with AgentClient(lambda: RelayChannel(argv), TOKEN) as relayed:
            assert relayed.run("python", "print(x + 1)", session="s")["stdout"] == "43\n"
        unreachable = agent_argv("relay", "--socket", str(tmp_path / "none"), zipapp=zipapp)
        assert subprocess.run(unreachable, capture_output=True).returncode == 1  # status kept
    finally:
        agent.stop()


def test_the_python_worker_imports_only_what_it_needs(client):
    code = "import sys\nsorted(m for m in sys.modules if m.startswith('sandbox_agent'))"
    loaded = eval(client.run("python", code, session="w")["result"]["text/plain"])
    assert loaded == ["sandbox_agent", "sandbox_agent.ishell", "sandbox_agent.rich",
                      "sandbox_agent.wire", "sandbox_agent.worker"]


def test_the_agent_says_ready_before_importing_the_server(tmp_path):
    """READY needs the token, the home, the hardening, the signal block, the listening
    socket and the watchdog only (:mod:`.boot`): json, the server, runs, sessions and
    snapshots are imported after it. ``-X importtime`` logs each import to stderr, which
    the agent points at /dev/null right after READY: the log is what came before. Started
    as the local provider starts it (a listening fd, ``-I -S``)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "sock"))
    listener.listen(8)
    argv = dir_argv(AGENT_PYTHON, str(PACKAGE_DIR.parent), "serve", "--listen-fd",
                    str(listener.fileno()), "--home", str(tmp_path),
                    flags=("-I", "-S", "-X", "importtime"))
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(listener.fileno(),),
                            start_new_session=True)
    listener.close()
    try:
        proc.stdin.write(TOKEN.encode() + b"\n")
        proc.stdin.close()
        assert proc.stdout.readline() == b"READY\n"
        log = proc.stderr.read().decode()  # ends when the agent's stderr is /dev/null
        imported = {line.rsplit("|", 1)[-1].strip() for line in log.splitlines()}
        heavy = {"json", "re", "socket", "selectors", "shutil", "bz2", "lzma"} | {
            f"sandbox_agent.{m}" for m in ("wire", "server", "runs", "registry", "usage",
                                           "sessions", "snapshots", "files", "zygote")}
        assert sorted(imported & heavy) == []
        assert "sandbox_agent.boot" in imported  # the log is the agent's
        client = AgentClient(unix_connector(str(tmp_path / "sock")), TOKEN)
        assert client.run("python", "print(1)")["stdout"] == "1\n"  # and it serves
        client.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_the_host_imports_only_the_wire_format():
    code = ("import sys, nexus_kernel.agent.client, nexus_kernel.agent.deploy, "
            "nexus_kernel.providers; print(sorted(m for m in sys.modules if '.sandbox_agent' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == str(["nexus_kernel.agent.sandbox_agent",
                               "nexus_kernel.agent.sandbox_agent.wire"])


def test_a_python3_older_than_the_agent_needs_exits_with_one_line(monkeypatch, tmp_path):
    """The boot line checks the version before importing anything of the agent (whose
    syntax an old python may not parse). The host's python plays an old one here: the bar
    is raised above it."""
    from nexus_kernel.agent import deploy

    monkeypatch.setattr(deploy, "MIN_PYTHON", (99, 0))
    done = subprocess.run(dir_argv(sys.executable, str(tmp_path), "serve"),
                          capture_output=True, text=True, timeout=30)
    version = sys.version.split()[0]
    assert (done.returncode, done.stderr) == (1, f"{deploy.TOO_OLD}{version}\n")


@pytest.mark.parametrize("bad", ["zz", "00", "", "00" * 8 * 4097, "00" * 8])
def test_an_agent_with_a_bad_seccomp_filter_does_not_serve(bad):
    """The filter is installed before anything runs; one that is not a BPF program ends the
    agent with one line (it never serves unfiltered)."""
    done = subprocess.run(
        [sys.executable, "-m", "sandbox_agent", "serve", "--socket", "@nexus-test-none",
         "--seccomp-filter", bad],
        cwd=ROOT / "nexus_kernel" / "agent", capture_output=True, text=True, timeout=30,
    )
    assert done.returncode != 0 and "seccomp" in done.stderr and "--seccomp-filter" not in done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
