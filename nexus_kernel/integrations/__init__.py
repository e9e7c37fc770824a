"""Ready-made tools for agent frameworks, each an optional extra imported only when used:
``langchain_tool`` (LangChain / LangGraph ``BaseTool``, extra ``[langchain]``),
``crewai_tool`` (a CrewAI ``BaseTool``, extra ``[crewai]``, in an environment of its own) and
``smolagents_executor`` (a smolagents remote Python executor, extra ``[smolagents]``).
They share :class:`~nexus_kernel.integrations.sandbox.AgentSandbox` and
:mod:`nexus_kernel.llm_output`."""
