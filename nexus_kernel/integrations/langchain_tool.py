"""A LangChain / LangGraph tool that runs code in a Nexus sandbox (extra ``[langchain]``).

    from nexus_kernel.integrations.langchain_tool import NexusSandboxTool
    tool = NexusSandboxTool()            # the sandbox starts at the first call
    agent = create_react_agent(model, [tool])
    ...
    tool.sandbox.close()

The tool's content is the run described for a model (:mod:`nexus_kernel.llm_output`); its
artifact holds the structured fields and the images (base64 PNG).
"""

from __future__ import annotations

from typing import Any, Literal

from .sandbox import AgentSandbox, missing

try:
    from langchain_core.tools import BaseTool
    from pydantic import BaseModel, ConfigDict, Field

    from .schema import DESCRIPTION, RunCode
except ImportError as exc:
    raise missing("langchain-core", "langchain") from exc


class NexusSandboxTool(BaseTool):
    """``BaseTool`` running code in one :class:`AgentSandbox` (``sandbox=`` to share one)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str = "run_code"
    description: str = DESCRIPTION
    args_schema: type[BaseModel] = RunCode
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    sandbox: AgentSandbox = Field(default_factory=AgentSandbox)

    def _run(self, code: str, language: str = "python", **_: Any) -> tuple[str, dict[str, Any]]:
        outcome = self.sandbox.run(code, language)
        images = [{"mime_type": image.mime, "data": image.data} for image in outcome.images]
        return outcome.text, {**outcome.fields, "images": images, "is_error": outcome.is_error}


__all__ = ["NexusSandboxTool", "RunCode"]
