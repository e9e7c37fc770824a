"""The framework tools through each framework's own tool interface, with a scripted model
(no network, no LLM), asserting on what the sandbox did: a LangChain tool call, a smolagents
CodeAgent whose steps run in a Nexus sandbox, and the seed's Example 3 (a CrewAI crew) with
the CrewAI tool, in CrewAI's own environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, TEMPLATE_CACHE

pytestmark = pytest.mark.bwrap


def test_langchain_tool_call(nx) -> None:
    from langchain_core.messages import ToolMessage

    from nexus_kernel.integrations.langchain_tool import NexusSandboxTool
    from nexus_kernel.integrations.sandbox import AgentSandbox

    tool = NexusSandboxTool(sandbox=AgentSandbox(nx))
    assert tool.args == {
        "code": {"description": "the code to run", "title": "Code", "type": "string"},
        "language": {"default": "python", "description": "language of the code",
                     "enum": ["python", "javascript", "bash"], "title": "Language",
                     "type": "string"}}
    # a model's tool call, as LangChain hands it to the tool: a ToolMessage comes back
    call = {"name": "run_code", "args": {"code": "total = sum(range(10))"}, "id": "call-1",
            "type": "tool_call"}
    message = tool.invoke(call)
    assert isinstance(message, ToolMessage) and message.tool_call_id == "call-1"
    message = tool.invoke({**call, "id": "call-2", "args": {"code": "print(total * 2)"}})
    assert "stdout:\n90" in message.content  # the session kept `total`
    assert message.artifact["stdout"] == "90\n" and message.artifact["exit_code"] == 0
    message = tool.invoke({**call, "id": "call-3",
                           "args": {"code": "echo $((6 * 7)) >&2; exit 3", "language": "bash"}})
    assert message.artifact["stderr"] == "42\n" and message.artifact["exit_code"] == 3
    assert message.artifact["is_error"]
    message = tool.invoke({**call, "id": "call-4", "args": {"code": "int('x')"}})
    assert "error: ValueError: invalid literal for int()" in message.content
    assert "int('x')" in message.artifact["error"]["traceback"]
    sandbox_id = tool.sandbox.sandbox_id
    tool.sandbox.close()
    assert nx.sandbox_status(sandbox_id)["status"] == "stopped"


def test_smolagents_code_agent_step(nx, matplotlib_template: str | None) -> None:
    """smolagents' tool code imports PIL in the sandbox (as in E2B's image): the matplotlib
    test template has pillow."""
    from smolagents import CodeAgent, tool
    from smolagents.models import ChatMessage, MessageRole, Model

    from nexus_kernel.integrations.smolagents_executor import NexusExecutor

    replies = iter([
        "Thought: compute in the sandbox.\n<code>\nimport os\nsquares = [n * n for n in "
        "range(5)]\nprint('pid', os.getpid(), 'squares', squares)\n</code>",
        "Thought: use the tool, then answer.\n<code>\nfinal_answer({'sum': sum(squares), "
        "'double': double(21)})\n</code>",
    ])

    class Scripted(Model):
        def generate(self, messages, stop_sequences=None, response_format=None,
                     tools_to_call_from=None, **kwargs):
            return ChatMessage(role=MessageRole.ASSISTANT, content=next(replies))

    @tool
    def double(n: int) -> int:
        """Double a number.

        Args:
            n: the number
        """
        return n * 2

    agent = CodeAgent(tools=[double], model=Scripted(), max_steps=4)
    agent.python_executor = NexusExecutor([], agent.logger, nx=nx,
                                          template_id=matplotlib_template)
    try:
        answer = agent.run("sum of the first five squares")
        assert answer == {"sum": 30, "double": 42}
        observations = agent.memory.steps[1].observations
        assert "squares [0, 1, 4, 9, 16]" in observations
        pid = int(observations.split("pid ")[1].split()[0])
        import os

        assert pid != os.getpid()  # the code ran in the sandbox, not here
        sandbox_id = agent.python_executor.sandbox.sandbox_id
        assert nx.sandbox_status(sandbox_id)["status"] == "active"
    finally:
        agent.python_executor.cleanup()
    assert nx.sandbox_status(sandbox_id)["status"] == "stopped"


@pytest.fixture(scope="session")
def crewai_python() -> str:
    """A python with CrewAI (tests/crewai_env.py: an environment of its own)."""
    from .crewai_env import ensure

    return str(ensure(TEMPLATE_CACHE))


def test_seed_example_3_crewai_crew_runs_its_code_in_a_sandbox(crewai_python: str,
                                                              nexus_home: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
           "PYTHONPATH": str(ROOT), "NEXUS_HOME": str(nexus_home), "NEXUS_USER": "tester",
           "NEXUS_DEFAULT_TEMPLATE": "minimal",
           "CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true"}
    run = subprocess.run([crewai_python, str(ROOT / "tests" / "crewai_example3.py")],
                         capture_output=True, text=True, env=env, cwd=nexus_home.parent,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    # the crew's answer is what the tool observed in the sandbox: computed there, not here
    assert found["answer"].startswith("Mean: 19.166666666666668; Median: 3.5; pid "), found
    assert int(found["answer"].rsplit("pid ", 1)[1]) != found["host_pid"]
    assert found["calls"] == 2 and found["status"] == "active"  # one tool call, one answer
