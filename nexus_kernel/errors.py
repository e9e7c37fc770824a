"""One exception root and typed leaves. Each message says what the user should do."""

from __future__ import annotations

from typing import Any


class SandboxError(Exception):
    """Root of every error nexus-kernel raises on purpose."""

    #: CLI exit code for this kind of error (2 = usage, 1 = everything else).
    exit_code = 1


class InvalidArgumentError(SandboxError, ValueError):
    """Bad input from the caller: a bad language, TTL, timeout, name or code."""

    exit_code = 2


class SandboxNotFoundError(SandboxError, KeyError):
    """No sandbox with this id is visible to the current user."""

    exit_code = 2

    def __init__(self, sandbox_id: str):
        self.sandbox_id = sandbox_id
        super().__init__(
            f"no sandbox {sandbox_id!r} for this user; run 'nexus sandbox list' to see yours"
        )

    def __str__(self) -> str:  # KeyError would add quotes
        return str(self.args[0])


class SandboxStateError(SandboxError):
    """The operation is not possible in the sandbox's current state (e.g. run on stopped)."""


class ExecutionTimeoutError(SandboxError, TimeoutError):
    """Code ran past its timeout. Carries the partial result (output printed before)."""

    def __init__(self, timeout: float, result: Any = None):
        self.timeout = timeout
        self.result = result
        shown = int(timeout) if float(timeout).is_integer() else timeout
        lost = ("; the session did not stop when interrupted and was restarted: its "
                "variables are gone" if getattr(result, "session_restarted", False) else "")
        super().__init__(f"Code execution exceeded {shown} second timeout{lost}")

    @property
    def stdout(self) -> str:
        return getattr(self.result, "stdout", "") if self.result is not None else ""

    @property
    def stderr(self) -> str:
        return getattr(self.result, "stderr", "") if self.result is not None else ""


class ProviderUnavailableError(SandboxError):
    """The provider cannot work on this machine (tool missing, daemon down, image missing)."""


class MissingDependencyError(ProviderUnavailableError, ImportError):
    """A provider's SDK is not installed; the message names the extra to install."""

    def __init__(self, provider: str, package: str):
        self.provider = provider
        super().__init__(
            f"the {provider} provider needs the {package!r} package: "
            f"pip install 'nexus-kernel[{provider}]'"
        )


class MissingCredentialsError(ProviderUnavailableError):
    """A cloud provider's credentials are absent; the message names the variable."""


class UnsupportedOperationError(SandboxError):
    """The provider does not offer this operation; the message names the alternative."""


class PermissionDeniedError(SandboxError):
    """The caller lacks the right for this operation (e.g. other users' sandboxes need
    admin); the message says how an admin is configured."""


class ProviderError(SandboxError):
    """The provider failed while doing something it supports."""


class AgentError(ProviderError):
    """The in-sandbox agent is unreachable or answered with an error."""
