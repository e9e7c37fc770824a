"""A run's output on its way to the client: the per-run byte cap with incremental UTF-8
decoding (:class:`RunOutput`), the scanners that find a session run's end marker and its
in-band events in the worker's stdout, and the burst reader that coalesces small writes.
"""

from __future__ import annotations

import codecs
import os
import select

from .wire import CHUNK, EVENT_PREFIX, MARKER_PREFIX

#: Session output written within this many seconds of the previous write joins its event.
COALESCE_SECONDS = 0.001


def _utf8_decoder():
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


class MarkerScanner:
    """Finds a run's end marker in one output stream.

    ``feed`` returns the bytes before the marker that may be forwarded now, and whether the
    marker was seen. Only a trailing partial marker (which starts with the rare ``\\0``) is held
    back, so ordinary output is never delayed. Bytes after the marker are dropped."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.found = False
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if self.found:
            return b""
        if self._held:
            data = self._held + data
            self._held = b""
        at = data.find(self.marker)
        if at >= 0:
            self.found = True
            return data[:at]
        start = data.rfind(b"\x00", max(0, len(data) - len(self.marker) + 1))
        if start >= 0 and self.marker.startswith(data[start:]):
            self._held = data[start:]
            return data[:start]
        return data


class EventScanner:
    """Splits a session's stdout into printed bytes and in-band events.

    ``feed`` returns ``(is_event, bytes)`` pieces in stream order: an event is the JSON
    between ``EVENT_PREFIX`` and the next newline (JSON never holds a raw newline or NUL).
    A trailing partial prefix is held back until more data or :meth:`flush` decides."""

    def __init__(self) -> None:
        self._held = b""
        self._event: list | None = None  # parts of the event being read

    def feed(self, data: bytes) -> list:
        pieces = []
        while data:
            if self._event is not None:
                end = data.find(b"\n")
                if end < 0:
                    self._event.append(data)
                    break
                self._event.append(data[:end])
                pieces.append((True, b"".join(self._event)))
                self._event = None
                data = data[end + 1 :]
                continue
            if self._held:
                data, self._held = self._held + data, b""
            at = data.find(EVENT_PREFIX)
            if at < 0:
                start = data.rfind(b"\x00", max(0, len(data) - len(EVENT_PREFIX) + 1))
                if start >= 0 and EVENT_PREFIX.startswith(data[start:]):
                    data, self._held = data[:start], data[start:]
                if data:
                    pieces.append((False, data))
                break
            if at:
                pieces.append((False, data[:at]))
            self._event = []
            data = data[at + len(EVENT_PREFIX) :]
        return pieces

    def flush(self) -> bytes:
        """At the end of a run: held bytes were printed text; a cut event is dropped."""
        held, self._held, self._event = self._held, b"", None
        return held


class RunOutput:
    """Forwards one run's output: incremental UTF-8 decoding per stream and the byte cap.

    Past ``limit`` raw bytes (stdout + stderr) nothing more is forwarded and ``truncated`` is
    set; the caller keeps draining the pipes so the process never blocks."""

    def __init__(self, emit, limit: int) -> None:
        self._emit = emit
        self._left = limit
        self._decoders = {"stdout": _utf8_decoder(), "stderr": _utf8_decoder()}
        self.truncated = False

    def feed(self, stream: str, data: bytes) -> None:
        if not data or self.truncated:
            return
        if len(data) > self._left:
            data = data[: self._left]
            self.truncated = True
        self._left -= len(data)
        text = self._decoders[stream].decode(data)
        if text:
            self._emit(stream, text)

    def charge(self, size: int) -> bool:
        """Count ``size`` bytes of an event (display, result, error, clear_output,
        input_request) against the cap; False (and ``truncated``) once the cap is passed:
        the event is then dropped or cut."""
        if self.truncated or size > self._left:
            self.truncated = True
            return False
        self._left -= size
        return True

    def finish(self) -> None:
        """Flush the decoders (a cut multi-byte character becomes U+FFFD)."""
        if self.truncated:
            return
        for stream, decoder in self._decoders.items():
            text = decoder.decode(b"", True)
            if text:
                self._emit(stream, text)



def read_burst(fd: int, first: bytes) -> bytes:
    """What follows ``first`` within COALESCE_SECONDS (``print`` writes its text and its
    newline apart): one event per burst instead of one per write, at a cost of ~1 ms
    latency; never past the end marker (nothing follows it)."""
    have = len(first)
    more: list = []
    while have < CHUNK and MARKER_PREFIX not in (more[-1] if more else first):
        ready, _, _ = select.select([fd], [], [], COALESCE_SECONDS)
        if not ready:
            break
        try:
            data = os.read(fd, CHUNK - have)
        except OSError:
            break
        if not data:
            break  # EOF: the caller's next read sees it
        more.append(data)
        have += len(data)
    return b"".join(more)

