"""The gate between runs and snapshots: a snapshot or restore is taken only while nothing
runs (see :mod:`.snapshots`). Every run passes it, so it lives apart from the snapshots,
which are imported on first use."""

from __future__ import annotations

import contextlib
import threading

from .wire import Invalid


class Gate:
    """Runs pass together; a snapshot or restore passes alone and only when no run is
    under way (it is refused then, not queued); runs arriving meanwhile wait for it. A run
    that ends with a checkpoint hands the gate straight to it (:meth:`leave`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._runs = 0
        self._closed = False

    def enter(self) -> None:
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._runs += 1

    def leave(self, reserve: bool = False) -> bool:
        """A run ends; ``reserve``: close the gate for a snapshot if no other run is under
        way (True: the caller takes it, then calls :meth:`release`)."""
        with self._cond:
            self._runs -= 1
            if reserve and not self._runs and not self._closed:
                self._closed = True
                return True
            self._cond.notify_all()
            return False

    def release(self) -> None:
        with self._cond:
            self._closed = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self, what: str):
        """Pass alone: after another snapshot or restore (waited for), never during a run."""
        with self._cond:
            while self._closed:
                self._cond.wait()
            if self._runs:
                raise Invalid(f"cannot {what} while the sandbox runs code: wait until the "
                              "run ends, or interrupt it")
            self._closed = True
        try:
            yield
        finally:
            self.release()

    @contextlib.contextmanager
    def reserved(self):
        """The gate a run reserved (:meth:`leave`): released at the end."""
        try:
            yield
        finally:
            self.release()
