"""Sandbox output is untrusted: what reaches a frontend cannot act (issue: the browser escape).

Two layers: the sanitiser on its own (fast, every payload of ``xss_corpus``), and a real
local sandbox returning the corpus through the API, with and without trust. The browser
itself (JupyterLab in headless Chromium) is driven in ``test_browser_escape.py``.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from nexus_kernel.untrusted import markdown_to_html, safe_bundle, safe_mime_data, sanitize_svg
from nexus_kernel.untrusted.css import sanitize_stylesheet

from ..conftest import inert_html, needs_bwrap
from . import xss_corpus

#: Elements a sanitised output may contain (tests the sanitiser's allow-list from outside).
SAFE_TAGS = {
    "a", "abbr", "b", "bdi", "bdo", "blockquote", "br", "caption", "center", "cite", "code",
    "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption",
    "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd",
    "label", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike",
    "strong", "style", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
}


class _Inspector(HTMLParser):
    """Collects what a browser would act on in a piece of markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in SAFE_TAGS:
            self.problems.append(f"element <{tag}>")
        self._in_style = tag == "style"
        for name, value in attrs:
            value = value or ""
            if name.startswith("on"):
                self.problems.append(f"handler {name} on <{tag}>")
            if name == "href" and not re.match(r"(https?:|mailto:)", value):
                self.problems.append(f"href {value[:40]!r}")
            loads = name in ("src", "srcset", "action", "formaction", "data", "background",
                             "poster")
            if loads and not (name == "src" and value.startswith("data:image/")):
                self.problems.append(f"{name} {value[:40]!r}")
            if name == "style":
                self.styles.append(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def active_parts(markup: str) -> list[str]:
    """What in ``markup`` could run script or make the page fetch something."""
    inspector = _Inspector()
    inspector.feed(markup)
    inspector.close()
    for css in inspector.styles:
        if re.search(r"url\s*\(|@import|expression|\\", css, re.IGNORECASE):
            inspector.problems.append(f"css {css[:60]!r}")
    return inspector.problems


def assert_inert(data: dict) -> None:
    """A sanitised ``{mime: value}`` dict has only inert types and content."""
    assert set(data) <= {"text/plain", "text/html", "image/svg+xml", "image/png",
                         "image/jpeg", "image/gif", "image/webp", "application/json",
                         "text/latex"}, data.keys()
    if "text/html" in data:
        assert active_parts(inert_html(data["text/html"])) == []
    if "image/svg+xml" in data:
        svg = data["image/svg+xml"]
        assert not re.search(r"<script|foreignObject|\son\w+=|javascript:|<set|<animate", svg,
                             re.IGNORECASE), svg
        for ref in re.findall(r'href="([^"]*)"', svg):
            assert ref.startswith(("#", "data:image/")), ref
    if "text/latex" in data:
        assert not re.search(r"\\href|\\url|\\unicode", data["text/latex"])


@pytest.mark.parametrize("name", sorted(xss_corpus.payloads()))
def test_every_payload_is_inert_after_sanitising(name: str) -> None:
    bundle = xss_corpus.payloads()[name]
    data = safe_mime_data(bundle)
    assert_inert(data)
    assert data.get("text/plain", "").startswith("payload")


@pytest.mark.parametrize("mime", ["application/javascript", "text/javascript",
                                  "application/vnd.jupyter.widget-view+json",
                                  "application/vnd.plotly.v1+json", "application/pdf"])
def test_executable_types_are_withheld_with_a_note(mime: str) -> None:
    data = safe_mime_data({mime: "x", "text/plain": "obj"})
    assert data == {"text/plain": f"obj\n[{mime} output withheld: sandbox output is untrusted; "
                                  "'%sandbox trust on' shows it]"}


def test_withheld_note_is_quiet_when_something_displayable_remains() -> None:
    data = safe_mime_data({"text/html": "<b>x</b>", "application/javascript": "alert(1)",
                           "text/plain": "obj"})
    assert data["text/plain"] == "obj" and inert_html(data["text/html"]) == "<b>x</b>"


PANDAS_HTML = """<div>
<style scoped>
    .dataframe tbody tr th:only-of-type {
        vertical-align: middle;
    }

    .dataframe thead th {
        text-align: right;
    }
</style>
<table border="1" class="dataframe">
  <thead>
    <tr style="text-align: right;">
      <th></th>
      <th>name</th>
    </tr>
  </thead>
  <tbody>
    <tr>
      <th>0</th>
      <td>&lt;b&gt;bold&lt;/b&gt; &amp; $5</td>
    </tr>
  </tbody>
</table>
</div>"""

STYLER_HTML = """<style type="text/css">
#T_ab12_row0_col0 {
  background-color: #08306b;
  color: #f1f1f1;
}
</style>
<table id="T_ab12">
  <thead><tr><th class="blank level0" >&nbsp;</th><th id="T_ab12_level0_col0" class="col_heading level0 col0" >a</th></tr></thead>
  <tbody><tr><th id="T_ab12_level0_row0" class="row_heading level0 row0" >0</th><td id="T_ab12_row0_col0" class="data row0 col0" >1</td></tr></tbody>
</table>"""


def test_dataframe_html_keeps_its_table_and_scoped_style() -> None:
    html = safe_mime_data({"text/html": PANDAS_HTML})["text/html"]
    scope = re.match(r'<div class="(nx-[0-9a-f]{8})">', html).group(1)
    body = inert_html(html)
    assert '<table border="1" class="dataframe">' in body
    assert "<td>&lt;b&gt;bold&lt;/b&gt; &amp; $5</td>" in body  # escaped text stays text
    assert '<tr style="text-align: right">' in body
    rules = re.search(r"<style>(.*)</style>", body, re.DOTALL).group(1).strip().splitlines()
    assert rules == [f".{scope} .dataframe tbody tr th:only-of-type {{ vertical-align: middle }}",
                     f".{scope} .dataframe thead th {{ text-align: right }}"]


def test_styled_dataframe_keeps_colours_with_ids_prefixed_in_both_places() -> None:
    html = safe_mime_data({"text/html": STYLER_HTML})["text/html"]
    scope = re.match(r'<div class="(nx-[0-9a-f]{8})">', html).group(1)
    assert (f".{scope} #nx-T_ab12_row0_col0 {{ background-color: #08306b; color: #f1f1f1 }}"
            in html)
    assert 'id="nx-T_ab12_row0_col0"' in html and 'id="T_ab12' not in html


@pytest.mark.parametrize("css", [
    "p { color: red; background: url(/api/kernels) }",
    "p { background-image: u\\72l(/api/kernels) }",
    "@import url(/api/contents); p { color: red }",
    "@font-face { font-family: x; src: url(/f) } p { color: red }",
    "p { position: fixed; top: 0; left: 0; width: 100%; height: 100%; z-index: 9999 }",
    "p { color: red; content: 'x' } body { display: none }",
    "p { background: image-set('/x' 1x) }",
    "p { color: 'unbalanced } body { display: none }",
])
def test_stylesheets_cannot_fetch_escape_their_scope_or_cover_the_page(css: str) -> None:
    out = sanitize_stylesheet(css, scope=".nx-test")
    assert not re.search(r"url|import|image|position|z-index|content|\\", out), out
    for rule in filter(None, out.splitlines()):
        selectors = rule.split("{")[0].split(",")
        assert all(sel.strip().startswith(".nx-test ") for sel in selectors), rule


def test_markdown_renders_tables_and_keeps_math_for_mathjax() -> None:
    html = markdown_to_html("| col | val |\n|---|---|\n| a | 1 |\n\n"
                            "Inline $x_1 * y_2$ and $$\\sum_i a_i$$, `a<b`, ~~old~~")
    body = inert_html(html)
    assert "<table>" in body and "<th>col</th>" in body and "<td>1</td>" in body
    assert "$x_1 * y_2$" in body and "$$\\sum_i a_i$$" in body  # not emphasis, not mangled
    assert "<code>a&lt;b</code>" in body and "<s>old</s>" in body


def test_markdown_with_its_own_html_is_sanitised_not_dropped() -> None:
    body = inert_html(markdown_to_html("**bold** <span style='color: red'>red</span>"))
    assert '<strong>bold</strong> <span style="color: red">red</span>' in body


def test_matplotlib_like_svg_keeps_its_drawing_and_references() -> None:
    svg = ('<?xml version="1.0"?><!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
           '"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">'
           '<svg xmlns:xlink="http://www.w3.org/1999/xlink" xmlns="http://www.w3.org/2000/svg" '
           'width="10pt" viewBox="0 0 10 10"><metadata><rdf:RDF '
           'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></metadata>'
           '<defs><style type="text/css">*{stroke-linejoin: round}</style>'
           '<path id="m1" d="M 0 0 L 0 3.5"/><clipPath id="p1"><rect width="5" height="5"/>'
           '</clipPath></defs><g clip-path="url(#p1)"><use xlink:href="#m1" x="1" '
           'style="stroke: #000000; stroke-width: 0.8"/></g>'
           '<image xlink:href="data:image/png;base64,iVBORw0KGgo=" width="1" height="1"/></svg>')
    out = sanitize_svg(svg)
    scope = re.search(r'class="(nx-[0-9a-f]{8})"', out).group(1)
    assert f'<path id="{scope}-m1" d="M 0 0 L 0 3.5">' in out
    assert f'clip-path="url(#{scope}-p1)"' in out and f'xlink:href="#{scope}-m1"' in out
    assert 'style="stroke: #000000; stroke-width: 0.8"' in out
    assert f".{scope} * {{ stroke-linejoin: round }}" in out
    assert 'xlink:href="data:image/png;base64,iVBORw0KGgo="' in out
    assert "metadata" not in out and "DOCTYPE" not in out


@pytest.mark.parametrize("svg", [
    '<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
    '<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">]>'
    '<svg xmlns="http://www.w3.org/2000/svg"><text>&h;&h;&h;&h;&h;&h;&h;&h;</text></svg>',
    '<!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>',
    "<html><body>not svg</body></html>",
    "<svg xmlns='http://www.w3.org/2000/svg'><unclosed>",
])
def test_hostile_or_broken_svg_is_dropped(svg: str) -> None:
    assert sanitize_svg(svg) is None


def test_bundle_metadata_and_display_ids_are_bounded() -> None:
    out = safe_bundle({
        "data": {"image/png": "iVBORw0KGgo=\n", "text/plain": "fig"},
        "metadata": {"image/png": {"width": 640, "height": 480, "onload": "x"},
                     "application/javascript": {"a": 1}, "isolated": True},
        "transient": {"display_id": "d" * 1000, "other": "x"},
        "update": True,
    })
    assert out == {"data": {"image/png": "iVBORw0KGgo=", "text/plain": "fig"},
                   "metadata": {"image/png": {"width": 640, "height": 480}},
                   "transient": {"display_id": "d" * 256}, "update": True}
    assert "image/png" not in safe_mime_data({"image/png": "not base64!"})


# ------------------------------------------------------------------ a real sandbox, the API


@needs_bwrap
def test_api_display_of_the_whole_corpus_is_inert(nx, sandbox) -> None:
    events: list = []
    result = nx.sandbox_run(sandbox, "python", xss_corpus.sandbox_code(), session="s",
                            on_event=events.append)
    assert result["exit_code"] == 0, result["stderr"]
    names = sorted(xss_corpus.payloads())
    assert len(result["display"]) == len(names) - 1 and result["result"] is not None
    for data in [*result["display"], result["result"]]:
        assert_inert(data)
    streamed = [e.data["data"] for e in events if e.kind in ("display", "result")]
    assert len(streamed) == len(names)
    for data in streamed:
        assert_inert(data)


@needs_bwrap
def test_trusted_output_is_an_explicit_opt_in(nx, sandbox) -> None:
    code = xss_corpus.sandbox_code(["javascript", "html-script"])
    untrusted = nx.sandbox_run(sandbox, "python", code, session="s")
    assert "application/javascript" not in untrusted["display"][0]
    trusted = nx.sandbox_run(sandbox, "python", code, session="s", trusted_output=True)
    assert trusted["display"][0]["application/javascript"] == xss_corpus.script("javascript")
    assert "<script>" in trusted["result"]["text/html"]
