"""A smolagents remote Python executor running a ``CodeAgent``'s code in a Nexus sandbox
(extra ``[smolagents]``), as its E2B and Docker executors do:

    from nexus_kernel.integrations.smolagents_executor import NexusExecutor
    agent = CodeAgent(tools=[], model=model)
    agent.python_executor = NexusExecutor([], agent.logger)   # or CodeAgent(executor=...)
    agent.run("...")
    agent.python_executor.cleanup()

Every step runs in one python session of one sandbox (variables persist); the final answer
comes back through smolagents' own FinalAnswerException, serialised without pickle unless
``allow_pickle=True``.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from ..api import NexusFS
from .sandbox import AgentSandbox, missing

try:
    from smolagents.local_python_executor import CodeOutput
    from smolagents.monitoring import LogLevel
    from smolagents.remote_executors import RemotePythonExecutor
    from smolagents.utils import AgentError
except ImportError as exc:
    raise missing("smolagents", "smolagents") from exc


class NexusExecutor(RemotePythonExecutor):
    """``RemotePythonExecutor`` on a Nexus sandbox (``sandbox=`` an :class:`AgentSandbox` to
    share one; ``nx``, ``sandbox_id`` and ``create`` keywords otherwise build one)."""

    def __init__(self, additional_imports: list[str], logger: Any, allow_pickle: bool = False,
                 *, sandbox: AgentSandbox | None = None, nx: NexusFS | None = None,
                 sandbox_id: str | None = None, **create: Any):
        super().__init__(additional_imports, logger, allow_pickle)
        self.sandbox = sandbox or AgentSandbox(nx, sandbox_id, name="smolagents",
                                               session="smolagents", **create)
        self.sandbox.ensure()
        self.installed_packages = self.install_packages(additional_imports)
        self.logger.log("Nexus sandbox is running", level=LogLevel.INFO)

    def run_code_raise_errors(self, code: str) -> CodeOutput:
        outcome = self.sandbox.run(code, "python")
        logs = outcome.fields["stdout"]
        error = outcome.fields["error"]
        if error:
            if error["ename"] == self.FINAL_ANSWER_EXCEPTION:
                answer = self._deserialize_final_answer(error["evalue"], self.allow_pickle)
                return CodeOutput(output=answer, logs=logs, is_final_answer=True)
            raise AgentError(f"{logs}\nExecuting code yielded an error:\n{error['ename']}\n"
                             f"{error['evalue']}\n{error['traceback']}", self.logger)
        if outcome.is_error:  # no exception, yet it failed (killed, timed out, exit code)
            raise AgentError(f"{logs}\nExecuting code failed:\n{outcome.text}", self.logger)
        if outcome.images:
            import PIL.Image

            return CodeOutput(output=PIL.Image.open(io.BytesIO(base64.b64decode(
                outcome.images[-1].data))), logs=logs, is_final_answer=False)
        outputs = outcome.fields["outputs"]
        return CodeOutput(output=outputs[-1] if outputs else None, logs=logs,
                          is_final_answer=False)

    def install_packages(self, additional_imports: list[str]) -> list[str]:
        """pip-install the modules the agent may import that the sandbox lacks (needs a
        sandbox with network or a template that has them)."""
        wanted = sorted({root for root in (name.split(".")[0] for name in additional_imports)
                         if root.isidentifier()})
        if not wanted:
            return []
        probe = self.sandbox.run(  # a module name (numpy) or a package name (pillow)
            "import importlib.metadata, importlib.util\n"
            "def present(name):\n"
            "    try:\n"
            "        return bool(importlib.metadata.distribution(name))\n"
            "    except importlib.metadata.PackageNotFoundError:\n"
            "        return importlib.util.find_spec(name) is not None\n"
            f"print(' '.join(n for n in {wanted!r} if not present(n)))")
        absent = probe.fields["stdout"].split()
        if absent:
            pip = self.sandbox.run(f"python3 -m pip install --quiet {' '.join(absent)}", "bash")
            self.logger.log(pip.text, level=LogLevel.INFO)
        return wanted

    def cleanup(self) -> None:
        """Stop the sandbox (if this executor created it)."""
        self.sandbox.close()


__all__ = ["NexusExecutor"]
