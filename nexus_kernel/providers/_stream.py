""":class:`PumpChannel`: the stream to the agent for the cloud providers (e2b, modal), whose
only route in is the stdio of a process started through the provider's SDK.

A daemon thread drains the SDK's output iterator into a bounded queue of byte chunks
(:data:`QUEUED_CHUNKS`: a reader that falls behind holds the SDK's stream back instead of
growing the client's memory) that ``recv`` hands out; ``sendall`` calls the SDK's stdin writer. Byte framing is kept: the agent's JSON
lines reach the client byte-exact, whatever chunking the SDK applies.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress

#: Chunks of the SDK's output held for ``recv`` at most (SDK chunks are at most a few
#: hundred KiB: E2B's and Modal's are 64 KiB or less).
QUEUED_CHUNKS = 64


class PumpChannel:
    """A byte stream to the agent over a process's stdio reached through an SDK.

    ``chunks`` yields the process's stdout as bytes (consumed by a daemon thread);
    ``write(data)`` delivers bytes to its stdin; ``on_close()`` ends the process (best
    effort). Errors of the SDK surface as
    ``ConnectionError`` from ``sendall`` and as end of stream from ``recv`` (the cause is
    kept in ``error``), as a broken socket would.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        write: Callable[[bytes], None],
        *,
        on_close: Callable[[], None] | None = None,
        name: str = "nexus-pump",
    ):
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUED_CHUNKS)
        self._pending = b""
        self._eof = False
        self._timeout: float | None = None
        self._write = write
        self._write_lock = threading.Lock()
        self._on_close = on_close
        self._closed = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._pump, args=(chunks,), name=name, daemon=True)
        self._thread.start()

    def _pump(self, chunks: Iterable[bytes]) -> None:
        try:
            for chunk in chunks:
                if chunk and not self._put(bytes(chunk)):
                    return  # closed: nobody reads any more
        except BaseException as exc:  # the SDK stream broke: readers see end of stream
            self.error = exc
        finally:
            self._put(None)

    def _put(self, item: bytes | None) -> bool:
        """Queue ``item``, waiting while the queue is full; False once the channel is closed."""
        while not self._closed:
            with suppress(queue.Full):
                self._queue.put(item, timeout=0.2)
                return True
        return False

    def sendall(self, data: bytes) -> None:
        """Deliver ``data`` to the process's stdin."""
        if self._closed:
            raise ConnectionError("the stream to the sandbox agent is closed")
        with self._write_lock:
            try:
                self._write(bytes(data))
            except Exception as exc:
                raise ConnectionError(f"writing to the sandbox agent failed: {exc}") from exc

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of the process's stdout; b"" at end of stream. Raises
        ``TimeoutError`` when a timeout is set (``settimeout``) and nothing arrives."""
        if not self._pending:
            if self._eof or (self._closed and self._queue.empty()):
                return b""
            try:
                chunk = self._queue.get(timeout=self._timeout)
            except queue.Empty:
                raise TimeoutError("timed out waiting for the sandbox agent") from None
            if chunk is None:
                self._eof = True
                return b""
            self._pending = chunk
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def settimeout(self, timeout: float | None) -> None:
        """Seconds ``recv`` waits before ``TimeoutError`` (None = block)."""
        self._timeout = timeout

    def close(self) -> None:
        """End the process (best effort) and wake a blocked ``recv``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            with suppress(Exception):
                self._on_close()
        with suppress(queue.Full):  # full: a reader is not blocked
            self._queue.put_nowait(None)
