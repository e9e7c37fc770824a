"""The sandbox agent (the ``sandbox_agent`` package, run inside every sandbox), its
host-side client, and the helper that deploys it (:mod:`.deploy`). The names below are
imported on first use: a provider that needs only the deploy helper does not load the
client (``nexus sandbox list`` asks a local sandbox's liveness without either)."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "PACKAGE_DIR": "deploy",
    "PACKAGE_NAME": "deploy",
    "ZIPAPP_NAME": "deploy",
    "AgentClient": "client",
    "agent_digest": "deploy",
    "dir_argv": "deploy",
    "unix_connector": "client",
    "zipapp_argv": "deploy",
    "zipapp_bytes": "deploy",
    "zipapp_file": "deploy",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
