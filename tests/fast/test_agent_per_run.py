"""The agent's per-run machinery, in this process: request threads are reused and bounded, and
the counters read around every run through kept fds are read afresh each time."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from nexus_kernel.agent.sandbox_agent import usage
from nexus_kernel.agent.sandbox_agent.threads import Threads


def _submit_and_wait(pool: Threads, n: int) -> list[int]:
    """Submit ``n`` calls one after another, each once the previous ended; their thread ids."""
    idents: list[int] = []
    for _ in range(n):
        done = threading.Event()
        pool.submit(lambda d=done: (idents.append(threading.get_ident()), d.set()))
        assert done.wait(5)
        deadline = time.monotonic() + 5
        while pool.idle() == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # the thread is back among the idle ones
    return idents


def test_request_threads_are_reused() -> None:
    idents = _submit_and_wait(Threads(), 20)
    assert len(set(idents)) == 1


def test_idle_threads_are_bounded_and_end_when_idle_long() -> None:
    pool = Threads(max_idle=2, idle_seconds=0.2)
    release = threading.Event()
    started = threading.Barrier(6)

    def block() -> None:
        started.wait(5)
        release.wait(5)

    for _ in range(5):
        pool.submit(block)
    started.wait(5)  # five threads at once: more than max_idle
    release.set()
    deadline = time.monotonic() + 5
    while pool.idle() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert pool.idle() == 2  # the three beyond the bound ended
    deadline = time.monotonic() + 5
    while pool.idle() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.idle() == 0  # and the idle ones end after idle_seconds


def test_a_kept_counter_file_is_read_afresh() -> None:
    first = int(usage._read_kept(usage.LAST_PID))
    child = subprocess.Popen(["true"])
    child.wait()
    second = int(usage._read_kept(usage.LAST_PID))
    assert second != first and (second >= child.pid or second < first)  # or pids wrapped
    assert usage.LAST_PID in usage._kept  # one fd, kept
    assert os.pread(usage._kept[usage.LAST_PID], 64, 0).strip().isdigit()


def test_a_processs_kept_proc_files_are_read_afresh_and_die_with_it() -> None:
    code = ("import sys\nsys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.readline()\n"
            "x = b'x' * (64 << 20)\nsys.stdout.write('grown\\n'); sys.stdout.flush()\n"
            "sys.stdin.readline()\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        files = usage.ProcFiles(child.pid)
        before = usage.proc_stat(files)
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline() == "grown\n"
        after = usage.proc_stat(files)
        assert after[3] - before[3] >= 60 << 20  # resident size, read again on the same fd
        assert after[2] > before[2]  # page faults
        assert usage.peak_memory(files) >= after[3]
    finally:
        child.kill()
        child.wait()
    assert usage.proc_stat(files) is None  # the fd is the dead process's, not a new one's
    files.close()
