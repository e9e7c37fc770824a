"""Which MIME types of a sandbox's rich output reach a frontend, and in what form.

A bundle keeps only types a frontend renders without running code: ``text/plain``,
``application/json``, raster images (base64 checked), SVG (rebuilt, see :mod:`.svg`), HTML
(sanitised, see :mod:`.html`), Markdown (rendered and sanitised, sent as ``text/html``) and
LaTeX (MathJax commands that make links removed). Everything else, ``application/javascript``,
widget views, Plotly/Vega/Bokeh specs (which can load URLs) and unknown types included, is
withheld; when nothing displayable is left the text says what was withheld and how to
trust the sandbox.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .html import defuse_tex, markdown_to_html, sanitize_html
from .svg import sanitize_svg

_RASTER = ("image/png", "image/jpeg", "image/gif", "image/webp")
#: Metadata a frontend reads per MIME type (image size, background hint).
_METADATA_KEYS = ("width", "height", "unconfined", "needs_background")
#: Longest display id kept (the id only names an output to update).
_MAX_DISPLAY_ID = 256


def _base64(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    compact = "".join(value.split())
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None
    return compact


def safe_mime_data(data: Any) -> dict[str, Any]:
    """The displayable, inert part of a ``{mime: value}`` dict from a sandbox."""
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for mime, value in data.items():
        if (mime == "text/plain" and isinstance(value, str)) or mime == "application/json":
            out[mime] = value
        elif mime in _RASTER and (image := _base64(value)) is not None:
            out[mime] = image
        elif mime == "image/svg+xml" and isinstance(value, str):
            if (svg := sanitize_svg(value)) is not None:
                out[mime] = svg
        elif mime == "text/html" and isinstance(value, str):
            out[mime] = sanitize_html(value)
        elif mime == "text/markdown" and isinstance(value, str) and "text/html" not in data:
            out["text/html"] = markdown_to_html(value)
        elif mime == "text/latex" and isinstance(value, str):
            out[mime] = defuse_tex(value)
    rendered = {"text/markdown"} if "text/html" in out else set()
    withheld = sorted(set(data) - set(out) - rendered)
    if withheld and set(out) <= {"text/plain"}:
        note = (f"[{', '.join(withheld)} output withheld: sandbox output is untrusted; "
                "'%sandbox trust on' shows it]")
        out["text/plain"] = (out.get("text/plain", "") + "\n" + note).lstrip("\n")
    return out


def _safe_metadata(metadata: Any, kept: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(metadata, dict):
        return {}
    out: dict[str, Any] = {}
    for mime in kept:
        entry = metadata.get(mime)
        if isinstance(entry, dict):
            simple = {k: entry[k] for k in _METADATA_KEYS
                      if isinstance(entry.get(k), (int, float, bool, str))}
            if simple:
                out[mime] = simple
    return out


def safe_bundle(payload: Any) -> dict[str, Any]:
    """A display / result event's payload (``{"data", "metadata", "transient", "update",
    "page"}``)
    with only inert, displayable content."""
    if not isinstance(payload, dict):
        return {"data": {}, "metadata": {}}
    data = safe_mime_data(payload.get("data"))
    out: dict[str, Any] = {"data": data, "metadata": _safe_metadata(payload.get("metadata"), data)}
    transient = payload.get("transient")
    if isinstance(transient, dict) and isinstance(transient.get("display_id"), str):
        out["transient"] = {"display_id": transient["display_id"][:_MAX_DISPLAY_ID]}
        out["update"] = bool(payload.get("update"))
    if payload.get("page") is True:  # pager text (IPython's ``obj?``): the kernel's pager
        out["page"] = True
    return out
