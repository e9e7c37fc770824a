"""The sandbox agent (the ``sandbox_agent`` package, run inside every sandbox), its
host-side client, and the helper that deploys it (:mod:`.deploy`)."""

from __future__ import annotations

from .client import AgentClient, unix_connector
from .deploy import (
    PACKAGE_DIR,
    PACKAGE_NAME,
    ZIPAPP_NAME,
    agent_digest,
    dir_argv,
    zipapp_argv,
    zipapp_bytes,
    zipapp_file,
)

__all__ = [
    "PACKAGE_DIR",
    "PACKAGE_NAME",
    "ZIPAPP_NAME",
    "AgentClient",
    "agent_digest",
    "dir_argv",
    "unix_connector",
    "zipapp_argv",
    "zipapp_bytes",
    "zipapp_file",
]
