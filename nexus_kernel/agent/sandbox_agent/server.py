"""The agent server, the sandbox's long-lived process (pid 1 of local and docker sandboxes):
it accepts connections on the socket :mod:`.boot` listens on, authenticates each one with
a challenge on its token (``auth``: the token never travels), and serves runs, sessions,
files and snapshots (see ``docs/agent-protocol.md``). Imported after ``READY``; sessions,
snapshots and files are imported on first use."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from .gate import Gate
from .procs import TAG_VAR, Reaper
from .registry import KEEP_FINISHED, Registry, RunFailed, Tee, is_run_id
from .runs import Reply, StatelessRun, random_id
from .threads import Threads
from .usage import Meter
from .wire import (
    AGENT_VERSION,
    AUTH_MAX_LINE,
    CHUNK,
    DEFAULT_OUTPUT_LIMIT,
    NONCE_HEX,
    PROTOCOL_VERSION,
    Failure,
    Invalid,
    LineBuffer,
    decode,
    encode,
    proof,
    same_secret,
)
from .zygote import Zygotes

#: language -> interpreter program looked up on PATH.
INTERPRETERS = {"python": "python3", "javascript": "node", "bash": "bash"}
#: code larger than this is passed to stateless interpreters through a file, not argv.
MAX_ARGV_CODE = 100 * 1024
#: How long ``complete``/``inspect`` wait for the session's answer (the first query may
#: start the session).
QUERY_TIMEOUT = 10.0
#: Bounds of a token given to ``rekey`` (the host makes ``secrets.token_urlsafe(32)``).
MIN_TOKEN, MAX_TOKEN = 32, 256


def _which(program: str) -> str | None:
    for folder in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep):
        path = os.path.join(folder or ".", program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Connection:
    """One client connection: a reader thread, a writer lock, closes when idle after EOF.
    Until it has authenticated (``auth``) it may send only short lines and only ``auth``."""

    def __init__(self, agent, sock) -> None:
        self.agent = agent
        self.sock = sock
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._inflight = 0
        self._eof = False
        self.closed = False
        self.authenticated = False
        self.nonces: tuple | None = None  # (host nonce, agent nonce) of the auth under way

    def send(self, msg: dict) -> None:
        data = encode(msg)
        with self._write_lock:
            if self.closed:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def serve(self) -> None:
        lines = LineBuffer()
        while not self.closed:
            try:
                data = self.sock.recv(CHUNK)
            except OSError:
                data = b""
            if not data:
                break
            for line in lines.feed(data):
                if not self.authenticated and len(line) > AUTH_MAX_LINE:
                    self.close()  # before auth only short lines: a hostile peer
                if line.strip() and not self.closed:
                    self.agent.dispatch(self, line)
            if not self.authenticated and lines.pending > AUTH_MAX_LINE:
                self.close()
        with self._state_lock:
            self._eof = True
            idle = self._inflight == 0
        if idle:
            self.close()

    def begin(self) -> None:
        with self._state_lock:
            self._inflight += 1

    def end(self) -> None:
        with self._state_lock:
            self._inflight -= 1
            idle = self._eof and self._inflight == 0
        if idle:
            self.close()

    def close(self) -> None:
        with self._write_lock:
            self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


class Agent:
    """The server: sessions, runs, files, snapshots; ``lifetime`` (:mod:`.boot`) ends the
    sandbox."""

    #: ops answered on the connection's reader thread (they never block).
    INLINE_OPS = ("hello", "deadline", "sessions", "interrupt", "input_reply", "runs")

    def __init__(self, token: str, home: str, lifetime) -> None:
        self.token = token
        self.home = home
        self.lifetime = lifetime
        self.procs = lifetime.procs
        self.reaper = Reaper()
        self.zygotes = Zygotes(self.reaper)
        self.threads = Threads()  # the threads of requests that may block
        self._lock = threading.Lock()
        self._sessions: dict = {}
        self._runs: set = set()
        self.registry = Registry()
        self._interpreters: dict = {}
        self._env = dict(os.environ)
        self._env["PWD"] = home
        self.gate = Gate()  # runs vs a snapshot or restore (see :mod:`.gate`)
        self._snapshots = None
        self._snapshots_lock = threading.Lock()
        self._ops = {
            "hello": self.op_hello,
            "run": self.op_run,
            "interrupt": self.op_interrupt,
            "deadline": self.op_deadline,
            "write_file": self.op_write_file,
            "read_file": self.op_read_file,
            "sessions": self.op_sessions,
            "close_session": self.op_close_session,
            "shutdown": self.op_shutdown,
            "input_reply": self.op_input_reply,
            "complete": self.op_complete,
            "inspect": self.op_inspect,
            "snapshot": self.op_snapshot,
            "restore": self.op_restore,
            "snapshots": self.op_snapshots,
            "delete_snapshot": self.op_delete_snapshot,
            "export": self.op_export,
            "drop_export": self.op_drop_export,
            "import": self.op_import,
            "attach": self.op_attach,
            "runs": self.op_runs,
            "rekey": self.op_rekey,
        }

    @property
    def snapshots(self):
        """The sandbox's :class:`.snapshots.Snapshots` (the module imported on first use)."""
        with self._snapshots_lock:
            if self._snapshots is None:
                from .snapshots import Snapshots

                self._snapshots = Snapshots(self)
            return self._snapshots

    # -- helpers ----------------------------------------------------------------------

    def child_env(self, tag: str) -> dict:
        env = dict(self._env)
        env[TAG_VAR] = tag
        return env

    def interpreter(self, language: str) -> str:
        path = self._interpreters.get(language)
        if path is None:
            path = _which(INTERPRETERS[language])
            if path is None:
                raise Invalid(
                    f"{language} is not available in this sandbox (no {INTERPRETERS[language]!r} on PATH)"
                )
            self._interpreters[language] = path
        return path

    def temp_path(self, name: str) -> str:
        if self.lifetime.tmpdir is None:
            base = os.environ.get("TMPDIR") or "/tmp"
            path = os.path.join(base, f"nexus-agent-{os.getpid()}-{random_id()}")
            os.mkdir(path, 0o700)
            self.lifetime.tmpdir = path
        return os.path.join(self.lifetime.tmpdir, name)

    def forget_session(self, session) -> None:
        with self._lock:
            key = (session.name, session.language)
            if self._sessions.get(key) is session:
                del self._sessions[key]

    # -- requests ---------------------------------------------------------------------

    def dispatch(self, conn: Connection, line: bytes) -> None:
        """Handle one request line (never raises)."""
        try:
            msg = decode(line)
        except ValueError as exc:
            conn.send({"id": None, "ev": "fail", "error": f"bad request: {exc}", "kind": "invalid"})
            return
        reply = Reply(conn, msg.get("id"))
        op = msg.get("op")
        if not conn.authenticated:
            self.authenticate(conn, reply, msg)
            return
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            reply.event(
                "fail",
                error="unknown op {!r}; use one of {}".format(op, ", ".join(sorted(self._ops))),
                kind="invalid",
            )
            return
        conn.begin()
        if op in self.INLINE_OPS:
            self._handle(reply, handler, msg)
            return
        try:
            self.threads.submit(self._handle, reply, handler, msg)
        except RuntimeError as exc:  # e.g. the sandbox's pids limit
            reply.event("fail", error=f"the agent cannot start a thread: {exc}", kind="error")
            conn.end()

    def authenticate(self, conn: Connection, reply: Reply, msg: dict) -> None:
        """The ``auth`` handshake, in two messages from the host: ``{"nonce": H}`` is
        answered with the agent's nonce A and ``proof(token, "agent", H, A)``, which the host
        checks before it sends anything else; ``{"proof": proof(token, "host", H, A)}``
        authenticates the connection. Anything else, or a wrong proof, ends it."""
        if msg.get("op") != "auth":
            reply.event("fail", error="authentication failed: this connection has not "
                        "authenticated (op 'auth' first)", kind="auth")
            conn.close()
            return
        nonce, theirs = msg.get("nonce"), msg.get("proof")
        if conn.nonces is None and _is_nonce(nonce):
            mine = os.urandom(NONCE_HEX // 2).hex()
            conn.nonces = (nonce, mine)
            reply.event("done", nonce=mine, proof=proof(self.token, "agent", nonce, mine))
            return
        if conn.nonces is not None and isinstance(theirs, str) and same_secret(
                theirs, proof(self.token, "host", *conn.nonces)):
            conn.authenticated = True
            reply.event("done")
            return
        reply.event("fail", error="authentication failed", kind="auth")
        conn.close()

    def _handle(self, reply: Reply, handler, msg: dict) -> None:
        try:
            result = handler(reply, msg) or {}
            reply.event("done", **result)
        except Invalid as exc:
            reply.event("fail", error=str(exc), kind="invalid")
        except Failure as exc:
            reply.event("fail", error=str(exc), kind="error")
        except Exception as exc:
            reply.event("fail", error=f"{type(exc).__name__}: {exc}", kind="error")
        finally:
            if reply.after is not None:  # after ``done`` (a run's checkpoint): nobody waits
                with contextlib.suppress(Exception):
                    reply.after()
            reply.conn.end()

    # -- ops --------------------------------------------------------------------------

    def op_hello(self, reply, msg) -> dict:
        languages = [lang for lang, prog in INTERPRETERS.items() if _which(prog)]
        return {
            "version": AGENT_VERSION,
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "languages": languages,
        }

    def op_run(self, reply, msg) -> dict:
        language = msg.get("language")
        code = msg.get("code")
        timeout = msg.get("timeout")
        session = msg.get("session")
        limit = msg.get("output_limit")
        options = {}
        for flag, default in (("stdin", False), ("stderr_traceback", True)):
            value = msg.get(flag, default)
            if not isinstance(value, bool):
                raise Invalid(f"{flag} must be true or false")
            if value is not default:
                options[flag] = value
        count = msg.get("execution_count")  # In[N] of the cell in a python session's IPython
        if count is not None:
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise Invalid("execution_count must be a positive integer or null")
            options["execution_count"] = count
        if language not in INTERPRETERS:
            raise Invalid(
                "unknown language {!r}; use one of {}".format(language, ", ".join(INTERPRETERS))
            )
        if not isinstance(code, str):
            raise Invalid("code must be a string")
        if timeout is not None and (not _is_number(timeout) or timeout <= 0):
            raise Invalid("timeout must be a positive number of seconds or null")
        if session is not None and (not isinstance(session, str) or not session):
            raise Invalid("session must be a non-empty string or null")
        input_data = msg.get("input")
        if input_data is not None and (not isinstance(input_data, str) or session is not None):
            raise Invalid("input must be a string, and is given to stateless runs only")
        if limit is None:
            limit = DEFAULT_OUTPUT_LIMIT
        elif not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise Invalid("output_limit must be a non-negative integer (bytes)")
        deadline = msg.get("deadline")  # the `deadline` op folded into the run: one round trip
        if deadline is not None and not _is_number(deadline):
            raise Invalid("deadline must be an epoch time in seconds or null")
        checkpoint = msg.get("checkpoint")  # {"name", "keep_auto"}: a snapshot after the run
        if checkpoint is not None:
            if not isinstance(checkpoint, dict):
                raise Invalid("checkpoint must be an object {name, keep_auto} or null")
            from .snapshots import check_request

            check_request(checkpoint.get("name"), checkpoint.get("keep_auto"))
        detach = msg.get("detach", False)
        if not isinstance(detach, bool):
            raise Invalid("detach must be true or false")
        if detach and checkpoint is not None:
            raise Invalid("a detached run takes no checkpoint: snapshot once it has ended")
        run_id = msg.get("run_id")  # the client's choice, so it knows it before any event
        if run_id is not None and not is_run_id(run_id):
            raise Invalid("run_id must be 'r' and 12 lowercase hex digits, or null")
        self.interpreter(language)
        if deadline is not None:
            self.lifetime.set_deadline(deadline)
        entry = self.registry.start(run_id, language, session, timeout, detach)
        if entry is None:
            raise Invalid(f"run_id {run_id!r} is in use in this sandbox")
        args = (entry, language, code, timeout, session, limit, input_data, options)
        if not detach:
            result, reserved = self._execute(Tee(entry, reply), *args, checkpoint=checkpoint)
            if reserved:  # taken once ``done`` is sent: off the run's round trip
                reply.after = lambda: self.snapshots.take(
                    checkpoint.get("name"), checkpoint.get("keep_auto"), reserved=True)
            return result
        try:
            threading.Thread(target=self._detached, args=args, daemon=True).start()
        except RuntimeError as exc:  # e.g. the sandbox's pids limit
            entry.finish(error=f"the agent cannot start a thread: {exc}")
            raise Failure(entry.error) from None
        return {"run_id": entry.id}

    def _execute(self, sink, entry, language, code, timeout, session, limit, input_data,
                 options, checkpoint=None) -> tuple:
        """Do one run, its events going to ``sink``; its entry records how it ended.
        Returns its result, and True when it handed the snapshot gate over to ``checkpoint``
        (see :meth:`.gate.Gate.leave`: the caller then takes the checkpoint)."""
        meter = Meter()  # the run starts it
        gate = self.gate
        gate.enter()
        ok = False
        try:
            if session is None:
                result = self._run_stateless(sink, entry, language, code, timeout, limit,
                                             meter, input_data)
            else:
                result = self._run_session(sink, entry, session, language, code, timeout,
                                           limit, meter, options)
            meter.finish(result)
            ok = True
        except (Invalid, Failure) as exc:
            entry.finish(error=str(exc))
            raise
        except Exception as exc:
            entry.finish(error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            reserved = gate.leave(reserve=ok and checkpoint is not None)
        entry.finish(result)
        return result, reserved

    def _detached(self, entry, *args) -> None:
        """A detached run, in a thread of its own: nobody waits for it, its entry tells."""
        with contextlib.suppress(Exception):
            self._execute(Tee(entry), entry, *args)  # no checkpoint: the gate is not handed

    def _stateless_argv(self, language: str, code: str) -> tuple[list, str | None]:
        exe = self.interpreter(language)
        script = None
        if (
            len(code) > MAX_ARGV_CODE // 4
            and len(code.encode("utf-8", "surrogateescape")) > MAX_ARGV_CODE
        ):
            script = self.temp_path(f"run-{random_id()}")
            with open(script, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(code)
        if language == "python":
            return [exe, "-u", script] if script else [exe, "-u", "-c", code], script
        if language == "javascript":
            return [exe, script] if script else [exe, "-e", code], script
        return [exe, script] if script else [exe, "-c", code], script

    def _run_stateless(self, reply, entry, language, code, timeout, limit, meter,
                       input_data=None) -> dict:
        argv, script = self._stateless_argv(language, code)
        run = StatelessRun(self, reply, argv, timeout, limit, input_data)
        entry.interrupter = run.interrupt
        with self._lock:
            self._runs.add(run)
        try:
            meter.start()
            return run.execute()
        finally:
            with self._lock:
                self._runs.discard(run)
            if script:
                with contextlib.suppress(OSError):
                    os.unlink(script)

    def _run_session(self, reply, entry, name, language, code, timeout, limit, meter,
                     options=None) -> dict:
        from .sessions import SessionGone

        gone = None
        for _attempt in range(3):
            session = self._session(name, language)
            with session.run_lock:
                entry.interrupter = session.interrupt
                try:
                    return session.run(reply, code, timeout, limit, meter, options)
                except SessionGone as exc:
                    gone = exc
        detail = bytes(gone.args[0] if gone else b"").decode("utf-8", "replace").strip()
        raise Failure(
            "the {} session could not start (exit status {}){}".format(
                language, session.status, ": " + detail if detail else ""
            )
        )

    def _session(self, name: str, language: str):
        """The live session for (name, language), started on first use."""
        with self._lock:
            session = self._sessions.get((name, language))
            if session is None or session.dead:
                session = self._start_session(name, language)
                self._sessions[(name, language)] = session
            return session

    def _start_session(self, name: str, language: str, holder: str | None = None):
        """A new :class:`.sessions.Session`, started (the module imported on first use)."""
        from .sessions import Session

        session = Session(self, name, language)
        session.start(holder=holder)
        return session

    def op_interrupt(self, reply, msg) -> dict:
        if msg.get("run_id") is not None:
            return {"interrupted": int(self._entry(msg).interrupt())}
        name = msg.get("session")
        if name is not None and not isinstance(name, str):
            raise Invalid("session must be a string or null")
        with self._lock:
            sessions = [s for s in self._sessions.values() if name is None or s.name == name]
            runs = list(self._runs) if name is None else []
        count = sum(1 for s in sessions if s.interrupt())
        count += sum(1 for r in runs if r.interrupt())
        return {"interrupted": count}

    def op_input_reply(self, reply, msg) -> dict:
        name = msg.get("session")
        value = msg.get("value")
        if not isinstance(name, str) or not name:
            raise Invalid("session must be a non-empty string")
        if value is not None and not isinstance(value, str):
            raise Invalid("value must be a string, or null for end of input")
        with self._lock:
            session = self._sessions.get((name, "python"))
        if session is None or not session.give_input(value):
            raise Invalid(f"session {name!r} is not waiting for input")
        return {}

    def _query(self, msg, op: str) -> dict:
        """Ask the python session ``session`` (started if needed) about ``code``."""
        name = msg.get("session")
        code = msg.get("code")
        pos = msg.get("cursor_pos")
        if not isinstance(name, str) or not name:
            raise Invalid("session must be a non-empty string")
        if not isinstance(code, str):
            raise Invalid("code must be a string")
        if pos is None:
            pos = len(code)
        if not isinstance(pos, int) or isinstance(pos, bool) or not 0 <= pos <= len(code):
            raise Invalid("cursor_pos must be an offset into code (0 .. len(code))")
        request = {"op": op, "code": code, "cursor_pos": pos,
                   "detail_level": 1 if msg.get("detail_level") else 0}
        answer = self._session(name, "python").query(request, QUERY_TIMEOUT)
        if op == "complete":
            found = {"matches": [], "cursor_start": pos, "cursor_end": pos}
        else:
            found = {"found": False, "data": {}, "metadata": {}}
        found.update(answer or {})
        found["busy"] = answer is None
        return found

    def op_complete(self, reply, msg) -> dict:
        return self._query(msg, "complete")

    def op_inspect(self, reply, msg) -> dict:
        return self._query(msg, "inspect")

    def _entry(self, msg):
        entry = self.registry.get(msg.get("run_id"))
        if entry is None:
            raise Invalid("no run {!r} in this sandbox (it keeps its runs while they run and "
                          "the last {} finished ones)".format(msg.get("run_id"), KEEP_FINISHED))
        return entry

    def op_attach(self, reply, msg) -> dict:
        entry = self._entry(msg)
        follow = msg.get("follow", True)
        if not isinstance(follow, bool):
            raise Invalid("follow must be true or false")
        try:
            return entry.replay(reply, follow)
        except RunFailed as exc:
            raise Failure(str(exc)) from None

    def op_runs(self, reply, msg) -> dict:
        return {"runs": self.registry.list()}

    def op_deadline(self, reply, msg) -> dict:
        at = msg.get("at")
        if at is not None and not _is_number(at):
            raise Invalid("at must be an epoch time in seconds or null")
        self.lifetime.set_deadline(at)
        return {}

    def op_write_file(self, reply, msg) -> dict:
        from .files import write_file

        return write_file(self.home, msg)

    def op_read_file(self, reply, msg) -> dict:
        from .files import read_file

        return read_file(self.home, msg)

    def op_sessions(self, reply, msg) -> dict:
        with self._lock:
            sessions = list(self._sessions.values())
        return {"sessions": [s.info() for s in sessions if not s.dead]}

    def op_close_session(self, reply, msg) -> dict:
        name = msg.get("session")
        language = msg.get("language")
        if not isinstance(name, str):
            raise Invalid("session must be a string")
        if language is not None and language not in INTERPRETERS:
            raise Invalid(f"unknown language {language!r}")
        with self._lock:
            doomed = [
                s
                for s in self._sessions.values()
                if s.name == name and (language is None or s.language == language)
            ]
            for s in doomed:
                del self._sessions[(s.name, s.language)]
        for s in doomed:
            s.dead = True
            s.kill()
        return {"closed": len(doomed)}

    def op_snapshot(self, reply, msg) -> dict:
        return self.snapshots.take(msg.get("name"), msg.get("keep_auto"))

    def op_restore(self, reply, msg) -> dict:
        return self.snapshots.restore(msg.get("snapshot"))

    def op_snapshots(self, reply, msg) -> dict:
        return {"snapshots": self.snapshots.list()}

    def op_delete_snapshot(self, reply, msg) -> dict:
        return self.snapshots.delete(msg.get("snapshot"))

    def op_export(self, reply, msg) -> dict:
        return self.snapshots.export(msg.get("snapshot"))

    def op_drop_export(self, reply, msg) -> dict:
        return self.snapshots.drop_export(msg.get("archive"))

    def op_import(self, reply, msg) -> dict:
        return self.snapshots.load(msg.get("archive"))

    def session(self, name: str, language: str):
        """The live session (name, language), started if needed."""
        return self._session(name, language)

    def spare_session(self, holder: str):
        """A python worker forked from a snapshot's holder, in no session's place (the
        caller kills it)."""
        return self._start_session("spare-" + random_id(), "python", holder)

    def live_sessions(self) -> list:
        with self._lock:
            return [s for s in self._sessions.values() if not s.dead]

    def end_sessions(self, sessions) -> None:
        """Kill ``sessions`` (a restore replaces them)."""
        with self._lock:
            for s in sessions:
                if self._sessions.get((s.name, s.language)) is s:
                    del self._sessions[(s.name, s.language)]
        for s in sessions:
            s.dead = True
            s.kill()

    def thaw_session(self, name: str, holder: str) -> None:
        """Python session ``name`` from a snapshot's holder (see :mod:`.snapshots`)."""
        session = self._start_session(name, "python", holder)
        with self._lock:
            self._sessions[(name, "python")] = session

    def op_rekey(self, reply, msg) -> dict:
        """Replace the token (a memory fork of the sandbox starts with its parent's): new
        connections must prove the new one; connections already authenticated keep going."""
        token = msg.get("token")
        if not (isinstance(token, str) and MIN_TOKEN <= len(token) <= MAX_TOKEN
                and token.isascii() and token.isprintable() and " " not in token):
            raise Invalid(f"token must be {MIN_TOKEN}..{MAX_TOKEN} printable ASCII characters")
        self.token = token
        return {}

    def op_shutdown(self, reply, msg) -> dict:
        reply.event("done")
        self.lifetime.terminate()
        return {}  # not reached

    def accept_forever(self, listener) -> None:
        """Serve each connection to ``listener`` (a ``_socket.socket``, see
        :func:`.boot._listen`) in a thread of its own (never returns)."""
        listener = socket.socket(fileno=listener.detach())
        while True:
            try:
                sock, _ = listener.accept()
            except (InterruptedError, ConnectionAbortedError):
                continue
            conn = Connection(self, sock)
            threading.Thread(target=conn.serve, name="conn", daemon=True).start()


def _is_nonce(value) -> bool:
    return (isinstance(value, str) and len(value) == NONCE_HEX
            and all(c in "0123456789abcdef" for c in value))
