"""Reusable request threads: a request that may block (a run, a file, a snapshot) goes to an
idle thread kept from an earlier request, else to a new one. Starting a thread per request cost
a clone, a stack mapping and a wait for the new thread to signal it started (a scheduling round
trip, long on a loaded machine). At most MAX_IDLE threads wait, each IDLE_SECONDS at most: the
sandbox's pids cap counts them."""

from __future__ import annotations

import threading

#: Idle threads kept at most (a request finding none starts a new thread).
MAX_IDLE = 4
#: Seconds an idle thread waits for a request before it ends.
IDLE_SECONDS = 30.0


class _Worker:
    """One thread's hand-over: ``task`` is set, then ``go`` released."""

    __slots__ = ("go", "task")

    def __init__(self, task) -> None:
        self.go = threading.Lock()
        self.go.acquire()
        self.task = task


class Threads:
    """Runs each submitted call in a thread of its own, reusing idle ones."""

    def __init__(self, max_idle: int = MAX_IDLE, idle_seconds: float = IDLE_SECONDS) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._max_idle = max_idle
        self._idle_seconds = idle_seconds

    def submit(self, fn, *args) -> None:
        """Call ``fn(*args)`` in an idle thread, else in a new one (RuntimeError when no thread
        can start, e.g. at the sandbox's pids cap)."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            threading.Thread(target=self._loop, args=(_Worker((fn, args)),), name="request",
                             daemon=True).start()
            return
        worker.task = (fn, args)
        worker.go.release()

    def idle(self) -> int:
        """Threads waiting for a request now."""
        with self._lock:
            return len(self._idle)

    def _loop(self, worker: _Worker) -> None:
        while True:
            fn, args = worker.task
            worker.task = None
            fn(*args)
            del fn, args  # nothing of a request stays referenced while idle
            with self._lock:
                if len(self._idle) >= self._max_idle:
                    return
                self._idle.append(worker)
            if not worker.go.acquire(timeout=self._idle_seconds):
                with self._lock:
                    if worker in self._idle:
                        self._idle.remove(worker)
                        return
                worker.go.acquire()  # taken just as it timed out: its request is on its way
