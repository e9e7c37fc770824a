"""Provider registry. Provider modules (and their SDKs) are imported only when used."""

from __future__ import annotations

import importlib

from ..errors import InvalidArgumentError
from .base import Capabilities, Channel, Handle, Provider

__all__ = ["PROVIDERS", "Capabilities", "Channel", "Handle", "Provider", "provider_class"]

#: Provider name -> "module:ClassName", relative to this package.
PROVIDERS = {
    "local": "local:LocalProvider",
    "docker": "docker:DockerProvider",
    "e2b": "e2b:E2BProvider",
    "modal": "modal:ModalProvider",
}


def provider_class(name: str) -> type[Provider]:
    """The Provider subclass registered as ``name``."""
    if name not in PROVIDERS:
        raise InvalidArgumentError(
            f"unknown provider {name!r}; choose one of: {', '.join(PROVIDERS)}"
        )
    module_name, class_name = PROVIDERS[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)
