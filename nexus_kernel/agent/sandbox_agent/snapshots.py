"""Snapshots of a sandbox, agent side: the state of every python session (a holder process
per session, see :mod:`.freeze`) plus a copy of the home directory's files, kept in the
agent's temp directory (on the sandbox's capped /tmp: it counts against the sandbox's
caps) until deleted or the sandbox ends.

A snapshot is taken and restored only while nothing runs: :class:`.gate.Gate` refuses it during
a run, and runs that arrive meanwhile wait until it is done. Bash and JavaScript sessions
are not captured: a restore ends them (their next run starts a fresh interpreter, and the
restore result lists them in ``restarted``), as it ends python sessions the snapshot does
not have. Files outside the home directory (/tmp) are not part of a snapshot.

A copy of the home directory is shared by the snapshots taken while nothing in it changed
(same entries, sizes, inodes and change times, see :func:`tree_state`): a notebook's cells
that write no files do not copy its data files again at each automatic checkpoint.
"""

from __future__ import annotations

import array
import contextlib
import os
import shutil
import signal
import socket
import stat
import threading
import time

from .procs import has_tag
from .runs import random_id
from .wire import Failure, Invalid, encode

#: Most snapshots a sandbox keeps at once.
MAX_SNAPSHOTS = 64
#: How long a session may take to fork its holder, and a holder to fork a worker.
FORK_WAIT = 30.0
#: How long a snapshot waits for a session busy answering a completion.
SESSION_WAIT = 12.0
#: Free space a snapshot's files leave on the file system that holds them.
SPACE_MARGIN = 1024 * 1024
#: Entries changed this recently when a copy of the home directory is made are not trusted
#: to show a later change in their change time (file systems stamp a coarse clock): such a
#: copy is never shared with the next snapshot.
RECENT_NS = 50_000_000
#: Appended to a holder's socket path: the file where the holder writes its pid once set
#: up, 0 if it could not (see :mod:`.freeze`).
PID_SUFFIX = ".pid"


def thaw(path: str, tag: str, fds: tuple) -> int:
    """Ask the holder listening on ``path`` for a new worker on ``fds`` (commands, control,
    stdout, stderr) with process tag ``tag``; its pid."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(FORK_WAIT)
        conn.connect(path)
        conn.sendmsg([encode({"op": "fork", "tag": tag})],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        data = b""
        while not data.endswith(b"\n") and len(data) < 64:
            chunk = conn.recv(64)
            if not chunk:
                break
            data += chunk
    try:
        return int(data)
    except ValueError:
        raise OSError("the snapshot's holder did not answer") from None


class Files:
    """A copy of the home directory, shared by the snapshots taken while it did not change
    (``signature``: see :func:`tree_state`; None: never shared)."""

    def __init__(self, path: str, size: int, signature) -> None:
        self.path = path
        self.size = size
        self.signature = signature
        self.users = 1  # snapshots holding it (changed under ``Snapshots._lock``)


class Snapshot:
    def __init__(self, snap_id: str, name: str | None, folder: str) -> None:
        self.id = snap_id
        self.name = name
        self.folder = folder
        self.created = time.time()
        self.holders: dict = {}  # python session name -> {"pid", "path"}
        self.files: Files | None = None
        self.memory_bytes = 0
        self.not_captured: list = []  # "name (language)" of bash/javascript sessions
        self.lost_threads: dict = {}
        self.lost_processes: dict = {}
        self.auto = False  # an automatic checkpoint: only the newest few are kept

    def info(self) -> dict:
        return {"snapshot_id": self.id, "name": self.name, "auto": self.auto,
                "created": self.created,
                "size": self.files.size if self.files else 0, "memory": self.memory_bytes,
                "sessions": sorted(self.holders), "not_captured": self.not_captured,
                "lost_threads": self.lost_threads, "lost_processes": self.lost_processes}

    def settle(self) -> None:
        """Learn the pid of each holder still setting itself up (see :mod:`.freeze`): until
        then it may be in the session's process tree and carry its tag, so this comes
        before anything kills the session's processes or the holder itself."""
        for holder in self.holders.values():
            if holder["pid"] is None:
                holder["pid"] = _holder_pid(holder["path"], holder["tag"])

    def discard(self) -> None:
        self.settle()
        for holder in self.holders.values():
            if holder["pid"] and has_tag(holder["pid"], holder["tag"]):  # not a process that took its pid
                with contextlib.suppress(OSError):
                    os.kill(holder["pid"], signal.SIGKILL)  # the agent's reaper reaps it
        shutil.rmtree(self.folder, ignore_errors=True)


class Snapshots:
    """The agent's snapshots: take, restore, list, delete."""

    def __init__(self, agent) -> None:
        self.agent = agent
        self.gate = agent.gate
        self._lock = threading.Lock()
        self._all: dict = {}  # id -> Snapshot, oldest first
        self._last_files: Files | None = None  # the newest copy of the home directory

    def _base(self) -> str:
        base = self.agent.temp_path("snapshots")
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o700)
        return base

    def find(self, ref) -> Snapshot:
        if not isinstance(ref, str) or not ref:
            raise Invalid("snapshot must be a snapshot id or name")
        with self._lock:
            found = self._all.get(ref) or next(
                (s for s in reversed(list(self._all.values())) if s.name == ref), None)
        if found is None:
            raise Invalid(f"no snapshot {ref!r} in this sandbox; list them with "
                          "`nexus sandbox snapshots ID`")
        return found

    def list(self) -> list:
        with self._lock:
            return [s.info() for s in self._all.values()]

    def settle(self) -> None:
        """:meth:`Snapshot.settle` every snapshot (before a session's processes are killed)."""
        with self._lock:
            snaps = list(self._all.values())
        for snap in snaps:
            snap.settle()

    def delete(self, ref) -> dict:
        snap = self.find(ref)
        with self._lock:
            if self._all.pop(snap.id, None) is None:
                return {"deleted": snap.id}  # deleted meanwhile
        self._discard(snap)
        return {"deleted": snap.id}

    def _discard(self, snap: Snapshot) -> None:
        """End a snapshot's holders; delete its files unless another snapshot shares them."""
        snap.discard()
        files, snap.files = snap.files, None
        if files is None:
            return
        with self._lock:
            files.users -= 1
            if files.users:
                return
            if self._last_files is files:
                self._last_files = None
        shutil.rmtree(files.path, ignore_errors=True)

    def _home_copy(self, base: str) -> Files:
        """A copy of the home directory: the newest one when nothing changed since."""
        size, signature = tree_state(self.agent.home, base)
        with self._lock:
            last = self._last_files
            if signature is not None and last is not None and last.signature == signature:
                last.users += 1
                return last
        path = os.path.join(base, "files-" + random_id())
        copy_tree(self.agent.home, path, base, size)
        return Files(path, size, signature)

    def take(self, name, keep_auto=None, reserved: bool = False) -> dict:
        """A new snapshot; ``keep_auto``: it is an automatic one, and only the newest
        ``keep_auto`` automatic ones are kept (the others' ids are in ``dropped``).
        ``reserved``: the gate was handed over by a run (see :meth:`.gate.Gate.leave`)."""
        gate = self.gate.reserved() if reserved else self.gate.alone("take a snapshot")
        with gate:
            check_request(name, keep_auto)
            with self._lock:
                if len(self._all) >= MAX_SNAPSHOTS:
                    raise Invalid(f"this sandbox holds {MAX_SNAPSHOTS} snapshots, the most it "
                                  "keeps: delete some first")
            snap, old = self._take(name, keep_auto)
        for s in old:  # after the gate: the next run need not wait for it
            self._discard(s)
        return dict(snap.info(), dropped=[s.id for s in old])

    def _take(self, name, keep_auto) -> tuple:
        with self._sessions_held() as sessions:
            base = self._base()
            snap = Snapshot("snap-" + random_id()[:12], name, os.path.join(base, random_id()))
            os.mkdir(snap.folder, 0o700)
            try:
                snap.files = self._home_copy(base)
                for session in sessions:
                    self._capture(snap, session)
            except BaseException:
                self._discard(snap)
                raise
        snap.auto = keep_auto is not None
        with self._lock:
            self._last_files = snap.files
            old = [s for s in self._all.values() if name is not None and s.name == name]
            if snap.auto:
                autos = [s for s in self._all.values() if s.auto and s not in old]
                old += autos[:max(0, len(autos) + 1 - keep_auto)]
            for s in old:  # a name names one snapshot: the newest
                self._all.pop(s.id, None)
            self._all[snap.id] = snap
        return snap, old

    def _capture(self, snap: Snapshot, session) -> None:
        label = f"{session.name} ({session.language})"
        if session.language != "python":
            snap.not_captured.append(label)
            return
        path = os.path.join(snap.folder, f"{len(snap.holders)}.sock")
        tag = random_id()
        answer = session.ask({"op": "snapshot", "path": path, "tag": tag,
                              "agent": os.getpid()}, FORK_WAIT)
        if not answer or "error" in answer or "pid" not in answer:
            why = (answer or {}).get("error") or "it did not answer"
            raise Failure(f"cannot snapshot session {label}: {why}")
        snap.holders[session.name] = {"pid": answer["pid"], "path": path, "tag": tag}
        snap.memory_bytes += int(answer.get("rss") or 0)
        for key in ("lost_threads", "lost_processes"):
            if answer.get(key):
                getattr(snap, key)[session.name] = list(answer[key])

    def restore(self, ref) -> dict:
        snap = self.find(ref)
        with self.gate.alone("restore a snapshot"), self._sessions_held() as sessions:
            files = snap.files
            if files is None:
                raise Invalid(f"no snapshot {ref!r} in this sandbox (it was just deleted)")
            if not os.path.isdir(files.path):
                raise Failure(f"snapshot {snap.id}'s files are gone (deleted from inside "
                              "the sandbox): delete the snapshot")
            restarted = sorted(f"{s.name} ({s.language})" for s in sessions
                               if s.language != "python" or s.name not in snap.holders)
            self.agent.end_sessions(sessions)
            sync_tree(files.path, self.agent.home, skip=self._base())
            for name, holder in snap.holders.items():
                self.agent.thaw_session(name, holder["path"])
        return {"snapshot_id": snap.id, "name": snap.name, "sessions": sorted(snap.holders),
                "restarted": restarted}

    # -- fork: the state as an archive another sandbox imports ------------------------

    def export(self, ref) -> dict:
        """A tar archive (in the agent's temp dir) of the python sessions' variables (each
        pickled by its session) and the home directory: now, or as snapshot ``ref`` has
        them (its holders fork a temporary worker each)."""
        snap = None if ref is None else self.find(ref)
        with self.gate.alone("fork the sandbox"), self._sessions_held() as sessions:
            folder = os.path.join(self._base(), "export-" + random_id())
            os.mkdir(folder, 0o700)
            try:
                return self._export(folder, snap, sessions)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise

    def _export(self, folder: str, snap, sessions) -> dict:
        import json
        import tarfile

        if snap is None:
            home = self.agent.home
            sources = [(s.name, s, False) for s in sessions if s.language == "python"]
        elif snap.files is None:
            raise Invalid(f"no snapshot {snap.id!r} in this sandbox (it was just deleted)")
        else:
            home = snap.files.path
            sources = [(name, self.agent.spare_session(h["path"]), True)
                       for name, h in snap.holders.items()]
        manifest: dict = {"sessions": {}, "skipped": {}}
        try:
            for index, (name, session, _spare) in enumerate(sources):
                path = os.path.join(folder, f"{index}.pkl")
                answer = session.ask({"op": "export", "path": path}, FORK_WAIT) or {}
                if "error" in answer or "size" not in answer:
                    raise Failure(f"cannot export session {name}: "
                                  f"{answer.get('error') or 'it did not answer'}")
                manifest["sessions"][name] = f"{index}.pkl"
                if answer.get("skipped"):
                    manifest["skipped"][name] = answer["skipped"]
        finally:
            for _name, session, spare in sources:
                if spare:
                    session.dead = True
                    session.kill()
        archive = os.path.join(folder, "fork.tar")
        with tarfile.open(archive, "w") as tar:
            tar.add(home, "home", filter=lambda m: None if m.name == "home/" + os.path.relpath(
                self._base(), home) else m)
            for member in manifest["sessions"].values():
                tar.add(os.path.join(folder, member), "sessions/" + member)
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(manifest, f)
        with tarfile.open(archive, "a") as tar:
            tar.add(os.path.join(folder, "manifest.json"), "manifest.json")
        return {"archive": archive, "size": os.path.getsize(archive),
                "sessions": sorted(manifest["sessions"]), "skipped": manifest["skipped"]}

    def drop_export(self, archive) -> dict:
        folder = os.path.dirname(archive) if isinstance(archive, str) else ""
        if os.path.dirname(folder) != self._base() or not os.path.basename(
                folder).startswith("export-"):
            raise Invalid("archive must be one an export returned")
        shutil.rmtree(folder, ignore_errors=True)
        return {}

    def load(self, archive) -> dict:
        """Import an :meth:`export` archive (a path in this sandbox) into this sandbox: its
        files into the home directory, its sessions' variables into sessions of the same
        names; the archive is deleted."""
        import json
        import tarfile

        if not isinstance(archive, str) or not os.path.isfile(archive):
            raise Invalid("archive must be the path of an export archive in this sandbox")
        with self.gate.alone("import a fork"):
            folder = os.path.join(self._base(), "import-" + random_id())
            os.mkdir(folder, 0o700)
            try:
                with tarfile.open(archive) as tar:
                    _check_members(tar.getmembers())
                    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                    tar.extractall(folder, **safe)  # noqa: S202 - members checked above
                with open(os.path.join(folder, "manifest.json")) as f:
                    manifest = json.load(f)
                sync_tree(os.path.join(folder, "home"), self.agent.home, skip=self._base())
                failed = {}
                for name, member in manifest["sessions"].items():
                    session = self.agent.session(name, "python")
                    with session.run_lock:
                        answer = session.ask({"op": "load", "path": os.path.join(
                            folder, "sessions", member)}, FORK_WAIT) or {}
                    if "error" in answer:
                        raise Failure(f"cannot import session {name}: {answer['error']}")
                    if answer.get("failed"):
                        failed[name] = answer["failed"]
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.unlink(archive)
        return {"sessions": sorted(manifest["sessions"]), "failed": failed,
                "skipped": manifest.get("skipped", {})}

    @contextlib.contextmanager
    def _sessions_held(self):
        """The live sessions, each with its run lock held (none can start a run)."""
        held = []
        try:
            for session in self.agent.live_sessions():
                if not session.run_lock.acquire(timeout=SESSION_WAIT):
                    raise Invalid(f"session {session.name} is busy: try again")
                held.append(session)
            yield [s for s in held if not s.dead]
        finally:
            for session in held:
                session.run_lock.release()


def _holder_pid(path: str, tag: str) -> int:
    """The pid a holder wrote next to its socket once set up (0: it never did, or is gone)."""
    until = time.monotonic() + FORK_WAIT
    pause = 0.0005
    while True:
        try:
            with open(path + PID_SUFFIX, "rb") as f:
                pid = int(f.read())
        except (OSError, ValueError):
            if time.monotonic() >= until or not os.path.exists(path):
                return 0
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
            continue
        return pid if pid and has_tag(pid, tag) else 0


def check_request(name, keep_auto) -> None:
    """A snapshot's name (or None) and ``keep_auto`` (or None), checked."""
    if name is not None and (not isinstance(name, str) or not name or len(name) > 200):
        raise Invalid("name must be a non-empty string of at most 200 characters, or null")
    if keep_auto is not None and (not isinstance(keep_auto, int) or isinstance(
            keep_auto, bool) or not 1 <= keep_auto <= MAX_SNAPSHOTS // 2):
        raise Invalid(f"keep_auto must be 1 .. {MAX_SNAPSHOTS // 2} or null")


def _copy_regular(src: str, dst: str) -> None:
    """Copy a regular file with its metadata; sockets, fifos and devices are skipped."""
    if stat.S_ISREG(os.lstat(src).st_mode):
        shutil.copy2(src, dst, follow_symlinks=False)


def tree_state(root: str, skip: str) -> tuple:
    """The bytes of the regular files under ``root`` (``skip`` left out), and its signature:
    every entry's path, mode, inode, size, modification and change time (a write, rename,
    chmod or utime changes the change time, which no user can set), or None when an entry
    changed too recently for a later change to show (see RECENT_NS)."""
    since = time.time_ns() - RECENT_NS
    total, entries, recent = 0, [], False
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if os.path.join(folder, d) != skip)
        for name in dirs + sorted(files):
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except OSError:
                recent = True  # gone while walking: changing now
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
            recent = recent or max(info.st_mtime_ns, info.st_ctime_ns) >= since
            entries.append((path, info.st_mode, info.st_ino, info.st_size, info.st_mtime_ns,
                            info.st_ctime_ns))
    try:
        top = os.lstat(root)
    except OSError:
        return total, None
    recent = recent or max(top.st_mtime_ns, top.st_ctime_ns) >= since
    entries.append((root, top.st_mode, top.st_ino, top.st_mtime_ns, top.st_ctime_ns))
    return total, None if recent else tuple(entries)


def copy_tree(src: str, dst: str, skip: str, size: int) -> None:
    """Copy ``src`` (``size`` bytes of files) to the new directory ``dst`` (symlinks as
    links, ``skip`` left out). Refused when it would not fit in the free space there."""
    fs = os.statvfs(os.path.dirname(dst))
    free = fs.f_bavail * fs.f_frsize
    if size + SPACE_MARGIN > free:
        raise Invalid(f"the sandbox's files ({size // 2**20} MB) do not fit in its free "
                      f"space ({free // 2**20} MB) for a snapshot: delete files or snapshots")
    skipped = os.path.abspath(skip)

    def ignore(folder, names):
        return [n for n in names if os.path.join(os.path.abspath(folder), n) == skipped]

    try:
        shutil.copytree(src, dst, symlinks=True, ignore=ignore, copy_function=_copy_regular)
    except (OSError, shutil.Error) as exc:
        shutil.rmtree(dst, ignore_errors=True)
        raise Failure(f"cannot copy the sandbox's files: {_first_error(exc)}") from None


def sync_tree(src: str, dst: str, skip: str) -> None:
    """Make the directory ``dst`` hold what ``src`` holds (``skip`` left alone). A regular
    file in both is rewritten in place: files a restored session holds open see the
    snapshot's content."""
    try:
        _sync(src, dst, os.path.abspath(skip))
    except OSError as exc:
        raise Failure(f"cannot restore the sandbox's files: {exc}") from None


def _kind(mode: int) -> str:
    return "dir" if stat.S_ISDIR(mode) else "reg" if stat.S_ISREG(mode) else "other"


def _sync(src: str, dst: str, skip: str) -> None:
    wanted = {entry.name: entry.stat(follow_symlinks=False) for entry in os.scandir(src)}
    for entry in os.scandir(dst):
        if os.path.abspath(entry.path) == skip:
            continue
        info = wanted.get(entry.name)
        mine = entry.stat(follow_symlinks=False).st_mode
        if info is None or _kind(info.st_mode) != _kind(mine) or _kind(mine) == "other":
            if stat.S_ISDIR(mine):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    for name, info in wanted.items():
        source, target = os.path.join(src, name), os.path.join(dst, name)
        if stat.S_ISDIR(info.st_mode):
            if not os.path.lexists(target):
                os.mkdir(target, 0o700)
            _sync(source, target, skip)
            shutil.copystat(source, target, follow_symlinks=False)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(source), target)
        elif os.path.lexists(target) and _rewrite(source, target):
            shutil.copystat(source, target, follow_symlinks=False)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            shutil.copy2(source, target, follow_symlinks=False)


def _rewrite(source: str, target: str) -> bool:
    """Give the existing file ``target`` (same inode) the content of ``source``; False
    when it cannot be opened for writing."""
    try:
        fout = open(target, "r+b")  # noqa: SIM115 - closed below
    except PermissionError:
        return False
    with fout, open(source, "rb") as fin:
        fout.truncate(0)
        shutil.copyfileobj(fin, fout, 1024 * 1024)
    return True


def _first_error(exc: BaseException) -> str:
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        src, _dst, why = exc.args[0][0]
        return f"{src}: {why}"
    return str(exc)


def _check_members(members) -> None:
    """An export archive unpacks only inside its folder: relative names without ``..``,
    files, directories and symlinks, and nothing written through a symlink of the archive
    (the sandbox's python may predate tarfile's ``data`` filter)."""
    links = {os.path.normpath(m.name) for m in members if m.issym()}
    for member in members:
        name = os.path.normpath(member.name)
        parts = name.split(os.sep)
        if (member.name.startswith("/") or ".." in parts
                or not (member.isfile() or member.isdir() or member.issym())
                or any(os.sep.join(parts[:i]) in links for i in range(1, len(parts)))):
            raise Invalid(f"bad member in the archive: {member.name!r}")
