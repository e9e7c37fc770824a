"""Snapshots (issue 16): a python session's state held by a forked holder plus a copy of the
home directory, restored any number of times; on real local sandboxes (bubblewrap), and
docker where the engine is up (the same agent code)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from nexus_kernel.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    SandboxNotFoundError,
)

from .conftest import docker_not_ready, docker_problem, needs_bwrap, nexus

pytestmark = needs_bwrap


def run(nx, sandbox_id: str, code: str, language: str = "python") -> dict:
    result = nx.sandbox_run(sandbox_id, language, code, session="kernel")
    assert result["exit_code"] == 0, result
    return result


def value(nx, sandbox_id: str, expression: str) -> str:
    return run(nx, sandbox_id, f"print(({expression}))")["stdout"].strip()


def test_undo_keeps_numpy_and_pandas_objects_and_files(datascience, nx):
    sb = nx.sandbox_create("snap-ds")["sandbox_id"]
    run(nx, sb, "import numpy as np, pandas as pd\n"
                "df = pd.DataFrame({'a': range(1000), 'b': np.arange(1000) * 2.0})\n"
                "arr = np.linspace(0, 1, 10_000)\n"
                "df.to_csv('df.csv', index=False)")
    snap = nx.sandbox_snapshot(sb, "before")
    assert snap["sessions"] == ["kernel"] and snap["size"] > 0
    for _ in range(2):  # a snapshot is kept unchanged by a restore: undo is repeatable
        run(nx, sb, "del df; arr[:] = 0; import os; os.remove('df.csv'); open('junk', 'w')")
        assert value(nx, sb, "'os' in dir()") == "True"
        done = nx.sandbox_restore(sb, "before")
        assert done["snapshot_id"] == snap["snapshot_id"] and done["restarted"] == []
        assert value(nx, sb, "df.shape, float(df['b'].sum()), float(arr.sum())") == \
            "((1000, 2), 999000.0, 5000.0)"
        assert value(nx, sb, "'os' in dir(), [f for f in __import__('os').listdir('.') "
                             "if not f.startswith('.')]") == "(False, ['df.csv'])"
        assert value(nx, sb, "pd.read_csv('df.csv').equals(df)") == "True"
        # BLAS works in the restored worker (its thread pool starts again when used)
        assert value(nx, sb, "float((np.ones((400, 400)) @ np.ones((400, 400))).sum())") == \
            "64000000.0"


def test_threads_processes_and_open_files(nx, sandbox):
    sb = sandbox
    run(nx, sb, "import os, subprocess, threading, time\n"
                "log = open('log.txt', 'w'); log.write('a'); log.flush()\n"
                "t = threading.Thread(target=time.sleep, args=(60,), name='user-bg', daemon=True)\n"
                "t.start()\n"
                "p = subprocess.Popen(['sleep', '60'])")
    snap = nx.sandbox_snapshot(sb)
    assert snap["lost_threads"] == {"kernel": ["user-bg"]}
    pid = int(value(nx, sb, "p.pid"))
    assert snap["lost_processes"] == {"kernel": [pid]}
    run(nx, sb, "log.write('b'); log.flush(); open('log.txt', 'w').write('zzz'); x = 1")
    nx.sandbox_restore(sb, snap["snapshot_id"])
    # threads do not survive a fork; the worker's child was the replaced worker's: ended
    assert value(nx, sb, "[t.name for t in threading.enumerate()], t.is_alive()") == \
        "(['MainThread'], False)"
    assert value(nx, sb, "'x' in dir()") == "False"
    state = value(nx, sb, f"open('/proc/{pid}/stat').read().split()[2] "
                          f"if os.path.exists('/proc/{pid}') else 'gone'")
    assert state in ("gone", "Z")
    # the open file is the restored file, at the snapshot's offset
    run(nx, sb, "log.write('c'); log.close()")
    assert value(nx, sb, "open('log.txt').read()") == "ac"


def test_bash_files_restored_interpreter_restarted(nx, sandbox):
    sb = sandbox
    run(nx, sb, "X=kept; echo one > f.txt", language="bash")
    snap = nx.sandbox_snapshot(sb)
    assert snap["not_captured"] == ["kernel (bash)"]
    run(nx, sb, "echo two > f.txt; touch extra", language="bash")
    done = nx.sandbox_restore(sb, snap["snapshot_id"])
    assert done["restarted"] == ["kernel (bash)"]
    out = run(nx, sb, 'echo "${X:-unset}"; cat f.txt; ls', language="bash")["stdout"]
    assert out.split() == ["unset", "one", "f.txt"]


def test_snapshot_refused_during_a_run_and_restore_after_pause(nx, sandbox):
    sb = sandbox
    run(nx, sb, "n = 1")
    started = threading.Event()
    worker = threading.Thread(target=lambda: (started.set(), nx.sandbox_run(
        sb, "python", "import time; time.sleep(3)", session="kernel")))
    worker.start()
    started.wait()
    time.sleep(0.5)
    with pytest.raises(InvalidArgumentError, match="while the sandbox runs code"):
        nx.sandbox_snapshot(sb)
    worker.join()
    snap = nx.sandbox_snapshot(sb, "one")
    nx.sandbox_pause(sb)
    nx.sandbox_resume(sb)
    run(nx, sb, "n = 2")
    nx.sandbox_restore(sb, "one")
    assert value(nx, sb, "n") == "1"
    assert [s["snapshot_id"] for s in nx.sandbox_snapshots(sb)["snapshots"]] == \
        [snap["snapshot_id"]]
    count = "len([p for p in __import__('os').listdir('/proc') if p.isdigit()])"
    before = int(value(nx, sb, count))
    nx.sandbox_snapshot_delete(sb, "one")  # its holder process ends
    deadline = time.monotonic() + 5
    while int(value(nx, sb, count)) >= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(value(nx, sb, count)) == before - 1
    with pytest.raises(InvalidArgumentError, match="no snapshot 'one'"):
        nx.sandbox_restore(sb, "one")


def test_another_users_sandbox_is_refused(nexus_home):
    from nexus_kernel import LocalBackend, NexusFS

    owner = NexusFS(backend=LocalBackend(nexus_home / "files"), user="alice", is_admin=False)
    other = NexusFS(backend=LocalBackend(nexus_home / "files"), user="mallory", is_admin=False)
    admin = NexusFS(backend=LocalBackend(nexus_home / "files"), user="root", is_admin=True)
    sb = owner.sandbox_create("mine")["sandbox_id"]
    try:
        snap = owner.sandbox_snapshot(sb)
        for call in (lambda: other.sandbox_snapshot(sb),
                     lambda: other.sandbox_restore(sb, snap["snapshot_id"]),
                     lambda: other.sandbox_snapshots(sb),
                     lambda: other.sandbox_snapshot_delete(sb, snap["snapshot_id"]),
                     lambda: other.sandbox_fork(sb)):
            with pytest.raises(SandboxNotFoundError):
                call()
        with pytest.raises(PermissionDeniedError, match="only its owner can fork it"):
            admin.sandbox_fork(sb)
    finally:
        owner.sandbox_stop(sb)
        owner.close()
        other.close()
        admin.close()


def test_cli_snapshot_restore_and_list(nx, sandbox):
    run(nx, sandbox, "v = 'before'")
    made = nexus("sandbox", "snapshot", sandbox, "--name", "cp", "--json")
    assert made.returncode == 0, made.stderr
    snap_id = json.loads(made.stdout)["snapshot_id"]
    run(nx, sandbox, "v = 'after'")
    listed = nexus("sandbox", "snapshots", sandbox)
    assert snap_id in listed.stdout and "cp" in listed.stdout
    done = nexus("sandbox", "restore", sandbox, "cp")
    assert done.returncode == 0 and f"Restored {snap_id}" in done.stdout
    assert value(nx, sandbox, "v") == "before"
    forked = nexus("sandbox", "fork", sandbox, "--snapshot", "cp", "--json")
    assert forked.returncode == 0, forked.stderr
    fork_id = json.loads(forked.stdout)["forks"][0]["sandbox_id"]
    assert value(nx, fork_id, "v") == "before"
    missing = nexus("sandbox", "restore", sandbox, "nope")
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1


def test_docker_undo(nexus_home):
    from nexus_kernel import LocalBackend, NexusFS
    from nexus_kernel.config import Settings

    problem = docker_problem(Settings.load())
    if problem:
        docker_not_ready(problem)
    nx = NexusFS(backend=LocalBackend(nexus_home / "files"), sandbox_provider="docker")
    sb = nx.sandbox_create("snap-docker")["sandbox_id"]
    try:
        run(nx, sb, "data = list(range(5)); open('f', 'w').write('x')")
        snap = nx.sandbox_snapshot(sb)
        run(nx, sb, "data.clear(); import os; os.remove('f')")
        nx.sandbox_restore(sb, snap["snapshot_id"])
        assert value(nx, sb, "data, open('f').read()") == "([0, 1, 2, 3, 4], 'x')"
    finally:
        nx.sandbox_stop(sb)
        nx.close()


def test_magics_undo_checkpoint_and_restore(nexus_home):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from magics import SandboxMagics

    shell = InteractiveShell.instance()
    magics = SandboxMagics(shell=shell)
    shell.register_magics(magics)

    def line(text: str) -> str:
        with capture_output() as cap:
            shell.run_line_magic("sandbox", text)
        return cap.stdout

    def cell(body: str) -> str:
        with capture_output() as cap:
            shell.run_cell_magic("sandbox", "", body)
        return cap.stdout

    try:
        line("create magic-undo")
        cell("x = 1")
        cell("x = 2; open('f', 'w').write('two')")
        assert line("undo").startswith("Undone: variables and files are as they were before")
        assert cell("import os; print(x, os.path.exists('f'))") == "1 False\n"
        line("checkpoint one")
        cell("x = 3")
        assert line("restore one").startswith("Restored checkpoint 'one'")
        assert cell("print(x)") == "1\n"
        assert "keeping the last 5 cells" in line("checkpoints")
        forked = line("fork")
        assert forked.startswith("Forked sandbox sb_") and "%sandbox use sb_" in forked
        assert "off" in line("checkpoints off")
        cell("x = 4")
        with pytest.raises(Exception, match="automatic checkpoints are off"):
            shell.run_line_magic("sandbox", "undo")
    finally:
        for record in magics.manager.list():
            if record.status.value != "stopped":
                magics.manager.stop(record.sandbox_id)
        magics.close()
        shell.configurables.remove(magics)


def test_fork_copies_files_and_variables_and_diverges(nx, sandbox):
    sb = sandbox
    run(nx, sb, "import json\nx = [1, 2]\nfh = open('data.txt', 'w'); fh.write('d'); fh.flush()")
    snap = nx.sandbox_snapshot(sb)
    run(nx, sb, "x.append('later')")
    done = nx.sandbox_fork(sb, count=4)  # the agent pattern: one state, four branches
    assert done["sessions"] == ["kernel"] and done["skipped"] == {"kernel": ["fh"]}
    forks = [f["sandbox_id"] for f in done["forks"]]
    assert len({sb, *forks}) == 5
    for fork in forks:
        assert value(nx, fork, "x, json.dumps(x), open('data.txt').read()") == \
            "([1, 2, 'later'], '[1, 2, \"later\"]', 'd')"
    for n, fork in enumerate(forks):
        run(nx, fork, f"x.append({n}); open('data.txt', 'w').write('branch {n}')")
    for n, fork in enumerate(forks):
        assert value(nx, fork, "x, open('data.txt').read()") == f"([1, 2, 'later', {n}], 'branch {n}')"
    assert value(nx, sb, "x, open('data.txt').read()") == "([1, 2, 'later'], 'd')"
    first, second = forks[:2]
    # from a snapshot: the state it had; the parent is unchanged
    from_snap = nx.sandbox_fork(sb, snap["snapshot_id"])["forks"][0]["sandbox_id"]
    assert value(nx, from_snap, "x") == "[1, 2]"
    assert value(nx, sb, "x") == "[1, 2, 'later']"
    # each fork has its own agent token
    tokens = {nx.manager.get(s).handle["token"] for s in (sb, first, second)}
    assert len(tokens) == 3


def test_snapshots_right_after_restores(nx, sandbox):
    """A restored worker snapshots again at once (its holder answers the agent, not the
    process that forked it), and each restore is the snapshot's state."""
    run(nx, sandbox, "n = 0")
    for i in range(5):
        snap = nx.sandbox_snapshot(sandbox, "loop")
        run(nx, sandbox, "n += 100")
        nx.sandbox_restore(sandbox, snap["snapshot_id"])
        run(nx, sandbox, "n += 1")
        assert value(nx, sandbox, "n") == str(i + 1)
    assert len(nx.sandbox_snapshots(sandbox)["snapshots"]) == 1  # a name names one


def test_checkpoint_holders_survive_the_next_cell_being_interrupted_or_killed(nx, sandbox):
    """A cell's checkpoint is answered before its holder has left the session's process
    group (``freeze.py``): an interrupt of the next cell (SIGINT to that group) and the
    death of the session's worker right after it must leave the holder alone."""
    manager = nx.manager
    for i in range(2):
        manager.run(sandbox, "python", f"n = {10 * i + 1}", 30, session="kernel",
                    checkpoint={"name": f"interrupted{i}", "keep_auto": 8})
        cell = threading.Thread(target=manager.run, args=(
            sandbox, "python", "import time; time.sleep(10)", 30), kwargs={"session": "kernel"})
        cell.start()
        deadline = time.monotonic() + 10
        while not manager.interrupt(sandbox, "kernel") and time.monotonic() < deadline:
            pass  # as soon as the next cell runs
        cell.join()
        manager.run(sandbox, "python", f"n = {10 * i + 2}", 30, session="kernel",
                    checkpoint={"name": f"killed{i}", "keep_auto": 8})
        died = manager.run(sandbox, "python", "import os; os.kill(os.getpid(), 9)", 30,
                           session="kernel")
        assert died.exit_code != 0
    for i in range(2):
        for name, n in ((f"interrupted{i}", 10 * i + 1), (f"killed{i}", 10 * i + 2)):
            nx.sandbox_restore(sandbox, name)
            assert value(nx, sandbox, "n") == str(n), name


def test_snapshots_share_an_unchanged_home_copy_and_see_every_change(nx, sandbox):
    """Snapshots taken while no file changed share one copy of the home directory; a
    same-size rewrite right after a snapshot (within the file system's clock tick) is
    still seen by the next one, and a file changed just before a snapshot is not trusted."""
    sb = sandbox
    copies = ("sorted(n for d in __import__('glob').glob('/tmp/nexus-agent-*/snapshots') "
              "for n in __import__('os').listdir(d) if n.startswith('files-'))")
    run(nx, sb, "open('data.txt', 'w').write('A' * 1000); import time; time.sleep(0.2)")
    first = [nx.sandbox_snapshot(sb)["snapshot_id"] for _ in range(3)]
    assert len(eval(value(nx, sb, copies))) == 1  # noqa: S307 - a list of names we printed
    run(nx, sb, "open('data.txt', 'r+').write('B' * 1000)")  # at once, the same size
    changed = nx.sandbox_snapshot(sb)["snapshot_id"]  # right after a change: not shared
    again = nx.sandbox_snapshot(sb)["snapshot_id"]
    assert len(eval(value(nx, sb, copies))) == 3  # noqa: S307
    for snap, text in [*((s, "A") for s in first), (changed, "B"), (again, "B")]:
        nx.sandbox_restore(sb, snap)
        assert value(nx, sb, "open('data.txt').read()") == text * 1000, snap
    for snap in first:
        nx.sandbox_snapshot_delete(sb, snap)
    nx.sandbox_restore(sb, changed)  # its copy outlives the shared one's deletion
    assert value(nx, sb, "open('data.txt').read()") == "B" * 1000
    assert len(eval(value(nx, sb, copies))) == 2  # noqa: S307


def test_restore_right_after_a_snapshot_finds_its_holder(nx, sandbox):
    """A restore at once after a snapshot kills the session's process tree: the holder
    must have left it (its middle process exiting is not enough: its children go to the
    agent a moment later) and must not be left stopped by that kill."""
    run(nx, sandbox, "data = [bytearray(1000) for _ in range(20000)]; n = 7")
    for _ in range(50):
        nx.sandbox_snapshot(sandbox, "now")
        nx.sandbox_restore(sandbox, "now")
    assert value(nx, sandbox, "n, len(data)") == "(7, 20000)"
