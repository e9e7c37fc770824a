"""``SandboxMagics``: the ``%sandbox`` line magic and ``%%sandbox`` cell magic.

The magic keeps what belongs to one notebook (one IPython shell): a single
:class:`~nexus_kernel.manager.SandboxManager` (settings from ``NEXUS_*`` variables) and the
*current sandbox*. Defaults for new sandboxes and runs are traitlets options, so
``%config SandboxMagics.ttl_minutes = 30`` (or ``c.SandboxMagics.ttl_minutes`` in an
IPython profile) changes them. Parsing and the subcommands live in :mod:`magics.commands`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from IPython.core.error import UsageError as IPythonUsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Float, TraitError, Unicode, validate

from nexus_kernel.checkpoints import CellCheckpoints
from nexus_kernel.errors import SandboxError, SandboxNotFoundError, UsageError
from nexus_kernel.manager import SandboxManager
from nexus_kernel.models import USAGE_LOG_SIZE, ExecResult
from nexus_kernel.validation import normalize_language

from . import commands


@magics_class
class SandboxMagics(Magics):
    """Create, run and manage nexus sandboxes from a notebook.

    Options (``%config SandboxMagics.<name> = value``); ``None`` means "from the
    ``NEXUS_*`` environment variable, else the built-in default".
    """

    provider = Unicode(
        None, allow_none=True, help="Provider of new sandboxes: local, docker, e2b or modal."
    ).tag(config=True)
    ttl_minutes = Float(
        None, allow_none=True, help="Idle minutes before a new sandbox expires (default 10)."
    ).tag(config=True)
    timeout = Float(
        None, allow_none=True, help="Seconds a %%sandbox run may take (default 30)."
    ).tag(config=True)
    template = Unicode(
        None, allow_none=True, help="Template (local) or image (docker, e2b, modal) of new sandboxes."
    ).tag(config=True)
    network = Bool(None, allow_none=True, help="Give new sandboxes network access.").tag(
        config=True
    )
    session = Unicode(
        "main",
        allow_none=True,
        help="Session of %%sandbox run: variables persist per session; None = a fresh "
        "process for every run (files still persist).",
    ).tag(config=True)
    language = Unicode("python", help="Language of %%sandbox run: python, bash or javascript.").tag(
        config=True
    )
    raise_error = Bool(
        False,
        help="Make a %%sandbox run cell fail (raise) when the code fails, as --raise-error does.",
    ).tag(config=True)

    trusted_output = Bool(
        None,
        allow_none=True,
        help="Show sandbox output as it is, scripts and widgets included (%sandbox trust on); "
        "None = the NEXUS_TRUSTED_OUTPUT setting, off by default: output is made inert.",
    ).tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any):
        super().__init__(shell=shell, **kwargs)
        self._manager: SandboxManager | None = None
        #: Id of this notebook's current sandbox (set by create and use).
        self.current: str | None = None
        #: (sandbox id, hard end) of the runtime-cap warnings already shown.
        self.warned_caps: set[tuple[str, float]] = set()
        #: The last runs' (label, ended_by, usage), for ``%sandbox usage``.
        self.usage_log: deque[tuple[str, str, dict[str, Any] | None]] = deque(
            maxlen=USAGE_LOG_SIZE)
        self._runs = 0
        self._checkpoints: CellCheckpoints | None = None
        #: The label of the last cell that ran a ``%%sandbox`` body ("In [N]").
        self.last_cell = "no cell"

    @validate("language")
    def _check_language(self, proposal: dict[str, Any]) -> str:
        try:
            return normalize_language(proposal["value"])
        except SandboxError as exc:
            raise TraitError(str(exc)) from None

    @property
    def manager(self) -> SandboxManager:
        """The one manager of this shell, created on first use."""
        if self._manager is None:
            self._manager = SandboxManager()
        return self._manager

    @property
    def checkpoints(self) -> CellCheckpoints:
        """Automatic checkpoints before ``%%sandbox`` cells (NEXUS_CHECKPOINTS), undo."""
        if self._checkpoints is None:
            self._checkpoints = CellCheckpoints(self.manager, self.manager.settings.checkpoints)
        return self._checkpoints

    def close(self) -> None:
        """Close agent connections (sandboxes keep running until stopped or expired)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    # ------------------------------------------------------------------ the magic

    @line_cell_magic
    def sandbox(self, line: str, cell: str | None = None) -> Any:
        """Run code in nexus sandboxes and manage them.

        Line magic: ``%sandbox SUBCOMMAND ...`` with SUBCOMMAND one of create, list,
        status, pause, resume, stop, use, upload, download, interrupt, trust, undo,
        checkpoint, restore, checkpoints, help.
        Cell magic: ``%%sandbox run [ID] [-l LANG] [--timeout S] [--session S]
        [--fresh] [--raise-error]`` runs the cell's body; ``%%sandbox`` alone is ``run``.
        ``%sandbox help`` prints the usage of every subcommand.
        """
        try:
            return commands.dispatch(self, line, cell)
        except SandboxError as exc:  # IPython shows its UsageError as one line, no traceback
            raise IPythonUsageError(one_line(exc.render("%sandbox"))) from None

    # --------------------------------------------------------- helpers for commands

    def resolve(self, ref: str | None) -> str:
        """The sandbox id for ``ref`` (an id, or the name of one live sandbox), or the
        current sandbox when ``ref`` is None."""
        if ref is None:
            if self.current is None:
                raise UsageError(
                    "no current sandbox: create one with %sandbox create NAME "
                    "or pick one with %sandbox use ID"
                )
            return self.current
        try:
            return self.manager.status(ref).sandbox_id
        except SandboxNotFoundError:
            named = [
                r.sandbox_id
                for r in self.manager.list()
                if r.name == ref and r.status.value != "stopped"
            ]
            if len(named) == 1:
                return named[0]
            raise

    def log_usage(self, sandbox_id: str, result: ExecResult) -> None:
        """Remember a finished run's ``ended_by`` and ``usage`` for ``%sandbox usage``."""
        self._runs += 1
        self.usage_log.append((f"{self._runs} {sandbox_id}", result.ended_by, result.usage))

    def run_session(self, session: str | None, fresh: bool) -> str | None:
        """The session a run uses: none when fresh, else the option, else the default."""
        if fresh:
            return None
        return session if session is not None else self.session


def one_line(text: str) -> str:
    """``text`` on a single line (UsageError messages never span lines)."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
