"""The one sandbox a kernel runs its cells in (``commands.py`` has the ``%sandbox`` lines).

Configuration comes from the manager's settings (:class:`~nexus_kernel.config.Settings`,
read from the kernelspec's ``env`` or the notebook server's): the ``NEXUS_*`` settings
(provider, TTL, limits, network, home, user), plus the kernel's own

- ``NEXUS_TEMPLATE``: template / image for the sandbox,
- ``NEXUS_KERNEL_SANDBOX``: attach to this existing sandbox instead of creating one,
- ``NEXUS_KERNEL_KEEP``: ``1`` keeps the sandbox when the kernel shuts down,
- ``NEXUS_KERNEL_REATTACH``: ``1`` makes a restarted kernel continue in the sandbox of its
  previous run (default: that sandbox is stopped, a restart starts fresh as ipykernel's),
- ``NEXUS_CELL_TIMEOUT``: seconds a cell may run (default: no practical limit, 24 h).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..checkpoints import CellCheckpoints
from ..egress import network_text, parse_allow
from ..errors import SandboxError
from ..manager import SandboxManager
from ..models import USAGE_LOG_SIZE, ExecResult, SandboxRecord, Status

#: Every cell of a kernel runs in this session of its sandbox (one per language).
SESSION = "kernel"


class KernelSandbox:
    """The sandbox behind one kernel: created on the first cell that has code (or attached
    to ``NEXUS_KERNEL_SANDBOX``), recreated with a note when it was lost, stopped at kernel
    shutdown unless ``keep`` is set (attached sandboxes are kept by default)."""

    def __init__(self, manager: SandboxManager, name: str, client_id: str | None = None) -> None:
        settings = manager.settings
        self.manager = manager
        self.name = name
        self.provider = settings.provider
        self.ttl_minutes = settings.ttl_minutes
        #: The next sandbox's network: True (all), False (none) or an allow-list.
        self.network: bool | tuple[str, ...] = (
            settings.network or parse_allow(settings.network_allow) or False)
        self.template_id = settings.template or None
        self.cell_timeout = settings.cell_timeout
        self.sandbox_id: str | None = settings.kernel_sandbox or None
        self.attached = self.sandbox_id is not None
        self.keep = self.attached if settings.kernel_keep is None else settings.kernel_keep
        #: The Jupyter kernel this sandbox serves (``jupyter-kernel:<id>``), kept on its record.
        self.client_id = client_id
        self.reattach = settings.kernel_reattach
        #: Show the sandbox's rich output as it is (scripts, widgets): an explicit opt-in.
        self.trusted_output = settings.trusted_output
        #: True while a cell runs (the TTL keeper extends the TTL then).
        self.busy = False
        #: The sandbox the last cell ran in: the next cell's run checks its record itself.
        self.reached: str | None = None
        #: Automatic checkpoints before cells, undo, named checkpoints.
        self.checkpoints = CellCheckpoints(manager, settings.checkpoints)
        #: The label of the last cell that ran in the sandbox ("In [N]").
        self.last_cell = "no cell"
        #: The last cells' (``In [N]``, ended_by, usage), for ``%sandbox usage``.
        self.usage_log: deque[tuple[str, str, dict[str, Any] | None]] = deque(
            maxlen=USAGE_LOG_SIZE)

    def log_usage(self, label: str, result: ExecResult) -> None:
        """Remember a finished cell's ``ended_by`` and ``usage`` for ``%sandbox usage``."""
        self.usage_log.append((label, result.ended_by, result.usage))

    # ------------------------------------------------------------------ lifecycle

    def ensure(self) -> tuple[str, str]:
        """The id of an active sandbox to run in, and a note for the user ("" if none).

        A paused sandbox is resumed; a stopped one (TTL expired, stopped elsewhere) is
        replaced by a new one, and the note says that earlier variables are gone."""
        note = ""
        if self.sandbox_id is not None:
            record = self.manager.get(self.sandbox_id)
            if record.status is Status.ACTIVE:
                return record.sandbox_id, ""
            if record.status is Status.PAUSED:
                self.manager.resume(record.sandbox_id)
                return record.sandbox_id, f"Nexus: resumed paused sandbox {record.sandbox_id}\n"
            why = f" ({record.error})" if record.error else ""
            note = (f"Nexus: sandbox {record.sandbox_id} is {record.status.value}{why}; "
                    "variables from earlier cells are gone. ")
        record = self.create()
        if note:
            note += f"Started a new sandbox: {record.sandbox_id}\n"
        return record.sandbox_id, note

    def previous_run(self) -> str:
        """After a restart (the same kernel id), deal with the sandbox of the previous run:
        stop it (a restart starts fresh, as ipykernel's does) or, with
        ``NEXUS_KERNEL_REATTACH=1``, continue in it. Returns the note for the first cell."""
        if self.client_id is None or self.attached:
            return ""
        previous = self.manager.of_client(self.client_id)
        if not previous:
            return ""
        kept = previous.pop() if self.reattach else None  # the newest one
        stopped = []
        for record in previous:
            try:
                stopped.append(self.manager.stop(record.sandbox_id).sandbox_id)
            except SandboxError as exc:
                return f"Nexus: cannot stop {record.sandbox_id} of the previous run: {exc}\n"
        if kept is not None:
            self.sandbox_id = kept.sandbox_id
            return (f"Nexus: continuing in sandbox {kept.sandbox_id} of this kernel's previous "
                    "run (NEXUS_KERNEL_REATTACH): its files and variables are kept\n")
        return (f"Nexus: stopped sandbox {', '.join(stopped)} of this kernel's previous run: "
                "a restarted kernel starts fresh (NEXUS_KERNEL_REATTACH=1 continues in it)\n")

    def create(self) -> SandboxRecord:
        """Create the kernel's sandbox with the current provider, TTL and template."""
        record = self.manager.create(self.name, self.ttl_minutes, self.template_id,
                                     provider=self.provider, network=self.network,
                                     client_id=self.client_id)
        self.sandbox_id = record.sandbox_id
        if self.attached:
            self.attached = False
            self.keep = False
        return record

    def close(self) -> None:
        """Kernel shutdown: stop the sandbox unless it is kept; close connections."""
        try:
            if self.sandbox_id is not None and not self.keep:
                self.manager.stop(self.sandbox_id)
        finally:
            self.manager.close()

    def describe(self) -> str:
        """What ``%sandbox status`` prints."""
        settings = (f"provider {self.provider}, TTL {self.ttl_minutes:g} min, "
                    f"template {self.template_id or 'none'}, "
                    f"network {network_text(self.network)}")
        if self.sandbox_id is None:
            return f"No sandbox yet: the first cell creates one ({settings}).\n"
        record = self.manager.status(self.sandbox_id)
        lines = [f"sandbox:   {record.sandbox_id} ({record.name})",
                 f"status:    {record.status.value}" + (f" ({record.error})" if record.error else ""),
                 f"provider:  {record.provider}",
                 f"template:  {record.template_id or 'none'}"]
        if record.status is Status.ACTIVE and record.expires_at is not None:
            left = max(0, int(record.expires_at - self.manager.clock()))
            lines.append(f"expires:   in {left // 60} min {left % 60} s "
                         f"(TTL {record.ttl_minutes:g} min, extended by every cell)")
        keep = "kept" if self.keep else "stopped"
        lines.append(f"on kernel shutdown: {keep}")
        lines.append(f"next sandbox: {settings}")
        return "\n".join(lines) + "\n"


__all__ = ["SESSION", "KernelSandbox", "SandboxError"]
