"""The layer rule of docs/architecture.md, as a test: every module imports only from its own
layer or the layers below it, the surfaces do not import one another, the program that runs
inside sandboxes imports nothing of the host package, and the host imports only its wire format.

Imports are read from the source (every ``import`` / ``from … import``, including those inside
functions and ``if TYPE_CHECKING:`` blocks), so a lazy import is held to the rule too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

#: Lowest first. A module belongs to the longest prefix listed; one that matches none fails
#: the test (give a new module its layer here and in docs/architecture.md).
LAYERS: list[tuple[str, ...]] = [
    # runs inside sandboxes: the standard library only (checked separately below)
    ("nexus_kernel.agent.sandbox_agent",),
    ("nexus_kernel.errors", "nexus_kernel.models", "nexus_kernel.ttl", "nexus_kernel.__version__"),
    ("nexus_kernel.config", "nexus_kernel.validation", "nexus_kernel.egress", "nexus_kernel.untrusted",
     "nexus_kernel.terminal", "nexus_kernel.sandbox_lines"),
    ("nexus_kernel.store", "nexus_kernel.agent"),  # agent = the host-side client
    ("nexus_kernel.providers",),
    ("nexus_kernel.pool", "nexus_kernel.templates"),
    ("nexus_kernel.manager", "nexus_kernel.reaper"),  # the reaper is the manager's delegate
    ("nexus_kernel.api", "nexus_kernel.llm_output", "nexus_kernel.checkpoints"),  # llm_output: a run described for a model
    # agent-facing services on the API: the MCP server (launched by the CLI), framework tools
    ("nexus_kernel.mcp_server", "nexus_kernel.integrations"),
    # the surfaces: each its own island (see SURFACES)
    ("nexus_kernel.cli", "nexus_kernel.kernel", "magics", "nexus_kernel.pool_fill"),
    # entry points: the package facade (lazy re-exports, `%load_ext nexus_kernel`), `python -m`
    ("nexus_kernel", "nexus_kernel.__main__"),
]  # fmt: skip
SURFACES = LAYERS[-2]
IN_SANDBOX = LAYERS[0]
#: The one part of the in-sandbox program the host may import: its wire format.
WIRE_FORMAT = "nexus_kernel.agent.sandbox_agent.wire"


def _name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """Every module of the project ``path`` imports (``from x import y`` counts as ``x.y``
    too, so importing a submodule by name is seen)."""
    name = _name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            found.update(names)
            # `from pkg import module`: only the modules count (the package is their parent,
            # loaded anyway), as does an ancestor package; `from module import name`: the module
            ancestor = (name + ".").startswith(base + ".")
            if not ancestor and not all(_is_module(root, target) for target in names):
                found.add(base)
    return {m for m in found if m.split(".")[0] in ("nexus_kernel", "magics")}


def _is_module(root: Path, module: str) -> bool:
    path = root.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _place(module: str) -> tuple[int, str] | None:
    """(layer index, the prefix that matched) of ``module``; None when unassigned."""
    best: tuple[int, str] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[1])
            ):
                best = (index, prefix)
    return best


def violations(root: Path) -> list[str]:
    """One line per import that breaks the rule, for the tree at ``root``."""
    found = []
    for path in sorted([*(root / "nexus_kernel").rglob("*.py"), *(root / "magics").rglob("*.py")]):
        module = _name(path, root)
        here = _place(module)
        if here is None:
            found.append(f"{module}: no layer (add it to LAYERS in tests/test_layers.py)")
            continue
        seen: set[str] = set()  # one line per imported group (`from x import y` is x and x.y)
        for target in sorted(imports_of(path, root), key=len):
            there = _place(target)
            if there is None or there[1] in (here[1], *seen):
                continue  # an unassigned target is an attribute (`from x import name`), or same group
            seen.add(there[1])
            if here[1] in IN_SANDBOX:
                found.append(f"{module} imports {target}: the in-sandbox agent imports nothing "
                             "of the host package")
            elif there[1] in IN_SANDBOX and not (target + ".").startswith(WIRE_FORMAT + "."):
                found.append(f"{module} imports {target}: the host imports only the agent's "
                             "wire format")
            elif there[0] > here[0]:
                found.append(f"{module} imports {target}: an upward import "
                             f"(layer {here[0]} -> {there[0]})")
            elif there[0] == here[0] and here[1] in SURFACES:
                found.append(f"{module} imports {target}: the surfaces do not import one another")
    return found


def test_every_import_goes_downward() -> None:
    assert violations(ROOT) == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The checker itself: a store that imports the manager, a CLI that imports the kernel and
    an agent that imports the errors are each reported."""
    package = tmp_path / "nexus_kernel"
    (package / "agent").mkdir(parents=True)
    (tmp_path / "magics").mkdir()
    (package / "__init__.py").write_text("")
    (package / "manager.py").write_text("from .store import Store\n")
    (package / "store.py").write_text("def f():\n    from .manager import SandboxManager\n")
    (package / "cli.py").write_text("from .kernel import kernel\n")
    (package / "kernel").mkdir()
    (package / "kernel" / "__init__.py").write_text("")
    (package / "agent" / "__init__.py").write_text("")
    (package / "agent" / "sandbox_agent.py").write_text("from ..errors import AgentError\n")
    (package / "errors.py").write_text("")
    found = violations(tmp_path)
    assert any(line.startswith("nexus_kernel.store imports nexus_kernel.manager: an upward")
               for line in found), found
    assert any(line.startswith("nexus_kernel.cli imports nexus_kernel.kernel: the surfaces")
               for line in found), found
    assert any(line.startswith("nexus_kernel.agent.sandbox_agent imports nexus_kernel.errors")
               for line in found), found
    assert len(found) == 3, found
