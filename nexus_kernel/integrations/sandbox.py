"""AgentSandbox: the one sandbox a framework tool runs its code in (created on first use)."""

from __future__ import annotations

from typing import Any

from .. import llm_output
from ..api import NexusFS
from ..errors import MissingDependencyError


def missing(package: str, extra: str) -> MissingDependencyError:
    """The error for a framework that is not installed, naming the extra that installs it."""
    return MissingDependencyError(
        f"this integration needs {package}: pip install 'nexus-kernel[{extra}]'")


class AgentSandbox:
    """A sandbox for one agent: created at the first run (or ``sandbox_id`` to use one that
    exists, which :meth:`close` then leaves running), one session so variables carry over
    between the agent's steps.

    ``nx``: the :class:`~nexus_kernel.api.NexusFS` to use (default: a new one from the
    ``NEXUS_*`` settings); ``create`` keywords go to ``sandbox_create`` (``ttl_minutes``,
    ``template_id``, ``network`` ...)."""

    def __init__(self, nx: NexusFS | None = None, sandbox_id: str | None = None, *,
                 name: str = "agent", session: str = "agent", timeout: float | None = None,
                 **create: Any):
        self.nx = nx or NexusFS()
        self.sandbox_id = sandbox_id
        self.owned = sandbox_id is None
        self.name, self.session, self.timeout, self.create = name, session, timeout, create

    def ensure(self) -> str:
        """The sandbox's id, creating it on first use."""
        if self.sandbox_id is None:
            self.sandbox_id = self.nx.sandbox_create(self.name, **self.create)["sandbox_id"]
        return self.sandbox_id

    def run(self, code: str, language: str = "python") -> llm_output.Outcome:
        """Run ``code`` in the agent's session and describe the result for a model."""
        return llm_output.run(self.nx.manager, self.ensure(), code, language,
                              session=self.session, timeout=self.timeout)

    def close(self) -> None:
        """Stop the sandbox if this object created it."""
        if self.owned and self.sandbox_id is not None:
            self.nx.sandbox_stop(self.sandbox_id)
            self.sandbox_id = None
