"""The kernel's handlers of ``%sandbox`` lines (the grammar is :mod:`nexus_kernel.sandbox_lines`,
shared with the magics): each steers the kernel's :class:`~nexus_kernel.kernel.sandbox.KernelSandbox`
and returns the text to print."""

from __future__ import annotations

import argparse

from .. import sandbox_lines
from ..egress import events_table, network_text
from ..errors import UsageError
from ..models import Status, usage_table
from ..untrusted import TRUST_OFF, TRUST_WARNING
from ..validation import MAX_TIMEOUT, check_timeout, check_ttl
from .sandbox import KernelSandbox


class SandboxCommands:
    """The ``%sandbox`` lines the kernel handles itself; each returns the text to print."""

    def __init__(self, sandbox: KernelSandbox) -> None:
        self.sandbox = sandbox

    def run(self, line: str) -> str:
        """Handle one ``%sandbox`` line (its arguments); :class:`UsageError` when bad."""
        parsed = sandbox_lines.parse(line, sandbox_lines.KERNEL)
        if parsed.help is not None:
            return parsed.help + "\n"
        return getattr(self, "cmd_" + parsed.name)(parsed.args)

    def _need(self) -> str:
        if self.sandbox.sandbox_id is None:
            raise UsageError("no sandbox yet: run a cell first (it creates one)")
        return self.sandbox.sandbox_id

    def cmd_status(self, args: argparse.Namespace) -> str:
        return self.sandbox.describe()

    def cmd_usage(self, args: argparse.Namespace) -> str:
        return usage_table(list(self.sandbox.usage_log))

    def cmd_pause(self, args: argparse.Namespace) -> str:
        record = self.sandbox.manager.pause(self._need())
        return f"Paused sandbox {record.sandbox_id} (the next cell resumes it)\n"

    def cmd_resume(self, args: argparse.Namespace) -> str:
        record = self.sandbox.manager.resume(self._need())
        return f"Resumed sandbox {record.sandbox_id}\n"

    def cmd_stop(self, args: argparse.Namespace) -> str:
        sandbox_id = self._need()
        self.sandbox.manager.stop(sandbox_id)
        self.sandbox.sandbox_id = None
        return f"Stopped sandbox {sandbox_id}; the next cell creates a new one\n"

    def cmd_attach(self, args: argparse.Namespace) -> str:
        record = self.sandbox.manager.status(args.sandbox)
        if record.status not in (Status.ACTIVE, Status.PAUSED):
            raise UsageError(f"sandbox {args.sandbox} is {record.status.value}; attach to an "
                             "active or paused one (see nexus sandbox list)")
        self.sandbox.sandbox_id = record.sandbox_id
        self.sandbox.attached = True
        self.sandbox.keep = True
        return (f"Attached to sandbox {record.sandbox_id} ({record.name}); it is kept when the "
                "kernel shuts down (%sandbox keep off to stop it then)\n")

    def cmd_ttl(self, args: argparse.Namespace) -> str:
        ttl = check_ttl(args.minutes)
        self.sandbox.ttl_minutes = ttl
        if self.sandbox.sandbox_id is not None:
            record = self.sandbox.manager.touch(self.sandbox.sandbox_id, ttl_minutes=ttl)
            if record.status is Status.ACTIVE:
                return f"TTL of {record.sandbox_id} is now {ttl:g} min (from now)\n"
        return f"TTL is now {ttl:g} min\n"

    def cmd_timeout(self, args: argparse.Namespace) -> str:
        if args.seconds is None:
            self.sandbox.cell_timeout = MAX_TIMEOUT
            return "Cells may run without a time limit (24 h)\n"
        self.sandbox.cell_timeout = check_timeout(args.seconds)
        return f"Each cell may now run for {self.sandbox.cell_timeout:g} s\n"

    def cmd_provider(self, args: argparse.Namespace) -> str:
        self.sandbox.manager.provider(args.provider)  # unknown / unavailable -> a clear error now
        self.sandbox.provider = args.provider
        return self._next_sandbox(f"Provider is now {args.provider}")

    def cmd_template(self, args: argparse.Namespace) -> str:
        self.sandbox.template_id = args.template
        return self._next_sandbox(f"Template is now {self.sandbox.template_id or 'none'}")

    def cmd_network(self, args: argparse.Namespace) -> str:
        self.sandbox.network = args.network
        return self._next_sandbox(f"Network is now {network_text(self.sandbox.network)}")

    def cmd_events(self, args: argparse.Namespace) -> str:
        return events_table(self.sandbox.manager.network_events(self._need()))

    def cmd_trust(self, args: argparse.Namespace) -> str:
        self.sandbox.trusted_output = args.trust
        return TRUST_WARNING if args.trust else TRUST_OFF

    def cmd_undo(self, args: argparse.Namespace) -> str:
        return self.sandbox.checkpoints.undo(self._need())

    def cmd_checkpoint(self, args: argparse.Namespace) -> str:
        return self.sandbox.checkpoints.save(self._need(), args.name, self.sandbox.last_cell)

    def cmd_restore(self, args: argparse.Namespace) -> str:
        return self.sandbox.checkpoints.restore(self._need(), args.name)

    def cmd_fork(self, args: argparse.Namespace) -> str:
        text, _ = self.sandbox.checkpoints.fork(
            self._need(), "A second notebook on the Nexus Sandbox kernel works in it after "
            "%sandbox attach {0} (nexus sandbox run {0} --session kernel from a shell)")
        return text

    def cmd_checkpoints(self, args: argparse.Namespace) -> str:
        if args.keep is not None:
            self.sandbox.checkpoints.set_keep(args.keep, self.sandbox.sandbox_id)
        return self.sandbox.checkpoints.describe(self.sandbox.sandbox_id)

    def cmd_keep(self, args: argparse.Namespace) -> str:
        self.sandbox.keep = args.keep
        if self.sandbox.keep:
            return "The sandbox is kept when the kernel shuts down\n"
        return "The sandbox is stopped when the kernel shuts down\n"

    def _next_sandbox(self, text: str) -> str:
        if self.sandbox.sandbox_id is None:
            return text + "\n"
        return (f"{text} for the next sandbox; {self.sandbox.sandbox_id} keeps its own "
                "(%sandbox stop, then run a cell, to switch)\n")
