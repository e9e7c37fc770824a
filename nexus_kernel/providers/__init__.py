"""Provider registry. Provider modules (and their SDKs) are imported only when used."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ..config import Settings
from ..errors import InvalidArgumentError, SandboxError
from .base import Capabilities, Handle, Provider

__all__ = [
    "PROVIDERS",
    "Capabilities",
    "Handle",
    "Provider",
    "capability_matrix",
    "provider_class",
    "register_provider",
    "unregister_provider",
]

#: Provider name -> "module:ClassName": ".module" is relative to this package, anything
#: else absolute (providers added with :func:`register_provider`).
PROVIDERS = {
    "local": ".local:LocalProvider",
    "docker": ".docker:DockerProvider",
    "e2b": ".e2b:E2BProvider",
    "modal": ".modal:ModalProvider",
}

#: Provider name -> the importable SDK module it needs (None = standard library only).
SDK_MODULES: dict[str, str | None] = {
    "local": None,
    "docker": "docker",
    "e2b": "e2b",
    "modal": "modal",
}


def provider_class(name: str) -> type[Provider]:
    """The Provider subclass registered as ``name``."""
    if name not in PROVIDERS:
        raise InvalidArgumentError(
            f"unknown provider {name!r}; choose one of: {', '.join(PROVIDERS)}"
        )
    module_name, class_name = PROVIDERS[name].split(":")
    return getattr(importlib.import_module(module_name, __name__), class_name)


def register_provider(name: str, target: str, sdk_module: str | None = None) -> None:
    """Make ``Settings(provider=name)`` use the class ``target`` ("package.module:Class",
    imported when first used); ``sdk_module``: the module it needs, for the capability
    matrix. A registered name stays until :func:`unregister_provider`."""
    if name in PROVIDERS:
        raise InvalidArgumentError(f"provider {name!r} is already registered")
    PROVIDERS[name] = target
    SDK_MODULES[name] = sdk_module


def unregister_provider(name: str) -> None:
    """Remove a provider added by :func:`register_provider` (the built-in ones stay)."""
    if PROVIDERS.get(name, "").startswith("."):
        raise InvalidArgumentError(f"provider {name!r} is built in")
    PROVIDERS.pop(name, None)
    SDK_MODULES.pop(name, None)


def capability_matrix(
    settings: Settings, provider_options: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per registered provider: ``name``, ``installed`` (its SDK is importable),
    ``configured`` (``check_available`` passes: credentials, daemon or bubblewrap present),
    ``reason`` (the one-line fix when not configured, else None), ``capabilities`` and
    ``runtimes`` (the isolation runtimes a sandbox may choose: docker's OCI runtimes).

    Providers whose SDK is missing are reported without importing anything heavy.
    """
    from ._launch import sdk_installed  # the launch toolkit: only when asked

    rows = []
    for name in PROVIDERS:
        cls = provider_class(name)
        module = SDK_MODULES.get(name)
        installed = module is None or sdk_installed(module)
        configured, reason = installed, None
        try:
            cls.check_available(settings, **(provider_options or {}).get(name, {}))
        except Exception as exc:  # SandboxError carries the fix; anything else, its text
            configured = False
            reason = str(exc) if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}"
        rows.append(
            {
                "name": name,
                "installed": installed,
                "configured": configured,
                "reason": reason,
                "capabilities": cls.capabilities.to_dict(),
                "runtimes": cls.runtimes(settings, **(provider_options or {}).get(name, {}))
                if configured else [],
            }
        )
    return rows
