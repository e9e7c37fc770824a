"""What comes out of a sandbox is untrusted data: make it inert before any host surface
shows it.

The trust model: sandbox code is hostile, and its rich output (``_repr_html_``, Markdown,
SVG, JavaScript) would otherwise run in the user's Jupyter page with the user's session,
where it can call the Jupyter Server's REST API (write files, start a host kernel). So every
display, result and inspect bundle that leaves :class:`~nexus_kernel.manager.SandboxManager`
passes :func:`safe_bundle` first, unless the caller explicitly trusts the sandbox
(``trusted_output=True``: ``%sandbox trust on``, the "Nexus Sandbox (trusted output)"
kernelspec, ``NEXUS_TRUSTED_OUTPUT=1``). Because the sanitised form is what the frontend
receives, it is also what a saved notebook stores: re-opening a signed notebook replays
nothing active.
"""

from __future__ import annotations

from .bundle import safe_bundle, safe_mime_data
from .html import markdown_to_html, sanitize_html
from .svg import sanitize_svg

#: What a user is told when they turn trust on (kernel, magics, trusted kernelspec).
TRUST_WARNING = (
    "Nexus: output of this sandbox is now TRUSTED: its HTML, JavaScript and widgets run in "
    "this Jupyter page with your Jupyter session, so code in the sandbox can read and write "
    "your files and start kernels on this server, outside the sandbox. A saved notebook "
    "keeps that output and runs it again when reopened. Trust only code you would run "
    "unsandboxed; '%sandbox trust off' makes new output inert again.\n"
)
#: What a user is told when they turn trust off again.
TRUST_OFF = ("Sandbox output is untrusted again: HTML and Markdown are sanitised, scripts and "
             "widgets withheld (output already shown stays as it is)\n")

__all__ = [
    "TRUST_OFF",
    "TRUST_WARNING","markdown_to_html", "safe_bundle", "safe_mime_data", "sanitize_html", "sanitize_svg"]
