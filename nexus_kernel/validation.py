"""Checks on what callers pass in (language, TTL, timeout, name, code) and their bounds.

Every surface (API, CLI, magics, kernel) and the manager use these, so a bad value gets the
same one-line error wherever it was typed."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from .errors import InvalidArgumentError
from .models import LANGUAGE_ALIASES, LANGUAGES

MAX_TTL_MINUTES = 7 * 24 * 60.0
MAX_TIMEOUT = 24 * 3600.0
MAX_NAME_LENGTH = 128
MAX_CODE_BYTES = 16 * 1024 * 1024


def normalize_language(language: Any) -> str:
    """The canonical language name (``py`` -> ``python``); an error names the choices."""
    if not isinstance(language, str):
        raise InvalidArgumentError("language must be a string: python, javascript or bash")
    name = LANGUAGE_ALIASES.get(language.strip().lower(), language.strip().lower())
    if name not in LANGUAGES:
        raise InvalidArgumentError(
            f"unknown language {language!r}; use one of: {', '.join(LANGUAGES)}"
        )
    return name


def check_ttl(ttl_minutes: Any, name: str = "ttl_minutes") -> float:
    """The TTL as a float; errors call it ``name`` (a surface passes what its user typed)."""
    if isinstance(ttl_minutes, bool) or not isinstance(ttl_minutes, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of minutes, e.g. 10")
    if not math.isfinite(ttl_minutes) or ttl_minutes <= 0 or ttl_minutes > MAX_TTL_MINUTES:
        raise InvalidArgumentError(
            f"{name} must be > 0 and <= {int(MAX_TTL_MINUTES)} minutes (7 days), got {ttl_minutes}"
        )
    return float(ttl_minutes)


def check_timeout(timeout: Any, name: str = "timeout") -> float:
    """The timeout as a float; errors call it ``name`` (a surface passes what its user typed)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of seconds, e.g. 30")
    if not math.isfinite(timeout) or timeout <= 0 or timeout > MAX_TIMEOUT:
        raise InvalidArgumentError(
            f"{name} must be > 0 and <= {int(MAX_TIMEOUT)} seconds, got {timeout}"
        )
    return float(timeout)


def check_name(name: Any) -> str:
    """A sandbox name: non-empty text without control or invisible format characters."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgumentError("sandbox name must be a non-empty string")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(f"sandbox name is longer than {MAX_NAME_LENGTH} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        raise InvalidArgumentError(
            "sandbox name must not contain control characters or NUL, nor invisible format "
            "characters (bidi overrides, zero-width); use letters, digits and punctuation")
    return name


def check_code(code: Any) -> str:
    """Code to run: text of at most MAX_CODE_BYTES, without NUL."""
    if not isinstance(code, str):
        raise InvalidArgumentError(
            f"code must be text (str), got {type(code).__name__}; decode bytes first"
        )
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise InvalidArgumentError(
            f"code is larger than {MAX_CODE_BYTES // (1024 * 1024)} MB; upload it as a file"
        )
    if "\0" in code:  # no interpreter takes it (argv, compile), so say so before the run
        raise InvalidArgumentError(
            "code cannot contain NUL bytes; binary data goes into the sandbox as a file")
    return code
