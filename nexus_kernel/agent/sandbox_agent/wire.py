"""The wire format: framing (one JSON object per line), the protocol's constants and limits,
and the byte-level helpers the agent, its session workers and the host-side client share.

The host imports only this module of the agent package. Importing it does no work beyond
defining things (stdlib ``json`` and ``os`` only).
"""

from __future__ import annotations

import contextlib
import json
import os

AGENT_VERSION = "1.1"
PROTOCOL_VERSION = 2

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
#: Bytes of a run's events the agent keeps for replay (``attach``); the oldest are dropped
#: past it, and a replay says how many bytes it misses.
REPLAY_BYTES = 2 * 1024 * 1024
#: Bytes read from a pipe or socket at a time.
CHUNK = 65536
#: Longest line a connection may send before it has authenticated (``auth`` messages are
#: short): an unauthenticated peer cannot make the agent or the host buffer more.
AUTH_MAX_LINE = 4096
#: Length (hex characters) of each side's nonce in the ``auth`` handshake.
NONCE_HEX = 32


def proof(token: str, role: str, host_nonce: str, agent_nonce: str) -> str:
    """What proves knowledge of the token in the ``auth`` handshake without revealing it:
    a MAC (keyed BLAKE2b, 32 bytes, hex) of the role ("agent" or "host": one side's proof is
    never valid as the other's) and both nonces. ``_blake2`` is imported directly:
    ``hashlib``/``hmac`` would load OpenSSL (~3 ms) into the agent."""
    try:
        from _blake2 import blake2b
    except ImportError:  # not CPython
        from hashlib import blake2b
    key = blake2b(token.encode("utf-8"), digest_size=32).digest()
    data = "\0".join((role, host_nonce, agent_nonce)).encode("utf-8")
    return blake2b(data, key=key, digest_size=32).hexdigest()


def same_secret(a: str, b: str) -> bool:
    """Constant-time string comparison. ``_operator``'s is the one ``hmac`` exposes,
    without the OpenSSL load ``import hmac`` costs."""
    try:
        from _operator import _compare_digest
    except ImportError:  # not CPython
        from hmac import compare_digest as _compare_digest
    return _compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def unix_address(address: str) -> str:
    """A unix socket address for ``bind``/``connect``: ``@name`` is the abstract socket
    ``name`` (no file anyone could rename, replace or redirect), anything else a path."""
    return "\0" + address[1:] if address.startswith("@") else address


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
    broken or hostile, and the stream cannot be trusted past it. ``max_line`` may be changed
    between feeds (e.g. raised once the peer has authenticated)."""

    def __init__(self, max_line: int | None = None) -> None:
        self._parts: list[bytes] = []
        self._pending = 0
        self.max_line = max_line

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
        if self.max_line is not None:
            for line in lines:
                self._check(len(line))
            self._check(self._pending)
        return lines

    @property
    def pending(self) -> int:
        """Bytes of the unfinished line held."""
        return self._pending

    def _check(self, size: int) -> None:
        if self.max_line is not None and size > self.max_line:
            raise ValueError(f"a line longer than {self.max_line} bytes")


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
