"""Run code in a sandbox and describe the result for a language model.

One implementation shared by the MCP server and the agent-framework tools: stdout, stderr,
the exit code and time, the error with its traceback (ANSI colours stripped), rich output
(PNG images kept apart as base64, HTML/Markdown/plain text as text), each text part cut to a
bound with a note saying so. Everything here came out of a sandbox and has already passed the
manager's untrusted-output filter; this module only shapes and bounds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .egress import denial_line
from .errors import ExecutionTimeoutError
from .manager import EventCallback, SandboxManager
from .models import ExecResult, usage_summary

#: Network denials named one by one in a run's notes; the rest are counted.
MAX_DENIAL_NOTES = 8

#: Characters of one text part (stdout, stderr, a traceback, one rich output) shown to a model.
TEXT_LIMIT = 20_000
#: Images returned per run (matplotlib loops can draw hundreds).
IMAGE_LIMIT = 8
#: Text MIME types a model can read, best first (Markdown is sanitised into text/html;
#: a plain text that is only the default object repr gives way to the next).
TEXT_MIMES = ("text/plain", "text/markdown", "text/html", "text/latex", "application/json")
IMAGE_MIMES = ("image/png", "image/jpeg")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: ``<__main__.Page object at 0x7f…>``: a plain text that a richer MIME type should replace.
_DEFAULT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>\Z")


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, head and tail kept, with a note of what was cut."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


@dataclass(frozen=True)
class Image:
    """One image of a run: ``data`` is base64, ``mime`` image/png or image/jpeg."""

    data: str
    mime: str


@dataclass(frozen=True)
class Outcome:
    """A run described for a model: ``text`` to show, ``images`` to attach, ``fields`` the
    structured result (stdout, stderr, exit_code, execution_time, outputs, error …)."""

    text: str
    images: tuple[Image, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)
    is_error: bool = False


def run(
    manager: SandboxManager,
    sandbox_id: str,
    code: str,
    language: str = "python",
    *,
    session: str | None = "default",
    timeout: float | None = None,
    on_event: EventCallback | None = None,
) -> Outcome:
    """Run ``code`` and describe it; a timeout is an outcome (with the partial output), other
    errors (bad argument, stopped sandbox) raise :class:`~nexus_kernel.errors.SandboxError`."""
    try:
        result = manager.run(sandbox_id, language, code, timeout, session=session,
                             on_event=on_event, stderr_traceback=False)
    except ExecutionTimeoutError as exc:
        partial = exc.result if isinstance(exc.result, ExecResult) else None
        return describe(partial, note=str(exc))
    return describe(result)


def describe(result: ExecResult | None, note: str | None = None) -> Outcome:
    """The :class:`Outcome` of one run (``note``: a line saying why it ended, e.g. timeout)."""
    if result is None:
        return Outcome(text=note or "no result", fields={"error": note}, is_error=True)
    outputs: list[str] = []
    images: list[Image] = []
    for bundle in (*result.display, *((result.result,) if result.result else ())):
        image = _image(bundle)
        if image is not None:
            if len(images) < IMAGE_LIMIT:
                images.append(image)
            continue
        text = _text(bundle)
        if text:
            outputs.append(clip(text))
    error = None
    if result.error:
        lines = [str(line) for line in result.error.get("traceback") or ()]
        traceback = _ANSI.sub("", "\n".join(lines)) or (
            f"{result.error.get('ename', '')}: {result.error.get('evalue', '')}")
        error = {"ename": result.error.get("ename", ""), "evalue": result.error.get("evalue", ""),
                 "traceback": clip(traceback)}
    notes = [note] if note else []
    if result.interrupted:
        notes.append("interrupted (KeyboardInterrupt); a session keeps its variables")
    if result.truncated:
        notes.append("output cut: the run reached its output cap")
    if result.oom_killed:
        notes.append("a process was killed: the sandbox's memory limit was reached")
    notes += [denial_line(event)[len("Nexus: "):] + " (the sandbox's network allow-list)"
              for event in result.network_denials[:MAX_DENIAL_NOTES]]
    if len(result.network_denials) > MAX_DENIAL_NOTES:
        notes.append(f"{len(result.network_denials) - MAX_DENIAL_NOTES} more network denials")
    if result.session_restarted:
        notes.append("the session was restarted: its variables are gone")
    fields = {
        "stdout": clip(result.stdout),
        "stderr": clip(_ANSI.sub("", result.stderr)),
        "exit_code": result.exit_code,
        "execution_time": result.execution_time,
        "outputs": outputs,
        "images": len(images),
        "error": error,
        "notes": notes,
        "ended_by": result.ended_by,
        "usage": result.usage,
    }
    failed = bool(error) or result.exit_code != 0 or result.timed_out
    return Outcome(text=_render(fields), images=tuple(images), fields=fields, is_error=failed)


def _image(bundle: dict[str, Any]) -> Image | None:
    for mime in IMAGE_MIMES:
        if isinstance(bundle.get(mime), str):
            return Image(bundle[mime], mime)
    return None


def _text(bundle: dict[str, Any]) -> str:
    plain = bundle.get("text/plain")
    if isinstance(plain, str) and _DEFAULT_REPR.match(plain) and len(bundle) > 1:
        bundle = {k: v for k, v in bundle.items() if k != "text/plain"}  # says nothing
    for mime in TEXT_MIMES:
        value = bundle.get(mime)
        if isinstance(value, str):
            return value
        if value is not None and mime == "application/json":
            return str(value)
    return ""


def _render(fields: dict[str, Any]) -> str:
    parts = [f"exit_code: {fields['exit_code']}  execution_time: {fields['execution_time']:.3f} s"
             if isinstance(fields["execution_time"], (int, float))
             else f"exit_code: {fields['exit_code']}"]
    for name in ("stdout", "stderr"):
        if fields[name]:
            parts.append(f"{name}:\n{fields[name].rstrip()}")
    for index, text in enumerate(fields["outputs"], 1):
        parts.append(f"output {index}:\n{text.rstrip()}")
    if fields["images"]:
        parts.append(f"images: {fields['images']} attached")
    if fields["error"]:
        error = fields["error"]
        parts.append(f"error: {error['ename']}: {error['evalue']}\n{error['traceback'].rstrip()}")
    parts.extend(f"note: {line}" for line in fields["notes"])
    parts.append(f"usage: {usage_summary(fields['ended_by'], fields['usage'])}")
    return "\n".join(parts)


__all__ = ["IMAGE_LIMIT", "TEXT_LIMIT", "Image", "Outcome", "clip", "describe", "run"]
