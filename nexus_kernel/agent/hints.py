"""One-line hints added to run output the sandbox cannot explain by itself.

A ``ModuleNotFoundError`` inside a sandbox means the package is not in its environment, and
the sandbox has no network by default: the hint says the two ways to get it (a template, or
``%pip install`` in a sandbox with network). Applied by the host-side client to every run, so
the API, the CLI, the magics and the kernel all show it.
"""

from __future__ import annotations

import re

_MISSING = re.compile(r"ModuleNotFoundError: No module named '([A-Za-z0-9_]+)")
#: Import names whose PyPI distribution is named otherwise.
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn", "cv2": "opencv-python", "PIL": "pillow", "yaml": "pyyaml",
    "bs4": "beautifulsoup4", "skimage": "scikit-image", "dateutil": "python-dateutil",
}  # fmt: skip


def missing_module_hint(text: str) -> str | None:
    """The hint line for the first ``ModuleNotFoundError`` in ``text``, else None."""
    match = _MISSING.search(text or "")
    if match is None:
        return None
    module = match.group(1)
    dist = _DISTRIBUTIONS.get(module, module.replace("_", "-"))
    return (f"hint: {module!r} is not in this sandbox: build a template with it (nexus template "
            f"create NAME --pip {dist}, then create with --template NAME), or run "
            f"'%pip install {dist}' in a sandbox created with --network")
