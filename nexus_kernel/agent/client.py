"""Host-side client of the sandbox agent (protocol: ``docs/agent-protocol.md``).

One :class:`AgentClient` talks to one sandbox over one byte stream (a unix socket, an exec
stdio pipe, ...). Several threads may use it at once: requests carry ids, and one reader
thread routes every event to the queue of the request it belongs to. Each new stream is
authenticated first (``auth``): the agent proves it holds the token before the client sends
anything else, and the token itself never travels.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import math
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ..errors import AgentError, InvalidArgumentError
from ..models import ENDED_BY, USAGE_NUMBERS, USAGE_SOURCES, ended_by_flags
from .hints import missing_module_hint
from .sandbox_agent.wire import (
    AUTH_MAX_LINE,
    NONCE_HEX,
    REPLAY_BYTES,
    LineBuffer,
    decode,
    encode,
    proof,
    same_secret,
)

__all__ = ["AgentClient", "Channel", "unix_connector"]

#: Default per-run output cap (bytes of stdout + stderr), as in the protocol.
DEFAULT_OUTPUT_LIMIT = 10 * 1024 * 1024
#: Extra seconds the client waits past a run's own timeout before giving up on the agent.
RUN_GRACE = 30.0
#: Longest message line accepted from an agent (a 64 MB file, base64-encoded, fits).
MAX_LINE_BYTES = 128 * 1024 * 1024
#: A run's messages may carry JSON_EXPANSION times its output cap (JSON escapes a control
#: or invalid byte as six) plus RUN_SLACK_BYTES (framing, metadata) before the client decides
#: the agent is not keeping the cap and drops the connection.
JSON_EXPANSION = 8
RUN_SLACK_BYTES = 16 * 1024 * 1024
#: How long a file transfer may take.
FILE_WAIT = 300.0
#: How long the agent may take to answer the ``auth`` challenge of a new stream.
AUTH_WAIT = 30.0
#: Largest ``runs`` answer accepted (the agent keeps a few dozen runs of a few fields).
MAX_RUNS_BYTES = 1024 * 1024
#: The keys of a run in :meth:`AgentClient.runs`, with the type each must have.
RUN_INFO = {"run_id": str, "state": str, "language": str, "session": str, "timeout": float,
            "detached": bool, "started_at": float, "ended_at": float, "exit_code": int,
            "ended_by": str, "timed_out": bool, "interrupted": bool, "truncated": bool,
            "error": str}
RUN_STATES = ("running", "finished", "failed")

_CLOSED = object()  # queued to pending requests when their channel ends


class Channel(Protocol):
    """A connected, bidirectional byte stream to the agent."""

    def sendall(self, data: bytes) -> None: ...

    def recv(self, size: int) -> bytes: ...

    def close(self) -> None: ...


def unix_connector(path: str) -> Callable[[], Channel]:
    """A ``connect`` function for :class:`AgentClient` that opens a unix socket to ``path``."""

    def connect() -> Channel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock

    return connect


def _close_channel(channel: Channel) -> None:
    shutdown = getattr(channel, "shutdown", None)
    if shutdown is not None:
        with contextlib.suppress(OSError):
            shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        channel.close()


class AgentClient:
    """Talks to one sandbox agent.

    ``connect()`` returns a new :class:`Channel`; it is called lazily on the first request
    and again (once per request) when the channel has died. ``token`` is the secret the
    agent and the client prove to each other on every new channel.
    """

    def __init__(self, connect: Callable[[], Channel], token: str):
        self._connect = connect
        self._token = token
        self._lock = threading.Lock()  # guards _channel and _pending
        self._connect_lock = threading.Lock()  # one new channel at a time
        self._send_lock = threading.Lock()
        self._channel: Channel | None = None
        self._pending: dict[str, tuple[queue.SimpleQueue, Channel]] = {}
        self._ids = itertools.count(1)

    # -- plumbing ---------------------------------------------------------------------

    def _ensure_channel(self) -> Channel:
        with self._connect_lock:
            with self._lock:
                if self._channel is not None:
                    return self._channel
            try:
                channel = self._connect()
            except Exception as exc:
                raise AgentError(f"sandbox agent unreachable: {exc}") from exc
            lines = LineBuffer(AUTH_MAX_LINE)  # short lines until the agent is proven
            threading.Thread(target=self._read_loop, args=(channel, lines),
                             name="nexus-agent-reader", daemon=True).start()
            try:
                self._authenticate(channel)
            except BaseException:
                self._drop(channel)
                raise
            lines.max_line = MAX_LINE_BYTES
            with self._lock:
                self._channel = channel
            return channel

    def _authenticate(self, channel: Channel) -> None:
        """The ``auth`` handshake (``docs/agent-protocol.md``): the agent proves it holds the
        token for our nonce and its own; only then does the client send its proof, and
        requests after it. A peer that is not the agent (an impostor socket) learns nothing."""
        mine = secrets.token_hex(NONCE_HEX // 2)
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._pending["auth"] = (q, channel)
        try:
            channel.sendall(encode({"id": "auth", "op": "auth", "nonce": mine}))
            item = q.get(timeout=AUTH_WAIT)
        except queue.Empty:
            raise AgentError(
                f"sandbox agent did not answer the authentication within {AUTH_WAIT:g} s") from None
        except OSError as exc:
            raise AgentError(f"sandbox agent unreachable: {exc}") from exc
        finally:
            with self._lock:
                self._pending.pop("auth", None)
        if item is _CLOSED:
            raise AgentError("sandbox agent unreachable: the connection closed during "
                             "authentication")
        answer = item[0]
        theirs, their_proof = answer.get("nonce"), answer.get("proof")
        if answer.get("ev") != "done":
            raise AgentError(f"the sandbox agent refused authentication ({answer.get('error')}): "
                             "an agent older than this nexus-kernel? stop the sandbox and create "
                             "a new one")
        if not (isinstance(theirs, str) and isinstance(their_proof, str) and same_secret(
                their_proof, proof(self._token, "agent", mine, theirs))):
            raise AgentError("the sandbox's agent socket did not prove it is the agent (an "
                             "impostor inside the sandbox?): nothing was sent; stop the sandbox")
        try:
            with self._send_lock:
                channel.sendall(encode({"id": "auth2", "op": "auth",
                                        "proof": proof(self._token, "host", mine, theirs)}))
        except OSError as exc:
            raise AgentError(f"sandbox agent unreachable: {exc}") from exc

    def _drop(self, channel: Channel) -> None:
        """Forget a dead channel and fail every request still waiting on it."""
        with self._lock:
            if self._channel is channel:
                self._channel = None
            waiting = [q for q, ch in self._pending.values() if ch is channel]
        for q in waiting:
            q.put(_CLOSED)
        _close_channel(channel)

    def _read_loop(self, channel: Channel, lines: LineBuffer) -> None:
        try:
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                for line in lines.feed(data):
                    self._route(line)
        except (OSError, ValueError):
            pass
        finally:
            self._drop(channel)

    def _route(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = decode(line)
        except ValueError:
            return
        with self._lock:
            entry = self._pending.get(msg.get("id"))
        if entry is not None:
            entry[0].put((msg, len(line)))

    def _send(self, rid: str, data: bytes, q: queue.SimpleQueue) -> None:
        """Send one request, reconnecting once if the channel turns out to be dead."""
        for attempt in (1, 2):
            channel = self._ensure_channel()
            with self._lock:
                self._pending[rid] = (q, channel)
            try:
                with self._send_lock:
                    channel.sendall(data)
                return
            except OSError as exc:
                with self._lock:
                    self._pending.pop(rid, None)
                self._drop(channel)
                if attempt == 2:
                    raise AgentError(f"sandbox agent unreachable: {exc}") from exc

    def _call(
        self,
        op: str,
        args: dict[str, Any],
        on_event: Callable[[dict], None] | None,
        wait: float | None,
        max_bytes: int | None = None,
    ) -> dict:
        """Send ``op`` and wait for its ``done``; fails when it takes longer than ``wait``
        seconds or its messages carry more than ``max_bytes`` bytes (None = unbounded)."""
        rid = f"c{next(self._ids)}"
        msg = {"id": rid, "op": op}
        msg.update(args)
        q: queue.SimpleQueue = queue.SimpleQueue()
        self._send(rid, encode(msg), q)
        return self._answer(rid, op, q, on_event, wait, max_bytes)

    def _answer(self, rid: str, op: str, q: queue.SimpleQueue,
                on_event: Callable[[dict], None] | None, wait: float | None,
                max_bytes: int | None = None) -> dict:
        """Wait for the ``done`` of the request ``rid`` sent (see ``_call``)."""
        deadline = None if wait is None else time.monotonic() + wait
        received = 0
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = q.get(timeout=left)
                except queue.Empty:
                    raise AgentError(
                        f"sandbox agent did not answer the {op!r} request within {wait:g} s"
                    ) from None
                if item is _CLOSED:
                    raise AgentError(
                        f"sandbox agent unreachable: the connection closed before the "
                        f"{op!r} request finished"
                    )
                event, size = item
                received += size
                if max_bytes is not None and received > max_bytes:
                    self._drop(self._pending[rid][1])
                    raise AgentError(
                        f"the sandbox sent more than {max_bytes} bytes for one {op!r} request "
                        "(its output cap is not kept): the connection was closed")
                kind = event.get("ev")
                if kind == "done":
                    return {k: v for k, v in event.items() if k not in ("id", "ev")}
                if kind == "fail":
                    error = str(event.get("error") or f"the agent refused {op!r}")
                    if event.get("kind") == "invalid":
                        raise InvalidArgumentError(error)
                    raise AgentError(error)
                if on_event is not None:
                    on_event(event)
        finally:
            with self._lock:
                self._pending.pop(rid, None)

    # -- public API -------------------------------------------------------------------

    def request(
        self,
        op: str,
        on_event: Callable[[dict], None] | None = None,
        timeout: float | None = None,
        **args: Any,
    ) -> dict:
        """Send one request and return its ``done`` message (without ``id``/``ev``).

        Non-terminal events go to ``on_event`` (in the calling thread). ``timeout`` is how
        long the client waits for the answer (None = forever), not a field of the request;
        use :meth:`run` for runs, whose ``timeout`` field would clash with it.

        Raises :class:`InvalidArgumentError` when the agent rejects the request as invalid,
        :class:`AgentError` on any other ``fail`` or when the agent is unreachable."""
        return self._call(op, args, on_event, timeout)

    def run(
        self,
        language: str,
        code: str,
        *,
        timeout: float | None = None,
        session: str | None = None,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
        on_event: Callable[[dict], None] | None = None,
        stdin: bool = False,
        stderr_traceback: bool = True,
        deadline: float | None = None,
        input_data: str | None = None,
        execution_count: int | None = None,
        checkpoint: dict[str, Any] | None = None,
        on_run_id: Callable[[str], None] | None = None,
    ) -> dict:
        """Run code and return the aggregated result.

        Returns ``{"stdout", "stderr", "exit_code", "execution_time", "timed_out",
        "interrupted", "truncated", "display", "result", "error"}``: ``display`` is the list of
        display bundles, ``result`` the last expression's bundle (or None), ``error``
        ``{"ename", "evalue", "traceback"}`` (or None). Every event also goes to ``on_event``
        as it arrives (live streaming).

        ``stdin=True`` (python sessions): ``input()`` sends an ``input_request`` event; answer
        it with :meth:`input_reply` (from ``on_event`` or another thread).
        ``stderr_traceback=False``: errors come only as the ``error`` event, not on stderr.
        ``deadline`` (epoch s): moves the agent's watchdog first, as :meth:`set_deadline`
        does, in the same round trip (None = leave it). ``input_data``: the standard input
        of a stateless run (read to its end, then EOF). ``execution_count``: the number a
        python session's IPython gives the cell (``In[N]``, ``Out[N]``, tracebacks).
        ``checkpoint`` (``{"name", "keep_auto"}``): the agent snapshots the sandbox once the
        run is done, after its answer (unless another run is under way then).
        ``on_run_id``: called with the run's id (the agent's) as soon as it started, so a
        caller that stops waiting can :meth:`attach` to it later."""
        args = _run_args(language, code, timeout, session, output_limit, stdin,
                         stderr_traceback, deadline, input_data, execution_count)
        collector = _Collector(on_event, args["run_id"])
        if checkpoint is not None:
            args["checkpoint"] = checkpoint
        if on_run_id is not None:
            on_run_id(args["run_id"])
        wait = None if timeout is None else float(timeout) + RUN_GRACE
        budget = JSON_EXPANSION * output_limit + RUN_SLACK_BYTES
        return collector.result(self._call("run", args, collector, wait, max_bytes=budget))

    def start(self, language: str, code: str, *, timeout: float | None = None,
              session: str | None = None, output_limit: int = DEFAULT_OUTPUT_LIMIT,
              deadline: float | None = None, input_data: str | None = None) -> str:
        """Start a detached run (it outlives this connection) and return its run id at
        once; :meth:`attach` replays and follows it."""
        args = _run_args(language, code, timeout, session, output_limit, False, True,
                         deadline, input_data, None)
        done = self._call("run", {**args, "detach": True}, None, 30.0, max_bytes=MAX_RUNS_BYTES)
        if done.get("run_id") != args["run_id"]:
            raise AgentError("the sandbox's agent cannot detach runs (it is older than this "
                             "nexus-kernel): stop the sandbox and create a new one")
        return args["run_id"]

    def attach(self, run_id: str, *, follow: bool = True, wait: float | None = None,
               output_limit: int = DEFAULT_OUTPUT_LIMIT,
               on_event: Callable[[dict], None] | None = None) -> dict:
        """Replay a run's buffered output from the start and, with ``follow``, the rest
        live until it ends: the result of :meth:`run` plus ``state`` (``finished`` or, not
        following, ``running``) and ``dropped_bytes`` (output the replay misses: the
        agent's buffer keeps the last few MiB of a run). ``wait``: seconds to wait at most."""
        collector = _Collector(on_event, run_id)
        budget = JSON_EXPANSION * (output_limit + REPLAY_BYTES) + RUN_SLACK_BYTES
        with _older_agent("attach"):
            done = self._call("attach", {"run_id": run_id, "follow": follow}, collector, wait,
                              max_bytes=budget)
        result = collector.result(done)
        result["state"] = "running" if done.get("state") == "running" else "finished"
        dropped = done.get("dropped_bytes")
        result["dropped_bytes"] = dropped if _count(dropped) else 0
        return result

    def runs(self) -> list[dict]:
        """The sandbox's runs (running, and the last finished ones), oldest first: see
        :func:`_run_info` for the keys."""
        with _older_agent("runs"):
            done = self._call("runs", {}, None, 30.0, max_bytes=MAX_RUNS_BYTES)
        raw = done.get("runs")
        return [_run_info(r) for r in raw if isinstance(r, dict)] if isinstance(raw, list) else []

    def interrupt_run(self, run_id: str) -> int:
        """Interrupt one run by id (1 if it was signalled, 0 if it had ended)."""
        return int(self._call("interrupt", {"run_id": run_id}, None, 30.0)["interrupted"])

    def hello(self) -> dict:
        """The agent's version, pid and available languages."""
        return self._call("hello", {}, None, 30.0)

    def interrupt(self, session: str | None = None) -> int:
        """Interrupt the running code of ``session`` (None = every running run); returns
        how many runs were signalled."""
        return int(self._call("interrupt", {"session": session}, None, 30.0)["interrupted"])

    def input_reply(self, session: str, value: str | None) -> None:
        """Answer the ``input_request`` of the run in python session ``session`` (None = end
        of input: ``input()`` raises EOFError)."""
        self._call("input_reply", {"session": session, "value": value}, None, 30.0)

    def complete(self, session: str, code: str, cursor_pos: int | None = None) -> dict:
        """Completions from the python session's namespace: ``{"matches", "cursor_start",
        "cursor_end", "busy"}`` (``busy``: the session was running code; no matches)."""
        args = {"session": session, "code": code, "cursor_pos": cursor_pos}
        return self._call("complete", args, None, 30.0)

    def inspect(self, session: str, code: str, cursor_pos: int | None = None,
                detail_level: int = 0) -> dict:
        """What the name at the cursor is: ``{"found", "data", "metadata", "busy"}``."""
        args = {"session": session, "code": code, "cursor_pos": cursor_pos,
                "detail_level": detail_level}
        return self._call("inspect", args, None, 30.0)

    def set_deadline(self, at: float | None) -> None:
        """Make the agent end the sandbox at epoch time ``at`` (None = no deadline)."""
        self._call("deadline", {"at": at}, None, 30.0)

    def deadline_ahead(self, at: float | None) -> Callable[[], None] | None:
        """Send the deadline ``at`` on the stream already open, not waiting for the answer:
        to a frozen agent it waits in the stream, the first thing the agent reads once
        thawed. The returned function waits for the answer (AgentError as ``set_deadline``);
        None when no stream is open or it broke (nothing was sent: use ``set_deadline``)."""
        with self._lock:
            channel = self._channel
        if channel is None:
            return None
        rid = f"c{next(self._ids)}"
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._pending[rid] = (q, channel)
        try:
            with self._send_lock:
                channel.sendall(encode({"id": rid, "op": "deadline", "at": at}))
        except OSError:
            with self._lock:
                self._pending.pop(rid, None)
            self._drop(channel)
            return None

        def answer() -> None:
            self._answer(rid, "deadline", q, None, 30.0)

        return answer

    def sessions(self) -> list[dict]:
        """The live sessions: ``[{"session", "language", "pid", "busy"}]``."""
        return list(self._call("sessions", {}, None, 30.0)["sessions"])

    def close_session(self, session: str, language: str | None = None) -> int:
        """End a session (every language of it when ``language`` is None)."""
        done = self._call("close_session", {"session": session, "language": language}, None, 60.0)
        return int(done.get("closed", 0))

    def write_file(self, path: str, data: bytes, mode: int | None = None) -> int:
        """Write ``data`` to ``path`` (relative to the sandbox home); returns the size."""
        args = {"path": path, "data": base64.b64encode(data).decode("ascii"), "mode": mode}
        return int(self._call("write_file", args, None, None)["size"])

    def read_file(self, path: str) -> bytes:
        """The content of ``path`` (relative to the sandbox home)."""
        return base64.b64decode(self._call("read_file", {"path": path}, None, FILE_WAIT)["data"])

    def snapshot(self, name: str | None = None, keep_auto: int | None = None) -> dict:
        """Snapshot every python session's state and the home directory's files:
        ``{"snapshot_id", "name", "auto", "created", "size", "memory", "sessions",
        "not_captured", "lost_threads", "lost_processes", "dropped"}``; ``keep_auto``: an
        automatic checkpoint, of which the agent keeps the newest ``keep_auto``."""
        args: dict[str, Any] = {"name": name}
        if keep_auto is not None:
            args["keep_auto"] = keep_auto
        return self._call("snapshot", args, None, FILE_WAIT)

    def restore(self, snapshot: str) -> dict:
        """Put the sandbox back as snapshot ``snapshot`` (id or name) was:
        ``{"snapshot_id", "name", "sessions", "restarted"}``."""
        return self._call("restore", {"snapshot": snapshot}, None, FILE_WAIT)

    def snapshots(self) -> list[dict]:
        """The sandbox's snapshots, oldest first."""
        return list(self._call("snapshots", {}, None, 30.0)["snapshots"])

    def delete_snapshot(self, snapshot: str) -> str:
        """Delete a snapshot (id or name); its id."""
        return str(self._call("delete_snapshot", {"snapshot": snapshot}, None, 60.0)["deleted"])

    def rekey(self, token: str) -> None:
        """Make the agent take ``token`` instead of the current one (a memory fork starts
        with its parent's); this client proves the new one from now on."""
        self._call("rekey", {"token": token}, None, 30.0)
        self._token = token

    def shutdown(self) -> None:
        """Make the agent kill everything in the sandbox and exit."""
        self._call("shutdown", {}, None, 30.0)
        self.close()

    def close(self) -> None:
        """Close the connection (sessions in the sandbox live on)."""
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            self._drop(channel)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def _older_agent(op: str) -> Iterator[None]:
    """An agent that does not know ``op`` (older than this client) as one AgentError."""
    try:
        yield
    except InvalidArgumentError as exc:
        if not str(exc).startswith(f"unknown op {op!r}"):
            raise
        raise AgentError("this sandbox's agent is older than this nexus-kernel and keeps no "
                         "runs to list or replay: stop the sandbox and create a new one") from None


def _run_args(language: str, code: str, timeout: float | None, session: str | None,
              output_limit: int, stdin: bool, stderr_traceback: bool, deadline: float | None,
              input_data: str | None, execution_count: int | None) -> dict[str, Any]:
    """The fields of a ``run`` request, with a new run id."""
    args: dict[str, Any] = {} if deadline is None else {"deadline": deadline}
    args |= {
        "run_id": "r" + secrets.token_hex(6),
        "language": language,
        "code": code,
        "timeout": timeout,
        "session": session,
        "output_limit": output_limit,
    }
    if stdin:
        args["stdin"] = True
    if not stderr_traceback:
        args["stderr_traceback"] = False
    if input_data is not None:
        args["input"] = input_data
    if execution_count is not None:
        args["execution_count"] = execution_count
    return args


class _Collector:
    """Gathers the events of run ``run_id`` into its result, passing each on to
    ``on_event``."""

    def __init__(self, on_event: Callable[[dict], None] | None, run_id: str) -> None:
        self.on_event = on_event
        self.run_id = run_id
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.display: list[dict] = []
        self.found: dict[str, Any] = {"result": None, "error": None}

    def __call__(self, event: dict) -> None:
        kind = event.get("ev")
        if kind == "stdout":
            self.stdout.append(event.get("data", ""))
        elif kind == "stderr":
            self.stderr.append(event.get("data", ""))
        elif kind == "display":
            self.display.append(event.get("data") or {})
        elif kind == "result":
            self.found["result"] = event.get("data")
        elif kind == "error":
            traceback = list(event.get("traceback") or [])
            hint = missing_module_hint(f"{event.get('ename')}: {event.get('evalue')}")
            if hint is not None:
                traceback.append(hint)
                event = {**event, "traceback": traceback}
            self.found["error"] = {
                "ename": event.get("ename", ""),
                "evalue": event.get("evalue", ""),
                "traceback": traceback,
            }
        if self.on_event is not None:
            self.on_event(event)

    def result(self, done: dict) -> dict:
        """The aggregated result of a run whose ``done`` is ``done``."""
        hint = missing_module_hint("".join(self.stderr)) if done.get("exit_code") != 0 else None
        if hint is not None and "exit_code" in done:  # the traceback went to stderr: so does the hint
            self({"ev": "stderr", "data": hint + "\n"})
        return {
            "run_id": self.run_id,
            "stdout": "".join(self.stdout),
            "stderr": "".join(self.stderr),
            "exit_code": done.get("exit_code"),
            "execution_time": done.get("execution_time"),
            "timed_out": bool(done.get("timed_out")),
            "interrupted": bool(done.get("interrupted")),
            "truncated": bool(done.get("truncated")),
            "session_restarted": bool(done.get("session_restarted")),
            "oom_killed": bool(done.get("oom_killed")),
            "usage": _usage(done.get("usage")),
            "ended_by": _ended_by(done),
            "display": self.display,
            "result": self.found["result"],
            "error": self.found["error"],
        }


def _is_run_id(value: Any) -> bool:
    """An agent's run id: ``r`` and 12 hex digits."""
    return (isinstance(value, str) and len(value) == 13 and value[0] == "r"
            and all(c in "0123456789abcdef" for c in value[1:]))


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1e15


def _run_info(raw: dict[str, Any]) -> dict[str, Any]:
    """One run of the agent's ``runs`` answer, kept to RUN_INFO's keys and types (anything
    else becomes None; strings are cut at 500 characters)."""
    info: dict[str, Any] = {}
    for key, kind in RUN_INFO.items():
        value = raw.get(key)
        if kind is float:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value) and 0 <= value < 1e15)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and -1e9 < value < 1e9
        else:
            ok = isinstance(value, kind)
        info[key] = (value[:500] if isinstance(value, str) else value) if ok else None
    if not _is_run_id(info["run_id"]):
        info["run_id"] = None
    if info["state"] not in RUN_STATES:
        info["state"] = None
    if info["ended_by"] not in ENDED_BY:
        info["ended_by"] = None
    info["usage"] = _usage(raw.get("usage"))
    return info


def _usage(raw: Any) -> dict[str, Any] | None:
    """The agent's ``usage`` report, kept to its known keys and sane numbers (None from an
    agent that does not measure)."""
    if not isinstance(raw, dict):
        return None
    usage: dict[str, Any] = {}
    for key in USAGE_NUMBERS:
        value = raw.get(key)
        sane = (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and 0 <= value < 1e15)
        usage[key] = value if sane else None
    source = raw.get("source")
    usage["source"] = source if source in USAGE_SOURCES else "rusage"
    return usage


def _ended_by(done: dict[str, Any]) -> str:
    """The agent's ``ended_by``, else derived from the run's flags (an older agent)."""
    value = done.get("ended_by")
    if value in ENDED_BY:
        return value
    return ended_by_flags(timed_out=bool(done.get("timed_out")),
                          interrupted=bool(done.get("interrupted")),
                          truncated=bool(done.get("truncated")),
                          oom_killed=bool(done.get("oom_killed")))
