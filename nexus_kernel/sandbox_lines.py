"""The ``%sandbox`` grammar: one parser, one help text and one error for both surfaces.

The IPython magics (``magics/``) and the proxy kernel (``nexus_kernel/kernel/``) both read
``%sandbox …`` lines and ``%%sandbox …`` cell headers with :func:`parse`, which splits them as
a shell does (quotes, ``# comments``) and checks them with one argparse parser per subcommand.
Every subcommand is declared once, in :data:`SUBCOMMANDS`, with the surfaces that have it:
the kernel's extra lines (``attach``, ``ttl``, ``timeout``, ``provider``, ``template``,
``network``, ``keep``) are marked kernel-only, the magics' sandbox management (``create``,
``list``, ``use``, files, ``interrupt``, ``run``) magics-only. Bad input is one
:class:`~nexus_kernel.errors.UsageError` whose message says what to type instead; parsing
never prints: ``-h`` and ``help`` come back as text on the :class:`SandboxLine`.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from .egress import parse_policy
from .errors import InvalidArgumentError, UsageError

MAGICS = "magics"
KERNEL = "kernel"
SURFACES = (MAGICS, KERNEL)
#: How each surface's help names the other one.
_WHERE = {
    MAGICS: "the %sandbox magics (%load_ext nexus_kernel in an IPython kernel)",
    KERNEL: "the Nexus Sandbox kernel",
}
_ON = ("on", "1", "true", "yes")
_OFF = ("off", "0", "false", "no")


@dataclass(frozen=True)
class SandboxLine:
    """A parsed ``%sandbox`` line: the subcommand, its arguments, and ``help`` text when
    the line asked for help (``-h``, ``help``, a bare ``%sandbox``) instead of an action."""

    name: str
    args: argparse.Namespace
    help: str | None = None


class _HelpShown(Exception):
    """``-h``: the parser's help, handed back instead of printed."""


class LineParser(argparse.ArgumentParser):
    """An argparse parser for one subcommand: errors are one-line :class:`UsageError`\\ s
    (``%sandbox create: argument --ttl: …``), help is returned, never printed."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, prog=self.prog)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        # never SystemExit inside a notebook's kernel, whatever argparse action asks for it
        raise UsageError((message or "bad arguments").strip(), prog=self.prog)

    def print_help(self, file: Any = None) -> NoReturn:
        raise _HelpShown(self.format_help())


# ------------------------------------------------------------------ argument types


def number(what: str, example: str) -> Callable[[str], float]:
    """An argparse type: a float, else "'x' is not a number of WHAT (e.g. EXAMPLE)"."""
    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of {what} (e.g. {example})") from None

    return parse


def on_off(text: str) -> bool:
    """An argparse type: ``on`` / ``off`` (also 1/0, true/false, yes/no) as a bool."""
    low = text.strip().lower()
    if low in _ON or low in _OFF:
        return low in _ON
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'on', 'off')")


def network_policy(text: str) -> bool | tuple[str, ...]:
    """An argparse type: on/off (all/none), or an allow-list of HOST[:PORT] separated by
    commas: True, False or the normalised entries."""
    try:
        network, allow = parse_policy(text)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return allow or network


def _seconds_or_off(text: str) -> float | None:
    """``off`` / ``none``: no limit (None); else a number of seconds."""
    return None if text.lower() in ("off", "none") else number("seconds", "60 or off")(text)


def _count_or_off(text: str) -> int:
    """``off``: 0; else a whole number."""
    if text.lower() in _OFF:
        return 0
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of cells (e.g. 5 or off)") from None


def _checkpoints(p: LineParser, surface: str) -> None:
    p.add_argument("keep", nargs="?", metavar="N|off", type=_count_or_off,
                   help="keep automatic checkpoints of the last N cells (off: none; default: "
                        "NEXUS_CHECKPOINTS, else 5)")


def _id_or_none(text: str) -> str | None:
    return None if text.lower() == "none" else text


# ------------------------------------------------------------------ the subcommands


@dataclass(frozen=True)
class Subcommand:
    """One ``%sandbox`` subcommand: where it exists, whether it takes the cell's body, and
    its arguments: one ``value`` (dest, metavar, type), or ``declare(parser, surface)``."""

    name: str
    summary: str
    surfaces: tuple[str, ...] = SURFACES
    declare: Callable[[LineParser, str], None] | None = None
    cell: bool = False
    value: tuple[str, str, Callable[[str], Any]] | None = None

    def parser(self, surface: str) -> LineParser:
        prog = f"%%sandbox {self.name}" if self.cell else f"%sandbox {self.name}"
        parser = LineParser(prog=prog, description=self.summary)
        if self.declare is not None:
            self.declare(parser, surface)
        if self.value is not None:
            dest, metavar, kind = self.value
            parser.add_argument(dest, metavar=metavar, type=kind)
        return parser


def _magics_default(option: str, built_in: str) -> str:
    """Where a magics default comes from: %config, else the NEXUS_* setting (templates
    have none), else the built-in value, as the manager resolves it."""
    setting = "" if option == "template" else f"NEXUS_{option.upper()}, else "
    return f"(default: %%config SandboxMagics.{option}, else {setting}{built_in})"


def _create(p: LineParser, surface: str) -> None:
    p.add_argument("name")
    p.add_argument("--ttl", type=number("minutes", "30"), metavar="MINUTES",
                   help="idle minutes before it expires " + _magics_default("ttl_minutes", "10"))
    p.add_argument("--provider",
                   help="local, docker, e2b or modal " + _magics_default("provider", "local"))
    p.add_argument("--template", metavar="ID",
                   help="template (local) or image " + _magics_default("template", "none"))
    p.add_argument("--network", action="store_true", default=None,
                   help="allow all network access " + _magics_default("network", "off"))
    p.add_argument("--allow", action="append", metavar="HOST[:PORT]",
                   help="allow only this host (bare name: ports 80 and 443); repeat for more")


def _sandbox_id(p: LineParser, surface: str) -> None:
    """The magics name any sandbox (default: the current one); the kernel has its own."""
    if surface == MAGICS:
        p.add_argument("sandbox", nargs="?", metavar="ID", help="sandbox id or name (default: current)")


def _upload(p: LineParser, surface: str) -> None:
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("remote", nargs="?", metavar="REMOTE", help="path in the sandbox")
    p.add_argument("--sandbox", "-s", metavar="ID", help="sandbox (default: current)")


def _download(p: LineParser, surface: str) -> None:
    p.add_argument("remote", metavar="REMOTE")
    p.add_argument("local", nargs="?", metavar="LOCAL", help="host path")
    p.add_argument("--sandbox", "-s", metavar="ID", help="sandbox (default: current)")


def _interrupt(p: LineParser, surface: str) -> None:
    _sandbox_id(p, surface)
    p.add_argument("--session", metavar="NAME", help="only this session's run")


def _run(p: LineParser, surface: str) -> None:
    _sandbox_id(p, surface)
    p.add_argument("-l", "--language", metavar="LANG", help="python, bash or javascript")
    p.add_argument("--timeout", type=number("seconds", "60"), metavar="SECONDS",
                   help="seconds the code may run " + _magics_default("timeout", "30"))
    p.add_argument("--session", metavar="NAME", help="persistent session (default: main)")
    p.add_argument("--fresh", action="store_true", help="run in a fresh process, no session")
    p.add_argument("--raise-error", action="store_true",
                   help="fail the cell (raise) when the code fails")


_BOTH, _MAGICS_ONLY, _KERNEL_ONLY = SURFACES, (MAGICS,), (KERNEL,)

#: Every subcommand, in the order the help lists them.
SUBCOMMANDS: dict[str, Subcommand] = {s.name: s for s in (
    Subcommand("create", "Create a sandbox; it becomes this notebook's current sandbox.",
               _MAGICS_ONLY, _create),
    Subcommand("list", "List your sandboxes.", _MAGICS_ONLY),
    Subcommand("status", "Show a sandbox's status.", _BOTH, _sandbox_id),
    Subcommand("pause", "Pause a sandbox (its TTL clock stops).", _BOTH, _sandbox_id),
    Subcommand("resume", "Resume a paused sandbox.", _BOTH, _sandbox_id),
    Subcommand("stop", "Stop a sandbox: every process and file is gone.", _BOTH, _sandbox_id),
    Subcommand("use", "Make a sandbox the current one (without ID: show the current one).",
               _MAGICS_ONLY, _sandbox_id),
    Subcommand("attach", "Run the next cells in this active or paused sandbox (kept at "
               "shutdown).", _KERNEL_ONLY, value=("sandbox", "ID", str)),
    Subcommand("upload", "Copy a host file into the sandbox.", _MAGICS_ONLY, _upload),
    Subcommand("download", "Copy a file out of the sandbox.", _MAGICS_ONLY, _download),
    Subcommand("interrupt", "Interrupt code running in the sandbox.", _MAGICS_ONLY, _interrupt),
    Subcommand("run", "Run the cell's body in the sandbox.", _MAGICS_ONLY, _run, cell=True),
    Subcommand("ttl", "Set the idle minutes before the sandbox expires (this one and the next).",
               _KERNEL_ONLY, value=("minutes", "MINUTES", number("minutes", "30"))),
    Subcommand("timeout", "Set the seconds a cell may run (off: 24 h).", _KERNEL_ONLY,
               value=("seconds", "SECONDS|off", _seconds_or_off)),
    Subcommand("provider", "Set the provider (local, docker, e2b or modal) of the next "
               "sandbox.", _KERNEL_ONLY, value=("provider", "NAME", str)),
    Subcommand("template", "Set the template (local) or image of the next sandbox.",
               _KERNEL_ONLY, value=("template", "ID|none", _id_or_none)),
    Subcommand("network", "Give the next sandbox network access (on), none (off), or only "
               "to an allow-list (pypi.org,api.example.com:443; a bare name: ports 80 and 443).",
               _KERNEL_ONLY, value=("network", "on|off|HOST[:PORT],...", network_policy)),
    Subcommand("events", "Show the network requests the sandbox's allow-list denied.", _BOTH,
               _sandbox_id),
    Subcommand("keep", "Keep the sandbox when the kernel shuts down, or stop it.", _KERNEL_ONLY,
               value=("keep", "on|off", on_off)),
    Subcommand("trust", "Trust this notebook's sandbox output (scripts, widgets) or not.",
               value=("trust", "on|off", on_off)),
    Subcommand("undo", "Put variables and files back as they were before the last cell "
               "(repeatable).", _BOTH),
    Subcommand("checkpoint", "Save the sandbox's state (variables and files) under a name.",
               _BOTH, value=("name", "NAME", str)),
    Subcommand("restore", "Put the sandbox back as checkpoint NAME had it.", _BOTH,
               value=("name", "NAME", str)),
    Subcommand("fork", "Start a new sandbox with this one's files and variables (pickled).",
               _BOTH),
    Subcommand("checkpoints", "List the checkpoints; with N, keep the last N cells' "
               "automatic ones (off: none).", _BOTH, _checkpoints),
    Subcommand("usage", "Show why the last runs ended and what they cost (wall, CPU, peak "
               "memory, processes).", _BOTH),
    Subcommand("help", "Show this help."),
)}

_PARSERS = {(name, surface): sub.parser(surface)
            for name, sub in SUBCOMMANDS.items() for surface in sub.surfaces}


def names(surface: str) -> list[str]:
    """The subcommands ``surface`` has, in help order."""
    return [name for name, sub in SUBCOMMANDS.items() if surface in sub.surfaces]


# ------------------------------------------------------------------ parsing


def split(line: str) -> list[str]:
    """Shell-like split of a line (quotes, ``# comments``); unbalanced quotes are a UsageError."""
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:
        raise UsageError(f"%sandbox: cannot parse {line.strip()!r}: {exc}") from None


def parse(line: str, surface: str, *, cell: bool = False) -> SandboxLine:
    """Parse the text after ``%sandbox`` (or, with ``cell``, after ``%%sandbox``: a header
    that is empty or starts with an option means ``run``) as ``surface`` has it."""
    tokens = split(line)
    if cell and (not tokens or tokens[0].startswith("-")):
        tokens = ["run", *tokens]  # a bare %%sandbox cell runs with the defaults
    if not tokens or tokens[0] in ("-h", "--help"):
        return SandboxLine("help", argparse.Namespace(), usage(surface))
    name, rest = tokens[0], tokens[1:]
    sub = SUBCOMMANDS.get(name)
    if sub is None:
        raise UsageError(f"unknown subcommand {name!r}; use one of: "
                         f"{', '.join(names(surface))} (%sandbox help)")
    if surface not in sub.surfaces:
        other = next(s for s in SURFACES if s != surface)
        raise UsageError(f"%sandbox {name} is a line of {_WHERE[other]} only; here use one of: "
                         f"{', '.join(names(surface))} (%sandbox help)")
    if sub.cell and not cell:
        raise UsageError(f"{name} runs a cell: put %%sandbox {name} on the first line of a cell")
    if cell and not sub.cell:
        raise UsageError(f"%%sandbox {name} takes no cell body; use %sandbox {name} on one line")
    try:
        args = _PARSERS[name, surface].parse_args(rest)
    except _HelpShown as shown:
        return SandboxLine(name, argparse.Namespace(), str(shown))
    return SandboxLine(name, args, usage(surface) if name == "help" else None)


def usage(surface: str) -> str:
    """The help text of ``surface``: one usage line per subcommand it has, then the
    subcommands only the other surface has."""
    title = {MAGICS: "Usage of the nexus sandbox magics:",
             KERNEL: "Usage of the Nexus Sandbox kernel's %sandbox lines (at the top of a cell):"}
    lines = [title[surface]]
    for name in names(surface):
        text = _PARSERS[name, surface].format_usage().strip().removeprefix("usage: ")
        lines.append("  " + " ".join(text.split()))
    other = next(s for s in SURFACES if s != surface)
    extra = [name for name in names(other) if surface not in SUBCOMMANDS[name].surfaces]
    lines.append(f"Only in {_WHERE[other]}: {', '.join(extra)}")
    options = "Options: %config SandboxMagics   " if surface == MAGICS else ""
    lines.append(f"{options}Details: %sandbox SUBCOMMAND -h")
    return "\n".join(lines)


def complete(words: list[str], surface: str) -> list[str]:
    """Completions of the last word of a ``%sandbox`` line: a subcommand, or on/off."""
    if len(words) <= 1:
        return [name for name in names(surface) if name.startswith(words[0] if words else "")]
    parser = _PARSERS.get((words[0], surface))
    if len(words) == 2 and parser is not None and any(a.type is on_off for a in parser._actions):
        return [value for value in ("on", "off") if value.startswith(words[1])]
    return []
