"""File transfer ops: ``write_file`` and ``read_file``, regular files only, paths relative to
the sandbox's home."""

from __future__ import annotations

import os
import stat

from .wire import MAX_FILE_BYTES, Invalid, write_all


def _resolve(home: str, path) -> str:
    if not isinstance(path, str) or not path:
        raise Invalid("path must be a non-empty string")
    if "\0" in path:
        raise Invalid("path must not contain NUL characters")
    return os.path.join(home, path)


def _regular_file(fd: int, name) -> int:
    """The size of the regular file open at ``fd``; Invalid for a FIFO, device, socket or
    directory (a transfer must neither hang nor read forever)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise Invalid(f"{name!r} is not a regular file: only regular files are transferred")
    return info.st_size


def write_file(home: str, msg: dict) -> dict:
    """The ``write_file`` op: ``data`` (base64) into ``path`` (relative to ``home``)."""
    import base64
    import binascii

    path = _resolve(home, msg.get("path"))
    mode = msg.get("mode")
    if mode is not None and (
        not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777
    ):
        raise Invalid("mode must be an integer permission mode such as 420 (0o644)")
    try:
        data = base64.b64decode(msg.get("data") or "", validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise Invalid("data must be base64-encoded") from None
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        try:
            _regular_file(fd, msg.get("path"))
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
            write_all(fd, data)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(path, mode)
    except OSError as exc:
        raise Invalid("cannot write {!r}: {}".format(msg.get("path"), exc.strerror)) from None
    return {"size": len(data)}

def read_file(home: str, msg: dict) -> dict:
    """The ``read_file`` op: a regular file of at most MAX_FILE_BYTES, base64-encoded."""
    import base64

    path = _resolve(home, msg.get("path"))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO: no hang
        try:
            size = _regular_file(fd, msg.get("path"))
        except Invalid:
            os.close(fd)
            raise
        with open(fd, "rb") as f:
            if size > MAX_FILE_BYTES:
                raise Invalid("{!r} is larger than {} MB: copy it out in parts".format(
                    msg.get("path"), MAX_FILE_BYTES // 2**20))
            os.set_blocking(fd, True)
            data = f.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise Invalid("{!r} grew past {} MB while it was read".format(
                    msg.get("path"), MAX_FILE_BYTES // 2**20))
    except FileNotFoundError:
        raise Invalid("no such file in the sandbox: {!r}".format(msg.get("path"))) from None
    except OSError as exc:
        raise Invalid("cannot read {!r}: {}".format(msg.get("path"), exc.strerror)) from None
    return {"data": base64.b64encode(data).decode("ascii"), "size": len(data)}
