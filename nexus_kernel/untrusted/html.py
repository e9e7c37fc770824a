"""HTML and Markdown from a sandbox, made safe to insert into the user's Jupyter page.

An allow-list sanitiser (nh3, the Rust ``ammonia`` library) keeps what data work shows:
tables (pandas DataFrames, styled ones included), text formatting, lists, details, links to
``http(s)``/``mailto`` and images given as ``data:`` URIs. Scripts, event handlers, forms,
frames, objects, ``<meta>``/``<base>``/``<link>``, inline SVG/MathML and every URL that
would make the page fetch something (relative URLs, remote images, CSS ``url()``) are
removed. ``<style>`` sheets and ``style`` attributes keep only safe declarations, and every
rule is scoped to the output's own wrapper element (see :mod:`.css`); element ids get a
prefix so they cannot clobber the page's own.

Markdown is rendered here (markdown-it, CommonMark with tables and strikethrough; math kept
verbatim for the frontend's MathJax) and sanitised like HTML, so it reaches the frontend as
``text/html`` that needs no trust.
"""

from __future__ import annotations

import html
import re
import secrets

from .css import safe_value, sanitize_declarations, sanitize_stylesheet

#: Elements kept (their attributes are filtered separately); anything else is unwrapped
#: (its text kept) or, for _DROPPED_WITH_CONTENT, removed with its content.
_TAGS = {
    "a", "abbr", "b", "bdi", "bdo", "blockquote", "br", "caption", "center", "cite", "code",
    "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption",
    "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd",
    "label", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike",
    "strong", "style", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "time", "tr", "tt", "u", "ul", "var", "wbr",
}
_DROPPED_WITH_CONTENT = {
    "script", "template", "iframe", "frame", "frameset", "object", "embed", "applet",
    "noscript", "noembed", "noframes", "xmp", "textarea", "select", "svg", "math", "title",
    "plaintext", "button",
}
_GLOBAL_ATTRIBUTES = {"class", "id", "style", "title", "align", "valign", "lang", "dir",
                      "width", "height", "bgcolor", "border", "colspan", "rowspan", "scope",
                      "headers", "cellpadding", "cellspacing", "span", "start", "open",
                      "alt", "datetime", "color", "size", "face", "nowrap", "abbr"}
_ATTRIBUTES = {"*": _GLOBAL_ATTRIBUTES, "a": {"href"}, "img": {"src"}}
_LINK = re.compile(r"(https?:|mailto:)", re.IGNORECASE)
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp|svg\+xml)[;,]", re.IGNORECASE)
_STYLE_BLOCK = re.compile(r"<style>(.*?)</style>", re.DOTALL)
#: A trace of code that the sanitiser is there to remove (for the note shown to the user).
_ACTIVE = re.compile(r"<\s*(script|iframe)|<[a-z][^>]*(\son[a-z]+\s*=|javascript:)",
                     re.IGNORECASE)
#: MathJax commands that make links, attributes or requests; ``\\ `` breaks them.
_TEX_ACTIVE = re.compile(r"\\(?=(?:href|url|class|cssId|style|unicode|require|data|html|"
                         r"csname|mmlToken|texttip|mathtip|toggle|bbox)\b)")
ID_PREFIX = "nx-"


def defuse_tex(text: str) -> str:
    """Break the MathJax commands that could add links or attributes (``\\href`` …)."""
    return _TEX_ACTIVE.sub(r"\\ ", text)


def _attribute_filter(tag: str, name: str, value: str) -> str | None:
    if name == "href":
        return value if _LINK.match(value.strip()) else None
    if name == "src":
        return value if _DATA_IMAGE.match(value.strip()) else None
    if name == "style":
        return sanitize_declarations(value) or None
    if name in ("color", "bgcolor"):
        return value if safe_value(value) else None
    return value


def sanitize_html(markup: str) -> str:
    """``markup`` with only inert content left, wrapped in a ``<div>`` of its own scope."""
    import nh3  # lazy: only outputs with HTML pay for it

    scope = "nx-" + secrets.token_hex(4)
    cleaned = nh3.clean(
        defuse_tex(markup),
        tags=_TAGS,
        clean_content_tags=_DROPPED_WITH_CONTENT,
        attributes=_ATTRIBUTES,
        attribute_filter=_attribute_filter,
        url_schemes={"http", "https", "mailto", "data"},
        url_relative="deny",
        link_rel="noopener noreferrer nofollow",
        id_prefix=ID_PREFIX,
        strip_comments=True,
    )
    cleaned = _STYLE_BLOCK.sub(
        lambda m: "<style>" + sanitize_stylesheet(m.group(1), scope="." + scope,
                                                  id_prefix=ID_PREFIX) + "</style>",
        cleaned,
    )
    note = ""
    if _ACTIVE.search(markup):
        note = ('<p class="nexus-untrusted-note"><small>Nexus: scripts in this sandbox '
                "output were removed (untrusted output; see %sandbox trust).</small></p>")
    return f'<div class="{scope}">{cleaned}{note}</div>'


# ------------------------------------------------------------------------------ markdown

#: Display and inline math, kept out of the Markdown parser as the notebook does.
_MATH = re.compile(
    r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|\\begin\{([a-z*]+)\}.+?\\end\{\1\}|"
    r"(?<![\\$])\$(?!\s)[^$\n]+?(?<![\s\\])\$",
    re.DOTALL,
)
_HOLD = "\ue000{}\ue001"
_HELD = re.compile("\ue000(\\d+)\ue001")


def markdown_to_html(text: str) -> str:
    """Markdown rendered as the notebook would (tables, strikethrough, math left for
    MathJax), then sanitised like any HTML."""
    from markdown_it import MarkdownIt

    text = text.replace("\ue000", "").replace("\ue001", "")
    held: list[str] = []

    def hold(match: re.Match) -> str:
        held.append(match.group(0))
        return _HOLD.format(len(held) - 1)

    renderer = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    rendered = renderer.render(_MATH.sub(hold, text))
    rendered = _HELD.sub(lambda m: html.escape(held[int(m.group(1))], quote=False), rendered)
    return sanitize_html(rendered)
