"""The browser escape, tried for real: JupyterLab in headless Chromium runs notebooks whose
sandboxed cells return hostile output (``xss_corpus``), on the Nexus Sandbox kernel and on
ipykernel with ``%%sandbox run``. Nothing may run in the page or reach the server's API, on
the first run and after save and reload; DataFrame tables, PNG plots and Markdown tables
must still render. A control notebook on the trusted kernelspec shows the same harness
catching payloads that do fire.

Needs Debian's chromium and chromium-driver, jupyterlab and selenium (``.ci/run`` installs
them); skipped without them unless NEXUS_REQUIRE_BROWSER=1 (CI), where it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

from ..conftest import needs_bwrap, nexus
from ..jupyter_server import JupyterServer
from . import xss_corpus
from .test_output_safety import active_parts, assert_inert

pytestmark = [needs_bwrap, pytest.mark.slow]

#: Debian's chromium, else Ubuntu's (a snap, through its transitional package).
CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()),
                "/usr/bin/chromium")
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Seconds the page gets after rendering for delayed loads (images, CSS, refresh) to happen.
SETTLE = 3.0

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()\n"
MARKDOWN_TABLE = ("class _Md:\n"
                  "    def _repr_markdown_(self):\n"
                  "        return '| mdcol | other |\\n|---|---|\\n| 1 | 2 |\\n'\n"
                  "_Md()\n")
HOSTILE_NAME = "<img src=x onerror=(window.__nexusXss=window.__nexusXss||[]).push('sandbox-name')>"


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    for module in ("selenium", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser_ready() -> None:
    missing = _browser_missing()
    if missing:
        if os.environ.get("NEXUS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"NEXUS_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
        pytest.skip(missing)


@pytest.fixture(scope="module")
def lab(browser_ready, tmp_path_factory, _matplotlib_build) -> Any:
    """A JupyterLab server whose kernels see the Nexus kernelspecs (plain and trusted) and
    a NEXUS_HOME with the matplotlib+pandas template."""
    work = tmp_path_factory.mktemp("lab")
    prefix = work / "prefix"
    for extra in ([], ["--trusted-output"]):
        out = nexus("kernel", "install", "--prefix", str(prefix), *extra)
        assert out.returncode == 0, out.stderr
    home = work / "nexus-home"
    template = ""
    if _matplotlib_build is not None:
        (home / "templates").mkdir(parents=True)
        (home / "templates" / _matplotlib_build.name).symlink_to(_matplotlib_build)
        template = _matplotlib_build.name
    root = work / "root"
    root.mkdir()
    server = JupyterServer(root, work, {
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "NEXUS_HOME": str(home), "NEXUS_USER": "browser-test", "NEXUS_TEMPLATE": template,
    })
    server.template = template
    yield server
    server.stop()
    nexus("sandbox", "reap", env={"NEXUS_HOME": str(home), "NEXUS_USER": "browser-test"})


@pytest.fixture(scope="module")
def driver(browser_ready, tmp_path_factory) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_script_timeout(60)
    yield browser
    browser.quit()


# ------------------------------------------------------------------------------ the page

_KERNEL_STATUS = """
const app = window.jupyterapp; if (!app) return null;
const w = app.shell.currentWidget;
if (!w || !w.sessionContext || !w.content || !w.content.model) return null;
const s = w.sessionContext.session; const k = s && s.kernel;
return k ? k.status : null;
"""
_EXECUTION_COUNTS = """
if (!window.jupyterapp) return null;
const w = window.jupyterapp.shell.currentWidget; const cells = w.content.model.cells;
const out = []; for (let i = 0; i < cells.length; i++) {
  const c = cells.get(i); if (c.type === 'code') out.push(c.executionCount); }
return out;
"""


def _wait(what: str, check, timeout: float = 120) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


class Page:
    """One notebook open in JupyterLab."""

    def __init__(self, driver: Any, lab: JupyterServer, name: str) -> None:
        self.driver, self.lab, self.name = driver, lab, name

    def open(self) -> None:
        self.driver.get(f"{self.lab.base}/lab/tree/{self.name}?token={self.lab.token}&reset")
        self.wait_for_kernel()

    def wait_for_kernel(self) -> None:
        _wait("the notebook's kernel", lambda: self.driver.execute_script(_KERNEL_STATUS) == "idle")

    def run_all(self) -> None:
        self.driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        _wait("every cell to run", self._all_ran)
        self.wait_for_kernel()

    def _all_ran(self) -> bool:
        counts = self.driver.execute_script(_EXECUTION_COUNTS)
        if counts is None:
            assert self.still_on_notebook(), f"the page was navigated to {self.driver.current_url}"
            return False
        return all(n is not None for n in counts)

    def save(self) -> None:
        path = self.lab.root / self.name
        before = path.read_text()
        self.driver.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
        _wait("the save", lambda: path.read_text() != before)

    def reload(self, outputs: int) -> None:
        self.driver.refresh()
        self.wait_for_kernel()
        _wait("the saved outputs to render", lambda: self.count(".jp-OutputArea-output") >= outputs)

    def count(self, selector: str) -> int:
        return self.driver.execute_script(
            f"return document.querySelectorAll({json.dumps(selector)}).length")

    def click_output_links(self) -> None:
        """What a curious user does: click every link a sandbox printed."""
        self.driver.execute_script(
            "document.querySelectorAll('.jp-OutputArea-output a').forEach(a => a.click())")

    def fired(self) -> list[str]:
        """Payload names that ran script in the page."""
        return self.driver.execute_script("return window.__nexusXss || []")

    def still_on_notebook(self) -> bool:
        return f"/lab/tree/{self.name}" in self.driver.current_url


def _notebook(root: Path, name: str, kernel: str, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    display = {"nexus-sandbox": "Nexus Sandbox",
               "nexus-sandbox-trusted": "Nexus Sandbox (trusted output)",
               "python3": "Python 3"}[kernel]
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": display, "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path = root / name
    nbformat.write(nb, path)
    return path


def _attempts(lab: JupyterServer) -> list[str]:
    return [f"{r['method']} {r['uri']}" for r in lab.requests() if xss_corpus.MARK in r["uri"]]


def _check_clean(page: Page, when: str) -> None:
    page.click_output_links()
    time.sleep(SETTLE)
    assert page.still_on_notebook(), f"{when}: the page was navigated away"
    assert page.fired() == [], f"{when}: script from sandbox output ran: {page.fired()}"
    assert _attempts(page.lab) == [], f"{when}: requests reached the server"


def _check_data_work_renders(page: Page) -> None:
    assert page.count(".jp-OutputArea-output table.dataframe") >= 1, "no DataFrame table"
    assert page.count('.jp-OutputArea-output img[src^="data:image/png"]') >= 1, "no PNG plot"
    headers = page.driver.execute_script(
        "return [...document.querySelectorAll('.jp-OutputArea-output th')].map(t => t.textContent)")
    assert "mdcol" in headers, "no Markdown table"


def _check_saved_file(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    outputs = [o for cell in nb.cells for o in cell.get("outputs", []) if "data" in o]
    assert outputs, "the notebook was saved without outputs"
    for output in outputs:
        data = dict(output["data"])
        html = data.get("text/html", "")
        if html.startswith(('<div class="nexus-sandbox"', '<table class="nexus-sandboxes"')):
            assert active_parts(html) == [] and "<img" not in html  # the magics' own views
        else:
            assert_inert(data)


def _run_and_check(driver: Any, lab: JupyterServer, name: str, kernel: str,
                   cells: list[str]) -> None:
    path = _notebook(lab.root, name, kernel, cells)
    page = Page(driver, lab, name)
    page.open()
    page.run_all()
    _check_data_work_renders(page)
    _check_clean(page, "first run")
    outputs = page.count(".jp-OutputArea-output")
    page.save()
    _check_saved_file(path)
    page.reload(outputs)
    _check_data_work_renders(page)
    _check_clean(page, "after save and reload")


def test_nexus_kernel_notebook_shows_hostile_output_inertly(driver, lab) -> None:
    _run_and_check(driver, lab, "nexus.ipynb", "nexus-sandbox", [
        xss_corpus.sandbox_code(), xss_corpus.dataframe_code(), PLOT, MARKDOWN_TABLE,
    ])


def test_sandbox_magic_notebook_on_ipykernel_shows_hostile_output_inertly(driver, lab) -> None:
    _run_and_check(driver, lab, "magics.ipynb", "python3", [
        f'%load_ext nexus_kernel\n%sandbox create "{HOSTILE_NAME}"'
        + (f" --template {lab.template}" if lab.template else ""),
        "%%sandbox run\n" + xss_corpus.sandbox_code(),
        "%%sandbox run\n" + xss_corpus.dataframe_code(),
        "%%sandbox run\n" + PLOT,
        "%%sandbox run\n" + MARKDOWN_TABLE,
        "%sandbox list",
        "%sandbox stop",
    ])


def test_the_harness_sees_payloads_fire_when_output_is_trusted(driver, lab) -> None:
    """The control: on the trusted kernelspec the same payloads run and reach the server,
    so the checks above would catch a sanitiser that let them through."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is missing")
    names = ["html-img-onerror", "javascript", "html-css-url", "markdown-img-onerror"]
    _notebook(lab.root, "trusted.ipynb", "nexus-sandbox-trusted",
              [xss_corpus.sandbox_code(names)])
    page = Page(driver, lab, "trusted.ipynb")
    page.open()
    page.run_all()
    _wait("the payloads to fire", lambda: len(set(page.fired())) >= 3, timeout=20)
    fired = set(page.fired())
    assert {"html-img-onerror", "javascript", "markdown-img-onerror"} <= fired
    _wait("their requests", lambda: len(_attempts(lab)) >= 3, timeout=20)
    assert any("html-css-url" in attempt for attempt in _attempts(lab))
    texts = driver.execute_script(
        "return [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.textContent)")
    assert any("TRUSTED" in text for text in texts), "no trust warning in the notebook"
    (lab.root / "trusted.ipynb").unlink()
    lab.log_path.unlink()  # its attempts are expected; later checks start clean
