"""What the cloud providers (e2b, modal) share about reaching their service."""

from __future__ import annotations

#: Seconds the first contact with a cloud API may take before the provider reports it
#: unreachable. Left alone, the SDKs wait much longer for a host that does not answer
#: (E2B: two minutes per request; Modal: about a minute of connection retries).
REACH_SECONDS = 5.0


def one_line(exc: BaseException) -> str:
    """The exception's text on one line (SDK messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__
