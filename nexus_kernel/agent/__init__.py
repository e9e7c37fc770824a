"""The sandbox agent (runs inside every sandbox) and its host-side client."""

from __future__ import annotations

from pathlib import Path

from .client import AgentClient, unix_connector

#: The agent program that providers copy into sandboxes and start with ``serve``.
AGENT_PATH = Path(__file__).with_name("sandbox_agent.py")

__all__ = ["AGENT_PATH", "AgentClient", "unix_connector"]
