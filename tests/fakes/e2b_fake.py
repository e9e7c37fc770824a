"""A faithful fake of the parts of the ``e2b`` SDK (2.x) that the e2b provider uses.

Same names, argument names, calling conventions and return shapes as the installed SDK
(``tests/test_sdk_fakes_match.py`` checks the signatures against it): ``Sandbox.create``,
the class-or-instance methods ``connect`` / ``kill`` / ``pause`` / ``set_timeout`` /
``get_info`` (dispatching to ``_cls_*`` when called on the class with a sandbox id, as the
SDK's ``class_method_variant`` does), ``Sandbox.list`` returning a paginator of
``SandboxInfo``, ``commands.run(background=True)`` returning a handle whose iteration yields
``(stdout, stderr, pty)`` tuples of *str* decoded incrementally as UTF-8, ``send_stdin`` taking
str or bytes, and ``files.write``.

Users, as far as one host uid allows: ``user=`` ("user" by default, or "root") is recorded
(``_Record.owners``, ``CommandHandle.user``); a command runs as ``bash -l -c`` does, after the
first of its user's ``~/.bash_profile``, ``~/.bash_login``, ``~/.profile`` (root's home is
a directory of its own; the host's ``/etc/profile`` is not read: it would reset PATH);
``files.write`` as "user" over a path "root" wrote is refused (envd runs it as that user).
Every process still runs as the test's uid, so the kernel enforces nothing between the two
users here. ``CommandHandle.pid`` is the real pid of the process the command started. The
daemon's log (:attr:`_Record.daemon_log`) gets every command line and every stdin byte, as
envd logs them at debug level.

A sandbox is a :class:`~fakes._vm.FakeVM`; commands really run (``/bin/bash -c``), so the
real agent serves real protocol traffic. Pause sends SIGSTOP to every process and breaks
the open command streams (as a real pause drops connections); connect resumes (SIGCONT).
The timeout is enforced lazily: a running sandbox past its end is killed on next access, or
paused when ``create`` was given ``lifecycle={"on_timeout": "pause"}`` (either form; the
API's default, :data:`API_ON_TIMEOUT`, kills); ``connect`` resumes it. ``auto_resume`` (a
request to a paused sandbox resuming it) is not modelled: the fake refuses it.
Every call checks an API key (argument or ``E2B_API_KEY``) like the real control plane.

The SDK defaults that matter are modelled, with the installed SDK's values (read from its
signatures by ``test_sdk_fakes_match.py``): a command's ``timeout`` (60 s) ends it, killing its
process, unless ``timeout=0`` (scaled by :data:`COMMAND_SECONDS` so tests see it fire); a
command handle keeps all its output (``_stdout_chunks``) unless ``retain_output=False``;
``pause`` with no ``mode`` takes the API's default snapshot (:data:`API_PAUSE_MODE`), and a
``"filesystem"`` pause ends every process; ``Sandbox.list`` pages by :data:`LIST_PAGE`.

Failures of the API are injected with :data:`OUTAGE` (no network) and :data:`REFUSED_KEYS`
(a bad key), raising what the installed SDK raises (checked live by
``test_cloud_credentials.py``): ``httpx.ConnectError`` when the host name does not resolve,
``httpx.ReadTimeout`` after twice ``request_timeout`` (default 60 s) when nothing answers,
``AuthenticationException`` for a 401 and ``SandboxException(status_code=403)`` for a 403.
"""

from __future__ import annotations

import codecs
import datetime
import enum
import functools
import io
import itertools
import os
import re
import select
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._vm import FakeVM

# --------------------------------------------------------------------------- exceptions


class SandboxException(Exception):
    status_code: int | None = None

    def __init__(self, *args: Any, status_code: int | None = None):
        super().__init__(*args)
        self.status_code = status_code


class TimeoutException(SandboxException):
    pass


class NotFoundException(SandboxException):
    pass


class SandboxNotRunningException(TimeoutException):
    pass


class FileNotFoundException(NotFoundException):
    pass


class SandboxNotFoundException(NotFoundException):
    pass


class AuthenticationException(Exception):
    pass


class InvalidArgumentException(SandboxException):
    pass


class CommandExitException(SandboxException):
    def __init__(self, stdout: str, stderr: str, exit_code: int, error: str | None):
        super().__init__(f"Command exited with code {exit_code} and error:\n{stderr}")
        self.stdout, self.stderr, self.exit_code, self.error = stdout, stderr, exit_code, error


# --------------------------------------------------------------------------- data shapes


class SandboxState(str, enum.Enum):
    PAUSED = "paused"
    RUNNING = "running"

    def __str__(self) -> str:
        return str(self.value)


@dataclass
class SandboxQuery:
    metadata: dict[str, str] | None = None
    state: list[SandboxState] | None = None
    started_after: datetime.datetime | None = None
    template: str | None = None


@dataclass
class SandboxInfo:
    sandbox_id: str
    sandbox_domain: str | None
    template_id: str
    name: str | None
    metadata: dict[str, str]
    started_at: datetime.datetime
    end_at: datetime.datetime
    state: SandboxState
    cpu_count: int
    memory_mb: int
    envd_version: str
    allow_internet_access: bool | None = None


@dataclass
class CommandResult:
    stderr: str
    stdout: str
    exit_code: int
    error: str | None


@dataclass
class WriteInfo:
    name: str
    type: str | None
    path: str


# --------------------------------------------------------------------------- the "cloud"


@dataclass
class _Record:
    """What the fake control plane knows about one sandbox (tests inspect it)."""

    sandbox_id: str
    vm: FakeVM
    template: str
    metadata: dict[str, str]
    envs: dict[str, str]
    allow_internet_access: bool | None
    end_at: float
    started_at: float = field(default_factory=time.time)
    state: SandboxState = SandboxState.RUNNING
    timeouts_set: list[int] = field(default_factory=list)
    handles: list[CommandHandle] = field(default_factory=list)
    #: The snapshot kind of every pause ("full" or "filesystem"), the API's default applied.
    pause_modes: list[str] = field(default_factory=list)
    #: What envd logs: ("run", user, command line) and ("stdin", pid, the bytes sent).
    daemon_log: list[tuple[str, Any, Any]] = field(default_factory=list)
    #: Sandbox path -> the user files.write wrote it as.
    owners: dict[str, str] = field(default_factory=dict)
    #: What its timeout does, from create's ``lifecycle``: ("kill", "") or ("pause", mode).
    on_timeout: tuple[str, str] = ("kill", "")
    #: create's ``network`` (egress allow/deny lists), as given.
    network: Any = None
    #: Every ``files.write`` (path, bytes, user) and every background command of the
    #: sandbox user (user, command line as given, handle, the pid it shows: a clone's is
    #: its source's): what a fork replays (see ``_clone``).
    writes: list[tuple[str, bytes, str]] = field(default_factory=list)
    boots: list[list[Any]] = field(default_factory=list)
    #: A fork's: the source's pid -> the pid of the process restarted here.
    pid_alias: dict[int, int] = field(default_factory=dict)
    forked: bool = False


@dataclass
class SnapshotInfo:
    snapshot_id: str
    names: list[str] = field(default_factory=list)


@dataclass
class _Snapshot:
    """A snapshot: a copy of the sandbox's files and what restarts its processes."""

    root: Any
    template: str
    metadata: dict[str, str]
    writes: list[tuple[str, bytes, str]]
    boots: list[tuple[str, str, int]]


SANDBOXES: dict[str, _Record] = {}
#: snapshot id -> what ``create_snapshot`` kept (it outlives the sandbox, as at E2B).
SNAPSHOTS: dict[str, _Snapshot] = {}
#: envd's default user (``e2b.connection_config.default_username``) and its home.
DEFAULT_USER = "user"
HOME = "/home/user"
#: What ``bash -l`` runs before a command: the first of the user's dotfiles it finds.
LOGIN = (
    'for f in "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; '
    'do if [ -r "$f" ]; then . "$f"; break; fi; done; '
)
_ids = itertools.count(1)
_lock = threading.Lock()

#: None: the API answers; "dns": its host name does not resolve; "hang": nothing answers.
OUTAGE: str | None = None
#: API key -> the HTTP status (401 or 403) the API answers every request with.
REFUSED_KEYS: dict[str, int] = {}
#: Set by reset(): wakes requests waiting in a "hang" outage.
_released = threading.Event()
#: Real seconds per second of a command's ``timeout`` (tests shrink it: the SDK's 60 s
#: default then fires within a test).
COMMAND_SECONDS = 1.0
#: What the API snapshots when ``pause`` is given no mode (currently memory and filesystem).
API_PAUSE_MODE = "full"
#: What a sandbox's timeout does when create's ``lifecycle`` does not say (the API kills).
API_ON_TIMEOUT = "kill"
#: Sandboxes per page of ``Sandbox.list`` when no ``limit`` is given (the API's default).
LIST_PAGE = 100


def reset() -> None:
    """Kill every fake sandbox, end any injected failure, restore the modelled defaults."""
    global OUTAGE, _released, COMMAND_SECONDS, API_PAUSE_MODE, API_ON_TIMEOUT
    OUTAGE = None
    COMMAND_SECONDS, API_PAUSE_MODE, API_ON_TIMEOUT = 1.0, "full", "kill"
    REFUSED_KEYS.clear()
    _released.set()
    _released = threading.Event()
    with _lock:
        records = list(SANDBOXES.values())
        SANDBOXES.clear()
        snapshots = list(SNAPSHOTS.values())
        SNAPSHOTS.clear()
    for record in records:
        record.vm.kill()
    for snap in snapshots:
        shutil.rmtree(snap.root, ignore_errors=True)


def _freeze(record: _Record) -> _Snapshot:
    """What a memory snapshot keeps, as far as the fake can: the files, and the sandbox
    user's background commands still running (they restart in a clone: the fake cannot copy
    process memory, so it checks the wiring of forks and snapshots, not memory semantics)."""
    root = tempfile.mkdtemp(prefix="e2b-snap-", dir="/tmp")
    shutil.copytree(record.vm.root, root, dirs_exist_ok=True, symlinks=True)
    boots = [(user, cmd, pid) for user, cmd, handle, pid in record.boots
             if handle._proc.poll() is None]
    return _Snapshot(root, record.template, dict(record.metadata), list(record.writes), boots)


def _clone(snap: _Snapshot, record: _Record) -> None:
    """Make ``record`` the snapshot's: its files, its writes replayed, its processes
    restarted, with the source's abstract socket names and pids kept (``_rewrite``), as a
    memory copy keeps them, each waited for until it prints its first line."""
    record.forked = True
    shutil.copytree(snap.root, record.vm.root, dirs_exist_ok=True, symlinks=True)
    files = Filesystem(record)
    for path, data, user in snap.writes:
        files.write(path, data, user=user)
    for user, cmd, pid in snap.boots:
        handle = Commands(record).run(cmd, background=True, user=user, timeout=0)
        record.pid_alias[pid] = handle.pid
        record.boots[-1][3] = pid
        next(iter(handle), None)


def _rewrite(record: _Record, cmd: str) -> str:
    """A fork's command line: the source's abstract sockets are this VM's own (a VM has its
    own network namespace; the fake's share the host's), the source's pids its clones'."""
    if not record.forked:
        return cmd
    cmd = cmd.replace("@nexus-", f"@nexus-{record.sandbox_id}-")
    return re.sub(r"--peer-pid (\d+)",
                  lambda m: f"--peer-pid {record.pid_alias.get(int(m[1]), m[1])}", cmd)


def _check_key(opts: dict[str, Any]) -> None:
    """One request to the API, as the SDK makes it: key present (checked before any
    request), host reachable, key accepted."""
    key = opts.get("api_key") or os.environ.get("E2B_API_KEY")
    if not key:
        raise AuthenticationException(
            "API key is required, please visit the Team tab at https://e2b.dev/dashboard "
            "to get your default API key."
        )
    domain = opts.get("domain") or os.environ.get("E2B_DOMAIN") or "e2b.app"
    url = f"https://api.{domain}/sandboxes"
    failed = f"Request failed: error sending request for url ({url})"
    if OUTAGE == "dns":
        raise httpx.ConnectError(
            f"{failed}: client error (Connect): dns error: error resolving DNS: DNS error: "
            f'no records found for Query {{ name: Name("api.{domain}."), query_type: AAAA, '
            "query_class: IN }",
            request=httpx.Request("GET", url),
        )
    if OUTAGE == "hang":
        # pyqwest's operation timeout is the sum of httpx's read and write timeouts
        _released.wait(2 * (opts.get("request_timeout") or 60.0))
        raise httpx.ReadTimeout(f"{failed}: operation timed out", request=httpx.Request("GET", url))
    status = REFUSED_KEYS.get(key)
    if status == 401:
        raise AuthenticationException(
            "401: Unauthorized, please check your credentials. - Invalid API key"
        )
    if status is not None:
        raise SandboxException(f"{status}: Forbidden", status_code=status)


def _record(sandbox_id: str) -> _Record:
    record = SANDBOXES.get(sandbox_id)
    if record is None:
        raise SandboxNotFoundException(f"Sandbox {sandbox_id} not found")
    if record.state is SandboxState.RUNNING and time.time() >= record.end_at:
        action, mode = record.on_timeout
        if action == "pause":  # lifecycle: E2B pauses the sandbox at its timeout
            _pause_record(record, mode)
            return record
        _kill_record(record)  # E2B ends a sandbox at its timeout
        raise SandboxNotFoundException(f"Sandbox {sandbox_id} not found")
    return record


def _on_timeout(lifecycle: dict[str, Any] | None) -> tuple[str, str]:
    """(action, pause mode) of create's ``lifecycle``, validated as the SDK's
    ``build_lifecycle_config`` does; unset: the API's defaults."""
    raw = (lifecycle or {}).get("on_timeout")
    if raw is None:
        action, options = API_ON_TIMEOUT, {}
    elif isinstance(raw, dict):
        action, options = raw.get("action"), raw
    else:
        action, options = raw, {}
    if action not in ("pause", "kill"):
        raise InvalidArgumentException(f"on_timeout must be one of: pause, kill (got {action!r}).")
    if "mode" in options and action != "pause":
        raise InvalidArgumentException("mode is only allowed when on_timeout action is 'pause'.")
    if (lifecycle or {}).get("auto_resume"):
        raise NotImplementedError("the fake does not model auto_resume")
    return action, (options.get("mode") or API_PAUSE_MODE) if action == "pause" else ""


def _pause_record(record: _Record, mode: str) -> None:
    record.pause_modes.append(mode)
    if mode == "filesystem":  # only the disk is kept: resume cold-boots, processes end
        record.vm.end_processes()
    record.vm.pause()
    record.state = SandboxState.PAUSED
    for handle in record.handles:  # a pause drops every open connection
        handle._break("sandbox was paused")


def _kill_record(record: _Record) -> None:
    SANDBOXES.pop(record.sandbox_id, None)
    for handle in record.handles:
        handle._break("sandbox was killed")
    record.vm.kill()


class class_method_variant:  # noqa: N801 - the SDK's name
    """As e2b.sandbox.utils.class_method_variant: an instance method that, called on the
    class with a sandbox id, dispatches to the class method named ``class_method_name``."""

    def __init__(self, class_method_name: str):
        self.class_method_name = class_method_name

    def __call__(self, method):
        self.method = method
        return self

    def __get__(self, obj, objtype=None):
        @functools.wraps(self.method)
        def _wrapper(*args, **kwargs):
            if obj is not None:
                return self.method(obj, *args, **kwargs)
            if args and objtype is not None and isinstance(args[0], objtype):
                return self.method(args[0], *args[1:], **kwargs)
            return getattr(objtype, self.class_method_name)(*args, **kwargs)

        return _wrapper


# --------------------------------------------------------------------------- commands


class CommandHandle:
    """As e2b.CommandHandle (sync): iterate for ``(stdout, stderr, pty)`` str chunks."""

    def __init__(self, proc, record: _Record, retain_output: bool = True, user: str = "user"):
        self._proc = proc
        self._record = record
        #: The user the command runs as (tests read it; every process has the host's uid).
        self.user = user
        self._disconnected = False
        self._broken: str | None = None
        self._timed_out = False
        self._stdout_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stderr_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._result: CommandResult | None = None
        # as the SDK: every chunk kept for the result unless retain_output=False
        self._stdout_chunks: list[str] | None = [] if retain_output else None
        self._stderr_chunks: list[str] | None = [] if retain_output else None

    @property
    def retained(self) -> int:
        """Characters of output this handle keeps (the SDK's ``_stdout_chunks`` and
        ``_stderr_chunks``)."""
        return sum(len(c) for c in (self._stdout_chunks or []) + (self._stderr_chunks or []))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _break(self, why: str) -> None:
        self._broken = why

    def __iter__(self):
        return self._handle_events()

    def _handle_events(self):
        streams = {self._proc.stdout.fileno(): "out", self._proc.stderr.fileno(): "err"}
        while True:
            if self._disconnected:
                return
            if self._timed_out:
                raise TimeoutException(
                    "context deadline exceeded: This error is likely due to exceeding "
                    "'timeout' - the total time a long running request (like command "
                    "execution or directory watch) can be active."
                )
            if self._broken:
                raise SandboxException(f"stream closed: {self._broken}")
            if self._record.vm.paused:
                time.sleep(0.05)
                continue
            if streams:
                ready, _, _ = select.select(list(streams), [], [], 0.05)
                for fd in ready:
                    data = os.read(fd, 4096)
                    kind = streams[fd]
                    if not data:
                        del streams[fd]
                        continue
                    decoder = self._stdout_decoder if kind == "out" else self._stderr_decoder
                    text = decoder.decode(data)
                    if text:
                        kept = self._stdout_chunks if kind == "out" else self._stderr_chunks
                        if kept is not None:
                            kept.append(text)
                        yield (text, None, None) if kind == "out" else (None, text, None)
                continue
            code = self._proc.poll()
            if code is None:
                time.sleep(0.05)  # output closed, process alive: the stream stays open
                continue
            self._result = CommandResult(
                _joined(self._stderr_chunks), _joined(self._stdout_chunks), code, None
            )
            return

    def _time_out(self) -> None:
        """The command's ``timeout`` passed: envd ends the process and the stream."""
        if self._proc.poll() is None:
            self._timed_out = True
            self._record.vm.kill_tree(self._proc)

    def disconnect(self) -> None:
        self._disconnected = True

    def wait(self, on_pty=None, on_stdout=None, on_stderr=None) -> CommandResult:
        for out, err, _pty in self:
            if out is not None and on_stdout:
                on_stdout(out)
            elif err is not None and on_stderr:
                on_stderr(err)
        if self._result is None:
            raise Exception("Command ended without an end event")
        if self._result.exit_code != 0:
            raise CommandExitException(
                self._result.stdout, self._result.stderr, self._result.exit_code, None
            )
        return self._result

    def kill(self) -> bool:
        _reach_envd(self._record)
        if self._proc.poll() is not None:
            return False
        self._proc.kill()
        return True

    def send_stdin(self, data: str | bytes, request_timeout: float | None = None) -> None:
        _reach_envd(self._record)
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self._record.daemon_log.append(("stdin", self.pid, raw))
        _send(self._proc, self._broken, raw)

    def close_stdin(self, request_timeout: float | None = None) -> None:
        self._proc.stdin.close()


def _reach_envd(record: _Record) -> None:
    """A request to the sandbox's daemon (envd): it cannot answer while the sandbox is
    paused (the SDK's request fails; nothing happens in the sandbox)."""
    if record.state is SandboxState.PAUSED or record.sandbox_id not in SANDBOXES:
        raise SandboxNotRunningException(
            f"The sandbox {record.sandbox_id} was not found: The sandbox was killed or reached "
            "its timeout. You can modify the sandbox timeout by passing 'timeout' when "
            "starting the sandbox or calling '.set_timeout' on the sandbox with the desired "
            "timeout."
        )


def _joined(chunks: list[str] | None) -> str | None:
    return None if chunks is None else "".join(chunks)


def _send(proc, broken: str | None, data: str | bytes) -> None:
    if broken:
        raise SandboxException(f"stream closed: {broken}")
    if proc.stdin is None:
        raise SandboxException("stdin is not enabled for this command")
    try:
        proc.stdin.write(data.encode() if isinstance(data, str) else data)
        proc.stdin.flush()
    except (BrokenPipeError, ValueError) as exc:
        raise NotFoundException(f"process {proc.pid} not found: {exc}") from None


class Commands:
    """As ``sandbox.commands``."""

    def __init__(self, record: _Record):
        self._record = record

    def run(
        self,
        cmd: str,
        background: bool | None = None,
        envs: dict[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
        on_stdout=None,
        on_stderr=None,
        stdin: bool | None = None,
        timeout: float | None = 60,
        request_timeout: float | None = None,
        *,
        retain_output: bool = True,
    ):
        record = _record(self._record.sandbox_id)
        user = user or DEFAULT_USER
        record.daemon_log.append(("run", user, cmd))
        given, cmd = cmd, _rewrite(record, cmd)
        home = record.vm.root / "root" if user == "root" else record.vm.host_path(HOME)
        home.mkdir(mode=0o700, exist_ok=True)
        proc = record.vm.spawn(
            ["/bin/bash", "-c", LOGIN + cmd], stdin=bool(stdin), cwd=cwd, env={"HOME": str(home)}
        )
        handle = CommandHandle(proc, record, retain_output, user)
        record.handles.append(handle)
        if background and user == DEFAULT_USER:
            record.boots.append([user, given, handle, handle.pid])
        if timeout:  # the stream, and with it the process, ends after `timeout` (0: never)
            timer = threading.Timer(timeout * COMMAND_SECONDS, handle._time_out)
            timer.daemon = True
            timer.start()
        if background:
            return handle
        return handle.wait(on_stdout=on_stdout, on_stderr=on_stderr)

    def send_stdin(self, pid: int, data: str | bytes, request_timeout: float | None = None):
        for handle in self._record.handles:
            if handle.pid == pid:
                return handle.send_stdin(data)
        raise NotFoundException(f"process {pid} not found")

    def kill(self, pid: int, request_timeout: float | None = None) -> bool:
        for handle in self._record.handles:
            if handle.pid == pid:
                return handle.kill()
        return False


# --------------------------------------------------------------------------- files


class Filesystem:
    """As ``sandbox.files``."""

    def __init__(self, record: _Record):
        self._record = record

    def write(
        self,
        path: str,
        data: str | bytes | io.IOBase,
        user: str | None = None,
        request_timeout: float | None = None,
        gzip: bool = False,
        use_octet_stream: bool | None = None,
        metadata: dict[str, str] | None = None,
    ) -> WriteInfo:
        record = _record(self._record.sandbox_id)
        user = user or DEFAULT_USER
        if user != "root" and record.owners.get(path) == "root":
            raise SandboxException(f"failed to write to file {path}: permission denied")
        target = record.vm.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        record.owners[path] = user
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, (bytes, bytearray)):
            data = data.read()
        target.write_bytes(bytes(data))
        record.writes.append((path, bytes(data), user))
        return WriteInfo(name=target.name, type="file", path=path)


# --------------------------------------------------------------------------- sandbox


class SandboxPaginator:
    """As e2b.SandboxPaginator: ``has_next`` / ``next_items()``."""

    def __init__(
        self,
        query: SandboxQuery | None = None,
        limit: int | None = None,
        next_token: str | None = None,
        order: str | None = None,
        **opts: Any,
    ):
        self.query = query
        self.limit = limit
        self._opts = opts
        self._has_next = True
        self._next_token = next_token

    @property
    def has_next(self) -> bool:
        return self._has_next

    def next_items(self, **opts: Any) -> list[SandboxInfo]:
        if not self._has_next:
            raise Exception("No more items to fetch")
        _check_key({**self._opts, **opts})
        wanted = (self.query.metadata if self.query else None) or {}
        states = (self.query.state if self.query else None) or list(SandboxState)
        items = []
        for sandbox_id in list(SANDBOXES):
            try:
                record = _record(sandbox_id)
            except SandboxNotFoundException:
                continue
            if record.state in states and all(
                record.metadata.get(k) == v for k, v in wanted.items()
            ):
                items.append(_info(record))
        start = int(self._next_token or 0)
        end = start + (self.limit or LIST_PAGE)
        self._next_token = str(end) if end < len(items) else None
        self._has_next = self._next_token is not None
        return items[start:end]


def _info(record: _Record) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=record.sandbox_id,
        sandbox_domain="e2b.app",
        template_id=record.template,
        name=record.template,
        metadata=dict(record.metadata),
        started_at=datetime.datetime.fromtimestamp(record.started_at, datetime.timezone.utc),
        end_at=datetime.datetime.fromtimestamp(record.end_at, datetime.timezone.utc),
        state=record.state,
        cpu_count=2,
        memory_mb=512,
        envd_version="0.4.0",
        allow_internet_access=record.allow_internet_access,
    )


class Sandbox:
    """As e2b.Sandbox (sync)."""

    default_template = "base"

    def __init__(self, record: _Record):
        self._record = record
        self._files = Filesystem(record)
        self._commands = Commands(record)

    @property
    def sandbox_id(self) -> str:
        return self._record.sandbox_id

    @property
    def files(self) -> Filesystem:
        return self._files

    @property
    def commands(self) -> Commands:
        return self._commands

    def is_running(self, request_timeout: float | None = None) -> bool:
        record = SANDBOXES.get(self.sandbox_id)
        return record is not None and record.state is SandboxState.RUNNING

    @classmethod
    def create(
        cls,
        template: str | None = None,
        timeout: int | None = None,
        metadata: dict[str, str] | None = None,
        envs: dict[str, str] | None = None,
        secure: bool | None = None,
        allow_internet_access: bool | None = None,
        mcp: Any = None,
        network: Any = None,
        iam: Any = None,
        lifecycle: Any = None,
        volume_mounts: Any = None,
        logger: Any = None,
        idempotency_key: str | None = None,
        **opts: Any,
    ) -> Sandbox:
        _check_key(opts)
        on_timeout = _on_timeout(lifecycle)
        sandbox_id = f"fake{next(_ids):04d}{os.getpid() % 1000:03d}"
        snap = SNAPSHOTS.get(template or "")
        record = _Record(
            sandbox_id=sandbox_id,
            vm=FakeVM(prefix="e2b-"),
            template=template or cls.default_template,
            metadata=dict(metadata or {}),
            envs=dict(envs or {}),
            allow_internet_access=allow_internet_access,
            network=network,
            end_at=time.time() + (300 if timeout is None else timeout),
            on_timeout=on_timeout,
        )
        with _lock:
            SANDBOXES[sandbox_id] = record
        if snap is not None:  # a sandbox from a snapshot: the snapshot's memory and files
            _clone(snap, record)
        return cls(record)

    @class_method_variant("_cls_fork_sandbox")
    def fork(self, timeout: int | None = None, count: int | None = None, **opts: Any):
        return type(self)._cls_fork_sandbox(self.sandbox_id, timeout=timeout, count=count,
                                            **opts)

    @classmethod
    def _cls_fork_sandbox(
        cls,
        sandbox_id: str,
        timeout: int | None = None,
        count: int | None = None,
        logger: Any = None,
        **opts: Any,
    ) -> list:
        """``count`` (default 1) sandboxes from one checkpoint of the source; the source's
        metadata and template carry over, its id and timeout stay."""
        _check_key(opts)
        source = _record(sandbox_id)
        if count is not None and not 1 <= count <= 20:
            raise InvalidArgumentException("count must be between 1 and 20")
        snap = _freeze(source)
        try:
            forks = []
            for _ in range(count or 1):
                fork_id = f"fake{next(_ids):04d}{os.getpid() % 1000:03d}"
                record = _Record(
                    sandbox_id=fork_id, vm=FakeVM(prefix="e2b-"), template=source.template,
                    metadata=dict(source.metadata), envs=dict(source.envs),
                    allow_internet_access=source.allow_internet_access, network=source.network,
                    end_at=time.time() + (300 if timeout is None else timeout),
                    on_timeout=source.on_timeout,
                )
                with _lock:
                    SANDBOXES[fork_id] = record
                _clone(snap, record)
                forks.append(cls(record))
            return forks
        finally:
            shutil.rmtree(snap.root, ignore_errors=True)

    @class_method_variant("_cls_create_snapshot")
    def create_snapshot(self, name: str | None = None, *, mode: str | None = None, **opts: Any):
        return type(self)._cls_create_snapshot(self.sandbox_id, name, mode=mode, **opts)

    @classmethod
    def _cls_create_snapshot(
        cls, sandbox_id: str, name: str | None = None, *, mode: str | None = None, **opts: Any
    ) -> SnapshotInfo:
        _check_key(opts)
        snap = _freeze(_record(sandbox_id))
        snapshot_id = f"snap{next(_ids):04d}:default"
        with _lock:
            SNAPSHOTS[snapshot_id] = snap
        return SnapshotInfo(snapshot_id=snapshot_id, names=[name] if name else [])

    @classmethod
    def delete_snapshot(cls, snapshot_id: str, **opts: Any) -> bool:
        _check_key(opts)
        with _lock:
            snap = SNAPSHOTS.pop(snapshot_id, None)
        if snap is None:
            return False
        shutil.rmtree(snap.root, ignore_errors=True)
        return True

    @class_method_variant("_cls_connect_sandbox")
    def connect(self, timeout: int | None = None, *, on_resume: str = "restore", **opts: Any):
        return type(self)._cls_connect_sandbox(
            self.sandbox_id, timeout, on_resume=on_resume, **opts
        )

    @classmethod
    def _cls_connect_sandbox(
        cls,
        sandbox_id: str,
        timeout: int | None = None,
        logger: Any = None,
        *,
        on_resume: str = "restore",
        **opts: Any,
    ) -> Sandbox:
        _check_key(opts)
        record = _record(sandbox_id)
        now = time.time()
        if record.state is SandboxState.PAUSED:
            record.vm.resume()
            record.state = SandboxState.RUNNING
            record.end_at = now + (300 if timeout is None else timeout)
        elif timeout is not None:
            record.end_at = max(record.end_at, now + timeout)  # only ever extended
        return cls(record)

    @class_method_variant("_cls_kill")
    def kill(self, **opts: Any) -> bool:
        return type(self)._cls_kill(self.sandbox_id, **opts)

    @classmethod
    def _cls_kill(cls, sandbox_id: str, **opts: Any) -> bool:
        _check_key(opts)
        record = SANDBOXES.get(sandbox_id)
        if record is None:
            return False
        _kill_record(record)
        return True

    @class_method_variant("_cls_pause")
    def pause(
        self,
        keep_memory: bool | None = None,
        *,
        mode: str | None = None,
        strict: bool = False,
        **opts: Any,
    ) -> bool:
        return type(self)._cls_pause(self.sandbox_id, keep_memory, mode=mode, strict=strict, **opts)

    @classmethod
    def _cls_pause(
        cls,
        sandbox_id: str,
        keep_memory: bool | None = None,
        *,
        mode: str | None = None,
        strict: bool = False,
        **opts: Any,
    ) -> bool:
        _check_key(opts)
        if mode is not None and mode not in ("full", "filesystem"):
            raise InvalidArgumentException(f"mode must be one of: full, filesystem (got {mode!r}).")
        record = _record(sandbox_id)
        if record.state is SandboxState.PAUSED:
            return False
        if mode is None:  # keep_memory is the deprecated spelling; neither: the API decides
            mode = API_PAUSE_MODE if keep_memory is None else "full" if keep_memory else "filesystem"
        _pause_record(record, mode)
        return True

    @class_method_variant("_cls_set_timeout")
    def set_timeout(self, timeout: int, **opts: Any) -> None:
        type(self)._cls_set_timeout(self.sandbox_id, timeout, **opts)

    @classmethod
    def _cls_set_timeout(cls, sandbox_id: str, timeout: int, **opts: Any) -> None:
        _check_key(opts)
        record = _record(sandbox_id)
        record.end_at = time.time() + timeout
        record.timeouts_set.append(timeout)

    @class_method_variant("_cls_get_info")
    def get_info(self, **opts: Any) -> SandboxInfo:
        return type(self)._cls_get_info(self.sandbox_id, **opts)

    @classmethod
    def _cls_get_info(cls, sandbox_id: str, **opts: Any) -> SandboxInfo:
        _check_key(opts)
        return _info(_record(sandbox_id))

    @classmethod
    def list(
        cls,
        query: SandboxQuery | None = None,
        limit: int | None = None,
        next_token: str | None = None,
        order: str | None = None,
        **opts: Any,
    ) -> SandboxPaginator:
        return SandboxPaginator(
            query=query, limit=limit, next_token=next_token, order=order, **opts
        )


__all__ = [
    "AuthenticationException",
    "CommandExitException",
    "CommandHandle",
    "CommandResult",
    "FileNotFoundException",
    "InvalidArgumentException",
    "NotFoundException",
    "SANDBOXES",
    "Sandbox",
    "SandboxException",
    "SandboxInfo",
    "SandboxNotFoundException",
    "SandboxNotRunningException",
    "SandboxPaginator",
    "SandboxQuery",
    "SandboxState",
    "SNAPSHOTS",
    "SnapshotInfo",
    "TimeoutException",
    "reset",
]
