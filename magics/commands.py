"""The ``%sandbox`` subcommands: one argparse parser each, and a small router.

As in jupysql's ``magic_cmd``, the parsers' ``error()`` raises IPython's ``UsageError``, so
bad input shows as one line (``UsageError: %sandbox create: argument --ttl: ...``) with no
host traceback. Each handler takes the :class:`~magics.sandbox_magics.SandboxMagics`
instance (manager, current sandbox, defaults) and the parsed arguments.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

from IPython.core.error import UsageError

from nexus_kernel.manager import describe
from nexus_kernel.untrusted import TRUST_OFF, TRUST_WARNING
from nexus_kernel.validation import normalize_language

from .display import SandboxCard, SandboxTable
from .streaming import CellOutput, SandboxCodeError, run_in_cell

if TYPE_CHECKING:
    from .sandbox_magics import SandboxMagics


class _HelpShown(Exception):
    """``-h`` printed a parser's help: the magic returns quietly."""


class MagicParser(argparse.ArgumentParser):
    """An argparse parser for a magic: errors become one-line ``UsageError``s."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError(f"{self.prog}: {message or 'bad arguments'}")
        raise _HelpShown


def _number(what: str, example: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of {what} (e.g. {example})"
            ) from None

    return parse


@dataclass(frozen=True)
class Command:
    """One subcommand: its parser, its handler, and whether it takes the cell's body."""

    name: str
    parser: MagicParser
    handler: Callable[[SandboxMagics, argparse.Namespace, str | None], Any]
    cell: bool = False


def _parser(name: str, description: str, *, cell: bool = False) -> MagicParser:
    prog = f"%%sandbox {name}" if cell else f"%sandbox {name}"
    return MagicParser(prog=prog, description=description, add_help=True)


def _default(option: str, built_in: str) -> str:
    """Where a default comes from: the magics' %config, else the NEXUS_* setting (templates
    have none), else the built-in value, as the manager resolves it."""
    setting = "" if option == "template" else f"NEXUS_{option.upper()}, else "
    return f"(default: %%config SandboxMagics.{option}, else {setting}{built_in})"


def _with_id(parser: MagicParser, what: str = "sandbox id or name") -> MagicParser:
    parser.add_argument("sandbox", nargs="?", metavar="ID", help=f"{what} (default: current)")
    return parser


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
        network=True if args.network else magics.network,
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


def cmd_run(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Run the cell's body in the sandbox, streaming its output into the cell."""
    sandbox_id = magics.resolve(args.sandbox)
    language = normalize_language(args.language or magics.language)
    result = run_in_cell(
        magics.manager,
        sandbox_id,
        language,
        cell or "",
        timeout=args.timeout if args.timeout is not None else magics.timeout,
        session=magics.run_session(args.session, args.fresh),
        output=CellOutput(magics.shell),
        trusted_output=magics.trusted_output,
    )
    if result.exit_code != 0 and (args.raise_error or magics.raise_error):
        raise SandboxCodeError(sandbox_id, result)


def cmd_trust(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    """Show sandbox output as it is (on) or made inert (off, the default)."""
    magics.trusted_output = args.state == "on"
    print(TRUST_WARNING if magics.trusted_output else TRUST_OFF, end="")


def cmd_help(magics: SandboxMagics, args: argparse.Namespace, cell: str | None) -> None:
    print(usage())


# --------------------------------------------------------------------------- parsers


def _build() -> dict[str, Command]:
    commands: list[Command] = []

    p = _parser("create", "Create a sandbox; it becomes this notebook's current sandbox.")
    p.add_argument("name")
    p.add_argument("--ttl", type=_number("minutes", "30"), metavar="MINUTES",
                   help="idle minutes before it expires " + _default("ttl_minutes", "10"))
    p.add_argument("--provider", help="local, docker, e2b or modal " + _default("provider", "local"))
    p.add_argument("--template", metavar="ID",
                   help="template (local) or image " + _default("template", "none"))
    p.add_argument("--network", action="store_true", default=None,
                   help="allow network access " + _default("network", "off"))
    commands.append(Command("create", p, cmd_create))

    commands.append(Command("list", _parser("list", "List your sandboxes."), cmd_list))
    for name, handler, text in (
        ("status", cmd_status, "Show a sandbox's status."),
        ("pause", cmd_pause, "Pause a sandbox (its TTL clock stops)."),
        ("resume", cmd_resume, "Resume a paused sandbox."),
        ("stop", cmd_stop, "Stop a sandbox: every process and file is gone."),
        ("use", cmd_use, "Make a sandbox the current one (without ID: show the current one)."),
    ):
        commands.append(Command(name, _with_id(_parser(name, text)), handler))

    p = _parser("upload", "Copy a host file into the sandbox.")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("remote", nargs="?", metavar="REMOTE", help="path in the sandbox")
    p.add_argument("--sandbox", "-s", metavar="ID", help="sandbox (default: current)")
    commands.append(Command("upload", p, cmd_upload))

    p = _parser("download", "Copy a file out of the sandbox.")
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("local", nargs="?", metavar="LOCAL", help="host path")
    p.add_argument("--sandbox", "-s", metavar="ID", help="sandbox (default: current)")
    commands.append(Command("download", p, cmd_download))

    p = _with_id(_parser("interrupt", "Interrupt code running in the sandbox."))
    p.add_argument("--session", metavar="NAME", help="only this session's run")
    commands.append(Command("interrupt", p, cmd_interrupt))

    p = _with_id(_parser("run", "Run the cell's body in the sandbox.", cell=True))
    p.add_argument("-l", "--language", metavar="LANG", help="python, bash or javascript")
    p.add_argument("--timeout", type=_number("seconds", "60"), metavar="SECONDS",
                   help="seconds the code may run " + _default("timeout", "30"))
    p.add_argument("--session", metavar="NAME", help="persistent session (default: main)")
    p.add_argument("--fresh", action="store_true", help="run in a fresh process, no session")
    p.add_argument("--raise-error", action="store_true",
                   help="fail the cell (raise) when the code fails")
    commands.append(Command("run", p, cmd_run, cell=True))

    p = _parser("trust", "Trust this notebook's sandbox output (scripts, widgets) or not.")
    p.add_argument("state", choices=("on", "off"))
    commands.append(Command("trust", p, cmd_trust))

    commands.append(Command("help", _parser("help", "Show this help."), cmd_help))
    return {command.name: command for command in commands}


COMMANDS = _build()


def usage() -> str:
    """One usage line per subcommand."""
    lines = ["Usage of the nexus sandbox magics:"]
    for command in COMMANDS.values():
        text = command.parser.format_usage().strip().removeprefix("usage: ")
        lines.append("  " + " ".join(text.split()))
    lines.append("Options: %config SandboxMagics   Details: %sandbox SUBCOMMAND -h")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- router


def split(line: str) -> list[str]:
    """Shell-like split of the magic's line; unbalanced quotes are a UsageError."""
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:
        raise UsageError(f"%sandbox: cannot parse {line.strip()!r}: {exc}") from None


def dispatch(magics: SandboxMagics, line: str, cell: str | None) -> Any:
    """Route ``%sandbox LINE`` / ``%%sandbox LINE`` + cell to its subcommand."""
    tokens = split(line)
    if cell is not None and (not tokens or tokens[0].startswith("-")):
        tokens = ["run", *tokens]  # a bare %%sandbox cell runs with the defaults
    if not tokens or tokens[0] in ("-h", "--help"):
        print(usage())
        return None
    name, rest = tokens[0], tokens[1:]
    command = COMMANDS.get(name)
    if command is None:
        raise UsageError(
            f"unknown subcommand {name!r}; use one of: {', '.join(COMMANDS)} (%sandbox help)"
        )
    if command.cell and cell is None:
        raise UsageError(f"{name} runs a cell: put %%sandbox {name} on the first line of a cell")
    if cell is not None and not command.cell:
        raise UsageError(f"%%sandbox {name} takes no cell body; use %sandbox {name} on one line")
    try:
        args = command.parser.parse_args(rest)
    except _HelpShown:
        return None
    return command.handler(magics, args, cell)
