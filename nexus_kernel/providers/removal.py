"""Removing a directory tree that hostile code wrote: any depth, no symlink followed.

``shutil.rmtree`` recurses (a 1,100-level tree raised RecursionError and the directory stayed),
and its error handler ``chmod``-ed paths by name, following a symlink the sandbox planted to
a host file. :func:`remove_tree` walks with directory file descriptors only: each directory
is opened with ``O_NOFOLLOW`` relative to its parent, entries are unlinked relative to their
directory, and one directory is open at a time (the way back up is ``..`` of the open one,
which no sandbox can redirect), so neither depth nor links lead it anywhere else.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it (a file or a link is just unlinked)."""
    try:
        parent = os.open(path.parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        _remove(parent, path.name)
    finally:
        os.close(parent)


def _remove(parent: int, name: str) -> None:
    if _unlink(parent, name):
        return
    fd = _open_dir(parent, name)
    if fd is None:
        return
    depth = [name]  # names from ``parent`` down to the directory open at ``fd``
    while depth:
        entry = _first_entry(fd)
        if entry is not None:
            if _unlink(fd, entry):
                continue
            child = _open_dir(fd, entry)
            if child is not None:
                os.close(fd)
                fd, depth = child, [*depth, entry]
            continue
        # the directory at ``fd`` is empty: step up and remove it
        gone = depth.pop()
        up = parent if not depth else os.open("..", _DIR_FLAGS, dir_fd=fd)
        os.close(fd)
        _rmdir(up, gone)
        fd = up
    # ``fd`` is ``parent`` again: the caller closes it


def _rmdir(dir_fd: int, name: str) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except PermissionError:
        _writable(dir_fd)  # the sandbox made its directory read-only
        os.rmdir(name, dir_fd=dir_fd)


def _unlink(dir_fd: int, name: str) -> bool:
    """Unlink a non-directory entry; False when it is a directory."""
    for attempt in (1, 2):
        try:
            os.unlink(name, dir_fd=dir_fd)
            return True
        except FileNotFoundError:
            return True
        except IsADirectoryError:
            return False
        except PermissionError:
            if attempt == 2:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    return False
                raise
            _writable(dir_fd)  # the sandbox made its directory read-only
    return False


def _open_dir(dir_fd: int, name: str) -> int | None:
    """The entry ``name`` opened as a directory (never through a link), made readable;
    None when it is not a directory (any more)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except (NotADirectoryError, FileNotFoundError):
        return None
    except OSError as exc:
        if not isinstance(exc, PermissionError):
            return None  # ELOOP: a symlink, unlinked by the caller's next pass
    path = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if not stat.S_ISDIR(os.fstat(path).st_mode):
            return None
        os.chmod(f"/proc/self/fd/{path}", 0o700)  # the directory itself, not a name
    finally:
        os.close(path)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _first_entry(fd: int) -> str | None:
    with os.scandir(fd) as entries:
        for entry in entries:
            return entry.name
    return None


def _writable(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o700)
