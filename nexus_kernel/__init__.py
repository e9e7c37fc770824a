"""nexus-kernel: ephemeral, isolated sandboxes for Python, JavaScript and Bash.

    from nexus_kernel import NexusFS, LocalBackend
    nx = NexusFS(backend=LocalBackend())
    sb = nx.sandbox_create("demo")
    nx.sandbox_run(sb["sandbox_id"], "python", "print(2 + 2)")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "LocalBackend",
    "NexusFS",
    "SandboxManager",
    "Settings",
    "__version__",
    "load_ipython_extension",
]

_LAZY = {
    "NexusFS": "api",
    "LocalBackend": "api",
    "SandboxManager": "manager",
    "Settings": "config",
}


def __getattr__(name: str) -> Any:
    """Import the public API on first use so `nexus` and the kernel start fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext nexus_kernel` registers the %sandbox magics."""
    from magics import load_ipython_extension as load

    load(ipython)
