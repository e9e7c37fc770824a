"""TTL arithmetic in one place: when a sandbox expires, and when its agent's watchdog (and
the provider's own timeout) ends it. Times are epoch seconds from the manager's clock."""

from __future__ import annotations

from collections.abc import Callable

#: A zero-argument callable returning epoch seconds (``time.time``; tests pass a fake).
Clock = Callable[[], float]

#: Grace the agent's own watchdog adds past the store's expiry (the host reaper is exact).
WATCHDOG_SLACK_SECONDS = 5.0
#: A record (or reserved pool slot) still creating after this many seconds was abandoned.
STALE_CREATING_SECONDS = 300.0


def expiry(now: float, minutes: float, extra: float = 0.0) -> float:
    """When something that lives ``minutes`` (plus ``extra`` seconds) from ``now`` expires."""
    return now + minutes * 60 + extra


def watchdog_deadline(expires_at: float) -> float:
    """The deadline given to the agent's watchdog and the provider for a store expiry."""
    return expires_at + WATCHDOG_SLACK_SECONDS
