"""``python -m nexus_kernel -f CONNECTION_FILE``: start the "Nexus Sandbox" kernel."""

from __future__ import annotations


def main() -> None:
    """Launch the proxy kernel under ipykernel's kernel application.

    Without ipykernel's ``OutStream``: every output of a cell comes from the sandbox and is
    sent on IOPub explicitly, so the kernel process's own stdout and stderr (its log) stay
    the real ones, and each message no longer waits for the IOPub thread to flush two
    empty capture streams (four thread round trips a cell)."""
    import os

    # The kernel has no debugger (its kernelspec says so); without this, debugpy's import
    # warns about frozen modules on the kernel's real stderr (the notebook server's log).
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    from ipykernel.kernelapp import IPKernelApp

    from .kernel import NexusKernel

    IPKernelApp.launch_instance(kernel_class=NexusKernel, outstream_class=None)


if __name__ == "__main__":
    main()
