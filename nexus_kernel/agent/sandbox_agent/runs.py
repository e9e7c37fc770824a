"""Runs: the reply channel of one request, the fields of a finished run, and the stateless
run (one fresh interpreter process, forked by the python zygote where it can (:mod:`.zygote`),
whose end is its exit plus EOF on its output pipes; tagged leftovers are killed as soon as
the main process exits).

Exit codes: timeout -> 124 (``timed_out: true``); interrupt -> 130 (``interrupted: true``);
a process killed by signal N -> 128 + N.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time

from .output import RunOutput
from .usage import Tally, measured
from .wire import CHUNK, INTERRUPT_GRACE_SECONDS, TIMEOUT_EXIT_CODE, Failure, close_fds, write_all


def random_id() -> str:
    """16 random hex digits (run ids, run tags, temp names)."""
    return os.urandom(8).hex()


class Reply:
    """Sends the events of one request on its connection."""

    def __init__(self, conn, rid) -> None:
        self.conn = conn
        self.rid = rid
        self.after = None  # called once ``done`` is sent (a run's checkpoint)

    def event(self, ev: str, **fields) -> None:
        msg = {"id": self.rid, "ev": ev}
        msg.update(fields)
        self.conn.send(msg)

    def output(self, stream: str, text: str) -> None:
        self.conn.send({"id": self.rid, "ev": stream, "data": text})


def run_result(exit_code, started, timed_out, interrupted, truncated,
               session_restarted=False) -> dict:
    """The ``done`` fields of a run."""
    return {
        "exit_code": TIMEOUT_EXIT_CODE if timed_out else exit_code,
        "execution_time": round(time.monotonic() - started, 6),
        "timed_out": timed_out,
        "interrupted": interrupted,
        "truncated": truncated,
        "session_restarted": session_restarted,
    }


def _feed(fd: int, data: bytes) -> None:
    """Write ``data`` to a run's stdin pipe, then close it (EOF); a reader that exits early
    ends the write."""
    with contextlib.suppress(OSError):
        write_all(fd, data)
    close_fds(fd)


def after_grace(action) -> None:
    """Call ``action`` INTERRUPT_GRACE_SECONDS from now, in a daemon thread."""
    timer = threading.Timer(INTERRUPT_GRACE_SECONDS, action)
    timer.daemon = True
    timer.start()


class StatelessRun:
    """One fresh interpreter process; nothing of it outlives it."""

    def __init__(self, agent, reply: Reply, argv, timeout, limit, input_data=None) -> None:
        self.agent = agent
        self.reply = reply
        self.argv = argv
        self.timeout = timeout
        self.input_data = input_data
        self.output = RunOutput(reply.output, limit)
        self.tag = random_id()
        self.pid = 0
        self.interrupted = False
        self._status: list[int] = []
        self._rusage: list = []
        self._orphans = Tally()

    def interrupt(self) -> bool:
        """SIGINT to the run's process group; its tree is killed if it has not ended
        INTERRUPT_GRACE_SECONDS later."""
        if not self.pid or self._status:
            return False
        self.interrupted = True
        try:
            os.killpg(self.pid, signal.SIGINT)
        except OSError:
            return False
        after_grace(self._kill_if_running)
        return True

    def _kill_if_running(self) -> None:
        if not self._status:
            self.agent.procs.kill(roots=(self.pid,), tag=self.tag)

    def execute(self) -> dict:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        wake_r, wake_w = os.pipe()

        def on_exit(code: int, rusage) -> None:
            self._rusage.append(rusage)
            self._status.append(code)
            os.write(wake_w, b"x")

        in_r = in_w = None
        if self.input_data is not None:
            in_r, in_w = os.pipe()
        started = time.monotonic()
        try:
            env = self.agent.child_env(self.tag)
            self.pid = self.agent.zygotes.fork(
                self.argv, env, self.tag, in_r, out_w, err_w, on_exit, self._orphans,
            ) or self.agent.reaper.spawn(
                self.argv, env, out_w, err_w, on_exit=on_exit, stdin=in_r, tally=self._orphans,
            )
        except OSError as exc:
            close_fds(out_r, out_w, err_r, err_w, wake_r, wake_w, *filter(None, (in_r, in_w)))
            raise Failure(f"cannot start {self.argv[0]}: {exc.strerror}") from None
        close_fds(out_w, err_w)
        if in_w is not None:
            close_fds(in_r)
            threading.Thread(target=_feed, args=(in_w, self.input_data.encode(
                "utf-8", "surrogateescape")), name="run-stdin", daemon=True).start()
        try:
            timed_out = self._pump({out_r: "stdout", err_r: "stderr"}, wake_r, started)
        finally:
            close_fds(out_r, err_r, wake_r, wake_w)
            self.agent.reaper.untrack(self.pid)
        self.output.finish()
        code = self._status[0] if self._status else 1
        result = run_result(code, started, timed_out, self.interrupted, self.output.truncated)
        result["usage"] = self._usage()
        return result

    def _usage(self) -> dict:
        """CPU and peak memory of the root process (with all it waited for) and its orphans."""
        tally = self._orphans
        user, system, peak = tally.user, tally.system, tally.peak
        for rusage in filter(None, self._rusage):  # None: it died before it was adopted
            user += rusage.ru_utime
            system += rusage.ru_stime
            peak = max(peak, rusage.ru_maxrss * 1024)
        return measured(user, system, peak)

    def _pump(self, streams: dict, wake_r: int, started: float) -> bool:
        """Forward output until the process exited and its pipes closed; True if timed out."""
        poller = select.poll()
        for fd in list(streams) + [wake_r]:
            poller.register(fd, select.POLLIN)
        deadline = started + self.timeout if self.timeout is not None else None
        timed_out = exited = False
        drain_until = None
        while streams or not exited:
            now = time.monotonic()
            if drain_until is not None:
                wait = drain_until - now
            elif deadline is not None and not timed_out:
                wait = deadline - now
            else:
                wait = None
            events = poller.poll(None if wait is None else max(0, wait) * 1000)
            for fd, _ in events:
                if fd == wake_r:
                    exited = True
                    poller.unregister(wake_r)
                    continue
                try:
                    data = os.read(fd, CHUNK)
                except OSError:
                    data = b""
                if data:
                    self.output.feed(streams[fd], data)
                else:
                    poller.unregister(fd)
                    del streams[fd]
            now = time.monotonic()
            if deadline is not None and not timed_out and now >= deadline and not exited:
                timed_out = True
                self.agent.procs.kill(roots=(self.pid,), tag=self.tag)
            if exited and drain_until is None:
                # The main process is gone: nothing of a stateless run outlives it.
                self.agent.procs.kill(tag=self.tag)
                drain_until = time.monotonic() + 1.0
            elif drain_until is not None and now >= drain_until:
                break
        return timed_out
