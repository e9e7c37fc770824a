"""A faithful fake of the parts of the ``modal`` SDK (1.x) that the modal provider uses.

Same names, argument names and return shapes as the installed SDK
(``tests/test_sdk_fakes_match.py`` checks the signatures against it): ``App.lookup``,
``Image.debian_slim / from_registry / from_id / apt_install / pip_install / add_local_file``,
``Client.from_credentials``, ``Sandbox.create(*entrypoint, app=, image=, tags=, timeout=,
idle_timeout=, block_network=, cpu=, memory=, gpu=, client=)`` whose ``stdin`` / ``stdout`` /
``stderr`` are the entrypoint's streams, ``Sandbox.from_id``, ``Sandbox.list(tags=)`` (a
generator of sandboxes), ``exec(*args, text=)`` returning a ``ContainerProcess`` (``stdin``:
a ``StreamWriter`` with ``write`` / ``drain`` / ``write_eof`` and the SDK's 2 MiB buffer cap,
``stdout``: a ``StreamReader`` yielding str or bytes), ``poll``, ``terminate``, ``get_tags``,
``exception.NotFoundError / AuthError`` and ``config.config.get``; snapshots:
``Sandbox.create(_experimental_enable_snapshot=)``, ``_experimental_snapshot`` (a
``SandboxSnapshot``, ``sn-`` id, refused for a sandbox created without the flag),
``SandboxSnapshot.from_id``, ``Sandbox._experimental_from_snapshot`` (a new sandbox),
``snapshot_filesystem(ttl=)`` (an ``Image`` with an ``im-`` id that ``Image.from_id`` starts
from) and ``experimental.image_delete``.

A memory snapshot here is a copy of the sandbox's files plus its entrypoint, which a
restore starts again in the copy with the bytes its stdin was sent, keeping the source's
abstract socket names and entrypoint pid as a memory copy keeps them (see ``_rewrite``); exec'd
processes are not carried. The fake cannot copy process memory: it checks the wiring of
snapshots and forks, not memory semantics.

A sandbox is a :class:`~fakes._vm.FakeVM`: the entrypoint and every exec really run, so the
real agent serves real protocol traffic; files added with ``add_local_file`` are copied in
at create (Modal mounts them at start). When the entrypoint exits, the sandbox is finished
(as on Modal). Every call checks for a token (``MODAL_TOKEN_ID`` + ``MODAL_TOKEN_SECRET``, a
client from ``Client.from_credentials``) like the real control plane.

Failures are injected with :data:`UNREACHABLE` (no network), :data:`UNSCHEDULED` (no
machine free: writing to a new sandbox's stdin waits) and :data:`REFUSED_TOKENS` (a bad
token), raising what the installed SDK raises (checked live by ``test_cloud_credentials.py``):
opening a client (``Client.from_credentials``, or the environment's client on its first call)
connects, and with no network the SDK retries for about a minute (:data:`CONNECT_GIVE_UP`)
before ``exception.ConnectionError``; a refused token is an ``exception.AuthError`` on every
call to the server (``hello`` first).
"""

from __future__ import annotations

import codecs
import enum
import itertools
import os
import re
import shutil
import tempfile
import threading
import types
from dataclasses import dataclass, field
from typing import Any

from ._vm import FakeVM

# --------------------------------------------------------------------------- exceptions


class Error(Exception):
    pass


class AuthError(Error):
    pass


class NotFoundError(Error):
    pass


class InvalidError(Error):
    pass


class SandboxTerminatedError(Error):
    pass


class ConnectionError(Error):  # noqa: A001 - the SDK's name
    pass


exception = types.SimpleNamespace(
    Error=Error,
    AuthError=AuthError,
    NotFoundError=NotFoundError,
    InvalidError=InvalidError,
    SandboxTerminatedError=SandboxTerminatedError,
    ConnectionError=ConnectionError,
)


class _Config:
    """As modal.config.config: settings from the environment only (no ~/.modal.toml)."""

    _defaults = {"server_url": "https://api.modal.com,https://api.modal2.com"}

    def get(self, key: str, *, profile: str | None = None, use_env: bool = True) -> Any:
        value = os.environ.get(f"MODAL_{key.upper()}") if use_env else None
        return value or self._defaults.get(key)


config = types.SimpleNamespace(config=_Config())


class StreamType(enum.Enum):
    PIPE = 1
    STDOUT = 2
    DEVNULL = 3


# --------------------------------------------------------------------------- client, app, image


#: True: no network (opening a client fails after CONNECT_GIVE_UP seconds).
UNREACHABLE = False
#: True: no machine is free; a new sandbox's stdin waits (without a deadline, as on
#: Modal's default backend) until reset().
UNSCHEDULED = False
#: Token ids the server refuses.
REFUSED_TOKENS: set[str] = set()
#: Seconds the SDK keeps retrying to connect (``create_channel_with_fallbacks``: 63 s).
CONNECT_GIVE_UP = 63.0
#: Set by reset(): wakes clients waiting to connect.
_released = threading.Event()


def _connect() -> None:
    if UNREACHABLE:
        _released.wait(CONNECT_GIVE_UP)
        raise ConnectionError("Could not connect to the Modal server.")


class Client:
    def __init__(self, token_id: str, token_secret: str):
        self.credentials = (token_id, token_secret)
        self.closed = False

    @classmethod
    def from_credentials(cls, token_id: str, token_secret: str) -> Client:
        _connect()  # the SDK opens the client's connection here
        return cls(token_id, token_secret)

    def hello(self) -> None:
        _check_token(self)

    def close(self) -> None:
        self.closed = True


def _check_token(client: Client | None) -> None:
    if client is None:  # the SDK's client from the environment, opened on first use
        if not (os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET")):
            raise AuthError("Token missing. Could not authenticate client.")
        _connect()
        token_id = os.environ["MODAL_TOKEN_ID"]
    else:
        token_id = client.credentials[0]
    if token_id in REFUSED_TOKENS:
        raise AuthError("Invalid token.")


APPS: dict[str, App] = {}


class App:
    def __init__(self, name: str):
        self.name = name
        self.app_id = f"ap-fake{len(APPS) + 1}"

    @staticmethod
    def lookup(
        name: str,
        *,
        client: Client | None = None,
        environment_name: str | None = None,
        create_if_missing: bool = False,
    ) -> App:
        _check_token(client)
        if name not in APPS:
            if not create_if_missing:
                raise NotFoundError(f"App '{name}' not found")
            APPS[name] = App(name)
        return APPS[name]


class Image:
    """Records how it was built; ``files`` maps sandbox paths to local files; ``object_id``
    for an image by id (a filesystem snapshot's: its files are in :data:`IMAGES`)."""

    def __init__(self, steps: list[tuple], files: dict[str, str], object_id: str | None = None):
        self.steps = steps
        self.files = files
        self.object_id = object_id

    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        return Image([("debian_slim", python_version)], {})

    @staticmethod
    def from_registry(
        tag: str,
        secret: Any = None,
        *,
        setup_dockerfile_commands: list = [],  # noqa: B006
        force_build: bool = False,
        add_python: str | None = None,
        **kwargs: Any,
    ) -> Image:
        return Image([("from_registry", tag)], {})

    @classmethod
    def from_id(cls, image_id: str, client: Client | None = None) -> Image:
        return cls([("from_id", image_id)], {}, image_id)

    def apt_install(
        self,
        *packages: str,
        force_build: bool = False,
        env: Any = None,
        secrets: Any = None,
        gpu: str | None = None,
    ) -> Image:
        return Image(self.steps + [("apt_install", packages)], dict(self.files))

    def pip_install(
        self,
        *packages: str,
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        env: Any = None,
        secrets: Any = None,
        gpu: str | None = None,
    ) -> Image:
        return Image(self.steps + [("pip_install", packages)], dict(self.files))

    def add_local_file(self, local_path: Any, remote_path: str, *, copy: bool = False) -> Image:
        if not str(remote_path).startswith("/"):
            raise InvalidError(
                "image.add_local_file() currently only supports absolute remote_path values"
            )
        return Image(
            self.steps + [("add_local_file", remote_path, copy)],
            {**self.files, remote_path: str(local_path)},
        )


#: Image id -> the directory holding a filesystem snapshot's files (kept after its sandbox).
IMAGES: dict[str, str] = {}


def image_delete(image_id: str, *, client: Client | None = None) -> None:
    """As modal.experimental.image_delete."""
    _check_token(client)
    with _lock:
        root = IMAGES.pop(image_id, None)
    if root is None:
        raise NotFoundError(f"Image {image_id} not found")
    shutil.rmtree(root, ignore_errors=True)


experimental = types.SimpleNamespace(image_delete=image_delete)


# --------------------------------------------------------------------------- streams


MAX_BUFFER_SIZE = 2 * 1024 * 1024


class StreamWriter:
    """As modal.io_streams.StreamWriter over a process's stdin pipe. ``scheduled``: set once
    the sandbox runs on a machine (before that, ``drain`` waits, without a deadline)."""

    def __init__(self, pipe, scheduled: threading.Event | None = None,
                 sent: bytearray | None = None):
        self._pipe = pipe
        self._buffer = bytearray()
        self._eof = False
        self._scheduled = scheduled
        self._sent = sent  # an entrypoint's: what a restore from a snapshot replays

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        if self._eof:
            raise ValueError("Stdin is closed. Cannot write to it.")
        payload = data.encode() if isinstance(data, str) else bytes(data)
        if len(self._buffer) + len(payload) > MAX_BUFFER_SIZE:
            raise BufferError("Buffer size exceed limit. Call drain to flush the buffer.")
        self._buffer.extend(payload)

    def write_eof(self) -> None:
        self._eof = True

    def drain(self) -> None:
        if self._scheduled is not None:
            self._scheduled.wait()
        data, self._buffer = bytes(self._buffer), bytearray()
        try:
            if data:
                self._pipe.write(data)
                self._pipe.flush()
                if self._sent is not None:
                    self._sent.extend(data)
            if self._eof:
                self._pipe.close()
        except (BrokenPipeError, ValueError) as exc:
            raise SandboxTerminatedError(f"the process has exited: {exc}") from None


class StreamReader:
    """As modal.io_streams.StreamReader: iterate for chunks (str when ``text``)."""

    def __init__(self, pipe, text: bool):
        self._pipe = pipe
        self._text = text
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __iter__(self):
        fd = self._pipe.fileno()
        while True:
            try:
                data = os.read(fd, 8192)
            except OSError:
                data = b""
            if not data:
                if self._text:
                    tail = self._decoder.decode(b"", final=True)
                    if tail:
                        yield tail
                return
            if self._text:
                text = self._decoder.decode(data)
                if text:
                    yield text
            else:
                yield data

    def read(self):
        chunks = list(self)
        return "".join(chunks) if self._text else b"".join(chunks)


class ContainerProcess:
    """As modal.container_process.ContainerProcess."""

    def __init__(self, proc, text: bool, scheduled: threading.Event | None = None,
                 sent: bytearray | None = None):
        self._proc = proc
        self._stdin = StreamWriter(proc.stdin, scheduled, sent)
        self._stdout = StreamReader(proc.stdout, text)
        self._stderr = StreamReader(proc.stderr, text)

    @property
    def stdin(self) -> StreamWriter:
        return self._stdin

    @property
    def stdout(self) -> StreamReader:
        return self._stdout

    @property
    def stderr(self) -> StreamReader:
        return self._stderr

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self) -> int:
        return self._proc.wait()


# --------------------------------------------------------------------------- sandbox


class SandboxSnapshot:
    """As modal.SandboxSnapshot: a memory snapshot by id."""

    def __init__(self, object_id: str):
        self.object_id = object_id

    @classmethod
    def from_id(cls, sandbox_snapshot_id: str, client: Client | None = None) -> SandboxSnapshot:
        return cls(sandbox_snapshot_id)


@dataclass
class _Record:
    """What the fake control plane knows about one sandbox (tests inspect it)."""

    object_id: str
    vm: FakeVM
    app: App
    image: Image
    entrypoint: tuple[str, ...]
    tags: dict[str, str]
    options: dict[str, Any]
    entry: ContainerProcess | None = None
    execs: list[ContainerProcess] = field(default_factory=list)
    terminated: bool = False
    #: What the entrypoint's stdin was sent (a restore replays it), and every exec's.
    sent: bytearray = field(default_factory=bytearray)
    exec_sent: bytearray = field(default_factory=bytearray)
    #: A restored sandbox's: the source's entrypoint pid -> the pid of its restart here.
    pid_alias: dict[int, int] = field(default_factory=dict)
    restored: bool = False


@dataclass
class _Snapshot:
    """A memory snapshot: a copy of the files and what restarts the entrypoint."""

    root: str
    source: _Record
    pid: int
    sent: bytes


SANDBOXES: dict[str, _Record] = {}
#: Memory snapshot id -> what ``_experimental_snapshot`` kept (it outlives the sandbox).
SNAPSHOTS: dict[str, _Snapshot] = {}
_ids = itertools.count(1)
_lock = threading.Lock()


def reset() -> None:
    """Terminate every fake sandbox and end any injected failure (test teardown)."""
    global UNREACHABLE, UNSCHEDULED, _released
    UNREACHABLE = UNSCHEDULED = False
    REFUSED_TOKENS.clear()
    _released.set()
    _released = threading.Event()
    with _lock:
        records = list(SANDBOXES.values())
        SANDBOXES.clear()
        roots = [snap.root for snap in SNAPSHOTS.values()] + list(IMAGES.values())
        SNAPSHOTS.clear()
        IMAGES.clear()
    for record in records:
        record.vm.kill()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _copy_files(vm: FakeVM) -> str:
    root = tempfile.mkdtemp(prefix="modal-snap-", dir="/tmp")
    shutil.copytree(vm.root, root, dirs_exist_ok=True, symlinks=True)
    return root


def _rewrite(record: _Record, args: tuple[str, ...]) -> list[str]:
    """A restored sandbox's command line: the source's abstract sockets are this one's own
    (a sandbox has its own network namespace; the fake's share the host's), the source's
    entrypoint pid its restart's."""
    if not record.restored:
        return list(args)
    out = [arg.replace("@nexus-", f"@nexus-{record.object_id}-") for arg in args]
    for i, arg in enumerate(out[:-1]):
        if arg == "--peer-pid" and out[i + 1].isdigit():
            out[i + 1] = str(record.pid_alias.get(int(out[i + 1]), out[i + 1]))
    return out


def _restart_entry(record: _Record, snap: _Snapshot) -> None:
    """Start the snapshot's entrypoint in ``record``, send it what the source's stdin got,
    and wait (bounded by its exit) for its READY line."""
    proc = record.vm.spawn(_rewrite(record, record.entrypoint), stdin=True)
    record.entry = ContainerProcess(proc, text=True, sent=record.sent)
    record.pid_alias[snap.pid] = proc.pid
    record.entry.stdin.write(snap.sent)
    record.entry.stdin.drain()
    seen = ""
    for chunk in record.entry.stdout:
        seen += chunk
        if re.search(r"^READY", seen, re.M):
            break


def _scheduled(record: _Record) -> threading.Event:
    """Set when the sandbox gets a machine: at once, or (UNSCHEDULED) not before reset()."""
    if not UNSCHEDULED:
        scheduled = threading.Event()
        scheduled.set()
        return scheduled
    return _released


def _record(sandbox_id: str) -> _Record:
    record = SANDBOXES.get(sandbox_id)
    if record is None:
        raise NotFoundError(f"Sandbox {sandbox_id} not found")
    return record


class Sandbox:
    """As modal.Sandbox (sync interface)."""

    def __init__(self, record: _Record):
        self._record = record

    @property
    def object_id(self) -> str:
        return self._record.object_id

    @property
    def stdin(self) -> StreamWriter:
        return self._record.entry.stdin

    @property
    def stdout(self) -> StreamReader:
        return self._record.entry.stdout

    @property
    def stderr(self) -> StreamReader:
        return self._record.entry.stderr

    @property
    def returncode(self) -> int | None:
        if self._record.terminated:
            return self._record.entry.returncode if self._record.entry else 0
        return self._record.entry.poll()

    @staticmethod
    def create(
        *args: str,
        app: App | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        image: Image | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Any = None,
        timeout: int | None = 300,
        idle_timeout: int | None = None,
        workdir: str | None = None,
        gpu: str | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        block_network: bool = False,
        outbound_cidr_allowlist: Any = None,
        outbound_domain_allowlist: Any = None,
        _experimental_enable_snapshot: bool = False,
        client: Client | None = None,
    ) -> Sandbox:
        _check_token(client)
        if app is None:
            raise InvalidError("App has not been initialized yet. Use the lookup method.")
        for value, what in ((cpu, "CPU"), (memory, "memory")):
            if isinstance(value, tuple) and value[1] < value[0]:
                raise InvalidError(f"Cannot specify a {what} limit lower than request")
        image = image or Image.debian_slim()
        record = _Record(
            object_id=f"sb-fake{next(_ids):04d}",
            vm=FakeVM(prefix="modal-"),
            app=app,
            image=image,
            entrypoint=tuple(args),
            tags=dict(tags or {}),
            options={
                "timeout": timeout, "idle_timeout": idle_timeout, "gpu": gpu, "cpu": cpu,
                "memory": memory, "block_network": block_network, "workdir": workdir,
                "env": env, "name": name, "outbound_cidr_allowlist": outbound_cidr_allowlist,
                "outbound_domain_allowlist": outbound_domain_allowlist,
                "enable_snapshot": _experimental_enable_snapshot,
            },
        )  # fmt: skip
        base = image.steps[0]
        if base[0] == "from_id" and base[1] in IMAGES:  # built on a filesystem snapshot
            shutil.copytree(IMAGES[base[1]], record.vm.root, dirs_exist_ok=True, symlinks=True)
        for remote, local in image.files.items():  # Modal mounts these at container start
            target = record.vm.host_path(remote)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, target)
        if args:
            record.entry = ContainerProcess(
                record.vm.spawn(list(args), stdin=True), text=True, scheduled=_scheduled(record),
                sent=record.sent,
            )
        with _lock:
            SANDBOXES[record.object_id] = record
        return Sandbox(record)

    @staticmethod
    def from_id(sandbox_id: str, client: Client | None = None) -> Sandbox:
        _check_token(client)
        return Sandbox(_record(sandbox_id))

    @staticmethod
    def list(
        *,
        app_id: str | None = None,
        tags: dict[str, str] | None = None,
        client: Client | None = None,
    ):
        _check_token(client)
        for record in list(SANDBOXES.values()):
            sandbox = Sandbox(record)
            if sandbox.returncode is not None:
                continue  # the SDK lists running sandboxes only
            if app_id and record.app.app_id != app_id:
                continue
            if all(record.tags.get(k) == v for k, v in (tags or {}).items()):
                yield sandbox

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, raise_on_termination: bool = True) -> None:
        if self._record.entry is not None:
            self._record.entry.wait()

    def terminate(self, *, wait: bool = False) -> int | None:
        record = self._record
        if not record.terminated:
            record.terminated = True
            record.vm.kill()
        return self.returncode if wait else None

    def get_tags(self) -> dict[str, str]:
        return dict(self._record.tags)

    def set_tags(self, tags: dict[str, str], *, client: Client | None = None) -> None:
        self._record.tags = dict(tags)

    def _experimental_snapshot(self) -> SandboxSnapshot:
        record = self._record
        if self.returncode is not None:
            raise SandboxTerminatedError("Sandbox has already finished")
        if not record.options["enable_snapshot"]:
            raise InvalidError("Sandbox was not created with _experimental_enable_snapshot=True")
        snapshot_id = f"sn-fake{next(_ids):04d}"
        snap = _Snapshot(_copy_files(record.vm), record, record.entry._proc.pid, bytes(record.sent))
        with _lock:
            SNAPSHOTS[snapshot_id] = snap
        return SandboxSnapshot(snapshot_id)

    @staticmethod
    def _experimental_from_snapshot(snapshot: SandboxSnapshot, client: Client | None = None):
        _check_token(client)
        snap = SNAPSHOTS.get(snapshot.object_id)
        if snap is None:
            raise NotFoundError(f"Sandbox snapshot {snapshot.object_id} not found")
        source = snap.source
        record = _Record(
            object_id=f"sb-fake{next(_ids):04d}", vm=FakeVM(prefix="modal-"), app=source.app,
            image=source.image, entrypoint=source.entrypoint, tags=dict(source.tags),
            options=dict(source.options), restored=True,
        )
        shutil.copytree(snap.root, record.vm.root, dirs_exist_ok=True, symlinks=True)
        with _lock:
            SANDBOXES[record.object_id] = record
        _restart_entry(record, snap)
        return Sandbox(record)

    def snapshot_filesystem(self, timeout: int = 55, *, ttl: int | None = 2592000) -> Image:
        if self.returncode is not None:
            raise SandboxTerminatedError("Sandbox has already finished")
        image_id = f"im-fake{next(_ids):04d}"
        with _lock:
            IMAGES[image_id] = _copy_files(self._record.vm)
        return Image([("from_id", image_id)], {}, image_id)

    def exec(
        self,
        *args: str,
        stdout: StreamType = StreamType.PIPE,
        stderr: StreamType = StreamType.PIPE,
        timeout: int | None = None,
        workdir: str | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Any = None,
        text: bool = True,
        bufsize: int = -1,
        pty: bool = False,
        _pty_info: Any = None,
        pty_info: Any = None,
    ) -> ContainerProcess:
        if self.returncode is not None:
            raise SandboxTerminatedError("Sandbox has already finished")
        argv = _rewrite(self._record, args)
        process = ContainerProcess(self._record.vm.spawn(argv, stdin=True, cwd=workdir), text,
                                   sent=self._record.exec_sent)
        self._record.execs.append(process)
        return process


__all__ = [
    "APPS",
    "App",
    "Client",
    "ContainerProcess",
    "IMAGES",
    "Image",
    "SANDBOXES",
    "SNAPSHOTS",
    "Sandbox",
    "SandboxSnapshot",
    "StreamReader",
    "StreamType",
    "StreamWriter",
    "config",
    "exception",
    "experimental",
    "reset",
]
