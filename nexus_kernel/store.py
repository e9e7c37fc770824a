"""State store: diskcache used as a small database shared by every process.

Records are plain versioned dicts under ``sandbox:<id>``. Read-modify-write happens inside
short ``transact()`` blocks that do no I/O besides the cache itself. A process that only
reads (``nexus sandbox list``, ``status``) reads diskcache's table with sqlite3 and pickle:
diskcache is imported and opened (its open writes its settings) by the first write only.
Per-sandbox locks serialise lifecycle transitions that call a provider; each names its
holder process, so a waiter frees at once a lock whose holder died on this host (a
SIGKILLed CLI), and an expiry frees one held elsewhere. Nothing here ever expires a record
on its own: an evicted record would lose the handle needed to destroy a (possibly paid)
sandbox.
"""

from __future__ import annotations

import errno
import functools
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import private_dir
from .errors import DiskFullError, SandboxError, StoreDamagedError, StoreError

_PREFIX = "sandbox:"
_STORE_ID_KEY = "meta:store_id"
#: diskcache's database file, and the file beside it naming the store once it has records
#: (so a deleted or emptied database is told apart from a new one).
DB_NAME = "cache.db"
MARKER_NAME = "store.id"
#: Below this many free bytes a sqlite "disk I/O error" is taken for a full disk.
_LOW_SPACE = 1 << 20


def space_left(path: Path) -> int:
    """Bytes an unprivileged writer can still write on the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return _LOW_SPACE
    return st.f_bavail * st.f_frsize


def _classify(directory: Path, exc: BaseException) -> StoreError | None:
    """The store error that ``exc`` (from sqlite or the filesystem) means, or None."""
    if isinstance(exc, StoreError):
        return exc
    text = str(exc).lower()
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        "database or disk is full" in text
        or ("disk i/o error" in text and space_left(directory) < _LOW_SPACE)
    ):
        return DiskFullError(directory)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "not a database" in text or "malformed" in text or "encrypted" in text
    ):
        return StoreDamagedError(directory / DB_NAME, text)
    return None


def check_database(directory: Path) -> str | None:
    """What is wrong with the store's database file (deleted, empty, garbage, truncated),
    judged from the marker, the file's size and SQLite's own header fields; None when it
    looks whole.

    The file is read only through SQLite, never with plain ``open()``: closing such a
    descriptor drops every POSIX lock this process holds on the file (SQLite's WAL locks
    among them), after which another process may delete the WAL and this process's later
    writes are lost. SQLite defers such closes itself. ``immutable=1`` takes no lock and
    ignores the WAL, so the page count is the main file's header's own.
    """
    db = directory / DB_NAME
    if not (directory / MARKER_NAME).exists():
        return None  # a store that never held a sandbox: nothing to lose
    try:
        size = db.stat().st_size
    except FileNotFoundError:
        return "it was deleted"
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    if size == 0:
        return "it is empty"
    try:
        con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
        try:
            page_size = con.execute("PRAGMA page_size").fetchone()[0]
            pages = con.execute("PRAGMA page_count").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return "it is not a SQLite database"
    if size < page_size * pages:
        return f"it is truncated: {size} of {page_size * pages} bytes"
    return None


#: diskcache's value modes (``diskcache.core.MODE_*``): how a value is kept in its table.
_MODE_RAW, _MODE_BINARY, _MODE_TEXT, _MODE_PICKLE = 1, 2, 3, 4


class _Reader:
    """Reads diskcache's table with sqlite3 and pickle only, as ``diskcache.Cache.get`` and
    ``iterkeys`` do (same formats, expired keys unseen), without diskcache's import and open.
    Each query is its own read transaction of the WAL: a consistent, committed state."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._lock = threading.Lock()  # one connection, shared by this process's threads
        self._con: sqlite3.Connection | None = None

    def _connect(self, db: Path) -> sqlite3.Connection:
        """A connection that never creates the file (mode=rw: a database deleted meanwhile
        stays missing); on a full disk, where reading a WAL database may need space, a
        read-only one: a live writer's WAL is honoured while its -shm exists, else the
        database file is read as it is."""
        options: dict[str, Any] = {"uri": True, "isolation_level": None,
                                   "check_same_thread": False, "timeout": 60}
        modes = ["mode=rw", "mode=ro", "immutable=1"]
        while True:
            con = sqlite3.connect(f"{db.as_uri()}?{modes.pop(0)}", **options)
            try:
                con.execute("SELECT 1 FROM Cache LIMIT 1").fetchall()
                return con
            except sqlite3.Error:
                con.close()
                if not modes or space_left(self.directory) >= _LOW_SPACE:
                    raise

    def _rows(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                if self._con is None:
                    db = self.directory / DB_NAME
                    if not db.exists():
                        return []  # a store that never held anything
                    self._con = self._connect(db)
                return self._con.execute(query, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):  # diskcache is creating it in another process
                    return []
                raise

    def get(self, key: str, default: Any = None, retry: bool = False) -> Any:
        rows = self._rows("SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = 1"
                          " AND (expire_time IS NULL OR expire_time > ?)", (key, time.time()))
        if not rows:
            return default
        mode, filename, value = rows[0]
        try:
            if mode == _MODE_RAW:
                return value
            if mode == _MODE_PICKLE and value is not None:
                return pickle.loads(value)
            path = self.directory / filename
            if mode == _MODE_TEXT:
                return path.read_text(encoding="utf-8")
            data = path.read_bytes()
            return pickle.loads(data) if mode == _MODE_PICKLE else data
        except OSError:  # replaced or deleted since the query: as diskcache, not there
            return default

    def iterkeys(self) -> Iterator[Any]:
        for key, raw in self._rows("SELECT key, raw FROM Cache ORDER BY rowid"):
            yield key if raw else pickle.loads(key)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()


class _ReadOnlyCache(_Reader):
    """Enough of ``diskcache.Cache`` to read the records when the database cannot be opened
    for writing (a full disk): every write raises :class:`DiskFullError`."""

    def _full(self, *args: Any, **kwargs: Any) -> Any:
        raise DiskFullError(self.directory)

    add = set = delete = _full

    @contextmanager
    def transact(self, retry: bool = False) -> Iterator[None]:
        yield


@functools.cache
def _shared_cache_class() -> Any:
    """``diskcache.Cache`` on one connection shared by the process's threads (diskcache opens
    one per thread: a thread's first store access cost 0.5 ms of CPU and three descriptors,
    a run from a new thread paid it). The :class:`Store` serialises every use of it."""
    import diskcache  # its import and open cost a command that only reads

    class SharedCache(diskcache.Cache):  # type: ignore[misc]
        @property
        def _con(self) -> sqlite3.Connection:
            pid, con = self.__dict__.get("_shared", (None, None))
            if pid != os.getpid():  # first use, or a forked child: its own connection
                con = sqlite3.connect(os.path.join(self.directory, DB_NAME),
                                      timeout=self.timeout, isolation_level=None,
                                      check_same_thread=False)
                self.__dict__["_shared"] = (os.getpid(), con)
                try:  # per-connection pragmas, as diskcache sets them
                    settings = con.execute("SELECT key, value FROM Settings").fetchall()
                except sqlite3.OperationalError:
                    settings = []
                for key, value in settings:
                    if key.startswith("sqlite_"):
                        self.reset(key, value, update=False)
            return con

        def close(self) -> None:
            pid, con = self.__dict__.pop("_shared", (None, None))
            if con is not None and pid == os.getpid():
                con.close()

    return SharedCache


class Store:
    """Sandbox records in one diskcache directory, opened for writing on the first write."""

    def __init__(self, directory: Path | str, *, check: bool = True):
        """Open the store in ``directory``. A deleted, emptied, garbage or truncated database
        raises :class:`StoreDamagedError` naming the file (``check=False``: open anyway, for
        ``nexus doctor``); a full disk opens it read-only (:attr:`read_only`), writes then
        raise :class:`DiskFullError`."""
        self.directory = Path(directory)
        self.read_only: DiskFullError | None = None
        try:
            private_dir(self.directory)
        except OSError as exc:
            raise (_classify(self.directory, exc) or exc) from exc
        problem = check_database(self.directory) if check else None
        if problem:
            raise StoreDamagedError(self.directory / DB_NAME, problem)
        self._db: Any = None  # diskcache.Cache (or _ReadOnlyCache), from the first write on
        self._reader = _Reader(self.directory)
        self._open_lock = threading.Lock()
        # This process's writers queue here rather than in sqlite's busy handler, which
        # polls with sleeps of up to 100 ms: with many threads writing (a run's TTL
        # extension in each of 100 sandboxes) those sleeps made the tail of every run. It
        # also guards the diskcache's one connection, which every thread shares.
        self._writers = threading.RLock()
        self._in_transaction = threading.local()
        self._store_id: str | None = None

    @property
    def _cache(self) -> Any:
        """The diskcache, opened on first use (a full disk: read-only, see ``read_only``)."""
        if self._db is None:
            with self._open_lock:
                if self._db is None:
                    try:
                        self._db = self._open()
                    except (sqlite3.Error, OSError) as exc:
                        mapped = _classify(self.directory, exc)
                        if not isinstance(mapped, DiskFullError) or not (
                                self.directory / DB_NAME).exists():
                            raise (mapped or exc) from exc
                        self.read_only = mapped
                        self._db = _ReadOnlyCache(self.directory)
        return self._db

    def _reads(self) -> Any:
        """What reads go through: inside this thread's transaction the diskcache, else the
        reader (its own connection: a read never waits for this process's writers)."""
        return self._cache if getattr(self._in_transaction, "depth", 0) else self._reader

    def _open(self) -> Any:
        return _shared_cache_class()(
            str(self.directory),
            eviction_policy="none",
            size_limit=2**40,
            cull_limit=0,
            statistics=0,
            timeout=60,
        )

    def _reopen_when_space_is_back(self) -> None:
        """A store opened read-only on a full disk (a long-lived kernel, API object) becomes
        writable again by itself once space is freed: no restart, no repair."""
        if self.read_only is None or space_left(self.directory) < _LOW_SPACE:
            return
        try:
            cache = self._open()
        except (sqlite3.Error, OSError):
            return
        # the read-only reader is left to the collector: another thread may be reading
        self._db, self.read_only = cache, None

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """sqlite's and the filesystem's errors as one-line store errors."""
        self._reopen_when_space_is_back()
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            mapped = _classify(self.directory, exc)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc

    @contextmanager
    def _transact(self, retry: bool = False) -> Iterator[None]:
        """A diskcache transaction, queued behind this process's other writers."""
        with self._writers, self._cache.transact(retry=retry):
            depth = getattr(self._in_transaction, "depth", 0)
            self._in_transaction.depth = depth + 1
            try:
                yield
            finally:
                self._in_transaction.depth = depth

    @property
    def store_id(self) -> str:
        """A random id naming this store; providers label resources with it. It is also
        written beside the database (:data:`MARKER_NAME`), so a lost database is noticed and
        ``nexus doctor`` finds the resources labelled with it."""
        if self._store_id is None:
            import secrets

            with self._guard(), self._writers:
                stored = self._reads().get(_STORE_ID_KEY)
                if stored is None:
                    self._cache.add(_STORE_ID_KEY, read_marker(self.directory)
                                    or "st_" + secrets.token_hex(6))
                    stored = self._cache.get(_STORE_ID_KEY)
                marker = self.directory / MARKER_NAME
                if self.read_only is None and read_marker(self.directory) != stored:
                    # a temp file per writer: several can write the (same) marker at once
                    tmp = marker.with_name(f".{MARKER_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
                    tmp.write_text(stored + "\n")
                    os.replace(tmp, marker)
            self._store_id = stored
        return self._store_id

    def get(self, sandbox_id: str) -> dict[str, Any] | None:
        with self._guard():
            return self._reads().get(_PREFIX + sandbox_id)

    def insert(self, record: dict[str, Any]) -> None:
        """Store a new record; refuses to overwrite an existing id."""
        with self._guard(), self._writers:
            added = self._cache.add(_PREFIX + record["sandbox_id"], record)
        if not added:
            raise SandboxError(f"sandbox id {record['sandbox_id']!r} already exists")

    def update(
        self, sandbox_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Apply ``change`` to the stored record atomically. ``change`` gets a copy and
        returns the new record, or None to leave it as is. Returns the stored record."""
        key = _PREFIX + sandbox_id
        with self._guard(), self._transact():
            current = self._cache.get(key)
            if current is None:
                return None
            new = change(dict(current))
            if new is None:
                return current
            self._cache.set(key, new)
            return new

    def delete(self, sandbox_id: str) -> bool:
        with self._guard(), self._writers:
            return self._cache.delete(_PREFIX + sandbox_id)

    def records(self) -> Iterator[dict[str, Any]]:
        """Every stored record (any owner), in no particular order."""
        with self._guard():
            keys = list(self._reads().iterkeys())
        for key in keys:
            if isinstance(key, str) and key.startswith(_PREFIX):
                record = self.get(key[len(_PREFIX):])
                if record is not None:
                    yield record

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._guard():
            return self._reads().get("meta:" + key, default)

    def set_meta(self, key: str, value: Any) -> None:
        with self._guard(), self._writers:
            self._cache.set("meta:" + key, value)

    def meta_keys(self, prefix: str) -> list[str]:
        """Names (without ``meta:``) of the meta values whose name starts with ``prefix``."""
        full = "meta:" + prefix
        with self._guard():
            keys = list(self._reads().iterkeys())
        return [k[5:] for k in keys if isinstance(k, str) and k.startswith(full)]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic read-modify-write across keys (re-entrant; keep it short, no I/O)."""
        with self._guard(), self._transact():
            yield

    def claim(self, key: str, interval: float) -> bool:
        """True for at most one caller per ``interval`` seconds (throttles lazy reaping)."""
        now = time.time()
        self._reopen_when_space_is_back()
        if self.read_only is not None:
            return False  # nothing can be recorded: let nobody start the throttled work
        try:
            with self._guard():  # most calls end here, reading only
                if now - self._reads().get("meta:" + key, 0.0) < interval:
                    return False
            with self._guard(), self._transact():
                last = self._cache.get("meta:" + key, 0.0)
                if now - last < interval:
                    return False
                self._cache.set("meta:" + key, now)
                return True
        except DiskFullError:
            return False

    def claim_change(self, key: str, value: Any) -> bool:
        """Set meta ``key`` to ``value``; True for the one caller that found it different
        (the first process to see a new host boot does the reconcile)."""
        self._reopen_when_space_is_back()
        if self.read_only is not None:
            return False
        try:
            with self._guard():  # most calls end here, reading only
                if self._reads().get("meta:" + key) == value:
                    return False
            with self._guard(), self._transact():
                if self._cache.get("meta:" + key) == value:
                    return False
                self._cache.set("meta:" + key, value)
                return True
        except DiskFullError:
            return False

    @contextmanager
    def lock(self, sandbox_id: str, expire: float = 120.0) -> Iterator[None]:
        """Per-sandbox lock across processes and threads. A lock whose holder process is
        dead (same host) is taken over at once; any other expires after ``expire`` s."""
        import secrets

        key = "lock:" + sandbox_id
        me = {**process_identity(), "nonce": secrets.token_hex(4)}
        delay = 0.001
        while True:
            try:
                if self._locked_add(key, me, expire):
                    break
            except DiskFullError:
                # Nothing can be written, so nothing can be locked: what still runs on a full
                # disk (stop, reads) is idempotent, and the records it cannot update are
                # reconciled once space is freed.
                yield
                return
            with self._writers:
                holder = self._cache.get(key, retry=True)
            if isinstance(holder, dict) and not process_alive(holder):
                with self._transact(retry=True):
                    if self._cache.get(key) == holder:
                        self._cache.delete(key)
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            with self._transact(retry=True):  # ours only: never a successor's
                if self._cache.get(key) == me:
                    self._cache.delete(key)

    def _locked_add(self, key: str, me: dict[str, Any], expire: float) -> bool:
        self._reopen_when_space_is_back()
        if self.read_only is not None:
            raise self.read_only
        with self._guard(), self._writers:
            return self._cache.add(key, me, expire=expire, retry=True)

    def close(self) -> None:
        self._reader.close()
        if self._db is not None:
            with self._writers:  # the threads' shared connection: never under a transaction
                self._db.close()


def move_aside(directory: Path) -> Path | None:
    """Rename a damaged database (and its -wal/-shm) to ``cache.db.damaged-<time>`` so a new
    one can be made, keeping the old bytes for inspection; the new name, or None."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = Path(directory) / f"{DB_NAME}.damaged-{stamp}"
    moved = None
    for suffix in ("", "-wal", "-shm"):
        source = Path(directory) / (DB_NAME + suffix)
        if source.exists():
            os.replace(source, Path(str(target) + suffix))
            moved = target if suffix == "" else moved or Path(str(target) + suffix)
    return moved


def read_marker(directory: Path) -> str | None:
    """The store id written beside the database, or None."""
    try:
        text = (Path(directory) / MARKER_NAME).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.startswith("st_") else None


def _start_time(pid: int) -> int | None:
    """Start time (clock ticks after boot) of a live process, None when it is gone or a
    zombie (or /proc is unavailable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def process_identity() -> dict[str, Any]:
    """Names this process across the store's users: host, pid and start time."""
    import socket

    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def process_alive(identity: dict[str, Any]) -> bool:
    """False only when ``identity`` (see :func:`process_identity`) is a process of this host
    that has ended; a process of another host, or one we cannot check, counts as alive."""
    import socket

    if identity.get("host") != socket.gethostname() or identity.get("start") is None:
        return True
    pid = identity.get("pid")
    if not isinstance(pid, int) or not os.path.isdir("/proc/self"):
        return True
    return _start_time(pid) == identity["start"]
