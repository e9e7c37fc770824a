"""Introspection for the python worker: completion and inspection of the name at the cursor,
looked up in the session's namespace without evaluating anything."""

from __future__ import annotations

import contextlib


def _dotted_name_before(text: str):
    """The dotted name (``a.b.c`` or ``a.b.``) that ends ``text``, or None."""
    import re

    found = re.search(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*\.?$", text)
    if found is None or (found.start() > 0 and text[found.start() - 1] == "."):
        return None  # after ``f().`` or ``"x".``: completing would need evaluation
    return found.group()


def complete_code(namespace: dict, code: str, cursor_pos: int) -> dict:
    """Completions of the name before the cursor: names in ``namespace``, builtins and
    keywords, or attributes after a dot (``rlcompleter``; properties are not evaluated)."""
    import rlcompleter

    token = _dotted_name_before(code[:cursor_pos])
    found = {"matches": [], "cursor_start": cursor_pos, "cursor_end": cursor_pos}
    if not token:
        return found
    completer = rlcompleter.Completer(namespace)
    matches = []
    for state in range(10000):
        try:
            word = completer.complete(token, state)
        except Exception:
            break
        if word is None:
            break
        word = word[:-2] if word.endswith("()") else word.rstrip("(").rstrip(": ")
        if word not in matches:
            matches.append(word)
    found["matches"] = sorted(matches, key=lambda m: (m.rsplit(".", 1)[-1].startswith("_"), m))
    found["cursor_start"] = cursor_pos - len(token)
    return found


def inspect_code(namespace: dict, code: str, cursor_pos: int, detail_level: int = 0) -> dict:
    """What the name at the cursor is: type, signature and docstring (and the source with
    ``detail_level`` 1), looked up in ``namespace`` then builtins without calling anything."""
    import builtins
    import inspect
    import re

    before = re.sub(r"\(\s*$", "", code[:cursor_pos])
    token = (_dotted_name_before(before) or "") + re.match(r"\w*", code[cursor_pos:]).group()
    parts = token.rstrip(".").split(".") if token else []
    if not parts or not parts[0]:
        return {"found": False, "data": {}, "metadata": {}}
    missing = object()
    obj = namespace.get(parts[0], getattr(builtins, parts[0], missing))
    for part in parts[1:]:
        if obj is missing:
            break
        try:
            obj = inspect.getattr_static(obj, part)
        except AttributeError:
            obj = missing
    if obj is missing:
        return {"found": False, "data": {}, "metadata": {}}
    lines = [f"Type:      {type(obj).__name__}"]
    with contextlib.suppress(Exception):
        lines.append(f"Signature: {parts[-1]}{inspect.signature(obj)}")
    if not callable(obj):
        with contextlib.suppress(Exception):
            lines.append(f"Value:     {repr(obj)[:1000]}")
    doc = inspect.getdoc(obj)
    if doc:
        lines += ["Docstring:", doc]
    if detail_level:
        with contextlib.suppress(Exception):
            lines += ["Source:", inspect.getsource(obj)]
    return {"found": True, "data": {"text/plain": "\n".join(lines)}, "metadata": {}}

