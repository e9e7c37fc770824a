"""Ready-made tools for agent frameworks, each an optional extra imported only when used:
``langchain_tool`` (LangChain / LangGraph ``BaseTool``, extra ``[langchain]``) and
``smolagents_executor`` (a smolagents remote Python executor, extra ``[smolagents]``).
They share :class:`~nexus_kernel.integrations.sandbox.AgentSandbox` and
:mod:`nexus_kernel.llm_output`."""
