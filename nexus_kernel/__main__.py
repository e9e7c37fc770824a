"""``python -m nexus_kernel -f CONNECTION_FILE``: start the "Nexus Sandbox" kernel."""

from __future__ import annotations


def main() -> None:
    """Launch the proxy kernel under ipykernel's kernel application."""
    from ipykernel.kernelapp import IPKernelApp

    from .kernel import NexusKernel

    IPKernelApp.launch_instance(kernel_class=NexusKernel)


if __name__ == "__main__":
    main()
