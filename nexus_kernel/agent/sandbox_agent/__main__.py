"""Command-line entry point of the agent (``python3 -m sandbox_agent ARGS``, or ``python3
sandbox_agent.pyz ARGS`` for the zipapp)::

    serve --socket PATH --token-file PATH [--home DIR] [--deadline EPOCH]
    relay --socket PATH
    worker-python

Each command imports only its own part of the package.
"""

from __future__ import annotations

import sys

_USAGE = """usage:
  sandbox_agent serve --socket PATH --token-file PATH [--home DIR] [--deadline EPOCH]
  sandbox_agent relay --socket PATH"""


def _parse_options(args: list[str], known: dict) -> dict:
    options: dict = {}
    i = 0
    while i < len(args):
        name = args[i]
        if name not in known or i + 1 >= len(args):
            raise SystemExit(f"sandbox_agent: bad argument {name!r}\n{_USAGE}")
        options[known[name]] = args[i + 1]
        i += 2
    return options


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else ""
    if command == "worker-python":
        from .worker import main as worker_main

        return worker_main()
    if command == "relay":
        options = _parse_options(args, {"--socket": "socket"})
        if "socket" not in options:
            raise SystemExit(_USAGE)
        from .relay import relay

        return relay(options["socket"])
    if command == "serve":
        options = _parse_options(
            args,
            {
                "--socket": "socket",
                "--token-file": "token_file",
                "--home": "home",
                "--deadline": "deadline",
            },
        )
        if "socket" not in options or "token_file" not in options:
            raise SystemExit(_USAGE)
        deadline = options.get("deadline")
        try:
            at = float(deadline) if deadline is not None else None
        except ValueError:
            raise SystemExit("sandbox_agent: --deadline must be epoch seconds") from None
        from .server import serve

        return serve(options["socket"], options["token_file"], options.get("home"), at)
    raise SystemExit(_USAGE)


def run() -> None:
    """Run :func:`main` with this process's arguments and exit with its status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
