"""The seed's Python API: ``NexusFS`` with dict-returning ``sandbox_*`` methods, and
``LocalBackend``, a small file store rooted in one directory (``nx.read/write/ls``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Settings, private_dir
from .errors import InvalidArgumentError
from .manager import EventCallback, SandboxManager, describe, split_run_id
from .models import SandboxRecord, iso


class LocalBackend:
    """Files under one root directory; no path can escape it."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        base = Path(root) if root is not None else Settings.load().home / "files"
        self.root = private_dir(base.expanduser().resolve())

    def resolve(self, path: str) -> Path:
        """Map a store path (``/workspace/data.csv``) to a real path inside the root."""
        if not isinstance(path, str) or "\0" in path:
            raise InvalidArgumentError("path must be a string without NUL bytes")
        target = (self.root / path.lstrip("/")).resolve()
        if target != self.root and self.root not in target.parents:
            raise InvalidArgumentError(f"path {path!r} escapes the backend root")
        return target

    def read(self, path: str) -> bytes:
        target = self.resolve(path)
        if not target.is_file():
            raise FileNotFoundError(f"no file {path!r} in {self.root}")
        return target.read_bytes()

    def write(self, path: str, data: bytes | str) -> int:
        target = self.resolve(path)
        payload = data.encode() if isinstance(data, str) else bytes(data)
        private_dir(target.parent)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(payload)
        return len(payload)

    def ls(self, path: str = "/") -> list[str]:
        target = self.resolve(path)
        if not target.is_dir():
            raise FileNotFoundError(f"no directory {path!r} in {self.root}")
        return sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())

    def delete(self, path: str) -> None:
        self.resolve(path).unlink()

    def exists(self, path: str) -> bool:
        return self.resolve(path).exists()


class NexusFS:
    """Files plus sandboxes, as in the seed document.

    ``sandbox_provider`` picks the provider (default ``local``); ``user`` and ``is_admin``
    scope what ``sandbox_list`` shows (default: ``NEXUS_USER`` / ``NEXUS_ADMIN``); provider
    credentials (``e2b_api_key=``) and other settings (``ttl_minutes``, ``timeout``,
    ``memory_mb``, ``home`` …) may be passed as keywords. Every ``None`` means "from the
    settings": the keyword, else the ``NEXUS_*`` variable, else the built-in default.
    """

    def __init__(
        self,
        backend: LocalBackend | None = None,
        sandbox_provider: str | None = None,
        is_admin: bool | None = None,
        user: str | None = None,
        **settings: Any,
    ):
        self.backend = backend or LocalBackend()
        self.settings = Settings.load(provider=sandbox_provider, user=user, admin=is_admin,
                                      **settings)
        self.manager = SandboxManager(self.settings)

    @property
    def current_user(self) -> str:
        return self.manager.user

    def _describe(self, record: SandboxRecord) -> dict[str, Any]:
        return describe(record, self.manager.clock())

    # files
    def read(self, path: str) -> bytes:
        return self.backend.read(path)

    def write(self, path: str, data: bytes | str) -> int:
        return self.backend.write(path, data)

    def ls(self, path: str = "/") -> list[str]:
        return self.backend.ls(path)

    def delete(self, path: str) -> None:
        self.backend.delete(path)

    def exists(self, path: str) -> bool:
        return self.backend.exists(path)

    # sandboxes
    def sandbox_create(
        self,
        name: str,
        ttl_minutes: float | None = None,
        template_id: str | None = None,
        provider: str | None = None,
        network: bool | str | list[str] | None = None,
    ) -> dict[str, Any]:
        """Create a sandbox; returns its description (``sandbox_id``, ``status`` …).
        ``ttl_minutes=None``: the ``ttl_minutes`` setting (``NEXUS_TTL_MINUTES``, default 10).
        ``network``: False/"none", True/"all", or an allow-list such as
        ``["pypi.org", "api.example.com:443"]`` (a bare name allows ports 80 and 443);
        None: ``NEXUS_NETWORK`` / ``NEXUS_NETWORK_ALLOW``."""
        return self._describe(self.manager.create(name, ttl_minutes, template_id,
                                                  provider=provider, network=network))

    def sandbox_events(self, sandbox_id: str) -> list[dict[str, Any]]:
        """Network requests the sandbox's allow-list refused, oldest first:
        ``{time, host, port, reason, run}`` (``port`` None for a DNS lookup, ``run`` the
        id of the run it happened in)."""
        return self.manager.network_events(sandbox_id)

    def sandbox_run(
        self,
        sandbox_id: str,
        language: str,
        code: str,
        timeout: float | None = None,
        session: str | None = None,
        on_event: EventCallback | None = None,
        trusted_output: bool | None = None,
        input_data: str | None = None,
        wait: bool = True,
        on_run_id: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Run code. ``session=None`` runs a fresh process (files persist, variables do
        not); a session name keeps variables between runs. Returns ``stdout``, ``stderr``,
        ``exit_code``, ``execution_time`` (and ``display``, ``truncated``, ``run_id`` …).
        ``timeout=None``: the ``timeout`` setting (``NEXUS_TIMEOUT``, default 30 s).

        Rich output (``display``, ``result``) is untrusted and comes back inert (HTML
        sanitised, scripts withheld) unless ``trusted_output=True``. ``input_data`` is the
        standard input of a stateless run.

        ``wait=False``: a detached run, returned at once as ``{"sandbox_id", "run_id",
        "state": "running"}``; it outlives this process (until its timeout; the sandbox's
        TTL waits for it) and :meth:`sandbox_attach` gives its result. ``on_run_id`` is
        called with the run id as soon as a waited-for run started."""
        if not wait:
            if on_event is not None or on_run_id is not None:
                raise InvalidArgumentError(
                    "on_event and on_run_id are for a run you wait for; with wait=False "
                    "stream its events with sandbox_attach(run_id, on_event=...)")
            run_id = self.manager.start(sandbox_id, language, code, timeout, session=session,
                                        input_data=input_data)
            return {"sandbox_id": sandbox_id, "run_id": run_id, "state": "running"}
        result = self.manager.run(sandbox_id, language, code, timeout, session=session,
                                  on_event=on_event, trusted_output=trusted_output,
                                  input_data=input_data, on_run_id=on_run_id)
        data = result.to_dict()
        data["sandbox_id"] = sandbox_id
        return data

    def sandbox_attach(
        self,
        run_id: str,
        follow: bool = True,
        on_event: EventCallback | None = None,
        trusted_output: bool | None = None,
    ) -> dict[str, Any]:
        """Replay a run's output from its start and follow it to its end (any process may,
        with the run id alone). Returns :meth:`sandbox_run`'s keys (a timeout is
        ``timed_out``/``exit_code`` 124 here, not an exception) plus ``state``
        (``finished``; ``running`` with ``follow=False`` while it runs) and
        ``dropped_bytes``: output cut from the start (the sandbox keeps the last 2 MiB of
        a run's events), 0 when the replay is whole. Events go to ``on_event`` as they
        are replayed, then live."""
        result, more = self.manager.attach(run_id, follow=follow, on_event=on_event,
                                           trusted_output=trusted_output)
        data = result.to_dict()
        data.update(more, sandbox_id=split_run_id(run_id)[0])
        return data

    def sandbox_runs(self, sandbox_id: str) -> dict[str, Any]:
        """The sandbox's runs (running ones and the last 16 finished), oldest first:
        ``{"sandbox_id", "runs": [{"run_id", "state", "language", "session", "detached",
        "started_at", "ended_at", "exit_code", "ended_by", "usage", …}], "count"}``;
        ``state`` is running, finished or failed; times are ISO-8601 UTC."""
        runs = self.manager.runs(sandbox_id)
        for run in runs:
            run["started_at"], run["ended_at"] = iso(run["started_at"]), iso(run["ended_at"])
        return {"sandbox_id": sandbox_id, "runs": runs, "count": len(runs)}

    def sandbox_pause(self, sandbox_id: str) -> dict[str, Any]:
        return self._describe(self.manager.pause(sandbox_id))

    def sandbox_resume(self, sandbox_id: str) -> dict[str, Any]:
        return self._describe(self.manager.resume(sandbox_id))

    def sandbox_stop(self, sandbox_id: str) -> dict[str, Any]:
        return self._describe(self.manager.stop(sandbox_id))

    def sandbox_list(self, all_users: bool = False) -> dict[str, Any]:
        now = self.manager.clock()
        records = self.manager.list(all_users=all_users)
        return {"sandboxes": [describe(r, now) for r in records], "count": len(records)}

    def sandbox_status(self, sandbox_id: str) -> dict[str, Any]:
        return self._describe(self.manager.status(sandbox_id))

    def sandbox_interrupt(self, sandbox_id: str, session: str | None = None,
                          run_id: str | None = None) -> dict[str, Any]:
        """Interrupt the code running in ``session`` (None: every run of the sandbox), or
        only the run ``run_id``."""
        if run_id is not None:
            return {"sandbox_id": sandbox_id, "interrupted": self.manager.interrupt_run(run_id)}
        return {"sandbox_id": sandbox_id, "interrupted": self.manager.interrupt(sandbox_id, session)}

    def sandbox_upload(self, sandbox_id: str, path: str, data: bytes | str) -> dict[str, Any]:
        payload = data.encode() if isinstance(data, str) else data
        size = self.manager.put_file(sandbox_id, path, payload)
        return {"sandbox_id": sandbox_id, "path": path, "size": size}

    def sandbox_download(self, sandbox_id: str, path: str) -> bytes:
        return self.manager.get_file(sandbox_id, path)

    def sandbox_snapshot(self, sandbox_id: str, name: str | None = None) -> dict[str, Any]:
        """Snapshot the sandbox: every python session's variables and the home directory's
        files. Returns ``snapshot_id``, ``size`` (bytes of files), ``memory`` (the most its
        held sessions can pin), ``lost_threads`` / ``lost_processes`` (not in a snapshot)
        and ``not_captured`` (bash/javascript sessions: restarted fresh on restore).
        Refused while the sandbox runs code; snapshots end with the sandbox. On e2b and
        modal: the platform's snapshot, ``persists: true`` (kept after the sandbox until
        deleted, or until ``expires``: Modal's memory snapshots, 7 days), ``keeps``: "memory
        and files", or "files only; interpreters restart" (a Modal sandbox with a GPU)."""
        return {"sandbox_id": sandbox_id, **self.manager.snapshot(sandbox_id, name)}

    def sandbox_restore(self, sandbox_id: str, snapshot_id: str) -> dict[str, Any]:
        """Put sessions and files back as the snapshot (id or name) had them; the snapshot
        stays, so it can be restored again. ``restarted``: sessions that start fresh."""
        return {"sandbox_id": sandbox_id, **self.manager.restore(sandbox_id, snapshot_id)}

    def sandbox_snapshots(self, sandbox_id: str) -> dict[str, Any]:
        """The sandbox's snapshots (``snapshot_id``, ``name``, ``created``, ``size`` …)."""
        snapshots = self.manager.snapshots(sandbox_id)
        return {"sandbox_id": sandbox_id, "snapshots": snapshots, "count": len(snapshots)}

    def sandbox_fork(self, sandbox_id: str, snapshot_id: str | None = None,
                     count: int = 1) -> dict[str, Any]:
        """``count`` new sandboxes with the sandbox's files and python variables (now, or
        as snapshot ``snapshot_id`` had them), each with a fresh agent token and its own
        TTL. Process memory does not cross sandboxes: variables are pickled (cloudpickle or
        dill when the sandbox has them); ``skipped`` lists what could not be, ``failed``
        what a fork could not load; threads, processes, open files and bash/javascript
        state do not carry. On e2b and modal the platform forks the whole memory:
        everything carries (``keeps``; a Modal sandbox with a GPU: files only)."""
        forks, report = self.manager.fork(sandbox_id, snapshot_id, count)
        return {"sandbox_id": sandbox_id, "forks": [self._describe(r) for r in forks], **report}

    def sandbox_snapshot_delete(self, sandbox_id: str, snapshot_id: str) -> dict[str, Any]:
        return {"sandbox_id": sandbox_id,
                "deleted": self.manager.delete_snapshot(sandbox_id, snapshot_id)}

    def sandbox_reap(self) -> dict[str, Any]:
        return self.manager.reap()

    def close(self) -> None:
        self.manager.close()


__all__ = ["LocalBackend", "NexusFS"]
