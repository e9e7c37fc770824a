"""Settings: explicit argument > NEXUS_* environment variable > default."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError
from .models import Limits
from .validation import MAX_TIMEOUT, check_timeout

DEFAULT_PROVIDER = "local"
DEFAULT_TTL_MINUTES = 10.0
DEFAULT_TIMEOUT = 30.0
#: Stopped records are kept this long for `list`/`status`, then pruned by the reaper.
STOPPED_RETENTION_SECONDS = 24 * 3600.0


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents as 0700 directories (nexus state and files are
    nobody else's business); existing directories are left as they are."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    return path


def _default_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): fall back to the uid
        return f"uid{os.getuid()}"


@dataclass(frozen=True)
class Settings:
    """Every tunable of nexus-kernel. Build with ``Settings.load(**overrides)``."""

    home: Path = field(default_factory=lambda: Path.home() / ".nexus")
    user: str = field(default_factory=_default_user)
    #: May list and manage every user's sandboxes of this store (NEXUS_ADMIN=1, or
    #: ``NexusFS(is_admin=True)``): declared by whoever configures the process, like the
    #: user name itself; OS permissions on ``home`` separate OS accounts.
    admin: bool = False
    provider: str = DEFAULT_PROVIDER
    ttl_minutes: float = DEFAULT_TTL_MINUTES
    timeout: float = DEFAULT_TIMEOUT
    network: bool = False
    #: Egress allow-list of sandboxes created without ``network`` (NEXUS_NETWORK_ALLOW:
    #: entries separated by commas or spaces; see ``nexus_kernel/egress.py``).
    network_allow: str = ""
    #: Test hook of the local egress proxy: ``name=address,...`` it resolves as given, loopback
    #: included (NEXUS_EGRESS_TEST_HOSTS). Read on the host only; no sandbox can set it.
    egress_test_hosts: str = ""
    memory_mb: int = 512
    pids: int = 256
    cpus: float = 1.0
    disk_mb: int = 1024
    output_bytes: int = 10 * 1024 * 1024
    #: Show a sandbox's rich output as it is (scripts, widgets) instead of made inert.
    #: Off by default: sandbox output is untrusted (see nexus_kernel/untrusted).
    trusted_output: bool = False
    #: How long a paused sandbox is kept before the reaper stops it.
    paused_retention_minutes: float = 24 * 60.0
    #: Seconds between reaps in long-lived processes (kernel timer); CLI/API reap lazily.
    reap_interval: float = 30.0
    #: Warm pool: pre-created sandboxes per (provider, template, network, limits) that
    #: ``create`` hands out at once (``nexus_kernel/pool.py``). 0 = off.
    pool_size: int = 0
    #: Minutes a pooled sandbox waits for a user before the reaper replaces it.
    pool_ttl_minutes: float = 30.0
    #: Providers the pool serves (cloud providers bill idle sandboxes: opt in by name).
    pool_providers: str = "local,docker"
    #: Who refills after a hand-out: "thread" (this process, in the background), "process"
    #: (a detached ``python -m nexus_kernel.pool_fill``; what the CLI uses) or "off".
    pool_refill: str = "thread"
    #: Python used for the agent and python code inside local sandboxes.
    local_python: str = ""
    docker_image: str = "nexus-sandbox:latest"
    docker_host: str = ""
    #: Docker: the engine's OCI runtime for sandboxes (NEXUS_DOCKER_RUNTIME; "" = its default,
    #: runc; "runsc" = gVisor, registered by scripts/start-dockerd.sh).
    docker_runtime: str = ""
    #: Docker: reach the agent through the container's network namespace where this process
    #: may (root, a local engine, runc; ``providers/docker_direct.py``) instead of a ``docker
    #: exec`` relay (NEXUS_DOCKER_DIRECT; off: always the relay).
    docker_direct: bool = True
    e2b_api_key: str = ""
    e2b_template_id: str = ""
    #: E2B: the deployment's domain (E2B_DOMAIN, the SDK's own variable; default e2b.app):
    #: a self-hosted, E2B-compatible fleet is reached at ``api.<domain>``.
    e2b_domain: str = ""
    #: E2B: the plan's runtime cap, minutes a sandbox may run without a pause
    #: (NEXUS_E2B_MAX_MINUTES; Hobby 60, Pro 1440).
    e2b_max_minutes: float = 24 * 60.0
    #: E2B: a sandbox reaching the runtime cap is paused (memory kept) and resumed by the
    #: next run, instead of ended (NEXUS_E2B_AUTO_PAUSE; option ``auto_pause``).
    e2b_auto_pause: bool = True
    modal_image: str = ""
    #: Kernel: template / image of the kernel's sandboxes (NEXUS_TEMPLATE; "" = the
    #: provider's default).
    template: str = ""
    #: Local: the template of sandboxes created without one (NEXUS_DEFAULT_TEMPLATE): the
    #: data-science environment, built once by ``nexus template create datascience``;
    #: "minimal" (or "none") gives the lean sandbox (the sandbox's python alone).
    default_template: str = "datascience"
    #: Kernel: seconds a cell may run (NEXUS_CELL_TIMEOUT; default no practical limit, 24 h).
    cell_timeout: float = MAX_TIMEOUT
    #: Kernel: attach to this existing sandbox instead of creating one (NEXUS_KERNEL_SANDBOX).
    kernel_sandbox: str = ""
    #: Kernel: keep the sandbox when the kernel shuts down (NEXUS_KERNEL_KEEP); None: keep
    #: only an attached one.
    kernel_keep: bool | None = None
    #: Kernel: a restarted kernel continues in the sandbox of its previous run instead of
    #: stopping it (NEXUS_KERNEL_REATTACH).
    kernel_reattach: bool = False
    #: Kernel and magics: automatic checkpoints kept before cells, the undo depth
    #: (NEXUS_CHECKPOINTS; 0 or off: none).
    checkpoints: int = 5

    @property
    def limits(self) -> Limits:
        return Limits(
            memory_mb=self.memory_mb,
            pids=self.pids,
            cpus=self.cpus,
            disk_mb=self.disk_mb,
            output_bytes=self.output_bytes,
        )

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def sandboxes_dir(self) -> Path:
        return self.home / "sandboxes"

    @property
    def templates_dir(self) -> Path:
        return self.home / "templates"

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Defaults, then NEXUS_* variables (and E2B_*), then non-None ``overrides``."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            env_name = cls.env_source(f.name)
            if env_name is not None:
                values[f.name] = _coerce(f.name, os.environ[env_name], env_name)
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in {f.name for f in fields(cls)}:
                raise InvalidArgumentError(f"unknown setting {key!r}")
            values[key] = _coerce(key, value, key) if isinstance(value, str) else value
        settings = replace(cls(), **values)
        if isinstance(settings.home, str):
            settings = replace(settings, home=Path(settings.home))
        return settings

    @staticmethod
    def env_source(name: str) -> str | None:
        """The environment variable that sets setting ``name`` now, or None when it is unset
        (then ``load`` without an override gives the built-in default)."""
        env_name = _ENV_NAMES.get(name, "NEXUS_" + name.upper())
        return env_name if os.environ.get(env_name) not in (None, "") else None


_ENV_NAMES = {
    "e2b_api_key": "E2B_API_KEY",
    "e2b_template_id": "E2B_TEMPLATE_ID",
    "e2b_domain": "E2B_DOMAIN",
    "docker_host": "DOCKER_HOST",
}

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, raw: str, source: str) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if name in ("kernel_keep", "kernel_reattach"):
        return _on_off(raw, source)
    if name == "cell_timeout":
        return _seconds(raw, source)
    if name == "checkpoints" and raw.strip().lower() in _BOOL_FALSE:
        return 0
    try:
        if name == "home":
            return Path(raw).expanduser()
        if kind == "bool":
            low = raw.strip().lower()
            if low in _BOOL_TRUE | _BOOL_FALSE:
                return low in _BOOL_TRUE
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{source}={raw!r} is not a valid {kind}") from None
    return raw


def _on_off(raw: str, source: str) -> bool:
    low = raw.strip().lower()
    if low not in _BOOL_TRUE | _BOOL_FALSE:
        raise InvalidArgumentError(f"{source} takes on or off, got {raw!r}")
    return low in _BOOL_TRUE


def _seconds(raw: str, source: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{source} must be a number of seconds; got {raw!r}") from None
    return check_timeout(seconds)
