"""What the framework tools tell a model (extras only: pydantic comes with each framework)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

DESCRIPTION = (
    "Run code in an isolated sandbox and get its stdout, stderr, exit code, rich outputs and "
    "errors with tracebacks. Variables, imports and files persist between calls (like notebook "
    "cells). No network unless the sandbox was created with it.")


class RunCode(BaseModel):
    """The arguments of the ``run_code`` tool."""

    code: str = Field(description="the code to run")
    language: Literal["python", "javascript", "bash"] = Field(
        "python", description="language of the code")
