"""The seed's Example 3 with the CrewAI tool filled in, run by tests/test_integrations.py in
CrewAI's own environment (CrewAI pins mcp<2; nexus' [mcp] extra needs 2.x). The model is
scripted (no network, no LLM): it asks for the tool once, then answers with what the tool
observed. Prints one JSON line for the test."""

import json
import os

from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM

from nexus_kernel import LocalBackend, NexusFS
from nexus_kernel.integrations.crewai_tool import NexusSandboxTool
from nexus_kernel.integrations.sandbox import AgentSandbox

CODE = """import os, statistics
data = [1, 2, 3, 4, 5, 100]
print(f"Mean: {statistics.mean(data)}")
print(f"Median: {statistics.median(data)}")
print("pid", os.getpid())"""
#: What the run prints, which only the sandbox's answer holds (the task text has the code).
MARK = "Mean: 19.1666"
prompts: list[str] = []


class Scripted(BaseLLM):
    def call(self, messages, tools=None, callbacks=None, available_functions=None,
             from_task=None, from_agent=None, response_model=None):
        text = messages if isinstance(messages, str) else "\n".join(
            str(message.get("content", "")) for message in messages)
        prompts.append(text)
        if MARK not in text:
            return ("Thought: I should run the code in the sandbox.\nAction: run_code\n"
                    "Action Input: " + json.dumps({"code": CODE}))
        observed = [line for line in text[text.index(MARK):].splitlines()
                    if line.startswith(("Mean:", "Median:", "pid "))][:3]
        return "Thought: I now know the final answer\nFinal Answer: " + "; ".join(observed)

    def supports_function_calling(self) -> bool:
        return False  # the ReAct text protocol: Action / Action Input / Observation

    def supports_stop_words(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 8192


nx = NexusFS(backend=LocalBackend(), is_admin=True)
sandbox_id = nx.sandbox_create("crewai-coder", ttl_minutes=60)["sandbox_id"]
code_executor = Agent(
    role="Code Executor",
    goal="Execute Python code safely in sandboxes",
    backstory="I run code in isolated environments",
    tools=[NexusSandboxTool(sandbox=AgentSandbox(nx, sandbox_id))],
    allow_delegation=False,
    llm=Scripted(model="scripted"),
)
analyze_task = Task(
    description=f"Execute this Python code in sandbox {sandbox_id}:\n```python\n{CODE}\n```",
    agent=code_executor,
    expected_output="Analysis results",
)
result = Crew(agents=[code_executor], tasks=[analyze_task]).kickoff()
status = nx.sandbox_status(sandbox_id)["status"]
nx.sandbox_stop(sandbox_id)
print(json.dumps({"answer": str(result), "status": status, "calls": len(prompts),
                  "host_pid": os.getpid()}))
