"""Rich output capture for the python worker: the MIME bundle of a value, built like
IPython's display formatter (``_repr_mimebundle_``, then every ``_repr_*_`` method)."""

from __future__ import annotations

import contextlib
import json
import sys

#: (method, MIME type) pairs a value may offer, tried in IPython's order.
REPR_METHODS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
    ("_repr_javascript_", "application/javascript"),
    ("_repr_pdf_", "application/pdf"),
)
#: MIME types whose bytes travel base64-encoded (as Jupyter sends them).
BINARY_MIMES = ("image/png", "image/jpeg", "application/pdf")


def _real_method(obj, name: str):
    """``obj.name`` if it is a real method, as IPython looks it up: never on classes, and
    never on objects that invent every attribute (mocks, proxies)."""
    if isinstance(obj, type):
        return None
    try:
        if getattr(obj, "_ipython_canary_method_should_not_exist_", None) is not None:
            return None
        method = getattr(obj, name, None)
    except Exception:
        return None
    return method if callable(method) else None


def _split_metadata(value):
    """A ``_repr_*_`` return value -> (data, metadata or None); ``(data, md)`` tuples split."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        return value[0], value[1]
    return value, None


def _wire_value(mime: str, value):
    """A bundle value as it goes on the wire: binary formats as base64 text."""
    if isinstance(value, (bytes, bytearray)):
        if mime in BINARY_MIMES:
            import base64

            return base64.b64encode(bytes(value)).decode("ascii")
        return bytes(value).decode("utf-8", "replace")
    return value


def _format_warning(obj, what: str, exc: BaseException) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{type(obj).__name__}.{what} failed: {type(exc).__name__}: {exc}\n")


def mime_bundle(obj, include=None, exclude=None) -> tuple:
    """``(data, metadata)`` for ``obj``, built like IPython's display formatter.

    ``_repr_mimebundle_(include, exclude)`` comes first; every ``_repr_*_`` method then fills
    in the MIME types it did not give; ``text/plain`` is always there (``repr``). A method
    may return ``None`` (skipped), the data, or ``(data, metadata)``; bytes for PNG/JPEG/PDF
    become base64. A rich method that raises, or returns what JSON cannot carry, is skipped
    with a one-line warning on stderr; a failing ``repr`` raises (like the REPL)."""
    data: dict = {}
    metadata: dict = {}
    method = _real_method(obj, "_repr_mimebundle_")
    if method is not None:
        try:
            got, md = _split_metadata(method(include=include, exclude=exclude))
        except Exception as exc:
            _format_warning(obj, "_repr_mimebundle_", exc)
            got, md = None, None
        if isinstance(got, dict):
            data.update(got)
        if isinstance(md, dict):
            metadata.update(md)
    for name, mime in REPR_METHODS:
        method = None if mime in data else _real_method(obj, name)
        if method is None:
            continue
        try:
            value, md = _split_metadata(method())
        except Exception as exc:
            _format_warning(obj, name, exc)
            continue
        if value is not None:
            data[mime] = value
            if md:
                metadata[mime] = md
    if "text/plain" not in data:
        data["text/plain"] = repr(obj)
    return clean_bundle(obj, data, metadata, include, exclude)


def clean_bundle(obj, data: dict, metadata: dict, include, exclude) -> tuple:
    """Keep the MIME types ``include``/``exclude`` allow and JSON can carry; binary as base64."""
    clean = {}
    for mime, value in data.items():
        if (include and mime not in include) or (exclude and mime in exclude):
            continue
        value = _wire_value(mime, value)
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            _format_warning(obj, f"{mime} output", exc)
            continue
        clean[mime] = value
    try:
        json.dumps(metadata)
    except (TypeError, ValueError):
        metadata = {}
    return clean, metadata
