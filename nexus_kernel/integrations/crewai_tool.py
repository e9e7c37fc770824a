"""A CrewAI tool that runs code in a Nexus sandbox (extra ``[crewai]``): the tool the seed's
Example 3 leaves to the reader (``tools=[]  # Add custom tools that use nx.sandbox_run()``).

    from nexus_kernel.integrations.crewai_tool import NexusSandboxTool
    from nexus_kernel.integrations.sandbox import AgentSandbox
    tool = NexusSandboxTool(sandbox=AgentSandbox(nx, sandbox_id))   # or NexusSandboxTool()
    agent = Agent(role=..., goal=..., backstory=..., tools=[tool])

The tool's answer is the run described for a model (:mod:`nexus_kernel.llm_output`): stdout,
stderr, exit code, rich outputs and errors with their tracebacks, truncated to fit.
CrewAI pins ``mcp<2`` while ``nexus mcp`` needs 2.x: install it in its own environment.
"""

from __future__ import annotations

from typing import Any

from .sandbox import AgentSandbox, missing

try:
    from crewai.tools import BaseTool
    from pydantic import BaseModel, ConfigDict, Field

    from .schema import DESCRIPTION, RunCode
except ImportError as exc:
    raise missing("crewai", "crewai") from exc


class NexusSandboxTool(BaseTool):
    """CrewAI ``BaseTool`` running code in one :class:`AgentSandbox` (``sandbox=`` to use a
    sandbox made beforehand, as in the seed's Example 3)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str = "run_code"
    description: str = DESCRIPTION
    args_schema: type[BaseModel] = RunCode
    sandbox: AgentSandbox = Field(default_factory=AgentSandbox)

    def _run(self, code: str, language: str = "python", **_: Any) -> str:
        return self.sandbox.run(code, language).text


__all__ = ["NexusSandboxTool", "RunCode"]
