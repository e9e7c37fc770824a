"""The python zygote (sandbox_agent/zygote.py): a stateless python run forked from it is as
fresh as a new interpreter (nothing of an earlier run that tried to leak), and ends, fails,
times out and is interrupted as one. On the agent process (no jail) and in local and
docker sandboxes."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from nexus_kernel.config import Settings
from nexus_kernel.errors import ExecutionTimeoutError
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import Status

from .conftest import docker_not_ready, docker_problem
from .test_agent import AgentProcess

#: A run forked by the zygote shows the zygote's command line, its mark rewritten.
FORKED = "print('#nexus-forked' in open('/proc/self/cmdline').read())"

LEAK = """
import json, os, random, sys, threading, time
x = 1
json.leaked = True
os.environ['LEAKED'] = '1'
held = open('held.txt', 'w')
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
sys.path.append('/leaked')
print(os.getpid(), random.random())
"""

PROBE = """
import sys
mods = sorted(sys.modules)
import json, os, random, secrets, subprocess, tempfile, threading, uuid
fresh = subprocess.run([sys.executable, '-u', '-c', 'import sys; print(sorted(sys.modules))'],
                       capture_output=True, text=True).stdout
tag = os.environ['NEXUS_RUN_TAG']
print(json.dumps({
    'globals': sorted(k for k in globals() if not k.startswith('__')),
    'modules': mods == eval(fresh),
    'json_leaked': hasattr(json, 'leaked'),
    'env_leaked': 'LEAKED' in os.environ,
    'path_leaked': '/leaked' in sys.path,
    'fds': sorted(os.listdir('/proc/self/fd')),
    'threads': len(threading.enumerate()), 'tasks': len(os.listdir('/proc/self/task')),
    'pid': os.getpid(), 'random': random.random(), 'uuid': str(uuid.uuid4()),
    'temp': next(tempfile._get_candidate_names()), 'secret': secrets.token_hex(8),
    'tag': tag, 'tag_in_environ': ('NEXUS_RUN_TAG=' + tag).encode()
        in open('/proc/self/environ', 'rb').read().split(b'\\0'),
}))
"""


class _AgentRunner:
    """Runs on an agent process on this host."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="nxz-"))
        self.agent = AgentProcess(self.home)
        self.agent_pid = self.agent.proc.pid

    def run(self, code: str, **kw) -> dict:
        return self.agent.client.run("python", code, **kw)

    def interrupt(self) -> None:
        assert self.agent.client.interrupt() == 1

    def close(self) -> None:
        self.agent.stop()
        shutil.rmtree(self.home, ignore_errors=True)


class _SandboxRunner:
    """Runs in a local or docker sandbox."""

    def __init__(self, provider: str, home: Path) -> None:
        settings = Settings.load(home=home, user="tester", provider=provider)
        self.mgr = SandboxManager(settings)
        template = "minimal" if provider == "local" else None
        self.sid = self.mgr.create("zygote", template_id=template).sandbox_id
        self.agent_pid = 1  # in its pid namespace

    def run(self, code: str, **kw) -> dict:
        try:
            r = self.mgr.run(self.sid, "python", code, **kw)
        except ExecutionTimeoutError as exc:
            r = exc.result
        return {"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code,
                "timed_out": r.timed_out, "interrupted": r.interrupted, "usage": r.usage}

    def interrupt(self) -> None:
        assert self.mgr.interrupt(self.sid) == 1

    def close(self) -> None:
        for record in self.mgr.list():
            if record.status is not Status.STOPPED:
                self.mgr.stop(record.sandbox_id)
        self.mgr.close()


@pytest.fixture(scope="module", params=["agent", "local", "docker"])
def runner(request, tmp_path_factory):
    if request.param == "local" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    if request.param == "docker":
        problem = docker_problem(Settings.load())
        if problem:
            docker_not_ready(problem)
    if request.param == "agent":
        made = _AgentRunner()
    else:
        made = _SandboxRunner(request.param, tmp_path_factory.mktemp("home"))
    try:
        deadline = time.monotonic() + 20  # the first run starts the zygote
        while made.run(FORKED)["stdout"] != "True\n":
            assert time.monotonic() < deadline, "stateless runs are never forked by the zygote"
            time.sleep(0.05)
        yield made
    finally:
        made.close()


def _probe(runner) -> dict:
    result = runner.run(PROBE)
    assert result["exit_code"] == 0, result
    return json.loads(result["stdout"])


def test_a_forked_run_is_as_fresh_as_a_new_interpreter(runner):
    leak = runner.run(LEAK)
    assert leak["exit_code"] == 0, leak
    first, second = _probe(runner), _probe(runner)
    for seen in (first, second):
        assert seen["globals"] == sorted(
            ["json", "os", "random", "secrets", "subprocess", "sys", "tempfile", "threading",
             "uuid", "mods", "fresh", "tag"])
        assert seen["modules"], "sys.modules differs from a fresh interpreter's"
        assert not (seen["json_leaked"] or seen["env_leaked"] or seen["path_leaked"])
        assert seen["fds"] == ["0", "1", "2", "3"]  # 3: the listing's own
        assert seen["threads"] == 1 and seen["tasks"] == 1
        assert seen["tag_in_environ"]
    assert runner.run(FORKED)["stdout"] == "True\n"
    leak_pid, leak_random = leak["stdout"].split()
    assert len({int(leak_pid), first["pid"], second["pid"]}) == 3
    assert len({float(leak_random), first["random"], second["random"]}) == 3
    for key in ("uuid", "temp", "secret", "tag"):
        assert first[key] != second[key], key


def test_exits_like_python_c(runner):
    failed = runner.run("def f():\n    1/0\nf()")
    assert failed["exit_code"] == 1
    assert failed["stderr"] == (
        "Traceback (most recent call last):\n"
        '  File "<string>", line 3, in <module>\n'
        '  File "<string>", line 2, in f\n'
        "ZeroDivisionError: division by zero\n"
    )
    syntax = runner.run("def f(:")
    assert syntax["exit_code"] == 1 and syntax["stderr"].startswith('  File "<string>", line 1')
    assert runner.run("raise SystemExit(3)")["exit_code"] == 3
    said = runner.run("import sys; sys.exit('bye')")
    assert (said["exit_code"], said["stderr"]) == (1, "bye\n")
    assert runner.run("raise KeyboardInterrupt")["exit_code"] == 130
    at_exit = runner.run(
        "import atexit, threading, time\n"
        "atexit.register(print, 'atexit')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()")
    assert (at_exit["exit_code"], at_exit["stdout"]) == (0, "thread\natexit\n")
    assert runner.run("print(input())", input_data="hello\n")["stdout"] == "hello\n"
    assert runner.run("import sys; print(sys.stdin.read() == '')")["stdout"] == "True\n"


def test_a_timeout_kills_a_detached_fork_found_only_by_its_tag(runner):
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        open('orphan.pid', 'w').write(str(os.getpid()))\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "time.sleep(1000)\n"
    )
    result = runner.run(code, timeout=1.5)
    assert result["timed_out"] is True and result["exit_code"] == 124
    check = "import os, time; pid = open('orphan.pid').read(); time.sleep(0.5); " \
            "print(os.path.exists('/proc/' + pid))"
    assert runner.run(check)["stdout"] == "False\n"


def test_a_run_is_forked_as_one_process_that_libc_knows_by_its_own_thread_id(runner):
    """No middle process: a run takes one pid of its sandbox; and libc records the run's own
    thread id (a signal another thread sends to the main thread arrives)."""
    code = (
        "import signal, threading\n"
        "signal.signal(signal.SIGUSR1, lambda *_: print('signalled'))\n"
        "main = threading.main_thread().ident\n"
        "t = threading.Thread(target=signal.pthread_kill, args=(main, signal.SIGUSR1))\n"
        "t.start()\n"
        "t.join()\n"
    )
    result = runner.run(code)
    assert (result["exit_code"], result["stdout"], result["stderr"]) == (0, "signalled\n", "")
    if isinstance(runner, _SandboxRunner):  # its pid counter is the sandbox's own
        assert runner.run("pass")["usage"]["processes"] == 1


def test_a_run_cannot_write_the_zygotes_memory(runner):
    """The zygote is not dumpable: a run of the same uid cannot open its memory to change what
    later runs start from (the runs themselves are dumpable, as a fresh interpreter)."""
    if not isinstance(runner, _SandboxRunner):
        pytest.skip("the host agent's runs are root here: ptrace-capable")
    code = (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        line = open('/proc/%s/cmdline' % pid).read()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if '-c\\0#nexus-zygote' in line:\n"
        "        try:\n"
        "            open('/proc/%s/mem' % pid, 'r+b').close()\n"
        "            print('writable')\n"
        "        except PermissionError:\n"
        "            print('refused')\n"
        "open('/proc/self/mem', 'rb').close()\n"
    )
    assert runner.run(code)["stdout"] == "refused\n"


def test_interrupt_a_forked_run(runner):
    results = []
    printed = threading.Event()
    pending = threading.Thread(target=lambda: results.append(runner.run(
        "import time\nprint('go', flush=True)\ntime.sleep(30)",
        on_event=lambda _: printed.set())))
    pending.start()
    assert printed.wait(20)
    runner.interrupt()
    pending.join(15)
    result = results[0]
    assert result["interrupted"] is True and result["exit_code"] == 130
    assert "KeyboardInterrupt" in result["stderr"]


def test_a_dead_zygote_means_a_fresh_interpreter_then_a_new_zygote(runner):
    kill = (  # this agent's zygote only: the host agent sees every process of the host
        "import os, signal\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        line = open('/proc/%s/cmdline' % pid).read()\n"
        "        stat = open('/proc/%s/stat' % pid).read()\n"
        "    except OSError:\n"
        "        continue\n"
        f"    if '-c\\0#nexus-zygote' in line and stat.split(') ')[1].split()[1] == "
        f"'{runner.agent_pid}':\n"
        "        os.kill(int(pid), signal.SIGKILL)\n"
        "        print('killed')\n"
    )
    assert runner.run(kill)["stdout"] == "killed\n"
    after = runner.run("print(1)")
    assert (after["exit_code"], after["stdout"]) == (0, "1\n")
    deadline = time.monotonic() + 20
    while runner.run(FORKED)["stdout"] != "True\n":
        assert time.monotonic() < deadline, "no new zygote"
        time.sleep(0.05)
