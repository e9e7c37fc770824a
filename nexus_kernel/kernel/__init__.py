"""The "Nexus Sandbox" proxy kernel (``python -m nexus_kernel``): every cell runs in a sandbox.

See :class:`~nexus_kernel.kernel.kernel.NexusKernel`; ``nexus kernel install`` installs its
kernelspec.
"""

from __future__ import annotations

from .kernel import NexusKernel

__all__ = ["NexusKernel"]
