"""The ``nexus`` command: ``nexus sandbox create|run|logs|runs|pause|resume|stop|list|status|reap``,
``nexus template ...``, ``nexus kernel install`` and ``nexus mcp``.

Human output by default, one JSON object with ``--json``. Errors are one line on stderr;
the exit codes are ``EXIT_CODES``. Options left out mean "from settings" (``NEXUS_*``), and
their help shows that default and where it came from. Heavy modules are imported only when a
command needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
from typing import Any

from . import __version__
from .config import STOPPED_RETENTION_SECONDS, Settings
from .egress import denial_line, events_table, network_text
from .errors import ExecutionTimeoutError, SandboxError, UsageError
from .models import totals_summary, usage_summary

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: what a process killed by SIGPIPE reports
EXIT_CODES = """\
exit codes:
  0    success
  1    other errors: stopped sandbox, provider unavailable, daemon down
  2    usage errors: bad option or argument, unknown sandbox id
  124  sandbox run: the code ran past its timeout
  130  interrupted (Ctrl-C: the code gets KeyboardInterrupt and a session keeps its
       state; a second Ctrl-C detaches: the run ends in the sandbox, and
       `nexus sandbox logs RUN_ID --follow` shows the rest)
  141  the reader of the output went away (closed pipe)
`nexus sandbox run` otherwise exits with the code's own exit code (`logs`: the
replayed run's)."""
EXTENSION_LANGUAGES = {".py": "python", ".js": "javascript", ".mjs": "javascript",
                       ".sh": "bash", ".bash": "bash"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(message, prog=self.prog)

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse drops write errors; a closed pipe must reach main() (exit 141)
        if message:
            (file or sys.stderr).write(message)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # An unknown subcommand: name the choices, not argparse's dest ("argument group").
        if not action.option_strings and action.choices and value not in action.choices:
            self.error(f"unknown command {value!r}; choose one of: {', '.join(action.choices)}")
        super()._check_value(action, value)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _default(settings: Settings, name: str, shown: Any) -> str:
    """"(default: 10 min, from NEXUS_TTL_MINUTES)", or "(default: 10 min, built in)"."""
    source = settings.env_source(name)
    origin = f"from {source}" if source else "built in"
    return f"(default: {shown}, {origin})".replace("%", "%%")  # help is a %-format


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


class _Unbuilt:
    """The options of a ``sandbox`` command this process does not run: not built (each
    parser and option costs argparse a formatter and gettext look-ups at every cold start)."""

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_mutually_exclusive_group(self, **kwargs: Any) -> _Unbuilt:
        return self


def _sandbox_command(argv: list[str] | None) -> str | None:
    """The ``sandbox`` command ``argv`` runs, when its second word names it (None, e.g. for
    ``sandbox --json list``: build them all, and argparse reports what it does now)."""
    argv = sys.argv[1:] if argv is None else argv
    named = len(argv) > 1 and argv[0] == "sandbox" and not argv[1].startswith("-")
    return argv[1] if named else None


def build_parser(settings: Settings | None = None,
                 argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``nexus`` parser; option defaults are None ("from settings") and their help
    shows the value ``settings`` (default: ``Settings.load()``) gives them. Given the
    command line ``argv``, the options of the other ``sandbox`` commands are left out
    (their names and help still list)."""
    settings = settings or Settings.load()
    only = _sandbox_command(argv)
    ttl = _default(settings, "ttl_minutes", f"{settings.ttl_minutes:g} min")
    timeout = _default(settings, "timeout", f"{settings.timeout:g} s")
    provider = _default(settings, "provider", settings.provider)
    network = _default(settings, "network", "on" if settings.network else "off")
    raw = argparse.RawDescriptionHelpFormatter  # keeps the exit-code table's lines

    parser = _Parser(prog="nexus", description="Ephemeral, isolated code sandboxes.",
                     epilog=EXIT_CODES, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"nexus {__version__}")
    parser.set_defaults(command=None, show_help=parser.print_help)
    commands = parser.add_subparsers(dest="group", parser_class=_Parser)
    sandbox = commands.add_parser("sandbox", help="create, run and manage sandboxes")
    sandbox.set_defaults(show_help=sandbox.print_help)
    sub = sandbox.add_subparsers(dest="command", parser_class=_Parser)

    def command(name: str, help_text: str, **kwargs: Any) -> Any:
        if only is not None and name != only:
            sub._choices_actions.append(sub._ChoicesPseudoAction(name, (), help_text))
            sub._name_parser_map[name] = None  # listed in help and choices; never parsed
            return _Unbuilt()
        p = sub.add_parser(name, help=help_text, description=help_text, **kwargs)
        _add_json(p)
        return p

    def sandbox_id(p: argparse.ArgumentParser) -> None:
        p.add_argument("sandbox_id", help="the sandbox's id (sb_..., from create or list)")

    p = command("create", "create a sandbox")
    p.add_argument("name", help="a label for the sandbox (need not be unique)")
    p.add_argument("--ttl", type=_number, metavar="MINUTES",
                   help=f"idle minutes before it stops itself; every run extends it {ttl}")
    p.add_argument("--template", metavar="ID",
                   help="template (local) or image to start from (default: the provider's own)")
    p.add_argument("--provider", metavar="NAME",
                   help=f"where it runs: local, docker, e2b or modal {provider}")
    p.add_argument("--network", action=argparse.BooleanOptionalAction,
                   help=f"allow all network access {network}")
    p.add_argument("--allow", action="append", metavar="HOST[:PORT]",
                   help="allow only this host (a bare name: ports 80 and 443; *.example.org: "
                        "its subdomains); repeat for more. Denied requests are listed by "
                        "'nexus sandbox events' " + _default(settings, "network_allow",
                                                              settings.network_allow or "none"))
    p.add_argument("--runtime", metavar="NAME",
                   help="docker only: the engine's OCI runtime, e.g. runsc (gVisor); "
                        "'nexus sandbox providers' lists them "
                        f"{_default(settings, 'docker_runtime', settings.docker_runtime or 'the engine default')}")

    p = command("run", "run code in a sandbox", epilog=EXIT_CODES, formatter_class=raw)
    sandbox_id(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--code", help="code to run; '-' reads it from stdin")
    source.add_argument("-f", "--file", help="file whose content to run")
    p.epilog = ("standard input: what is piped or redirected into a run without --session "
                "(and whose code is not read from stdin) is the code's stdin; in a shell loop "
                "that reads stdin itself, add < /dev/null.\n\n" + EXIT_CODES)
    p.add_argument("-l", "--language",
                   help="python, javascript or bash (default: from the file's extension, "
                        "else python)")
    p.add_argument("--timeout", type=_number, metavar="SECONDS",
                   help=f"stop the code after this many seconds (exit 124) {timeout}")
    p.add_argument("--session", metavar="NAME",
                   help="persistent session: variables survive between runs (default: none, "
                        "a fresh process each run; files persist either way)")
    p.add_argument("--raw", action="store_true",
                   help="write the code's output to a terminal byte for byte (by default "
                        "control sequences other than colours are shown escaped, so sandbox "
                        "output cannot drive your terminal)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="after the run, print on stderr why it ended and what it cost (wall, "
                        "CPU, peak memory, processes)")
    p.add_argument("-d", "--detach", action="store_true",
                   help="start the run and print its id at once; it goes on after this "
                        "command (until its timeout; the sandbox's TTL waits for it): "
                        "'nexus sandbox logs RUN_ID --follow' shows its output")

    for name, text in [("pause", "pause a sandbox"), ("resume", "resume a paused sandbox"),
                       ("stop", "stop and destroy a sandbox"), ("status", "show a sandbox"),
                       ("events", "network requests its allow-list denied (--allow)")]:
        sandbox_id(command(name, text))

    p = command("snapshot", "snapshot a sandbox: its python sessions' variables and its "
                "home directory's files (e2b, modal: its whole memory and files; refused while "
                "it runs code)")
    sandbox_id(p)
    p.add_argument("--name", help="a name to restore it by (replaces an older one of that name)")
    p = command("restore", "put a sandbox back as a snapshot had it (the snapshot stays)")
    sandbox_id(p)
    p.add_argument("snapshot", help="the snapshot's id (snap-...) or name")
    sandbox_id(command("snapshots", "list a sandbox's snapshots (they end with the sandbox; e2b's and modal's persist)"))
    p = command("fork", "new sandboxes with a sandbox's files and python variables (pickled: "
                "threads, processes, open files and bash/javascript state do not carry; e2b, "
                "modal: everything carries)")
    sandbox_id(p)
    p.add_argument("--snapshot", metavar="SNAP", help="fork the state of this snapshot (id or "
                   "name) instead of the current one")
    p.add_argument("--count", type=int, default=1, metavar="N", help="how many (default 1)")
    p = command("snapshot-delete", "delete a snapshot of a sandbox")
    sandbox_id(p)
    p.add_argument("snapshot", help="the snapshot's id (snap-...) or name")

    p = command("logs", "replay a run's output from its start and its exit code (any "
                "process may, with the run id alone)", epilog=EXIT_CODES, formatter_class=raw)
    p.add_argument("run_id", help="the run's id (sb_...:r..., from run --detach or runs)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="then stream the rest live until the run ends (default: what it has "
                        "printed so far)")
    p.add_argument("--raw", action="store_true",
                   help="write the output to a terminal byte for byte (as run --raw)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print on stderr why the run ended and what it cost")

    p = command("runs", "list a sandbox's runs: running ones and the last 16 finished, "
                "with state, exit code and usage")
    sandbox_id(p)

    hours = f"{STOPPED_RETENTION_SECONDS / 3600:g} h"
    p = command("list", f"list your sandboxes; stopped ones stay listed for {hours}")
    p.add_argument("--all", action="store_true", help="every user's sandboxes (needs admin: NEXUS_ADMIN=1)")
    command("reap", "stop expired sandboxes and remove orphaned resources")
    p = command("doctor", "check the state store against the sandboxes the providers run")
    p.add_argument("--repair", action="store_true",
                   help="make them agree: move a damaged database aside, re-adopt running "
                        "sandboxes the store lost, mark the rest stopped")
    p = command("pool", "warm pool: pre-started sandboxes that create hands out at once")
    p.add_argument("action", choices=["fill", "status", "drain"],
                   help="fill up to the pool size, show the pools, or destroy every pooled sandbox")
    p.add_argument("--provider", metavar="NAME", help=f"pool of this provider {provider}")
    p.add_argument("--template", metavar="ID", help="pool of this template (default: none)")
    p.add_argument("--network", action=argparse.BooleanOptionalAction,
                   help=f"pool of network-enabled sandboxes {network}")
    p.add_argument("--size", type=int, metavar="N", help="fill up to this many " +
                   _default(settings, "pool_size", settings.pool_size))
    command("providers", "which providers are installed, configured, and what they support")

    template = commands.add_parser("template", help="prepared package sets (local) and images "
                                   "(docker) for sandboxes")
    template.set_defaults(show_help=template.print_help)
    tsub = template.add_subparsers(dest="command", parser_class=_Parser)
    text = "list every provider's built templates (local, docker) with size and contents"
    p = tsub.add_parser("list", help=text, description=text)
    _add_json(p)
    text = "build a template (network is used at build time only)"
    p = tsub.add_parser("create", help=text, description=text)
    p.add_argument("name", help="template name; 'datascience' (the default environment) has a recipe")
    p.add_argument("--pip", nargs="+", default=[], metavar="PKG", help="packages to install")
    p.add_argument("--provider", default="local", metavar="NAME",
                   help="local (a package directory, default) or docker (an image "
                        "nexus-template/NAME); e2b and modal build their own")
    p.add_argument("--from", dest="base", default=None, metavar="IMAGE",
                   help="docker: the base image (any with python3 >= 3.8; default: the "
                        "provider's image)")
    _add_json(p)
    p = tsub.add_parser("remove", help="delete a template", description="delete a template")
    p.add_argument("name", help="the template to delete")
    p.add_argument("--provider", default=None, metavar="NAME",
                   help="only this provider's template (default: every provider's)")
    _add_json(p)

    kernel = commands.add_parser("kernel", help="the 'Nexus Sandbox' Jupyter kernel")
    kernel.set_defaults(show_help=kernel.print_help)
    ksub = kernel.add_subparsers(dest="command", parser_class=_Parser)
    text = "install the kernelspec (Jupyter then lists the kernel)"
    p = ksub.add_parser("install", help=text, description=text)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true",
                       help="for this user, in ~/.local/share/jupyter (the default)")
    where.add_argument("--sys-prefix", action="store_true",
                       help="into this Python environment (sys.prefix)")
    where.add_argument("--prefix", metavar="PATH", help="under PATH/share/jupyter/kernels")
    p.add_argument("--name", default=None,
                   help="kernelspec name (default nexus-sandbox, or nexus-sandbox-PROVIDER-TEMPLATE...)")
    p.add_argument("--display-name", default=None, help="name shown in Jupyter")
    p.add_argument("--provider", default=None,
                   help="provider for this kernel's sandboxes (sets NEXUS_PROVIDER)")
    p.add_argument("--template", default=None, metavar="NAME",
                   help="template (local) or image of this kernel's sandboxes; 'minimal' for "
                        "lean local sandboxes (sets NEXUS_TEMPLATE)")
    p.add_argument("--network", action="store_true",
                   help="this kernel's sandboxes have network (sets NEXUS_NETWORK=1)")
    p.add_argument("--allow", action="append", metavar="HOST[:PORT]",
                   help="this kernel's sandboxes reach only this host (bare name: ports 80 and "
                        "443); repeat for more (sets NEXUS_NETWORK_ALLOW)")
    p.add_argument("--trusted-output", action="store_true",
                   help="a variant that shows sandbox output as it is, scripts and widgets "
                        "included (sets NEXUS_TRUSTED_OUTPUT=1; only for code you trust)")
    _add_json(p)

    text = "serve the sandboxes to MCP clients (Claude Code, Cursor, agent frameworks)"
    p = commands.add_parser("mcp", help=text, description=text + ": over stdio (the default) "
                            "or streamable HTTP on 127.0.0.1 with a bearer token. Each client "
                            "sees only its own sandboxes, stopped when it disconnects unless "
                            "created with keep=true. Needs the extra: pip install "
                            "'nexus-kernel[mcp]'")
    p.set_defaults(command="serve")
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                   help="stdio (launched by the client) or http (default: stdio)")
    p.add_argument("--port", type=int, default=8765,
                   help="HTTP port on 127.0.0.1 (default: 8765)")
    p.add_argument("--token", default=None,
                   help="HTTP bearer token (default: NEXUS_MCP_TOKEN, else a new one printed "
                        "on stderr)")
    p.add_argument("--admin", action="store_true",
                   help="every client sees and may use every sandbox of this user")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``nexus`` with ``argv`` (default: the command line); returns the exit code."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
    except BrokenPipeError:
        # `nexus sandbox list | head -1`: exit quietly, as a process killed by SIGPIPE would;
        # stdout on devnull so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CLOSED_PIPE


def _main(argv: list[str] | None) -> int:
    try:
        settings = Settings.load()
        args = build_parser(settings, argv).parse_args(argv)
        if args.command is None:  # `nexus`, `nexus sandbox`: their help, as gh and docker
            args.show_help()
            return 0
        return _dispatch(args, settings)
    except UsageError as exc:  # an argparse error starts with the command it is about
        print(exc if exc.prog else f"nexus: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nexus: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SandboxError as exc:  # every error is one line; SandboxError knows its exit code
        print(f"nexus: {exc}", file=sys.stderr)
        return exc.exit_code


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.group == "template":
        return _template(args, settings)
    if args.group == "kernel":
        return _kernel_install(args)
    if args.group == "mcp":
        return _mcp(args)
    if args.command == "providers":
        return _providers(args, settings)
    if args.command == "doctor":  # opens a damaged store itself
        return _doctor(args, settings)
    from .api import NexusFS

    # This process exits right away: a hand-out from the warm pool is refilled by a
    # detached `python -m nexus_kernel.pool_fill`, not by a thread that would die with it.
    refill = os.environ.get("NEXUS_POOL_REFILL") or "process"
    overrides = {"docker_runtime": _runtime(args, settings)} if args.command == "create" else {}
    nx = NexusFS(pool_refill=refill, **overrides)  # admin: NEXUS_ADMIN=1, never implied
    handler = globals()["_cmd_" + args.command.replace("-", "_")]
    return handler(nx, args)


def _emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> None:
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print(human)


def _runtime(args: argparse.Namespace, settings: Settings) -> str | None:
    """``create --runtime``: docker's setting for this create (None: from the settings)."""
    if args.runtime is None:
        return None
    provider = args.provider or settings.provider
    if provider != "docker":
        raise UsageError(f"--runtime is for the docker provider only, not {provider}: "
                         "add --provider docker, or drop --runtime")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", args.runtime):
        raise UsageError(f"--runtime {args.runtime!r} is not a runtime name (e.g. runsc)")
    return args.runtime


def _cmd_create(nx: Any, args: argparse.Namespace) -> int:
    from .validation import check_ttl

    ttl = None if args.ttl is None else check_ttl(args.ttl, "--ttl")  # None: from settings
    if args.allow and args.network:
        raise UsageError("--allow and --network exclude each other: --network allows all hosts")
    network = args.allow if args.allow else args.network
    sb = nx.sandbox_create(args.name, ttl_minutes=ttl, template_id=args.template,
                           provider=args.provider, network=network)
    _emit(args, sb, f"Created sandbox: {sb['sandbox_id']}")
    return 0


def _read_code(args: argparse.Namespace) -> str:
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {args.file}: {exc}") from None
    if args.code == "-":
        return sys.stdin.read()
    return args.code


def _language(args: argparse.Namespace) -> str:
    if args.language:
        return args.language
    if args.file:
        for ext, language in EXTENSION_LANGUAGES.items():
            if args.file.endswith(ext):
                return language
    return "python"


def _cmd_run(nx: Any, args: argparse.Namespace) -> int:
    from .validation import check_timeout

    timeout = None if args.timeout is None else check_timeout(args.timeout, "--timeout")
    code = _read_code(args)
    if args.detach:
        data = nx.sandbox_run(args.sandbox_id, _language(args), code, timeout=timeout,
                              session=args.session, input_data=_piped_input(args), wait=False)
        _emit(args, data, f"Started run: {data['run_id']}")
        if not args.json:
            print(f"nexus: its output: nexus sandbox logs {data['run_id']} --follow",
                  file=sys.stderr)
        return 0
    on_event = None if args.json else _Streamer(raw=args.raw)
    started: dict[str, str] = {}
    try:
        result = _run_interruptibly(
            nx, args, lambda: nx.sandbox_run(args.sandbox_id, _language(args), code,
                                             timeout=timeout, session=args.session,
                                             on_event=on_event, input_data=_piped_input(args),
                                             on_run_id=lambda rid: started.update(id=rid)),
            started)
    except ExecutionTimeoutError as exc:
        if args.json:
            data = exc.result.to_dict() if exc.result is not None else {}
            data.update(sandbox_id=args.sandbox_id, error=str(exc))
            print(json.dumps(data, default=str))
        else:
            print(f"nexus: {exc}", file=sys.stderr)
            if args.verbose and exc.result is not None:
                print(f"nexus: {usage_summary(exc.result.ended_by, exc.result.usage)}",
                      file=sys.stderr)
        return EXIT_TIMEOUT
    if args.json:
        print(json.dumps(result, default=str))
    else:
        if result.get("session_restarted"):
            print(f"nexus: the code did not stop when interrupted, so session {args.session!r} "
                  "was restarted: its variables are gone", file=sys.stderr)
        if result["truncated"]:
            print("nexus: output truncated (per-run output cap reached)", file=sys.stderr)
        if result.get("oom_killed"):
            print("nexus: out of memory: the sandbox's memory limit was reached and a "
                  "process was killed (NEXUS_MEMORY_MB raises it)", file=sys.stderr)
        for event in result.get("network_denials") or ():
            print(denial_line(event), file=sys.stderr)
        if args.verbose:
            print(f"nexus: {usage_summary(result['ended_by'], result['usage'])}",
                  file=sys.stderr)
    if result.get("interrupted"):
        return EXIT_INTERRUPTED
    return result["exit_code"] if 0 <= result["exit_code"] <= 255 else 1


def _piped_input(args: argparse.Namespace) -> str | None:
    """What is piped or redirected into this command, as the stdin of a stateless run whose
    code does not come from stdin (a terminal or /dev/null gives none)."""
    if args.session is not None or args.code == "-":
        return None
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return None
    if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        return None
    return sys.stdin.read()


def _run_interruptibly(nx: Any, args: argparse.Namespace, run: Any,
                       started: dict[str, str]) -> dict[str, Any]:
    """``run()`` in a worker thread. The first Ctrl-C interrupts the code in the sandbox
    (KeyboardInterrupt; a session keeps its state, and the agent kills code that ignores it
    after a grace) and goes on waiting for its end; a second one detaches, saying how to
    see the rest (``started["id"]``: the run id, once known)."""
    import threading

    outcome: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a Ctrl-C inside join() can make is_alive lie

    def work() -> None:
        try:
            outcome["result"] = run()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="nexus-run", daemon=True).start()

    def stop_waiting() -> None:
        rest = (f"'nexus sandbox logs {started['id']} --follow' shows the rest"
                if "id" in started else f"'nexus sandbox runs {args.sandbox_id}' lists it")
        print(f"nexus: detached; the run may still be ending in {args.sandbox_id}: {rest} "
              f"('nexus sandbox stop {args.sandbox_id}' ends it)", file=sys.stderr)

    interrupted = False
    while not done.is_set():
        try:
            done.wait(0.2)
            continue
        except KeyboardInterrupt:
            if interrupted:
                stop_waiting()
                raise
        interrupted = True
        try:
            print("nexus: interrupting the code (Ctrl-C again detaches)", file=sys.stderr)
            nx.sandbox_interrupt(args.sandbox_id, args.session, run_id=started.get("id"))
        except KeyboardInterrupt:
            stop_waiting()
            raise
        except SandboxError as exc:
            print(f"nexus: could not interrupt: {exc}", file=sys.stderr)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _cmd_logs(nx: Any, args: argparse.Namespace) -> int:
    on_event = None if args.json else _Streamer(raw=args.raw)
    data = nx.sandbox_attach(args.run_id, follow=args.follow, on_event=on_event)
    if args.json:
        print(json.dumps(data, default=str))
    else:
        if data["dropped_bytes"]:
            print(f"nexus: the first {data['dropped_bytes']} bytes of the run's output were "
                  "dropped (a sandbox keeps the last 2 MiB of a run's output)", file=sys.stderr)
        if data["state"] == "running":
            print("nexus: the run is still running (--follow streams it to its end)",
                  file=sys.stderr)
        elif args.verbose:
            print(f"nexus: {usage_summary(data['ended_by'], data['usage'])}", file=sys.stderr)
    if data["state"] == "running":
        return 0
    if data.get("interrupted"):
        return EXIT_INTERRUPTED
    code = data["exit_code"]
    return code if isinstance(code, int) and 0 <= code <= 255 else 1


def _cmd_runs(nx: Any, args: argparse.Namespace) -> int:
    data = nx.sandbox_runs(args.sandbox_id)
    rows = [("RUN_ID", "STATE", "EXIT", "ENDED_BY", "STARTED_AT", "USAGE")]
    for r in data["runs"]:
        usage = usage_summary(r["ended_by"], r["usage"]).split(" · ", 1)[-1] if r[
            "usage"] else "-"
        rows.append((r["run_id"], r["state"] or "?",
                     "-" if r["exit_code"] is None else r["exit_code"], r["ended_by"] or "-",
                     r["started_at"] or "-", usage))
    _emit(args, data, _table(rows) if data["runs"] else "No runs.")
    return 0


class _Streamer:
    """Writes a run's events to stdout/stderr as they arrive; to a terminal, control
    sequences are made visible (``nexus_kernel/terminal.py``) unless ``raw``."""

    def __init__(self, raw: bool) -> None:
        from .terminal import for_terminal

        def clean(stream: Any) -> Any:
            return (lambda text: text) if raw or not stream.isatty() else for_terminal

        self._out, self._err = clean(sys.stdout), clean(sys.stderr)

    def __call__(self, event: Any) -> None:
        if event.kind == "stdout":
            _write(sys.stdout, self._out(event.data))
        elif event.kind == "stderr":
            _write(sys.stderr, self._err(event.data))
        elif event.kind in ("result", "display"):
            text = event.data.get("data", {}).get("text/plain")
            if text is not None:
                _write(sys.stdout, self._out(text + "\n"))


def _write(stream: Any, text: str) -> None:
    stream.write(text)
    stream.flush()


def _lifecycle(verb: str, done: str):
    """The handler of ``nexus sandbox VERB ID``: call ``nx.sandbox_VERB``, say ``done``."""

    def handler(nx: Any, args: argparse.Namespace) -> int:
        sb = getattr(nx, f"sandbox_{verb}")(args.sandbox_id)
        _emit(args, sb, f"{done} sandbox: {sb['sandbox_id']}")
        return 0

    return handler


_cmd_pause = _lifecycle("pause", "Paused")
_cmd_resume = _lifecycle("resume", "Resumed")
_cmd_stop = _lifecycle("stop", "Stopped")


def _cmd_events(nx: Any, args: argparse.Namespace) -> int:
    events = nx.sandbox_events(args.sandbox_id)
    if args.json:
        print(json.dumps(events))
        return 0
    print(events_table(events), end="")
    return 0


def _cmd_snapshot(nx: Any, args: argparse.Namespace) -> int:
    snap = nx.sandbox_snapshot(args.sandbox_id, args.name)
    lost = ", ".join(f"{k}: threads {', '.join(v)}" for k, v in snap["lost_threads"].items())
    until = f"until {snap['expires']}" if snap.get("expires") else "until deleted"
    kept = (f"{snap.get('keeps', 'memory and files')}, kept by the provider {until}"
            if snap.get("persists") else f"{snap['size']} bytes of files")
    human = f"Snapshot: {snap['snapshot_id']} ({kept})"
    _emit(args, snap, human + (f"; not kept: {lost}" if lost else ""))
    return 0


def _cmd_restore(nx: Any, args: argparse.Namespace) -> int:
    done = nx.sandbox_restore(args.sandbox_id, args.snapshot)
    fresh = f"; started fresh: {', '.join(done['restarted'])}" if done["restarted"] else ""
    _emit(args, done, f"Restored {done['snapshot_id']} in sandbox {args.sandbox_id}{fresh}")
    return 0


def _cmd_snapshots(nx: Any, args: argparse.Namespace) -> int:
    data = nx.sandbox_snapshots(args.sandbox_id)
    rows = [("SNAPSHOT_ID", "NAME", "CREATED", "SIZE", "MEMORY")]
    rows += [(s["snapshot_id"], s["name"] or "-", s["created"],
              *("-" if s[k] is None else s[k] for k in ("size", "memory")))
             for s in data["snapshots"]]
    _emit(args, data, _table(rows) if data["snapshots"] else "No snapshots.")
    return 0


def _cmd_fork(nx: Any, args: argparse.Namespace) -> int:
    done = nx.sandbox_fork(args.sandbox_id, args.snapshot, args.count)
    lines = [f"Forked sandbox: {f['sandbox_id']}" for f in done["forks"]]
    lines += [f"not carried from session {k}: {', '.join(v)}" for k, v in done["skipped"].items()]
    lines += [f"carried: {done['keeps']}"] if done.get("keeps", "").startswith("files") else []
    _emit(args, done, "\n".join(lines))
    return 0


def _cmd_snapshot_delete(nx: Any, args: argparse.Namespace) -> int:
    done = nx.sandbox_snapshot_delete(args.sandbox_id, args.snapshot)
    _emit(args, done, f"Deleted snapshot: {done['deleted']}")
    return 0


def _cmd_status(nx: Any, args: argparse.Namespace) -> int:
    sb = nx.sandbox_status(args.sandbox_id)
    keys = ["sandbox_id", "name", "status", "provider", "runtime", "created_at", "last_active_at",
            "expires_at", "hard_end_at", "uptime_seconds", "error"]
    human = "\n".join(f"{k}: {sb[k]}" for k in keys if sb.get(k) is not None)
    human += f"\nnetwork: {network_text(sb.get('network_allow') or sb['network'])}"
    human += f"\nusage: {totals_summary(sb['usage_totals'])}"
    _emit(args, sb, human)
    return 0


def _cmd_list(nx: Any, args: argparse.Namespace) -> int:
    data = nx.sandbox_list(all_users=args.all)
    rows = [("SANDBOX_ID", "NAME", "STATUS", "PROVIDER", "EXPIRES_AT")]
    rows += [(s["sandbox_id"], s["name"], s["status"], s["provider"],
              "-" if s["status"] == "stopped" else s["expires_at"] or "-")
             for s in data["sandboxes"]]
    _emit(args, data, _table(rows) if data["sandboxes"] else "No sandboxes.")
    return 0


def _cmd_reap(nx: Any, args: argparse.Namespace) -> int:
    data = nx.sandbox_reap()
    human = ", ".join(f"{k}: {len(v)}" for k, v in data.items())
    _emit(args, data, f"Reaped: {human}")
    return 0


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    from .manager import doctor

    data = doctor(settings, repair=args.repair)
    lines = [f"store: {data['store']}"]
    if data["damaged"]:
        lines.append(f"damaged: {data['damaged']}" if not data["moved_aside"]
                     else f"damaged, moved aside to {data['moved_aside']}")
    labels = {"readopted": "re-adopted (running, records rebuilt)",
              "adoptable": "running without a record (--repair re-adopts them)",
              "not_adoptable": "running without a record, cannot be re-adopted (left to its TTL)",
              "gone": "records whose sandbox is gone" + (" (marked stopped)" if args.repair else ""),
              "orphans": "dead leftovers removed", "unreachable": "provider not reachable"}
    for key, label in labels.items():
        if data.get(key):
            lines.append(f"{label}: {', '.join(data[key])}")
    if len(lines) == 1:
        lines.append("ok: the store and the providers agree")
    _emit(args, data, "\n".join(lines))
    problems = data["damaged"] and not data["moved_aside"] or data.get("adoptable") or (
        data.get("gone") and not args.repair)
    return 1 if problems else 0


def _cmd_pool(nx: Any, args: argparse.Namespace) -> int:
    pool = nx.manager.pool
    if args.action == "fill":
        started = pool.fill(args.provider, args.template, args.network, size=args.size)
        data = {"started": started, "pools": pool.status()}
        _emit(args, data, f"Started {len(started)} pooled sandbox(es)")
    elif args.action == "drain":
        removed = pool.drain()
        _emit(args, {"removed": removed}, f"Removed {len(removed)} pooled sandbox(es)")
    else:
        rows = pool.status()
        table = [("POOL", "READY", "STARTING", "SIZE")]
        table += [(r["pool"], r["ready"], r["starting"], r["size"]) for r in rows]
        _emit(args, {"pools": rows}, _table(table) if rows else "No pooled sandboxes.")
    return 0


def _providers(args: argparse.Namespace, settings: Settings) -> int:
    from .providers import capability_matrix

    rows = capability_matrix(settings)
    table = [("PROVIDER", "INSTALLED", "CONFIGURED", "PAUSE", "NETWORK", "GPU", "LANGUAGES",
              "RUNTIMES")]
    yes = {True: "yes", False: "no"}
    for row in rows:
        caps = row["capabilities"]
        table.append((row["name"], yes[row["installed"]], yes[row["configured"]],
                      yes[caps["pause"]], yes[caps["network"]], yes[caps["gpu"]],
                      ",".join(caps["languages"]), ",".join(row["runtimes"]) or "-"))
    notes = [f"{r['name']}: {r['reason']}" for r in rows if r["reason"]]
    _emit(args, {"providers": rows}, "\n".join([_table(table), *notes]))
    return 0


def _table(rows: list[tuple[Any, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _template(args: argparse.Namespace, settings: Settings) -> int:
    from . import templates

    if args.command == "list":
        skipped: list[str] = []
        found = templates.list_templates(settings, skipped)
        rows = [("NAME", "PROVIDER", "SIZE", "CONTENTS")] + [
            (t["name"], t["provider"], f"{t.get('size_mb', '?')} MB",
             " ".join(f"{k}=={v}" for k, v in (t.get("versions") or {}).items())
             or " ".join(t.get("packages") or []))
            for t in found]
        text = _table(rows) if found else "No templates."
        if sys.stdout.isatty():
            from .terminal import for_terminal

            text = for_terminal(text)  # image labels are anyone's text
        _emit(args, {"templates": found, "skipped": skipped}, text)
        for note in skipped:
            print(f"nexus: {note}", file=sys.stderr)
    elif args.command == "create":
        print(f"Building {args.provider} template {args.name!r} (pip output follows; skipped "
              "when built already) ...", file=sys.stderr)
        meta = templates.create_template(settings, args.name, args.pip, provider=args.provider,
                                         base=args.base)
        state = "Template already built" if meta.get("cached") else "Created template"
        where = f", image {meta['image']}" if meta.get("image") else ""
        _emit(args, meta, f"{state}: {meta['name']} ({args.provider}{where}, "
                          f"{meta['size_mb']} MB, {meta.get('build_seconds', 0)} s to build)")
    else:
        removed = templates.remove_template(settings, args.name, args.provider)
        _emit(args, {"name": args.name, "removed": True, "providers": removed},
              f"Removed template: {args.name} ({', '.join(removed)})")
    return 0


def _mcp(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port number (1-65535)")
    from .mcp_server import serve

    serve(args.transport, port=args.port, admin=args.admin,
          token=args.token or os.environ.get("NEXUS_MCP_TOKEN") or None)
    return 0


KERNEL_NAME = "nexus-sandbox"
KERNEL_DISPLAY_NAME = "Nexus Sandbox"


def kernel_spec(python: str, provider: str | None = None, trusted_output: bool = False,
                template: str | None = None, network: bool = False) -> dict[str, Any]:
    """The kernel.json of the proxy kernel run by ``python`` (``kernelspec/kernel.json`` is
    this with ``python3``, which Jupyter replaces by its own interpreter)."""
    spec: dict[str, Any] = {
        "argv": [python, "-m", "nexus_kernel", "-f", "{connection_file}"],
        "display_name": KERNEL_DISPLAY_NAME,
        "language": "python",
        "interrupt_mode": "signal",
        "env": {},
        "metadata": {"debugger": False},
    }
    if provider:
        spec["display_name"] += f" ({provider})"
        spec["env"]["NEXUS_PROVIDER"] = provider
    if template:
        spec["display_name"] += f" ({template})"
        spec["env"]["NEXUS_TEMPLATE"] = template
    if network:
        spec["display_name"] += " (network)"
        spec["env"]["NEXUS_NETWORK"] = "1"
    if trusted_output:
        spec["display_name"] += " (trusted output)"
        spec["env"]["NEXUS_TRUSTED_OUTPUT"] = "1"
    return spec


def _spec_part(template: str) -> str:
    """A template or image name as a kernelspec name part (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", template.rsplit("/", 1)[-1]).strip("-").lower()


def _kernel_logos() -> list[Any]:
    """The logo PNGs: from the source tree, else from the wheel's installed kernelspec."""
    from pathlib import Path

    for folder in (Path(__file__).resolve().parent.parent / "kernelspec",
                   Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME):
        logos = sorted(folder.glob("logo-*.png"))
        if logos:
            return logos
    return []


def _kernel_install(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from jupyter_client.kernelspec import KernelSpecManager

    from .providers import PROVIDERS

    if args.provider is not None and args.provider not in PROVIDERS:
        raise UsageError(f"unknown provider {args.provider!r}; choose one of: "
                         f"{', '.join(PROVIDERS)}")
    if args.template is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}",
                                                      args.template):
        raise UsageError(f"--template {args.template!r} is not a template or image name")
    name = args.name or KERNEL_NAME + "".join(
        f"-{part}" for part in (args.provider, args.template and _spec_part(args.template),
                                args.network and "network", args.allow and "allow",
                                args.trusted_output and "trusted")
        if part)
    spec = kernel_spec(sys.executable, args.provider, args.trusted_output, args.template,
                       args.network)
    if args.allow:
        from .egress import parse_allow

        if args.network:
            raise UsageError("--allow and --network exclude each other: --network allows all hosts")
        allow = " ".join(parse_allow(args.allow))
        spec["display_name"] += " (allow-list)"
        spec["env"]["NEXUS_NETWORK_ALLOW"] = allow
    if args.display_name:
        spec["display_name"] = args.display_name
    prefix = sys.prefix if args.sys_prefix else args.prefix
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
        for logo in _kernel_logos():
            shutil.copy(logo, tmp)
        try:
            path = KernelSpecManager().install_kernel_spec(
                tmp, kernel_name=name, user=prefix is None, prefix=prefix)
        except ValueError as exc:  # a bad kernel name
            raise UsageError(str(exc)) from None
    _emit(args, {"name": name, "path": path, "spec": spec},
          f"Installed kernelspec {name} ({spec['display_name']}) in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
