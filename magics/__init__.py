"""The ``%sandbox`` / ``%%sandbox`` IPython magics, for any IPython kernel.

    %load_ext nexus_kernel          # or: %load_ext magics
    %sandbox create demo            # becomes the current sandbox
    %%sandbox run -l bash
    echo "hello from $(hostname)"

See ``docs/jupyter.md`` for every subcommand and ``%config SandboxMagics`` for the defaults.
"""

from __future__ import annotations

from typing import Any

from .sandbox_magics import SandboxMagics

__all__ = ["SandboxMagics", "load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register one :class:`SandboxMagics` per shell (loading twice keeps the first one,
    so ``%load_ext magics`` after ``%load_ext nexus_kernel`` keeps the current sandbox)."""
    registry = ipython.magics_manager.registry
    if isinstance(registry.get(SandboxMagics.__name__), SandboxMagics):
        return
    ipython.register_magics(SandboxMagics(shell=ipython))


def unload_ipython_extension(ipython: Any) -> None:
    """Close the agent connections of this shell's magics (sandboxes keep running)."""
    magics = ipython.magics_manager.registry.get(SandboxMagics.__name__)
    if isinstance(magics, SandboxMagics):
        magics.close()
