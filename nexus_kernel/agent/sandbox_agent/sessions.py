"""Sessions: one persistent interpreter per (session, language), the run it is executing,
and the reader thread that forwards its output and events (see :mod:`.drivers`)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time

from .drivers import session_argv
from .output import EventScanner, MarkerScanner, RunOutput, read_burst
from .runs import Reply, after_grace, random_id, run_result
from .snapshots import thaw
from .usage import ProcFiles, Tally, measured, peak_memory, proc_stat, reset_peak
from .wire import (
    CHUNK,
    INTERRUPT_GRACE_SECONDS,
    MARKER_PREFIX,
    Failure,
    LineBuffer,
    close_fds,
    decode,
    encode,
    write_all,
)

#: How long ``complete``/``inspect`` wait for a busy session before answering "busy".
QUERY_BUSY_WAIT = 0.2


class SessionRun:
    """The state of the run a session is executing."""

    def __init__(self, reply: Reply, limit: int) -> None:
        self.reply = reply
        self.id = random_id()
        self.output = RunOutput(reply.output, limit)
        marker = MARKER_PREFIX + self.id.encode() + b":"
        self.scanners = {"stdout": MarkerScanner(marker), "stderr": MarkerScanner(marker)}
        self.exit_code: int | None = None
        self.timed_out = False
        self.interrupted = False
        self.restarted = False  # the session was killed to end this run: its state is gone
        self.late_error: dict | None = None  # the run's error, when it came past the cap
        self.cleanup: str | None = None  # a file to delete when the run ends
        self.done = threading.Event()
        self.options: dict = {}  # stdin / stderr_traceback, passed to the worker
        self.events = EventScanner()
        self.awaiting_input = False

    def complete(self) -> bool:
        """True when the end report and both markers have arrived."""
        return self.exit_code is not None and all(s.found for s in self.scanners.values())


class SessionGone(Exception):
    """The session's worker died before the run could start: start a fresh one."""


class Session:
    """A persistent interpreter for one (session, language)."""

    def __init__(self, agent, name: str, language: str) -> None:
        self.agent = agent
        self.name = name
        self.language = language
        self.tag = random_id()
        self.run_lock = threading.Lock()  # one run at a time; later runs queue
        self.dead = False
        self.current: SessionRun | None = None
        self.pid = 0
        self.status: int | None = None
        self.exit_rusage = None  # the worker's wait4 rusage, once it is dead
        self._lock = threading.Lock()
        self._cmd_lock = threading.Lock()  # the command pipe is closed only under it
        self._startup_err = b""
        self._ran = False
        self._queries: dict = {}  # query id -> {"event", "answer"} (complete, inspect)
        self._proc: ProcFiles | None = None  # the worker's /proc files, opened by its first run

    # -- lifecycle --------------------------------------------------------------------

    def start(self, holder: str | None = None) -> None:
        """Spawn the worker and its reader thread; ``holder``: the socket of a snapshot's
        holder (:mod:`.freeze`), which forks the worker with the state it keeps."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        cmd_r, self._cmd_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        self._fds = {out_r: "stdout", err_r: "stderr", ctl_r: "ctl"}
        try:
            if holder is None:
                exe = self.agent.interpreter(self.language)
                self.pid = self.agent.reaper.spawn(
                    session_argv(self.language, exe),
                    self.agent.child_env(self.tag),
                    out_w,
                    err_w,
                    extra=(cmd_r, ctl_w),
                    on_exit=self._on_exit,
                )
            else:
                self.pid = thaw(holder, self.tag, (cmd_r, ctl_w, out_w, err_w))
                self.agent.reaper.adopt(self.pid, self._on_exit)
                self._ran = True
        except OSError as exc:
            close_fds(out_r, err_r, ctl_r, self._cmd_w, self._wake_r, self._wake_w)
            what = self.language if holder is None else "the snapshot's session"
            raise Failure(f"cannot start {what}: {exc.strerror or exc}") from None
        finally:
            close_fds(out_w, err_w, cmd_r, ctl_w)
        threading.Thread(target=self._read_loop, name="session-" + self.name, daemon=True).start()

    def _on_exit(self, code: int, rusage) -> None:
        self.exit_rusage = rusage
        self.status = code
        os.write(self._wake_w, b"x")

    def kill(self) -> None:
        """Kill the worker and everything the session started (not the holders of its
        snapshots: they are waited for until out of its reach)."""
        self.agent.snapshots.settle()
        self.agent.procs.kill(roots=(self.pid,), tag=self.tag)

    def info(self) -> dict:
        return {
            "session": self.name,
            "language": self.language,
            "pid": self.pid,
            "busy": self.current is not None,
        }

    # -- runs -------------------------------------------------------------------------

    def run(self, reply: Reply, code: str, timeout, limit: int, meter, options=None) -> dict:
        """Execute ``code`` in the session (the caller holds ``run_lock``); ``meter`` is
        started once the command is on its way."""
        cur = SessionRun(reply, limit)
        cur.options = dict(options or {})
        with self._lock:
            if self.dead:
                raise SessionGone(self._startup_err)
            self.current = cur
            self._ran = True
        orphans = Tally()
        self.agent.reaper.track(self.pid, orphans)
        started = time.monotonic()
        # If the worker died, the reader completes the run with its exit status.
        with self._cmd_lock, contextlib.suppress(OSError):
            if self._cmd_w >= 0:
                write_all(self._cmd_w, self._command(cur, code))
        # The baselines are read while the worker decodes and compiles the command, off the
        # round trip's path (its code starts later; CPU is counted in clock ticks anyway).
        if self._proc is None:
            self._proc = ProcFiles(self.pid)
        before = proc_stat(self._proc)
        reset_peak(self._proc)
        meter.start()
        if not cur.done.wait(timeout):
            cur.timed_out = True  # interrupt first: the session keeps its state if it stops
            if not (self._signal(cur) and cur.done.wait(INTERRUPT_GRACE_SECONDS)):
                self._kill_for(cur)
            if not cur.done.wait(10):
                self._finish(cur)
        exit_code = cur.exit_code if cur.exit_code is not None else 1
        result = run_result(exit_code, started, cur.timed_out, cur.interrupted,
                            cur.output.truncated, cur.restarted)
        self.agent.reaper.untrack(self.pid)
        result["usage"] = self._usage(before, orphans)
        return result

    def _usage(self, before, orphans: Tally) -> dict:
        """The worker's CPU (with what it waited for) since ``before``, its peak since the
        run began (its whole life's when it died), plus its reaped orphans."""
        rusage = self.exit_rusage
        user, system = orphans.user, orphans.system
        if rusage is not None:
            now, peak = (rusage.ru_utime, rusage.ru_stime), rusage.ru_maxrss * 1024
        else:
            now = proc_stat(self._proc)
            if now is not None and before is not None and now[2] == before[2]:
                peak = before[3]  # no page fault: its resident size did not grow
            else:
                peak = peak_memory(self._proc)
        if now is not None and before is not None:
            user += max(0.0, now[0] - before[0])
            system += max(0.0, now[1] - before[1])
        return measured(user, system, max(peak or 0, orphans.peak))

    def _command(self, cur: SessionRun, code: str) -> bytes:
        if self.language != "bash":
            command = {"id": cur.id, "code": code}
            command.update(cur.options)
            return encode(command)
        path = self.agent.temp_path(f"cell-{cur.id}.sh")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, code.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
        cur.cleanup = path
        return f"{cur.id} {path}\n".encode("utf-8", "surrogateescape")

    def interrupt(self) -> bool:
        """SIGINT to the session's process group if it is running something; code that
        ignores it is killed INTERRUPT_GRACE_SECONDS later (the session restarts empty)."""
        with self._lock:
            cur = self.current
            if cur is None or self.dead:
                return False
            cur.interrupted = True
        if not self._signal(cur):
            return False
        after_grace(lambda: None if cur.done.is_set() else self._kill_for(cur))
        return True

    def _signal(self, cur: SessionRun) -> bool:
        """SIGINT to the session's process group while ``cur`` runs."""
        if self.current is not cur:
            return False
        try:
            os.killpg(self.pid, signal.SIGINT)
        except OSError:
            return False
        return True

    def _kill_for(self, cur: SessionRun) -> None:
        """End ``cur`` by killing the session (its state is lost, and the run says so)."""
        if self.current is cur:
            cur.restarted = True
            self.kill()

    def _finish(self, cur: SessionRun) -> None:
        with self._lock:
            if self.current is not cur:
                return
            self.current = None
        path = cur.cleanup
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
        cur.output.feed("stdout", cur.events.flush())
        if cur.late_error is not None:
            cur.reply.event("error", **cur.late_error)
        cur.output.finish()
        cur.done.set()

    # -- the reader thread ------------------------------------------------------------

    def _read_loop(self) -> None:
        poller = select.poll()
        for fd in list(self._fds) + [self._wake_r]:
            poller.register(fd, select.POLLIN)
        control = LineBuffer()
        try:
            while True:
                events = poller.poll()
                if any(fd == self._wake_r for fd, _ in events):
                    break
                for fd, _ in events:
                    self._read(fd, poller, control)
            self._on_death(poller, control)
        except Exception:
            self.dead = True
            self.kill()
            cur = self.current
            if cur is not None:
                self._finish(cur)

    def _read(self, fd: int, poller, control: LineBuffer) -> None:
        try:
            data = os.read(fd, CHUNK)
        except OSError:
            data = b""
        if not data:
            poller.unregister(fd)
            del self._fds[fd]
            close_fds(fd)
            return
        kind = self._fds[fd]
        if kind == "ctl":
            for line in control.feed(data):
                self._on_control(line)
            return
        cur = self.current
        if cur is None:
            if kind == "stderr" and not self._ran:
                self._startup_err = (self._startup_err + data)[-4096:]
            return
        data += read_burst(fd, data)
        data = cur.scanners[kind].feed(data)
        if kind == "stdout":
            for is_event, piece in cur.events.feed(data):
                if is_event:
                    self._on_control(piece)
                else:
                    cur.output.feed("stdout", piece)
        else:
            cur.output.feed(kind, data)
        if cur.complete():
            self._finish(cur)

    def _on_control(self, line: bytes) -> None:
        try:
            msg = decode(line)
        except ValueError:
            return
        ev = msg.pop("ev", None)
        if ev == "reply":
            box = self._queries.get(msg.pop("id", None))
            if box is not None:
                box["answer"] = msg
                box["event"].set()
            return
        cur = self.current
        if cur is None:
            return
        if ev == "end":
            if msg.get("id") == cur.id:
                code = msg.get("exit_code")
                cur.exit_code = code if isinstance(code, int) else 1
                if cur.complete():
                    self._finish(cur)
        elif ev in ("result", "display", "error", "clear_output", "input_request"):
            if not cur.output.charge(len(line)):  # every event counts against the cap
                if ev == "error":  # the last one is sent when the run ends, cut short
                    cur.late_error = {"ename": str(msg.get("ename"))[:200],
                                      "evalue": str(msg.get("evalue"))[:1000], "traceback": []}
                    return
                if ev == "input_request":  # the code waits for an answer: keep asking
                    msg = {"prompt": "", "password": bool(msg.get("password"))}
                else:
                    return
            if ev == "input_request":
                cur.awaiting_input = True
            msg.pop("id", None)
            cur.reply.event(ev, **msg)

    def give_input(self, value) -> bool:
        """Answer the running cell's ``input()``; False when nothing is waiting for input."""
        with self._lock:
            cur = self.current
            if cur is None or not cur.awaiting_input:
                return False
            cur.awaiting_input = False
        with self._cmd_lock, contextlib.suppress(OSError):
            if self._cmd_w >= 0:
                write_all(self._cmd_w, encode({"op": "input_reply", "value": value}))
        return True

    def query(self, request: dict, wait: float) -> dict | None:
        """Ask the idle worker a question (``complete``, ``inspect``); None when the session
        is busy running code, dead, or does not answer within ``wait`` seconds."""
        if self.language != "python" or not self.run_lock.acquire(timeout=QUERY_BUSY_WAIT):
            return None
        try:
            return self.ask(request, wait)
        finally:
            self.run_lock.release()

    def ask(self, request: dict, wait: float) -> dict | None:
        """Send ``request`` to the python worker (the caller holds ``run_lock``); its
        answer, or None when the session is dead or does not answer within ``wait`` s."""
        qid = random_id()
        box: dict = {"event": threading.Event()}
        try:
            with self._lock:
                if self.dead:
                    return None
                self._queries[qid] = box
            with self._cmd_lock:
                if self._cmd_w < 0:
                    return None
                write_all(self._cmd_w, encode(dict(request, id=qid)))
            box["event"].wait(wait)
            return box.get("answer")
        except OSError:
            return None
        finally:
            self._queries.pop(qid, None)

    def _on_death(self, poller, control: LineBuffer) -> None:
        """The worker exited: kill what is left, forward the rest, complete the run."""
        with self._lock:
            self.dead = True
        poller.unregister(self._wake_r)
        self.agent.forget_session(self)
        self.kill()
        until = time.monotonic() + 1.0
        while self._fds:
            left = until - time.monotonic()
            if left <= 0:
                break
            for fd, _ in poller.poll(left * 1000):
                self._read(fd, poller, control)
        cur = self.current
        if cur is not None:
            if cur.exit_code is None or not cur.complete():
                cur.exit_code = self.status if self.status is not None else 1
            self._finish(cur)
        close_fds(*list(self._fds), self._wake_r, self._wake_w)
        self._fds.clear()
        with self._cmd_lock:
            close_fds(self._cmd_w)
            self._cmd_w = -1

