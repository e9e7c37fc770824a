"""CSS from a sandbox, reduced to rules that can only colour and lay out its own output.

Allowed: plain rules (no ``@`` rules), properties from an allow-list (or custom ``--name``
properties), values made of plain tokens. Refused: anything that loads a URL (``url()``,
``image-set()``, ``@import``, ``@font-face``), CSS escapes (``\\``), which could spell those,
positioning that could cover the page (``position``, ``z-index``, ``transform``) and
``content``. Every selector is prefixed with the output's own scope class and its ``#id``
references with the id prefix the HTML sanitiser gave the elements, so a rule never reaches
the rest of the page.
"""

from __future__ import annotations

import re


def word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: Properties a table, a styled DataFrame or a report needs, and nothing that moves an
#: element out of its box or fetches anything.
HTML_PROPERTIES = word_set("""
    color background background-color opacity visibility display float clear
    border border-top border-right border-bottom border-left border-color border-style
    border-width border-radius border-collapse border-spacing
    border-top-color border-right-color border-bottom-color border-left-color
    border-top-style border-right-style border-bottom-style border-left-style
    border-top-width border-right-width border-bottom-width border-left-width
    padding padding-top padding-right padding-bottom padding-left
    margin margin-top margin-right margin-bottom margin-left
    width height min-width max-width min-height max-height box-sizing
    overflow overflow-x overflow-y text-overflow white-space word-wrap word-break
    overflow-wrap text-align text-align-last vertical-align text-indent text-decoration
    text-decoration-color text-decoration-line text-decoration-style text-transform
    letter-spacing word-spacing line-height font font-family font-size font-style
    font-weight font-variant font-stretch table-layout caption-side empty-cells
    list-style-type list-style-position gap row-gap column-gap flex flex-direction
    flex-wrap flex-flow flex-grow flex-shrink flex-basis justify-content align-items
    align-content align-self order grid-template-columns grid-template-rows
    grid-column grid-row
""")

#: Presentation properties of SVG (matplotlib and friends) on top of the HTML ones.
SVG_PROPERTIES = HTML_PROPERTIES | word_set("""
    fill fill-opacity fill-rule stroke stroke-width stroke-linecap stroke-linejoin
    stroke-miterlimit stroke-dasharray stroke-dashoffset stroke-opacity clip-path
    clip-rule mask marker marker-start marker-mid marker-end stop-color stop-opacity
    text-anchor dominant-baseline alignment-baseline baseline-shift shape-rendering
    text-rendering image-rendering paint-order vector-effect mix-blend-mode isolation
""")

_NAME = re.compile(r"-?-?[a-zA-Z][a-zA-Z0-9-]*\Z")
#: Plain value tokens: words, numbers, colours, commas, quotes, parentheses of
#: functions such as rgb() or var(); nothing that can close a block or a string early.
_VALUE = re.compile(r"[\w\s#%.,+\-*/!()'\"]*\Z")
#: Words that load or run something, checked on the lowercased value.
_FORBIDDEN = re.compile(r"url|image|expression|import|binding|behavior|javascript|src|attr\(|"
                        r"element\(|paint\(|env\(")
#: ``url(#id)``: a reference inside an SVG document, which loads nothing.
_FRAGMENT_URL = re.compile(r"url\(\s*(['\"]?)#[\w.:-]+\1\s*\)", re.IGNORECASE)
_SELECTOR = re.compile(r"[\w\s\-#.:>+~*\[\]=^$|\"'()]+\Z")
_ID_REF = re.compile(r"#(-?[_a-zA-Z][\w-]*)")
_COMMENT = re.compile(r"/\*.*?(\*/|\Z)", re.DOTALL)


def safe_value(value: str, *, svg: bool = False) -> bool:
    """True when a declaration's value cannot load anything or escape its block."""
    if svg:
        value = _FRAGMENT_URL.sub("fragment", value)
    balanced = (value.count("(") == value.count(")") and value.count("'") % 2 == 0
                and value.count('"') % 2 == 0)
    return balanced and bool(_VALUE.match(value)) and not _FORBIDDEN.search(value.lower())


def sanitize_declarations(text: str, *, svg: bool = False) -> str:
    """The safe ``prop: value`` pairs of a ``style`` attribute or a rule's body."""
    allowed = SVG_PROPERTIES if svg else HTML_PROPERTIES
    kept = []
    for declaration in _COMMENT.sub(" ", text).split(";"):
        name, colon, value = declaration.partition(":")
        name, value = name.strip().lower(), " ".join(value.split())
        if not colon or not value or "\\" in declaration or not _NAME.match(name):
            continue
        if (name in allowed or name.startswith("--")) and safe_value(value, svg=svg):
            kept.append(f"{name}: {value}")
    return "; ".join(kept)


def _scoped_selector(selector: str, scope: str, id_prefix: str) -> str | None:
    selector = selector.strip()
    if not selector or not _SELECTOR.match(selector) or "\\" in selector:
        return None
    if id_prefix:
        selector = _ID_REF.sub(lambda m: "#" + id_prefix + m.group(1), selector)
    return f"{scope} {selector}" if scope else selector


def _rules(css: str):
    """(selector, body) of each top-level rule; ``@`` rules and broken blocks yield a None
    selector. Nested braces are skipped as a whole."""
    pos = 0
    while True:
        start = css.find("{", pos)
        if start < 0:
            return
        depth, end = 1, start + 1
        while end < len(css) and depth:
            depth += {"{": 1, "}": -1}.get(css[end], 0)
            end += 1
        prelude = css[pos:start].strip()
        nested = "{" in css[start + 1:end - 1]
        yield (None if prelude.startswith("@") or nested or depth else prelude,
               css[start + 1:end - 1])
        pos = end


def sanitize_stylesheet(css: str, *, scope: str, id_prefix: str = "", svg: bool = False) -> str:
    """A style sheet whose every rule applies inside ``scope`` only (a selector such as
    ``.nx-1a2b``; empty for a document of its own) and whose declarations are safe."""
    out = []
    for prelude, body in _rules(_COMMENT.sub(" ", css)):
        if prelude is None:
            continue
        selectors = [_scoped_selector(part, scope, id_prefix) for part in prelude.split(",")]
        declarations = sanitize_declarations(body, svg=svg)
        if declarations and all(selectors):
            out.append(f"{', '.join(selectors)} {{ {declarations} }}")
    return "\n".join(out)
