"""The handlers of the magics' ``%sandbox`` subcommands, and the router.

Lines are parsed by the shared grammar (:mod:`nexus_kernel.sandbox_lines`, also the proxy
kernel's); bad input is its one-line :class:`~nexus_kernel.errors.UsageError`. Each handler
takes the :class:`~magics.sandbox_magics.SandboxMagics` instance (manager, current sandbox,
defaults) and the parsed arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from nexus_kernel import sandbox_lines
from nexus_kernel.egress import denial_line, events_table
from nexus_kernel.errors import UsageError
from nexus_kernel.manager import describe
from nexus_kernel.models import HARD_END, cap_warning, usage_table
from nexus_kernel.untrusted import TRUST_OFF, TRUST_WARNING
from nexus_kernel.validation import normalize_language

from .display import SandboxCard, SandboxTable
from .streaming import CellOutput, SandboxCodeError, run_in_cell

if TYPE_CHECKING:
    from .sandbox_magics import SandboxMagics


# ------------------------------------------------------------------------- handlers


def _card(magics: SandboxMagics, record: Any, title: str = "") -> SandboxCard:
    return SandboxCard(describe(record), title, current=record.sandbox_id == magics.current)


def cmd_create(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> SandboxCard:
    """Create a sandbox with the notebook's defaults; it becomes the current sandbox."""
    record = magics.manager.create(
        args.name,
        args.ttl if args.ttl is not None else magics.ttl_minutes,
        args.template or magics.template,
        provider=args.provider or magics.provider,
        network=args.allow or (True if args.network else magics.network),
    )
    magics.current = record.sandbox_id
    return _card(magics, record, f"created sandbox {record.sandbox_id}")


def cmd_list(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> SandboxTable:
    """This user's sandboxes (stopped ones are kept for a day)."""
    return SandboxTable([describe(r) for r in magics.manager.list()], magics.current)


def cmd_status(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> SandboxCard:
    return _card(magics, magics.manager.status(magics.resolve(args.sandbox)))


def cmd_pause(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> SandboxCard:
    return _card(magics, magics.manager.pause(magics.resolve(args.sandbox)))


def cmd_resume(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> SandboxCard:
    return _card(magics, magics.manager.resume(magics.resolve(args.sandbox)))


def cmd_stop(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> SandboxCard:
    return _card(magics, magics.manager.stop(magics.resolve(args.sandbox)))


def cmd_use(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> SandboxCard:
    """Make ID the current sandbox (without ID: show the current one)."""
    sandbox_id = magics.resolve(args.sandbox)
    record = magics.manager.status(sandbox_id)
    magics.current = record.sandbox_id
    return _card(magics, record)


def cmd_upload(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Copy a host file into the sandbox (REMOTE is relative to the sandbox's home)."""
    sandbox_id = magics.resolve(args.sandbox)
    local = Path(args.local).expanduser()
    try:
        data = local.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {str(local)!r}: {exc.strerror or exc}") from None
    remote = args.remote or local.name
    size = magics.manager.put_file(sandbox_id, remote, data)
    print(f"uploaded {local} to {sandbox_id}:{remote} ({size} bytes)")


def cmd_download(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Copy a file out of the sandbox (LOCAL defaults to its name in the current directory)."""
    sandbox_id = magics.resolve(args.sandbox)
    data = magics.manager.get_file(sandbox_id, args.remote)
    local = Path(args.local or PurePosixPath(args.remote).name).expanduser()
    if local.is_dir():
        local = local / PurePosixPath(args.remote).name
    try:
        local.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {str(local)!r}: {exc.strerror or exc}") from None
    print(f"downloaded {sandbox_id}:{args.remote} to {local} ({len(data)} bytes)")


def cmd_interrupt(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Interrupt running code in the sandbox (every run, or one session's)."""
    sandbox_id = magics.resolve(args.sandbox)
    count = magics.manager.interrupt(sandbox_id, args.session)
    print(f"interrupted {count} run(s) in {sandbox_id}")


def cmd_usage(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Print why this notebook's last ``%%sandbox`` runs ended and what they cost."""
    print(usage_table(list(magics.usage_log)), end="")


def cmd_events(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Print the network requests a sandbox's allow-list denied."""
    print(events_table(magics.manager.network_events(magics.resolve(args.sandbox))), end="")


def cmd_run(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Run the cell's body in the sandbox, streaming its output into the cell."""
    sandbox_id = magics.resolve(args.sandbox)
    language = normalize_language(args.language or magics.language)
    _warn_of_the_cap(magics, sandbox_id)
    magics.last_cell = label = f"In [{magics.shell.execution_count}]" if magics.shell else "a cell"
    note, checkpoint = magics.checkpoints.before_cell(sandbox_id, label)
    if note:
        sys.stderr.write(note)
    try:
        result = run_in_cell(
            magics.manager, sandbox_id, language, cell or "",
            timeout=args.timeout if args.timeout is not None else magics.timeout,
            session=magics.run_session(args.session, args.fresh),
            output=CellOutput(magics.shell),
            trusted_output=magics.trusted_output,
            on_result=lambda result: _finished(magics, sandbox_id, result),
            checkpoint=checkpoint,
        )
    finally:
        magics.checkpoints.after_cell(sandbox_id, checkpoint)
    if result.exit_code != 0 and (args.raise_error or magics.raise_error):
        raise SandboxCodeError(sandbox_id, result)


def _finished(magics: SandboxMagics, sandbox_id: str, result: Any) -> None:
    """Log the run's usage; say on stderr what its network allow-list denied."""
    magics.log_usage(sandbox_id, result)
    for event in result.network_denials:
        sys.stderr.write(denial_line(event) + "\n")


def _warn_of_the_cap(magics: SandboxMagics, sandbox_id: str) -> None:
    """Once per sandbox, ahead of its platform's runtime cap: say it ends whatever its TTL."""
    record = magics.manager.get(sandbox_id)
    warning = cap_warning(record, magics.manager.clock())
    key = (sandbox_id, record.handle.get(HARD_END))
    if warning is not None and key not in magics.warned_caps:
        magics.warned_caps.add(key)
        sys.stderr.write(warning)


def cmd_trust(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Show sandbox output as it is (on) or made inert (off, the default)."""
    magics.trusted_output = args.trust
    print(TRUST_WARNING if magics.trusted_output else TRUST_OFF, end="")


def cmd_undo(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Put the current sandbox back as it was before the last ``%%sandbox`` cell."""
    print(magics.checkpoints.undo(magics.resolve(None)), end="")


def cmd_checkpoint(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    print(magics.checkpoints.save(magics.resolve(None), args.name, magics.last_cell), end="")


def cmd_restore(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    print(magics.checkpoints.restore(magics.resolve(None), args.name), end="")


def cmd_fork(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> str:
    """Fork the current sandbox; its id is the value (``fork = %sandbox fork``, then
    ``%%sandbox run {fork}``)."""
    text, new = magics.checkpoints.fork(
        magics.resolve(None), "%sandbox use {0} makes it the current sandbox here, "
        "%%sandbox run {0} runs one cell in it; the Nexus Sandbox kernel: %sandbox attach {0}")
    print(text, end="")
    return new


def cmd_checkpoints(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    if args.keep is not None:
        magics.checkpoints.set_keep(args.keep, magics.current)
    print(magics.checkpoints.describe(magics.current), end="")


Handler = Callable[["SandboxMagics", argparse.Namespace, "str | None"], Any]

#: The magics' handler of each subcommand the grammar gives them.
HANDLERS: dict[str, Handler] = {
    "create": cmd_create, "list": cmd_list, "status": cmd_status, "pause": cmd_pause,
    "resume": cmd_resume, "stop": cmd_stop, "use": cmd_use, "upload": cmd_upload,
    "download": cmd_download, "interrupt": cmd_interrupt, "run": cmd_run, "trust": cmd_trust,
    "usage": cmd_usage, "events": cmd_events, "undo": cmd_undo, "checkpoint": cmd_checkpoint,
    "restore": cmd_restore, "checkpoints": cmd_checkpoints, "fork": cmd_fork,
}


def dispatch(magics: SandboxMagics, line: str, cell: str | None) -> Any:
    """Route ``%sandbox LINE`` / ``%%sandbox LINE`` + cell to its subcommand."""
    parsed = sandbox_lines.parse(line, sandbox_lines.MAGICS, cell=cell is not None)
    if parsed.help is not None:
        print(parsed.help)
        return None
    return HANDLERS[parsed.name](magics, parsed.args, cell)
