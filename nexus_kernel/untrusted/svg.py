"""SVG from a sandbox, rebuilt from an allow-list of drawing elements and attributes.

JupyterLab shows ``image/svg+xml`` in an ``<img>``, where scripts never run, but other
frontends and ``nbconvert --to html`` put the markup into the page itself; so the document is
parsed (expat, which refuses entity-expansion bombs and never fetches external entities)
and only shapes, text, gradients, clip paths, markers, patterns, simple filters and
``data:`` raster images survive. Scripts, ``foreignObject``, animation elements (which can
set ``href``), event handlers, external references and unsafe CSS go; ids are prefixed and
references rewritten so nothing collides with or reaches the surrounding page.
"""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET
from html import escape

from .css import safe_value, sanitize_declarations, sanitize_stylesheet, word_set

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"
#: Larger documents are not shown (the text/plain of the bundle still is).
MAX_SVG_BYTES = 32 * 1024 * 1024

_ELEMENTS = word_set("""
    svg g defs symbol use path rect circle ellipse line polyline polygon text tspan
    textPath title desc clipPath mask pattern marker linearGradient radialGradient stop
    image style filter feGaussianBlur feOffset feBlend feMerge feMergeNode feFlood
    feComposite feColorMatrix feMorphology feDropShadow
""")
#: Elements replaced by a plain group, keeping their drawing.
_UNWRAPPED = frozenset({"a", "switch"})
_DATA_RASTER = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*\Z")
_URL_REF = re.compile(r"url\(\s*(['\"]?)#", re.IGNORECASE)


def _safe_attribute(tag: str, name: str, value: str) -> bool:
    low = value.lower()
    if name.startswith("on") or "javascript:" in low or "\\" in value:
        return False
    if name in ("href", "xlink:href"):
        return value.startswith("#") or (tag == "image" and bool(_DATA_RASTER.match(value)))
    if "url" in low or "(" in value:
        return safe_value(value, svg=True)
    return True


def _qualified(name: str) -> str:
    """``xlink:href`` -> ElementTree's ``{namespace}href`` (and ``xml:`` likewise)."""
    prefix, _, local = name.partition(":")
    if not local:
        return name
    return f"{{{XLINK_NS if prefix == 'xlink' else XML_NS}}}{local}"


class _Rebuilder:
    def __init__(self) -> None:
        self.scope = "nx-" + secrets.token_hex(4)
        self.id_prefix = self.scope + "-"

    def refs(self, value: str) -> str:
        return _URL_REF.sub(lambda m: f"url({m.group(1)}#{self.id_prefix}", value)

    def attributes(self, tag: str, element: ET.Element) -> dict[str, str]:
        kept: dict[str, str] = {}
        for raw_name, value in element.attrib.items():
            if raw_name.startswith("{" + XLINK_NS + "}"):
                name = "xlink:" + raw_name.split("}", 1)[1]
            elif raw_name.startswith("{" + XML_NS + "}"):
                name = "xml:" + raw_name.split("}", 1)[1]
                if name not in ("xml:space", "xml:lang"):
                    continue
            elif raw_name.startswith("{"):
                continue
            else:
                name = raw_name
            if name == "style":
                value = sanitize_declarations(value, svg=True)
                if not value:
                    continue
            elif not _safe_attribute(tag, name, value):
                continue
            if name == "id":
                value = self.id_prefix + value
            elif name in ("href", "xlink:href") and value.startswith("#"):
                value = "#" + self.id_prefix + value[1:]
            kept[_qualified(name)] = self.refs(value)
        return kept

    def element(self, source: ET.Element) -> ET.Element | None:
        if source.tag.startswith("{" + SVG_NS + "}"):
            tag = source.tag.split("}", 1)[1]
        elif not source.tag.startswith("{"):  # <svg> without xmlns, as HTML pages write it
            tag = source.tag
        else:
            return None
        if tag in _UNWRAPPED:
            tag, attrib = "g", {}
        elif tag in _ELEMENTS:
            attrib = self.attributes(tag, source)
        else:
            return None
        out = ET.Element(f"{{{SVG_NS}}}{tag}", attrib)
        if tag == "style":
            out.text = self.refs(sanitize_stylesheet(
                source.text or "", scope="." + self.scope, id_prefix=self.id_prefix, svg=True))
            return out
        out.text = source.text
        for child in source:
            rebuilt = self.element(child)
            if rebuilt is not None:
                rebuilt.tail = child.tail
                out.append(rebuilt)
        return out


def sanitize_svg(markup: str) -> str | None:
    """The drawing of an SVG document with nothing active left, or None when it is not a
    well-formed SVG document of a reasonable size."""
    if len(markup) > MAX_SVG_BYTES:
        return None
    try:
        root = ET.fromstring(markup)
    except (ET.ParseError, ValueError):
        return None
    if root.tag not in (f"{{{SVG_NS}}}svg", "svg"):
        return None
    rebuilder = _Rebuilder()
    rebuilt = rebuilder.element(root)
    if rebuilt is None:
        return None
    classes = rebuilt.get("class", "")
    rebuilt.set("class", f"{classes} {rebuilder.scope}".strip())
    rebuilt.set("xmlns", SVG_NS)
    rebuilt.set("xmlns:xlink", XLINK_NS)
    out: list[str] = []
    _serialize(rebuilt, out)
    return "".join(out)


def _name(qualified: str) -> str:
    """The prefixed name an HTML page understands: ``{svg}rect`` -> ``rect``,
    ``{xlink}href`` -> ``xlink:href``."""
    if not qualified.startswith("{"):
        return qualified
    namespace, local = qualified[1:].split("}", 1)
    return {XLINK_NS: "xlink:", XML_NS: "xml:"}.get(namespace, "") + local


def _serialize(element: ET.Element, out: list[str]) -> None:
    tag = _name(element.tag)
    attributes = "".join(f' {_name(k)}="{escape(v, quote=True)}"' for k, v in element.items())
    out.append(f"<{tag}{attributes}>")
    if element.text:
        out.append(escape(element.text, quote=False))
    for child in element:
        _serialize(child, out)
        if child.tail:
            out.append(escape(child.tail, quote=False))
    out.append(f"</{tag}>")
