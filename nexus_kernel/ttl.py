"""TTL arithmetic in one place: when a sandbox expires, and when its agent's watchdog (and
the provider's own timeout) ends it. Times are epoch seconds from the manager's clock."""

from __future__ import annotations

from collections.abc import Callable

#: A zero-argument callable returning epoch seconds (``time.time``; tests pass a fake).
Clock = Callable[[], float]

#: Grace the agent's own watchdog adds past the store's expiry (the host reaper is exact).
WATCHDOG_SLACK_SECONDS = 5.0
#: A run leaves the stored expiry as it is when that already outlives the run by this much
#: and lags the TTL from the run's start by less: the run's end writes the exact expiry
#: anyway. Cells seconds apart then cost one store write each, not two.
COALESCE_SECONDS = 5.0
#: A record (or reserved pool slot) still creating after this many seconds was abandoned.
STALE_CREATING_SECONDS = 300.0


def expiry(now: float, minutes: float, extra: float = 0.0) -> float:
    """When something that lives ``minutes`` (plus ``extra`` seconds) from ``now`` expires."""
    return now + minutes * 60 + extra


def watchdog_deadline(expires_at: float) -> float:
    """The deadline given to the agent's watchdog and the provider for a store expiry."""
    return expires_at + WATCHDOG_SLACK_SECONDS


def run_needs_write(stored: float, now: float, minutes: float, reserve: float) -> bool:
    """Whether a run starting at ``now`` (lasting up to ``reserve`` s) must write its expiry
    before it starts, the stored one being ``stored`` (see :data:`COALESCE_SECONDS`)."""
    return stored < max(expiry(now, minutes) - COALESCE_SECONDS,
                        now + reserve + COALESCE_SECONDS)
