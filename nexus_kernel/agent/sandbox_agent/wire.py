"""The wire format: framing (one JSON object per line), the protocol's constants and limits,
and the byte-level helpers the agent, its session workers and the host-side client share.

The host imports only this module of the agent package. Importing it does no work beyond
defining things (stdlib ``json`` and ``os`` only).
"""

from __future__ import annotations

import contextlib
import json
import os

AGENT_VERSION = "1.0"
PROTOCOL_VERSION = 1

#: exit_code reported when a run passes its timeout (like coreutils ``timeout``).
TIMEOUT_EXIT_CODE = 124
#: exit_code reported when user code is stopped by an interrupt (128 + SIGINT).
INTERRUPT_EXIT_CODE = 130
#: Seconds code gets to stop after an interrupt (Ctrl-C, a session's timeout) before its
#: process tree is killed; a killed session restarts empty (``session_restarted``).
INTERRUPT_GRACE_SECONDS = 2.0
#: Largest file read_file returns (it travels base64-encoded in one message).
MAX_FILE_BYTES = 64 * 1024 * 1024
#: output_limit used when a request gives none (bytes of stdout + stderr per run).
DEFAULT_OUTPUT_LIMIT = 10 * 1024 * 1024
#: Session workers end each run's output with ``\0nexus-end:<run id>:`` on stdout and stderr.
MARKER_PREFIX = b"\x00nexus-end:"
#: Session workers send their events (result, display, error, ...) in-band on stdout as
#: ``\0nexus-ev:<json>\n``, so they keep their order with what the cell printed.
EVENT_PREFIX = b"\x00nexus-ev:"
#: Bytes read from a pipe or socket at a time.
CHUNK = 65536


def encode(msg: dict) -> bytes:
    """One message as a UTF-8 JSON line (lone surrogates fall back to ``\\u`` escapes)."""
    try:
        return (json.dumps(msg, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(msg, separators=(",", ":")) + "\n").encode("ascii")


def decode(line: bytes | str) -> dict:
    """Parse one line into a message; ``ValueError`` unless it is a JSON object."""
    msg = json.loads(line)
    if not isinstance(msg, dict):
        raise ValueError("a message must be a JSON object")
    return msg


class LineBuffer:
    """Splits a byte stream into lines (without the ``\\n``); keeps the unfinished tail.
    A line longer than ``max_line`` bytes (None = unbounded) raises ValueError: the peer is
    broken or hostile, and the stream cannot be trusted past it."""

    def __init__(self, max_line: int | None = None) -> None:
        self._parts: list[bytes] = []
        self._pending = 0
        self._max = max_line

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete lines it finished (may be empty)."""
        if b"\n" not in data:
            if data:
                self._parts.append(data)
                self._pending += len(data)
                self._check(self._pending)
            return []
        lines = data.split(b"\n")
        if self._parts:
            self._parts.append(lines[0])
            lines[0] = b"".join(self._parts)
            self._parts = []
        tail = lines.pop()
        self._pending = len(tail)
        if tail:
            self._parts.append(tail)
        if self._max is not None:
            for line in lines:
                self._check(len(line))
            self._check(self._pending)
        return lines

    def _check(self, size: int) -> None:
        if self._max is not None and size > self._max:
            raise ValueError(f"a line longer than {self._max} bytes")


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def close_fds(*fds: int) -> None:
    """Close each fd, ignoring those already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Invalid(Exception):
    """A bad request: answered with ``fail`` and ``kind: "invalid"``."""


class Failure(Exception):
    """The agent could not do a valid request: ``fail`` with ``kind: "error"``."""
