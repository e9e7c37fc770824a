"""The run registry: every run keeps its events in a bounded buffer, so it outlives the
connection that started it (a run started with ``detach`` answers at once and has none) and
any connection can replay it from the start and follow it to its end (``attach``), list the
runs (``runs``) or interrupt one (``interrupt`` with ``run_id``).

The run's own connection, if any, is sent to directly, as before (its pace holds the run's
output back); a follower reads the buffer from a thread of its own and never slows the run.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time

from .wire import REPLAY_BYTES

#: Finished runs kept for ``attach`` and ``runs`` (the oldest is dropped first).
KEEP_FINISHED = 16
#: Fields of a run's ``done`` given in ``runs`` (output is in ``attach`` only).
SUMMARY_FIELDS = ("exit_code", "ended_by", "usage", "timed_out", "interrupted", "truncated")


#: What keeping one event costs beyond its text (its dict and tuple), so that the buffer's
#: bound is about its memory even for a run of many tiny writes.
EVENT_OVERHEAD = 256


def _text_size(fields: dict) -> int:
    """An event's size: its text (outputs), else its fields' lengths."""
    data = fields.get("data")
    if isinstance(data, str) and len(fields) == 1:
        return len(data)
    return sum(len(str(v)) for v in fields.values())


class RunEntry:
    """One run: its buffered events, its state and, once ended, its ``done`` fields."""

    def __init__(self, run_id: str, language: str, session, timeout, detached: bool) -> None:
        self.id = run_id
        self.language = language
        self.session = session
        self.timeout = timeout
        self.detached = detached
        self.started = time.time()
        self.ended: float | None = None
        self.done: dict | None = None  # the run's ``done`` fields once it ended
        self.error: str | None = None  # why it failed (no ``done``)
        self.interrupter = None  # callable: interrupt this run while it runs
        self._cond = threading.Condition()
        #: (seq, ev, fields, size, offset: the text bytes of the run before this event)
        self._events: collections.deque = collections.deque()
        self._next = 0  # seq of the next event
        self._total = 0  # text bytes of every event so far
        self._bytes = 0  # what the buffer holds, EVENT_OVERHEAD included
        self.dropped_bytes = 0  # of events dropped from the start of the buffer

    @property
    def finished(self) -> bool:
        return self.done is not None or self.error is not None

    def add(self, ev: str, fields: dict) -> None:
        size = _text_size(fields)
        with self._cond:
            self._events.append((self._next, ev, fields, size, self._total))
            self._next += 1
            self._total += size
            self._bytes += size + EVENT_OVERHEAD
            while self._bytes > REPLAY_BYTES and len(self._events) > 1:
                old = self._events.popleft()
                self._bytes -= old[3] + EVENT_OVERHEAD
                self.dropped_bytes += old[3]
            self._cond.notify_all()

    def finish(self, done: dict | None = None, error: str | None = None) -> None:
        with self._cond:
            self.done, self.error = done, error
            self.ended = time.time()
            self.interrupter = None
            self._cond.notify_all()

    def interrupt(self) -> bool:
        stop = self.interrupter
        return bool(stop and stop())

    def info(self) -> dict:
        state = "running" if not self.finished else ("failed" if self.error else "finished")
        info = {"run_id": self.id, "state": state, "language": self.language,
                "session": self.session, "timeout": self.timeout, "detached": self.detached,
                "started_at": self.started, "ended_at": self.ended}
        if self.done is not None:
            info.update((k, self.done.get(k)) for k in SUMMARY_FIELDS)
        if self.error is not None:
            info["error"] = self.error
        return info

    def replay(self, reply, follow: bool) -> dict:
        """Send the buffered events (from the start) on ``reply``, then, with ``follow``,
        the new ones until the run ends or the connection closes. Returns the ``done``
        fields: the run's own once it ended (with ``state``), and ``dropped_bytes``, what
        this replay misses (cut from the buffer's start, or passed while it fell behind)."""
        seq, offset, missed = 0, 0, 0  # offset: text bytes of the events before seq
        while True:
            with self._cond:
                while (follow and not self.finished and self._next == seq
                       and not reply.conn.closed):
                    self._cond.wait(1.0)
                skip = seq - self._events[0][0] if self._events else 0
                batch = list(itertools.islice(self._events, max(0, skip), None))
                # what left the buffer before this replay read it:
                missed += (batch[0][4] if batch else self._total) - offset
                seq, offset = self._next, self._total
                ended = self.finished
            for _, ev, fields, _, _ in batch:
                reply.event(ev, **fields)
            if ended or not follow or reply.conn.closed:
                break
        with self._cond:
            if self.error is not None and ended:
                raise RunFailed(self.error)
            done = dict(self.done) if ended and self.done is not None else {}
        done["state"] = "finished" if ended else "running"
        done["dropped_bytes"] = missed
        return done


def new_run_id() -> str:
    """``r`` and 12 random hex digits."""
    return "r" + os.urandom(6).hex()


def is_run_id(value) -> bool:
    return (isinstance(value, str) and len(value) == 13 and value[0] == "r"
            and all(c in "0123456789abcdef" for c in value[1:]))


class RunFailed(Exception):
    """The run ended without a result (the agent could not do it)."""


class Registry:
    """The sandbox's runs, by id: the running ones and the last KEEP_FINISHED finished."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict = {}  # insertion order = start order

    def start(self, run_id, language: str, session, timeout, detached: bool) -> RunEntry | None:
        """A new run's entry (``run_id`` None: a new id); None when ``run_id`` is in use."""
        entry = RunEntry(run_id or new_run_id(), language, session, timeout, detached)
        with self._lock:
            if entry.id in self._runs:
                return None
            self._runs[entry.id] = entry
            finished = [e for e in self._runs.values() if e.finished]
            for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
                del self._runs[old.id]
        return entry

    def get(self, run_id) -> RunEntry | None:
        with self._lock:
            return self._runs.get(run_id) if isinstance(run_id, str) else None

    def list(self) -> list:
        with self._lock:
            entries = list(self._runs.values())
        return [e.info() for e in entries]


class Tee:
    """A run's reply: every event goes to its entry's buffer and, unless the run was
    started detached, to the connection that started it."""

    def __init__(self, entry: RunEntry, reply=None) -> None:
        self.entry = entry
        self.reply = reply

    def event(self, ev: str, **fields) -> None:
        self.entry.add(ev, fields)
        if self.reply is not None:
            self.reply.event(ev, **fields)

    def output(self, stream: str, text: str) -> None:
        self.entry.add(stream, {"data": text})
        if self.reply is not None:
            self.reply.output(stream, text)
