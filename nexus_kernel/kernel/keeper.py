"""The kernel-side TTL timer: keeps the sandbox alive while a cell runs, warns in the notebook
before an idle sandbox expires, and reaps the user's expired sandboxes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..models import CAP_LEAD_SECONDS, HARD_END, SandboxRecord, Status, cap_warning
from .sandbox import KernelSandbox

#: Warn this many seconds before expiry (at most half the TTL).
WARN_LEAD_SECONDS = 60.0
#: The timer runs at least this often (and every ``settings.reap_interval`` seconds).
MAX_PERIOD_SECONDS = 60.0
MIN_PERIOD_SECONDS = 0.5

log = logging.getLogger(__name__)


class TtlKeeper:
    """A daemon thread around :meth:`tick`; ``warn(text)`` shows text in the notebook."""

    def __init__(self, sandbox: KernelSandbox, warn: Callable[[str], None]) -> None:
        self.sandbox = sandbox
        self.warn = warn
        self._stop = threading.Event()
        self._warned_for: float | None = None
        self._warned_cap: float | None = None
        self._announced_stop: str | None = None
        self._thread = threading.Thread(target=self._loop, name="nexus-ttl-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def period(self) -> float:
        """Seconds between rounds: the reap interval, at most a minute and a third of the TTL."""
        ttl_seconds = self.sandbox.ttl_minutes * 60
        interval = self.sandbox.manager.settings.reap_interval
        return max(MIN_PERIOD_SECONDS, min(interval, MAX_PERIOD_SECONDS, ttl_seconds / 3))

    def _loop(self) -> None:
        wait = self.period()
        while not self._stop.wait(wait):
            try:
                wait = self.tick()
            except Exception:  # a provider hiccup must not end the timer
                log.warning("nexus TTL keeper round failed", exc_info=True)
                wait = self.period()

    def tick(self) -> float:
        """One round: touch (busy) or check (idle) the sandbox, reap; returns the next wait."""
        period = self.period()
        manager = self.sandbox.manager
        sandbox_id = self.sandbox.sandbox_id
        wait = period
        if sandbox_id is not None:
            if self.sandbox.busy:
                manager.touch(sandbox_id)
            else:
                wait = self._check_idle(manager.get(sandbox_id), period)
            wait = min(wait, self._check_cap(manager.get(sandbox_id), period))
        manager.reap_expired()
        return wait

    def _check_cap(self, record: SandboxRecord, period: float) -> float:
        """Warn once, CAP_LEAD_SECONDS ahead, that the platform ends the sandbox at its
        runtime cap (the handle's hard end) whatever its TTL; returns the next wait."""
        end = record.handle.get(HARD_END)
        if record.status is not Status.ACTIVE or end is None:
            return period
        now = self.sandbox.manager.clock()
        warning = cap_warning(record, now)
        if warning is None:
            return min(period, end - now - CAP_LEAD_SECONDS)
        if self._warned_cap != end:
            self._warned_cap = end
            self.warn(warning)
        return period

    def _check_idle(self, record: SandboxRecord, period: float) -> float:
        if record.status is Status.STOPPED:
            if self._announced_stop != record.sandbox_id and record.error == "expired":
                self._announced_stop = record.sandbox_id
                self.warn(f"Nexus: sandbox {record.sandbox_id} expired (idle for "
                          f"{record.ttl_minutes:g} min) and was stopped; the next cell starts "
                          "a new one.\n")
            return period
        if record.status is not Status.ACTIVE or record.expires_at is None:
            return period
        left = record.expires_at - self.sandbox.manager.clock()
        lead = min(WARN_LEAD_SECONDS, record.ttl_minutes * 60 / 2)
        if left > lead:
            return min(period, left - lead)
        if self._warned_for != record.expires_at:
            self._warned_for = record.expires_at
            self.warn(f"Nexus: sandbox {record.sandbox_id} expires in {max(0, round(left))} s "
                      f"(idle TTL {record.ttl_minutes:g} min) and its variables are lost; run a "
                      "cell to extend it, or set a longer TTL with %sandbox ttl MINUTES.\n")
        return max(MIN_PERIOD_SECONDS, min(period, left + 0.2))
