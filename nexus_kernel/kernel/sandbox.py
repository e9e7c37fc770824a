"""The one sandbox a kernel runs its cells in, and the ``%sandbox`` lines that steer it.

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

import shlex

from ..errors import SandboxError
from ..manager import SandboxManager
from ..models import SandboxRecord, Status
from ..untrusted import TRUST_OFF, TRUST_WARNING
from ..validation import MAX_TIMEOUT, check_timeout, check_ttl

#: Every cell of a kernel runs in this session of its sandbox (one per language).
SESSION = "kernel"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class UsageError(ValueError):
    """A bad ``%sandbox`` line; the message says what to type instead."""


def _number(text: str, usage: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{usage}; got {text!r}") from None


def _flag(value: str, what: str) -> bool:
    low = value.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise UsageError(f"{what} takes on or off, got {value!r}")


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
        self.network = settings.network
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
                    f"network {'on' if self.network else 'off'}")
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


class SandboxCommands:
    """The ``%sandbox`` lines the kernel handles itself; each returns the text to print."""

    USAGE = ("%sandbox status | pause | resume | stop | attach ID | ttl MINUTES | "
             "timeout SECONDS|off | provider NAME | template ID|none | network on|off | "
             "keep on|off | trust on|off | help")

    def __init__(self, sandbox: KernelSandbox) -> None:
        self.sandbox = sandbox

    def run(self, line: str) -> str:
        """Handle one ``%sandbox`` line (its arguments); :class:`UsageError` when bad."""
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise UsageError(f"%sandbox: {exc}") from None
        if not words:
            raise UsageError(f"usage: {self.USAGE}")
        handler = getattr(self, "cmd_" + words[0].replace("-", "_"), None)
        if handler is None:
            raise UsageError(f"unknown %sandbox command {words[0]!r}; usage: {self.USAGE}")
        try:
            return handler(*words[1:])
        except TypeError:
            raise UsageError(f"wrong arguments for %sandbox {words[0]}; usage: {self.USAGE}") from None

    def _need(self) -> str:
        if self.sandbox.sandbox_id is None:
            raise UsageError("no sandbox yet: run a cell first (it creates one)")
        return self.sandbox.sandbox_id

    def cmd_help(self) -> str:
        return f"usage: {self.USAGE}\n"

    def cmd_status(self) -> str:
        return self.sandbox.describe()

    def cmd_pause(self) -> str:
        record = self.sandbox.manager.pause(self._need())
        return f"Paused sandbox {record.sandbox_id} (the next cell resumes it)\n"

    def cmd_resume(self) -> str:
        record = self.sandbox.manager.resume(self._need())
        return f"Resumed sandbox {record.sandbox_id}\n"

    def cmd_stop(self) -> str:
        sandbox_id = self._need()
        self.sandbox.manager.stop(sandbox_id)
        self.sandbox.sandbox_id = None
        return f"Stopped sandbox {sandbox_id}; the next cell creates a new one\n"

    def cmd_attach(self, sandbox_id: str) -> str:
        record = self.sandbox.manager.status(sandbox_id)
        if record.status not in (Status.ACTIVE, Status.PAUSED):
            raise UsageError(f"sandbox {sandbox_id} is {record.status.value}; attach to an "
                             "active or paused one (see nexus sandbox list)")
        self.sandbox.sandbox_id = record.sandbox_id
        self.sandbox.attached = True
        self.sandbox.keep = True
        return (f"Attached to sandbox {record.sandbox_id} ({record.name}); it is kept when the "
                "kernel shuts down (%sandbox keep off to stop it then)\n")

    def cmd_ttl(self, minutes: str) -> str:
        ttl = check_ttl(_number(minutes, "%sandbox ttl takes minutes, e.g. 30"))
        self.sandbox.ttl_minutes = ttl
        if self.sandbox.sandbox_id is not None:
            record = self.sandbox.manager.touch(self.sandbox.sandbox_id, ttl_minutes=ttl)
            if record.status is Status.ACTIVE:
                return f"TTL of {record.sandbox_id} is now {ttl:g} min (from now)\n"
        return f"TTL is now {ttl:g} min\n"

    def cmd_timeout(self, seconds: str) -> str:
        if seconds.lower() in ("off", "none"):
            self.sandbox.cell_timeout = MAX_TIMEOUT
            return "Cells may run without a time limit (24 h)\n"
        seconds_value = _number(seconds, "%sandbox timeout takes seconds or off")
        self.sandbox.cell_timeout = check_timeout(seconds_value)
        return f"Each cell may now run for {self.sandbox.cell_timeout:g} s\n"

    def cmd_provider(self, name: str) -> str:
        self.sandbox.manager.provider(name)  # unknown / unavailable -> a clear error now
        self.sandbox.provider = name
        return self._next_sandbox(f"Provider is now {name}")

    def cmd_template(self, template_id: str) -> str:
        self.sandbox.template_id = None if template_id.lower() == "none" else template_id
        return self._next_sandbox(f"Template is now {self.sandbox.template_id or 'none'}")

    def cmd_network(self, value: str) -> str:
        self.sandbox.network = _flag(value, "%sandbox network")
        return self._next_sandbox(f"Network is now {'on' if self.sandbox.network else 'off'}")

    def cmd_trust(self, value: str) -> str:
        self.sandbox.trusted_output = _flag(value, "%sandbox trust")
        if self.sandbox.trusted_output:
            return TRUST_WARNING
        return TRUST_OFF

    def cmd_keep(self, value: str) -> str:
        self.sandbox.keep = _flag(value, "%sandbox keep")
        if self.sandbox.keep:
            return "The sandbox is kept when the kernel shuts down\n"
        return "The sandbox is stopped when the kernel shuts down\n"

    def _next_sandbox(self, text: str) -> str:
        if self.sandbox.sandbox_id is None:
            return text + "\n"
        return (f"{text} for the next sandbox; {self.sandbox.sandbox_id} keeps its own "
                "(%sandbox stop, then run a cell, to switch)\n")


__all__ = ["SESSION", "KernelSandbox", "SandboxCommands", "SandboxError", "UsageError"]
