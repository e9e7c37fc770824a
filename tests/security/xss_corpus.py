"""Hostile rich output: MIME bundles a sandbox can return that try to act in the user's
browser (run script in the Jupyter page, or make it request the Jupyter Server's REST API).

Each payload, if it fires, leaves a trace the tests look for: script pushes its name onto
``window.__nexusXss`` and calls ``/api/contents/nexus-xss-NAME.txt`` and
``/api/kernels?nexus-xss-NAME``; markup that only loads a URL (CSS, images, forms, meta
refresh, Vega data) requests a URL containing ``nexus-xss-NAME``. So "no request with
``nexus-xss`` reached the server and ``window.__nexusXss`` is unset" means none fired.
"""

from __future__ import annotations

MARK = "nexus-xss"


def script(name: str) -> str:
    """JavaScript that records that it ran, then writes a file and starts a kernel through
    the Jupyter Server REST API as the logged-in user."""
    return (
        f"(window.__nexusXss=window.__nexusXss||[]).push('{name}');"
        "var t=(document.cookie.match(/_xsrf=([^;]+)/)||[])[1];"
        f"fetch('/api/contents/{MARK}-{name}.txt',{{method:'PUT',headers:{{'X-XSRFToken':t}},"
        "body:JSON.stringify({type:'file',format:'text',content:'pwned'})});"
        f"fetch('/api/kernels?{MARK}-{name}',{{method:'POST',headers:{{'X-XSRFToken':t}},"
        "body:JSON.stringify({name:'python3'})})"
    )


def url(name: str) -> str:
    """A same-origin URL whose request would reach the kernels API."""
    return f"/api/kernels?{MARK}-{name}"


def _attr(js: str) -> str:
    return js.replace('"', "&quot;")


def payloads() -> dict[str, dict[str, object]]:
    """name -> the MIME bundle the sandbox displays."""
    s = script
    bundles: dict[str, dict[str, object]] = {
        "html-img-onerror": {"text/html": f'<img src="x" onerror="{_attr(s("html-img-onerror"))}">'},
        "html-script": {"text/html": f"<b>hi</b><script>{s('html-script')}</script>"},
        "javascript": {"application/javascript": s("javascript")},
        "html-javascript-link": {
            "text/html": f'<a class="nx-click" href="javascript:{_attr(s("html-javascript-link"))}">click</a>'},
        "html-relative-link": {"text/html": f'<a class="nx-click" href="{url("html-relative-link")}">go</a>'},
        "html-details-ontoggle": {
            "text/html": f'<details open ontoggle="{_attr(s("html-details-ontoggle"))}">x</details>'},
        "html-autofocus": {"text/html": f'<input autofocus onfocus="{_attr(s("html-autofocus"))}">'},
        "html-inline-svg": {"text/html": f'<svg onload="{_attr(s("html-inline-svg"))}"></svg>'},
        "html-iframe-srcdoc": {
            "text/html": "<iframe srcdoc=\"<script>parent.eval(atob('"
                         + __import__("base64").b64encode(s("html-iframe-srcdoc").encode()).decode()
                         + "'))</script>\"></iframe>"},
        "html-meta-refresh": {
            "text/html": f'<meta http-equiv="refresh" content="0;url={url("html-meta-refresh")}">'},
        "html-base": {"text/html": f'<base href="{url("html-base")}/"><img src="nexus-base.png">'},
        "html-css-url": {"text/html": f"<style>.nx-probe {{ background: url({url('html-css-url')}) }}"
                                      '</style><p class="nx-probe">styled</p>'},
        "html-css-import": {"text/html": f"<style>@import url({url('html-css-import')});</style>"},
        "html-style-attr-url": {
            "text/html": f'<div style="background-image: url({url("html-style-attr-url")})">d</div>'},
        "html-img-src": {"text/html": f'<img src="{url("html-img-src")}">'},
        "html-link-stylesheet": {"text/html": f'<link rel="stylesheet" href="{url("html-link-stylesheet")}">'},
        "html-object": {"text/html": f'<object data="{url("html-object")}"></object>'
                                     f'<embed src="{url("html-object")}-embed">'},
        "html-form-autosubmit": {
            "text/html": f'<form id="nxf" method="post" action="{url("html-form-autosubmit")}">'
                         '<input name="a" value="1"></form>'
                         '<img src="x" onerror="document.getElementById(\'nxf\').submit()">'},
        "markdown-img-onerror": {
            "text/markdown": f'# md\n\n<img src="x" onerror="{_attr(s("markdown-img-onerror"))}">'},
        "markdown-javascript-link": {
            "text/markdown": f"[click](<javascript:{s('markdown-javascript-link')}>)"},
        "markdown-image": {"text/markdown": f"![img]({url('markdown-image')})"},
        "svg-script": {"image/svg+xml": (
            '<svg xmlns="http://www.w3.org/2000/svg" onload="'
            + _attr(s("svg-script")) + '"><script>' + s("svg-script") + "</script></svg>")},
        "svg-foreignobject": {"image/svg+xml": (
            '<svg xmlns="http://www.w3.org/2000/svg"><foreignObject width="10" height="10">'
            '<img xmlns="http://www.w3.org/1999/xhtml" src="x" onerror="'
            + _attr(s("svg-foreignobject")) + '"/></foreignObject></svg>')},
        "latex-href": {"text/latex": f"$\\href{{javascript:{s('latex-href')}}}{{click}}$"},
        "vega-data-url": {"application/vnd.vegalite.v5+json": {
            "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "data": {"url": url("vega-data-url")}, "mark": "point"}},
        "widget-view": {"application/vnd.jupyter.widget-view+json": {
            "model_id": "nexus-xss-widget", "version_major": 2, "version_minor": 0}},
    }
    for bundle in bundles.values():
        bundle.setdefault("text/plain", "payload")
    return bundles


def sandbox_code(names: list[str] | None = None) -> str:
    """Python for a sandbox session that displays each payload (and returns the last one
    as the cell's result), followed by a DataFrame whose cells hold HTML when pandas is
    there."""
    chosen = payloads() if names is None else {n: payloads()[n] for n in names}
    lines = [
        "class _Payload:",
        "    def __init__(self, bundle): self.bundle = bundle",
        "    def _repr_mimebundle_(self, include=None, exclude=None): return self.bundle",
        f"_bundles = {list(chosen.values())!r}",
        "for _b in _bundles[:-1]:",
        "    display(_Payload(_b))",
        "_Payload(_bundles[-1])",
    ]
    return "\n".join(lines) + "\n"


def dataframe_code() -> str:
    """A DataFrame with HTML in its cells, shown unescaped (as ``to_html(escape=False)``
    users do): its table must render, its markup must not act."""
    cell = f'<img src=x onerror="{_attr(script("dataframe-cell"))}">'
    return (
        "import pandas as pd\n"
        "class _Raw:\n"
        "    def __init__(self, df): self.df = df\n"
        "    def _repr_html_(self): return self.df.to_html(escape=False)\n"
        f"_df = pd.DataFrame({{'name': [{cell!r}, 'plain'], 'value': [1, 2]}})\n"
        "display(_df)\n"
        "_Raw(_df)\n"
    )
