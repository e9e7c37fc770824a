"""The provider contract: start a sandbox with the agent in it, give a byte stream to it,
follow its deadline, pause/resume/destroy it.

Everything else goes through the agent over that stream: sessions, runs, and files too
(``SandboxManager.put_file`` / ``get_file`` -> ``AgentClient.write_file`` / ``read_file``).
Providers have no file methods: one path for every provider, with the same checks and
bounds everywhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..config import Settings
from ..errors import UnsupportedOperationError
from ..models import Limits, SandboxSpec

if TYPE_CHECKING:  # the host client is imported where a stream is opened, not for listing
    from ..agent.client import Channel

#: A provider's handle: a JSON-serialisable dict stored in the record; any process can
#: re-attach to the sandbox from it. Always holds "token" (the agent's auth token); a
#: platform that ends sandboxes after a fixed runtime, whatever their TTL, adds "hard_end"
#: (:data:`~nexus_kernel.models.HARD_END`: epoch seconds, shown by ``status``).
Handle = dict[str, Any]

#: The default environment of every provider (issue 10): what a sandbox created with no
#: template has besides python3, node and bash. Local: the "datascience" template
#: (nexus_kernel/templates.py); docker: the image (scripts/build-image.sh, docker/Dockerfile);
#: e2b: E2B's code-interpreter template; modal: debian_slim + these, pip-installed.
DATASCIENCE_PACKAGES = ("ipython", "numpy", "pandas", "matplotlib", "matplotlib-inline",
                        "seaborn", "scipy", "scikit-learn")
#: Template ids that ask for the lean sandbox instead (no data-science stack).
LEAN_TEMPLATES = ("minimal", "none")
#: What a platform snapshot holds (its ``keeps``): every process carries over, or only
#: the files (a fork's agent and interpreters start afresh).
KEEPS_MEMORY = "memory and files"
KEEPS_FILES = "files only; interpreters restart"

#: Open files per process in every sandbox (RLIMIT_NOFILE, soft = hard): the same on every
#: host, whatever limit the host or the Docker daemon would pass down.
OPEN_FILES = 4096
#: Inodes of a scratch tmpfs per MB of its size (one per 4 KB on average).
SCRATCH_INODES_PER_MB = 256


def scratch_mb(limits: Limits) -> int:
    """Size (MB) of each writable tmpfs of a sandbox (/home/user, /tmp, /dev/shm).

    Their files live in memory and are charged to the sandbox's memory cap, so the three
    together take at most three quarters of it: a disk fill ends in ENOSPC for the code,
    never in the OOM killer choosing between the code and the agent."""
    return max(1, min(limits.disk_mb, limits.memory_mb // 4))


@dataclass(frozen=True)
class Capabilities:
    pause: bool = True
    resume: bool = True
    network: bool = True
    #: Can enforce an egress allow-list (``SandboxSpec.allow``).
    egress_allow: bool = False
    gpu: bool = False
    snapshots: bool = False  # the agent's snapshots (a session's state held by a fork)
    #: Snapshots and forks are the platform's own (memory included: E2B): through
    #: ``create`` with ``SandboxSpec.origin``, :meth:`Provider.snapshot` and
    #: :meth:`Provider.delete_snapshot`, not the agent's.
    platform_snapshots: bool = False
    languages: tuple[str, ...] = ("python", "javascript", "bash")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["languages"] = list(self.languages)
        return data


class Provider(ABC):
    """Base class of every provider. Subclasses set ``name`` and ``capabilities``."""

    name: str = ""
    capabilities: Capabilities = Capabilities()
    #: ``alive()`` asks something on this host (``/proc``, the local Docker engine), so
    #: ``list`` can afford to reconcile this provider's live records every time.
    alive_is_cheap: bool = False
    #: ``alive()`` needs no ``check_available`` first (local's reads ``/proc``; its check
    #: starts a bubblewrap jail): ``list`` and ``status`` skip the check for it. Left False
    #: where the check bounds the wait for an unreachable service (docker's 10 s ping).
    alive_without_check: bool = False
    #: An open agent stream outlives ``pause`` and ``resume`` (the agent is frozen, its
    #: stream kept): the manager keeps its client over a pause and sends the new deadline
    #: on it before the thaw, instead of a new stream (and its ``auth``) after it.
    streams_survive_pause: bool = False

    def __init__(self, settings: Settings, **options: Any):
        self.settings = settings
        self.options = options

    @classmethod
    def connect_needs_check(cls, settings: Settings, handle: Handle) -> bool:
        """Whether ``connect(handle)`` needs ``check_available`` first (docker's direct
        stream asks neither the engine nor its SDK)."""
        return True

    @classmethod
    def check_available(cls, settings: Settings, **options: Any) -> None:
        """Raise ProviderUnavailableError / MissingDependencyError / MissingCredentialsError
        with a one-line fix when this provider cannot work here. Cheap; no side effects."""
        return None

    @classmethod
    def runtimes(cls, settings: Settings, **options: Any) -> list[str]:
        """The isolation runtimes a sandbox of this provider can choose (docker: the engine's
        OCI runtimes); [] when there is no choice."""
        return []

    @abstractmethod
    def create(self, spec: SandboxSpec) -> Handle:
        """Start the sandbox with the agent running and ready to accept a connection."""

    @abstractmethod
    def connect(self, handle: Handle) -> Channel:
        """Open a new byte stream to the agent of this sandbox."""

    def pause(self, handle: Handle) -> None:
        raise UnsupportedOperationError(
            f"the {self.name} provider cannot pause sandboxes; stop it instead and create a new one"
        )

    def resume(self, handle: Handle) -> None:
        raise UnsupportedOperationError(
            f"the {self.name} provider cannot resume sandboxes; create a new one instead"
        )

    def extend(self, handle: Handle, deadline: float) -> None:
        """Tell the provider's own timeout that the sandbox now lives until ``deadline``
        (epoch seconds). The manager calls it whenever the deadline moves (create, every run
        or touch, resume, pool hand-out), with the deadline it gives the agent's watchdog,
        which it sets through the agent itself. Best effort: a failure must not raise (the
        agent's watchdog still ends the sandbox on time). Default: nothing to do (providers
        whose sandboxes live exactly as long as their agent)."""
        return None

    def snapshot(self, handle: Handle) -> dict[str, Any]:
        """A platform snapshot of the sandbox: ``snapshot_id``, ``keeps`` (what it holds:
        "memory and files", or "files only; interpreters restart") and ``expires`` (epoch
        seconds the platform drops it at, None: kept until deleted). Only where
        ``capabilities.platform_snapshots``."""
        raise UnsupportedOperationError(f"the {self.name} provider has no platform snapshots")

    def fork_point(self, handle: Handle) -> dict[str, Any] | None:
        """Where forks of the sandbox as it is now start: a platform snapshot taken for
        them (as :meth:`snapshot`'s), or None where ``create`` with ``SandboxSpec.origin``
        forks the running sandbox itself (E2B's ``Sandbox.fork``)."""
        return None

    def delete_snapshot(self, snapshot_id: str) -> bool:
        """Delete a platform snapshot; False when it was already gone."""
        raise UnsupportedOperationError(f"the {self.name} provider has no platform snapshots")

    @abstractmethod
    def destroy(self, handle: Handle) -> None:
        """Kill every process of the sandbox and delete its files. Idempotent."""

    @abstractmethod
    def alive(self, handle: Handle) -> bool:
        """True while the sandbox's resource exists (running or paused)."""

    def network_events(self, handle: Handle, since: float | None = None) -> list[dict[str, Any]]:
        """Egress denials of the sandbox (``{time, host, port, reason}``, newest last) from
        ``since`` (epoch seconds) on. Default: none (providers without an allow-list)."""
        return []

    def cap_reached(self, handle: Handle) -> str:
        """The platform's runtime cap, named, once the sandbox has passed its hard end (it
        may have ended there); "" otherwise and for providers without a cap."""
        return ""

    def remove_leftovers(self) -> list[str]:
        """Remove host-side state that no live sandbox of any store on this host uses (empty
        cgroups, for the local provider); must be safe for other stores' live sandboxes.
        Returns what was removed. Default: nothing to do."""
        return []

    def list_resources(self, store_id: str) -> list[dict[str, Any]]:
        """Resources this provider runs for ``store_id``: [{"sandbox_id", "handle"}].
        Used by reconcile to find orphans; providers without labels return []."""
        return []
