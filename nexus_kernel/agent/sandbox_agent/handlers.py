"""The threads that handle the agent's blocking requests (runs, files, snapshots...).

A request that may block gets a thread of its own, as before; but a thread whose request
is done waits for the next one instead of exiting, so a session's cells do not each pay a
new thread (~0.25 ms of a cell's round trip on a loaded 2-core host) but a wake-up. At most
``IDLE_MAX`` threads wait (each holds one of the sandbox's pids); the others exit.
"""

from __future__ import annotations

import threading

#: Idle handler threads kept waiting for a request.
IDLE_MAX = 2


class _Slot:
    """One handler thread's hand-off: the next job, and the lock it waits on."""

    def __init__(self) -> None:
        self.job = None
        self.wake = threading.Lock()
        self.wake.acquire()


class HandlerThreads:
    """Runs jobs in threads, reusing idle ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list = []  # _Slot of each waiting thread

    def submit(self, job) -> None:
        """Call ``job()`` in a handler thread; RuntimeError when no thread can start (the
        sandbox's pids limit)."""
        with self._lock:
            slot = self._idle.pop() if self._idle else None
        if slot is None:
            slot = _Slot()
            slot.job = job
            threading.Thread(target=self._serve, args=(slot,), name="agent-handler",
                             daemon=True).start()
            return
        slot.job = job
        slot.wake.release()

    def _serve(self, slot: _Slot) -> None:
        while True:
            job, slot.job = slot.job, None
            job()  # reports its own errors (Agent._handle never raises)
            with self._lock:
                if len(self._idle) >= IDLE_MAX:
                    return
                self._idle.append(slot)
            slot.wake.acquire()
