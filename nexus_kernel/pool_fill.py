"""The detached warm-pool filler a short-lived process (the CLI) starts after a hand-out:
``python -m nexus_kernel.pool_fill --provider NAME --size N [--template ID] [--network]``.

Settings come from the environment the starter passes (its ``NEXUS_HOME``, with
``NEXUS_POOL_REFILL=off`` so the filler starts no filler of its own). It prints nothing and
exits 0 when the pool is full, 1 when a sandbox could not be started."""

from __future__ import annotations

import argparse
import sys

from .errors import SandboxError
from .manager import SandboxManager


def main(argv: list[str] | None = None) -> int:
    """Fill pool (provider, template, network) up to ``--size`` entries."""
    parser = argparse.ArgumentParser(prog="python -m nexus_kernel.pool_fill")
    parser.add_argument("--provider", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--template")
    parser.add_argument("--network", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args(argv)
    manager = SandboxManager()
    try:
        manager.pool.fill(args.provider, args.template, args.network, size=args.size)
    except SandboxError:
        return 1
    finally:
        manager.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
