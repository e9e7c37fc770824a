"""Display objects returned by ``%sandbox``: a table for ``list``, a card for one sandbox.

Both render as text (``__repr__``, for terminals and ``text/plain``) and as HTML
(``_repr_html_``, for notebooks), and keep the underlying dicts for programmatic use:
``sb = %sandbox create demo`` then ``sb["sandbox_id"]``.
"""

from __future__ import annotations

import html
import time
from datetime import datetime
from typing import Any

#: Fields of a sandbox's card, in order.
_CARD_FIELDS = (
    "sandbox_id",
    "name",
    "status",
    "provider",
    "template_id",
    "network",
    "ttl_minutes",
    "created_at",
    "last_active_at",
    "expires_at",
    "hard_end_at",
    "uptime_seconds",
    "error",
)


def expires_in(info: dict[str, Any], now: float | None = None) -> str:
    """How long until the sandbox expires, e.g. ``9m 58s`` (``-`` once stopped)."""
    if info.get("status") == "stopped" or not info.get("expires_at"):
        return "-"
    left = datetime.fromisoformat(info["expires_at"]).timestamp() - (now or time.time())
    if left <= 0:
        return "expired"
    minutes, seconds = divmod(int(left), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {seconds:02d}s"


def _when(stamp: str) -> str:
    """An ISO-8601 UTC time shown to the second: ``2025-01-31 12:00:05 UTC``."""
    try:
        return datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        return str(stamp)


def _row(info: dict[str, Any], current: str | None, now: float) -> list[str]:
    marker = "*" if info.get("sandbox_id") == current else ""
    return [
        marker,
        str(info.get("sandbox_id", "")),
        str(info.get("name", "")),
        str(info.get("status", "")),
        str(info.get("provider", "")),
        expires_in(info, now),
        f"{info.get('uptime_seconds', 0):.0f}s",
    ]


class SandboxTable:
    """The sandboxes of ``%sandbox list``; ``*`` marks the notebook's current one."""

    headers = ("", "sandbox_id", "name", "status", "provider", "expires in", "uptime")

    def __init__(self, sandboxes: list[dict[str, Any]], current: str | None = None):
        self.sandboxes = sandboxes
        self.current = current
        self._now = time.time()

    def __len__(self) -> int:
        return len(self.sandboxes)

    def __iter__(self):
        return iter(self.sandboxes)

    def rows(self) -> list[list[str]]:
        """The table's cells as text, one list per sandbox."""
        return [_row(info, self.current, self._now) for info in self.sandboxes]

    def __repr__(self) -> str:
        if not self.sandboxes:
            return "No sandboxes. Create one with: %sandbox create NAME"
        table = [list(self.headers), *self.rows()]
        widths = [max(len(row[i]) for row in table) for i in range(len(self.headers))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in table]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self.sandboxes:
            return "<p>No sandboxes. Create one with: <code>%sandbox create NAME</code></p>"
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in self.rows()
        )
        return (
            '<table class="nexus-sandboxes">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )


class SandboxCard:
    """One sandbox's description as key/value pairs (``status``, ``create`` …)."""

    def __init__(self, info: dict[str, Any], title: str = "", current: bool = False):
        self.info = info
        self.title = title or f"sandbox {info.get('sandbox_id', '')}"
        self.current = current

    def __getitem__(self, key: str) -> Any:
        return self.info[key]

    def items(self) -> list[tuple[str, str]]:
        """The shown fields (unset ones left out) as text."""
        shown = []
        for key in _CARD_FIELDS:
            value = self.info.get(key)
            if value not in (None, ""):
                shown.append((key, _when(value) if key.endswith("_at") else str(value)))
            if key == "status":
                shown.append(("expires in", expires_in(self.info)))
        return shown

    def _heading(self) -> str:
        return self.title + (" (current)" if self.current else "")

    def __repr__(self) -> str:
        pairs = self.items()
        width = max(len(key) for key, _ in pairs)
        return "\n".join([self._heading(), *(f"  {k.ljust(width)}  {v}" for k, v in pairs)])

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in self.items()
        )
        return (
            f'<div class="nexus-sandbox"><strong>{html.escape(self._heading())}</strong>'
            f"<table>{rows}</table></div>"
        )
