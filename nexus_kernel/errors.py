"""One exception root and typed leaves. Each message says what the user should do."""

from __future__ import annotations

from typing import Any

#: How messages name a command to run; a surface with its own syntax names it its way.
CLI_COMMAND = "nexus sandbox"


class SandboxError(Exception):
    """Root of every error nexus-kernel raises on purpose.

    ``command`` is the command the message tells the user to run, as its words after
    ``nexus sandbox`` (e.g. ``"resume sb_1"``); the message names it the CLI's way, and
    :meth:`render` names it another surface's way (the magics': ``%sandbox resume sb_1``)."""

    #: CLI exit code for this kind of error (2 = usage, 1 = everything else).
    exit_code = 1
    command: str | None = None

    def __init__(self, *args: object, command: str | None = None) -> None:
        super().__init__(*args)
        if command is not None:
            self.command = command

    def render(self, prefix: str = CLI_COMMAND) -> str:
        """The message, with its command written as ``prefix`` + the command's words."""
        text = str(self)
        if self.command is None or prefix == CLI_COMMAND:
            return text
        before, found, after = text.rpartition(f"{CLI_COMMAND} {self.command}")
        return f"{before}{prefix} {self.command}{after}" if found else text


class InvalidArgumentError(SandboxError, ValueError):
    """Bad input from the caller: a bad language, TTL, timeout, name or code."""

    exit_code = 2


class UsageError(InvalidArgumentError):
    """Bad usage of a command (a ``%sandbox`` line, a ``nexus`` command line); ``prog``,
    when given, is the command the message is about and starts the message."""

    def __init__(self, message: str, prog: str | None = None):
        self.prog = prog
        super().__init__(f"{prog}: {message}" if prog else message)


class SandboxNotFoundError(SandboxError, KeyError):
    """No sandbox with this id is visible to the current user."""

    exit_code = 2
    command = "list"

    def __init__(self, sandbox_id: str):
        self.sandbox_id = sandbox_id
        super().__init__(
            f"no sandbox {sandbox_id!r} for this user; run '{CLI_COMMAND} list' to see yours"
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


class StoreError(SandboxError):
    """The state store (``NEXUS_HOME/store``) cannot be used as asked."""


class DiskFullError(StoreError, OSError):
    """A write failed because the filesystem holding ``path`` is full. Reads, ``list``,
    ``status`` and ``stop`` keep working; everything works again once space is freed."""

    def __init__(self, path: object):
        self.path = str(path)
        super().__init__(
            f"the disk holding {self.path} is full: free space there (nexus sandbox stop "
            "removes a sandbox's files) and retry; list, status and stop still work")


class StoreDamagedError(StoreError):
    """The state database is truncated, garbage or unreadable; the message names the file."""

    def __init__(self, path: object, detail: str):
        self.path = str(path)
        super().__init__(
            f"the state database {self.path} is damaged ({detail}): run 'nexus sandbox doctor "
            "--repair' to move it aside and rebuild the records from the running sandboxes")
