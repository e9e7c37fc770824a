"""Command-line entry point of the agent (``python3 -m sandbox_agent ARGS``, or ``python3
sandbox_agent.pyz ARGS`` for the zipapp)::

    serve (--socket ADDRESS | --listen-fd FD) [--token-fd FD] [--home DIR] [--deadline EPOCH]
          [--seccomp-filter HEX]
    relay --socket ADDRESS [--peer-pid PID]
    worker-python

ADDRESS is a path or ``@name`` (an abstract unix socket). ``--listen-fd``: a listening socket
the host made (local provider). ``--token-fd``: where the token's line is read (default 0,
stdin). ``--seccomp-filter``: a BPF program (hex) installed before anything else runs
(docker; the local jail gets the same filter from bubblewrap). ``--peer-pid``: the relay talks only to a socket whose listener is that pid.

Each command imports only its own part of the package.
"""

from __future__ import annotations

import sys

_USAGE = """usage:
  sandbox_agent serve (--socket ADDRESS | --listen-fd FD) [--token-fd FD] [--home DIR]
                      [--deadline EPOCH] [--seccomp-filter HEX]
  sandbox_agent relay --socket ADDRESS [--peer-pid PID]"""


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


def _int(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"sandbox_agent: {name} must be a number") from None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else ""
    if command == "worker-python":
        from .worker import main as worker_main

        return worker_main()
    if command == "relay":
        options = _parse_options(args, {"--socket": "socket", "--peer-pid": "peer_pid"})
        if "socket" not in options:
            raise SystemExit(_USAGE)
        from .relay import relay

        return relay(options["socket"], _int(options.get("peer_pid"), "--peer-pid"))
    if command == "serve":
        options = _parse_options(
            args,
            {
                "--socket": "socket",
                "--listen-fd": "listen_fd",
                "--token-fd": "token_fd",
                "--home": "home",
                "--deadline": "deadline",
                "--seccomp-filter": "seccomp",
            },
        )
        if "seccomp" in options:  # first: before any thread, child or user code exists
            from .seccomp import install

            try:
                program = bytes.fromhex(options["seccomp"])
            except ValueError:
                raise SystemExit("sandbox_agent: --seccomp-filter must be hex") from None
            install(program)
        if ("socket" in options) == ("listen_fd" in options):
            raise SystemExit(_USAGE)
        deadline = options.get("deadline")
        try:
            at = float(deadline) if deadline is not None else None
        except ValueError:
            raise SystemExit("sandbox_agent: --deadline must be epoch seconds") from None
        from .boot import serve

        token_fd = _int(options.get("token_fd"), "--token-fd")
        return serve(options.get("socket"), _int(options.get("listen_fd"), "--listen-fd"),
                     0 if token_fd is None else token_fd, options.get("home"), at)
    raise SystemExit(_USAGE)


def run() -> None:
    """Run :func:`main` with this process's arguments and exit with its status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
