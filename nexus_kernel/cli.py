"""The ``nexus`` command: ``nexus sandbox create|run|pause|resume|stop|list|status|reap``.

Human output by default, one JSON object with ``--json``. Errors are one line on stderr:
exit 2 for usage errors, 1 for others; ``run`` exits with the code's own exit code
(124 when it timed out). Heavy modules are imported only when a command needs them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_TIMEOUT = 124
EXTENSION_LANGUAGES = {".py": "python", ".js": "javascript", ".mjs": "javascript",
                       ".sh": "bash", ".bash": "bash"}


class UsageError(Exception):
    """Bad command-line usage (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def _positive_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nexus", description="Ephemeral, isolated code sandboxes.")
    commands = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)
    sandbox = commands.add_parser("sandbox", help="create, run and manage sandboxes")
    sub = sandbox.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object")
        return p

    p = command("create", "create a sandbox")
    p.add_argument("name")
    p.add_argument("--ttl", type=_positive_float, default=None, metavar="MINUTES",
                   help="idle minutes before it expires (default 10)")
    p.add_argument("--template", default=None, metavar="ID", help="template / image")
    p.add_argument("--provider", default=None, help="local (default), docker, e2b, modal")
    p.add_argument("--network", action="store_true", help="allow network access")

    p = command("run", "run code in a sandbox")
    p.add_argument("sandbox_id")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--code", help="code to run; '-' reads it from stdin")
    source.add_argument("-f", "--file", help="file whose content to run")
    p.add_argument("-l", "--language", default=None,
                   help="python (default), javascript or bash")
    p.add_argument("--timeout", type=_positive_float, default=30.0, metavar="SECONDS")
    p.add_argument("--session", default=None,
                   help="persistent session name: variables survive between runs")

    for name, text in [("pause", "pause a sandbox"), ("resume", "resume a paused sandbox"),
                       ("stop", "stop and destroy a sandbox"), ("status", "show a sandbox")]:
        command(name, text).add_argument("sandbox_id")

    p = command("list", "list your sandboxes")
    p.add_argument("--all", action="store_true", help="every user's sandboxes (admin)")
    command("reap", "stop expired sandboxes and remove orphaned resources")
    command("providers", "which providers are installed, configured, and what they support")

    template = commands.add_parser("template", help="prepared environments for local sandboxes")
    tsub = template.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = tsub.add_parser("list", help="list built templates")
    p.add_argument("--json", action="store_true")
    p = tsub.add_parser("create", help="build a template (network is used at build time only)")
    p.add_argument("name", help="template name; 'datascience' has a recipe (numpy pandas matplotlib)")
    p.add_argument("--pip", nargs="+", default=[], metavar="PKG", help="packages to install")
    p.add_argument("--json", action="store_true")
    p = tsub.add_parser("remove", help="delete a template")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        return _dispatch(args)
    except UsageError as exc:
        print(f"nexus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nexus: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every error is one line; SandboxError knows its exit code
        from .errors import SandboxError

        if not isinstance(exc, SandboxError):
            raise
        print(f"nexus: {exc}", file=sys.stderr)
        return exc.exit_code


def _dispatch(args: argparse.Namespace) -> int:
    if args.group == "template":
        return _template(args)
    if args.command == "providers":
        return _providers(args)
    from .api import NexusFS

    nx = NexusFS(is_admin=bool(getattr(args, "all", False)))
    handler = globals()["_cmd_" + args.command]
    return handler(nx, args)


def _emit(args: argparse.Namespace, data: dict[str, Any], human: str) -> None:
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print(human)


def _cmd_create(nx: Any, args: argparse.Namespace) -> int:
    kwargs: dict[str, Any] = {"template_id": args.template, "provider": args.provider}
    if args.network:
        kwargs["network"] = True
    sb = nx.sandbox_create(args.name, ttl_minutes=10 if args.ttl is None else args.ttl, **kwargs)
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
    from .errors import ExecutionTimeoutError

    code = _read_code(args)
    on_event = None if args.json else _stream_to_terminal
    try:
        result = nx.sandbox_run(args.sandbox_id, _language(args), code, timeout=args.timeout,
                                session=args.session, on_event=on_event)
    except ExecutionTimeoutError as exc:
        if args.json:
            data = exc.result.to_dict() if exc.result is not None else {}
            data.update(sandbox_id=args.sandbox_id, error=str(exc))
            print(json.dumps(data, default=str))
        else:
            print(f"nexus: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    if args.json:
        print(json.dumps(result, default=str))
    elif result["truncated"]:
        print("nexus: output truncated (per-run output cap reached)", file=sys.stderr)
    return result["exit_code"] if 0 <= result["exit_code"] <= 255 else 1


def _stream_to_terminal(event: Any) -> None:
    if event.kind == "stdout":
        sys.stdout.write(event.data)
        sys.stdout.flush()
    elif event.kind == "stderr":
        sys.stderr.write(event.data)
        sys.stderr.flush()
    elif event.kind in ("result", "display"):
        text = event.data.get("data", {}).get("text/plain")
        if text is not None:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()


def _cmd_pause(nx: Any, args: argparse.Namespace) -> int:
    sb = nx.sandbox_pause(args.sandbox_id)
    _emit(args, sb, f"Paused sandbox: {sb['sandbox_id']}")
    return 0


def _cmd_resume(nx: Any, args: argparse.Namespace) -> int:
    sb = nx.sandbox_resume(args.sandbox_id)
    _emit(args, sb, f"Resumed sandbox: {sb['sandbox_id']}")
    return 0


def _cmd_stop(nx: Any, args: argparse.Namespace) -> int:
    sb = nx.sandbox_stop(args.sandbox_id)
    _emit(args, sb, f"Stopped sandbox: {sb['sandbox_id']}")
    return 0


def _cmd_status(nx: Any, args: argparse.Namespace) -> int:
    sb = nx.sandbox_status(args.sandbox_id)
    keys = ["sandbox_id", "name", "status", "provider", "created_at", "last_active_at",
            "expires_at", "uptime_seconds", "error"]
    human = "\n".join(f"{k}: {sb[k]}" for k in keys if sb.get(k) is not None)
    _emit(args, sb, human)
    return 0


def _cmd_list(nx: Any, args: argparse.Namespace) -> int:
    data = nx.sandbox_list(all_users=args.all)
    rows = [("SANDBOX_ID", "NAME", "STATUS", "PROVIDER", "EXPIRES_AT")]
    rows += [(s["sandbox_id"], s["name"], s["status"], s["provider"], s["expires_at"] or "-")
             for s in data["sandboxes"]]
    _emit(args, data, _table(rows) if data["sandboxes"] else "No sandboxes.")
    return 0


def _cmd_reap(nx: Any, args: argparse.Namespace) -> int:
    data = nx.sandbox_reap()
    human = ", ".join(f"{k}: {len(v)}" for k, v in data.items())
    _emit(args, data, f"Reaped: {human}")
    return 0


def _providers(args: argparse.Namespace) -> int:
    from .config import Settings
    from .providers import capability_matrix

    rows = capability_matrix(Settings.load())
    table = [("PROVIDER", "INSTALLED", "CONFIGURED", "PAUSE", "NETWORK", "GPU", "LANGUAGES")]
    yes = {True: "yes", False: "no"}
    for row in rows:
        caps = row["capabilities"]
        table.append((row["name"], yes[row["installed"]], yes[row["configured"]],
                      yes[caps["pause"]], yes[caps["network"]], yes[caps["gpu"]],
                      ",".join(caps["languages"])))
    notes = [f"{r['name']}: {r['reason']}" for r in rows if r["reason"]]
    _emit(args, {"providers": rows}, "\n".join([_table(table), *notes]))
    return 0


def _table(rows: list[tuple[Any, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _template(args: argparse.Namespace) -> int:
    from . import templates
    from .config import Settings

    settings = Settings.load()
    if args.command == "list":
        found = templates.list_templates(settings)
        rows = [f"{t['name']}  {' '.join(t['packages'])}  ({t['size_mb']} MB)" for t in found]
        _emit(args, {"templates": found}, "\n".join(rows) or "No templates.")
    elif args.command == "create":
        print(f"Building template {args.name!r} (pip output follows) ...", file=sys.stderr)
        meta = templates.create_template(settings, args.name, args.pip)
        _emit(args, meta, f"Created template: {meta['name']} ({meta['size_mb']} MB, "
                          f"{meta['build_seconds']} s)")
    else:
        templates.remove_template(settings, args.name)
        _emit(args, {"name": args.name, "removed": True}, f"Removed template: {args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
