"""jupyter_kernel_test, the Jupyter project's kernel conformance suite, against the installed
"Nexus Sandbox" kernel (kernelspec installed by `nexus kernel install --prefix` into a tmp
prefix; NEXUS_HOME in a tmp dir; real local sandboxes).
Every test of the suite applies and runs (``name?`` pages help, as in IPython).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jupyter_kernel_test

from nexus_kernel.manager import SandboxManager

from .conftest import ROOT, needs_bwrap

pytestmark = needs_bwrap

_ENV_KEYS = ("JUPYTER_PATH", "JUPYTER_DATA_DIR", "NEXUS_HOME", "NEXUS_USER")


class _Installed:
    """Installs the kernelspec into a tmp prefix and points Jupyter and nexus at tmp dirs
    for the lifetime of the test class."""

    @classmethod
    def setUpClass(cls) -> None:
        cls._saved_env = {key: os.environ.get(key) for key in _ENV_KEYS}
        cls._tmp = Path(tempfile.mkdtemp(prefix="nexus-conformance-"))
        prefix = cls._tmp / "prefix"
        subprocess.run([sys.executable, "-m", "nexus_kernel.cli", "kernel", "install",
                        "--prefix", str(prefix)], check=True, capture_output=True, cwd=ROOT)
        os.environ.update({
            "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
            "JUPYTER_DATA_DIR": str(cls._tmp / "data"),
            "NEXUS_HOME": str(cls._tmp / "nexus-home"),
            "NEXUS_USER": "tester",
        })
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
            manager = SandboxManager()
            left = [r for r in manager.list() if r.status.value != "stopped"]
            manager.close()
            assert not left, f"the kernel left sandboxes running: {left}"
        finally:
            for key, value in cls._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(cls._tmp, ignore_errors=True)


class NexusKernelConformance(_Installed, jupyter_kernel_test.KernelTests):
    """The suite's samples, written for a Python kernel without IPython syntax."""

    kernel_name = "nexus-sandbox"
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2", "for i in range(3):"]
    invalid_code_samples = ["import = 7q", "x = )"]
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        # the HTML arrives sanitised (tests/test_kernel.py checks its content)
        {"code": "class H:\n  def _repr_html_(self): return '<b>h</b>'\nH()",
         "mime": "text/html"},
    ]
    code_display_data = [
        {"code": "display('x')", "mime": "text/plain"},
        {"code": "class S:\n  def _repr_svg_(self): return '<svg/>'\ndisplay(S())",
         "mime": "image/svg+xml"},
        {"code": "class P:\n  def _repr_png_(self): return b'PNG'\ndisplay(P())",
         "mime": "image/png"},
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_page_something = "zip?"
    code_clear_output = "clear_output()"


class NexusKernelIopubWelcome(_Installed, jupyter_kernel_test.IopubWelcomeTests):
    """ipykernel's XPUB IOPub socket greets each new subscriber (JEP 65)."""

    kernel_name = "nexus-sandbox"
    support_iopub_welcome = True
